# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""RedisBroker against a real Redis: what only a broker of several processes does.

The behaviour every broker shares is in test_broker_contract.py. Two brokers
in this test process, each with its own LocalHub, stand for two processes (two
workers, or two servers); a ``python -c`` subprocess stands for a process that
serves no HTTP at all.
"""

from __future__ import annotations

import json
import os
import signal as signal_module
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
import redis

from flask_signal.brokers import (
    BrokerUnavailable,
    Delivery,
    Membership,
    OutcomeUnknown,
    token_digest,
)
from flask_signal.brokers.redis import RedisBroker, codec
from flask_signal.errors import ResumeLater
from flask_signal.hub import ENDED, LocalHub, Stream, counts

from .broker_support import (
    assert_quiet,
    data_of,
    ended,
    ended_with_retry,
    event_of,
    frame_number,
    frame_of,
    ids_of,
    log_number,
    next_frame,
    stream,
    swarm,
    wait_until,
)
from .redis_support import RedisServer, own_redis, prefix, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., RedisBroker]

#: What once.lua adds to a state-changing script: GET and SET of its operation key.
ONCE = {"get": 1, "set": 1}
#: What log.lua adds to a script that publishes on a swarm's topic: the swarm's message
#: number and log bytes, the log entry and its expiry (inside the same script).
LOG = {"hincrby": 2, "rpush": 1, "pexpire": 1}


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


# -- swarms ------------------------------------------------------------------------


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


#: A dead process is reaped within peer_ttl + heartbeat_interval (2 s here).
REAPED_FAST = {"heartbeat_interval": 0.5, "peer_ttl": 1.5}


def in_grace(broker: RedisBroker, member: Membership) -> bool:
    client = redis.Redis.from_url(broker.url)
    return client.hget(broker.keys.swarm(member.id), f"g:{member.cid}") is not None


def test_a_dead_process_peer_resumes_elsewhere_within_its_grace(make: Factory) -> None:
    """kill -9 of the process holding a peer: the reaper puts it in its grace as if its
    stream were lost; it resumes on another process with its cid and token, gets what
    was addressed to it once in its grace, and its initiator sees no leave and no join."""
    a, b = make(resume_grace=10, **REAPED_FAST), make(resume_grace=10, **REAPED_FAST)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid, token=m1.token) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    b.halt()  # as kill -9
    # Not reaped yet: its client is asked to come back (not refused for good).
    with pytest.raises(ResumeLater):
        a.resume_swarm(handle, stream(), m1.id)
    wait_until(lambda: in_grace(a, m2), timeout=10)
    for n in (1, 2):
        assert a.signal(m1.id, n, cid=m2.cid, token=m1.token) is Delivery.OK
    assert a.signal(m1.id, "all", token=m2.token) is Delivery.OK  # its token still signs
    assert event_of(s1) == ("signal", "all")
    back = a.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None and (back.cid, back.initiator) == (m2.cid, False)
    frames = [frame_of(s3) for _ in range(3)]
    assert [json.loads(f.split(b"\n")[1][6:]) for f in frames] == [1, 2, "all"]
    seq = frame_number(handle)
    assert [frame_number(i) for i in ids_of(frames)] == [seq + 1, seq + 2, seq + 3]
    assert a.signal(m1.id, "live", cid=m2.cid) is Delivery.OK
    assert event_of(s3) == ("signal", "live")
    assert_quiet(s1, 1.0)  # no leave, no join
    assert a.authenticate(m1.id, m2.token) is Delivery.OK
    # Held by a now; a resume of it again is a resume of a live peer here.
    client = redis.Redis.from_url(a.url)
    assert client.smembers(a.keys.proc_peers(a.process)) >= {f"{m1.id} {m2.cid}".encode()}
    del s2


def test_a_long_connected_peer_of_a_dead_process_still_resumes(make: Factory) -> None:
    """The index that finds a peer by its resume key outlives swarm_ttl while the peer's
    process lives (its heartbeats renew it), so a kill -9 after minutes still resumes."""
    options = {"resume_grace": 10, "swarm_ttl": 3.0, **REAPED_FAST}
    a, b = make(**options), make(**options)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    client = redis.Redis.from_url(a.url)
    digest = token_digest(handle[:31])
    gevent.sleep(b.liveness.swarm_ttl + 1.5)  # past the index's first expiry
    assert client.pttl(b.keys.resume(digest)) > 0
    b.halt()
    wait_until(lambda: in_grace(a, m2), timeout=10)
    back = a.resume_swarm(handle, stream(), m1.id)
    assert back is not None and back.cid == m2.cid
    assert_quiet(s1)


def test_a_dead_process_initiator_keeps_its_swarm_for_its_grace(make: Factory) -> None:
    a, b = make(resume_grace=10, **REAPED_FAST), make(resume_grace=10, **REAPED_FAST)
    m1, s1, m2, s2 = swarm(b, a)  # the initiator on b, which dies
    assert a.signal(m1.id, "hi", cid=m1.cid, token=m2.token) is Delivery.OK
    handle = ids_of([frame_of(s1)])[0]
    b.halt()
    wait_until(lambda: in_grace(a, m1), timeout=10)
    assert a.swarm_exists(m1.id)
    assert a.signal(m1.id, "while away", token=m2.token) is Delivery.OK
    assert event_of(s2) == ("signal", "while away")
    back = a.resume_swarm(handle, s3 := stream())  # the create URL: no swarm id
    assert back is not None and back.initiator and back.cid == m1.cid
    assert event_of(s3) == ("signal", "while away")
    assert_quiet(s2)


def test_a_dead_process_peer_that_does_not_come_back_leaves_after_its_grace(
    make: Factory,
) -> None:
    grace = 1.5
    a, b = make(resume_grace=grace, **REAPED_FAST), make(resume_grace=grace, **REAPED_FAST)
    m1, s1, m2, _ = swarm(a, b)
    b.halt()
    died = time.monotonic()
    wait_until(lambda: in_grace(a, m2), timeout=10)
    reaped = time.monotonic()
    # Within the documented reaping bound (plus slack: two cores shared by many tests).
    bound = REAPED_FAST["peer_ttl"] + REAPED_FAST["heartbeat_interval"]
    assert reaped - died <= bound + 1.0, reaped - died
    assert event_of(s1, timeout=10) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert time.monotonic() - reaped >= grace - 0.5  # the grace, not the reap, made it leave
    assert_quiet(s1, 1.0)  # once
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN


def test_a_resume_of_a_peer_another_process_still_holds_is_asked_to_come_back(
    make: Factory,
) -> None:
    """Its process has not found the old stream lost yet: not refused for good (204) but
    answered like an outage, and resumable once that process lets go."""
    a, b = make(resume_grace=5), make(resume_grace=5)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    with pytest.raises(ResumeLater):
        a.resume_swarm(handle, stream(), m1.id)
    assert a.signal(m1.id, 1, cid=m2.cid) is Delivery.OK
    assert event_of(s2) == ("signal", 1)  # still b's
    s2.end("reset")
    b.leave_swarm(m2, s2)
    back = a.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None and back.cid == m2.cid
    assert event_of(s3) == ("signal", 1)  # b had it queued, not known to be sent
    assert_quiet(s1)


def test_a_stalled_process_hands_over_peers_a_reaper_put_in_their_grace(
    make: Factory,
) -> None:
    """b stops beating (a stall) and is reaped: its peer is put in its grace. When b
    finds its heartbeat gone, it ends that stream without a leave, and the peer resumes."""
    a, b = make(resume_grace=10, **REAPED_FAST), make(resume_grace=10, **REAPED_FAST)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    b.liveness.stop()
    wait_until(lambda: in_grace(a, m2), timeout=10)
    b.liveness.fence()  # what b's next heartbeat does on finding its own gone
    assert ended(s2) == "replaced"
    b.leave_swarm(m2, s2)  # b forgot it: nothing reaches Redis
    assert in_grace(a, m2)
    assert a.signal(m1.id, 1, cid=m2.cid) is Delivery.OK
    back = a.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None and back.cid == m2.cid
    assert event_of(s3) == ("signal", 1)
    assert_quiet(s1, 0.5)  # no leave, no join


def test_the_reapers_lock_is_released_after_each_attempt(make: Factory) -> None:
    """Held only while one process reaps, failed attempts included, so that the next
    attempt of any process is not turned away for the rest of the interval."""
    a = make(**REAPED_FAST)
    client = redis.Redis.from_url(a.url)
    lock = a.keys.reaper
    wait_until(lambda: a.liveness._serving_since is not None, timeout=5)
    gevent.sleep(REAPED_FAST["peer_ttl"])  # serving long enough to reap
    held: list[bytes | None] = []
    real = a.liveness._reap

    def failing() -> int:
        held.append(client.get(lock))
        raise redis.RedisError("lost halfway")

    a.liveness._reap = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(redis.RedisError):
            a.liveness.reap()
    finally:
        a.liveness._reap = real  # type: ignore[method-assign]
    # It ran under the lock (the reaper greenlet may have tried meanwhile too)...
    assert held and set(held) == {a.process.encode()}
    assert client.get(lock) is None  # ...released although it failed
    a.liveness.reap()
    assert client.get(lock) is None


def gap_then_reap(a: RedisBroker, b: RedisBroker, member: Membership) -> None:
    """``b`` dies (as kill -9); returns once ``a`` reaped it (``member`` in its grace)."""
    b.halt()
    assert not in_grace(a, member)


def test_a_dead_process_peer_gets_what_was_sent_before_the_reap_from_the_log(
    make: Factory,
) -> None:
    """kill -9 leaves a gap before the reap: frames its process had queued but not
    written, and signals sent before the reap. The peer's ids carry the swarm log number
    of each frame, so the resume replays them from the log: each once, in order, after
    the last frame its client got, and what came after the reap from its queue."""
    options = {"resume_grace": 10, **REAPED_FAST}
    a, b = make(**options), make(**options)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid, token=m1.token) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    assert log_number(handle)  # a log number, not 0
    # Queued on b's stream, never written to its client.
    assert a.signal(m1.id, 1, cid=m2.cid, token=m1.token) is Delivery.OK
    assert data_of(frame_of(s2)) == "1"
    gap_then_reap(a, b, m2)
    assert a.signal(m1.id, 2, cid=m2.cid, token=m1.token) is Delivery.OK  # b is dead
    assert a.signal(m1.id, "all", token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "all")
    assert not in_grace(a, m2)  # all that before the reap
    wait_until(lambda: in_grace(a, m2), timeout=10)
    assert a.signal(m1.id, 3, cid=m2.cid, token=m1.token) is Delivery.OK  # after it
    back = a.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None and (back.cid, back.initiator) == (m2.cid, False)
    frames = [frame_of(s3) for _ in range(4)]
    assert [json.loads(data_of(f)) for f in frames] == [1, 2, "all", 3]
    seq = frame_number(handle)
    ids = ids_of(frames)
    assert [frame_number(i) for i in ids] == [seq + 1, seq + 2, seq + 3, seq + 4]
    assert_quiet(s3)
    assert a.signal(m1.id, "live", cid=m2.cid) is Delivery.OK
    assert event_of(s3) == ("signal", "live")
    assert_quiet(s1, 0.5)  # no leave, no join
    del s2


def test_a_dead_process_peer_that_got_only_its_connect_frame_resumes_from_its_join(
    make: Factory,
) -> None:
    """The connect frame's id carries no log number (it is sent before the join's):
    the resume starts from the peer's own "joined" message in the log."""
    options = {"resume_grace": 10, **REAPED_FAST}
    a, b = make(**options), make(**options)
    s1, s2 = stream(), stream()
    m1 = a.create_swarm(s1)
    assert a.signal(m1.id, "before", token=m1.token) is Delivery.OK  # not for the joiner
    assert event_of(s1) == ("connect", m1.connect_data())
    assert event_of(s1) == ("signal", "before")
    m2 = b.join_swarm(m1.id, s2)
    assert m2 is not None
    handle = ids_of([frame_of(s2)])[0]
    assert (frame_number(handle), log_number(handle)) == (1, 0)
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m2.cid})
    gap_then_reap(a, b, m2)
    assert a.signal(m1.id, "gap", token=m1.token) is Delivery.OK
    assert a.signal(m1.id, 1, cid=m2.cid, token=m1.token) is Delivery.OK
    wait_until(lambda: in_grace(a, m2), timeout=10)
    back = a.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None and back.cid == m2.cid
    assert [event_of(s3) for _ in range(2)] == [("signal", "gap"), ("signal", 1)]
    assert_quiet(s3)
    del s2


