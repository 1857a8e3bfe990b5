"""flask_signal.h1, the sans-IO HTTP/1.1 core: bytes in, events out, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_signal import h1
from flask_signal.h1 import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    EndOfMessage,
    H1Error,
    H1Parser,
    HeaderPolicy,
    Limits,
    Request,
)

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n"
CHUNKED = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


def events(parser: H1Parser) -> list[Any]:
    """Every event up to the next NEED_DATA, PAUSED, CLOSED or error; requests are answered."""
    out: list[Any] = []
    while True:
        event = parser.next_event()
        if event is PAUSED:
            out.append(event)
            parser.start_next()
            continue
        out.append(event)
        if event is NEED_DATA or event is CLOSED or isinstance(event, H1Error):
            return out


def parse(data: bytes, **limits: int) -> list[Any]:
    parser = H1Parser(Limits(**limits))
    parser.receive(data)
    parser.receive(b"")
    return events(parser)


def error_of(data: bytes, **limits: int) -> int:
    last = parse(data, **limits)[-1]
    assert isinstance(last, H1Error), last
    return last.status


def test_a_request_becomes_the_environ_an_app_sees() -> None:
    got = parse(b"POST /p%20q?x=%20 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")  # fmt: skip
    req = got[0]
    assert isinstance(req, Request)
    env = req.environ
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/p q" and env["QUERY_STRING"] == "x=%20"
    assert env["RAW_URI"] == "/p%20q?x=%20" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == "h" and env["HTTP_X_A"] == "1,2"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
    assert req.headers[:2] == [("HOST", "h"), ("X-A", "1")]
    assert got[1:] == [b"abc", PAUSED, CLOSED]
    assert req.keep_alive and req.content_length == 3


def test_bytes_in_any_pieces_give_the_same_events() -> None:
    data = GET + CHUNKED + b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n" + GET
    whole = H1Parser()
    whole.receive(data)
    expected = [repr_event(e) for e in events(whole)]
    parser = H1Parser()
    seen: list[str] = []
    for i in range(len(data)):
        parser.receive(data[i : i + 1])
        seen += [repr_event(e) for e in events(parser) if e is not NEED_DATA]
    assert [e for e in seen if not e.startswith("b")] == [
        e for e in expected if e != "NEED_DATA" and not e.startswith("b")
    ]
    assert b"".join(eval(e) for e in seen if e.startswith("b")) == b"abc"


def repr_event(event: Any) -> str:
    if isinstance(event, Request):
        return f"Request({event.method} {event.uri} {sorted(event.environ.items())})"
    return repr(event)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_hostile_input_split_anywhere_reads_the_same(sizes: list[int]) -> None:
    data = (CHUNKED + b"5\r\nhello\r\n0\r\nAccept: x\r\n\r\n" + GET) * 2 + b"GET * HTTP/1.1\r\n\r\n"
    reference = [repr_event(e) for e in parse(data) if e is not NEED_DATA]
    parser = H1Parser()
    got: list[str] = []
    at = 0
    for size in sizes * 20:
        parser.receive(data[at : at + size])
        at += size
        got += [repr_event(e) for e in events(parser) if e is not NEED_DATA]
        if (got and got[-1].startswith("H1Error")) or at >= len(data):
            break
    if not (got and got[-1].startswith("H1Error")):
        parser.receive(data[at:])
        parser.receive(b"")
        got += [repr_event(e) for e in events(parser) if e is not NEED_DATA]
    join = [e for e in got if not e.startswith("b")]
    assert join == [e for e in reference if not e.startswith("b")]


# -- case 1 and 2: trailers are kept apart, and bounded -------------------------------


def test_trailers_never_reach_the_next_request() -> None:
    got = parse(
        CHUNKED + b"2\r\nhi\r\n0\r\nAccept: text/html\r\nX-Forwarded-Proto: https\r\n"
        b"Cookie: c=1\r\n\r\n" + GET
    )
    first, body, end, paused, second = got[:5]
    assert paused is PAUSED
    assert body == b"hi"
    assert isinstance(end, EndOfMessage)
    assert end.trailers == [("ACCEPT", "text/html"), ("X-FORWARDED-PROTO", "https"),
                            ("COOKIE", "c=1")]  # fmt: skip
    assert isinstance(second, Request)
    for key in ("HTTP_ACCEPT", "HTTP_X_FORWARDED_PROTO", "HTTP_COOKIE"):
        assert key not in first.environ and key not in second.environ


@pytest.mark.parametrize("name", [b"Host", b"Authorization", b"Content-Length", b"TE"])
def test_trailers_that_change_routing_or_framing_are_refused(name: bytes) -> None:
    assert error_of(CHUNKED + b"0\r\n" + name + b": x\r\n\r\n" + GET) == 400


def test_an_endless_trailer_section_is_refused_as_it_arrives() -> None:
    parser = H1Parser()
    parser.receive(CHUNKED + b"0\r\n")
    assert isinstance(parser.next_event(), Request)
    line = b"X-T: " + b"v" * 1000 + b"\r\n"
    sent = 0
    while True:
        parser.receive(line)
        sent += len(line)
        event = parser.next_event()
        if event is not NEED_DATA:
            break
        assert parser.buffered <= parser.limits.trailers + len(line)
    assert isinstance(event, H1Error) and event.status == 431
    assert sent <= parser.limits.trailers + len(line)
    # One endless value, no line end: refused as soon as it passes the limit.
    parser = H1Parser()
    parser.receive(CHUNKED + b"0\r\nX-T: ")
    parser.next_event()
    for _ in range(1000):
        parser.receive(b"v" * 1024)
        event = parser.next_event()
        if event is not NEED_DATA:
            break
    assert isinstance(event, H1Error) and event.status == 431


def test_too_many_trailer_fields_are_refused() -> None:
    assert error_of(CHUNKED + b"0\r\n" + b"X: a\r\n" * 101 + b"\r\n") == 431


# -- case 3: a pipelined request waits for the one before it ---------------------------


def test_a_pipelined_request_is_not_parsed_before_the_one_ahead_is_answered() -> None:
    parser = H1Parser()
    parser.receive(GET + GET + GET)
    assert isinstance(parser.next_event(), Request)
    assert parser.next_event() is PAUSED
    assert parser.next_event() is PAUSED  # however often it is asked
    assert parser.buffered == 2 * len(GET)  # held as received bytes, no objects
    parser.start_next()
    assert isinstance(parser.next_event(), Request)


# -- case 4: limits bite before a head is complete -----------------------------------


def test_a_request_line_is_refused_once_it_passes_its_limit() -> None:
    parser = H1Parser()
    parser.receive(b"GET /" + b"a" * 4089 + b"\r")
    assert parser.next_event() is NEED_DATA  # 4,094 bytes and a CR: could still end here
    parser.receive(b"a")
    event = parser.next_event()
    assert isinstance(event, H1Error) and event.status == 414


def test_a_head_with_too_many_fields_is_refused_before_it_ends() -> None:
    parser = H1Parser()
    parser.receive(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101)
    event = parser.next_event()
    assert isinstance(event, H1Error) and event.status == 431


def test_a_field_line_is_refused_once_it_passes_its_limit() -> None:
    parser = H1Parser()
    parser.receive(b"GET / HTTP/1.1\r\nX: " + b"v" * 8185 + b"\r")
    assert parser.next_event() is NEED_DATA  # 8,188 bytes and a CR: could still end here
    parser.receive(b"v")
    event = parser.next_event()
    assert isinstance(event, H1Error) and event.status == 431


def test_a_whole_head_is_bounded() -> None:
    parser = H1Parser(Limits(head=1000))
    parser.receive(b"GET / HTTP/1.1\r\n" + b"X: " + b"v" * 500 + b"\r\n")
    assert parser.next_event() is NEED_DATA
    parser.receive(b"Y: " + b"v" * 500 + b"\r\n")
    event = parser.next_event()
    assert isinstance(event, H1Error) and event.status == 431


def test_a_head_trickling_in_is_scanned_once() -> None:
    parser = H1Parser()
    parser.receive(b"GET / HTTP/1.1\r\n")
    for _ in range(90):
        parser.receive(b"X-Long-Name: value\r")
        assert parser.next_event() is NEED_DATA
        parser.receive(b"\n")
        assert parser.next_event() is NEED_DATA
    assert parser.crlfs == 91 and parser.in_head
    parser.receive(b"\r\n")
    assert isinstance(parser.next_event(), Request)


def test_the_limits_match_gunicorns() -> None:
    line = b"GET /" + b"a" * 4080 + b" HTTP/1.1\r\n\r\n"  # 4,094 bytes before CRLF
    assert isinstance(parse(line)[0], Request)
    assert error_of(line.replace(b"/", b"/a", 1)) == 414
    field = b"GET / HTTP/1.1\r\nX: " + b"a" * 8185 + b"\r\n\r\n"  # 8,190 bytes with CRLF
    assert isinstance(parse(field)[0], Request)
    assert error_of(field.replace(b"X: ", b"X: a")) == 431
    assert isinstance(parse(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 100 + b"\r\n")[0], Request)


# -- cases 5 to 10 ---------------------------------------------------------------------


def test_http_1_0_with_transfer_encoding_is_refused() -> None:
    assert error_of(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400


def test_optional_whitespace_is_trimmed_from_values() -> None:
    got = parse(b"POST / HTTP/1.1\r\nContent-Length: 3 \r\nX-A: \t v \t\r\n\r\nabc")
    assert got[0].environ["HTTP_X_A"] == "v" and got[1] == b"abc"
    got = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\t\r\n\r\n1\r\na\r\n0\r\n\r\n")
    assert got[1] == b"a" and isinstance(got[2], EndOfMessage)


@pytest.mark.parametrize(
    "fields",
    [
        b"Host: a\r\nHost: b\r\n",
        b"Host: a\r\nhost: a\r\n",
        b"Content-Type: a\r\nContent-Type: a\r\n",
        b"Content-Length: 0\r\nContent-Length: 0\r\n",
        b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_ambiguous_duplicates_are_refused(fields: bytes) -> None:
    assert error_of(b"POST / HTTP/1.1\r\n" + fields + b"\r\n0\r\n\r\n") == 400


@pytest.mark.parametrize(
    ("coding", "status"),
    [(b"xchunked", 501), (b"chunked, chunked", 400), (b"chunked, gzip", 400), (b"gzip", 400)],
)
def test_transfer_codings(coding: bytes, status: int) -> None:
    assert error_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n") == status


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n", b"5\nhello\r\n0\r\n\r\n", b"5\r\nhello\n0\r\n\r\n", b"5\r\nhelloXX",
     b"5;a\rb\r\nhello\r\n", b"-1\r\n", b"0x5\r\nhello\r\n", b"\r\nhello\r\n",
     b"5;=x\r\nhello\r\n"],
)  # fmt: skip
def test_malformed_chunks_are_refused(chunks: bytes) -> None:
    assert error_of(CHUNKED + chunks) == 400


def test_an_upgrade_request_keeps_its_body() -> None:
    got = parse(
        b"POST /j HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b'Content-Length: 8\r\n\r\n{"a": 1}' + GET
    )
    assert got[1] == b'{"a": 1}'
    assert isinstance(got[3], Request) and got[3].uri == "/a?b=1"


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/2.0", b"PRI * HTTP/2.0", b"GET /", b"GET * HTTP/1.1", b"GET  / HTTP/1.1",
     b"GET / HTTP/1.1 ", b"GET / HTTP/0.9", b"get / HTTP/1.1", b"GET /\x00 HTTP/1.1",
     b"GET host:80 HTTP/1.1"],
)  # fmt: skip
def test_request_lines_gunicorn_refuses_are_refused(line: bytes) -> None:
    assert error_of(line + b"\r\nHost: h\r\n\r\n") == 400


def test_an_unknown_method_is_the_apps_to_refuse() -> None:
    # Well-formed: the app answers it (405 from Flask), as under gunicorn.
    req = parse(b"PURGE / HTTP/1.1\r\n\r\n")[0]
    assert isinstance(req, Request) and req.method == "PURGE"


def test_a_bad_request_line_is_refused_before_the_head_ends() -> None:
    parser = H1Parser()
    parser.receive(b"GET * HTTP/1.1\r\nHost: h\r\n")
    event = parser.next_event()
    assert isinstance(event, H1Error) and event.status == 400


@pytest.mark.parametrize(
    "value", ["a\x00b", "a\x0bb", "a\x7fb", "a\rb", "a\nb", "a\r\nX-Injected: 1"]
)
def test_control_characters_never_go_into_a_response_head(value: str) -> None:
    req = parse(GET)[0]
    with pytest.raises(ValueError):
        h1.response_head("200 OK", [("X-A", value)], req, True, 0, b"", h1.ResponseFraming())


def test_a_response_head_says_whether_the_connection_stays() -> None:
    req = parse(GET)[0]
    framing = h1.ResponseFraming()
    head = h1.response_head("200 OK", [("X-A", "a\tb")], req, True, None, b"", framing)
    assert head == (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n"
                    b"Transfer-Encoding: chunked\r\nX-A: a\tb\r\n\r\n")  # fmt: skip
    assert framing.chunked and framing.keep
    head = h1.response_head("200 OK", [("Connection", "close")], req, True, 2, b"", framing)
    assert b"Connection: close\r\n" in head and b"Content-Length: 2\r\n" in head
    assert not framing.keep


def test_header_names_with_underscores_follow_the_header_map() -> None:
    data = b"GET / HTTP/1.1\r\nX_A: 1\r\n\r\n"
    parser = H1Parser(policy=HeaderPolicy("drop"))
    parser.receive(data)
    assert "HTTP_X_A" not in parser.next_event().environ
    parser = H1Parser(policy=HeaderPolicy("refuse"))
    parser.receive(data)
    assert parser.next_event().status == 400
    parser = H1Parser(policy=HeaderPolicy("dangerous"))
    parser.receive(data)
    assert parser.next_event().environ["HTTP_X_A"] == "1"
    # A trusted proxy may send its forwarder headers, and set the scheme.
    policy = HeaderPolicy("drop", ["SCRIPT_NAME"], {"X-FORWARDED-PROTO": "https"})
    parser = H1Parser(policy=policy, trusted=True)
    parser.receive(b"GET / HTTP/1.1\r\nSCRIPT_NAME: /m\r\nX-Forwarded-Proto: https\r\n\r\n")
    req = parser.next_event()
    assert req.environ["HTTP_SCRIPT_NAME"] == "/m" and req.scheme == "https"
    parser = H1Parser(policy=policy, trusted=False)
    parser.receive(b"GET / HTTP/1.1\r\nSCRIPT_NAME: /m\r\nX-Forwarded-Proto: https\r\n\r\n")
    req = parser.next_event()
    assert "HTTP_SCRIPT_NAME" not in req.environ and req.scheme == ""


def test_a_close_between_requests_and_within_a_body() -> None:
    assert parse(b"") == [CLOSED]
    assert parse(GET)[-1] is CLOSED
    got = parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert got[1] == b"ab" and got[2].reason == h1.CUT_SHORT
