# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""The multiplexed Redis connection (flask_signal.brokers.redis.mux) against a real Redis.

Many greenlets share one connection: replies reach their own callers, a caller
that gives up shifts nobody's reply, a lost connection fails what was written
to it as "outcome unknown" and what was not as "not sent", and the next command
connects again. A whole broker under load keeps to its few connections.
"""

from __future__ import annotations

import os
import signal as signal_module
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import redis
from flask import Flask
from redis import exceptions as rexc

from flask_signal import Signal
from flask_signal.brokers import BrokerUnavailable, Delivery, Membership, OutcomeUnknown
from flask_signal.brokers.redis import RedisBroker
from flask_signal.brokers.redis.connection import connector
from flask_signal.brokers.redis.mux import Mux, MuxClient, NotSent
from flask_signal.hub import LocalHub, Stream

from .broker_support import data_of, event_of, frame_of, stream
from .redis_support import RedisServer, free_port, own_redis, prefix  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(90)


def make_mux(url: str, timeout: float = 3.0) -> Mux:
    return Mux(connector(url, socket_timeout=timeout, connect_timeout=1.0), timeout=timeout)


@pytest.fixture
def mux(own_redis: RedisServer) -> Iterator[Mux]:
    made = make_mux(own_redis.url)
    yield made
    made.close()


def others(client: redis.Redis, *, besides: int) -> int:
    """How many clients Redis has, this one and ``besides`` (an id) not counted."""
    own = client.client_id()
    return sum(1 for c in client.client_list() if int(c["id"]) not in (own, besides))


def test_replies_reach_their_callers(own_redis: RedisServer, mux: Mux) -> None:
    """Hundreds of greenlets at once, single commands and batches: each caller gets
    its own replies, in its own order, over one connection."""
    results: dict[int, list[Any]] = {}

    def work(i: int) -> None:
        got = results[i] = []
        for n in range(5):
            got.append(mux.call("ECHO", f"{i}:{n}"))
            got.append(mux.call_many([("INCR", f"n:{i}"), ("ECHO", f"{i}!{n}"), ("GET", "none")]))

    gevent.joinall([gevent.spawn(work, i) for i in range(300)], raise_error=True)
    for i in range(300):
        expected: list[Any] = []
        for n in range(5):
            expected += [f"{i}:{n}".encode(), [n + 1, f"{i}!{n}".encode(), None]]
        assert results[i] == expected
    assert mux.connects() == 1
    assert others(redis.Redis.from_url(own_redis.url), besides=-1) == 1


def test_error_replies_and_redis_py_commands(mux: Mux) -> None:
    """An error reply is raised to its caller only; redis-py's commands and
    pipelines parse replies as redis-py's client does."""
    client = MuxClient(mux)
    with pytest.raises(rexc.ResponseError):
        mux.call("NOSUCHCOMMAND")
    assert client.set("k", "v") is True
    assert client.hset("h", mapping={"a": 1, "b": 2}) == 2
    assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    pipe = client.pipeline(transaction=False)
    pipe.set("k", "w", get=True)
    pipe.hincrby("k", "x", 1)  # a hash command on a string: an error reply
    pipe.exists("h")
    assert mux.call_many([]) == []
    with pytest.raises(rexc.ResponseError):
        pipe.execute()
    pipe.get("k")
    pipe.hincrby("k", "x", 1)
    got, error = pipe.execute(raise_on_error=False)
    assert got == b"w" and isinstance(error, rexc.ResponseError)
    assert mux.connects() == 1


def test_a_caller_that_gives_up_shifts_no_reply(mux: Mux) -> None:
    """A caller that stops waiting leaves its place in line: its reply, when it
    comes, is dropped, and every later caller still gets its own."""
    slow = gevent.spawn(mux.call, "BLPOP", "never", "1", timeout=0.2)  # answers after 1 s
    gevent.sleep(0.05)
    after = [gevent.spawn(mux.call, "ECHO", f"e{i}") for i in range(20)]
    with pytest.raises(rexc.TimeoutError) as gave_up:
        slow.get()
    assert not isinstance(gave_up.value, NotSent)  # it was written: it may run
    assert [g.get() for g in after] == [f"e{i}".encode() for i in range(20)]
    assert mux.call("ECHO", "last") == b"last"
    assert mux.connects() == 1