def test_a_dead_process_initiator_gets_the_joins_and_leaves_of_the_gap(make: Factory) -> None:
    options = {"resume_grace": 10, **REAPED_FAST}
    a, b = make(**options), make(**options)
    m1, s1, m2, s2 = swarm(b, a)  # the initiator on b, which dies
    assert a.signal(m1.id, "hi", token=m2.token) is Delivery.OK
    assert event_of(s2) == ("signal", "hi")
    handle = ids_of([frame_of(s1)])[0]
    m3 = a.join_swarm(m1.id, s3 := stream())  # b got its join, its client did not
    assert m3 is not None
    gap_then_reap(a, b, m1)
    m4 = a.join_swarm(m1.id, s4 := stream())
    assert m4 is not None
    a.leave_swarm(m3, s3)
    assert a.signal(m1.id, "gap", token=m2.token) is Delivery.OK
    assert not in_grace(a, m1)
    wait_until(lambda: in_grace(a, m1), timeout=10)
    a.leave_swarm(m4, s4)  # after the reap: from its queue
    back = a.resume_swarm(handle, s5 := stream())  # the create URL
    assert back is not None and back.initiator and back.cid == m1.cid
    got = [event_of(s5) for _ in range(5)]
    assert got == [
        ("join", {"id": m1.id, "cid": m3.cid}),
        ("join", {"id": m1.id, "cid": m4.cid}),
        ("leave", {"id": m1.id, "cid": m3.cid}),
        ("signal", "gap"),
        ("leave", {"id": m1.id, "cid": m4.cid}),
    ]
    assert_quiet(s5)
    assert event_of(s2) == ("signal", "gap")
    assert_quiet(s2)  # the peer that stayed saw no leave or join of the initiator
    del s1


