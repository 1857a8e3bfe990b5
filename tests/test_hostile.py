"""Hostile input at the endpoints: what no client may do, byte for byte, then by hypothesis.

The exact requests first (each a regression test of its own), in process:
Flask's test client on an app with :class:`Signal`, streams read inside a
greenlet, as a gevent worker runs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import gevent
import gevent.event
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_signal import Signal, framing
from flask_signal.brokers import parse_event_id, split_event_id
from flask_signal.parsing import BadRequest, accepts_event_stream, parse_body
from flask_signal.sse import Event, SSEParser

from .redis_support import prefix, redis_url  # noqa: F401 - fixtures
from .support import SSE, Pair, Peer, Server

pytestmark = pytest.mark.timeout(120)

PREFIX = "/signal"


def make_app(**settings: Any) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    Signal(app, ping_interval=0, **settings)
    return app


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings naming a broker: memory, or the session's Redis under a key prefix of its own."""
    if request.param == "memory":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"broker_url": url, "redis_prefix": request.getfixturevalue("prefix")}


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps made by a test; their brokers are closed afterwards."""
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["signal_state"].close()


def in_greenlet(func: Any, *args: Any, timeout: float = 10, **kwargs: Any) -> Any:
    """Run ``func`` in a greenlet, as a gevent worker runs a request; its result or error."""
    job = gevent.spawn(func, *args, **kwargs)
    job.join(timeout)
    if not job.dead:
        job.kill()
        raise AssertionError(f"{func.__name__} hung for {timeout}s")
    return job.get()


def opening(client: FlaskClient, path: str, headers: dict[str, str] | None = None) -> Any:
    """A stream's status and the events sent as it opened (replay included); then it is closed."""

    def read() -> tuple[int, list[Event], bytes]:
        response = client.get(path, headers=headers or {}, buffered=False)
        try:
            if response.status_code != 200:
                return response.status_code, [], response.get_data()
            head = next(iter(response.response))
            parser = SSEParser()
            return response.status_code, parser.feed(head), head
        finally:
            response.close()

    return in_greenlet(read)


def history(client: FlaskClient, channel: str) -> list[Event]:
    """Every retained event of ``channel``."""
    status, events, body = opening(client, f"{PREFIX}/channels/{channel}", {"Last-Event-ID": "0"})
    assert status == 200, body
    return events


JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


def post(client: FlaskClient, path: str, body: bytes, content_type: str | None) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return in_greenlet(client.post, path, data=body, headers=headers)


class Watcher:
    """A stream held open in a greenlet, as a client holds it; frames kept as they come."""

    def __init__(self, client: FlaskClient, path: str, headers: dict[str, str] | None = None):
        self.frames: list[bytes] = []
        self.response: Any = None
        opened = gevent.event.Event()

        def run() -> None:
            try:
                self.response = client.get(path, headers=headers or {}, buffered=False)
            finally:
                opened.set()
            for frame in self.response.response:
                self.frames.append(frame)

        self.job = gevent.spawn(run)
        assert opened.wait(5), f"GET {path} hung"
        assert self.response is not None and self.response.status_code == 200

    def take(self, wait: float = 0.02) -> bytes:
        """What arrived so far (after letting other greenlets run for ``wait`` seconds)."""
        gevent.sleep(wait)
        raw = b"".join(self.frames)
        self.frames.clear()
        return raw

    def events(self, wait: float = 0.02) -> list[Event]:
        return SSEParser().feed(self.take(wait))

    def close(self) -> None:
        self.job.kill()
        self.response.close()


@dataclass
class Swarm:
    """A swarm of two peers, held open in process."""

    id: str
    token: str
    initiator: Watcher
    peer: Watcher

    @classmethod
    def create(cls, client: FlaskClient) -> Swarm:
        initiator = Watcher(client, PREFIX)
        (connect,) = initiator.events(0.05)
        data = json.loads(connect.data)
        peer = Watcher(client, f"{PREFIX}/{data['id']}")
        assert [e.event for e in peer.events(0.05)] == ["connect"]
        assert [e.event for e in initiator.events(0.05)] == ["join"]
        return cls(data["id"], data["token"], initiator, peer)

    def close(self) -> None:
        self.peer.close()
        self.initiator.close()


