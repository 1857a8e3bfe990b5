# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""RedisBroker against a real Redis.

Two brokers in this test process, each with its own LocalHub, stand for two
processes (two workers, or two servers); a ``python -c`` subprocess stands for
a process that serves no HTTP at all. The test thread is not monkey-patched:
broker calls block it briefly, and waiting on a stream (a gevent queue) lets
the brokers' listener greenlets run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis

from flask_signal import signals
from flask_signal.brokers import BrokerUnavailable, Delivery, Membership, parse_event_id
from flask_signal.brokers.redis import RedisBroker
from flask_signal.hub import ENDED, LocalHub, Stream

from .redis_support import RedisServer, own_redis, prefix, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., RedisBroker]


@pytest.fixture
def make(redis_url: str, prefix: str) -> Iterator[Factory]:
    made: list[RedisBroker] = []

    def factory(url: str | None = None, **options: Any) -> RedisBroker:
        options.setdefault("history_size", 50)
        broker = RedisBroker(url or redis_url, hub=LocalHub(), prefix=prefix, **options)
        broker.start()
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.close()


def stream() -> Stream:
    return Stream(1000)


#: Frames already taken off a stream but not yet looked at: Stream.get joins waiting frames.
_unread: weakref.WeakKeyDictionary[Stream, list[bytes]] = weakref.WeakKeyDictionary()


def next_frame(stream: Stream, timeout: float | None) -> bytes | None:
    """The stream's next frame, ENDED once over, or None after ``timeout`` seconds idle."""
    unread = _unread.setdefault(stream, [])
    if not unread:
        chunk = None
        with gevent.Timeout(timeout, False):
            chunk = stream.get()
        if chunk is None or chunk == ENDED:
            return chunk
        unread += [frame + b"\n\n" for frame in chunk.split(b"\n\n")[:-1]]
    return unread.pop(0)


def frame_of(stream: Stream, timeout: float = 5) -> bytes:
    frame = next_frame(stream, timeout)
    assert frame is not None, f"no frame within {timeout} s on {stream!r}"
    return frame


def event_of(stream: Stream, timeout: float = 5) -> tuple[str, Any]:
    frame = frame_of(stream, timeout)
    assert frame != ENDED, f"stream ended: {stream.end_reason}"
    name, data = frame.decode().split("\n")[:2]
    assert name.startswith("event: ") and data.startswith("data: "), frame
    return name[7:], json.loads(data[6:])


def assert_quiet(stream: Stream, wait: float = 0.3) -> None:
    """Nothing more arrives (no duplicate) within ``wait`` seconds."""
    assert next_frame(stream, wait) is None


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with gevent.Timeout(timeout, AssertionError(f"condition not met in {timeout} s")):
        while not condition():
            gevent.sleep(0.02)


def ended(stream: Stream, timeout: float = 10) -> str | None:
    """Drain the stream until it ends; its end reason."""
    with gevent.Timeout(timeout, AssertionError(f"{stream!r} did not end in {timeout} s")):
        while next_frame(stream, None) != ENDED:
            pass
    return stream.end_reason


def swarm(a: RedisBroker, b: RedisBroker) -> tuple[Membership, Stream, Membership, Stream]:
    """An initiator on ``a`` and a peer on ``b``, both past their first frames."""
    s1, s2 = stream(), stream()
    m1 = a.create_swarm(s1)
    assert event_of(s1) == ("connect", m1.connect_data())
    m2 = b.join_swarm(m1.id, s2)
    assert m2 is not None
    assert event_of(s2) == ("connect", m2.connect_data())
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m2.cid})
    return m1, s1, m2, s2


# -- swarms ------------------------------------------------------------------------