def resumed_with_a_replay(
    make: Factory,
) -> tuple[RedisBroker, RedisBroker, Membership, Stream, Membership, list[bytes]]:
    """A peer lost from b resumed on c with two frames replayed; returns a, c, the
    initiator (on a) and its stream, the peer, and the replayed frames."""
    options = {"resume_grace": 10, **REAPED_FAST}
    a, b, c = make(**options), make(**options), make(**options)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    s2.end("reset")
    b.leave_swarm(m2, s2)  # lost: in its grace
    for n in (1, 2):
        assert a.signal(m1.id, n, cid=m2.cid) is Delivery.OK
    back = c.resume_swarm(handle, s3 := stream(), m1.id)
    assert back is not None
    replayed = [frame_of(s3) for _ in range(2)]
    assert [json.loads(data_of(f)) for f in replayed] == [1, 2]
    numbers = [log_number(i) for i in ids_of(replayed)]
    assert numbers[0] == 0 and (numbers[1] or 0) > 0  # known only once all are there
    return a, c, m1, s1, m2, replayed


def test_a_peer_resumed_then_killed_again_resumes_from_its_replay(make: Factory) -> None:
    """The last frame a resume replays carries the number of the resume's own log
    message: a peer whose new process is killed after that replay resumes again with
    exactly what came after it."""
    a, c, m1, s1, m2, replayed = resumed_with_a_replay(make)
    handle = ids_of(replayed)[-1]
    c.halt()  # as kill -9
    assert a.signal(m1.id, 3, cid=m2.cid) is Delivery.OK
    assert a.signal(m1.id, "all", token=m1.token) is Delivery.OK
    assert event_of(s1) == ("signal", "all")
    wait_until(lambda: in_grace(a, m2), timeout=10)
    again = a.resume_swarm(handle, s4 := stream(), m1.id)
    assert again is not None and again.cid == m2.cid
    frames = [frame_of(s4) for _ in range(2)]
    assert [json.loads(data_of(f)) for f in frames] == [3, "all"]
    assert [frame_number(i) for i in ids_of(frames)] == [
        frame_number(handle) + 1,
        frame_number(handle) + 2,
    ]
    assert_quiet(s4)
    assert_quiet(s1)  # no leave, no join


def test_a_peer_killed_in_the_middle_of_a_replay_cannot_resume(make: Factory) -> None:
    """A replayed frame but the last has no log number: where its client stands in the
    log is unknown, so a resume from it after a kill is refused (the peer leaves)."""
    a, c, m1, s1, m2, replayed = resumed_with_a_replay(make)
    c.halt()
    wait_until(lambda: in_grace(a, m2), timeout=10)
    assert a.resume_swarm(ids_of(replayed)[0], stream(), m1.id) is None
    assert event_of(s1, timeout=5) == ("leave", {"id": m1.id, "cid": m2.cid})


def test_a_dead_process_peer_older_than_the_swarm_log_cannot_resume(make: Factory) -> None:
    """What was sent before the reap no longer in the log: refused (204 over HTTP), and
    the peer leaves, rather than resume with a silent gap."""
    options = {"resume_grace": 10, "swarm_log": 4, **REAPED_FAST}
    a, b = make(**options), make(**options)
    m1, s1, m2, s2 = swarm(a, b)
    assert a.signal(m1.id, 0, cid=m2.cid) is Delivery.OK
    handle = ids_of([frame_of(s2)])[0]
    gap_then_reap(a, b, m2)
    for n in range(1, 7):  # more than the log keeps
        assert a.signal(m1.id, n, cid=m2.cid) is Delivery.OK
    wait_until(lambda: in_grace(a, m2), timeout=10)
    assert a.resume_swarm(handle, stream(), m1.id) is None
    assert event_of(s1, timeout=5) == ("leave", {"id": m1.id, "cid": m2.cid})
    assert a.authenticate(m1.id, m2.token) is Delivery.BAD_TOKEN
    del s2


# -- channels ----------------------------------------------------------------------


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


def test_the_events_of_one_loop_turn_go_in_one_script_call(
    own_redis: RedisServer, make: Factory
) -> None:
    """Events published at once, to one channel or several, cost Redis one script call
    and one operation key; each publisher gets its own id, numbered in the order they
    came, and each subscriber gets each event once, in that order, as the history does."""
    quiet = {"heartbeat_interval": 30.0, "peer_ttl": 60.0, "ping_interval": 60.0}
    a, b = make(own_redis.url, **quiet), make(own_redis.url, **quiet)
    client = redis.Redis.from_url(own_redis.url)
    news, sport = stream(), stream()
    a.subscribe(news, ["news"])
    a.subscribe(sport, ["sport"])
    epoch = b.publish(["news"], "warm").rpartition("-")[0]
    assert data_of(frame_of(news)) == "warm"
    batches = b._publishes.batches
    calls = counts["redis_publish_batches"]

    client.config_resetstat()
    jobs = [
        gevent.spawn(b.publish, ["news"], 1),
        gevent.spawn(b.publish, ["sport", "news"], 2, event="goal"),
        gevent.spawn(b.publish, ["news"], 3, id="app-3"),
        gevent.spawn(b.publish, ["sport"], 4),
        gevent.spawn(b.publish, [], 5),  # no channel: numbered all the same
    ]
    gevent.joinall(jobs, raise_error=True)
    ids = [job.value for job in jobs]
    first = int(ids[0].rpartition("-")[2])
    assert ids == [
        f"{epoch}-{first}",
        f"{epoch}-{first + 1}",
        "app-3",
        f"{epoch}-{first + 3}",
        f"{epoch}-{first + 4}",
    ]
    assert b._publishes.batches == batches + 1
    assert counts["redis_publish_batches"] == calls + 1
    stats = {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()
    }
    assert (stats["evalsha"], stats["get"], stats["set"], stats["publish"]) == (1, 1, 1, 5)

    def received(s: Stream, count: int) -> list[tuple[bool, str, str]]:
        frames = [frame_of(s) for _ in range(count)]
        assert_quiet(s)
        return [(b"event: goal\n" in f, data_of(f), ids_of([f])[0]) for f in frames]

    assert received(news, 3) == [(False, "1", ids[0]), (True, "2", ids[1]), (False, "3", "app-3")]
    assert received(sport, 2) == [(True, "2", ids[1]), (False, "4", ids[3])]
    # The history, which a resume reads, holds them in the same order.
    assert ids_of(make(own_redis.url).subscribe(stream(), ["news"], ids[0]).frames) == [
        ids[1],
        "app-3",
    ]