# -- case 12: publish authorization covers every channel a request names --------------


def anyone(request: Any, channel: str) -> bool:
    return True


def only_public(request: Any, channel: str) -> bool:
    return bool(channel.startswith("public"))


@pytest.mark.parametrize(
    "path",
    [
        "/channels/public?channel=private",
        "/channels/public?channel=public2&channel=private",
        "/channels/private?channel=public",
    ],
)
def test_publish_auth_covers_every_named_channel(
    apps: list[Flask], broker: dict[str, Any], path: str
) -> None:
    app = make_app(publish_auth=only_public, **broker)
    apps.append(app)
    client = app.test_client()
    response = in_greenlet(client.post, PREFIX + path, json={"data": "sneaky"})
    assert response.status_code == 403
    for channel in ("public", "public2", "private"):
        assert history(client, channel) == []


def test_publish_auth_allows_when_every_channel_is_allowed(
    apps: list[Flask], broker: dict[str, Any]
) -> None:
    app = make_app(publish_auth=only_public, **broker)
    apps.append(app)
    client = app.test_client()
    path = f"{PREFIX}/channels/public?channel=public2"
    response = in_greenlet(client.post, path, json={"data": "hi"})
    assert response.status_code == 200, response.data
    for channel in ("public", "public2"):
        assert [e.data for e in history(client, channel)] == ["hi"]


def test_publish_key_and_auth_both_hold_for_query_channels(apps: list[Flask]) -> None:
    app = make_app(publish_key="k", publish_auth=only_public)
    apps.append(app)
    client = app.test_client()
    path = f"{PREFIX}/channels/public?channel=private"
    key = {"Authorization": "Bearer k"}
    assert client.post(path, json={"data": 1}).status_code == 401
    assert client.post(path, json={"data": 1}, headers=key).status_code == 403
    assert history(client, "private") == []


# -- case 13: Last-Event-ID values that are not the hub's ids ---------------------------


def hub_epoch(client: FlaskClient) -> str:
    response = in_greenlet(client.post, f"{PREFIX}/channels/probe", json={"data": 0})
    assert response.status_code == 200
    epoch: str = response.get_json()["id"].rpartition("-")[0]
    return epoch


@pytest.mark.parametrize(
    "tail", ["²", "1²", "٣", "1" * 5000, "9" * 16, "", "-1", "1.5", " 1", "0x1", "1_000"]
)
def test_malformed_sequence_in_last_event_id(
    apps: list[Flask], broker: dict[str, Any], tail: str
) -> None:
    app = make_app(publish_auth=anyone, **broker)
    apps.append(app)
    client = app.test_client()
    epoch = hub_epoch(client)
    value = f"{epoch}-{tail}"
    # A header arrives as latin-1 (a byte 0xB2 is "²"); the query as UTF-8, percent-encoded.
    try:
        header = value.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        header = value.encode().decode("latin-1")
    for headers, query in (
        ({"Last-Event-ID": header}, ""),
        ({}, "?lastEventId=" + quote(value)),
        ({}, "?evs_last_event_id=" + quote(value)),
    ):
        status, events, body = opening(client, f"{PREFIX}/channels/probe{query}", headers)
        # Not an id the hub gave: the client is told that events may be lost,
        # then gets every retained event.
        assert status == 200, body
        assert [(e.event, e.data) for e in events][1:] == [("message", "0")]
        assert events[0].event == "missed"


def test_last_event_id_with_leading_zeros_still_resumes(
    apps: list[Flask], broker: dict[str, Any]
) -> None:
    app = make_app(publish_auth=anyone, **broker)
    apps.append(app)
    client = app.test_client()
    epoch = hub_epoch(client)
    in_greenlet(client.post, f"{PREFIX}/channels/probe", json={"data": 1})
    status, events, _ = opening(
        client, f"{PREFIX}/channels/probe", {"Last-Event-ID": f"{epoch}-0001"}
    )
    assert status == 200
    assert [e.data for e in events] == ["1"]


# -- case 13: bodies that used to raise ------------------------------------------------


@pytest.fixture
def swarm_app(apps: list[Flask]) -> Iterator[tuple[FlaskClient, Swarm]]:
    app = make_app(direct_writes=False, limit="100kb")
    apps.append(app)
    client = app.test_client()
    swarm = Swarm.create(client)
    try:
        yield client, swarm
    finally:
        swarm.close()


