"""Faults against real servers: clients that stop reading, streams that outlive
their bound, swarms and workers at capacity, senders that lie about who they are.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import SIGNAL_WORKER
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