def test_a_publish_batch_holds_at_most_its_limit(make: Factory) -> None:
    a, b = make(), make()
    s = stream()
    a.subscribe(s, ["capped"])
    b._publishes.limit = 2
    batches = b._publishes.batches
    jobs = [gevent.spawn(b.publish, ["capped"], n) for n in range(5)]
    gevent.joinall(jobs, raise_error=True)
    assert b._publishes.batches == batches + 3  # 2, 2 and 1
    frames = [frame_of(s) for _ in range(5)]
    assert [data_of(f) for f in frames] == ["0", "1", "2", "3", "4"]
    assert ids_of(frames) == [job.value for job in jobs]


def test_an_event_to_many_channels_is_published_alone(make: Factory) -> None:
    """A batch never holds an event to more than a few channels (one to all of a
    thousand would hold Redis for as long as the rest of the batch): it goes alone."""
    a, b = make(), make()
    wide, narrow = stream(), stream()
    channels = [f"wide{n}" for n in range(20)]
    a.subscribe(wide, channels[-1:])
    a.subscribe(narrow, ["narrow"])
    batches, calls = b._publishes.batches, counts["redis_publish_batches"]
    jobs = [
        gevent.spawn(b.publish, ["narrow"], 1),
        gevent.spawn(b.publish, channels, 2),
        gevent.spawn(b.publish, ["narrow"], 3),
    ]
    gevent.joinall(jobs, raise_error=True)
    assert b._publishes.batches == batches + 1  # the two narrow ones
    assert counts["redis_publish_batches"] == calls + 2
    assert [data_of(frame_of(narrow)) for _ in range(2)] == ["1", "3"]
    assert ids_of([frame_of(wide)]) == [jobs[1].value]
    assert_quiet(narrow)
    assert_quiet(wide)


def test_history_is_trimmed_in_redis(make: Factory) -> None:
    a, b = make(history_size=5), make(history_size=5)
    ids = [a.publish(["h"], i) for i in range(12)]
    client = redis.Redis.from_url(a.url)
    assert client.xlen(f"{a.prefix}chan:{{h}}") == 5
    replay = b.subscribe(stream(), ["h"], ids[2])
    assert ids_of(replay.frames) == ids[7:] and replay.lost


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
    """Streams stay open while Redis is away; when it comes back empty, the swarms it
    forgot end, channel streams carry on, and everything works again."""
    a = make(own_redis.url, connect_timeout=0.5, ping_interval=0.5, ping_timeout=0.5)
    b = make(own_redis.url, connect_timeout=0.5, ping_interval=0.5, ping_timeout=0.5)
    m1, s1, _, s2 = swarm(a, b)
    ch = stream()
    b.subscribe(ch, ["live"])

    own_redis.kill()
    wait_until(lambda: not a.stats()["pubsub_connected"] and not b.stats()["pubsub_connected"])
    assert not any(s.ended for s in (s1, s2, ch))
    assert not a.healthy()
    with pytest.raises(BrokerUnavailable):
        a.create_swarm(stream())
    with pytest.raises(BrokerUnavailable):
        a.publish(["live"], 1)
    with pytest.raises(BrokerUnavailable):
        a.signal(m1.id, 1)
    with pytest.raises(BrokerUnavailable):
        b.subscribe(stream(), ["live"])

    own_redis.start()
    wait_until(lambda: a.stats()["pubsub_connected"] and b.stats()["pubsub_connected"], 20)
    assert ended(s1) == "swarm closed"  # Redis came back empty: the swarm is gone
    assert ended(s2) == "swarm closed"
    a.leave_swarm(m1)
    assert a.healthy() and b.healthy()
    m1, s1, m2, s2 = swarm(a, b)
    assert b.signal(m1.id, "again", token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "again")
    assert event_of(s2) == ("signal", "again")
    event_id = a.publish(["live"], "back")
    assert not ch.ended
    assert ids_of([frame_of(ch)]) == [event_id]


def test_a_dead_listener_is_restarted_and_streams_stay(make: Factory) -> None:
    a, b = make(heartbeat_interval=0.2, peer_ttl=0.6), make()
    m1, s1, m2, s2 = swarm(a, b)
    listener = a.listener.greenlet
    assert listener is not None
    listener.kill()
    wait_until(lambda: a.listener.greenlet is not listener and a.stats()["pubsub_connected"])
    assert b.signal(m1.id, "ok", token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "ok")
    assert event_of(s2) == ("signal", "ok")


def test_channels_catch_up_after_a_pubsub_reconnection(
    own_redis: RedisServer, make: Factory
) -> None:
    """Events published while a process's pub/sub link was down reach its streams from
    the history, in order, once each; swarm streams stay."""
    a, b = make(own_redis.url), make(own_redis.url)
    m1, s1, _, s2 = swarm(a, b)
    one, both = stream(), stream()
    a.subscribe(one, ["x"])
    a.subscribe(both, ["x", "y"])
    first = b.publish(["x"], 0)
    assert ids_of([frame_of(one)]) == ids_of([frame_of(both)]) == [first]
    client = redis.Redis.from_url(own_redis.url)
    subscriber = next(c for c in client.client_list() if int(c["sub"]) == 3)  # a's listener
    client.client_kill_filter(_id=subscriber["id"])
    # Published at once: some reach a before its link is back, and come from history.
    ids = [b.publish(["x", "y"] if i % 2 else ["x"], i) for i in range(1, 30)]
    got_one = ids_of([frame_of(one) for _ in ids])
    got_both = ids_of([frame_of(both) for _ in ids])
    assert got_one == got_both == ids
    assert_quiet(one, 0.2)
    assert_quiet(both, 0.2)
    assert a.signal(m1.id, "still", token=m1.token) is Delivery.OK
    assert event_of(s1) == event_of(s2) == ("signal", "still")