def test_json_nested_3000_deep_is_refused(swarm_app: tuple[FlaskClient, Swarm]) -> None:
    client, swarm = swarm_app
    for body in (b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        for nest in (body, b'{"token":"%s","data":%s}' % (swarm.token.encode(), body)):
            response = post(client, f"{PREFIX}/{swarm.id}", nest, JSON_TYPE)
            assert response.status_code == 400, response.data
    deep = b'{"token":"%s","data":%s}' % (swarm.token.encode(), b"[" * 65 + b"]" * 65)
    assert post(client, f"{PREFIX}/{swarm.id}", deep, JSON_TYPE).status_code == 400
    fine = b'{"token":"%s","data":%s}' % (swarm.token.encode(), b"[" * 63 + b"]" * 63)
    assert post(client, f"{PREFIX}/{swarm.id}", fine, JSON_TYPE).status_code == 200
    assert [e.event for e in swarm.initiator.events()] == ["signal"]


@pytest.mark.parametrize(
    ("body", "data"),
    [
        ("data[²]=x", {"²": "x"}),
        ("data[%C2%B2]=x", {"²": "x"}),
        ("data[" + "1" * 5000 + "]=x", {"1" * 5000: "x"}),
        ("data[0" + "1" * 5000 + "]=x", {"0" + "1" * 5000: "x"}),
        ("data[٣]=x&data[1]=y", {"٣": "x", "1": "y"}),
        ("data[01]=x", {"01": "x"}),
        ("data[1]=x&data[0]=y", ["y", "x"]),
    ],
)
def test_form_indices_that_are_not_indices(
    swarm_app: tuple[FlaskClient, Swarm], body: str, data: Any
) -> None:
    client, swarm = swarm_app
    full = f"token={swarm.token}&{body}".encode()
    response = post(client, f"{PREFIX}/{swarm.id}", full, FORM_TYPE)
    assert response.status_code == 200, response.data
    (event,) = swarm.initiator.events()
    assert json.loads(event.data) == data


def test_lone_surrogate_is_framed_as_json_stringify_frames_it(
    swarm_app: tuple[FlaskClient, Swarm],
) -> None:
    client, swarm = swarm_app
    body = b'{"token":"%s","data":{"a":"\\ud800","b":"x\\udc00y","c":"\\ud83d\\ude00"}}'
    response = post(client, f"{PREFIX}/{swarm.id}", body % swarm.token.encode(), JSON_TYPE)
    assert response.status_code == 200, response.data
    raw = swarm.initiator.take()
    # Bytes as JSON.stringify({a: "\ud800", b: "x\udc00y", c: "😀"}) writes them, in UTF-8.
    assert raw == 'event: signal\ndata: {"a":"\\ud800","b":"x\\udc00y","c":"😀"}\n\n'.encode()


def test_lone_surrogates_in_a_channel_message(apps: list[Flask], broker: dict[str, Any]) -> None:
    app = make_app(publish_auth=anyone, **broker)
    apps.append(app)
    client = app.test_client()
    for body, frame in (
        (b'{"data":{"a":"\\ud800"}}', b'data: {"a":"\\ud800"}\n'),
        # A string is sent as it is: UTF-8 cannot carry the surrogate, so it
        # becomes U+FFFD, as Node's encoder makes it.
        (b'{"data":"a\\udfffb"}', "data: a\ufffdb\n".encode()),
    ):
        response = post(client, f"{PREFIX}/channels/s", body, JSON_TYPE)
        assert response.status_code == 200, response.data
        _, _, raw = opening(client, f"{PREFIX}/channels/s", {"Last-Event-ID": "0"})
        assert frame in raw
    for field in ("event", "id"):
        body = b'{"data":1,"%s":"\\ud800"}' % field.encode()
        assert post(client, f"{PREFIX}/channels/s", body, JSON_TYPE).status_code == 400


# -- case 14: NaN and infinities ---------------------------------------------------------


@pytest.mark.parametrize(
    "value", [b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"x":Infinity}', b"1e400", b"-1e999"]
)
def test_non_finite_numbers_are_refused(
    swarm_app: tuple[FlaskClient, Swarm], apps: list[Flask], value: bytes
) -> None:
    client, swarm = swarm_app
    body = b'{"token":"%s","data":%s}' % (swarm.token.encode(), value)
    response = post(client, f"{PREFIX}/{swarm.id}", body, JSON_TYPE)
    assert response.status_code == 400, response.data
    assert swarm.initiator.take() == b""
    app = make_app(publish_auth=anyone)
    apps.append(app)
    channels = app.test_client()
    response = post(channels, f"{PREFIX}/channels/n", b'{"data":%s}' % value, JSON_TYPE)
    assert response.status_code == 400, response.data
    assert history(channels, "n") == []


# -- hypothesis: the parsers on their own -------------------------------------------------

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def budget(examples: int) -> settings:
    """A fixed number of examples; derandomized under CI, so a run there is repeatable."""
    return settings(
        max_examples=examples,
        derandomize=CI,
        database=None if CI else settings.default.database,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


#: Any code point, lone surrogates included (a JSON ``\\ud800`` escape makes one).
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=40)
json_number_text = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1e-400", "-0", "0.0"]),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.integers(1, 400).map(lambda n: "0." + "0" * n + "1"),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """JSON text as a hostile client writes it: valid, deep, wide, non-finite, truncated."""
    kind = draw(st.sampled_from(["value", "deep", "wide", "number", "raw"]))
    if kind == "value":
        return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    if kind == "deep":
        depth = draw(st.sampled_from([1, 63, 64, 65, 200, 999, 1000, 3000, 20000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = draw(json_number_text) if opener == "[" else "1"
        return opener * depth + inner + closer * draw(st.sampled_from([depth, 0, depth - 1]))
    if kind == "wide":
        width = draw(st.integers(0, 3000))
        if draw(st.booleans()):
            return "[" + ",".join(["0"] * width) + "]"
        return "{" + ",".join(f'"k{i}":{i}' for i in range(width)) + "}"
    if kind == "number":
        return draw(json_number_text)
    return draw(any_text)


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_bodies(draw: st.DrawFn, token: str = "", cid: str = "") -> bytes:
    """A JSON request body: an object with the protocol's fields, or anything else."""
    fields: dict[str, str] = {}
    for name, value in (("token", token), ("cid", cid)):
        if draw(st.booleans()):
            fields[name] = json.dumps(value if value and draw(st.booleans()) else draw(any_text))
    for name in ("data", "event", "id"):
        if draw(st.booleans()):
            fields[name] = draw(json_texts())
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
    if draw(st.integers(0, 9)) == 0:
        text = draw(json_texts())
    body = to_bytes(text)
    if draw(st.integers(0, 9)) == 0 and body:
        # Invalid UTF-8, or any byte, somewhere.
        at = draw(st.integers(0, len(body)))
        junk = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\0"])
        )
        body = body[:at] + junk + body[at:]
    if draw(st.integers(0, 19)) == 0:
        body = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xfe\xff", b""])) + body
    return body


