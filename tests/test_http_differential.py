"""flask_signal.h1 against gunicorn's own parser, over the same request bytes.

gunicorn's ``RequestParser`` reads from any iterable of bytes, so both parsers
are driven in-process over one byte string (then the end of input). For every
input they must agree on what is served and what is refused: the requests
read before a refusal (method, path, query, version, header fields, body
bytes, whether the connection may go on) and how the input ends: refused with
which status, closed, or cut short. A deliberate difference is listed in
``DIFFERENCES`` and in docs/http-server.md, with its reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from gunicorn.config import Config
from gunicorn.http import errors as gerr
from gunicorn.http.parser import RequestParser
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flask_signal import h1

CFG = Config()
# Not a trusted proxy: forwarder and scheme headers are a peer's to send.
PEER = ("192.0.2.1", 40000)
_STATUS = (
    (gerr.LimitRequestLine, 414),
    (gerr.LimitRequestHeaders, 431),
    (gerr.UnsupportedTransferCoding, 501),
    (gerr.ExpectationFailed, 417),
)
CUT = "cut short"  # the input ended within a request
CLOSE = "close"  # nothing more to read, between requests (or after a closing one)

Outcome = tuple[list[tuple[Any, ...]], Any]


def gunicorn_reads(data: bytes) -> Outcome:
    """What gunicorn's parser makes of ``data``."""
    served: list[tuple[Any, ...]] = []
    parser = RequestParser(CFG, iter([data]), PEER)
    try:
        for req in parser:
            body = req.body.read()
            length = next((v for n, v in req.headers if n == "CONTENT-LENGTH"), None)
            if length is not None and len(body) < int(length):
                return served, CUT  # a short body: what gunicorn serves is cut short
            path = unquote_to_bytes(req.path).decode("latin-1")
            keep = not req.should_close()
            served.append((req.method, path, req.query, req.version, req.headers, body, keep))
            if not keep:
                return served, CLOSE
    except gerr.NoMoreData:
        return served, CUT
    except gerr.ChunkMissingTerminator as exc:
        # Also what gunicorn raises when the input ends right after a chunk
        # or within the trailers: the body is cut short, not malformed.
        return served, CUT if b"\r\n".startswith(exc.term) else 400
    except gerr.ParseException as exc:
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return served, status
        return served, getattr(exc, "code", 400)
    return served, CLOSE


def ours_reads(data: bytes) -> Outcome:
    """What flask_signal.h1 makes of ``data``."""
    served: list[tuple[Any, ...]] = []
    parser = h1.H1Parser()
    parser.receive(data)
    parser.receive(b"")
    while True:
        event = parser.next_event()
        if isinstance(event, h1.H1Error):
            return served, event.status
        if event is h1.CLOSED:
            return served, CUT if parser.in_head else CLOSE
        assert isinstance(event, h1.Request), event
        req = event
        body = []
        while not req.complete:
            part = parser.next_event()
            if isinstance(part, bytes):
                body.append(part)
                req.complete = parser.end_of_body()
            elif isinstance(part, h1.EndOfMessage):
                req.complete = True
            else:
                assert isinstance(part, h1.H1Error), part
                return served, CUT if part.reason == h1.CUT_SHORT else part.status
        env = req.environ
        served.append(
            (
                req.method,
                env["PATH_INFO"],
                env["QUERY_STRING"],
                req.version,
                req.headers,
                b"".join(body),
                req.keep_alive,
            )
        )
        if not req.keep_alive:
            return served, CLOSE
        parser.start_next()


# Deliberate differences, as (gunicorn's ending, ours) for the same requests
# served before it (docs/http-server.md lists them with their reasons):
DIFFERENCES = {
    # Limits bite while a head arrives: refused when the head cannot end
    # within them, where gunicorn waits for the rest and counts after.
    (CUT, 431),
    (CUT, 414),
}


