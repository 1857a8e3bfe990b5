"""HTTP/1.1 connections for a WSGI app on gevent: the I/O around :mod:`flask_signal.h1`.

One greenlet serves one connection: it receives bytes, hands them to the
connection's :class:`~flask_signal.h1.H1Parser` and acts on its events (run
the app for a request, answer a refusal and close), then writes the app's
answer with as few ``sendall`` calls as the response allows (head and first
chunk together; a list body joined into one write). Parsing, limits and the
response head's bytes are the sans-IO core's; this module does sockets,
greenlets, WSGI and the keep-alive clock.

The socket is only read while a request head is awaited or when the app
reads ``wsgi.input``; never while a response is being written, nor ahead of
a request that is not yet answered (at most one receive of pipelined bytes
waits unparsed). That is what lets an SSE stream watch
``environ["gunicorn.socket"]`` for the client's EOF, and what bounds the
memory a connection can make the worker hold.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from email.utils import formatdate
from time import monotonic
from typing import TYPE_CHECKING, Any

from gevent import GreenletExit, get_hub, getcurrent
from gevent.socket import socket as GeventSocket

from .h1 import (
    NEED_DATA,
    REASONS,
    EndOfMessage,
    H1Error,
    H1Parser,
    HeaderPolicy,
    Limits,
    Request,
    ResponseFraming,
    response_head,
    simple_response,
)

if TYPE_CHECKING:
    from gevent import Greenlet

__all__ = ["ClientDisconnected", "Connection", "HTTPServer", "Input", "Request"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_RECV_SIZE = 65536
_BUFFER = bytearray(_RECV_SIZE)
_VIEW = memoryview(_BUFFER)

# Bodies up to this size go out in one write with what precedes them; larger
# ones are sent on their own rather than copied to be joined.
_COALESCE = 65536
# Unread request body beyond this is not worth draining to keep a connection.
_MAX_DRAIN = 1 << 20

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END = b"0\r\n\r\n"

_date_line = b""
_date_expires = 0.0


def _server_date() -> bytes:
    """``Date:`` header line, formatted once per second."""
    global _date_line, _date_expires
    now = time.time()
    if now >= _date_expires:
        second = int(now)
        _date_expires = second + 1.0
        _date_line = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
    return _date_line


class ClientDisconnected(OSError):
    """The client went away or sent a malformed body while the app read it."""


class _ClientGone(Exception):
    """Writing the response failed: the client is gone. Not an OSError, so
    that an app's own OSError still gets a 500 and a logged traceback."""


class Input:
    """``wsgi.input``: the request body, received as the app reads it."""

    __slots__ = ("_buf", "_conn", "_req")

    def __init__(self, conn: Connection, req: Request) -> None:
        self._conn: Connection | None = conn
        self._req: Request | None = req
        self._buf = b""

    def _pull(self) -> bytes:
        """The next piece of body, b"" at its end (or once the request is over)."""
        req = self._req
        conn = self._conn
        if req is None or conn is None:
            return b""
        while True:
            chunks = req.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                req.chunks = ()
                return data
            if req.complete:
                return b""
            conn.receive_body(req)

    def detach(self) -> None:
        """Forget the connection and request: the request is over, and an
        environ the app keeps must not keep the connection alive (nor form a
        cycle that only the garbage collector would free)."""
        self._conn = None
        self._req = None

    def read(self, size: int | None = -1) -> bytes:
        buf = self._buf
        if size is None or size < 0:
            parts = [buf]
            while data := self._pull():
                parts.append(data)
            self._buf = b""
            return b"".join(parts)
        if len(buf) < size:
            parts = [buf]
            have = len(buf)
            while have < size:
                data = self._pull()
                if not data:
                    break
                parts.append(data)
                have += len(data)
            buf = b"".join(parts)
        self._buf = buf[size:]
        return buf[:size]

    def readinto(self, b: Any) -> int:
        buf = self._buf or self._pull()
        n = min(len(b), len(buf))
        memoryview(b).cast("B")[:n] = buf[:n]
        self._buf = buf[n:]
        return n

    def readline(self, size: int | None = -1) -> bytes:
        buf = self._buf
        limit = sys.maxsize if size is None or size < 0 else size
        start = 0
        while True:
            end = buf.find(b"\n", start, limit)
            if end >= 0:
                end += 1
                break
            if len(buf) >= limit:
                end = limit
                break
            start = len(buf)
            data = self._pull()
            if not data:
                end = len(buf)
                break
            buf += data
        self._buf = buf[end:]
        return buf[:end]

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _EmptyInput(Input):
    """The body of a request without one; stateless, so shared."""

    __slots__ = ()

    def __init__(self) -> None:
        self._buf = b""
        self._conn = None
        self._req = None

    def _pull(self) -> bytes:
        return b""