def test_a_killed_connection_fails_what_it_carried(own_redis: RedisServer, mux: Mux) -> None:
    """CLIENT KILL: a call in flight fails as "may have run" (not NotSent); the next
    call connects again. A connection killed while idle is replaced before anything
    is written to it, so that call does not fail at all."""
    client = redis.Redis.from_url(own_redis.url)
    first = mux.call("CLIENT", "ID")
    waiting = gevent.spawn(mux.call, "BLPOP", "never", "5")
    gevent.sleep(0.2)
    assert client.client_kill_filter(_id=first) == 1
    with pytest.raises(rexc.ConnectionError) as lost:
        waiting.get(timeout=5)
    assert not isinstance(lost.value, NotSent)
    second = mux.call("CLIENT", "ID")
    assert second != first and mux.connects() == 2

    assert client.client_kill_filter(_id=second) == 1
    gevent.sleep(0.1)
    third = mux.call("CLIENT", "ID")
    assert third not in (first, second) and mux.connects() == 3
    assert others(client, besides=-1) == 1


def test_nothing_to_connect_to_is_not_sent() -> None:
    """No Redis at all: every caller learns at once that its command was not sent."""
    mux = make_mux(f"redis://127.0.0.1:{free_port()}/0")
    try:
        calls = [gevent.spawn(mux.call, "PING") for _ in range(10)]
        gevent.joinall(calls)
        for call in calls:
            assert isinstance(call.exception, NotSent)
        assert mux.connections() == 0
    finally:
        mux.close()


