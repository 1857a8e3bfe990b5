"""The load generator's engine: one epoll loop, raw non-blocking sockets.

Everything runs in one thread and one process so its CPU time is easy to
account for. Two kinds of connection:

- :class:`SSEClient` sends one streaming GET, de-chunks the body and calls
  ``on_event(conn, event, data)`` for each SSE event (comments are skipped);
- :class:`HttpClient` is a keep-alive HTTP/1.1 connection sending one request
  at a time (more wait in its queue) and calling back with status and body.

Receive times are :attr:`Loop.now`, read once right after ``epoll.poll``
returns: the data was already in the socket then, so the time is an upper
bound of its arrival that does not grow with the work of reading the other
ready sockets of the same batch.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

IN = select.EPOLLIN
OUT = select.EPOLLOUT
RECV = 65536


class Loop:
    """An epoll loop over :class:`SSEClient` and :class:`HttpClient` connections."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.host_header = f"{host}:{port}".encode()
        self.epoll = select.epoll()
        self.conns: dict[int, Any] = {}
        self.now = perf_counter()

    def register(self, conn: Any, mask: int) -> None:
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, mask)

    def unregister(self, conn: Any) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(conn.fd)

    def poll(self, timeout: float) -> None:
        try:
            events = self.epoll.poll(timeout, 4096)
        except InterruptedError:
            return
        self.now = perf_counter()
        conns = self.conns
        for fd, mask in events:
            conn = conns.get(fd)
            if conn is not None:
                conn.ready(mask)

    def run(self, until: Callable[[], bool], timeout: float, what: str = "the scenario") -> None:
        """Serve sockets until ``until()`` is true; ``TimeoutError`` after ``timeout`` s."""
        deadline = perf_counter() + timeout
        while not until():
            left = deadline - perf_counter()
            if left <= 0:
                raise TimeoutError(f"{what} did not finish within {timeout:g}s")
            self.poll(min(left, 0.05))

    def run_for(self, seconds: float) -> None:
        """Serve sockets for ``seconds`` whatever happens."""
        deadline = perf_counter() + seconds
        while (left := deadline - perf_counter()) > 0:
            self.poll(min(left, 0.05))

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()
        self.epoll.close()


def _socket(loop: Loop) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex(loop.addr)
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, f"connect to {loop.addr}: {errno.errorcode.get(err, err)}")
    return sock