class _Gate:
    """Holds a broker's pub/sub reconnection until opened: a gap of a known extent."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.make = broker.listener.connection
        self.open = gevent.event.Event()
        broker.listener.connection = self._connection

    def _connection(self) -> Any:
        self.open.wait()
        return self.make()

    def cut(self, url: str) -> None:
        """Kill the broker's pub/sub connection (CLIENT KILL ID), as Redis kills a slow
        subscriber, and wait until the broker knows."""
        conn = self.broker.listener.conn
        assert conn is not None and conn._sock is not None
        port = conn._sock.getsockname()[1]
        client = redis.Redis.from_url(url)
        (found,) = [c for c in client.client_list(_type="pubsub") if c["addr"].endswith(f":{port}")]
        assert client.client_kill_filter(_id=found["id"]) == 1
        wait_until(lambda: not self.broker.stats()["pubsub_connected"])

    def close(self) -> None:
        self.open.set()
        wait_until(lambda: self.broker.stats()["pubsub_connected"])


@pytest.mark.parametrize("grace", [0, 5])
def test_swarm_messages_of_a_pubsub_gap_arrive_once_and_in_order(
    own_redis: RedisServer, make: Factory, grace: float
) -> None:
    """b's pub/sub connection is killed and kept down while a signals (broadcast and
    direct), b signals, and a peer joins and leaves: once b is back, its initiator and
    peer get each of those exactly once, in order, before anything newer (with resume
    on too, whose frames are numbered)."""
    a, b = make(own_redis.url, resume_grace=grace), make(own_redis.url, resume_grace=grace)
    s1, s2, s3, s4 = stream(), stream(), stream(), stream()
    m1 = b.create_swarm(s1)
    m2 = b.join_swarm(m1.id, s2)
    m3 = a.join_swarm(m1.id, s3)
    assert m2 is not None and m3 is not None
    for s in (s1, s2, s3):
        event_of(s)  # connect
    assert [event_of(s1)[1]["cid"] for _ in range(2)] == [m2.cid, m3.cid]
    gate = _Gate(b)
    gate.cut(own_redis.url)
    to_initiator: list[tuple[str, Any]] = []
    to_peer: list[tuple[str, Any]] = []
    for i in range(5):
        assert a.signal(m1.id, f"all{i}", token=m3.token) is Delivery.OK
        to_initiator.append(("signal", f"all{i}"))
        to_peer.append(("signal", f"all{i}"))
        assert a.signal(m1.id, f"p{i}", cid=m2.cid, token=m3.token) is Delivery.OK
        to_peer.append(("signal", f"p{i}"))
        assert a.signal(m1.id, f"i{i}", cid=m1.cid, token=m3.token) is Delivery.OK
        to_initiator.append(("signal", f"i{i}"))
    assert b.signal(m1.id, "from b", token=m2.token) is Delivery.OK
    to_initiator.append(("signal", "from b"))
    to_peer.append(("signal", "from b"))
    m4 = a.join_swarm(m1.id, s4)
    assert m4 is not None
    to_initiator.append(("join", {"id": m1.id, "cid": m4.cid}))
    assert a.signal(m1.id, "with 4", token=m4.token) is Delivery.OK
    to_initiator.append(("signal", "with 4"))
    to_peer.append(("signal", "with 4"))
    a.leave_swarm(m4)
    to_initiator.append(("leave", {"id": m1.id, "cid": m4.cid}))
    assert_quiet(s1, 0.2)  # nothing came through the gap
    assert_quiet(s2, 0)
    gate.close()
    assert a.signal(m1.id, "after", token=m3.token) is Delivery.OK
    to_initiator.append(("signal", "after"))
    to_peer.append(("signal", "after"))
    assert [event_of(s1) for _ in to_initiator] == to_initiator
    assert [event_of(s2) for _ in to_peer] == to_peer
    assert_quiet(s1)
    assert_quiet(s2, 0)
    assert s1.end_reason is None and s2.end_reason is None
    # a's peer, whose process had no gap, got the broadcasts once too.
    assert [event_of(s3)[1] for _ in range(7)] == [
        *(f"all{i}" for i in range(5)),
        "from b",
        "with 4",
    ]
    assert event_of(s3) == ("signal", "after")
    assert_quiet(s3, 0)


def test_a_gap_longer_than_the_swarm_log_ends_streams_with_retry(
    own_redis: RedisServer, make: Factory
) -> None:
    """More messages missed than a swarm's log keeps: the gapped process's streams of
    that swarm end with a ``retry:`` hint (the peers leave), never a silent gap."""
    a, b = make(own_redis.url, swarm_log=3), make(own_redis.url, swarm_log=3)
    m1, s1, m2, s2 = swarm(b, a)  # the initiator on b, the peer on a
    gate = _Gate(b)
    gate.cut(own_redis.url)
    for i in range(5):
        assert a.signal(m1.id, i, token=m2.token) is Delivery.OK
    assert [event_of(s2)[1] for _ in range(5)] == list(range(5))
    gate.close()
    frames = []
    while (frame := next_frame(s1, 5)) != ENDED:
        assert frame is not None
        frames.append(frame)
    assert s1.end_reason == "gap"
    assert frames and frames[-1].startswith(b":") and b"\nretry: " in frames[-1]
    assert not any(b"event: signal" in frame for frame in frames)


def test_the_swarm_log_is_bounded_in_entries_bytes_and_time(make: Factory) -> None:
    """Past either bound the oldest entries go, in batches (to 15/16 of the bound); the
    newest always stays; the log expires its TTL after its last write."""
    a = make(swarm_log=32, swarm_log_bytes=4000, swarm_log_ttl=30)
    m1 = a.create_swarm(s1 := stream())
    client = redis.Redis.from_url(a.url)
    key = a.keys.swarm_log(m1.id)

    def numbers() -> list[int]:
        return [codec.numbered(m)[0] for m in client.lrange(key, 0, -1)]

    def logged_bytes() -> int:
        return sum(len(m) for m in client.lrange(key, 0, -1))

    for i in range(100):
        a.signal(m1.id, i)
        assert 1 <= len(numbers()) <= 32
        assert logged_bytes() <= 4000
    assert numbers() == list(range(numbers()[0], 101))  # contiguous, up to the newest
    assert len(numbers()) >= 30
    assert int(client.hget(a.keys.swarm(m1.id), "nz") or 0) == logged_bytes()
    for _ in range(20):
        a.signal(m1.id, "x" * 300)  # ~330 bytes each: the byte bound holds
        assert logged_bytes() <= 4000
    assert len(numbers()) <= 12
    assert numbers() == list(range(numbers()[0], 121))
    a.signal(m1.id, "y" * 5000)  # larger than the bound: kept alone
    assert numbers() == [121]
    assert 0 < client.pttl(key) <= 30_000
    assert event_of(s1)[0] == "connect"
    assert [event_of(s1)[0] for _ in range(121)] == ["signal"] * 121


def test_a_stall_ends_no_stream_and_reaps_no_peer(own_redis: RedisServer, make: Factory) -> None:
    """Redis paused longer than the heartbeats' TTL and the listener's PING timeout:
    afterwards every swarm and stream is still there and works."""
    quick = {"heartbeat_interval": 0.3, "peer_ttl": 1.0, "ping_interval": 0.5, "ping_timeout": 0.5}
    a, b = make(own_redis.url, **quick), make(own_redis.url, **quick)
    m1, s1, m2, s2 = swarm(a, b)
    ch = stream()
    a.subscribe(ch, ["z"])
    _pause(own_redis, 4, after=0).join()
    gevent.sleep(3)  # several reaper rounds after the stall
    assert [s.end_reason for s in (s1, s2, ch)] == [None, None, None]
    assert a.authenticate(m1.id, m2.token) is Delivery.OK
    assert b.signal(m1.id, "after", token=m2.token) is Delivery.OK
    assert event_of(s1) == event_of(s2) == ("signal", "after")
    event_id = b.publish(["z"], "after")
    assert ids_of([frame_of(ch)]) == [event_id]
    assert_quiet(s1, 0.1)


def test_a_flushed_history_ends_channel_streams(own_redis: RedisServer, make: Factory) -> None:
    a, b = make(own_redis.url), make(own_redis.url)
    ch = stream()
    a.subscribe(ch, ["f"])
    for i in range(3):
        b.publish(["f"], i)
    for _ in range(3):
        frame_of(ch)
    redis.Redis.from_url(own_redis.url).flushall()
    b.publish(["f"], "new epoch")  # sequence number 1 again: a's stream must not miss it
    reason, retry = ended_with_retry(ch)
    assert reason == "broker unavailable"
    assert retry is not None and 250 <= retry <= 3250  # soon, and spread


def test_history_lost_while_the_pubsub_link_was_down_ends_channel_streams(
    own_redis: RedisServer, make: Factory
) -> None:
    """Redis restarted empty while a process's pub/sub link was down, and events of the
    new epoch published before the link is back: the catch-up must see that the
    history its streams had is gone, and end them (their clients resume and are told),
    not take the new epoch's numbers for ones already delivered. The stream subscribed
    before any event, so the process learnt the epoch from live events only."""
    a, b = make(own_redis.url), make(own_redis.url)
    ch = stream()
    a.subscribe(ch, ["r"])
    for i in range(3):
        b.publish(["r"], i)
    for _ in range(3):
        frame_of(ch)
    gate = gevent.event.Event()
    connection = a.listener.connection

    def gated() -> Any:
        gate.wait()  # the link stays down until the new epoch's events are published
        return connection()

    a.listener.connection = gated  # type: ignore[method-assign]
    client = redis.Redis.from_url(own_redis.url)
    subscriber = next(c for c in client.client_list() if int(c["sub"]) >= 1)  # a's listener
    client.client_kill_filter(_id=subscriber["id"])
    wait_until(lambda: not a.stats()["pubsub_connected"])
    client.flushall()
    for i in range(5):
        b.publish(["r"], f"new {i}")  # sequence numbers 1 to 5 of a new epoch
    gate.set()
    reason, retry = ended_with_retry(ch)
    assert reason == "broker unavailable"
    assert retry is not None and 250 <= retry <= 3250


# -- round trips -------------------------------------------------------------------


def test_commands_per_operation(own_redis: RedisServer, make: Factory) -> None:
    """Each hot operation sends the Redis commands it was designed with, and no more.

    Every script that changes state also reads and writes its operation key
    (``ONCE``), so that a copy of it never takes effect twice.

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
    assert direct == {"evalsha": 1, "hmget": 1, "publish": 1, **ONCE, **LOG}
    assert event_of(s1) == ("signal", "hi")
    broadcast = sent(lambda: a.signal(m1.id, "all", token=m1.token))
    assert broadcast == {"evalsha": 1, "hmget": 1, "publish": 1, **ONCE, **LOG}
    assert event_of(s1) == event_of(s2) == ("signal", "all")
    refused = sent(lambda: b.signal(m1.id, "x", token="wrong"))
    assert refused == {"evalsha": 1, "hmget": 1, **ONCE}

    created = sent(lambda: a.create_swarm(stream()))
    assert created == {
        "subscribe": 1,
        "evalsha": 1,
        "exists": 1,
        "hset": 1,
        "pexpire": 1,
        "sadd": 1,
        **ONCE,
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
        **ONCE,
        **LOG,
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
        **ONCE,
        **LOG,
    }
    assert event_of(s1) == ("leave", {"id": m1.id, "cid": m3.cid})
    # b still holds m2's stream: its topic stays, nothing but the script is sent.
    assert sent(lambda: b.join_swarm(m1.id, stream())) == {
        "evalsha": 1,
        "exists": 1,
        "hset": 1,
        "sadd": 1,
        "publish": 1,
        **ONCE,
        **LOG,
    }

    assert sent(lambda: a.publish(["c"], 1)) == {
        "evalsha": 1,
        "hget": 2,
        "hincrby": 1,
        "xlen": 1,
        "xadd": 1,
        "pexpire": 2,
        "publish": 1,
        **ONCE,
    }
    # The stream's presence entry is written in the background, after the subscribe.
    subscribed = sent(lambda: a.subscribe(stream(), ["d"]), wait_for="sadd")
    assert subscribed == {"subscribe": 1, "hset": 1, "pexpire": 1, "sadd": 1}
    # "c" is held already: no SUBSCRIBE, one script reads the history. A plain "0"
    # may name an event the application numbered 0 (sse-channel counts from 0), so
    # the script looks for one (XREVRANGE) before it reads what follows.
    resumed = sent(lambda: a.subscribe(stream(), ["c"], "0"), wait_for="sadd")
    assert resumed == {
        "evalsha": 1,
        "hget": 4,
        "xrevrange": 1,
        "xrange": 1,
        **{"hset": 1, "pexpire": 1, "sadd": 1},  # its presence entry
    }


