"""The broker contract: the same behaviour from every broker.

Each test asks ``make()`` for "the broker of a process"; calling it twice
gives two processes sharing one backing store where the broker can have
several (Redis), and the same broker where it cannot (memory://), so every
test states what holds both within one process and across processes.

A new broker joins by adding one entry to ``BROKERS`` below (and a fixture
making it, if it needs a server).
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_signal import signals
from flask_signal.brokers import (
    Broker,
    Delivery,
    broker_class,
    from_url,
    parse_event_id,
    register,
    schemes,
)
from flask_signal.brokers.memory import MemoryBroker
from flask_signal.errors import SwarmFull
from flask_signal.hub import LocalHub

from .broker_support import (
    assert_quiet,
    ended,
    event_of,
    frame_number,
    frame_of,
    ids_of,
    stream,
    swarm,
    wait_until,
)
from .redis_support import prefix, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., Broker]


def _memory(request: pytest.FixtureRequest) -> Callable[..., Broker]:
    made: dict[str, Broker] = {}

    def factory(**options: Any) -> Broker:
        # One process only: every "process" is the same broker.
        if "broker" not in made:
            made["broker"] = from_url("memory://", hub=LocalHub(), **options)
        return made["broker"]

    return factory


def _redis(request: pytest.FixtureRequest) -> Callable[..., Broker]:
    url = request.getfixturevalue("redis_url")
    key_prefix = request.getfixturevalue("prefix")

    def factory(**options: Any) -> Broker:
        broker = from_url(url, hub=LocalHub(), prefix=key_prefix, **options)
        broker.start()
        return broker

    return factory


#: name -> how a test gets a process's broker.
BROKERS: dict[str, Callable[[pytest.FixtureRequest], Callable[..., Broker]]] = {
    "memory": _memory,
    "redis": _redis,
}


@pytest.fixture(params=sorted(BROKERS))
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    factory = BROKERS[request.param](request)
    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        options.setdefault("history_size", 50)
        broker = factory(**options)
        if broker not in made:
            made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


# -- the registry ------------------------------------------------------------------


def test_brokers_are_found_by_url_scheme() -> None:
    assert {"memory", "redis", "rediss", "unix"} <= set(schemes())
    assert broker_class("memory://") is MemoryBroker
    assert broker_class("REDIS://localhost").__name__ == "RedisBroker"
    with pytest.raises(ValueError, match="unsupported broker URL"):
        from_url("nats://localhost")

    class Elsewhere(MemoryBroker):
        schemes = ("test-elsewhere",)

    class Variant(MemoryBroker):
        """Inherits its parent's schemes: registers none of its own."""

    assert isinstance(from_url("test-elsewhere://x"), Elsewhere)
    assert broker_class("memory://") is MemoryBroker
    register("test-lazy", "flask_signal.brokers.memory:MemoryBroker")
    assert broker_class("test-lazy://") is MemoryBroker
    register("test-wrong", "flask_signal.brokers:Delivery")
    with pytest.raises(TypeError):
        broker_class("test-wrong://")
    assert Variant.schemes == ("memory",)


# -- swarms ------------------------------------------------------------------------


