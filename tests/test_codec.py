# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""The Redis broker's pub/sub message format (flask_signal.brokers.redis.codec)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from flask_signal import framing
from flask_signal.brokers import new_resume_key, resume_id, resume_position
from flask_signal.brokers.redis import RedisBroker, codec
from flask_signal.hub import LocalHub

from .broker_support import stream
from .redis_support import prefix, redis_url  # noqa: F401 - fixtures

cids = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
frames = st.binary(max_size=200)


@given(cid=cids, frame=frames)
def test_swarm_messages_round_trip(cid: str, frame: bytes) -> None:
    assert codec.decode(codec.broadcast(frame)) == codec.Broadcast(frame)
    if "\n" not in cid:
        assert codec.decode(codec.direct(cid, frame)) == codec.Direct(cid, frame)
    assert codec.decode(codec.joined(cid)) == codec.Joined(cid)
    assert codec.decode(codec.left(cid)) == codec.Left(cid)
    assert codec.decode(codec.ended(cid)) == codec.Ended(cid)
    assert codec.decode(codec.closed(cid)) == codec.Closed(cid)
    assert codec.decode(codec.to_client(frame)) == codec.ToClient(frame)
    assert codec.decode(codec.drop()) == codec.Drop()


@given(
    seq=st.integers(min_value=1, max_value=10**9 - 1),
    log=st.one_of(st.none(), st.integers(min_value=0, max_value=10**18)),
)
def test_resume_ids_round_trip_as_digits(seq: int, log: int | None) -> None:
    """A swarm frame's id, with or without the swarm log number: digits that JSON.parse
    reads (moshpit), beginning with the resume key, and read back as they were made."""
    key = new_resume_key()
    value = resume_id(key.encode(), seq, log).decode()
    assert value.isdigit() and value.startswith(key) and value[0] != "0"
    assert isinstance(json.loads(value), int)
    assert resume_position(value) == (key, seq, log)
    assert resume_position(value + "x") is None


@given(
    seq=st.integers(min_value=0, max_value=10**15),
    id=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r\0")),
    event=st.none() | st.text(st.characters(blacklist_categories=["Cs"]).filter(str.isalnum)),
    frame=frames,
)
def test_event_messages_round_trip(seq: int, id: str, event: str | None, frame: bytes) -> None:
    assert codec.decode(codec.event(seq, id, event, frame)) == codec.Event(seq, id, event, frame)


def test_the_bytes_are_the_documented_ones() -> None:
    assert codec.broadcast(b"f") == b"b\nf"
    assert codec.direct("c1", b"f") == b"d c1\nf"
    assert codec.joined("c1") == b"j c1"
    assert codec.left("c1") == b"l c1"
    assert codec.ended("c1") == b"e c1"
    assert codec.closed("host:1:ab") == b"c host:1:ab"
    assert codec.to_client(b"f") == b"t\nf"
    assert codec.drop() == b"r\n"
    assert (
        codec.event(7, "e-7", None, b"data: 1\nid: e-7\n\n") == b"m 7 \ne-7\ndata: 1\nid: e-7\n\n"
    )
    assert codec.event(7, "x", "up", b"f") == b"m 7 =up\nx\nf"


@pytest.mark.parametrize(
    "payload",
    [b"", b"x", b"b", b"bx", b"d", b"d c1", b"dc1\nf", b"j", b"jc1", b"m", b"m 1", b"m 1 \nid",
     b"m x \nid\nf", b"m 1 up\nid\nf", b"m -1 \nid\nf", b"j \xff", b"z anything",
     b"t", b"tf", b"r", b"r x"],
)  # fmt: skip
def test_unknown_or_malformed_messages_are_ignored(payload: bytes) -> None:
    assert codec.decode(payload) is None


@given(st.binary(max_size=100))
def test_decode_never_raises(payload: bytes) -> None:
    codec.decode(payload)


# -- what the scripts publish is what the codec reads ---------------------------------


@pytest.fixture
def broker(redis_url: str, prefix: str) -> Iterator[RedisBroker]:
    b = RedisBroker(redis_url, hub=LocalHub(), prefix=prefix, history_size=10)
    b.start()
    yield b
    b.close()


def _messages(pubsub: redis.client.PubSub, count: int) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(out) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            out.append(message["data"])
    return out


def test_scripts_publish_codec_messages(broker: RedisBroker, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    initiator = stream()
    m1 = broker.create_swarm(initiator)
    pubsub.subscribe(broker.keys.swarm(m1.id), broker.keys.channel("news"))
    _messages(pubsub, 0)
    pubsub.get_message(timeout=1), pubsub.get_message(timeout=1)  # the confirmations

    m2 = broker.join_swarm(m1.id, stream())
    assert m2 is not None
    broker.signal(m1.id, {"a": 1}, token=m2.token)
    broker.signal(m1.id, "hi", cid=m1.cid)
    event_id = broker.publish(["news"], "text", event="up")
    broker.leave_swarm(m2)
    broker.leave_swarm(m1)
    raw = _messages(pubsub, 6)
    numbers = [codec.numbered(m)[0] for m in raw]
    got = [codec.decode(codec.numbered(m)[1]) for m in raw]
    seq = int(event_id.rpartition("-")[2])
    assert got == [
        codec.Joined(m2.cid),
        codec.Broadcast(framing.swarm_event("signal", {"a": 1})),
        codec.Direct(m1.cid, framing.swarm_event("signal", "hi")),
        codec.Event(seq, event_id, "up", framing.message("text", event="up", id=event_id)),
        codec.Left(m2.cid),
        codec.Ended(m1.cid),
    ]
    # Swarm messages are numbered in their swarm (the swarm log); channel events are not.
    assert numbers == [1, 2, 3, 0, 4, 5]
    assert raw[0] == codec.number(1, codec.joined(m2.cid))
    # The log keeps the same bytes, and outlives the swarm whose end it records.
    swarm_raw = [m for m in raw if codec.numbered(m)[0]]
    assert client.lrange(broker.keys.swarm_log(m1.id), 0, -1) == swarm_raw
    assert not client.exists(broker.keys.swarm(m1.id))
    pubsub.close()


def test_without_the_swarm_log_messages_are_unnumbered(redis_url: str, prefix: str) -> None:
    """``swarm_log=0``: the format of versions before the log, for rolling upgrades."""
    broker = RedisBroker(redis_url, hub=LocalHub(), prefix=prefix, swarm_log=0)
    broker.start()
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        m1 = broker.create_swarm(stream())
        pubsub.subscribe(broker.keys.swarm(m1.id))
        pubsub.get_message(timeout=1)
        m2 = broker.join_swarm(m1.id, stream())
        assert m2 is not None
        broker.signal(m1.id, "hi", token=m2.token)
        assert _messages(pubsub, 2) == [
            codec.joined(m2.cid),
            codec.broadcast(framing.swarm_event("signal", "hi")),
        ]
        assert not client.exists(broker.keys.swarm_log(m1.id))
    finally:
        pubsub.close()
        broker.close()


def test_numbered_parses_what_log_lua_builds() -> None:
    assert codec.numbered(codec.number(12, b"b\nx")) == (12, b"b\nx")
    assert codec.numbered(b"b\nx") == (0, b"b\nx")
    assert codec.numbered(b"#x b\nx") == (0, b"#x b\nx")
    assert codec.decode(b"#3 j abc") is None  # what an older process makes of it