def test_create_join_and_signal_across_processes(make: Factory) -> None:
    a, b = make(), make()
    m1, s1, m2, s2 = swarm(a, b)
    assert m1.initiator and not m2.initiator
    assert a.swarm_exists(m1.id) and b.swarm_exists(m1.id)
    assert (a.swarm_count(), b.swarm_count()) == (1, 0)

    # Broadcast from the peer's process reaches both, the sender included, once.
    assert b.signal(m1.id, {"x": 1}, token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", {"x": 1})
    assert event_of(s2) == ("signal", {"x": 1})
    # Direct, both ways, reaches only the named peer.
    assert b.signal(m1.id, "to-initiator", cid=m1.cid, token=m2.token) is Delivery.OK
    assert a.signal(m1.id, ["to-peer"], cid=m2.cid, token=m1.token) is Delivery.OK
    assert event_of(s1) == ("signal", "to-initiator")
    assert event_of(s2) == ("signal", ["to-peer"])
    assert_quiet(s1)
    assert_quiet(s2)


def test_statuses_match_the_memory_broker(make: Factory) -> None:
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


def test_leave_reaches_the_initiator_and_initiator_leave_ends_every_stream(
    make: Factory,
) -> None:
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
    wait_until(lambda: a.stats()["topics"] == 0 and b.stats()["topics"] == 0)


def test_lifecycle_signals_fire_where_the_stream_is(make: Factory) -> None:
    app_a, app_b = object(), object()
    a, b = make(sender=app_a), make(sender=app_b)
    seen: list[tuple[str, object, str]] = []

    def recorder(name: str) -> Callable[..., None]:
        def receive(sender: object, **kw: Any) -> None:
            seen.append((name, sender, kw.get("cid") or kw.get("channel")))

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
    assert seen == [
        ("swarm_created", app_a, m1.cid),
        ("peer_joined", app_b, m2.cid),
        ("peer_left", app_b, m2.cid),
        ("swarm_closed", app_a, m1.cid),
    ]


def test_close_makes_local_peers_leave(make: Factory) -> None:
    a, b = make(), make()
    m1, s1, m2, s2 = swarm(a, b)
    b.close()
    assert s2.ended
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN


def test_a_dead_process_is_reaped(make: Factory) -> None:
    fast = {"heartbeat_interval": 0.2, "peer_ttl": 0.6}
    a, b, c = make(**fast), make(**fast), make(**fast)
    # A peer on b, an initiator on c: b and c die without cleaning up.
    m1, s1, m2, _ = swarm(a, b)
    n1, _, n2, t2 = swarm(c, a)
    b.halt()
    c.halt()
    assert event_of(s1, timeout=15) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert ended(t2, timeout=15) == "swarm closed"
    assert not a.swarm_exists(n1.id)
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN
    a.leave_swarm(n2)
    # The dead processes are forgotten too.
    client = redis.Redis.from_url(a.url)
    assert client.smembers(f"{a.prefix}procs") == {a.process.encode()}


# -- channels ----------------------------------------------------------------------


def ids_of(frames: list[bytes]) -> list[str]:
    out = []
    for frame in frames:
        lines = [line for line in frame.decode().split("\n") if line.startswith("id: ")]
        out.append(lines[0][4:])
    return out


def data_of(frame: bytes) -> str:
    return "\n".join(line[6:] for line in frame.decode().split("\n") if line.startswith("data: "))


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
    assert (a.connection_count("news"), b.connection_count("news")) == (1, 2)
    custom = p.publish(["sport"], "line1\nline2", id="custom-1", retry=1500)
    assert frame_of(both) == b"data: line1\ndata: line2\nid: custom-1\nretry: 1500\n\n"
    assert custom == "custom-1"


def test_message_published_counts_local_clients(make: Factory) -> None:
    app_a = object()
    a, p = make(sender=app_a), make()
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
    assert counts == [(app_a, "c", 2)]


def test_publish_from_a_process_that_serves_nothing(make: Factory) -> None:
    a = make()
    s = stream()
    a.subscribe(s, ["jobs"])
    script = textwrap.dedent(
        f"""
        from flask_signal.brokers import from_url
        broker = from_url({a.url!r}, prefix={a.prefix!r}, history_size=50)
        print(broker.publish(["jobs"], {{"done": True}}, event="cron"))
        broker.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    event_id = out.stdout.strip()
    assert frame_of(s) == f'event: cron\ndata: {{"done":true}}\nid: {event_id}\n\n'.encode()
    # ...and it is in the history for whoever resumes anywhere.
    replay = make().subscribe(stream(), ["jobs"], "0")
    assert ids_of(replay.frames) == [event_id]


def test_resume_replays_history_from_any_process(make: Factory) -> None:
    a, b = make(history_size=5), make(history_size=5)
    ids = [a.publish(["h"], i) for i in range(12)]
    client = redis.Redis.from_url(a.url)
    assert client.xlen(f"{a.prefix}chan:{{h}}") == 5

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
    epoch = ids[0].rpartition("-")[0]
    assert parse_event_id(epoch, ids[-1]) == 12
    replay = b.subscribe(stream(), ["h"], f"{epoch}-99")  # from the future
    assert replay.lost

    # Application ids resume too, and one id resumes several channels in order.
    a.publish(["h"], "x", id="app-1")
    later = [a.publish(["h2" if i % 2 else "h"], i) for i in range(4)]
    replay = b.subscribe(stream(), ["h", "h2"], "app-1")
    assert ids_of(replay.frames) == later and not replay.lost


def test_gapless_resume_while_a_greenlet_publishes(make: Factory) -> None:
    a, b = make(history_size=1000), make(history_size=1000)
    first = [a.publish(["burst"], i) for i in range(20)]
    total = 300

    def burst() -> None:
        for i in range(20, total):
            a.publish(["burst"], i)
            gevent.sleep(0)

    publisher = gevent.spawn(burst)
    subscribers = []
    resume_points = iter([first[4], first[10], "0", first[19]])
    while not publisher.dead:
        point = next(resume_points, None)
        if point is None:
            break
        s = stream()
        replay = b.subscribe(s, ["burst"], point)
        assert not replay.lost
        subscribers.append((point, s, replay))
        gevent.sleep(0.01)
    publisher.get(timeout=60)
    assert len(subscribers) >= 2
    for point, s, replay in subscribers:
        got = [int(data_of(f)) for f in replay.frames]
        while not got or got[-1] != total - 1:
            got.append(int(data_of(frame_of(s))))
        start = 0 if point == "0" else int(point.rpartition("-")[2])
        assert got == list(range(start, total)), f"resume from {point}"
        assert_quiet(s, 0.1)


def test_gapless_resume_while_another_process_publishes(make: Factory) -> None:
    a = make(history_size=5000)
    total = 1500
    script = textwrap.dedent(
        f"""
        from flask_signal.brokers import from_url
        broker = from_url({a.url!r}, prefix={a.prefix!r}, history_size=5000)
        for i in range({total}):
            broker.publish(["race"], i)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        client = redis.Redis.from_url(a.url)
        wait_until(lambda: client.xlen(f"{a.prefix}chan:{{race}}") > 50, timeout=30)
        subscribers = []
        for _ in range(5):
            head = client.xrevrange(f"{a.prefix}chan:{{race}}", count=1)
            point = head[0][1][b"i"].decode() if head else "0"
            s = Stream(total)
            replay = a.subscribe(s, ["race"], point)
            assert not replay.lost
            subscribers.append((int(point.rpartition("-")[2]), s, replay))
            gevent.sleep(0.005)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    for start, s, replay in subscribers:
        got = [int(data_of(f)) for f in replay.frames]
        while not got or got[-1] != total - 1:
            got.append(int(data_of(frame_of(s))))
        assert got == list(range(start, total))


def test_publish_all_and_close_channel_reach_every_process(make: Factory) -> None:
    a, b = make(), make()
    sa, sb = stream(), stream()
    a.subscribe(sa, ["room-a"])
    b.subscribe(sb, ["room-b"])
    event_id = a.publish_all("everyone", event="notice")
    assert ids_of([frame_of(sa)]) == [event_id]
    assert ids_of([frame_of(sb)]) == [event_id]
    # Both histories have it.
    replay = make().subscribe(stream(), ["room-a", "room-b"], "0")
    assert ids_of(replay.frames) == [event_id]

    a.close_channel("room-b")
    assert ended(sb) == "channel closed"
    assert not sa.ended
    b.unsubscribe(sb)
    b.unsubscribe(sb)


def test_epoch_loss_after_flushall_is_reported(own_redis: RedisServer, make: Factory) -> None:
    a = make(own_redis.url)
    old = a.publish(["e"], "before")
    redis.Redis.from_url(own_redis.url).flushall()
    replay = a.subscribe(stream(), ["e"], old)
    assert replay.lost and replay.frames == []
    new = a.publish(["e"], "after")
    assert new.rpartition("-")[0] != old.rpartition("-")[0]
    replay = a.subscribe(stream(), ["e"], old)
    assert replay.lost and ids_of(replay.frames) == [new]
    replay = a.subscribe(stream(), ["e"], new)
    assert not replay.lost and replay.frames == []


def test_swarms_redis_forgot_end_and_newer_ones_stay(own_redis: RedisServer, make: Factory) -> None:
    a, b = make(own_redis.url, heartbeat_interval=0.2, peer_ttl=0.6), make(own_redis.url)
    _, old_initiator, _, old_peer = swarm(a, b)
    redis.Redis.from_url(own_redis.url).flushall()
    m1, s1, m2, s2 = swarm(a, b)
    assert ended(old_initiator) == "broker unavailable"
    assert b.signal(m1.id, "alive", token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "alive")
    assert event_of(s2) == ("signal", "alive")
    assert ended(old_peer) == "broker unavailable"
    assert not s1.ended and not s2.ended


def test_one_pubsub_connection_per_process(own_redis: RedisServer, make: Factory) -> None:
    a, b = make(own_redis.url), make(own_redis.url)
    streams = []
    for _ in range(60):
        _, s1, _, s2 = swarm(a, b)
        streams += [s1, s2]
    for i in range(300):
        s = stream()
        (a if i % 2 else b).subscribe(s, [f"ch{i % 40}", "all"])
        streams.append(s)
    clients = redis.Redis.from_url(own_redis.url).client_list()
    subscribers = [c for c in clients if int(c["sub"]) > 0]
    assert len(subscribers) == 2
    assert sorted(int(c["sub"]) for c in subscribers) == [60 + 21, 60 + 21]
    # The command pools are bounded (10 each), plus this test's own client.
    assert len(clients) <= 2 * 11 + 1


def test_redis_outage_then_recovery(own_redis: RedisServer, make: Factory) -> None:
    a = make(own_redis.url, connect_timeout=0.5)
    b = make(own_redis.url, connect_timeout=0.5)
    m1, s1, _, s2 = swarm(a, b)
    ch = stream()
    b.subscribe(ch, ["live"])

    own_redis.kill()
    for s in (s1, s2, ch):
        assert ended(s) == "broker unavailable"
    with pytest.raises(BrokerUnavailable):
        a.create_swarm(stream())
    with pytest.raises(BrokerUnavailable):
        a.publish(["live"], 1)
    with pytest.raises(BrokerUnavailable):
        a.signal(m1.id, 1)
    with pytest.raises(BrokerUnavailable):
        b.subscribe(stream(), ["live"])
    a.leave_swarm(m1)  # cannot reach Redis: remembered, not raised

    own_redis.start()
    wait_until(lambda: a.stats()["pubsub_connected"] and b.stats()["pubsub_connected"], 20)
    m1, s1, m2, s2 = swarm(a, b)
    assert b.signal(m1.id, "again", token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "again")
    assert event_of(s2) == ("signal", "again")
    ch = stream()
    b.subscribe(ch, ["live"])
    event_id = a.publish(["live"], "back")
    assert ids_of([frame_of(ch)]) == [event_id]


def test_a_dead_listener_is_restarted(make: Factory) -> None:
    a, b = make(heartbeat_interval=0.2, peer_ttl=0.6), make()
    _, s1, _, _ = swarm(a, b)
    listener = a._listener.greenlet
    assert listener is not None
    listener.kill()
    assert ended(s1) == "broker unavailable"
    wait_until(lambda: a.stats()["pubsub_connected"])
    m1, s1, _, s2 = swarm(a, b)
    assert a.signal(m1.id, "ok") is Delivery.OK
    assert event_of(s2) == ("signal", "ok")


# -- round trips -------------------------------------------------------------------


def test_commands_per_operation(own_redis: RedisServer, make: Factory) -> None:
    """Each hot operation sends the Redis commands it was designed with, and no more.

    INFO commandstats also counts what a script runs; the round trips are the
    commands the broker sends itself, named first in each expectation.
    """
    quiet = {"heartbeat_interval": 30.0, "peer_ttl": 60.0, "ping_interval": 60.0}
    a, b, c = (make(own_redis.url, **quiet) for _ in range(3))
    client = redis.Redis.from_url(own_redis.url)
    # The first heartbeats are done and nothing else runs on its own for 24 s.
    beats = [f"{x.prefix}proc:{{{x.process}}}" for x in (a, b, c)]
    wait_until(lambda: client.exists(*beats) == 3)

    def sent(operation: Callable[[], object], *, wait_for: str | None = None) -> dict[str, int]:
        client.config_resetstat()
        operation()
        if wait_for is not None:  # a command written without waiting for its answer
            wait_until(lambda: wait_for in counts())
        return counts()

    def counts() -> dict[str, int]:
        stats = client.info("commandstats")
        names = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
        return {k: v for k, v in names.items() if k not in ("info", "config|resetstat")}

    # Warm up: scripts loaded into Redis, pooled connections open.
    m1, s1, m2, s2 = swarm(a, b)
    b.signal(m1.id, 0, cid=m1.cid, token=m2.token)
    a.signal(m1.id, 0, token=m1.token)
    b.swarm_exists(m1.id)
    c.swarm_exists(m1.id)
    a.publish(["c"], 0)
    a.subscribe(stream(), ["c"], "0")
    for s in (s1, s2, s1):
        event_of(s)
    b.leave_swarm(b.join_swarm(m1.id, stream()) or m2)
    event_of(s1), event_of(s1)

    assert sent(lambda: b.swarm_exists(m1.id)) == {"exists": 1}
    direct = sent(lambda: b.signal(m1.id, "hi", cid=m1.cid, token=m2.token))
    assert direct == {"evalsha": 1, "hmget": 1, "publish": 1}
    assert event_of(s1) == ("signal", "hi")
    broadcast = sent(lambda: a.signal(m1.id, "all", token=m1.token))
    assert broadcast == {"evalsha": 1, "hmget": 1, "publish": 1}
    assert event_of(s1) == event_of(s2) == ("signal", "all")
    refused = sent(lambda: b.signal(m1.id, "x", token="wrong"))
    assert refused == {"evalsha": 1, "hmget": 1}

    created = sent(lambda: a.create_swarm(stream()))
    assert created == {
        "subscribe": 1,
        "evalsha": 1,
        "exists": 1,
        "hset": 1,
        "pexpire": 1,
        "sadd": 1,
    }
    # A join from a process that holds no stream of the swarm yet subscribes to it.
    s3 = stream()
    joined: list[Membership | None] = []
    assert sent(lambda: joined.append(c.join_swarm(m1.id, s3))) == {
        "subscribe": 1,
        "evalsha": 1,
        "exists": 1,
        "hset": 1,
        "sadd": 1,
        "publish": 1,
    }
    m3 = joined[0]
    assert m3 is not None
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m3.cid})
    assert sent(lambda: c.leave_swarm(m3), wait_for="unsubscribe") == {
        "unsubscribe": 1,
        "evalsha": 1,
        "srem": 1,
        "hget": 2,
        "hdel": 1,
        "publish": 1,
    }
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m3.cid})
    # b still holds m2's stream: its topic stays, nothing but the script is sent.
    assert sent(lambda: b.join_swarm(m1.id, stream())) == {
        "evalsha": 1,
        "exists": 1,
        "hset": 1,
        "sadd": 1,
        "publish": 1,
    }

    assert sent(lambda: a.publish(["c"], 1)) == {
        "evalsha": 1,
        "hget": 2,
        "hincrby": 1,
        "xlen": 1,
        "xadd": 1,
        "pexpire": 2,
        "publish": 1,
    }
    assert sent(lambda: a.subscribe(stream(), ["d"])) == {"subscribe": 1}
    # "c" is held already: no SUBSCRIBE, one script reads the history.
    resumed = sent(lambda: a.subscribe(stream(), ["c"], "0"))
    assert resumed == {"evalsha": 1, "hget": 4, "xrange": 1}


def test_pooled_connection_check(make: Factory) -> None:
    """The pool's before-every-command check still tells idle, answered and closed apart."""
    broker = make()
    client = redis.Redis.from_url(broker.url)
    conn = broker.pool.get_connection()
    try:
        assert type(conn).__name__.startswith("Quick")
        assert not conn.can_read()
        conn.send_command("CLIENT", "ID")
        wait_until(conn.can_read)
        conn_id = conn.read_response()
        assert not conn.can_read()
        assert client.client_kill_filter(_id=conn_id) == 1
        wait_until(conn.can_read)  # a closed socket reads as ready: the pool reconnects it
    finally:
        broker.pool.release(conn)
    assert broker.swarm_exists("0" * 32) is False  # on a new connection, no error
    assert broker.redis.client_id() != conn_id