def test_create_join_and_signal(make: Factory) -> None:
    a, b = make(), make()
    m1, s1, m2, s2 = swarm(a, b)
    assert m1.initiator and not m2.initiator
    assert a.swarm_exists(m1.id) and b.swarm_exists(m1.id)
    assert a.swarm_count() == 1

    # A broadcast reaches every peer, the sender included, once.
    assert b.signal(m1.id, {"x": 1}, token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", {"x": 1})
    assert event_of(s2) == ("signal", {"x": 1})
    # A direct signal, both ways, reaches only the named peer.
    assert b.signal(m1.id, "to-initiator", cid=m1.cid, token=m2.token) is Delivery.OK
    assert a.signal(m1.id, ["to-peer"], cid=m2.cid, token=m1.token) is Delivery.OK
    assert event_of(s1) == ("signal", "to-initiator")
    assert event_of(s2) == ("signal", ["to-peer"])
    # Trusted application code signals without a token.
    assert a.signal(m1.id, None) is Delivery.OK
    assert event_of(s1) == event_of(s2) == ("signal", None)
    assert_quiet(s1)
    assert_quiet(s2)


def test_statuses(make: Factory) -> None:
    a, b = make(), make()
    m1, _, m2, _ = swarm(a, b)
    other = a.create_swarm(stream())
    for broker in (a, b):
        assert broker.authenticate(m1.id, m2.token) is Delivery.OK
        assert broker.authenticate(m1.id, other.token) is Delivery.BAD_TOKEN
        assert broker.authenticate("0" * 32, m1.token) is Delivery.NO_SWARM
        assert broker.signal(m1.id, 1, token=other.token) is Delivery.BAD_TOKEN
        assert broker.signal(m1.id, 1, token="") is Delivery.BAD_TOKEN
        assert broker.signal("nosuchswarm", 1, token=m1.token) is Delivery.NO_SWARM
        assert broker.signal(m1.id, 1, cid=other.cid, token=m1.token) is Delivery.NO_PEER
        assert broker.signal(m1.id, 1, cid="__proto__") is Delivery.NO_PEER
        assert broker.join_swarm("constructor", stream()) is None
        assert not broker.swarm_exists("hasOwnProperty")


def test_leave_and_the_end_of_a_swarm(make: Factory) -> None:
    a, b = make(), make()
    m1, s1, m2, _ = swarm(a, b)
    m3 = b.join_swarm(m1.id, s3 := stream())
    assert m3 is not None
    assert event_of(s3)[0] == "connect"
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m3.cid})

    b.leave_swarm(m2)
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert b.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN
    assert a.signal(m1.id, 1, cid=m2.cid) is Delivery.NO_PEER
    b.leave_swarm(m2)  # twice is harmless
    assert_quiet(s1)

    a.leave_swarm(m1)
    assert ended(s3) == "swarm closed"
    assert not a.swarm_exists(m1.id) and not b.swarm_exists(m1.id)
    assert b.signal(m1.id, 1, token=m3.token) is Delivery.NO_SWARM
    assert b.join_swarm(m1.id, stream()) is None
    b.leave_swarm(m3)
    assert a.swarm_count() == 0


def test_a_full_swarm_refuses_joins_until_a_seat_is_free(make: Factory) -> None:
    """``max_swarm_peers`` counts the initiator and peers in their resume grace, on
    every process; a refused join leaves no trace."""
    a, b = make(max_swarm_peers=3, resume_grace=5), make(max_swarm_peers=3, resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    m3 = a.join_swarm(m1.id, stream())
    assert m3 is not None
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m3.cid})
    for broker in (a, b):
        refused = stream()
        with pytest.raises(SwarmFull):
            broker.join_swarm(m1.id, refused)
        assert refused.swarm_id is None and refused.cid is None
    lost(b, m2, s2)  # in its grace: its seat is kept
    with pytest.raises(SwarmFull):
        a.join_swarm(m1.id, stream())
    a.leave_swarm(m3)  # an orderly leave frees a seat
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m3.cid})
    m4 = b.join_swarm(m1.id, s4 := stream())
    assert m4 is not None and event_of(s4)[0] == "connect"
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m4.cid})
    assert_quiet(s1)
    # Ends m2's grace too, which would otherwise end (and fire peer_left) later.
    a.leave_swarm(m1)


#: A process that joins one swarm from many greenlets at once, once a start key is set.
_RACER = """
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent, redis
from flask_signal.brokers import from_url
from flask_signal.errors import SwarmFull
from flask_signal.hub import LocalHub, Stream
url, prefix, swarm_id, cap, tries = sys.argv[1:6]
broker = from_url(url, hub=LocalHub(), prefix=prefix, max_swarm_peers=int(cap),
                  max_connections=int(tries))
broker.start()
client = redis.Redis.from_url(url)
print("ready", flush=True)
while not client.exists(prefix + "go"):
    time.sleep(0.001)
outcomes = []
def join():
    try:
        outcomes.append("in" if broker.join_swarm(swarm_id, Stream(10)) else "none")
    except SwarmFull:
        outcomes.append("full")
gevent.joinall([gevent.spawn(join) for _ in range(int(tries))])
print(json.dumps(outcomes), flush=True)
broker.halt()
"""


