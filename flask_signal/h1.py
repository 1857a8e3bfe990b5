"""Sans-IO HTTP/1.1 for the server: bytes in, events out; a response head out as bytes.

No sockets, no clock, no greenlets: :class:`H1Parser` takes what a connection
received (:meth:`~H1Parser.receive`) and hands back one event at a time
(:meth:`~H1Parser.next_event`):

- a :class:`Request`: the head, already turned into the environ fields an app
  sees (``REQUEST_METHOD``, ``PATH_INFO``, ``QUERY_STRING``, ``RAW_URI``,
  ``SERVER_PROTOCOL``, ``CONTENT_TYPE``, ``CONTENT_LENGTH``, ``HTTP_*``);
  a request without a body is complete with its head;
- ``bytes``: a piece of the request body;
- an :class:`EndOfMessage`, whose ``trailers`` are kept apart from the head
  (the server drops them: nothing of them reaches an environ);
- an :class:`H1Error`: a request to refuse, with the status to answer it with;
  the parser stays in error from then on;
- :data:`NEED_DATA` (receive more), :data:`PAUSED` (a whole request has been
  read: nothing more is parsed until :meth:`~H1Parser.start_next`) or
  :data:`CLOSED` (the peer closed between requests).

Parsing is strict the way gunicorn's parser is (RFC 9112: CRLF line endings,
no obsolete folding, no HTTP/0.9 or 2.0 request lines, one Host, one
Content-Type, one Content-Length, Transfer-Encoding ending in chunked and
never beside Content-Length nor on HTTP/1.0). Every limit bites while bytes
arrive, before anything is built from them: a head or a trailer section is
split into fields only once it is complete and within its limits, and a
pipelined request is not looked at before the one ahead of it is answered.

:func:`response_head` serializes a WSGI status and header list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes, urlsplit

__all__ = [
    "CLOSED",
    "CUT_SHORT",
    "NEED_DATA",
    "PAUSED",
    "EndOfMessage",
    "H1Error",
    "H1Parser",
    "HeaderPolicy",
    "Limits",
    "Request",
    "response_head",
]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Receive more bytes, then ask again.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The current request has been read whole; call ``start_next`` once it is answered.
PAUSED: Final = _Sentinel("PAUSED")
#: The peer closed the connection between requests (or within a head).
CLOSED: Final = _Sentinel("CLOSED")

# Limits gunicorn caps its own settings at.
_MAX_LINE = 8190
_MAX_FIELDS = 32768


# gunicorn's method rule: a token, uppercase by convention, 3 to 20 characters.
_METHOD_BAD = re.compile(rb"[a-z#]")
_VERSION_RE = re.compile(rb"HTTP/(\d)\.(\d)")
# RFC 9112 3.2: a request-target is printable ASCII.
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
# RFC 9110 5.5: no control characters but HTAB in a field (CR and LF are
# counted apart: only as CRLF line ends).
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
# Every byte but those control characters and CR: what ``bytes.translate``
# deletes to find, in one pass of C, whether a head holds any (the regex
# above then says where; most heads never need it).
_NOT_CTL = bytes(b for b in range(256) if not _CTL.match(bytes([b])) and b != 0x0D)
_CTL_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# RFC 9112 7.1.1, from the first ";" of a chunk-size line on.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_TOKEN_FULL = re.compile(_TOKEN)
_TOKEN_TEXT_RE = re.compile(_TOKEN.decode())
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
# RFC 9110 5.3: fields that admit one member; a second one is ambiguous.
_SINGLETONS = frozenset(("HOST", "CONTENT-TYPE"))
# RFC 9110 6.5.1: fields that would change routing, framing or authentication.
_FORBIDDEN_TRAILERS = frozenset(
    ("HOST", "CONTENT-LENGTH", "TRANSFER-ENCODING", "TRAILER", "AUTHORIZATION", "TE")
)

_CACHE_LIMIT = 1000

# Kinds of request fields: what the parser does with one besides keeping it.
_K_PLAIN, _K_SINGLETON, _K_LENGTH, _K_CODING, _K_CONNECTION, _K_EXPECT, _K_UNDERSCORED = range(7)
_KINDS = {
    "HOST": _K_SINGLETON,
    "CONTENT-TYPE": _K_SINGLETON,
    "CONTENT-LENGTH": _K_LENGTH,
    "TRANSFER-ENCODING": _K_CODING,
    "CONNECTION": _K_CONNECTION,
    "EXPECT": _K_EXPECT,
}

#: The reason of the H1Error for a body the peer's close cut short.
CUT_SHORT: Final = "connection closed within the request body"


@dataclass(frozen=True)
class Limits:
    """What one request may make the parser hold; 0 (or None) means the default.

    ``line``: request line, CRLF excluded (gunicorn's ``limit_request_line``).
    ``fields``: header (or trailer) field lines (``limit_request_fields``).
    ``field_size``: one field line, CRLF included (``limit_request_field_size``).
    ``head``: the whole head; by default what ``fields`` lines of ``field_size``
    take, as gunicorn bounds its buffer. ``trailers``: the trailer section;
    by default 32 field lines. ``chunk_line``: a chunk-size line.
    """

    line: int = 4094
    fields: int = 100
    field_size: int = 8190
    head: int = 0
    trailers: int = 0
    chunk_line: int = 0

    def resolved(self) -> Limits:
        """The same limits with defaults and gunicorn's caps applied."""
        line = self.line if 0 < self.line <= _MAX_LINE else _MAX_LINE
        fields = self.fields if 0 < self.fields <= _MAX_FIELDS else _MAX_FIELDS
        field_size = self.field_size if self.field_size > 0 else _MAX_LINE
        head = self.head or fields * (field_size + 2) + 4
        trailers = self.trailers or 32 * (field_size + 2) + 4
        chunk_line = self.chunk_line or field_size
        return Limits(line, fields, field_size, head, trailers, chunk_line)


class H1Error(Exception):
    """A request refused: answer ``status`` and close. Returned as an event, not raised."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"H1Error({self.status}, {self.reason!r})"


class HeaderPolicy:
    """How request fields become environ keys, and which a peer may send.

    ``header_map`` is gunicorn's setting for names with ``_`` (which would
    share an environ key with their ``-`` spelling): ``"drop"`` them,
    ``"refuse"`` the request (400), or ``"dangerous"``: keep them. A trusted
    proxy may send the ``forwarder_headers`` with ``_`` and set the scheme
    through ``secure_scheme_headers`` (``{"X-FORWARDED-PROTO": "https"}``).
    """

    def __init__(
        self,
        header_map: str = "drop",
        forwarder_headers: Iterable[str] = (),
        secure_scheme_headers: dict[str, str] | None = None,
    ) -> None:
        self.header_map = header_map
        self.forwarders = frozenset(h.upper() for h in forwarder_headers)
        self.scheme_headers = {
            name.upper(): value for name, value in (secure_scheme_headers or {}).items()
        }
        # raw name -> (NAME, environ key, kind), for the names seen
        self.names: dict[str, tuple[str, str, int]] = {}
        # field line -> (NAME, environ key, kind, value), for short lines seen
        self.fields: dict[bytes, tuple[str, str, int, str, tuple[str, str]]] = {}

    def name(self, raw: str) -> tuple[str, str, int]:
        """(NAME, environ key, kind) of a field name known to be a token."""
        found = self.names.get(raw)
        if found is not None:
            return found
        upper = raw.upper()  # a token is ASCII: no character becomes two here
        if upper == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif upper == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + upper.replace("-", "_")
        kind = _KINDS.get(upper, _K_UNDERSCORED if "_" in upper else _K_PLAIN)
        found = (upper, key, kind)
        if len(self.names) < _CACHE_LIMIT:
            self.names[raw] = found
        return found

    def field(self, line: bytes, field_size: int) -> tuple[str, str, int, str, tuple[str, str]]:
        """(NAME, environ key, kind, value, (NAME, value)) of a field line; raises H1Error
        for a bad one. The pair is what :attr:`Request.headers` lists, shared by every
        request that sends the same line."""
        raw, colon, raw_value = line.decode("latin-1").partition(":")
        if not colon or _TOKEN_TEXT_RE.fullmatch(raw) is None:
            raise H1Error(400, "invalid header line")
        if len(line) + 2 > field_size:
            raise H1Error(431, "header field too large")
        name, key, kind = self.name(raw)
        value = raw_value.strip(" \t")
        found = (name, key, kind, value, (name, value))
        if len(line) <= 256:
            if len(self.fields) >= _CACHE_LIMIT:
                self.fields.clear()  # bounded; what recurs comes back
            self.fields[line] = found
        return found

    def keep_underscored(self, name: str, trusted: bool) -> bool:
        """Whether a field whose name has ``_`` is kept; raises H1Error to refuse."""
        if trusted and (name in self.forwarders or "*" in self.forwarders):
            return True
        if self.header_map == "dangerous":
            return True
        if self.header_map == "drop":
            return False
        raise H1Error(400, f"invalid header name {name!r}")


_DEFAULT_LIMITS = Limits().resolved()
_DEFAULT_POLICY = HeaderPolicy()


class Request:
    """One request's head: its environ and what the server needs to answer it.

    Also what gunicorn's ``pre_request``/``post_request`` hooks and access
    log receive as ``req`` (``method``, ``uri``, ``path``, ``query``,
    ``version``, ``headers``).
    """

    __slots__ = (
        "chunks",
        "complete",
        "content_length",
        "discard",
        "environ",
        "expect",
        "headers",
        "keep_alive",
        "method",
        "scheme",
        "uri",
        "version",
    )

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        # Body received and not yet read by the app; a list once there is some.
        self.chunks: list[bytes] | tuple[()] = ()
        self.complete = False  # the whole body has been received
        self.content_length: int | None = None  # None: chunked
        self.discard = 0  # >0: the body is being skipped; bytes skipped + 1
        self.expect = 0  # 1: the client awaits "100 Continue", 2: it was sent
        self.keep_alive = False
        self.headers: list[tuple[str, str]] = []
        self.method = "GET"
        self.uri = ""
        self.version = (1, 1)
        self.scheme = ""  # set by a trusted proxy's scheme header, "" otherwise

    @property
    def path(self) -> str:
        return self.uri.partition("?")[0]

    @property
    def query(self) -> str:
        return str(self.environ.get("QUERY_STRING", ""))


class EndOfMessage:
    """The end of a request body; ``trailers`` as (NAME, value), never in the environ."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[str, str]] | None = None) -> None:
        self.trailers = trailers or []

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"