_EMPTY = _EmptyInput()


class ResponseInfo:
    """What the access log and ``post_request`` hook see of a response."""

    __slots__ = ("headers", "response_length", "sent", "status", "status_code")

    def __init__(self, status: str, headers: Sequence[tuple[str, str]], sent: int) -> None:
        self.status = status
        self.status_code = int(status[:3]) if status[:3].isdigit() else 0
        self.headers = headers
        self.sent = sent
        self.response_length = sent


class HTTPServer:
    """Settings and shared state for the connections of one process.

    The limits are gunicorn's settings of the same names (0: gunicorn's
    maximum); ``limit_request_head`` bounds a whole head (by default what
    ``limit_request_fields`` lines of ``limit_request_field_size`` take) and
    ``limit_trailer_section`` a chunked body's trailers (by default 32 field
    lines). See :class:`flask_signal.h1.Limits`.

    ``on_request(req)`` / ``after_request(req, environ, resp)`` are optional
    hooks; ``access(resp, req, environ, request_time)`` is an optional access
    logger. All three are skipped entirely when None.
    """

    def __init__(
        self,
        app: WSGIApp,
        environ: dict[str, Any],
        log: Any,
        *,
        keepalive: float = 2.0,
        limit_request_line: int = 4094,
        limit_request_fields: int = 100,
        limit_request_field_size: int = 8190,
        limit_request_head: int = 0,
        limit_trailer_section: int = 0,
        header_map: str = "drop",
        forwarder_headers: Iterable[str] = (),
        secure_scheme_headers: dict[str, str] | None = None,
        trusted_proxy: Callable[[Any], bool] | None = None,
        script_name: str = "",
        max_requests: int = sys.maxsize,
        server_header: str = "gunicorn",
        on_request: Callable[[Request], None] | None = None,
        after_request: Callable[[Request, dict[str, Any], ResponseInfo | None], None] | None = None,
        access: Callable[[ResponseInfo, Request, dict[str, Any], Any], None] | None = None,
    ) -> None:
        self.app = app
        self.environ = environ
        self.log = log
        self.keepalive = keepalive
        self.limits = Limits(
            line=limit_request_line,
            fields=limit_request_fields,
            field_size=limit_request_field_size,
            head=limit_request_head,
            trailers=limit_trailer_section,
        ).resolved()
        self.policy = HeaderPolicy(header_map, forwarder_headers, secure_scheme_headers)
        self.proxy_rules = bool(secure_scheme_headers or forwarder_headers)
        self.trusted_proxy = trusted_proxy
        self.script_name = script_name.rstrip("/")
        self.max_requests = max_requests
        self.server_line = b"Server: %s\r\n" % server_header.encode("latin-1")
        self.on_request = on_request
        self.after_request = after_request
        self.access = access
        self.alive = True
        self.nr = 0
        self.connections: set[Connection] = set()
        self._bases: dict[tuple[tuple[str, str], str], dict[str, Any]] = {}

    def base_environ(self, listener: tuple[str, str], scheme: str) -> dict[str, Any]:
        """What every request on ``listener`` shares: ``environ`` (complete before the
        first connection), the server's name and port, SCRIPT_NAME and the scheme.
        One dict per listener, copied into each request's environ; a connection
        adds its client's address and socket (:meth:`Connection.prepare`)."""
        base = self._bases.get((listener, scheme))
        if base is None:
            base = self.environ.copy()
            base["SERVER_NAME"], base["SERVER_PORT"] = listener
            base["SCRIPT_NAME"] = self.script_name
            base["wsgi.url_scheme"] = scheme
            self._bases[listener, scheme] = base
        return base

    def handle(self, listener: tuple[str, str], sock: Any, addr: Any) -> None:
        """Serve one accepted connection until it closes (a StreamServer handler)."""
        conn = Connection(self, sock, addr, listener)
        self.connections.add(conn)
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)

    def sweep(self, idle_for: float | None = None) -> int:
        """End connections waiting for a request longer than ``idle_for`` seconds.

        Call it about once a second: it is the keep-alive timeout (``idle_for``
        defaults to ``keepalive``, or no limit when keep-alive is off). ``0``
        ends every waiting connection, as a graceful stop wants.
        """
        if idle_for is None:
            idle_for = self.keepalive if self.keepalive > 0 else 3600.0
        oldest = monotonic() - idle_for
        loop = get_hub().loop
        ended = 0
        for conn in list(self.connections):
            since = conn.waiting
            if since and since <= oldest:
                loop.run_callback(conn.expire, since)
                ended += 1
        return ended

    def held(self) -> int:
        """Bytes of requests the connections hold: received and not yet parsed,
        or body received and not yet read by the app."""
        total = 0
        for conn in self.connections:
            total += conn.parser.buffered
            req = conn.serving
            if req is not None:
                total += sum(len(chunk) for chunk in req.chunks)
        return total

    def count_request(self) -> None:
        """Stop after ``max_requests``: called when ``nr`` reaches it."""
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False