class SSEClient:
    """One streaming GET, read incrementally.

    ``on_open(conn)`` runs once the response headers are in (``conn.status``
    set); ``on_event(conn, event, data)`` for each event, with bytes;
    ``on_close(conn)`` once when the connection ends for any reason.
    """

    __slots__ = (
        "_cbuf",
        "_chunked",
        "_head",
        "_out",
        "_sbuf",
        "closed",
        "fd",
        "loop",
        "on_close",
        "on_event",
        "on_open",
        "sock",
        "status",
        "tag",
    )

    def __init__(
        self,
        loop: Loop,
        path: str,
        on_event: Callable[[SSEClient, bytes, bytes], None],
        *,
        on_open: Callable[[SSEClient], None] | None = None,
        on_close: Callable[[SSEClient], None] | None = None,
        tag: Any = None,
    ) -> None:
        self.loop = loop
        self.on_event = on_event
        self.on_open = on_open
        self.on_close = on_close
        self.tag = tag
        self.status = 0
        self.closed = False
        self._head = b""
        self._chunked = False
        self._cbuf = b""
        self._sbuf = b""
        self._out = (
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + loop.host_header
            + b"\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.sock = _socket(loop)
        self.fd = self.sock.fileno()
        loop.register(self, IN | OUT)

    def ready(self, mask: int) -> None:
        if self._out:
            if not mask & (IN | OUT):
                self.close()
                return
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            self._out = self._out[sent:]
            if not self._out:
                self.loop.epoll.modify(self.fd, IN)
            return
        try:
            data = self.sock.recv(RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if not self.status:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self.status = int(head[9:12])
            self._chunked = b"transfer-encoding: chunked" in head.lower()
            if self.on_open is not None:
                self.on_open(self)
            if self.closed or not data:
                return
        if self._chunked:
            data = self._dechunk(data)
            if not data:
                return
        self._parse(data)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._cbuf + data if self._cbuf else data
        out = []
        pos, size_total = 0, len(buf)
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            if size == 0:
                # The last chunk: the server ended the stream.
                self._cbuf = b""
                payload = b"".join(out)
                if payload:
                    self._parse(payload)
                self.close()
                return b""
            end = line_end + 2 + size
            if end + 2 > size_total:
                break
            out.append(buf[line_end + 2 : end])
            pos = end + 2
        self._cbuf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    def _parse(self, data: bytes) -> None:
        text = self._sbuf + data if self._sbuf else data
        if b"\n\n" not in text:
            self._sbuf = text
            return
        blocks = text.split(b"\n\n")
        self._sbuf = blocks.pop()
        on_event = self.on_event
        for block in blocks:
            event = b"message"
            data_lines = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[7:] if line[6:7] == b" " else line[6:]
            if data_lines:
                on_event(
                    self, event, data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
                )
                if self.closed:
                    return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.unregister(self)
        self.sock.close()
        if self.on_close is not None:
            self.on_close(self)


Callback = Callable[[int, bytes, float], None]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class HttpClient:
    """A keep-alive HTTP/1.1 connection, one request in flight, the rest queued.

    ``callback(status, body, sent_at)`` gets status 0 and the reason as body
    when the request could not be answered. An idle connection the server
    closed (gunicorn's keep-alive timeout) is reopened on the next request,
    and a request the server closed without answering is sent once more.
    """

    __slots__ = (
        "_buf",
        "_current",
        "_head_end",
        "_need",
        "_out",
        "_retried",
        "fd",
        "headers",
        "loop",
        "queue",
        "sock",
    )

    def __init__(self, loop: Loop, headers: dict[str, str] | None = None) -> None:
        self.loop = loop
        self.headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())
        self.queue: deque[tuple[bytes, Callback]] = deque()
        self.sock: socket.socket | None = None
        self.fd = -1
        self._current: tuple[bytes, Callback, float] | None = None
        self._out = b""
        self._buf = b""
        self._need = -1
        self._head_end = 0
        self._retried = False

    def post(self, path: str, body: bytes, callback: Callback) -> None:
        request = (
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.loop.host_header
            + b"\r\nContent-Type: application/json\r\n"
            + self.headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.queue.append((request, callback))
        if self._current is None:
            self._next()

    def get(self, path: str, callback: Callback) -> None:
        request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.loop.host_header
        self.queue.append((request + b"\r\n" + self.headers + b"\r\n", callback))
        if self._current is None:
            self._next()

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self.queue)

    def _connect(self) -> None:
        self.sock = _socket(self.loop)
        self.fd = self.sock.fileno()
        self.loop.register(self, IN | OUT)

    def _next(self) -> None:
        if not self.queue:
            return
        request, callback = self.queue.popleft()
        self._current = (request, callback, perf_counter())
        self._retried = False
        self._start(request)

    def _start(self, request: bytes) -> None:
        self._buf, self._need = b"", -1
        if self.sock is None:
            self._connect()
            self._out = request
            return
        try:
            sent = self.sock.send(request)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        self._out = request[sent:]
        if self._out:
            self.loop.epoll.modify(self.fd, IN | OUT)

    def ready(self, mask: int) -> None:
        if self._out:
            try:
                sent = self.sock.send(self._out)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                return
            self._out = self._out[sent:]
            if not self._out:
                self.loop.epoll.modify(self.fd, IN)
            return
        try:
            data = self.sock.recv(RECV)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        if self._current is None:
            return  # nothing asked: ignore stray bytes
        buf = self._buf + data
        if self._need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            self._need = end + 4 + _content_length(buf[:end])
            self._head_end = end
        if len(buf) < self._need:
            self._buf = buf
            return
        end = self._head_end
        status = int(buf[9:12])
        body = buf[end + 4 : self._need]
        close = b"connection: close" in buf[:end].lower()
        _, callback, sent_at = self._current  # type: ignore[misc]
        self._current = None
        self._buf, self._need = b"", -1
        if close:
            self._drop()
        callback(status, body, sent_at)
        if self._current is None:
            self._next()

    def _drop(self) -> None:
        if self.sock is not None:
            self.loop.unregister(self)
            self.sock.close()
            self.sock = None
            self.fd = -1

    def _lost(self) -> None:
        """The server closed the connection: reopen, or fail the request."""
        had_answer = bool(self._buf)
        self._drop()
        if self._current is None:
            return
        request, callback, sent_at = self._current
        if not self._retried and not had_answer:
            self._retried = True
            self._start(request)
            return
        self._current = None
        callback(0, b"connection closed before the answer", sent_at)
        self._next()

    def close(self) -> None:
        self.queue.clear()
        self._current = None
        self._drop()
