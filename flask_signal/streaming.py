"""The WSGI body of an SSE stream: frames from a :class:`~flask_signal.hub.Stream` to the socket.

:class:`EventStream` is a plain iterator with ``close()``, not a generator:
a WSGI server calls ``close()`` however the response ends (finished, client
gone, never started), so the peer always leaves exactly once.

While the stream waits for its next frame the server is not reading the
socket, so a client that hangs up would go unnoticed until the next
keep-alive write fails. Each stream puts a read watcher on its client
socket; the server's own readers are idle during a streaming
response, so readability there means the client closed (or pipelined a
request, which ends the watch and leaves detection to the pings).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from greenlet import getcurrent

from .hub import Stream

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client connection's socket, where the WSGI server exposes it.

    gunicorn puts it in ``gunicorn.socket``; gevent's WSGIServer only holds
    it behind ``wsgi.input``'s buffered reader.
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return sock  # type: ignore[no-any-return]
    rfile = getattr(environ.get("wsgi.input"), "rfile", None)
    raw = getattr(rfile, "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def cooperative() -> bool:
    """Whether this request runs in a gevent greenlet, as streams need.

    Under a threaded server without monkey-patching, each request has its
    own thread and event loop: a stream would wait on a queue no other
    request can wake.
    """
    return getcurrent().parent is not None


class EventStream(Iterator[bytes]):
    """Iterate the frames of ``stream``: ``head`` first, then queued frames.

    Held for as long as a client stays connected, so it keeps no closures:
    the read watcher and the abort hook are bound methods of this object.
    """

    __slots__ = ("_closed", "_head", "_on_close", "_sock", "_stream", "_watcher")

    def __init__(
        self,
        stream: Stream,
        *,
        on_close: Callable[[], None],
        head: bytes = b"",
        environ: dict[str, Any] | None = None,
    ) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close
        self._head = head
        self._closed = False
        sock = client_socket(environ) if environ is not None else None
        # gevent sockets wrap a non-blocking one: peeking at it never waits.
        self._sock: Any = getattr(sock, "_sock", sock)
        self._watcher = None
        if sock is not None:
            self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
            self._watcher.start(self._readable)
            stream.abort = self._abort

    def _readable(self) -> None:
        """Called by the event loop when the client socket turns readable."""
        try:
            closed = not self._sock.recv(1, _PEEK)
        except BlockingIOError:
            return
        except OSError:
            closed = True
        # Data instead of EOF (a pipelined request): stop watching, the
        # keep-alive pings will find out if the client goes.
        if self._watcher is not None:
            self._watcher.stop()
        if closed:
            self._stream.end("disconnected")

    def _abort(self) -> None:
        # Fails the writer blocked on this socket with EPIPE, which servers
        # treat as a client gone, so the response is closed. (gevent's own
        # shutdown() would cancel the writer with EBADF, which gunicorn logs
        # as an error.)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        frame = self._stream.get()
        if not frame or self._closed:  # ENDED is the empty frame
            raise StopIteration
        return frame

    def close(self) -> None:
        """End the stream and run its cleanup, once, however the response ended."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        self._stream.end()
        self._stream.abort = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