def test_processes_racing_for_the_last_seats_admit_exactly_the_cap(
    redis_url: str,  # noqa: F811 - fixture
    prefix: str,  # noqa: F811 - fixture
) -> None:
    """Two processes sharing one Redis join one swarm from 12 greenlets each at once:
    exactly the free seats are taken, every other join is refused as full."""
    cap, tries = 5, 12
    host = from_url(redis_url, hub=LocalHub(), prefix=prefix, max_swarm_peers=cap)
    try:
        member = host.create_swarm(stream())
        assert host.join_swarm(member.id, stream()) is not None  # 3 seats left
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", _RACER, redis_url, prefix, member.id, str(cap), str(tries)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            for racer in racers:
                assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
            client = redis.Redis.from_url(redis_url)
            client.set(prefix + "go", 1)
            outcomes = [json.loads(racer.communicate(timeout=30)[0]) for racer in racers]
        finally:
            for racer in racers:
                racer.kill()
        joined = [o.count("in") for o in outcomes]
        assert sum(joined) == cap - 2, outcomes
        assert sorted(o for each in outcomes for o in each) == ["full"] * (2 * tries - cap + 2) + [
            "in"
        ] * (cap - 2)
        fields = client.hkeys(f"{prefix}swarm:{{{member.id}}}")
        assert sum(1 for f in fields if f.startswith(b"k:")) == cap
    finally:
        host.close()


