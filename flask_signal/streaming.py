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

Once the server has sent the response headers, an idle stream also takes
frames straight to its socket (:attr:`Stream.direct`): the greenlet that
publishes writes each subscriber's frame with one non-blocking ``send``,
framed as the server frames the body, instead of waking each response's
greenlet to do it. That is what makes a broadcast to a thousand peers a
loop of sends. It is only done where the server says how (the
:class:`DirectWrites` protocol, which :class:`flask_signal.http.Connection`
implements and :class:`GunicornResponse` adapts gunicorn's gevent worker
to) and never on TLS sockets; everywhere else frames go through the server
as usual. A client that cannot take a frame whole gets the rest
from its own greenlet, before anything queued after it. (The server does
not see these writes: its access log counts a stream's bytes without them.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import gevent
from gevent.socket import socket as GeventSocket
from greenlet import getcurrent
from gunicorn.http.wsgi import Response as _GunicornResponse

from .hub import Stream

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT

#: Where the extension's middleware leaves the server's ``start_response``.
START_RESPONSE = "flask_signal.start_response"


class DirectWrites(Protocol):
    """What a server offers so that a stream's frames may bypass it.

    Implemented by the object whose bound method is the server's
    ``start_response``. A server that writes each chunk of a response as it
    comes may offer it; one that buffers, rewrites or encrypts chunks must not.
    """

    def direct_socket(self) -> tuple[socket.socket, bool] | None:
        """Once the response head is sent: the plain, non-blocking socket the
        body may be sent to, and whether chunks must be chunk-framed. None
        before the head is sent, or where writing past the server is unsafe."""


class GunicornResponse:
    """:class:`DirectWrites` for gunicorn's own ``Response`` (its gevent worker).

    gunicorn does not offer this itself, so its response is read here, and
    only here: if gunicorn renames what is read, a test of direct writes
    under ``-k gevent`` fails.
    """

    __slots__ = ("response",)

    def __init__(self, response: Any) -> None:
        self.response = response

    def direct_socket(self) -> tuple[socket.socket, bool] | None:
        response = self.response
        if not response.headers_sent:
            return None
        sock = response.sock
        # Exactly gevent's plain socket, never TLS, whose bytes must go through
        # it; its plain socket underneath sends without gevent's waiting.
        if type(sock) is not GeventSocket:
            return None
        return sock._sock, bool(response.chunked)


def direct_writes(writer: Any) -> DirectWrites | None:
    """The :class:`DirectWrites` of a server's response writer, if it has one."""
    # Exact class for gunicorn's: a subclass may frame the body its own way.
    if type(writer) is _GunicornResponse:
        return GunicornResponse(writer)
    if callable(getattr(writer, "direct_socket", None)):
        return writer  # type: ignore[no-any-return]
    return None


def capture_start_response(wsgi_app: Any) -> Any:
    """Wrap a WSGI app so that streams can find the server's response writer."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ[START_RESPONSE] = start_response
        return wsgi_app(environ, start_response)

    return app


def direct_socket(environ: dict[str, Any]) -> tuple[socket.socket, bool] | None:
    """The plain socket a response's frames may be written to directly, and
    whether they are chunk-framed; None where that is not known to be safe.

    Call it only once the response headers are out.
    """
    writer = direct_writes(getattr(environ.get(START_RESPONSE), "__self__", None))
    return writer.direct_socket() if writer is not None else None


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


#: The environ key by which a server says that its listening sockets carry the
#: options :func:`detect_dead_peers` sets, for that timeout: Linux copies them
#: to every socket it accepts, so a stream need not set them again (five
#: system calls per stream saved).
DEAD_PEER_ENV = "flask_signal.dead_peer_timeout"


@functools.cache
def dead_peer_options(timeout: float) -> tuple[tuple[int, int, int], ...]:
    """The socket options that find a vanished client within ``timeout`` seconds.

    Probes start after a third of ``timeout`` and three unanswered ones (two
    ninths apart) fail the socket; ``TCP_USER_TIMEOUT`` fails it when data
    stays unacknowledged that long. Options this platform lacks are left out.
    """
    if timeout <= 0:
        return ()
    idle = max(1, int(timeout / 3))
    interval = max(1, int((timeout - idle) / 3))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(timeout * 1000)),
    ]
    return tuple((level, option, value) for level, option, value in options if option is not None)


def detect_dead_peers(sock: Any, timeout: float) -> bool:
    """Make the kernel find out within ``timeout`` seconds that the client is gone.

    A client that vanishes (a cable pulled, a laptop closed) sends nothing:
    without keep-alive probes an idle stream would wait forever, and a write
    sits in the send buffer for the kernel's retransmission timeout (some 15
    minutes). With these options (:func:`dead_peer_options`) either wakes the
    stream's read watcher with ``ETIMEDOUT``. ``sock`` may also be a listening
    socket, whose accepted sockets inherit them. False if one could not be set.
    """
    done = True
    for level, option, value in dead_peer_options(timeout):
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            done = False
    return done


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
    the read watcher is a bound method of this object, and the stream refers to
    it as its :class:`~flask_signal.hub.Response`.
    """

    __slots__ = (
        "_chunked",
        "_closed",
        "_direct",
        "_environ",
        "_gsock",
        "_head",
        "_lent",
        "_on_close",
        "_rest",
        "_sock",
        "_started",
        "_stream",
        "_watcher",
    )

    def __init__(
        self,
        stream: Stream,
        *,
        on_close: Callable[[], None],
        head: bytes = b"",
        environ: dict[str, Any] | None = None,
        direct: bool = True,
        dead_peer_timeout: float = 0.0,
    ) -> None:
        self._stream = stream
        self._direct = direct
        self._on_close: Callable[[], None] | None = on_close
        self._head = head
        self._closed = False
        self._started = False
        self._chunked = False
        self._rest = b""
        #: Whether the server still holds the last chunk returned (see __next__).
        self._lent = False
        self._environ = environ
        sock = client_socket(environ) if environ is not None else None
        self._gsock: Any = sock
        # gevent sockets wrap a non-blocking one: peeking at it never waits.
        self._sock: Any = getattr(sock, "_sock", sock)
        self._watcher = None
        if (
            sock is not None
            and environ.get(DEAD_PEER_ENV) != dead_peer_timeout  # type: ignore[union-attr]
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            detect_dead_peers(self._sock, dead_peer_timeout)
        if sock is not None:
            self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
            self._watcher.start(self._readable)
            stream.response = self

    def _readable(self) -> None:
        """Called by the event loop when the client socket turns readable."""
        reason = "disconnected"  # EOF: the client closed its end, it has left
        try:
            closed = not self._sock.recv(1, _PEEK)
        except BlockingIOError:
            return
        except OSError as exc:
            # Lost rather than closed: reset, or found dead by keep-alive
            # probes or the user timeout (see detect_dead_peers).
            closed = True
            reason = "timeout" if exc.errno == errno.ETIMEDOUT else "reset"
        # Data instead of EOF (a pipelined request): stop watching, the
        # keep-alive pings will find out if the client goes.
        if self._watcher is not None:
            self._watcher.stop()
        if closed:
            self._stream.end(reason)

    def abort(self) -> None:
        # Fails the writer blocked on this socket with EPIPE, which servers
        # treat as a client gone, so the response is closed. (gevent's own
        # shutdown() would cancel the writer with EBADF, which gunicorn logs
        # as an error.)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> bytes:
        stream = self._stream
        # The server is back for more: the last write is done (see hub.watchdog).
        stream.writing = 0.0
        if self._head:
            head, self._head = self._head, b""
            self._started = self._lent = True
            stream.writing = time.monotonic()
            return head
        if self._started and self._environ is not None:
            self._take_over(stream)
        if self._lent and not (stream.pending() or stream.ended or self._rest):
            # About to wait: a server keeps the chunk it wrote last until it gets the
            # next (its loop variable), so an idle stream would hold its last frame,
            # its connect at least, for as long as it stays. An empty chunk first,
            # which every server writes as nothing.
            self._lent = False
            return b""
        while True:
            frame = stream.get()
            # The rest of a direct write goes before anything queued after it.
            if self._rest and not self._flush():
                raise StopIteration
            if frame is None:  # woken only to send that rest
                continue
            if not frame or self._closed:  # ENDED is the empty frame
                raise StopIteration
            self._started = self._lent = True
            stream.writing = time.monotonic()
            return frame

    def _take_over(self, stream: Stream) -> None:
        """Install the direct writer, once: the server has sent the headers
        (it was handed a first chunk and asked for the next)."""
        environ, self._environ = self._environ, None
        if environ is None or self._closed:
            return
        found = direct_socket(environ)
        # The environ lives as long as the stream; drop what can no longer be
        # used now that the response has started (gunicorn's early-hints
        # closure alone is some 300 bytes per stream).
        environ.pop(START_RESPONSE, None)
        environ.pop("wsgi.early_hints", None)
        if found is not None and self._direct and stream.response is self:
            self._sock, self._chunked = found
            stream.direct = True

    def write_now(self, frame: bytes) -> bool:
        """Send ``frame`` now without blocking; False if nothing could be sent.

        A part left unsent is kept for :meth:`_flush`.
        """
        data = b"%x\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return False
        except OSError:
            self._stream.direct = False
            self._stream.end("disconnected")
            return False
        if sent < len(data):
            # Nothing else may be written before the rest: stop taking frames
            # (they queue) and wake the reader to finish this one.
            self._rest = data[sent:]
            self._stream.wake()
        return True

    def _flush(self) -> bool:
        """Send the rest of a direct write from the response's own greenlet."""
        rest, self._rest = self._rest, b""
        self._stream.writing = time.monotonic()
        try:
            self._gsock.sendall(rest)
        except OSError:
            self._stream.end("disconnected")
            return False
        self._stream.writing = 0.0
        return True

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
        if self._stream.end_reason == "drain":
            # The process is stopping: do not keep the connection alive for a
            # next request (what is sent still goes out before the FIN).
            self.abort()
        self._stream.direct = False
        self._stream.response = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