# -- exactly once ------------------------------------------------------------------


class _Observer(threading.Thread):
    """Every message Redis publishes on some topics, as seen by a plain client."""

    def __init__(self, url: str, topics: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.Redis.from_url(url).pubsub()
        self.pubsub.subscribe(*topics)
        self.messages: list[bytes] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                self.messages.append(message["data"])

    def stop(self) -> list[bytes]:
        self.done.set()
        self.join(10)
        self.pubsub.close()
        return self.messages


def _decoded(payload: bytes) -> codec.Message | None:
    """A pub/sub message, numbered (swarm log) or not."""
    return codec.decode(codec.numbered(payload)[1])


def _pause(server: RedisServer, seconds: float, after: float) -> threading.Thread:
    """Stop Redis (SIGSTOP) ``after`` seconds from now for ``seconds``, in a thread."""
    assert server.proc is not None
    pid = server.proc.pid

    def run() -> None:
        time.sleep(after)
        os.kill(pid, signal_module.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal_module.SIGCONT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _through_a_pause(
    server: RedisServer, seconds: float, act: Callable[[str], Any]
) -> tuple[list[tuple[str, str, Any]], float]:
    """Eight greenlets call ``act`` with keys of their own, one call after another,
    while Redis is paused for ``seconds`` (so that calls share batches across the
    pause), until a second after it. Each call's outcome, ``("ok", key, act's value)``,
    ``("failed", key, None)`` or ``("unknown", key, None)``, and the longest call."""
    outcomes: list[tuple[str, str, Any]] = []
    longest = 0.0
    stop = gevent.event.Event()

    def caller(k: int) -> None:
        nonlocal longest
        n = 0
        while not stop.is_set():
            n += 1
            key = f"g{k}-{n}"
            started = time.monotonic()
            try:
                value = act(key)
            except OutcomeUnknown:
                outcomes.append(("unknown", key, None))
            except BrokerUnavailable:
                outcomes.append(("failed", key, None))
            else:
                outcomes.append(("ok", key, value))
            longest = max(longest, time.monotonic() - started)
            gevent.sleep(0.01)

    pauser = _pause(server, seconds, after=0.3)
    callers = [gevent.spawn(caller, k) for k in range(8)]
    while pauser.is_alive():
        gevent.sleep(0.1)
    gevent.sleep(1)
    stop.set()
    gevent.joinall(callers, raise_error=True)
    return outcomes, longest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", [1, 3, 5, 7, 10])
def test_a_stalled_redis_applies_nothing_twice(
    own_redis: RedisServer, make: Factory, seconds: float
) -> None:
    """Publishes, signals and joins while Redis is paused: each is applied exactly once
    and reported so, or not applied and reported failed, or reported unknown and applied
    at most once. Nothing is applied twice."""
    a = make(own_redis.url, history_size=100_000)
    initiator = a.create_swarm(stream())
    swarm_topic, channel_topic = a.keys.swarm(initiator.id), a.keys.channel("c")
    observer = _Observer(own_redis.url, [swarm_topic, channel_topic])
    observer.start()
    wait_until(lambda: redis.Redis.from_url(own_redis.url).pubsub_numsub(channel_topic)[0][1] >= 1)

    outcomes: dict[str, list[tuple[str, str]]] = {"publish": [], "signal": [], "join": []}

    longest = 0.0

    def attempt(kind: str, key: str, operation: Callable[[], Any]) -> None:
        nonlocal longest
        started = time.monotonic()
        try:
            result = operation()
        except OutcomeUnknown:
            outcomes[kind].append(("unknown", key))
        except BrokerUnavailable:
            outcomes[kind].append(("failed", key))
        else:
            if kind == "join":
                assert result is not None
                key = result.cid
            outcomes[kind].append(("ok", key))
        finally:
            longest = max(longest, time.monotonic() - started)

    pauser = _pause(own_redis, seconds, after=0.3)
    i = 0
    ended_at: float | None = None
    while ended_at is None or time.monotonic() < ended_at + 1:
        i += 1
        attempt("publish", f"p{i}", lambda n=i: a.publish(["c"], f"p{n}"))
        attempt("signal", f"s{i}", lambda n=i: a.signal(initiator.id, f"s{n}"))
        attempt("join", "", lambda: a.join_swarm(initiator.id, stream()))
        if ended_at is None and not pauser.is_alive():
            ended_at = time.monotonic()
    gevent.sleep(1)
    messages = [_decoded(m) for m in observer.stop()]
    published = Counter(data_of(m.frame) for m in messages if isinstance(m, codec.Event))
    signalled = Counter(
        json.loads(m.frame.decode().split("data: ")[1])
        for m in messages
        if isinstance(m, codec.Broadcast)
    )
    joined = Counter(m.cid for m in messages if isinstance(m, codec.Joined))
    history = Counter(
        data_of(entry[b"f"])
        for _, entry in redis.Redis.from_url(own_redis.url).xrange(f"{a.prefix}chan:{{c}}")
    )

    for kind, seen in (("publish", published), ("signal", signalled)):
        for outcome, key in outcomes[kind]:
            if outcome == "ok":
                assert seen[key] == 1, (kind, key, outcome)
            elif outcome == "failed":
                assert seen[key] == 0, (kind, key, outcome)
            else:
                assert seen[key] <= 1, (kind, key, outcome)
        assert all(count == 1 for count in seen.values()), (kind, seen.most_common(3))
    for _, key in outcomes["publish"]:
        assert history[key] == published[key], key
    ok_joins = {key for outcome, key in outcomes["join"] if outcome == "ok"}
    unknown_joins = sum(1 for outcome, _ in outcomes["join"] if outcome == "unknown")
    assert all(joined[cid] == 1 for cid in ok_joins)
    assert all(count == 1 for count in joined.values()), joined.most_common(3)
    assert len(set(joined) - ok_joins) <= unknown_joins
    # The stall was met: an operation waited for it (and was settled if it outlasted
    # the command timeout).
    assert longest >= seconds * 0.8


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", [1, 7])
def test_batches_of_signals_under_a_stalled_redis_apply_nothing_twice(
    own_redis: RedisServer, make: Factory, seconds: float
) -> None:
    """Signals posted at once by several requests while Redis is paused, so that they
    share script calls: each is applied once and reported so, or not applied and reported
    failed, or reported unknown and applied at most once. 7 s outlasts the command
    timeout: those batches are settled."""
    a = make(own_redis.url)
    initiator = a.create_swarm(stream())
    topic = a.keys.swarm(initiator.id)
    observer = _Observer(own_redis.url, [topic])
    observer.start()
    wait_until(lambda: redis.Redis.from_url(own_redis.url).pubsub_numsub(topic)[0][1] >= 2)

    batches, items = a._signals.batches, a._signals.items
    outcomes, longest = _through_a_pause(
        own_redis, seconds, lambda key: a.signal(initiator.id, key)
    )
    gevent.sleep(1)
    messages = [_decoded(m) for m in observer.stop()]
    seen = Counter(
        json.loads(m.frame.decode().split("data: ")[1])
        for m in messages
        if isinstance(m, codec.Broadcast)
    )
    for outcome, key, _ in outcomes:
        if outcome == "ok":
            assert seen[key] == 1, (key, outcome)
        elif outcome == "failed":
            assert seen[key] == 0, (key, outcome)
        else:
            assert seen[key] <= 1, (key, outcome)
    assert all(count == 1 for count in seen.values()), seen.most_common(3)
    assert any(outcome == "ok" for outcome, _, _ in outcomes)
    # Signals did share calls, and the stall was met.
    assert a._signals.items - items > a._signals.batches - batches
    assert longest >= min(seconds, 5) * 0.8


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", [1, 7])
def test_batches_of_events_under_a_stalled_redis_apply_nothing_twice(
    own_redis: RedisServer, make: Factory, seconds: float
) -> None:
    """Events published at once by several greenlets while Redis is paused, so that they
    share script calls: each is in the history once, under the id its publisher got, or
    not at all when the publisher was told so; at most once when the outcome is unknown."""
    a = make(own_redis.url, history_size=100_000)
    batches, items = a._publishes.batches, a._publishes.items
    outcomes, longest = _through_a_pause(
        own_redis, seconds, lambda key: a.publish(["stalled"], key)
    )
    history = redis.Redis.from_url(own_redis.url).xrange(a.keys.channel("stalled"))
    stored: dict[str, list[str]] = {}
    for _, fields in history:
        stored.setdefault(data_of(fields[b"f"]), []).append(fields[b"i"].decode())
    for outcome, key, event_id in outcomes:
        if outcome == "ok":
            assert stored.get(key) == [event_id], (key, outcome)
        elif outcome == "failed":
            assert key not in stored, (key, outcome)
        else:
            assert len(stored.get(key, [])) <= 1, (key, outcome)
    assert all(len(ids) == 1 for ids in stored.values())
    assert any(outcome == "ok" for outcome, _, _ in outcomes)
    # Events did share calls, and the stall was met.
    assert a._publishes.items - items > a._publishes.batches - batches
    assert longest >= min(seconds, 5) * 0.8


def test_the_signals_of_one_loop_turn_go_in_one_script_call(
    own_redis: RedisServer, make: Factory
) -> None:
    """Signals posted at once, to several swarms, cost Redis one script call and one
    operation key; each caller gets its own answer, each signal arrives once."""
    quiet = {"heartbeat_interval": 30.0, "peer_ttl": 60.0, "ping_interval": 60.0}
    a, b = make(own_redis.url, **quiet), make(own_redis.url, **quiet)
    client = redis.Redis.from_url(own_redis.url)
    pairs = [swarm(a, b) for _ in range(5)]
    m1, s1, m2, _ = pairs[0]
    assert b.signal(m1.id, "warm", cid=m1.cid, token=m2.token) is Delivery.OK
    assert event_of(s1) == ("signal", "warm")
    batches = b._signals.batches
    calls = counts["redis_signal_batches"]

    client.config_resetstat()
    jobs = [
        gevent.spawn(b.signal, p[0].id, n, cid=p[0].cid, token=p[2].token)
        for n, p in enumerate(pairs)
    ]
    jobs += [
        gevent.spawn(b.signal, m1.id, "x", token="wrong"),
        gevent.spawn(b.signal, m1.id, "x", cid="nobody", token=m2.token),
        gevent.spawn(b.signal, "no-such-swarm", "x"),
        gevent.spawn(b.signal, m1.id, "all", token=m2.token),
    ]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == [Delivery.OK] * 5 + [
        Delivery.BAD_TOKEN,
        Delivery.NO_PEER,
        Delivery.NO_SWARM,
        Delivery.OK,
    ]
    assert b._signals.batches == batches + 1
    assert counts["redis_signal_batches"] == calls + 1  # flask_signal_redis_signal_batches_total
    stats = {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()
    }
    assert (stats["evalsha"], stats["get"], stats["set"]) == (1, 1, 1)
    assert (stats["hmget"], stats["publish"]) == (9, 6)
    # In order: the first swarm's initiator gets its direct signal, then the broadcast.
    assert [event_of(s1), event_of(s1)] == [("signal", 0), ("signal", "all")]
    for n, (_, initiator, _, _) in enumerate(pairs[1:], 1):
        assert event_of(initiator) == ("signal", n)
    for _, initiator, _, _ in pairs:
        assert_quiet(initiator)
    assert event_of(pairs[0][3]) == ("signal", "all")
    for _, _, _, peer in pairs:
        assert_quiet(peer)


def test_a_batch_holds_at_most_its_limit(make: Factory) -> None:
    a, b = make(), make()
    m1, s1, m2, _ = swarm(a, b)
    b._signals.limit = 3
    batches = b._signals.batches
    jobs = [gevent.spawn(b.signal, m1.id, n, cid=m1.cid, token=m2.token) for n in range(7)]
    gevent.joinall(jobs, raise_error=True)
    assert all(job.value is Delivery.OK for job in jobs)
    assert b._signals.batches == batches + 3  # 3, 3 and 1
    assert [event_of(s1) for _ in range(7)] == [("signal", n) for n in range(7)]
    assert_quiet(s1)


def test_every_signal_of_a_batch_learns_that_redis_is_gone(
    own_redis: RedisServer, make: Factory
) -> None:
    a = make(own_redis.url, connect_timeout=0.5)
    m1, _, m2, _ = swarm(a, a)
    own_redis.kill()
    try:
        jobs = [gevent.spawn(a.signal, m1.id, n, token=m2.token) for n in range(4)]
        gevent.joinall(jobs)
        assert all(isinstance(job.exception, BrokerUnavailable) for job in jobs)
    finally:
        own_redis.start()


def test_an_operation_runs_once_however_often_it_is_sent(make: Factory) -> None:
    """Copies of one operation (same key) return the first run's result and publish
    nothing more; one settled as not run does nothing when it arrives."""
    a = make()
    client = redis.Redis.from_url(a.url)
    scripts = a.scripts
    m1 = a.create_swarm(s1 := stream())
    event_of(s1)
    key = a.keys.swarm(m1.id)

    def send(script: Any, op: bytes, args: list[Any]) -> Any:
        keys = [key, a.keys.grace_set(m1.id), a.keys.swarm_log(m1.id), op]
        return client.eval(script.text, 4, *keys, "", "", *args, *a._log_bounds, 60_000)

    op = key + b":op:copy"
    frame = codec.broadcast(b"event: signal\ndata: 1\n\n")
    assert send(scripts.signal, op, ["", "", key, frame]) == b"0"
    assert send(scripts.signal, op, ["", "", key, frame]) == b"0"
    assert frame_of(s1) == b"event: signal\ndata: 1\n\n"
    assert_quiet(s1)

    late = key + b":op:late"
    assert client.eval(scripts.settle.text, 1, late, 60_000) == [0]
    with pytest.raises(redis.ResponseError, match="SETTLED"):
        send(scripts.signal, late, ["", "", key, frame])
    assert_quiet(s1)
    # Settling one that ran returns its result.
    assert client.eval(scripts.settle.text, 1, op, 60_000) == [1, b'"0"']


def test_an_unanswered_settle_reports_the_outcome_unknown(
    own_redis: RedisServer, make: Factory
) -> None:
    a = make(own_redis.url, socket_timeout=0.5)
    m1 = a.create_swarm(s1 := stream())
    event_of(s1)
    observer = _Observer(own_redis.url, [a.keys.swarm(m1.id)])
    observer.start()
    wait_until(lambda: observer.pubsub.subscribed)
    pauser = _pause(own_redis, 3, after=0)
    time.sleep(0.1)
    with pytest.raises(OutcomeUnknown, match="may or may not"):
        a.signal(m1.id, "maybe")
    pauser.join()
    gevent.sleep(1)
    sent = [m for m in map(_decoded, observer.stop()) if isinstance(m, codec.Broadcast)]
    assert len(sent) <= 1