def agree(data: bytes) -> None:
    theirs = gunicorn_reads(data)
    ours = ours_reads(data)
    if ours == theirs or (ours[0] == theirs[0] and (theirs[1], ours[1]) in DIFFERENCES):
        return
    shown = data if len(data) < 300 else data[:150] + b"..." + data[-150:]
    raise AssertionError(f"{shown!r}\n gunicorn: {theirs!r:.600}\n ours:     {ours!r:.600}")


# -- a corpus: valid, invalid, and the smuggling classics ------------------------

R = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
CORPUS = [
    R,
    b"GET /a%20b/%C3%A9?x=1&y=%20#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET //double/slash?q HTTP/1.1\r\n\r\n",
    b"GET http://example.org/p?q=1 HTTP/1.1\r\nHost: example.org\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\n\r\n",  # one empty line before a request is ignored
    b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # two are not
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: 005\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",  # cut short
    b"POST /p HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: 5 \r\n\r\nhello",  # OWS is trimmed
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
    # CL + TE, TE variants
    b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    CHUNKED + b"5\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5\r\nhello\r\n0\r\n\r\n" + R,
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # obs-fold, bare LF/CR, controls
    b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\tb\t\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \xe9t\xe9\r\n\r\n",
    b"GET / HTTP/1.1\r\nX\xe9: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET /\xe9 HTTP/1.1\r\n\r\n",
    b"GET /a\tb HTTP/1.1\r\n\r\n",
    # duplicate fields
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-A: 3\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: 1\r\nX_A: 2\r\n\r\n",
    # chunk-size tricks
    CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5 ;ext=1\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b'5;ext="q\\"x"\r\nhello\r\n0\r\n\r\n',
    CHUNKED + b"5;ext\rx\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5;=\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"00000005\r\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5\nhello\r\n0\r\n\r\n",
    CHUNKED + b"5\r\nhello\n0\r\n\r\n",
    CHUNKED + b"5\r\nhelloXX0\r\n\r\n",
    CHUNKED + b"5\r\nhello\r\n0\r\n",  # cut short before the trailer section ends
    CHUNKED + b"3\r\nabc\r\n0\n\r\n",
    CHUNKED + b"ffffffffffffffffffff\r\nabc",
    # trailers
    CHUNKED + b"0\r\nX-T: 1\r\n\r\n" + R,
    CHUNKED + b"0\r\nAccept: text/html\r\nAuthorization: x\r\n\r\n" + R,
    CHUNKED + b"0\r\nHost: evil\r\n\r\n" + R,
    CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n" + R,
    CHUNKED + b"0\r\nX-T: 1\nX-U: 2\r\n\r\n",
    CHUNKED + b"0\r\nX-T: a\x00b\r\n\r\n",
    CHUNKED + b"0\r\nX-T: 1\r\n continued\r\n\r\n",
    CHUNKED + b"0\r\nX_T: 1\r\n\r\n" + R,
    # pipelining
    R + R + R,
    R + b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + R,
    R + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + R,
    R + b"\x00garbage\r\n\r\n",
    R + b"GET / HTTP/1.1\r\nHost: a\r\n",
    # HTTP/1.0 and versions
    b"GET / HTTP/1.0\r\n\r\n" + R,
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + R,
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + R,
    b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Upgrade\r\n\r\n" + R,
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/0.9\r\n\r\n",
    b"GET / HTTP/1.10\r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # methods
    b"FOO / HTTP/1.1\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GE / HTTP/1.1\r\n\r\n",
    b"G\xc9T / HTTP/1.1\r\n\r\n",
    b"GET# / HTTP/1.1\r\n\r\n",
    b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n\r\n",
    # expectations, upgrades
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.1\r\nExpect: something\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b'HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 9\r\n\r\n{"a": 1}\n' + R,
    # limits, at and just past them
    b"GET /" + b"a" * 4080 + b" HTTP/1.1\r\n\r\n",  # a 4,094-byte request line
    b"GET /" + b"a" * 4081 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 8185 + b"\r\n\r\n",  # 8,190 bytes with its CRLF
    b"GET / HTTP/1.1\r\nX: " + b"a" * 8186 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 100 + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n",
    b"GET /" + b"a" * 5000,
    b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 200,
    b"GET / HTTP/1.1\r\nX: " + b"a" * 9000,
    CHUNKED + b"0\r\n" + b"X: a\r\n" * 101 + b"\r\n",
    b"",
    b"\r\n",
]


