"""The pure layers on their own: frames, request parsing, the memory broker's bookkeeping."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from flask_signal import framing
from flask_signal.brokers.memory import MemoryBroker
from flask_signal.hub import ENDED, Stream
from flask_signal.parsing import (
    BadRequest,
    TooLarge,
    UnsupportedMediaType,
    accepts_event_stream,
    loads,
    parse_body,
    parse_form,
    parse_size,
    read_body,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(10, 10), ("10kb", 10240), ("1mb", 1048576), (" 2 KB ", 2048), ("512", 512), ("1.5kb", 1536)],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "ten", "10 parsecs", "-1kb", 0, -5, True, "0kb"])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


def test_swarm_event_is_compact_json() -> None:
    assert framing.swarm_event("signal", {"a": [1, "é"], "b": None}) == (
        'event: signal\ndata: {"a":[1,"é"],"b":null}\n\n'.encode()
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1}',
        b'{"a":1} \t\r\n',
        b'{"a":1} x',
        b'{"a":1}{}',
        b'{"a":1}\x0b',
        b'{"a":1}\xc2\xa0',
        b"{",
        b'{"\xff":1}',
        b'{"a":"\\ud800"}',
        '{"é":"\u2028"}'.encode(),
        b'\xef\xbb\xbf{"a":1}',
        '{"a":1}'.encode("utf-16-le"),
        '{"a":1}'.encode("utf-32-le"),
        b' {"a":1}',
        b"[1]",
    ],
)
def test_loads_is_json_loads(body: bytes) -> None:
    def outcome(load: Any) -> object:
        try:
            return load(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return type(exc)

    assert outcome(loads) == outcome(json.loads)


@pytest.mark.parametrize(
    "value",
    ['s\u2028"', 0, -1.5, 1e300, True, None, [], {}, {"k": [1, {"n": None}], "é": "\x00"}],
)
def test_to_json_is_compact_json(value: object) -> None:
    assert framing.to_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_to_json_errors_are_those_of_json() -> None:
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        framing.to_json(circular)
    with pytest.raises(TypeError, match="not JSON serializable"):
        framing.to_json({"x": object()})


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("a\nb\r\nc\rd", "data: a\ndata: b\ndata: c\ndata: d\n"),
        ("", "data: \n"),
        ("x\n", "data: x\ndata: \n"),
        ("\n\n", "data: \ndata: \ndata: \n"),
        ({"k": "v"}, 'data: {"k":"v"}\n'),
        (3, "data: 3\n"),
    ],
)
def test_message_data_lines(data: object, lines: str) -> None:
    assert framing.message(data) == (lines + "\n").encode()


def test_message_fields_and_refusals() -> None:
    assert (
        framing.message("x", event="e", id="7", retry=100)
        == b"event: e\ndata: x\nid: 7\nretry: 100\n\n"
    )
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValueError):
            framing.message("x", event=bad)
        with pytest.raises(ValueError):
            framing.message("x", id=bad)
    assert framing.comment() == b":\n\n"
    assert framing.comment("hi\nthere") == b": hi\n: there\n\n"


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("", True),
        ("text/event-stream", True),
        ("*/*", True),
        ("text/*", True),
        ("text/html", False),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=0, */*", False),
        ("text/html;q=0.9, text/*;q=0.1", True),
        ("*/*;q=0", False),
        ("garbage", False),
    ],
)
def test_accepts_event_stream(accept: str | None, ok: bool) -> None:
    assert accepts_event_stream(accept) is ok


def test_read_body_counts_bytes() -> None:
    assert read_body(io.BytesIO(b"abc"), 3, 3) == b"abc"
    assert read_body(io.BytesIO(b"abcdef"), 10, 3) == b"abc"  # never past Content-Length
    assert read_body(io.BytesIO(b"abc"), 3, None) == b"abc"
    assert read_body(io.BytesIO(b"abc"), 3, None, terminated=False) == b""
    with pytest.raises(TooLarge):
        read_body(io.BytesIO(b""), 3, 4)  # declared too large: refused unread
    with pytest.raises(TooLarge):
        read_body(io.BytesIO(b"abcd"), 3, None)  # chunked, counted


def test_parse_body() -> None:
    assert parse_body("application/json; charset=utf-8", b'{"a":1}') == {"a": 1}
    assert parse_body("application/vnd.api+json", b'{"a":1}') == {"a": 1}
    assert parse_body("application/x-www-form-urlencoded", b"a=1") == {"a": "1"}
    with pytest.raises(UnsupportedMediaType):
        parse_body("text/plain", b"a=1")
    with pytest.raises(UnsupportedMediaType):
        parse_body(None, b"a=1")
    for bad in (b"{", b"[]", b"\xff"):
        with pytest.raises(BadRequest) as err:
            parse_body("application/json", bad)
        assert err.value.status == 400


def test_parse_form_as_qs() -> None:
    assert parse_form(b"a[b][c]=1&a[b][d]=2&e=%20x+y") == {
        "a": {"b": {"c": "1", "d": "2"}},
        "e": " x y",
    }
    assert parse_form(b"l[]=1&l[]=2&m=1&m=2") == {"l": ["1", "2"], "m": ["1", "2"]}
    assert parse_form(b"i[2]=c&i[0]=a") == {"i": ["a", "c"]}
    assert parse_form(b"big[21]=x") == {"big": {"21": "x"}}  # past qs's array limit
    assert parse_form(b"a[b]c=1") == {"a[b]c": "1"}
    assert parse_form(b"&&=1&a") == {"a": ""}
    with pytest.raises(BadRequest):
        parse_form(b"a=1&a[b]=2")
    with pytest.raises(BadRequest):
        parse_form(b"x=1&" * 1001)


def test_stream_joins_waiting_frames_and_ends_after_them() -> None:
    stream = Stream(3)
    assert stream.put(b"a") and stream.put(b"b")
    assert stream.get() == b"ab"
    stream.put(b"c")
    stream.end()
    assert not stream.put(b"late")
    assert stream.get() == b"c"
    assert stream.get() is ENDED


def test_stream_overflow_drops_the_backlog() -> None:
    aborted = []

    class Response:
        def write_now(self, frame: bytes) -> bool:
            raise AssertionError("not direct")

        def abort(self) -> None:
            aborted.append(True)

    stream = Stream(2)
    stream.response = Response()
    assert stream.put(b"1") and stream.put(b"2")
    assert not stream.put(b"3")
    assert stream.end_reason == "overflow" and aborted == [True]
    assert stream.get() is ENDED


def test_memory_broker_forgets_idle_channel_history() -> None:
    broker = MemoryBroker(history_ttl=0)
    listener = Stream(10, "channel")
    broker.subscribe(listener, ["kept"])
    broker.publish(["kept"], "x")
    for i in range(1100):
        broker.publish([f"gone-{i}"], i)
    assert "kept" in broker.history  # subscribed: kept whatever its age
    assert len(broker.history) < 200