def test_lifecycle_signals(make: Factory) -> None:
    a, b = make(sender="app-a"), make(sender="app-b")
    seen: list[tuple[str, object, str]] = []

    def recorder(name: str) -> Callable[..., None]:
        def receive(sender: object, **kw: Any) -> None:
            seen.append((name, sender, kw["cid"]))

        return receive

    receivers = {
        name: recorder(name)
        for name in ("swarm_created", "peer_joined", "peer_left", "swarm_closed")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    try:
        m1, _, m2, _ = swarm(a, b)
        b.leave_swarm(m2)
        a.leave_swarm(m1)
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    # Each fires once, in the process that holds the stream.
    assert seen == [
        ("swarm_created", a.sender, m1.cid),
        ("peer_joined", b.sender, m2.cid),
        ("peer_left", b.sender, m2.cid),
        ("swarm_closed", a.sender, m1.cid),
    ]


def test_close_ends_local_streams(make: Factory) -> None:
    a = make()
    s1, s2 = stream(), stream()
    for s in (s1, s2):
        a.hub.add(s)  # as the HTTP layer does for every stream it serves
    a.create_swarm(s1)
    a.subscribe(s2, ["c"])
    assert a.connection_count() == 2 and a.connection_count("c") == 1
    a.close()
    assert ended(s1) == "shutdown"
    assert ended(s2) == "shutdown"


# -- channels ----------------------------------------------------------------------


def test_publish_reaches_every_subscriber_once(make: Factory) -> None:
    a, b, p = make(), make(), make()
    sa, sb, both = stream(), stream(), stream()
    assert a.subscribe(sa, ["news"]).frames == []
    b.subscribe(sb, ["news"])
    b.subscribe(both, ["news", "sport"])
    event_id = p.publish(["news", "sport"], {"n": 1}, event="update")
    for s in (sa, sb, both):
        frame = frame_of(s)
        assert frame == f'event: update\ndata: {{"n":1}}\nid: {event_id}\n\n'.encode()
        assert_quiet(s, 0.1)
    custom = p.publish(["sport"], "line1\nline2", id="custom-1", retry=1500)
    assert frame_of(both) == b"data: line1\ndata: line2\nid: custom-1\nretry: 1500\n\n"
    assert custom == "custom-1"
    assert a.connection_count("news") >= 1
    b.unsubscribe(both)
    b.unsubscribe(both)  # twice is harmless
    p.publish(["sport"], "nobody")
    assert_quiet(both, 0.1)


def test_message_published_counts_local_clients(make: Factory) -> None:
    a, p = make(sender="app-a"), make()
    counts: list[tuple[object, str, int]] = []

    def receive(sender: object, **kw: Any) -> None:
        counts.append((sender, kw["channel"], kw["clients"]))

    signals.message_published.connect(receive)
    try:
        s1, s2 = stream(), stream()
        a.subscribe(s1, ["c"])
        a.subscribe(s2, ["c"])
        p.publish(["c"], 1)
        frame_of(s1), frame_of(s2)
    finally:
        signals.message_published.disconnect(receive)
    assert counts == [(a.sender, "c", 2)]


def test_resume_replays_history(make: Factory) -> None:
    a, b = make(history_size=5), make(history_size=5)
    ids = [a.publish(["h"], i) for i in range(12)]

    replay = b.subscribe(stream(), ["h"], ids[8])
    assert ids_of(replay.frames) == ids[9:]
    assert not replay.lost
    replay = b.subscribe(stream(), ["h"], ids[2])  # 3..6 are gone
    assert ids_of(replay.frames) == ids[7:]
    assert replay.lost
    replay = b.subscribe(stream(), ["h"], ids[-1])
    assert replay.frames == [] and not replay.lost
    replay = b.subscribe(stream(), ["h"], "nonsense")
    assert ids_of(replay.frames) == ids[7:] and replay.lost
    replay = b.subscribe(stream(), ["h"], "0")  # everything retained, nothing lost
    assert ids_of(replay.frames) == ids[7:] and not replay.lost
    epoch = ids[0].rpartition("-")[0]
    first, last = parse_event_id(epoch, ids[0]), parse_event_id(epoch, ids[-1])
    assert first is not None and last == first + 11
    replay = b.subscribe(stream(), ["h"], f"{epoch}-99999")  # from the future
    assert replay.lost
    replay = b.subscribe(stream(), ["h"], "ffffffff-3")  # another epoch
    assert replay.lost

    # Application ids resume too, and one id resumes several channels in order.
    a.publish(["h"], "x", id="app-1")
    later = [a.publish(["h2" if i % 2 else "h"], i) for i in range(4)]
    replay = b.subscribe(stream(), ["h", "h2"], "app-1")
    assert ids_of(replay.frames) == later and not replay.lost


def test_live_events_follow_the_replay_without_gap_or_repeat(make: Factory) -> None:
    a, b = make(), make()
    first = a.publish(["g"], "first")
    a.publish(["g"], "second")
    s = stream()
    replay = b.subscribe(s, ["g"], first)
    third = a.publish(["g"], "third")
    assert len(replay.frames) == 1
    assert ids_of([frame_of(s)]) == [third]
    assert_quiet(s, 0.1)


def test_publish_all_and_close_channel(make: Factory) -> None:
    a, b = make(), make()
    sa, sb = stream(), stream()
    a.subscribe(sa, ["room-a"])
    b.subscribe(sb, ["room-b"])
    event_id = a.publish_all("everyone", event="notice")
    assert ids_of([frame_of(sa)]) == [event_id]
    assert ids_of([frame_of(sb)]) == [event_id]
    replay = make().subscribe(stream(), ["room-a", "room-b"], "0")
    assert ids_of(replay.frames) == [event_id]

    a.close_channel("room-b")
    assert ended(sb) == "channel closed"
    assert not sa.ended
    b.unsubscribe(sb)


def test_no_history_when_its_size_is_zero(make: Factory) -> None:
    a = make(history_size=0)
    s = stream()
    a.subscribe(s, ["z"])
    event_id = a.publish(["z"], 1)
    assert ids_of([frame_of(s)]) == [event_id]
    assert a.subscribe(stream(), ["z"], "0").frames == []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(
        st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=20),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    data=st.text(string.printable + "é😀\u2028", max_size=50),
    event=st.none() | st.text(string.ascii_letters, min_size=1, max_size=10),
)
def test_any_channel_name_and_data_round_trip(
    make: Factory, names: list[str], data: str, event: str | None
) -> None:
    a = make()
    s = stream()
    a.subscribe(s, names)
    before = a.publish(names, "before")
    event_id = a.publish(names, data, event=event)
    assert ids_of([frame_of(s)]) == [before]
    live = frame_of(s)
    assert ids_of([live]) == [event_id]
    replay = make().subscribe(other := stream(), names, before)
    assert replay.frames == [live] and not replay.lost
    a.unsubscribe(other)
    a.unsubscribe(s)
    wait_until(lambda: a.connection_count(names[0]) == 0)


# -- clients and presence ----------------------------------------------------------


def client_stream(client: str | None) -> Any:
    s = stream()
    s.client = client
    return s