_END = EndOfMessage()

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE, _ERROR = range(8)

_methods: dict[bytes, str] = {}
# request line -> its parts, for the lines seen (bounded by _CACHE_LIMIT)
_lines: dict[bytes, tuple[str, tuple[int, int], str, str, str, str]] = {}


def _request_line(line: bytes) -> tuple[str, tuple[int, int], str, bytes, bytes, bytes]:
    """Method, version, protocol, target, path and query of a request line; raises H1Error."""
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        raise H1Error(400, "invalid request line")
    raw_method, target, raw_version = parts
    method = _methods.get(raw_method)
    if method is None:
        if (
            _TOKEN_FULL.fullmatch(raw_method) is None
            or _METHOD_BAD.search(raw_method) is not None
            or not 3 <= len(raw_method) <= 20
        ):
            raise H1Error(400, "invalid method")
        method = raw_method.decode("ascii")
        if len(_methods) < 64:
            _methods[raw_method] = method
    if raw_version == b"HTTP/1.1":
        version = (1, 1)
        protocol = "HTTP/1.1"
    else:
        match = _VERSION_RE.fullmatch(raw_version)
        if match is None:
            raise H1Error(400, "invalid HTTP version")
        version = (int(match[1]), int(match[2]))
        if not (1, 0) <= version < (2, 0):
            raise H1Error(400, "unsupported HTTP version")
        protocol = raw_version.decode("ascii")
    if not target or _TARGET_BAD.search(target) is not None:
        raise H1Error(400, "invalid request target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"#")[0].partition(b"?")
    elif target == b"*":
        if method != "OPTIONS":
            raise H1Error(400, "asterisk-form is for OPTIONS only")
        path, query = target, b""
    elif method != "CONNECT" and b"://" not in target:
        raise H1Error(400, "authority-form is for CONNECT only")
    else:
        try:
            parsed = urlsplit(target.decode("ascii"))
        except ValueError:
            raise H1Error(400, "invalid request target") from None
        path, query = parsed.path.encode("ascii"), parsed.query.encode("ascii")
    return method, version, protocol, target, path, query


class H1Parser:
    """The receiving side of one HTTP/1.1 server connection.

    ``base`` is copied into each request's environ (the server's and the
    connection's fixed keys); ``trusted`` tells whether the peer is a proxy
    allowed its forwarder and scheme headers. ``head_since`` is the ``now``
    given to :meth:`receive` with the first byte of the head being received
    (0.0 when none is), for the caller's deadline on heads.
    """

    __slots__ = (
        "base",
        "buf",
        "crlfs",
        "eof",
        "error",
        "head_since",
        "limits",
        "policy",
        "remaining",
        "scan",
        "state",
        "trusted",
    )

    def __init__(
        self,
        limits: Limits | None = None,
        policy: HeaderPolicy | None = None,
        base: dict[str, Any] | None = None,
        trusted: bool = False,
    ) -> None:
        if limits is None:
            limits = _DEFAULT_LIMITS
        elif not (limits.head and limits.trailers and limits.chunk_line):
            limits = limits.resolved()
        self.limits = limits
        self.policy = policy or _DEFAULT_POLICY
        self.base = base or {}
        self.trusted = trusted
        self.buf: bytes | bytearray = b""
        self.state = _HEAD
        self.error: H1Error | None = None
        self.eof = False
        self.remaining = 0  # body bytes left: of the Content-Length, or of a chunk
        self.scan = 0  # bytes of an incomplete head or trailer section checked
        self.crlfs = 0  # line ends counted in those bytes
        self.head_since = 0.0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (a pipelined request's, when paused)."""
        return len(self.buf)

    @property
    def in_head(self) -> bool:
        """Whether part of a request head has been received, and not all of it."""
        return self.state == _HEAD and len(self.buf) > 0

    def receive(self, data: bytes, now: float = 0.0) -> None:
        """Add received bytes; ``b""`` says the peer closed its side."""
        if not data:
            self.eof = True
            return
        buf = self.buf
        if not buf:
            self.buf = data
            if self.state == _HEAD:
                self.head_since = now
        elif type(buf) is bytearray:
            buf += data
        else:
            # A head or section arriving in pieces: grow one buffer in place
            # rather than copy it whole for every piece.
            grown = bytearray(buf)
            grown += data
            self.buf = grown

    def start_next(self) -> None:
        """The request read whole has been answered: parse the next one."""
        if self.state == _DONE:
            self.state = _HEAD
            self.scan = self.crlfs = 0
            self.head_since = 0.0

    def next_event(self) -> Any:
        """The next event (see the module's docstring)."""
        state = self.state
        if state == _HEAD:
            if not self.buf:  # between requests, the usual wait
                return CLOSED if self.eof else NEED_DATA
            return self._head()
        if state == _LENGTH:
            buf = self.buf
            if not buf:
                return self._need_body()
            remaining = self.remaining
            if len(buf) <= remaining:
                self.buf = b""
                self.remaining = remaining - len(buf)
                data = bytes(buf) if type(buf) is bytearray else buf
            else:
                data = bytes(buf[:remaining])
                self.buf = buf[remaining:]
                self.remaining = 0
            if not self.remaining:
                self.state = _DONE
                # The end comes with the last data: one event fewer per body.
            return data
        if state == _DONE:
            return PAUSED
        if state == _ERROR:
            return self.error
        return self._chunked()

    def end_of_body(self) -> bool:
        """Whether the body just returned was the end of the request."""
        return self.state == _DONE

    # -- the head -------------------------------------------------------------

    def _fail(self, status: int, reason: str) -> H1Error:
        error = self.error = H1Error(status, reason)
        self.state = _ERROR
        self.buf = b""
        return error

    def _head(self) -> Any:
        buf = self.buf
        start = 0
        if buf[:2] == b"\r\n":
            start = 2  # RFC 9112 2.2: one empty line before a request is ignored
        end = buf.find(b"\r\n\r\n", self.scan - 3 if self.scan > 3 + start else start)
        if end < 0:
            return self._head_incomplete(buf, start)
        head = bytes(buf[start:end])
        rest = buf[end + 4 :]
        self.buf = bytes(rest) if type(rest) is bytearray and len(rest) < 4096 else rest
        self.scan = self.crlfs = 0
        try:
            return self._parse_head(head)
        except H1Error as error:
            return self._fail(error.status, error.reason)

    def _head_incomplete(self, buf: bytes | bytearray, start: int) -> Any:
        limits = self.limits
        size = len(buf)
        if size - start > 0:
            error = self._check_partial_head(buf, start, size, limits)
            if error is not None:
                return error
        if self.eof:
            return CLOSED
        return NEED_DATA

    def _check_partial_head(
        self, buf: bytes | bytearray, start: int, size: int, limits: Limits
    ) -> H1Error | None:
        """Refuse a head still incomplete as soon as it breaks a rule or a limit."""
        # Check only what came since the last look (one byte back: a CR may
        # have waited for its LF).
        seen = self.scan
        if seen and buf[seen - 1 : seen] != b"\n":
            seen -= 1
        part = buf[max(seen, start) :]
        crlfs = part.count(b"\r\n")
        if part.count(b"\n") != crlfs:
            return self._fail(400, "bare LF in request head")
        had_line = self.crlfs > 0
        self.crlfs += crlfs
        self.scan = size
        # A CR at the end may be the start of the line's CRLF.
        tail_cr = 1 if buf[-1:] == b"\r" else 0
        line_end = buf.find(b"\r\n", start) if self.crlfs else -1
        if line_end < 0:
            if size - start - tail_cr > limits.line:
                return self._fail(414, "request line too long")
            return None
        if line_end - start > limits.line:
            return self._fail(414, "request line too long")
        if not had_line:
            # The request line is whole: refuse a bad one without waiting
            # for the rest of the head.
            try:
                _request_line(bytes(buf[start:line_end]))
            except H1Error as error:
                return self._fail(error.status, error.reason)
        if self.crlfs - 1 > limits.fields:
            return self._fail(431, "too many header fields")
        if size - start > limits.head:
            return self._fail(431, "request head too large")
        last = buf.rfind(b"\r\n")
        if size - last - tail_cr > limits.field_size:
            return self._fail(431, "header field too large")
        return None

    def _parse_head(self, head: bytes) -> Any:
        limits = self.limits
        crlfs = head.count(b"\r\n")
        line_end = head.find(b"\r\n")
        line = head[:line_end] if crlfs else head
        if len(line) > limits.line:
            raise H1Error(414, "request line too long")
        # Every LF of a head ends a line with its CR.
        if head.count(b"\n") != crlfs:
            raise H1Error(400, "bare LF in request head")
        # Nor is there a bare CR, or a control character but HTAB: the line
        # holding the first one is refused when its turn comes, so that the
        # lines before it are refused first for what they hold, as gunicorn does.
        bad_line = -1
        if head.translate(None, _NOT_CTL) != b"\r" * crlfs:
            bad = _CTL.search(head)
            if bad is not None:
                bad_line = head.count(b"\r\n", 0, bad.start())

        found = _lines.get(line) if bad_line else None
        if found is None:
            method, version, protocol, target, path, query = _request_line(line)
            if bad_line == 0:
                raise H1Error(400, "control character in the request line")
            uri = target.decode("ascii")
            path_info = (
                unquote_to_bytes(path).decode("latin-1") if b"%" in path else path.decode("ascii")
            )
            found = (method, version, protocol, uri, path_info, query.decode("ascii"))
            if len(_lines) >= _CACHE_LIMIT:
                _lines.clear()  # bounded; what recurs comes back
            _lines[line] = found
        method, version, protocol, uri, path_info, query_string = found

        req = Request(self.base.copy())
        env = req.environ
        req.method = method
        req.version = version
        req.uri = uri
        env["REQUEST_METHOD"] = method
        env["RAW_URI"] = uri
        env["PATH_INFO"] = path_info
        env["QUERY_STRING"] = query_string
        env["SERVER_PROTOCOL"] = protocol

        # -- fields
        policy = self.policy
        fields = policy.fields
        field_size = limits.field_size
        # Never more objects than the field lines allowed (and one to refuse).
        lines = head.split(b"\r\n", limits.fields + 1)
        headers = req.headers
        seen: set[str] | None = None
        lengths: list[str] | None = None
        codings: list[str] | None = None
        connection: str | None = None
        scheme_headers = policy.scheme_headers if self.trusted else None
        scheme_set = False
        repeated: dict[str, list[str]] | None = None
        for i in range(1, min(crlfs, limits.fields) + 1):
            field = lines[i]
            if i == bad_line:
                raise H1Error(400, "control character or bare CR in a header field")
            # A field line recurs from request to request: its parts are kept.
            known = fields.get(field)
            if known is None:
                known = policy.field(field, field_size)
            name, key, kind, value, pair = known
            if kind:
                if kind == _K_SINGLETON:
                    if seen is None:
                        seen = {name}
                    elif name in seen:
                        raise H1Error(400, f"more than one {name}")
                    else:
                        seen.add(name)
                elif kind == _K_LENGTH:
                    if lengths is None:
                        lengths = [value]
                    else:
                        lengths.append(value)
                elif kind == _K_CODING:
                    if codings is None:
                        codings = [value]
                    else:
                        codings.append(value)
                elif kind == _K_CONNECTION:
                    if connection is None:
                        connection = value
                elif kind == _K_EXPECT:
                    if value.lower() != "100-continue":
                        raise H1Error(417, "unsupported expectation")
                    if version >= (1, 1):
                        req.expect = 1
                elif not policy.keep_underscored(name, self.trusted):
                    continue
            if scheme_headers and name in scheme_headers:
                scheme = "https" if value == scheme_headers[name] else "http"
                if scheme_set and scheme != req.scheme:
                    raise H1Error(400, "contradictory scheme headers")
                req.scheme = scheme
                scheme_set = True
            headers.append(pair)
            if key in env:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(key, [env[key]]).append(value)
            else:
                env[key] = value
        if crlfs > limits.fields:
            raise H1Error(431, "too many header fields")
        if repeated is not None:
            for key, values in repeated.items():
                env[key] = ",".join(values)

        # -- framing (RFC 9112 6)
        chunked = False
        coded = False  # a content coding gunicorn passes on, and then closes after
        if codings is not None:
            for coding_list in codings:
                for item in coding_list.split(","):
                    coding = item.strip(" \t").lower()
                    if coding == "chunked":
                        if chunked:
                            raise H1Error(400, "chunked twice")
                        chunked = True
                    elif coding in ("identity", "compress", "deflate", "gzip"):
                        if chunked:
                            raise H1Error(400, "a coding after chunked")
                        coded = coded or coding != "identity"
                    else:
                        raise H1Error(501, "unsupported transfer coding")
            if not chunked:
                raise H1Error(400, "Transfer-Encoding does not end with chunked")
            if version < (1, 1):
                raise H1Error(400, "Transfer-Encoding in an HTTP/1.0 request")
            if lengths is not None:
                raise H1Error(400, "both Content-Length and Transfer-Encoding")
        length = 0
        if lengths is not None:
            if len(lengths) > 1:
                raise H1Error(400, "more than one Content-Length")
            if not lengths[0].isdigit() or not lengths[0].isascii():
                raise H1Error(400, "invalid Content-Length")
            length = int(lengths[0])

        if connection is not None:
            option = connection.lower().strip(" \t")
            keep = option == "keep-alive" or (option != "close" and version >= (1, 1))
        else:
            keep = version >= (1, 1)
        # After CONNECT the bytes are a tunnel's, never another request.
        req.keep_alive = keep and method != "CONNECT" and not coded
        if chunked:
            req.content_length = None
            self.state = _CHUNK_SIZE
            self.remaining = 0
        elif length:
            req.content_length = length
            self.state = _LENGTH
            self.remaining = length
        else:
            req.content_length = 0
            req.complete = True
            self.state = _DONE
        return req

    # -- bodies ---------------------------------------------------------------

    def _need_body(self) -> Any:
        if self.eof:
            return self._fail(400, CUT_SHORT)
        return NEED_DATA

    def _chunked(self) -> Any:
        limits = self.limits
        while True:
            state = self.state
            buf = self.buf
            if state == _CHUNK_DATA:
                if not buf:
                    return self._need_body()
                remaining = self.remaining
                if len(buf) <= remaining:
                    self.buf = b""
                    data = bytes(buf) if type(buf) is bytearray else buf
                else:
                    data = bytes(buf[:remaining])
                    self.buf = buf[remaining:]
                self.remaining = remaining - len(data)
                if not self.remaining:
                    self.state = _CHUNK_CRLF
                return data
            if state == _CHUNK_CRLF:
                if len(buf) < 2:
                    if buf[:1] not in (b"", b"\r"):
                        return self._fail(400, "chunk not followed by CRLF")
                    return self._need_body()
                if buf[:2] != b"\r\n":
                    return self._fail(400, "chunk not followed by CRLF")
                self.buf = buf[2:]
                self.state = _CHUNK_SIZE
                continue
            if state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if b"\n" in buf:
                        return self._fail(400, "bare LF in a chunk-size line")
                    if len(buf) > limits.chunk_line:
                        return self._fail(400, "chunk-size line too long")
                    return self._need_body()
                line = bytes(buf[:end])
                if b"\n" in line:
                    return self._fail(400, "bare LF in a chunk-size line")
                size, semicolon, ext = line.partition(b";")
                if semicolon:
                    if b"\r" in ext:
                        return self._fail(400, "bare CR in a chunk extension")
                    size = size.rstrip(b" \t")
                if not size or not _HEX.issuperset(size):
                    return self._fail(400, "invalid chunk size")
                if semicolon and _CHUNK_EXT.fullmatch(b";" + ext) is None:
                    return self._fail(400, "invalid chunk extension")
                self.buf = buf[end + 2 :]
                self.remaining = int(size, 16)
                if self.remaining:
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILERS
                    self.scan = self.crlfs = 0
                continue
            # _TRAILERS
            return self._trailers()

    def _trailers(self) -> Any:
        buf = self.buf
        limits = self.limits
        if buf[:2] == b"\r\n":
            self.buf = buf[2:]
            self.state = _DONE
            return _END
        end = buf.find(b"\r\n\r\n", max(0, self.scan - 3))
        if end < 0:
            if len(buf) > limits.trailers:
                return self._fail(431, "trailer section too large")
            part = buf[max(0, self.scan - 1) :]
            if part[:1] == b"\n" and self.scan:
                part = part[1:]
            crlfs = part.count(b"\r\n")
            if part.count(b"\n") != crlfs:
                return self._fail(400, "bare LF in the trailer section")
            self.crlfs += crlfs
            self.scan = len(buf)
            if self.crlfs > limits.fields:
                return self._fail(431, "too many trailer fields")
            return self._need_body()
        if end > limits.trailers:
            return self._fail(431, "trailer section too large")
        section = bytes(buf[:end])
        self.buf = buf[end + 4 :]
        lines = section.split(b"\r\n")
        if len(lines) > limits.fields:
            return self._fail(431, "too many trailer fields")
        if section.count(b"\n") != len(lines) - 1 or section.count(b"\r") != len(lines) - 1:
            return self._fail(400, "bare CR or LF in the trailer section")
        if _CTL.search(section) is not None:
            return self._fail(400, "control character in the trailer section")
        policy = self.policy
        trailers: list[tuple[str, str]] = []
        seen: set[str] = set()
        for line in lines:
            raw, colon, raw_value = line.decode("latin-1").partition(":")
            if not colon or _TOKEN_TEXT_RE.fullmatch(raw) is None:
                return self._fail(400, "invalid trailer field")
            name = policy.name(raw)[0]
            if name in _FORBIDDEN_TRAILERS:
                return self._fail(400, f"{name} is not allowed in trailers")
            if len(line) + 2 > limits.field_size:
                return self._fail(431, "trailer field too large")
            if name in _SINGLETONS:
                if name in seen:
                    return self._fail(400, f"more than one {name}")
                seen.add(name)
            if "_" in name:
                try:
                    if not policy.keep_underscored(name, False):
                        continue
                except H1Error as error:
                    return self._fail(error.status, error.reason)
            trailers.append((name, raw_value.strip(" \t")))
        self.state = _DONE
        return EndOfMessage(trailers)


# -- responses ------------------------------------------------------------------

_TOKEN_TEXT = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# Response header names the server owns: hop-by-hop fields are dropped
# (PEP 3333 forbids them from apps), Content-Length decides the framing.
_PLAIN, _LENGTH_FIELD, _CONNECTION, _HOP = 0, 1, 2, 3
_HOP_NAMES = frozenset(
    (
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
_name_kinds: dict[str, int] = {}
_status_lines: dict[str, tuple[int, bytes]] = {}

_KEEP = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _classify_name(name: Any) -> int:
    if type(name) is not str:
        raise TypeError(f"response header name {name!r} is not a str")
    if not name or not _TOKEN_TEXT.issuperset(name):
        raise ValueError(f"invalid response header name {name!r}")
    lname = name.lower()
    kind = (
        _LENGTH_FIELD
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
    found = _status_lines.get(status)
    if found is not None:
        return found
    if type(status) is not str:
        raise TypeError(f"status {status!r} is not a str")
    code_text = status[:3]
    if (
        len(status) < 3
        or not code_text.isdigit()
        or not code_text.isascii()
        or (len(status) > 3 and status[3] != " ")
        or _CTL_TEXT.search(status) is not None
    ):
        raise ValueError(f"invalid status {status!r}")
    found = (int(code_text), b"HTTP/1.1 %s\r\n" % status.encode("latin-1"))
    if len(_status_lines) < _CACHE_LIMIT:
        _status_lines[status] = found
    return found


class ResponseFraming:
    """How a response body goes out: what :func:`response_head` decided."""

    __slots__ = ("chunked", "code", "keep", "length", "no_body")

    def __init__(self) -> None:
        self.code = 0
        self.length: int | None = None
        self.chunked = False
        self.no_body = False
        self.keep = False


#: (status, headers) -> what :func:`_header_block` made of them (bounded by _CACHE_LIMIT)
_blocks: dict[tuple[Any, ...], tuple[int, bytes, bytes, int | None, bool]] = {}


def _header_block(
    status: Any, headers: Sequence[tuple[str, str]]
) -> tuple[int, bytes, bytes, int | None, bool]:
    """Check an app's status and headers; return the status code and line, the
    header lines to send, the Content-Length given (if any) and whether the app
    asked for ``Connection: close`` (that header itself is the server's to write)."""
    code, status_line = _status_line(status)
    length: int | None = None
    close = False
    parts: list[str] = []
    kinds = _name_kinds
    for name, value in headers:
        kind = kinds.get(name)
        if kind is None:
            kind = _classify_name(name)
        if type(value) is not str:
            raise TypeError(f"value of response header {name!r} is not a str")
        if not value.isprintable() and _CTL_TEXT.search(value) is not None:
            raise ValueError(f"response header {name!r} has a control character")
        if kind == _PLAIN:
            parts += (name, ": ", value, "\r\n")
        elif kind == _LENGTH_FIELD:
            if code < 200 or code == 204:
                continue  # RFC 9110: no Content-Length on these
            length = int(value)
            if length < 0:
                raise ValueError("negative Content-Length")
            parts += (name, ": ", value, "\r\n")
        elif kind == _CONNECTION and value.lower() == "close":
            close = True
    return code, status_line, "".join(parts).encode("latin-1"), length, close


def response_head(
    status: str,
    headers: Sequence[tuple[str, str]],
    req: Request,
    keep: bool,
    body_length: int | None,
    fixed: bytes,
    framing: ResponseFraming,
) -> bytes:
    """The status line and header section of a response, and its framing in ``framing``.

    ``keep``: whether the connection may stay open as far as the server
    knows; the app's ``Connection: close`` or a body ended by the close
    clears it, and the head says which. ``body_length``: the whole body's
    length when known. ``fixed``: header lines the server adds (Server, Date).
    Raises TypeError/ValueError for what an app must not send: a name that is
    not a token, a value with a control character (CR, LF, NUL, DEL...).
    """
    # Apps answer most requests with the same few header lists (every stream
    # has the same): each distinct one is checked and serialized once.
    try:
        key = (status, *headers)
        block = _blocks.get(key)
    except TypeError:  # something unhashable, which _header_block refuses
        key, block = (), None
    if block is None:
        block = _header_block(status, headers)
        if key:
            if len(_blocks) >= _CACHE_LIMIT:
                _blocks.clear()  # bounded; what recurs comes back
            _blocks[key] = block
    code, status_line, lines, length, close = block
    if close:
        keep = False
    no_body = req.method == "HEAD" or code < 200 or code == 204 or code == 304
    chunked = False
    extra = b""
    if length is None and not no_body:
        if body_length is not None:
            length = body_length
            extra = b"Content-Length: %d\r\n" % body_length
        elif req.version >= (1, 1):
            chunked = True
        else:
            keep = False  # HTTP/1.0 without a length: the close ends the body
    framing.code = code
    framing.length = None if no_body else length
    framing.chunked = chunked
    framing.no_body = no_body
    framing.keep = keep
    return b"".join(
        (
            status_line,
            fixed,
            _KEEP if keep else _CLOSE,
            _CHUNKED if chunked else b"",
            lines,
            extra,
            b"\r\n",
        )
    )


def simple_response(status: int, reason: str, fixed: bytes, keep: bool) -> bytes:
    """A whole plain-text response whose body is its reason phrase."""
    body = reason.encode()
    return b"HTTP/1.1 %d %s\r\n%s%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        body,
        fixed,
        _KEEP if keep else _CLOSE,
        len(body),
        body,
    )


REASONS: Final = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}
