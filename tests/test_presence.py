"""Client ids on channel streams across two processes sharing a real Redis:
``send_to`` and ``disconnect`` reach a client wherever its streams are, presence
and subscriber counts are cluster-wide, and a dead process's entries are reaped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import Pair, Server, start_pair, start_server
from tests.support import SSE

APP = "tests.client_app:create_app()"
#: Short liveness bounds, so that a killed process is reaped within seconds.
FAST_REAPER = {"broker_options": {"heartbeat_interval": 0.3, "peer_ttl": 1.0}}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Pair]:
    servers = start_pair(tmp_path_factory.mktemp("presence"), redis_url, FAST_REAPER, app=APP)
    yield servers
    servers.stop()


def presence(srv: Server, channel: str) -> dict[str, Any]:
    response = requests.get(f"{srv.origin}/_test/presence/{channel}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def feed(srv: Server, client: str, *channels: str) -> SSE:
    query = "&".join(f"channel={name}" for name in channels)
    sse = SSE.open(f"{srv.origin}/clients/{client}?{query}")
    assert sse.status == 200
    return sse


def test_send_to_and_disconnect_reach_the_client_in_the_other_process(pair: Pair) -> None:
    one, two = pair.servers
    with feed(one, "ann", "room") as ann, feed(two, "bob", "room") as bob:
        eventually(lambda: presence(two, "room")["count"] == 2)
        response = requests.post(
            f"{two.origin}/_test/send_to/ann",
            json={"data": {"hi": "ann"}, "event": "private", "id": "p-1"},
            timeout=5,
        )
        assert response.status_code == 200
        event = ann.next()
        assert (event.event, event.json(), event.id) == ("private", {"hi": "ann"}, "p-1")
        assert bob.quiet(0.2) == []
        requests.post(f"{one.origin}/_test/disconnect/bob", timeout=5)
        assert bob.wait_end()
        assert not ann.wait_end(0.2)


def test_presence_and_counts_are_cluster_wide(pair: Pair) -> None:
    one, two = pair.servers
    with (
        feed(one, "ann", "lobby") as a1,
        feed(two, "ann", "lobby", "side"),
        feed(two, "cy", "lobby"),
    ):
        expected = {"clients": ["ann", "cy"], "count": 3}
        eventually(lambda: presence(one, "lobby") == expected == presence(two, "lobby"))
        assert presence(one, "side") == {"clients": ["ann"], "count": 1}
        a1.close()
        eventually(lambda: presence(two, "lobby")["count"] == 2)
        assert presence(one, "lobby")["clients"] == ["ann", "cy"]  # ann is still on two
    eventually(lambda: presence(one, "lobby") == {"clients": [], "count": 0})


def test_a_killed_process_leaves_the_presence(tmp_path: Path, redis_url: str) -> None:
    servers = start_pair(tmp_path, redis_url, FAST_REAPER, app=APP)
    one, two = servers.servers
    try:
        with feed(one, "ann", "hall"), feed(two, "bob", "hall") as bob:
            eventually(lambda: presence(two, "hall")["count"] == 2)
            one.kill()
            eventually(lambda: presence(two, "hall") == {"clients": ["bob"], "count": 1})
            assert not bob.wait_end(0.1)
    finally:
        servers.stop()


def test_memory_presence_is_this_process_only(tmp_path: Path) -> None:
    srv = start_server(tmp_path, app=APP)
    try:
        with feed(srv, "ann", "solo") as ann:
            eventually(lambda: presence(srv, "solo") == {"clients": ["ann"], "count": 1})
            requests.post(
                f"{srv.origin}/_test/send_to/ann", json={"data": "x"}, timeout=5
            ).raise_for_status()
            assert ann.next().data == "x"
            requests.post(f"{srv.origin}/_test/disconnect/ann", timeout=5).raise_for_status()
            assert ann.wait_end()
        eventually(lambda: presence(srv, "solo") == {"clients": [], "count": 0})
    finally:
        srv.stop()


def test_a_process_writes_its_presence_again_after_redis_lost_it(
    redis_url: str, prefix: str
) -> None:
    import redis

    from flask_signal.brokers.redis import RedisBroker
    from flask_signal.hub import LocalHub, Stream
    from tests.broker_support import wait_until

    broker = RedisBroker(redis_url, hub=LocalHub(), prefix=prefix)
    broker.start()
    try:
        stream = Stream(100, "channel")
        stream.client = "ann"
        broker.subscribe(stream, ["kept"])
        wait_until(lambda: broker.presence("kept") == {"ann": 1})
        redis.Redis.from_url(redis_url).delete(broker.keys.presence("kept"))
        assert broker.presence("kept") == {}
        broker.refresh_presence()  # what the heartbeat does every PRESENCE_REFRESH seconds
        wait_until(lambda: broker.presence("kept") == {"ann": 1})
        broker.unsubscribe(stream)
        wait_until(lambda: broker.subscriber_count("kept") == 0)
    finally:
        broker.close()