class Connection(ResponseFraming):
    """One client connection: the request loop over its parser, and the response writer.

    It is its own :class:`~flask_signal.h1.ResponseFraming`: the framing of the
    response being written (``code``, ``chunked``, ``keep``, ``length``, ``no_body``).
    """

    __slots__ = (
        "__weakref__",
        "error",
        "greenlet",
        "headers_sent",
        "parser",
        "raw",
        "remote_addr",
        "remote_port",
        "resp_headers",
        "sent",
        "server",
        "serving",
        "sock",
        "status",
        "waiting",
    )

    def __init__(self, server: HTTPServer, sock: Any, addr: Any, listener: tuple[str, str]) -> None:
        self.server = server
        self.sock = sock
        # The plain socket under a gevent one: a write that fits the send
        # buffer goes out without gevent's retry-and-wait machinery.
        self.raw = sock._sock if type(sock) is GeventSocket else None
        if isinstance(addr, tuple):
            remote_addr, remote_port = addr[0], str(addr[1])
        else:  # a unix socket's peer has no address
            remote_addr = addr.decode() if isinstance(addr, bytes) else str(addr or "")
            remote_port = ""
        # Only a trusted proxy may set the scheme or forwarder headers.
        trusted = (
            server.proxy_rules and server.trusted_proxy is not None and server.trusted_proxy(addr)
        )
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        scheme = "https" if hasattr(sock, "getpeercert") else "http"
        base = server.base_environ(listener, scheme)
        self.parser = H1Parser(server.limits, server.policy, base, bool(trusted))
        self.error: H1Error | None = None
        self.waiting = 0.0  # since when it waits for a request (0: busy)
        self.greenlet: Greenlet | None = None
        self.serving: Request | None = None
        self.status: str | None = None
        self.resp_headers: Sequence[tuple[str, str]] = ()
        self.headers_sent = False
        # How the response goes out (ResponseFraming, set by response_head).
        self.code = 0
        self.chunked = False
        self.no_body = False
        self.keep = False
        self.length: int | None = None
        self.sent = 0

    # -- receiving ----------------------------------------------------------

    def fill(self, idle: bool = False) -> int:
        """Receive once into the parser; 0 when the client closed (the parser is told).

        ``idle``: the client was just answered, so its next request is most
        likely not there yet.
        """
        sock = self.sock
        try:
            if idle and self.raw is not None:
                # Wait for it rather than try a recv that would fail first:
                # that is a syscall and an exception per request saved.
                # (Plain sockets only: TLS may hold decrypted bytes already.)
                sock._wait(sock._read_event)
            n: int = sock.recv_into(_BUFFER)
        except ConnectionError:
            n = 0
        self.parser.receive(bytes(_VIEW[:n]) if n else b"", monotonic())
        return n

    def _body_event(self, req: Request, event: Any) -> bool:
        """Take a body event for ``req``; False when it is not one (an error, NEED_DATA)."""
        if type(event) is bytes:
            if req.discard:
                req.discard += len(event)
            elif type(req.chunks) is list:
                req.chunks.append(event)
            else:
                req.chunks = [event]
            if self.parser.end_of_body():
                req.complete = True
            return True
        if type(event) is EndOfMessage:
            req.complete = True  # its trailers are dropped: no environ gets them
            return True
        if type(event) is H1Error:
            self.error = event
        return False

    def receive_body(self, req: Request) -> None:
        """Receive more of ``req``'s body for ``wsgi.input``."""
        if req.expect == 1:
            req.expect = 2
            self.send(_CONTINUE)
        parser = self.parser
        while True:
            event = parser.next_event()
            if self._body_event(req, event):
                return
            if event is NEED_DATA:
                if not self.fill():
                    continue  # the parser now says the body was cut short
                continue
            raise ClientDisconnected(f"malformed request body: {self.error}")

    # -- the request loop ---------------------------------------------------

    def serve(self) -> None:
        server = self.server
        parser = self.parser
        self.greenlet = getcurrent()
        served = False
        try:
            while True:
                event = parser.next_event()
                if type(event) is Request:
                    served = True
                    if not self.handle(event):
                        break
                    parser.start_next()
                    continue
                if event is NEED_DATA:
                    # A stopping server still answers (with a close) connections
                    # accepted before its listeners closed.
                    if served and not server.alive and not parser.in_head:
                        break
                    # Keep-alive expiry is the server's sweep, not a timer per
                    # wait; a request head gets the same time in all, however
                    # it trickles in.
                    in_head = parser.in_head
                    self.waiting = parser.head_since if in_head else monotonic()
                    self.fill(served and not in_head)
                    self.waiting = 0.0
                    continue
                if type(event) is H1Error:
                    self.answer_error(event)
                break  # CLOSED
        except GreenletExit:
            pass
        except (OSError, _ClientGone) as exc:
            server.log.debug("Connection error: %s", exc)
        finally:
            self.greenlet = None
            self.serving = None
            self.waiting = 0.0
            with contextlib.suppress(OSError):
                self.sock.close()

    def expire(self, since: float) -> None:
        """End the connection if it still waits for the request it waited for ``since``.

        Run from the hub: a connection that woke up with a request in the
        meantime has another ``waiting`` stamp (or 0) and is left alone, so
        no request is ever interrupted by its keep-alive expiry.
        """
        greenlet = self.greenlet
        if self.waiting == since and greenlet is not None:
            greenlet.throw(GreenletExit)

    def prepare(self, req: Request) -> bool:
        """Finish ``req``'s environ and take the body already received; False to refuse it."""
        server = self.server
        env = req.environ
        env["REMOTE_ADDR"] = self.remote_addr
        env["REMOTE_PORT"] = self.remote_port
        env["gunicorn.socket"] = self.sock
        if req.scheme:
            env["wsgi.url_scheme"] = req.scheme
        if self.parser.trusted and "HTTP_SCRIPT_NAME" in env:
            script_name = env["HTTP_SCRIPT_NAME"].rstrip("/")  # set by the proxy
            env["SCRIPT_NAME"] = script_name
        else:
            script_name = server.script_name
        if script_name:
            path_info = env["PATH_INFO"]
            if path_info != script_name and not path_info.startswith(script_name + "/"):
                self.answer_error(H1Error(404, "path outside SCRIPT_NAME"))
                return False
            env["PATH_INFO"] = path_info[len(script_name) :]
        if not server.keepalive:
            req.keep_alive = False
        if not req.complete:
            # What came with the head is parsed now: a malformed chunk is
            # refused before the app runs. It is never more than one receive.
            parser = self.parser
            while not req.complete and self._body_event(req, parser.next_event()):
                pass
            if self.error is not None:
                self.answer_error(self.error)
                return False
        return True

    def handle(self, req: Request) -> bool:
        """Run the app for ``req`` and write its response; False to close."""
        if not self.prepare(req):
            return False
        server = self.server
        env = req.environ
        body = _EMPTY if req.complete and not req.chunks else Input(self, req)
        env["wsgi.input"] = body
        self.serving = req
        server.nr += 1
        if server.nr >= server.max_requests:
            server.count_request()
        self.status = None
        self.headers_sent = False
        self.sent = 0
        start = datetime.now() if server.access is not None else None
        result: Any = None
        keep = False
        try:
            if server.on_request is not None:
                server.on_request(req)
            result = server.app(env, self.start_response)
            if start is None and server.after_request is None:
                # Nothing of ours reads the environ again (only the access log and
                # post_request hook would): a stream should not keep it, some 1 KB
                # with its values, for as long as its client stays.
                env = req.environ = {}
            keep = self.write_result(req, result)
        except _ClientGone as exc:
            server.log.debug("Client gone while answering %s %s: %s", req.method, req.uri, exc)
            return False
        except ClientDisconnected as exc:
            # The body was cut short or malformed: the client's fault, no traceback.
            server.log.warning("Invalid request from ip=%s: %s", self.remote_addr, exc)
            if not self.headers_sent and self.error is not None:
                self.answer_error(self.error)
            return False
        except Exception:
            server.log.exception("Error handling request %s %s", req.method, req.uri)
            if self.headers_sent:
                return False  # the response is cut short: closing is all that is left
            keep = self.may_keep(req)
            self.status = "500 Internal Server Error"
            self.resp_headers = [("Content-Type", "text/plain")]
            try:
                self.send_simple(500, "Internal Server Error", keep)
            except _ClientGone:
                return False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    server.log.exception("Error closing the response of %s", req.uri)
            if server.access is not None or server.after_request is not None:
                self.report(req, env, start)
            if body is not _EMPTY:
                body.detach()
            self.serving = None
        if not keep:
            return False
        if not req.complete:
            return self.drain(req)
        return True

    def report(self, req: Request, env: dict[str, Any], start: datetime | None) -> None:
        server = self.server
        info = ResponseInfo(
            self.status or "500 Internal Server Error", self.resp_headers, self.sent
        )
        if server.access is not None and start is not None:
            try:
                server.access(info, req, env, datetime.now() - start)
            except Exception:
                server.log.exception("Access log failed")
        if server.after_request is not None:
            try:
                server.after_request(req, env, info)
            except Exception:
                server.log.exception("Exception in post_request hook")

    def may_keep(self, req: Request) -> bool:
        """Whether the connection can serve another request after this answer.

        Decided before the answer's head goes out, so that it never announces
        keep-alive on a connection it then closes: a body the client was not
        asked for yet, or too much of one left unread, ends the connection.
        """
        if not req.keep_alive or not self.server.alive:
            return False
        if req.complete:
            return True
        if req.expect == 1:
            return False  # the client waits for "100 Continue" and may never send it
        if req.content_length is None:
            return False  # chunked, unread: how much is left is unknown
        unread = self.parser.remaining + sum(len(chunk) for chunk in req.chunks)
        return unread <= _MAX_DRAIN

    def drain(self, req: Request) -> bool:
        """Skip the unread rest of ``req``'s body so the next request can be read."""
        req.chunks = ()
        req.discard = 1
        parser = self.parser
        self.waiting = monotonic()
        try:
            while not req.complete:
                event = parser.next_event()
                if self._body_event(req, event):
                    if req.discard > _MAX_DRAIN:
                        return False
                    continue
                if event is not NEED_DATA or not self.fill():
                    return False
        finally:
            self.waiting = 0.0
        return True

    # -- writing ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            raw = self.raw
            if raw is not None:
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]  # type: ignore[assignment]
            self.sock.sendall(data)
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    def direct_socket(self) -> tuple[Any, bool] | None:
        """:class:`flask_signal.streaming.DirectWrites`: once the response head is
        out, the plain socket a stream's frames may be sent to without this
        connection, and whether they must be chunk-framed; None before."""
        if not self.headers_sent or self.raw is None:
            return None
        return self.raw, self.chunked

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        self.status = status
        self.resp_headers = headers
        return self.write

    def head(self, req: Request, body_length: int | None) -> bytes:
        """Serialize the status line and headers; set the framing of the body.

        ``body_length`` is the whole body's length when the server knows it
        (a list body, or an app that returned nothing more).
        """
        status = self.status
        if status is None:
            raise AssertionError("the app did not call start_response")
        return response_head(
            status,
            self.resp_headers,
            req,
            self.may_keep(req),
            body_length,
            self.server.server_line + _server_date(),
            self,
        )

    def write_result(self, req: Request, result: Any) -> bool:
        """Write the app's result; True when the connection may serve another request."""
        if type(result) is list and not self.headers_sent:
            body = b"".join(result)
            head = self.head(req, len(body))
            self.headers_sent = True
            length = self.length
            if self.no_body:
                self.send(head)
                return self.keep
            if length is not None and length != len(body):
                body = body[:length]
                if len(body) < length:
                    self.keep = False
            self.sent = len(body)
            if len(body) > _COALESCE:
                self.send(head)
                self.send(body)
            else:
                self.send(head + body if body else head)
            return self.keep
        write = self.write
        for chunk in result:
            write(chunk)
        if not self.headers_sent:
            self.headers_sent = True
            self.send(self.head(req, 0))
        elif self.chunked:
            self.send(_CHUNK_END)
        elif self.length is not None and self.sent < self.length:
            return False  # shorter than announced: the client must see the close
        return self.keep

    def write(self, data: bytes) -> None:
        """Send ``data`` now (also the legacy ``write`` callable of start_response)."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            data = bytes(data)
        head = b""
        if not self.headers_sent:
            req = self.serving
            assert req is not None
            head = self.head(req, None)
            self.headers_sent = True
        if self.no_body or not data:
            if head:
                self.send(head)
            return
        self.sent += len(data)
        if self.chunked:
            if len(data) > _COALESCE:
                self.send(head + b"%x\r\n" % len(data))
                self.send(data)
                self.send(b"\r\n")
                return
            data = b"%x\r\n%b\r\n" % (len(data), data)
        elif self.length is not None and self.sent > self.length:
            data = data[: len(data) - (self.sent - self.length)]  # never past Content-Length
            self.sent = self.length
            if not data:
                if head:
                    self.send(head)
                return
        if head and len(data) > _COALESCE:
            self.send(head)
            self.send(data)
        else:
            self.send(head + data if head else data)

    def send_simple(self, status: int, reason: str, keep: bool) -> None:
        self.headers_sent = True
        self.sent = len(reason)
        self.send(simple_response(status, reason, self.server.server_line + _server_date(), keep))

    def answer_error(self, error: H1Error) -> None:
        """Answer a request the parser refused; the connection then closes."""
        self.server.log.warning("Invalid request from ip=%s: %s", self.remote_addr, error)
        with contextlib.suppress(_ClientGone):
            self.send_simple(error.status, REASONS.get(error.status, "Bad Request"), False)