def test_send_to_and_disconnect_reach_a_client_in_any_process(make: Factory) -> None:
    a, b = make(), make()
    ann_a, ann_b, bob = client_stream("ann"), client_stream("ann"), client_stream("bob")
    a.subscribe(ann_a, ["room"])
    b.subscribe(ann_b, ["room", "other"])
    b.subscribe(bob, ["room"])
    a.send_to("ann", {"only": "ann"}, event="private", id="p-1")
    expected = b'event: private\ndata: {"only":"ann"}\nid: p-1\n\n'
    assert frame_of(ann_a) == expected and frame_of(ann_b) == expected
    assert_quiet(ann_a, 0.1)
    assert_quiet(bob, 0.1)
    # Not part of any channel's history.
    assert b.subscribe(stream(), ["room"], "0").frames == []
    b.disconnect("ann")
    assert ended(ann_a) == "disconnected by server"
    assert ended(ann_b) == "disconnected by server"
    assert not bob.ended
    a.send_to("nobody", "lost")  # no such client: nothing happens
    assert_quiet(bob, 0.1)


def test_presence_lists_client_ids_and_counts_streams(make: Factory) -> None:
    a, b = make(), make()
    ann, ann2, bob, anon = (client_stream(c) for c in ("ann", "ann", "bob", None))
    a.subscribe(ann, ["lobby"])
    b.subscribe(ann2, ["lobby"])
    b.subscribe(bob, ["lobby", "side"])
    a.subscribe(anon, ["lobby"])
    # Every process's streams under a shared broker (each process sees all four).
    wait_until(lambda: a.subscriber_count("lobby") == 4 and b.subscriber_count("lobby") == 4)
    assert a.presence("lobby") == b.presence("lobby") == {"ann": 2, "bob": 1}
    assert b.presence("side") == {"bob": 1}
    b.unsubscribe(ann2)
    b.unsubscribe(bob)
    wait_until(lambda: a.presence("lobby") == {"ann": 1} and a.subscriber_count("lobby") == 2)
    wait_until(lambda: a.presence("side") == {} and b.subscriber_count("side") == 0)


# -- resume (resume_grace on) --------------------------------------------------------


def lost(broker: Broker, member: Any, s: Any) -> None:
    """The peer's connection is lost (a reset), as the HTTP layer reports it."""
    s.end("reset")
    broker.leave_swarm(member, s)


def last_id(frame: bytes) -> str:
    return ids_of([frame])[0]


def event_of_frame(frame: bytes) -> tuple[str, Any]:
    name, data = frame.decode().split("\n")[:2]
    return name[7:], json.loads(data[6:])


def test_a_lost_peer_resumes_on_any_process_with_every_signal_in_order(make: Factory) -> None:
    a, b = make(resume_grace=5), make(resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, {"n": 0}, cid=m2.cid, token=m1.token) is Delivery.OK
    handle = last_id(frame_of(s2))
    lost(b, m2, s2)
    for n in range(1, 4):
        assert a.signal(m1.id, {"n": n}, cid=m2.cid, token=m1.token) is Delivery.OK
    assert b.signal(m1.id, "all", token=m1.token) is Delivery.OK  # its token still signs
    assert event_of(s1) == ("signal", "all")
    # Back on the other process: every frame it missed, in order, numbered on.
    s3 = stream()
    back = a.resume_swarm(handle, s3, m1.id)
    assert back is not None and (back.id, back.cid, back.initiator) == (m1.id, m2.cid, False)
    frames = [frame_of(s3) for _ in range(4)]
    got = [event_of_frame(f) for f in frames]
    assert got == [("signal", {"n": n}) for n in (1, 2, 3)] + [("signal", "all")]
    numbers = [frame_number(last_id(f)) for f in frames]
    assert numbers == list(range(frame_number(handle) + 1, frame_number(handle) + 5))
    # Live again, once each; the initiator saw no leave and no join.
    assert b.signal(m1.id, "live", cid=m2.cid, token=m1.token) is Delivery.OK
    assert event_of(s3) == ("signal", "live")
    assert a.authenticate(m1.id, m2.token) is Delivery.OK
    assert_quiet(s3)
    assert_quiet(s1)


