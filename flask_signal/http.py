"""HTTP/1.1 connections for a WSGI app on gevent, parsed with httptools.

One greenlet serves one connection: it feeds received bytes to an httptools
parser, whose callbacks build each request's WSGI environ directly, then runs
the app and writes its answer with as few ``sendall`` calls as the response
allows (head and first chunk together; a list body joined into one write).

The socket is only read while waiting for a request or when the app reads
``wsgi.input``; never while a response is streaming. That is what lets an
SSE stream watch ``environ["gunicorn.socket"]`` for the client's EOF.

All connections share one receive buffer: bytes go from ``recv_into`` straight
into ``feed_data`` with no greenlet switch in between, and the parser copies
out whatever it keeps, so an idle connection holds no buffer of its own.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from email.utils import formatdate
from time import monotonic
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

try:
    import httptools
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "flask_signal's HTTP server needs httptools: pip install 'flask-signal[server]'"
    ) from exc
from gevent import GreenletExit, get_hub, getcurrent
from gevent.socket import socket as GeventSocket

if TYPE_CHECKING:
    from gevent import Greenlet

__all__ = ["ClientDisconnected", "Connection", "HTTPServer", "Input"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_RECV_SIZE = 65536
_BUFFER = bytearray(_RECV_SIZE)
_VIEW = memoryview(_BUFFER)

# Bodies up to this size go out in one write with what precedes them; larger
# ones are sent on their own rather than copied to be joined.
_COALESCE = 65536
# Unread request body beyond this is not worth draining to keep a connection.
_MAX_DRAIN = 1 << 20
_CACHE_LIMIT = 1000

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END = b"0\r\n\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"

# Response header names the server owns: hop-by-hop fields are dropped
# (PEP 3333 forbids them from apps), Content-Length decides the framing.
_PLAIN, _LENGTH, _CONNECTION, _HOP = 0, 1, 2, 3
_HOP_NAMES = {
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_name_kinds: dict[str, int] = {}
_status_lines: dict[str, tuple[int, bytes]] = {}
_header_keys: dict[bytes, str] = {}
_methods: dict[bytes, str] = {}
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}

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


class HTTPError(Exception):
    """A request the server answers itself, with ``status``, then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientDisconnected(OSError):
    """The client went away or sent a malformed body while the app read it."""


class _ClientGone(Exception):
    """Writing the response failed: the client is gone. Not an OSError, so
    that an app's own OSError still gets a 500 and a logged traceback."""


class Request:
    """One parsed request: its environ and the state of its body.

    Also what gunicorn's ``pre_request``/``post_request`` hooks and access
    log receive as ``req`` (``method``, ``uri``, ``path``, ``query``,
    ``version``, ``headers``).
    """

    __slots__ = (
        "chunks",
        "complete",
        "discard",
        "environ",
        "expect",
        "headers",
        "keep_alive",
        "method",
        "uri",
        "version",
    )

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.chunks: list[bytes] = []
        self.complete = False
        self.discard = 0  # >0: drop body bytes, counting them
        self.expect = 0  # 1: client awaits "100 Continue", 2: it was sent
        self.keep_alive = False
        self.headers: list[tuple[str, str]] | None = None
        self.method = "GET"
        self.uri = ""
        self.version = (1, 1)

    @property
    def path(self) -> str:
        return self.uri.partition("?")[0]

    @property
    def query(self) -> str:
        return str(self.environ.get("QUERY_STRING", ""))


class Input:
    """``wsgi.input``: the request body, received as the app reads it."""

    __slots__ = ("_buf", "_conn", "_req")

    def __init__(self, conn: Connection, req: Request) -> None:
        self._conn = conn
        self._req = req
        self._buf = b""

    def _pull(self) -> bytes:
        """The next piece of body, b"" at its end."""
        req = self._req
        while True:
            chunks = req.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                return data
            if req.complete:
                return b""
            self._conn.receive_body(req)

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

    def _pull(self) -> bytes:
        return b""


_EMPTY = _EmptyInput()