@pytest.mark.parametrize("data", CORPUS, ids=[repr(c[:48]) for c in CORPUS])
def test_the_corpus_is_read_as_gunicorn_reads_it(data: bytes) -> None:
    agree(data)


# -- generated and mutated requests ------------------------------------------------

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"CONNECT", b"FOO", b"get", b"G", b"PRI"]
TARGETS = [b"/", b"/a/b", b"/a%20b", b"/%zz", b"/?q=1", b"//x", b"*", b"http://h/p?q", b"h:1", b""]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 ", b"HTTP/11", b""]
NAMES = [
    b"Host", b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Connection",
    b"Expect", b"X-A", b"x-a", b"X_A", b"Accept", b"Upgrade", b"Trailer", b"", b"X A", b"X\xe9",
]  # fmt: skip
VALUES = [
    b"a", b"0", b"3", b"5", b"-1", b"chunked", b"gzip, chunked", b"chunked, gzip", b"xchunked",
    b"identity", b"close", b"keep-alive", b"Upgrade", b"100-continue", b"text/plain", b"",
    b" padded ", b"a\tb", b"\xe9", b"a\x00b", b"a\x7f",
]  # fmt: skip
SEPARATORS = [b": ", b":", b" : ", b":\t"]
EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for data in draw(st.lists(st.binary(max_size=12), max_size=3)):
        if not data:
            continue
        size = draw(st.sampled_from([b"%x", b"%X", b"%02x", b"%x ", b"%x;e=1", b'%x;e="v"']))
        parts.append(size % len(data) + draw(st.sampled_from(EOLS)) + data + b"\r\n")
    parts.append(b"0\r\n")
    field = st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES))
    trailers = draw(st.lists(field, max_size=2))
    for name, value in trailers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS))
    eol = draw(st.sampled_from(EOLS))
    line = draw(st.sampled_from([b"%s %s %s", b"%s %s %s", b"%s  %s %s", b"%s %s"]))
    if line.count(b"%s") == 2:
        head = [line % (method, target)]
    else:
        head = [line % (method, target, version)]
    fields = draw(
        st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(SEPARATORS), st.sampled_from(VALUES)),
            max_size=5,
        )
    )
    head += [name + sep + value for name, sep, value in fields]
    body = draw(st.sampled_from([b"", b"hello", b"0\r\n\r\n"]))
    if draw(st.booleans()):
        body = draw(chunked_bodies())
        head.append(b"Transfer-Encoding: chunked")
    elif body and draw(st.booleans()):
        head.append(b"Content-Length: %d" % len(body))
    if draw(st.booleans()):
        head.append(b"X-Folded: a")
        head.append(draw(st.sampled_from([b" b", b"\tb"])))
    return eol.join(head) + eol + eol + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "cut", "repeat"]))
        if kind == "insert":
            junk = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b"\x00", b":"]))
            data = data[:at] + junk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 :]
        elif kind == "replace":
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind == "cut":
            data = data[:at]
        else:
            data = data[:at] + data[max(0, at - 8) : at] + data[at:]
    return data


@settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated())
@example(CHUNKED + b"0\r\nAccept: text/html\r\n\r\n" + R)
@example(b"GET / HTTP/1.1\r\nExpect: a\r\nHost: a\x00b\r\n\r\n")  # 417 first, as gunicorn
def test_generated_and_mutated_requests_are_read_as_gunicorn_reads_them(data: bytes) -> None:
    agree(data)