def _pause(server: RedisServer, seconds: float) -> threading.Thread:
    """Stop Redis (SIGSTOP) for ``seconds``, from a thread."""
    assert server.proc is not None
    pid = server.proc.pid

    def run() -> None:
        os.kill(pid, signal_module.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal_module.SIGCONT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
def test_a_stalled_redis_applies_nothing_twice(own_redis: RedisServer, prefix: str) -> None:
    """Redis stopped for 2 s under a hundred concurrent publishes on one connection:
    each is reported applied (and is in the history once), failed (and is not), or
    unknown (and is there at most once)."""
    broker = RedisBroker(
        own_redis.url, hub=LocalHub(), prefix=prefix, socket_timeout=0.5, history_size=10_000
    )
    broker.start()
    try:
        broker.publish(["s"], "warm-up")
        outcomes: dict[str, str] = {}

        def publish(n: int) -> None:
            gevent.sleep(n * 0.01)
            try:
                broker.publish(["s"], f"p{n}")
                outcomes[f"p{n}"] = "applied"
            except OutcomeUnknown:
                outcomes[f"p{n}"] = "unknown"
            except BrokerUnavailable:
                outcomes[f"p{n}"] = "failed"

        pause = _pause(own_redis, 2.0)
        gevent.joinall([gevent.spawn(publish, n) for n in range(100)], raise_error=True)
        pause.join()
        history = Counter(data_of(frame) for frame in broker.channel_history("s").frames)
        for name, outcome in outcomes.items():
            if outcome == "applied":
                assert history[name] == 1, name
            elif outcome == "failed":
                assert history[name] == 0, name
            else:
                assert history[name] <= 1, name
        assert max(history.values()) == 1
        assert "applied" in outcomes.values()  # some before or after the stall
        assert set(outcomes.values()) != {"applied"}  # and some caught in it
    finally:
        broker.close()


def test_one_worker_keeps_to_four_connections(own_redis: RedisServer, prefix: str) -> None:
    """Hundreds of greenlets subscribe, then join, signal and publish at once through
    one broker:
    Redis sees at most four connections from it, and every operation does what it
    should."""
    broker = RedisBroker(own_redis.url, hub=LocalHub(), prefix=prefix, history_size=1000)
    broker.start()
    watcher = redis.Redis.from_url(own_redis.url)
    seen: list[int] = []
    sampling = True

    def sample() -> None:
        while sampling:
            seen.append(others(watcher, besides=-1))
            gevent.sleep(0.005)

    sampler = gevent.spawn(sample)
    try:
        initiators: list[tuple[Membership, Stream]] = []

        def create() -> None:
            s = stream()
            initiators.append((broker.create_swarm(s), s))

        gevent.joinall([gevent.spawn(create) for _ in range(10)], raise_error=True)
        for member, s in initiators:
            assert event_of(s) == ("connect", member.connect_data())
        listeners = [stream() for _ in range(40)]
        published: list[str] = []
        delivered: list[Delivery] = []

        def join_and_signal(n: int) -> None:
            initiator, _ = initiators[n % 10]
            peer = broker.join_swarm(initiator.id, stream())
            assert peer is not None
            delivered.append(
                broker.signal(initiator.id, {"from": n}, cid=initiator.cid, token=peer.token)
            )

        def listen(n: int) -> None:
            broker.subscribe(listeners[n], ["load"])

        def publish(n: int) -> None:
            published.append(broker.publish(["load"], n))

        gevent.joinall([gevent.spawn(listen, n) for n in range(40)], raise_error=True)
        work = [gevent.spawn(join_and_signal, n) for n in range(100)]
        work += [gevent.spawn(publish, n) for n in range(100)]
        gevent.joinall(work, raise_error=True)

        assert delivered == [Delivery.OK] * 100
        assert len(set(published)) == 100
        for member, s in initiators:
            events = Counter(event_of(s)[0] for _ in range(20))
            assert events == {"join": 10, "signal": 10}, member.id
        for s in listeners:
            got = sorted(int(data_of(frame_of(s))) for _ in range(100))
            assert got == list(range(100))
        assert broker.mux.connects() == 1
    finally:
        sampling = False
        sampler.join()
        broker.close()
    assert len(seen) >= 3
    assert 2 <= max(seen) <= 4


def test_a_signal_post_is_one_round_trip(own_redis: RedisServer, prefix: str) -> None:
    """A valid POST to a swarm sends Redis one command (the signal script); only a
    refused body asks whether the swarm exists, so that 404 still comes first."""
    app = Flask("one-round-trip")
    Signal(app, broker_url=own_redis.url, redis_prefix=prefix, ping_interval=0)
    broker = app.extensions["signal_state"].broker
    client = app.test_client()
    watcher = redis.Redis.from_url(own_redis.url)
    initiator = broker.create_swarm(stream())
    url = f"/signal/{initiator.id}"

    def sent(body: dict[str, Any], swarm: str = url) -> tuple[int, dict[str, int]]:
        watcher.config_resetstat()
        status = client.post(swarm, json=body).status_code
        stats = watcher.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
        return status, {k: v for k, v in calls.items() if k not in ("info", "config|resetstat")}

    try:
        sent({"token": initiator.token, "data": 0})  # warm-up: the script is loaded
        status, calls = sent({"token": initiator.token, "data": 1})
        assert status == 200 and "exists" not in calls and calls["evalsha"] == 1
        status, calls = sent({"token": "0" * 32, "data": 1})
        assert status == 401 and "exists" not in calls
        status, calls = sent({"token": initiator.token, "data": 1}, f"/signal/{'f' * 32}")
        assert status == 404 and "exists" not in calls
        status, calls = sent({"data": 1}, f"/signal/{'f' * 32}")
        assert status == 404 and calls["exists"] == 1
        status, calls = sent({"data": 1})
        assert status == 401 and calls["exists"] == 1
    finally:
        broker.leave_swarm(initiator)
        broker.close()


def test_a_caller_on_an_idle_connection_writes_its_own_command(mux: Mux) -> None:
    """One caller at a time: each finds the connection idle and writes its command
    itself; the replies are its own, over the one connection."""
    assert mux.call("PING") == b"PONG"  # connects (through the writer)
    before = mux.direct_writes()
    assert [mux.call("ECHO", f"d{i}") for i in range(50)] == [f"d{i}".encode() for i in range(50)]
    assert mux.direct_writes() == before + 50
    assert mux.connects() == 1


def test_callers_racing_the_direct_path_keep_their_order(mux: Mux) -> None:
    """Callers arriving together on an idle connection, and while a long write is
    under way: one writes directly, the others queue behind it, and every command
    runs in the order it was called (the STRLEN after a 20 MB SET sees it whole)."""
    mux.call("PING")
    big = b"x" * (20 * 1024 * 1024)  # more than a socket buffer: its write yields
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        if i % 10 == 0:
            mux.call("SET", f"big:{i}", big)
            results[i] = mux.call("STRLEN", f"big:{i}")
        else:
            results[i] = [mux.call("ECHO", f"{i}:{n}") for n in range(5)]

    before = mux.direct_writes()
    gevent.joinall([gevent.spawn(work, i) for i in range(100)], raise_error=True)
    for i in range(100):
        if i % 10 == 0:
            assert results[i] == len(big)
        else:
            assert results[i] == [f"{i}:{n}".encode() for n in range(5)]
    # Some went directly (the first), most were queued behind writes under way.
    assert 1 <= mux.direct_writes() - before < 100 * 5
    assert mux.connects() == 1


def test_a_direct_caller_that_gives_up_shifts_no_reply(mux: Mux) -> None:
    """A caller that wrote its own command and timed out: "may have run", not
    NotSent; the callers behind it get their own replies."""
    mux.call("PING")
    before = mux.direct_writes()
    slow = gevent.spawn(mux.call, "BLPOP", "never", "1", timeout=0.2)
    gevent.sleep(0.05)
    assert mux.direct_writes() == before + 1
    after = [gevent.spawn(mux.call, "ECHO", f"e{i}") for i in range(10)]
    with pytest.raises(rexc.TimeoutError) as gave_up:
        slow.get()
    assert not isinstance(gave_up.value, NotSent)
    assert [g.get() for g in after] == [f"e{i}".encode() for i in range(10)]
    assert mux.call("ECHO", "last") == b"last"
    assert mux.connects() == 1


def test_a_connection_killed_under_a_direct_caller(own_redis: RedisServer, mux: Mux) -> None:
    """Killed by Redis while a direct caller waits: "may have run"; a write that
    fails under a direct caller (a broken pipe, made to happen) fails it the same way.
    Either way the next call connects again."""
    client = redis.Redis.from_url(own_redis.url)
    first = mux.call("CLIENT", "ID")
    before = mux.direct_writes()
    waiting = gevent.spawn(mux.call, "BLPOP", "never", "5")
    gevent.sleep(0.2)
    assert mux.direct_writes() == before + 1
    assert client.client_kill_filter(_id=first) == 1
    with pytest.raises(rexc.ConnectionError) as lost:
        waiting.get(timeout=5)
    assert not isinstance(lost.value, NotSent)
    assert mux.call("CLIENT", "ID") != first and mux.connects() == 2

    lane = mux._lanes[0]
    assert lane.link is not None
    conn = lane.link.conn

    def broken(*args: Any, **kwargs: Any) -> None:
        conn._sock.send(b"*2\r\n$4\r\nECHO\r\n")  # half a command went out
        raise rexc.ConnectionError("Error 32 while writing to socket. Broken pipe.")

    conn.send_packed_command = broken
    with pytest.raises(rexc.ConnectionError) as failed:
        mux.call("ECHO", "lost")
    assert not isinstance(failed.value, NotSent)
    assert mux.call("ECHO", "again") == b"again" and mux.connects() == 3
    assert others(client, besides=-1) == 1


def test_a_leading_caller_hands_later_replies_to_the_reader(mux: Mux) -> None:
    """The caller that wrote on an idle connection reads its own reply; commands
    written after it are answered through the reader, whether the leader gets its
    reply, or is killed while it waits (its reply is then dropped). Once callers
    pile up behind a leader, commands go through the writer until one is alone."""
    mux.call("PING")
    lead = gevent.spawn(mux.call, "BLPOP", "never", "0.5")
    gevent.sleep(0.05)
    behind = [gevent.spawn(mux.call, "ECHO", f"b{i}") for i in range(10)]
    assert lead.get(timeout=5) is None
    assert [g.get(timeout=5) for g in behind] == [f"b{i}".encode() for i in range(10)]
    # Callers piled up behind it: the next command goes through the writer, which
    # finds it alone, and direct writes resume after it.
    before = mux.direct_writes()
    assert mux.call("PING") == b"PONG"
    assert mux.direct_writes() == before

    before = mux.direct_writes()
    killed = gevent.spawn(mux.call, "BLPOP", "never", "0.5")
    gevent.sleep(0.05)
    assert mux.direct_writes() == before + 1
    behind = [gevent.spawn(mux.call, "ECHO", f"k{i}") for i in range(10)]
    gevent.sleep(0.05)
    killed.kill()
    assert [g.get(timeout=5) for g in behind] == [f"k{i}".encode() for i in range(10)]
    assert mux.call("ECHO", "last") == b"last"
    assert mux.connects() == 1


def test_a_leading_caller_gives_up_a_stalled_connection(own_redis: RedisServer) -> None:
    """Redis stopped under a leading caller that would wait longer than the
    connection's timeout: the connection is given up after its timeout, the call
    fails as "may have run", and the next call connects again."""
    mux = make_mux(own_redis.url, timeout=0.3)
    try:
        mux.call("PING")
        before = mux.direct_writes()
        pause = _pause(own_redis, 1.0)
        # Had it waited for the caller's 5 s, Redis would have answered after 1 s.
        with pytest.raises(rexc.TimeoutError) as stalled:
            mux.call("ECHO", "stalled", timeout=5.0)
        assert not isinstance(stalled.value, NotSent)
        assert mux.direct_writes() == before + 1
        pause.join()
        assert mux.call("ECHO", "again") == b"again"
        assert mux.connects() == 2
    finally:
        mux.close()