form_key_parts = st.one_of(
    st.sampled_from(["", "0", "1", "20", "21", "01", "²", "٣", "-1", "1e3", "__proto__"]),
    st.integers(1, 5000).map(lambda n: "1" * n),
    any_text,
)


@st.composite
def form_bodies(draw: st.DrawFn, token: str = "", cid: str = "") -> bytes:
    """A urlencoded body with bracket keys, as qs reads them, or as nobody should write them."""
    pairs = []
    if token and draw(st.booleans()):
        pairs.append(f"token={token}")
    if cid and draw(st.booleans()):
        pairs.append(f"cid={cid}")
    for _ in range(draw(st.integers(0, 6))):
        base = draw(st.sampled_from(["data", "token", "cid", "id", "event", ""]))
        parts = draw(st.lists(form_key_parts, max_size=8))
        key = base + "".join(f"[{p}]" for p in parts)
        if draw(st.booleans()):
            key = quote(key, safe="[]", encoding="utf-8", errors="surrogatepass")
        value = quote(draw(any_text), encoding="utf-8", errors="surrogatepass")
        pairs.append(f"{key}={value}")
    if draw(st.integers(0, 9)) == 0:
        pairs.extend(["a=1"] * draw(st.sampled_from([999, 1000, 1001, 5000])))
    body = "&".join(pairs).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        body += draw(st.sampled_from([b"\xff", b"%ff", b"%ed%a0%80", b"\xed\xa0\x80", b"%"]))
    return body