class ResponseInfo:
    """What the access log and ``post_request`` hook see of a response."""

    __slots__ = ("headers", "response_length", "sent", "status", "status_code")

    def __init__(self, status: str, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status
        self.status_code = int(status[:3]) if status[:3].isdigit() else 0
        self.headers = headers
        self.sent = sent
        self.response_length = sent


class HTTPServer:
    """Settings and shared state for the connections of one process.

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
        self.limit_line = limit_request_line or sys.maxsize
        self.limit_fields = limit_request_fields or sys.maxsize
        self.limit_field_size = limit_request_field_size or sys.maxsize
        # Bytes of one request head beyond which the parser's own buffering
        # (it gathers each header before calling back) is cut off.
        self.limit_head = min(
            self.limit_line + self.limit_fields * (self.limit_field_size + 2) + 4, 1 << 24
        )
        self.header_map = header_map
        self.forwarder_headers = {h.upper().replace("-", "_") for h in forwarder_headers}
        self.scheme_headers = [
            ("HTTP_" + name.upper().replace("-", "_"), value)
            for name, value in (secure_scheme_headers or {}).items()
        ]
        self.trusted_proxy = trusted_proxy
        self.script_name = script_name.rstrip("/")
        self.max_requests = max_requests
        self.server_line = b"Server: %s\r\n" % server_header.encode("latin-1")
        self.on_request = on_request
        self.after_request = after_request
        self.access = access
        self.keep_headers = (
            on_request is not None or after_request is not None or access is not None
        )
        self.alive = True
        self.nr = 0
        self.connections: set[Connection] = set()

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

    def count_request(self) -> None:
        """Stop after ``max_requests``: called when ``nr`` reaches it."""
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False


def _classify_name(name: Any) -> int:
    if type(name) is not str:
        raise TypeError(f"response header name {name!r} is not a str")
    if not name or not _TOKEN.issuperset(name):
        raise ValueError(f"invalid response header name {name!r}")
    lname = name.lower()
    kind = (
        _LENGTH
        if lname == "content-length"
        else _CONNECTION
        if lname == "connection"
        else _HOP
        if lname in _HOP_NAMES
        else _PLAIN
    )
    if len(_name_kinds) < _CACHE_LIMIT:
        _name_kinds[name] = kind
    return kind


def _status_line(status: Any) -> tuple[int, bytes]:
    if type(status) is not str:
        raise TypeError(f"status {status!r} is not a str")
    code_text = status[:3]
    if (
        len(status) < 3
        or not code_text.isdigit()
        or (len(status) > 3 and status[3] != " ")
        or "\r" in status
        or "\n" in status
    ):
        raise ValueError(f"invalid status {status!r}")
    found = (int(code_text), b"HTTP/1.1 %s\r\n" % status.encode("latin-1"))
    if len(_status_lines) < _CACHE_LIMIT:
        _status_lines[status] = found
    return found


class Connection:
    """One client connection: the parser's callbacks, the request loop, the writer."""

    __slots__ = (
        "chunked",
        "current",
        "error",
        "fed",
        "fields",
        "greenlet",
        "head_bytes",
        "head_since",
        "headers_sent",
        "in_head",
        "keep",
        "length",
        "listener",
        "no_body",
        "parser",
        "queue",
        "raw",
        "remote_addr",
        "remote_port",
        "resp_headers",
        "scheme",
        "sent",
        "server",
        "serving",
        "sock",
        "status",
        "trusted",
        "upgrade",
        "url",
        "waiting",
    )

    def __init__(self, server: HTTPServer, sock: Any, addr: Any, listener: tuple[str, str]) -> None:
        self.server = server
        self.sock = sock
        # The plain socket under a gevent one: a write that fits the send
        # buffer goes out without gevent's retry-and-wait machinery.
        self.raw = sock._sock if type(sock) is GeventSocket else None
        self.listener = listener
        if isinstance(addr, tuple):
            self.remote_addr = addr[0]
            self.remote_port = str(addr[1])
        else:  # a unix socket's peer has no address
            self.remote_addr = addr.decode() if isinstance(addr, bytes) else str(addr or "")
            self.remote_port = ""
        self.scheme = "https" if hasattr(sock, "getpeercert") else "http"
        # Only a trusted proxy may set the scheme or forwarder headers.
        self.trusted = (
            bool(server.scheme_headers or server.forwarder_headers)
            and server.trusted_proxy is not None
            and server.trusted_proxy(addr)
        )
        self.parser: Any = httptools.HttpRequestParser(self)
        # A list, not a deque: pipelining is rare and an empty deque costs 600 bytes.
        self.queue: list[Request] = []
        self.current: Request | None = None
        self.error: BaseException | None = None
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.fed = 0
        self.in_head = False
        self.head_since = 0.0
        self.waiting = 0.0  # since when it waits for a request (0: busy)
        self.upgrade = False
        self.greenlet: Greenlet | None = None
        self.serving: Request | None = None
        self.status: str | None = None
        self.resp_headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.no_body = False
        self.keep = False
        self.length: int | None = None
        self.sent = 0

    # -- parser callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Request(self.server.environ.copy())
        self.url = b""
        self.head_bytes = 0
        self.in_head = True
        self.head_since = monotonic()

    def on_url(self, url: bytes) -> None:
        url = self.url + url if self.url else url
        if len(url) > self.server.limit_line:
            raise HTTPError(414, "request line too long")
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Collected here, turned into environ keys in one loop at the end of
        # the head: one call per header is all this callback may cost.
        self.fields.append((name, value))

    def _header_key(self, name: bytes) -> str:
        """The environ key of a request header ("" to drop it)."""
        upper = name.decode("latin-1").upper()
        if upper == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif upper == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if "_" in upper:
            # X_Forwarded_For and X-Forwarded-For would share one key: let no
            # client smuggle a header past a proxy that way (gunicorn's rule).
            # Not cached: the answer depends on the peer.
            server = self.server
            forwarders = server.forwarder_headers
            if self.trusted and (upper in forwarders or "*" in forwarders):
                return key
            if server.header_map == "drop":
                return ""
            if server.header_map != "dangerous":
                raise HTTPError(400, f"invalid header name {upper!r}")
            return key
        if len(_header_keys) < _CACHE_LIMIT:
            _header_keys[name] = key
        return key

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        self.in_head = False
        server = self.server
        parser = self.parser
        env = req.environ

        fields = self.fields
        if len(fields) > server.limit_fields:
            raise HTTPError(431, "too many header fields")
        size_limit = server.limit_field_size
        # No field can be larger than the bytes this head came in.
        if self.head_bytes + self.fed > size_limit:
            for name, value in fields:
                if len(name) + len(value) + 2 > size_limit:
                    raise HTTPError(431, "header field too large")
        keys = _header_keys
        for name, value in fields:
            key = keys.get(name)
            if key is None:
                key = self._header_key(name)
                if not key:
                    continue
            text = value.decode("latin-1")
            if key in env:
                env[key] = env[key] + "," + text
            else:
                env[key] = text
        if server.keep_headers:
            req.headers = [(n.decode("latin-1").upper(), v.decode("latin-1")) for n, v in fields]
        fields.clear()

        url = self.url
        self.url = b""
        if len(url) + 16 > server.limit_line:
            raise HTTPError(414, "request line too long")
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            if b"#" in url:
                path = path.partition(b"#")[0]
                query = query.partition(b"#")[0]
        elif url == b"*":
            path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise HTTPError(400, "invalid request target") from None
            path = parsed.path or b"/"
            query = parsed.query or b""
        path_info = (
            unquote_to_bytes(path).decode("latin-1") if b"%" in path else path.decode("latin-1")
        )
        script_name = server.script_name
        if self.trusted and "HTTP_SCRIPT_NAME" in env:
            script_name = env["HTTP_SCRIPT_NAME"].rstrip("/")  # set by the proxy
        if script_name:
            if path_info != script_name and not path_info.startswith(script_name + "/"):
                raise HTTPError(404, "path outside SCRIPT_NAME")
            path_info = path_info[len(script_name) :]
        method_bytes = parser.get_method()
        method = _methods.get(method_bytes)
        if method is None:
            method = method_bytes.decode("latin-1")
            if len(_methods) < 64:
                _methods[method_bytes] = method
        version = parser.get_http_version()
        req.method = method
        req.uri = raw_uri = url.decode("latin-1")
        req.keep_alive = server.keepalive > 0 and parser.should_keep_alive()
        env["REQUEST_METHOD"] = method
        env["SCRIPT_NAME"] = script_name
        env["PATH_INFO"] = path_info
        env["QUERY_STRING"] = query.decode("latin-1")
        env["RAW_URI"] = raw_uri
        env["SERVER_NAME"], env["SERVER_PORT"] = self.listener
        env["REMOTE_ADDR"] = self.remote_addr
        env["REMOTE_PORT"] = self.remote_port
        env["gunicorn.socket"] = self.sock
        scheme = self.scheme
        if self.trusted:
            for key, secure_value in server.scheme_headers:
                if key in env:
                    scheme = "https" if env[key] == secure_value else "http"
        env["wsgi.url_scheme"] = scheme
        if version == "1.1":
            env["SERVER_PROTOCOL"] = "HTTP/1.1"
        else:
            env["SERVER_PROTOCOL"] = "HTTP/" + version
            req.version = (1, 0) if version == "1.0" else (0, 9)
        if "HTTP_EXPECT" in env and req.version >= (1, 1):
            if env["HTTP_EXPECT"].lower() != "100-continue":
                raise HTTPError(417, "unsupported expectation")
            req.expect = 1
        if parser.should_upgrade():
            self.upgrade = True
        self.queue.append(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        if req.discard:
            req.discard += len(body)
        else:
            req.chunks.append(body)

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None

    # -- receiving ----------------------------------------------------------

    def fill(self, idle: bool = False) -> int:
        """Receive once and parse what came; 0 when the client closed.

        A parse error is kept in ``self.error``: requests parsed before it are
        still served, then it is answered. ``idle``: the client was just
        answered, so its next request is most likely not there yet.
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
            return 0
        if not n:
            return 0
        parser = self.parser
        if parser is None:  # dropped while a response streamed
            parser = self.parser = httptools.HttpRequestParser(self)
        self.fed = n
        try:
            parser.feed_data(_VIEW[:n])
        except httptools.HttpParserUpgrade:
            pass  # what follows is not HTTP/1: the connection ends after this request
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.error = cause if isinstance(cause, HTTPError) else HTTPError(400, str(exc))
        except httptools.HttpParserError as exc:
            self.error = HTTPError(400, str(exc) or "malformed request")
        else:
            if self.in_head:
                # A head still incomplete: bound what the parser buffers for it.
                self.head_bytes += n
                if self.head_bytes > self.server.limit_head:
                    self.error = HTTPError(431, "request head too large")
        return n

    def receive_body(self, req: Request) -> None:
        """Receive more of ``req``'s body for ``wsgi.input``."""
        if req.expect == 1:
            req.expect = 2
            self.send(_CONTINUE)
        if self.error is None and not self.fill():
            raise ClientDisconnected("client closed before the request body was complete")
        if self.error is not None and not req.complete and not req.chunks:
            raise ClientDisconnected(f"malformed request body: {self.error}")

    # -- the request loop ---------------------------------------------------

    def serve(self) -> None:
        server = self.server
        queue = self.queue
        self.greenlet = getcurrent()
        served = False
        try:
            while True:
                if queue:
                    served = True
                    if not self.handle(queue.pop(0)):
                        break
                    continue
                if self.error is not None:
                    self.answer_error(self.error)
                    break
                # A stopping server still answers (with a close) connections
                # accepted before its listeners closed.
                if self.upgrade or (served and not server.alive):
                    break
                # Keep-alive expiry is the server's sweep, not a timer per wait;
                # a request head gets the same time in all, however it trickles in.
                self.waiting = self.head_since if self.in_head else monotonic()
                received = self.fill(served and not self.in_head)
                self.waiting = 0.0
                if not received:
                    break
        except GreenletExit:
            pass
        except (OSError, _ClientGone) as exc:
            server.log.debug("Connection error: %s", exc)
        finally:
            self.parser = None  # breaks the parser <-> callbacks cycle
            self.greenlet = None
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

    def handle(self, req: Request) -> bool:
        """Run the app for ``req`` and write its response; False to close."""
        server = self.server
        env = req.environ
        env["wsgi.input"] = _EMPTY if req.complete and not req.chunks else Input(self, req)
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
            keep = self.write_result(req, result)
        except _ClientGone as exc:
            server.log.debug("Client gone while answering %s %s: %s", req.method, req.uri, exc)
            return False
        except Exception:
            server.log.exception("Error handling request %s %s", req.method, req.uri)
            if self.headers_sent:
                return False  # the response is cut short: closing is all that is left
            keep = req.keep_alive and server.alive
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

    def drain(self, req: Request) -> bool:
        """Skip the unread rest of ``req``'s body so the next request can be read."""
        if req.expect == 1:
            return False  # the client may never send it
        req.chunks.clear()
        req.discard = 1
        self.waiting = monotonic()
        while not req.complete:
            if self.error is not None or req.discard > _MAX_DRAIN or not self.fill():
                return False
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
        found = _status_lines.get(status)
        code, status_line = found if found is not None else _status_line(status)
        length: int | None = None
        keep = req.keep_alive and self.server.alive
        parts: list[str] = []
        for name, value in self.resp_headers:
            kind = _name_kinds.get(name)
            if kind is None:
                kind = _classify_name(name)
            if type(value) is not str:
                raise TypeError(f"value of response header {name!r} is not a str")
            if "\n" in value or "\r" in value:
                raise ValueError(f"response header {name!r} has a line break")
            if kind == _PLAIN:
                parts += (name, ": ", value, "\r\n")
            elif kind == _LENGTH:
                if code < 200 or code == 204:
                    continue  # RFC 9110: no Content-Length on these
                length = int(value)
                if length < 0:
                    raise ValueError("negative Content-Length")
                parts += (name, ": ", value, "\r\n")
            elif kind == _CONNECTION and value.lower() == "close":
                keep = False
        no_body = req.method == "HEAD" or code < 200 or code == 204 or code == 304
        chunked = False
        if length is None and not no_body:
            if body_length is not None:
                length = body_length
                parts += ("Content-Length: ", str(body_length), "\r\n")
            elif req.version >= (1, 1):
                chunked = True
            else:
                keep = False  # HTTP/1.0 without a length: the close ends the body
        self.length = None if no_body else length
        self.chunked = chunked
        self.no_body = no_body
        self.keep = keep
        parts.append("\r\n")
        return b"".join(
            (
                status_line,
                self.server.server_line,
                _server_date(),
                _KEEP if keep else _CLOSE,
                _CHUNKED if chunked else b"",
                "".join(parts).encode("latin-1"),
            )
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
            if self.chunked and self.current is None and not self.queue and req.complete:
                # A stream may idle for hours: it needs no parser until it
                # ends (fill() makes a new one), and a parser is ~1 KB.
                self.parser = None
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
        body = reason.encode()
        self.headers_sent = True
        self.sent = len(body)
        self.send(
            b"HTTP/1.1 %d %s\r\n%s%s%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (
                status,
                reason.encode(),
                self.server.server_line,
                _server_date(),
                _KEEP if keep else _CLOSE,
                len(body),
                body,
            )
        )

    def answer_error(self, error: BaseException) -> None:
        """Answer a request the parser refused, then the connection closes."""
        status = error.status if isinstance(error, HTTPError) else 400
        self.server.log.warning("Invalid request from ip=%s: %s", self.remote_addr, error)
        with contextlib.suppress(_ClientGone):
            self.send_simple(status, _REASONS.get(status, "Bad Request"), False)
