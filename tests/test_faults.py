"""Faults against real servers: clients that stop reading, streams that outlive
their bound, swarms and workers at capacity, senders that lie about who they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.servers import SIGNAL_WORKER, EventSources, RedisServer
from tests.support import SSE, Pair, Peer, Server, free_port, start_pair, start_server

pytestmark = pytest.mark.single_process


def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_peer_that_stops_reading_is_cut_at_the_write_deadline(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, {"write_timeout": 1, "queue_bytes": "64mb", "queue_size": 100000, "limit": "1mb"}
    )
    try:
        initiator = Peer.open(srv.url)
        stuck = Peer.open(f"{srv.url}/{initiator.id}", rcvbuf=4096)
        assert initiator.sse.next().event == "join"
        big = "x" * 900_000
        start = time.monotonic()
        # More than both ends' socket buffers hold: a server write blocks.
        for _ in range(40):
            status = initiator.post(srv.url, big, cid=stuck.cid).status_code
            if status == 404:  # cut already: no such peer any more
                break
            assert status == 200
        leave = initiator.sse.next(timeout=10)
        assert (leave.event, leave.json()["cid"]) == ("leave", stuck.cid)
        assert time.monotonic() - start < 10
        assert srv.stats()["overflows"] == 0  # the deadline, not the queue bound
    finally:
        srv.stop()


def test_a_stream_past_its_lifetime_ends_with_a_jittered_retry(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"max_stream_age": 1, "drain_spread": 2})
    try:
        streams = [SSE.open(f"{srv.url}/channels/aging") for _ in range(4)]
        start = time.monotonic()
        for sse in streams:
            assert sse.wait_end(4)
        assert time.monotonic() - start < 3
        retries = [int(re.findall(rb"retry: (\d+)", bytes(sse.raw))[-1]) for sse in streams]
        assert all(250 <= value <= 2250 for value in retries) and len(set(retries)) > 1
    finally:
        srv.stop()


def serve(
    tmp_path: Path, request: pytest.FixtureRequest, broker: str, settings: dict[str, Any]
) -> Server:
    """One server, with the memory broker or a Redis one (the fixture's redis-server)."""
    if broker == "redis":
        url = request.getfixturevalue("redis_url")
        settings = {**settings, "broker_url": url, "redis_prefix": f"f{free_port()}:"}
    return start_server(tmp_path, settings)


def test_the_default_bound_of_unsent_bytes_is_well_under_a_megabyte() -> None:
    from flask_signal.settings import Settings

    assert Settings().queue_bytes == 256 * 1024


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_stream_is_bounded_in_unsent_bytes_not_frames(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    settings = {"queue_bytes": "64kb", "limit": "64kb", "direct_writes": False}
    srv = serve(tmp_path, request, broker, settings)
    try:
        slow = SSE.open(f"{srv.url}/channels/bulk", rcvbuf=4096)
        wait_for(lambda: srv.count("bulk") == 1)
        payload = "y" * 20_000
        for _ in range(200):  # 4 MB, far past 64 KB plus the socket buffers
            body = {"channel": "bulk", "data": payload}
            requests.post(srv.origin + "/_test/publish", json=body, timeout=5)
            if srv.stats()["overflows"]:
                break
        assert srv.stats()["overflows"] == 1
        wait_for(lambda: srv.count("bulk") == 0)
        slow.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("broker", ["memory", "redis-pair"])
def test_a_full_swarm_answers_429_with_retry_after(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    """With Redis the requests alternate between two processes sharing it: the cap
    holds across them, with the same answer."""
    settings = {"max_swarm_peers": 2}
    srv: Server | Pair
    if broker == "memory":
        srv = start_server(tmp_path, settings)
    else:
        srv = start_pair(tmp_path, request.getfixturevalue("redis_url"), settings)
    try:
        initiator = Peer.open(srv.url)
        peer = Peer.open(f"{srv.url}/{initiator.id}")
        with SSE.open(f"{srv.url}/{initiator.id}") as third:
            assert third.status == 429
            assert third.headers["retry-after"] == "5"
            assert third.headers["content-type"] == "application/json"
        refused = requests.get(f"{srv.url}/{initiator.id}", stream=True, timeout=5)
        assert refused.status_code == 429 and refused.json() == {"error": "this swarm is full"}
        peer.close()
        assert initiator.sse.next().event == "join"
        assert initiator.sse.next().event == "leave"
        again = Peer.open(f"{srv.url}/{initiator.id}")  # room again
        again.close()
        initiator.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("broker", ["memory", "redis-pair"])
def test_a_swarm_peer_is_bounded_in_unsent_bytes(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    """A peer that stops reading is cut once 64 KB wait for it, and leaves (with Redis,
    its signals come from the other process)."""
    settings = {"queue_bytes": "64kb", "limit": "64kb", "direct_writes": False}
    srv: Server | Pair
    if broker == "memory":
        srv = start_server(tmp_path, settings)
    else:
        srv = start_pair(tmp_path, request.getfixturevalue("redis_url"), settings)
    try:
        initiator = Peer.open(srv.url)
        stuck = Peer.open(f"{srv.url}/{initiator.id}", rcvbuf=4096)
        assert initiator.sse.next().event == "join"
        payload = "z" * 20_000
        for _ in range(200):  # 4 MB, far past 64 KB plus the socket buffers
            status = initiator.post(srv.url, payload, cid=stuck.cid).status_code
            if status == 404:  # cut already: no such peer any more
                break
            assert status == 200
        leave = initiator.sse.next(timeout=10)
        assert (leave.event, leave.json()["cid"]) == ("leave", stuck.cid)
        assert srv.stats()["overflows"] == 1
        stuck.close()
        initiator.close()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("broker", "worker_class"),
    [("memory", "gevent"), ("redis", "gevent"), ("memory", SIGNAL_WORKER)],
    ids=["memory", "redis", "signal-worker"],
)
def test_streams_stay_below_worker_connections_so_posts_get_through(
    tmp_path: Path, broker: str, worker_class: str, request: pytest.FixtureRequest
) -> None:
    # 20 connections: 18 may be streams, 2 stay free for POSTs.
    settings: dict[str, Any] = {}
    if broker == "redis":
        settings = {"broker_url": request.getfixturevalue("redis_url")}
        settings["redis_prefix"] = f"w{free_port()}:"
    srv = start_server(
        tmp_path, settings, worker_class=worker_class, extra_args=["--worker-connections", "20"]
    )
    try:
        initiator = Peer.open(srv.url)
        peers = [Peer.open(f"{srv.url}/{initiator.id}") for _ in range(17)]
        with SSE.open(srv.url) as refused:
            assert refused.status == 503
            assert refused.headers["retry-after"] == "5"
            assert refused.headers["content-type"] == "application/json"
        # A POST still gets a slot, and is delivered.
        assert initiator.post(srv.url, "still here").status_code == 200
        assert peers[-1].sse.next().json() == "still here"
        for peer in peers:
            peer.close()
        initiator.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_max_swarms_per_process(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    srv = serve(tmp_path, request, broker, {"max_swarms": 1})
    try:
        first = Peer.open(srv.url)
        with SSE.open(srv.url) as second:
            assert second.status == 503 and second.headers["retry-after"] == "5"
            assert second.headers["content-type"] == "application/json"
        first.close()
    finally:
        srv.stop()


def test_the_sender_field_is_stamped_by_the_server(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"sender_field": "from"})
    try:
        initiator = Peer.open(srv.url)
        peer = Peer.open(f"{srv.url}/{initiator.id}")
        assert initiator.sse.next().event == "join"
        # A peer claiming to be the initiator is corrected.
        assert peer.post(srv.url, {"msg": "hi", "from": initiator.cid}).status_code == 200
        assert initiator.sse.next().json() == {"msg": "hi", "from": peer.cid}
        assert peer.sse.next().json() == {"msg": "hi", "from": peer.cid}
        # Non-object signals are relayed as they are.
        assert peer.post(srv.url, "plain").status_code == 200
        assert initiator.sse.next().json() == "plain"
        initiator.close()
        peer.close()
    finally:
        srv.stop()


# -- operations: health, readiness, metrics ------------------------------------------------


def test_healthz_and_readyz_follow_redis(tmp_path: Path, own_redis) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path, {"broker_url": own_redis.url})
    try:
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200
        assert requests.get(srv.url + "/readyz", timeout=5).status_code == 200
        own_redis.kill()
        ready = requests.get(srv.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
        assert ready.json() == {"error": "signalling backend unavailable"}
        assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200  # alive
        own_redis.start()
        wait_for(lambda: requests.get(srv.url + "/readyz", timeout=10).status_code == 200, 20)
    finally:
        srv.stop()


def test_readyz_is_503_while_draining() -> None:
    from flask import Flask

    from flask_signal import Signal

    app = Flask(__name__)
    signal = Signal(app)
    client = app.test_client()
    assert client.get("/signal/readyz").status_code == 200
    with app.app_context():
        signal.drain()
    answer = client.get("/signal/readyz")
    assert answer.status_code == 503 and answer.json == {"error": "draining"}
    assert client.get("/signal/healthz").status_code == 200


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus exposition (summed over pid labels)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name or (labels and labels not in head):
            continue
        total += float(value)
        found = True
    return total if found else -1.0


def test_metrics_under_gunicorn_multiprocess_mode(tmp_path: Path, redis_url: str) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    srv = start_server(
        tmp_path,
        {"metrics": True, "broker_url": redis_url, "redis_prefix": f"m{free_port()}:"},
        workers=2,
        extra_env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    )
    try:
        initiator = Peer.open(srv.url)
        peers = [Peer.open(f"{srv.url}/{initiator.id}") for _ in range(5)]
        for n in range(3):
            assert initiator.post(srv.url, n).status_code == 200
        peers.pop().close()

        def scrape() -> str:
            answer = requests.get(srv.url + "/metrics", timeout=5)
            assert answer.status_code == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            return answer.text

        # Each worker copies its counts every 5 s: both are summed in time.
        def settled() -> bool:
            text = scrape()
            return (
                metric(text, "flask_signal_streams", 'kind="swarm"') == 5
                and metric(text, "flask_signal_signals_in_total") == 3
                and metric(text, "flask_signal_signals_out_total") == 18
                and metric(text, "flask_signal_stream_ends_total", 'reason="disconnected"') == 1
                and metric(text, "flask_signal_swarms") == 1
                and metric(text, "flask_signal_draining") == 0
            )

        wait_for(settled, 15)
        assert len(set(p.name.rsplit("_", 1)[-1] for p in multiproc.iterdir())) >= 1
        initiator.close()
        for peer in peers:
            peer.close()
    finally:
        srv.stop()


def test_no_metrics_route_unless_asked() -> None:
    from flask import Flask

    from flask_signal import Signal

    app = Flask(__name__)
    Signal(app)
    assert app.test_client().get("/signal/metrics").status_code == 404


# -- kill -9: the reaping bound --------------------------------------------------------------


def test_a_dead_process_is_reaped_within_the_documented_bound(redis_url: str) -> None:
    import redis

    from flask_signal.brokers.redis import RedisBroker
    from flask_signal.hub import LocalHub
    from tests.broker_support import event_of, swarm, wait_until

    prefix = f"reap{free_port()}:"
    fast = {"heartbeat_interval": 0.5, "peer_ttl": 1.5}
    bound = fast["peer_ttl"] + fast["heartbeat_interval"]
    a = RedisBroker(redis_url, hub=LocalHub(), prefix=prefix, **fast)
    b = RedisBroker(redis_url, hub=LocalHub(), prefix=prefix, **fast)
    client = redis.Redis.from_url(redis_url)
    try:
        a.start()
        b.start()
        m1, s1, m2, _ = swarm(a, b)  # the initiator on a, a peer on b
        b.halt()  # as kill -9: no leave, the heartbeat just stops
        start = time.monotonic()
        assert event_of(s1, timeout=bound + 5) == ("leave", {"id": m1.id, "cid": m2.cid})
        took = time.monotonic() - start
        # The bound, plus scheduling slack on a busy machine.
        assert took <= bound + 0.5, took
        # The reaper's lock is released once a reap is done (this one, or the
        # heartbeat's running beside it), well before it would expire (0.5 s).
        a.reap()
        wait_until(lambda: client.get(f"{prefix}reaper") is None, timeout=0.3)
        a.leave_swarm(m1)
    finally:
        client.close()
        a.close()
        b.close()


def test_the_sender_field_with_redis_across_processes(tmp_path: Path, redis_url: str) -> None:
    shared = {"sender_field": "from", "broker_url": redis_url, "redis_prefix": f"s{free_port()}:"}
    a = start_server(tmp_path, shared)
    b = start_server(tmp_path, shared)
    try:
        initiator = Peer.open(a.url)
        peer = Peer.open(f"{b.url}/{initiator.id}")
        assert initiator.sse.next().event == "join"
        assert peer.post(b.url, {"msg": "hi", "from": "someone else"}).status_code == 200
        assert initiator.sse.next().json() == {"msg": "hi", "from": peer.cid}
        assert peer.sse.next().json() == {"msg": "hi", "from": peer.cid}  # the sender too
        assert initiator.post(a.url, {"to": "peer"}, cid=peer.cid).status_code == 200
        assert peer.sse.next().json() == {"to": "peer", "from": initiator.cid}
        bad = requests.post(f"{b.url}/{initiator.id}", json={"token": "0" * 32, "data": {}})
        assert bad.status_code == 401
        initiator.close()
        peer.close()
    finally:
        a.stop()
        b.stop()


def test_lifecycle_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import gevent
    from flask import Flask

    from flask_signal import Signal

    app = Flask(__name__)
    signal = Signal(app)
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="flask_signal")

    def open_and_close() -> None:
        response = client.get("/signal", headers={"Accept": "text/event-stream"}, buffered=False)
        assert b"event: connect" in next(iter(response.response))
        response.close()

    gevent.spawn(open_and_close).get(timeout=10)
    with app.app_context():
        signal.drain()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "flask_signal"]
    assert any(m.startswith("stream opened: kind=swarm swarm=") for _, m in lines), lines
    assert any(
        m.startswith("stream ended: kind=swarm") and m.endswith("reason=closed") for _, m in lines
    ), lines
    assert ("INFO", "draining: 0 streams end with a retry hint") in lines


# -- Redis paused, flushed, restarted under real EventSources --------------------------------

#: Swarm events an EventSource listens to (channel events come as ``message``).
SWARM_EVENTS = ["connect", "join", "leave", "signal"]
#: Statuses that leave the outcome unknown (every other one but 200 says "not applied").
UNKNOWN = {504, 0}  # 0: no answer at all (the request itself failed)
#: The publish key of the servers under test.
KEY = "faults-key"


class Traffic(threading.Thread):
    """Channel publishes, swarm signals to all and signals to one peer (``to``), POSTed
    at a steady rate, one of each every ``interval`` seconds to each process in turn,
    whatever the answers: each POST in a thread of its own, as independent browsers
    send them, so that a stall piles them up. Every answer is kept: ``(kind, n)`` ->
    ``(status, sent, answered)``, the times on :func:`time.monotonic`'s clock and
    status 0 for no answer at all."""

    def __init__(
        self, servers: list[Server], swarm: str, token: str, to: str, interval: float = 0.05
    ) -> None:
        super().__init__(daemon=True)
        self.servers, self.swarm, self.token, self.interval = servers, swarm, token, interval
        #: The cid that direct signals are addressed to.
        self.to = to
        self.sent: dict[tuple[str, int], float] = {}
        self.answers: dict[tuple[str, int], tuple[int, float, float]] = {}
        self.posts: list[threading.Thread] = []
        self.done = threading.Event()

    def run(self) -> None:
        n, due = 0, time.monotonic()
        while not self.done.is_set():
            n += 1
            srv = self.servers[n % len(self.servers)]
            requests_ = [
                ("event", f"{srv.url}/channels/faults", {"data": f"e{n}"}, KEY),
                ("signal", f"{srv.url}/{self.swarm}", {"token": self.token, "data": n}, None),
                ("direct", f"{srv.url}/{self.swarm}", self.direct(n), None),
            ]
            for kind, url, body, key in requests_:
                self.sent[(kind, n)] = time.monotonic()
                post = threading.Thread(target=self.post, args=(kind, n, url, body, key))
                post.start()
                self.posts.append(post)
            due += self.interval
            self.done.wait(max(0.0, due - time.monotonic()))

    def direct(self, n: int) -> dict[str, Any]:
        return {"token": self.token, "data": f"d{n}", "cid": self.to}

    def post(self, kind: str, n: int, url: str, body: dict[str, Any], key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            status = requests.post(url, json=body, headers=headers, timeout=60).status_code
        except requests.RequestException:
            status = 0
        self.answers[(kind, n)] = (status, self.sent[(kind, n)], time.monotonic())

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        for post in self.posts:
            post.join(120)

    def settled(self, moment: float, timeout: float = 120) -> None:
        """Wait until every request sent before ``moment`` has its answer."""

        def answered() -> bool:
            return all(k in self.answers for k, at in list(self.sent.items()) if at < moment)

        wait_for(answered, timeout)

    def applied(self, kind: str, before: float | None = None) -> set[int]:
        """The numbers of ``kind`` answered 200 (of those sent before ``before``)."""
        return {
            n
            for (k, n), (status, sent, _) in list(self.answers.items())
            if k == kind and status == 200 and (before is None or sent < before)
        }

    def wait_applied(self, more: int, kind: str = "signal", timeout: float = 30) -> None:
        """Wait until ``more`` further ``kind`` were answered 200."""
        target = len(self.applied(kind)) + more
        wait_for(lambda: len(self.applied(kind)) >= target, timeout)

    def between(self, start: float, end: float) -> list[tuple[int, float, float]]:
        """The answers to requests sent from ``start`` to ``end``."""
        return [a for a in list(self.answers.values()) if start <= a[1] < end]


#: Who receives what: (EventSource, kind of POST), for every delivery a client is owed.
Watch = list[tuple[str, str]]


def received(sources: EventSources, name: str, kind: str) -> list[int]:
    """The numbers of ``kind`` an EventSource got, in order: channel events ``e<n>``,
    signals to all ``<n>``, signals to one ``"d<n>"``."""
    if kind == "event":
        return [int(r["data"][1:]) for r in sources.events(name) if r["data"].startswith("e")]
    data = [json.loads(r["data"]) for r in sources.events(name, "signal")]
    if kind == "direct":
        return [int(d[1:]) for d in data if isinstance(d, str) and d.startswith("d")]
    return [d for d in data if isinstance(d, int)]


def check_delivery(traffic: Traffic, sources: EventSources, watch: Watch) -> None:
    """Every POST answered 200 arrived exactly once at every client it is for, in order
    (one answered before another was sent arrived before it); none refused arrived;
    one whose outcome is unknown (504, or no answer) arrived at most once."""
    for name, kind in watch:
        seen = received(sources, name, kind)
        counts = Counter(seen)
        assert all(c == 1 for c in counts.values()), (name, kind, counts.most_common(3))
        for (k, n), (status, _, _) in traffic.answers.items():
            if k != kind:
                continue
            if status == 200:
                assert counts[n] == 1, (name, kind, n)
            elif status not in UNKNOWN:
                assert counts[n] == 0, (name, kind, n, status)
        # In order: nothing received after an event was answered before it was sent.
        first_answer_after = float("inf")
        for n in reversed(seen):
            _, sent, answered = traffic.answers[(kind, n)]
            assert first_answer_after > sent, (name, kind, n)
            first_answer_after = min(first_answer_after, answered)


def open_clients(pair: Pair, sources: EventSources) -> tuple[Watch, str, str, str]:
    """Two channel subscribers and a swarm of three (an initiator on the first process,
    a peer on each), each a WHATWG EventSource. Returns what each is owed, the swarm's
    id, the initiator's token and the cid of ``peer-b``, to which signals go directly."""
    a, b = pair.servers
    sources.open("channel-a", f"{a.url}/channels/faults", ["missed"])
    sources.open("channel-b", f"{b.url}/channels/faults", ["missed"])
    sources.open("initiator", a.url, SWARM_EVENTS)
    me = json.loads(sources.wait_for("initiator", type="event", event="connect")["data"])
    sources.open("peer-a", f"{a.url}/{me['id']}", SWARM_EVENTS)
    sources.open("peer-b", f"{b.url}/{me['id']}", SWARM_EVENTS)
    to = json.loads(sources.wait_for("peer-b", type="event", event="connect")["data"])["cid"]
    for name in ("peer-a", "channel-a", "channel-b"):
        sources.wait_for(name, type="open")
    wait_for(lambda: len(sources.events("initiator", "join")) == 2, 20)
    wait_for(lambda: pair.count("faults") == 2, 20)
    watch = [("channel-a", "event"), ("channel-b", "event"), ("peer-b", "direct")]
    watch += [(name, "signal") for name in ("initiator", "peer-a", "peer-b")]
    return watch, me["id"], me["token"], to


def missing(
    traffic: Traffic, sources: EventSources, watch: Watch, before: float | None
) -> dict[str, list[int]]:
    """What each client still lacks of what was answered 200 (of what was sent before
    ``before``)."""
    lacking = {}
    for name, kind in watch:
        if gap := sorted(traffic.applied(kind, before) - set(received(sources, name, kind))):
            lacking[f"{name} {kind}"] = gap
    return lacking


def wait_delivered(
    traffic: Traffic,
    sources: EventSources,
    watch: Watch,
    before: float | None,
    timeout: float,
) -> None:
    """Wait until every client got everything answered 200 (of what was sent before
    ``before``)."""
    deadline = time.monotonic() + timeout
    while lacking := missing(traffic, sources, watch, before):
        if time.monotonic() > deadline:
            story = {name: sources.story(name) for name in {n for n, _ in watch}}
            raise AssertionError(f"still missing {lacking}; what happened: {story}")
        time.sleep(0.1)


def summary(answers: list[tuple[int, float, float]]) -> str:
    statuses = Counter(status for status, _, _ in answers)
    slowest = max((answered - sent for _, sent, answered in answers), default=0.0)
    return f"{len(answers)} POSTs: {dict(sorted(statuses.items()))}, the slowest {slowest:.2f} s"


@pytest.fixture
def redis_pair(tmp_path: Path, own_redis: RedisServer) -> Iterator[Pair]:
    """Two servers sharing the test's own Redis; swarm peers may resume for 30 s."""
    settings = {"resume_grace": 30, "retry_after": 1, "history_size": 20_000, "publish_key": KEY}
    pair = start_pair(tmp_path, own_redis.url, settings)
    yield pair
    pair.stop()


@pytest.mark.timeout(600)
def test_eventsources_get_everything_once_through_redis_pauses(
    redis_pair: Pair, own_redis: RedisServer, node_modules: Path
) -> None:
    """Redis paused (SIGSTOP) for 1, 3, 5, 7 and 10 s under a steady stream of
    publishes and signals, a new peer joining during each: every one answered 200
    reaches every EventSource once, in order; none refused (503) arrives, one unknown
    (504) at most once; no EventSource gives up, the swarm keeps its peers, and each
    newcomer joins once."""
    sources = EventSources(node_modules)
    traffic: Traffic | None = None
    try:
        watch, swarm, token, to = open_clients(redis_pair, sources)
        clients = {name for name, _ in watch}
        traffic = Traffic(redis_pair.servers, swarm, token, to)
        traffic.start()
        figures = []
        for seconds in (1, 3, 5, 7, 10):
            traffic.wait_applied(10)  # traffic flows before each pause
            paused = time.monotonic()
            own_redis.pause()
            # A browser joins the swarm in the middle of the pause.
            late = f"join-{seconds}"
            server = redis_pair.servers[seconds % 2]
            sources.open(late, f"{server.url}/{swarm}", SWARM_EVENTS)
            time.sleep(seconds)  # the fault itself
            own_redis.resume()
            resumed = time.monotonic()
            # Everything sent until the end of the pause reaches every client.
            traffic.settled(resumed)
            wait_delivered(traffic, sources, watch, resumed, 90)
            took = time.monotonic() - resumed
            figures.append((seconds, took, summary(traffic.between(paused, resumed))))
            sources.wait_for(late, 60, type="event", event="connect")
        traffic.stop()
        wait_delivered(traffic, sources, watch, None, 60)
        check_delivery(traffic, sources, watch)
        for name in clients:
            assert not sources.of(name, type="error", readyState=2), name  # never gave up
        assert len(sources.events("initiator", "connect")) == 1  # no new swarm
        # Each peer that joined during a pause joined once, as the initiator heard it; a
        # join attempt whose outcome was unknown was undone (its leave came too).
        late = [f"join-{seconds}" for seconds, _, _ in figures]
        assert all(len(sources.events(name, "connect")) == 1 for name in late)
        cids = [json.loads(sources.events(name, "connect")[0]["data"])["cid"] for name in late]
        joins = Counter(json.loads(r["data"])["cid"] for r in sources.events("initiator", "join"))
        leaves = Counter(json.loads(r["data"])["cid"] for r in sources.events("initiator", "leave"))
        assert all(joins[cid] == 1 and not leaves[cid] for cid in cids), (cids, joins, leaves)
        assert all(joins[cid] == 1 for cid in leaves) and leaves.total() == len(joins) - 7
        for name in late:
            assert not sources.of(name, type="error", readyState=2), sources.story(name)
        reconnects = {name: len(sources.of(name, type="error")) for name in clients | set(late)}
        for seconds, took, answers in figures:
            print(f"\npause {seconds:2d} s: everything arrived {took:.2f} s after; {answers}")
        print(f"EventSource reconnections: {reconnects}")
    finally:
        if traffic is not None:
            traffic.stop()
        sources.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["flushall", "restart"])
def test_eventsources_when_redis_loses_everything(
    redis_pair: Pair, own_redis: RedisServer, node_modules: Path, fault: str
) -> None:
    """Redis flushed, or killed and started again 3 s later (no persistence), under a
    steady stream of publishes and signals. Channel subscribers are told history was
    lost (``missed``) and go on receiving by themselves. The swarm, which Redis forgot,
    ends: its streams end, their resume is refused with 204 (so each EventSource
    stops), its signals are refused (404), and a new swarm can be made at once."""
    import redis

    sources = EventSources(node_modules)
    traffic: Traffic | None = None
    try:
        watch, swarm, token, to = open_clients(redis_pair, sources)
        channels = [(name, kind) for name, kind in watch if kind == "event"]
        swarm_clients = {name for name, kind in watch if kind != "event"}
        traffic = Traffic(redis_pair.servers, swarm, token, to)
        traffic.start()
        traffic.wait_applied(10)
        faulted = time.monotonic()
        if fault == "flushall":
            redis.Redis.from_url(own_redis.url).flushall()
        else:
            own_redis.kill()
            time.sleep(3)  # the outage itself
            own_redis.start()
        back = time.monotonic()
        for name, _ in channels:
            sources.wait_for(name, 30, type="event", event="missed")
        for name in swarm_clients:
            sources.wait_for(name, 30, type="error", readyState=2)
        traffic.wait_applied(20, "event")  # events published since are delivered too
        now = time.monotonic()
        traffic.settled(now)
        wait_delivered(traffic, sources, channels, now, 60)
        took = time.monotonic() - back
        traffic.stop()
        wait_delivered(traffic, sources, channels, None, 60)
        check_delivery(traffic, sources, watch)
        for name, _ in channels:
            assert not sources.of(name, type="error", readyState=2), name  # never gave up
        # The swarm is gone: signals are refused, each EventSource was told to stop
        # (a resume refused with 204) rather than silently put in a new swarm.
        for kind in ("signal", "direct"):
            last = sorted(n for k, n in traffic.answers if k == kind)[-10:]
            assert {traffic.answers[(kind, n)][0] for n in last} == {404}, kind
        for name in swarm_clients:
            assert len(sources.events(name, "connect")) == 1, name
        # A client that opens a new EventSource gets a new swarm at once.
        sources.open("again", redis_pair.servers[1].url, SWARM_EVENTS)
        sources.wait_for("again", 20, type="event", event="connect")
        told = max(sources.events(n, "missed")[0]["at"] - back for n, _ in channels)
        ended = max(
            sources.of(n, type="error", readyState=2)[0]["at"] - back for n in swarm_clients
        )
        print(
            f"\n{fault}: channels told {told:.2f} s after, had everything {took:.2f} s after; "
            f"swarm EventSources stopped {ended:.2f} s after; during it "
            f"{summary(traffic.between(faulted, back))}"
        )
    finally:
        if traffic is not None:
            traffic.stop()
        sources.stop()


def _pubsub_clients_of(client: Any, pids: list[int]) -> list[dict[str, Any]]:
    """The pub/sub connections Redis has from the processes ``pids`` (by socket inode)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return [
        c for c in client.client_list(_type="pubsub") if int(c["addr"].rsplit(":", 1)[1]) in ports
    ]


def test_signals_joins_and_leaves_of_a_pubsub_gap_arrive_once_in_order(
    tmp_path: Path, own_redis: Any
) -> None:
    """Two servers share a Redis; the pub/sub connection of the one holding the
    initiator and a peer is killed, and Redis refuses it a new one for a while. Signals
    (broadcast and direct), a join and a leave happen meanwhile through the other. Once
    it is back, its streams get each exactly once, in order, and stay open."""
    shared = {"broker_url": own_redis.url, "redis_prefix": f"g{free_port()}:"}
    a = start_server(tmp_path, shared)
    b = start_server(tmp_path, shared)
    client = redis.Redis.from_url(own_redis.url)
    maxclients = client.config_get("maxclients")["maxclients"]
    try:
        initiator = Peer.open(a.url)
        near = Peer.open(f"{a.url}/{initiator.id}")  # on a, like the initiator
        far = Peer.open(f"{b.url}/{initiator.id}")
        assert [e.json()["cid"] for e in initiator.sse.events(2)] == [near.cid, far.cid]
        for _ in range(3):  # every process's command connections are open already
            assert far.post(b.url, "warm").status_code == 200
            assert near.post(a.url, "warm").status_code == 200
        for peer in (initiator, near, far):
            assert [e.data for e in peer.sse.events(6)] == ['"warm"'] * 6

        (listener,) = _pubsub_clients_of(client, [a.proc.pid, *a.worker_pids()])
        client.config_set("maxclients", len(client.client_list()) - 1)
        client.client_kill_filter(_id=listener["id"])
        wait_for(lambda: not _pubsub_clients_of(client, [a.proc.pid, *a.worker_pids()]))
        to_initiator: list[tuple[str, Any]] = []
        to_near: list[tuple[str, Any]] = []
        for i in range(5):
            assert far.post(b.url, f"all{i}").status_code == 200
            to_initiator.append(("signal", f"all{i}"))
            to_near.append(("signal", f"all{i}"))
            assert far.post(b.url, f"near{i}", cid=near.cid).status_code == 200
            to_near.append(("signal", f"near{i}"))
            assert far.post(b.url, f"init{i}", cid=initiator.cid).status_code == 200
            to_initiator.append(("signal", f"init{i}"))
        assert near.post(a.url, "from a").status_code == 200  # published by the gapped one
        to_initiator.append(("signal", "from a"))
        to_near.append(("signal", "from a"))
        late = Peer.open(f"{b.url}/{initiator.id}")
        to_initiator.append(("join", late.cid))
        late.close()
        to_initiator.append(("leave", late.cid))
        assert initiator.sse.quiet(0.3) == []  # nothing came through the gap
        client.config_set("maxclients", maxclients)
        wait_for(lambda: len(_pubsub_clients_of(client, [a.proc.pid, *a.worker_pids()])) == 1)
        assert far.post(b.url, "after").status_code == 200
        to_initiator.append(("signal", "after"))
        to_near.append(("signal", "after"))

        def seen(event: Any) -> tuple[str, Any]:
            data = event.json()
            return (event.event, data["cid"] if event.event in ("join", "leave") else data)

        assert [seen(e) for e in initiator.sse.events(len(to_initiator))] == to_initiator
        assert [seen(e) for e in near.sse.events(len(to_near))] == to_near
        assert initiator.sse.quiet(0.3) == [] and near.sse.quiet(0) == []
        assert not initiator.sse.ended and not near.sse.ended
    finally:
        client.config_set("maxclients", maxclients)
        a.stop()
        b.stop()