content_types = st.sampled_from(
    [
        JSON_TYPE,
        "application/json; charset=utf-8",
        "application/vnd.x+json",
        FORM_TYPE,
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json\x7f",
        "",
        None,
    ]
)

#: Header values as a server hands them to the app: latin-1 text with no CR or LF.
header_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"), max_size=60
)


def strict_json(text: str) -> Any:
    """``JSON.parse``: no NaN or infinities."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a frame")

    return json.loads(text, parse_constant=refuse)


def assert_frames_parse(raw: bytes) -> list[Event]:
    """Frames are UTF-8, and a browser can JSON.parse every swarm frame's data."""
    raw.decode("utf-8")  # strict: a lone surrogate cannot have been written
    events = SSEParser().feed(raw)
    for event in events:
        if event.event != "message":
            strict_json(event.data)
    return events


@budget(200)
@given(body=st.one_of(json_bodies(), form_bodies(), st.binary(max_size=200)), kind=content_types)
def test_parse_body_answers_or_refuses(body: bytes, kind: str | None) -> None:
    try:
        fields = parse_body(kind, body)
    except BadRequest as exc:
        assert exc.status in (400, 413, 415)
        return
    # What is accepted can be framed, and reads back as JSON.parse reads it.
    for value in fields.values():
        for frame in (framing.swarm_event("signal", value), framing.message(value)):
            assert_frames_parse(frame)


@budget(150)
@given(value=json_values)
def test_frames_are_what_json_stringify_writes(value: Any) -> None:
    frame = framing.swarm_event("signal", value)
    (event,) = assert_frames_parse(frame)
    assert _same(strict_json(event.data), _joined(_nulled(value)))


