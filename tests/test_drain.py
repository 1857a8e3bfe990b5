"""Graceful drain: SIGTERM, SIGHUP and max_requests end every stream with a
jittered ``retry:`` and the worker exits within 5 s, under stock
``gunicorn -k gevent`` (default settings, no config file), the project's
worker and the ``flask-signal`` command.
"""

from __future__ import annotations

import re
import signal as os_signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
import requests

from tests.servers import Process
from tests.support import SSE, Peer, Server, free_port, start_server

pytestmark = pytest.mark.single_process

WORKERS = ["gevent", "flask_signal.worker.GeventWorker"]
#: gunicorn's own default: the drain must not depend on a short one.
STOCK = ["--graceful-timeout", "30"]


def retry_of(sse: SSE) -> int:
    """The ``retry:`` the stream ended with (it must have one)."""
    found = re.findall(rb"^retry: (\d+)$", bytes(sse.raw), re.M)
    assert found, bytes(sse.raw)
    return int(found[-1])


def open_streams(url: str) -> list[SSE]:
    initiator = Peer.open(url)
    peer = Peer.open(f"{url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    channel = SSE.open(f"{url}/channels/drain")
    return [initiator.sse, peer.sse, channel]


def assert_drained(streams: list[SSE], within: float = 5) -> None:
    deadline = time.monotonic() + within
    for sse in streams:
        assert sse.wait_end(max(0.1, deadline - time.monotonic())), bytes(sse.raw)
    retries = [retry_of(sse) for sse in streams]
    assert all(250 <= value <= 3250 for value in retries), retries
    assert len(set(retries)) > 1, retries  # spread, not one instant for all


@pytest.mark.parametrize("worker", WORKERS)
def test_sigterm_drains_and_exits_within_5s(tmp_path: Path, worker: str) -> None:
    srv = start_server(tmp_path, worker_class=worker, extra_args=STOCK)
    try:
        streams = open_streams(srv.url)
        start = time.monotonic()
        srv.proc.send_signal(os_signal.SIGTERM)
        assert_drained(streams)
        srv.proc.wait(5)
        took = time.monotonic() - start
        assert took < 5
        assert srv.proc.returncode == 0
        print(f"\n{worker}: exited {took:.2f} s after SIGTERM")
    finally:
        srv.stop()


@pytest.mark.parametrize("worker", WORKERS)
def test_sighup_reload_drains_the_old_worker(tmp_path: Path, worker: str) -> None:
    srv = start_server(tmp_path, worker_class=worker, extra_args=STOCK)
    try:
        [old] = srv.worker_pids()
        streams = open_streams(srv.url)
        srv.proc.send_signal(os_signal.SIGHUP)
        assert_drained(streams)
        deadline = time.monotonic() + 5
        while old in srv.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old not in srv.worker_pids()
        # The new worker serves streams.
        with SSE.open(srv.url) as again:
            assert again.status == 200 and again.next().event == "connect"
    finally:
        srv.stop()


@pytest.mark.parametrize("worker", WORKERS)
def test_max_requests_restart_drains(tmp_path: Path, worker: str) -> None:
    srv = start_server(tmp_path, worker_class=worker, extra_args=[*STOCK, "--max-requests", "8"])
    try:
        [old] = srv.worker_pids()
        streams = open_streams(srv.url)  # 3 requests
        for _ in range(6):
            requests.get(srv.origin + "/_test/stats", timeout=5)
        assert_drained(streams)
        deadline = time.monotonic() + 5
        while old in srv.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old not in srv.worker_pids()
    finally:
        srv.stop()


def test_the_command_drains_on_sigterm(command: Callable[..., Process]) -> None:
    cmd = command()
    streams = open_streams(cmd.url)
    start = time.monotonic()
    cmd.proc.send_signal(os_signal.SIGTERM)
    assert_drained(streams)
    cmd.proc.wait(5)
    assert time.monotonic() - start < 5


def test_a_draining_process_turns_streams_away_with_a_retry() -> None:
    from flask import Flask

    from flask_signal import Signal

    app = Flask(__name__)
    signal = Signal(app)
    client = app.test_client()

    def get(path: str) -> tuple[int, bytes]:
        response = client.get(path, headers={"Accept": "text/event-stream"})
        return response.status_code, response.get_data()

    with app.app_context():
        assert signal.drain() == 0
    # In a greenlet, as a gevent server runs each request.
    for path in ("/signal", "/signal/channels/news"):
        status, body = gevent.spawn(get, path).get()
        assert status == 200, body
        assert re.fullmatch(rb":\nretry: \d+\n\n", body)
    # POSTs are still answered.
    status = client.post("/signal/abc", json={"token": "x", "data": 1}).status_code
    assert status == 404


# -- two processes sharing Redis ---------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path, redis_url: str) -> Iterator[tuple[Server, Server]]:
    shared = {"broker_url": redis_url, "redis_prefix": f"drain{free_port()}:"}
    a = start_server(tmp_path, shared, extra_args=STOCK)
    b = start_server(tmp_path, shared, extra_args=STOCK)
    yield a, b
    a.stop()
    b.stop()


def publish(srv: Server, channel: str, data: object) -> str:
    body = {"channel": channel, "data": data}
    answer = requests.post(srv.origin + "/_test/publish", json=body, timeout=5)
    answer.raise_for_status()
    return str(answer.json()["id"])


def test_with_redis_clients_resume_on_the_other_process(pair: tuple[Server, Server]) -> None:
    a, b = pair
    initiator = Peer.open(b.url, timeout=15)
    peer = Peer.open(f"{a.url}/{initiator.id}", timeout=15)
    assert initiator.sse.next().event == "join"
    sub = SSE.open(f"{a.url}/channels/moving")
    deadline = time.monotonic() + 5
    while b.stats("moving").get("count", 0) + a.count("moving") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ids = [publish(b, "moving", n) for n in range(3)]
    got = sub.events(3)
    assert [e.data for e in got] == ["0", "1", "2"]
    a.proc.send_signal(os_signal.SIGTERM)
    assert_drained([sub, peer.sse])
    # The swarm state is consistent at once: the initiator hears the leave now,
    # not when the stopped process's heartbeat expires.
    leave = initiator.sse.next(timeout=2)
    assert (leave.event, leave.json()["cid"]) == ("leave", peer.cid)
    later = [publish(b, "moving", n) for n in range(3, 6)]
    with SSE.open(f"{b.url}/channels/moving", {"Last-Event-ID": ids[-1]}) as back:
        events = back.events(3)
        assert [e.id for e in events] == later
        assert [e.data for e in events] == ["3", "4", "5"]
    a.proc.wait(5)
    initiator.close()