def test_a_lost_peer_that_does_not_come_back_leaves_once(make: Factory) -> None:
    a, b = make(resume_grace=1), make(resume_grace=1)
    m1, s1, m2, s2 = swarm(a, b)
    left: list[str] = []

    def receive(sender: object, **kw: Any) -> None:
        left.append(kw["cid"])

    signals.peer_left.connect(receive)
    try:
        assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
        handle = last_id(frame_of(s2))
        lost(b, m2, s2)
        assert_quiet(s1, 0.6)
        assert event_of(s1, timeout=5) == ("leave", {"id": m1.id, "cid": m2.cid})
        assert_quiet(s1, 1.5)  # every process may end a grace: the leave comes once
    finally:
        signals.peer_left.disconnect(receive)
    assert left == [m2.cid]
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN
    assert a.resume_swarm(handle, stream(), m1.id) is None


def test_an_initiator_in_its_grace_keeps_the_swarm(make: Factory) -> None:
    a, b = make(resume_grace=5), make(resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    assert b.signal(m1.id, "hello", cid=m1.cid, token=m2.token) is Delivery.OK
    handle = last_id(frame_of(s1))
    lost(a, m1, s1)
    assert b.swarm_exists(m1.id)
    assert b.signal(m1.id, "while away", token=m2.token) is Delivery.OK
    assert event_of(s2) == ("signal", "while away")
    m3 = b.join_swarm(m1.id, s3 := stream())
    assert m3 is not None and event_of(s3)[0] == "connect"
    back = b.resume_swarm(handle, s4 := stream())  # on the create URL: no swarm id
    assert back is not None and back.initiator and back.cid == m1.cid
    assert event_of(s4) == ("signal", "while away")
    assert event_of(s4) == ("join", {"id": m1.id, "cid": m3.cid})
    b.leave_swarm(m3, s3)  # an orderly leave reaches the resumed initiator
    assert event_of(s4) == ("leave", {"id": m1.id, "cid": m3.cid})
    assert_quiet(s2)
    assert_quiet(s4)


def test_a_resume_that_cannot_be_honoured_is_refused(make: Factory) -> None:
    a, b = make(resume_grace=5), make(resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    s9 = stream()
    other = a.create_swarm(s9)
    assert b.signal(m1.id, 1, cid=m2.cid) is Delivery.OK
    handle = last_id(frame_of(s2))
    lost(b, m2, s2)
    for broker in (a, b):
        assert broker.resume_swarm("1" + "0" * 30 + "1", stream()) is None  # unknown
        assert broker.resume_swarm("not-an-id", stream()) is None
        assert broker.resume_swarm(handle, stream(), other.id) is None  # another swarm
        assert broker.resume_swarm(handle[:31] + "99", stream(), m1.id) is None  # never sent
    assert_quiet(s1)
    # Still resumable after all that.
    s3 = stream()
    assert a.resume_swarm(handle, s3, m1.id) is not None
    # An orderly close leaves at once, and cannot be resumed.
    a.leave_swarm(m2, s3)
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert b.resume_swarm(handle, stream(), m1.id) is None
    del s9


def test_a_peer_that_missed_too_much_cannot_resume_and_leaves(make: Factory) -> None:
    a, b = make(resume_grace=5, resume_bytes=4096), make(resume_grace=5, resume_bytes=4096)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = last_id(frame_of(s2))
    lost(b, m2, s2)
    for n in range(20):
        assert a.signal(m1.id, "x" * 1000 + str(n), cid=m2.cid) is Delivery.OK
    assert a.resume_swarm(handle, stream(), m1.id) is None
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN


def test_a_signal_on_its_way_when_the_stream_is_lost_is_resumed_once(make: Factory) -> None:
    """Sent just before the loss: with Redis the message is still on its way to the
    process that held the stream (nothing yields in between), which hands it over."""
    a, b = make(resume_grace=5), make(resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = last_id(frame_of(s2))
    assert a.signal(m1.id, "on its way", cid=m2.cid) is Delivery.OK
    assert a.signal(m1.id, "to all") is Delivery.OK
    lost(b, m2, s2)
    assert a.signal(m1.id, "after", cid=m2.cid) is Delivery.OK
    s3 = stream()
    assert a.resume_swarm(handle, s3, m1.id) is not None
    assert [event_of(s3) for _ in range(3)] == [
        ("signal", "on its way"),
        ("signal", "to all"),
        ("signal", "after"),
    ]
    assert_quiet(s3)
    assert event_of(s1) == ("signal", "to all")
    assert_quiet(s1)