def _nulled(value: Any) -> Any:
    """``value`` as JSON.stringify writes it: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_nulled(v) for v in value]
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return value


def _joined(value: Any) -> Any:
    """``value`` with surrogate pairs joined, as a JavaScript string holds them."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    if isinstance(value, list):
        return [_joined(v) for v in value]
    if isinstance(value, dict):
        return {_joined(k): _joined(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@budget(200)
@given(accept=header_text)
def test_accept_headers(accept: str) -> None:
    assert accepts_event_stream(accept) in (True, False)


@budget(200)
@given(
    value=st.one_of(
        header_text,
        any_text,
        st.tuples(st.sampled_from(["abcd1234", ""]), json_number_text).map("-".join),
    )
)
def test_event_ids(value: str) -> None:
    parts = split_event_id(value)
    if parts is not None:
        assert 0 <= parts[1] < 2**53 and value.startswith(parts[0] + "-")
    assert parse_event_id("abcd1234", value) in (None, *([parts[1]] if parts else []))


# -- hypothesis: every endpoint, in process ------------------------------------------------


class Hub:
    """An app with Signal, a swarm and a channel that requests may use (the playground),
    and a swarm and a channel that no request can touch (the bystanders)."""

    def __init__(self, **settings: Any) -> None:
        self.app = make_app(
            direct_writes=False, publish_key="k", publish_auth=self.authorize, **settings
        )
        self.client = self.app.test_client()
        self.playground = Swarm.create(self.client)
        self.bystander = Swarm.create(self.client)
        self.channel = Watcher(self.client, f"{PREFIX}/channels/bystander")
        self.channel.take(0.05)
        self.errors: list[logging.LogRecord] = []

    @staticmethod
    def authorize(request: Any, channel: str) -> bool:
        return channel != "bystander"

    def close(self) -> None:
        self.channel.close()
        self.bystander.close()
        self.playground.close()
        self.app.extensions["signal_state"].close()


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, or carrying a traceback, of any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(params=["memory", "fast-path", "redis"])
def hub_in_process(request: pytest.FixtureRequest) -> Iterator[tuple[Hub, int]]:
    """A :class:`Hub` and the number of examples to try on it."""
    if request.param == "redis":
        settings = {
            "broker_url": request.getfixturevalue("redis_url"),
            "redis_prefix": f"t{uuid.uuid4().hex[:10]}:",
        }
        examples = 40
    else:
        settings = {"fast_path": request.param == "fast-path"}
        examples = 100 if request.param == "memory" else 40
    log = ErrorLog()
    logging.getLogger().addHandler(log)
    hub = Hub(**settings)
    try:
        yield hub, examples
        # Nothing reached the bystanders, whatever the requests were.
        for watcher in (hub.bystander.initiator, hub.bystander.peer, hub.channel):
            assert watcher.take(0.1) == b""
    finally:
        hub.close()
        logging.getLogger().removeHandler(log)
    assert [r.getMessage() for r in log.records] == []


@st.composite
def requests_to(draw: st.DrawFn, hub: Hub) -> dict[str, Any]:
    """One request to any endpoint, with hostile parts."""
    play, other = hub.playground, hub.bystander
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "POST", "POST", "PUT", "OPTIONS"]))
    swarm_id = draw(
        st.one_of(
            st.just(play.id),
            # Anyone may join a swarm whose id they know; only the rest is off limits.
            st.just(other.id if method != "GET" else play.id),
            st.from_regex(r"[a-z0-9]{1,40}", fullmatch=True),
            any_text.map(lambda t: quote(t, errors="surrogatepass")),
        )
    )
    channel = st.one_of(
        st.sampled_from(["public", "bystander", "a.b:c@d~e-f_", "x" * 200, "x" * 201, ""]),
        st.from_regex(r"[A-Za-z0-9_.:@~-]{1,20}", fullmatch=True),
        any_text.map(lambda t: quote(t, safe="", errors="surrogatepass")),
    )
    kind = draw(st.sampled_from(["base", "swarm", "channels", "channel", "other"]))
    path = {
        "base": PREFIX + draw(st.sampled_from(["", "/"])),
        "swarm": f"{PREFIX}/{swarm_id}",
        "channels": f"{PREFIX}/channels",
        "channel": f"{PREFIX}/channels/{draw(channel)}",
        "other": f"{PREFIX}/{swarm_id}/{draw(channel)}",
    }[kind]
    query = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["channel", "lastEventId", "evs_last_event_id", "x"]))
        value = draw(st.one_of(channel, json_number_text, header_text.map(quote)))
        query.append(f"{name}={value}")
    if query:
        path += "?" + "&".join(query)
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Accept"] = draw(
            st.one_of(
                st.sampled_from(["text/event-stream", "*/*", "text/html", "text/*;q=0", ""]),
                header_text,
            )
        )
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(
            st.one_of(header_text, json_number_text.map(lambda n: f"abcd1234-{n}"))
        )
    if draw(st.booleans()):
        # The right key, but the bystander channel is never authorized.
        headers["Authorization"] = draw(st.sampled_from(["Bearer k", "Bearer x", "k", ""]))
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    token = draw(st.sampled_from([play.token, other.token[:-1] + "0", ""]))
    cid = draw(st.sampled_from(["", "0" * 32, "\ud800"]))
    body = draw(st.one_of(json_bodies(token, cid), form_bodies(token, cid)))
    return {"method": method, "path": path, "headers": headers, "body": body}


def send(hub: Hub, req: dict[str, Any]) -> None:
    """Send ``req``; check the answer; a stream that opens is read as it opens, then closed."""

    def run() -> None:
        response = hub.client.open(
            req["path"],
            method=req["method"],
            headers=req["headers"],
            data=req["body"],
            buffered=False,
        )
        try:
            status = response.status_code
            assert status < 500, (status, response.get_data())
            if response.mimetype == "text/event-stream" and req["method"] == "GET":
                assert_frames_parse(next(iter(response.response)))
            elif req["method"] != "HEAD" and status >= 400:
                assert isinstance(json.loads(response.get_data())["error"], str)
        finally:
            response.close()

    in_greenlet(run)


def test_endpoints_in_process(hub_in_process: tuple[Hub, int]) -> None:
    hub, examples = hub_in_process

    @budget(examples)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        send(hub, data.draw(requests_to(hub)))
        # What reached the playground's peers is framed as browsers read it.
        for watcher in (hub.playground.initiator, hub.playground.peer):
            assert_frames_parse(watcher.take(0))

    check()


# -- hypothesis: every endpoint, against a real server ---------------------------------------

#: Header values a proxy would pass on: visible latin-1, spaces and tabs inside.
wire_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
).map(str.strip)


def raw_request(url: str, req: dict[str, Any], timeout: float = 10) -> tuple[int, bytes]:
    """Send ``req`` over a socket of its own; the status and what came back (a stream's
    first frames, then it is closed). A server that answers nothing within
    ``timeout`` fails the test: no request may hang."""
    parts = urlsplit(url)
    head = [f"{req['method']} {req['path']} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in req["headers"].items()]
    head += [f"Content-Length: {len(req['body'])}", "Connection: close"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req["body"]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer within {timeout}s") from None
            except ConnectionResetError:
                # Answered before the whole body was read, then closed: what is
                # unread resets the connection, and the answer may be lost with it.
                chunk = b""
            received += chunk
            status_line, _, rest = received.partition(b"\r\n")
            if not chunk or (b"text/event-stream" in received and b"\n\n" in rest):
                break
    assert status_line.startswith(b"HTTP/1.1 "), received[:500]
    return int(status_line.split()[1]), received


@st.composite
def wire_requests(draw: st.DrawFn, hub: Hub) -> dict[str, Any]:
    req = draw(requests_to(hub))
    if req["method"] != "POST":
        req["body"] = b""
    req["headers"] = {
        k: draw(wire_header_text) if v and not v.isprintable() else v.strip()
        for k, v in req["headers"].items()
    }
    if "bystander" in req["path"] and req["headers"].get("Authorization") == "Bearer k":
        req["headers"]["Authorization"] = "Bearer x"  # the bystander channel's key is secret
    return req


class _RemoteHub:
    """What :func:`requests_to` needs of a hub: the two swarms' ids and tokens."""

    def __init__(self, playground: Any, bystander: Any) -> None:
        self.playground = playground
        self.bystander = bystander


@pytest.mark.parametrize("worker_class", [None, "flask_signal.worker.GeventWorker"])
def test_endpoints_on_a_real_server(
    make_server: Callable[..., Server | Pair], worker_class: str | None
) -> None:
    srv = make_server({"publish_key": "k", "limit": "100kb"}, worker_class=worker_class)
    url = srv.url
    playground = [Peer.open(url)]
    playground.append(Peer.open(f"{url}/{playground[0].id}"))
    bystander = [Peer.open(url)]
    bystander.append(Peer.open(f"{url}/{bystander[0].id}"))
    watchers = [SSE.open(f"{url}/channels/bystander")]
    try:
        assert playground[0].sse.next().event == "join"
        assert bystander[0].sse.next().event == "join"
        hub = _RemoteHub(playground[0], bystander[0])

        @budget(40)
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            req = data.draw(wire_requests(hub))  # type: ignore[arg-type]
            status, received = raw_request(srv.origin, req)
            assert status < 500, received[:500]

        check()
        # The playground's peers got frames a browser can read; the bystanders nothing.
        for peer in playground:
            while peer.sse._receive(time.monotonic() + 0.2):
                pass
            assert_frames_parse(bytes(peer.sse.raw))
        for sse in [p.sse for p in bystander] + watchers:
            assert sse.quiet(0.3) == []
        with SSE.open(f"{url}/channels/bystander", {"Last-Event-ID": "0"}) as replay:
            assert replay.status == 200
            assert replay.quiet(0.3) == []
    finally:
        for peer in playground + bystander:
            peer.close()
        for sse in watchers:
            sse.close()
    servers = srv.servers if isinstance(srv, Pair) else [srv]
    for server in servers:
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log and "Error handling request" not in log, log


@pytest.mark.parametrize("cid", ["\\ud800", "ABC", "a b", "é", "0" * 32 + "\\n"])
def test_malformed_cid_is_no_such_peer(apps: list[Flask], broker: dict[str, Any], cid: str) -> None:
    app = make_app(direct_writes=False, **broker)
    apps.append(app)
    client = app.test_client()
    swarm = Swarm.create(client)
    try:
        for token, status in ((swarm.token, 404), ("wrong", 401)):
            body = b'{"token":"%s","data":1,"cid":"%s"}' % (token.encode(), cid.encode())
            response = post(client, f"{PREFIX}/{swarm.id}", body, JSON_TYPE)
            assert response.status_code == status, response.data
        assert swarm.initiator.take() == b"" and swarm.peer.take() == b""
    finally:
        swarm.close()
