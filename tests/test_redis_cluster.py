# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""End to end with Redis: gunicorn servers with several gevent workers sharing one Redis.

Whichever worker or server a request lands on, swarms and channels behave as
with one process; killing a server (``kill -9``) or Redis is survived.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from tests.support import SSE, Peer, Server

from .redis_support import RedisServer, own_redis, prefix, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

MakeServer = Callable[..., Server]


def settings(url: str, prefix: str) -> dict[str, Any]:
    # A short heartbeat, so that a killed server is noticed within the test.
    options = {"prefix": prefix, "heartbeat_interval": 0.5, "peer_ttl": 1.5}
    return {"broker_url": url, "broker_options": options}


def kill_9(server: Server) -> None:
    """Kill the master and its workers at once, as a lost host would be."""
    server.kill()


def test_swarm_across_servers_and_workers(
    make_server: MakeServer,
    redis_url: str,
    prefix: str,
) -> None:
    one = make_server(settings(redis_url, prefix), workers=2)
    two = make_server(settings(redis_url, prefix), workers=2)
    initiator = Peer.open(one.url)
    peers = [Peer.open(f"{(one, two)[i % 2].url}/{initiator.id}") for i in range(6)]
    try:
        joins = {e.json()["cid"] for e in initiator.sse.events(6)}
        assert joins == {p.cid for p in peers}
        # Broadcast posted to each server in turn: everyone, the sender included, once.
        for n, server in enumerate((one, two)):
            assert peers[n].post(server.url, {"n": n}).status_code == 200
            for who in (initiator, *peers):
                event = who.sse.next()
                assert (event.event, event.json()) == ("signal", {"n": n})
        assert peers[0].post(two.url, "direct", cid=peers[5].cid).status_code == 200
        assert peers[5].sse.next().json() == "direct"
        for who in (initiator, *peers[:5]):
            assert who.sse.quiet(0.2) == []
        # Bad tokens and unknown cids answer as with one process.
        forged = {"token": "0" * 32, "data": 1}
        bad = requests.post(f"{two.url}/{initiator.id}", json=forged, timeout=5)
        assert bad.status_code == 401
        assert peers[1].post(one.url, 1, cid="f" * 32).status_code == 404
        # A peer leaving on one server reaches the initiator on the other.
        peers[1].close()
        event = initiator.sse.next()
        assert (event.event, event.json()["cid"]) == ("leave", peers[1].cid)
        # The initiator leaving ends every stream on every server.
        initiator.close()
        for p in peers[2:]:
            assert p.sse.wait_end(10)
        assert requests.get(f"{two.url}/{initiator.id}", timeout=5).status_code == 404
    finally:
        for p in (initiator, *peers):
            p.close()


def test_kill_9_of_a_server_is_noticed(
    make_server: MakeServer,
    redis_url: str,
    prefix: str,
) -> None:
    survivor = make_server(settings(redis_url, prefix))
    doomed = make_server(settings(redis_url, prefix), workers=2)
    # The doomed server holds a peer of the survivor's swarm, and the initiator of another.
    initiator = Peer.open(survivor.url)
    lost_peer = Peer.open(f"{doomed.url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    lost_initiator = Peer.open(doomed.url)
    orphan = Peer.open(f"{survivor.url}/{lost_initiator.id}")
    try:
        kill_9(doomed)
        event = initiator.sse.next(timeout=15)
        assert (event.event, event.json()["cid"]) == ("leave", lost_peer.cid)
        assert orphan.sse.wait_end(15)
        status = requests.get(f"{survivor.url}/{lost_initiator.id}", timeout=5).status_code
        assert status == 404
        assert initiator.post(survivor.url, "still here").status_code == 200
        assert initiator.sse.next().json() == "still here"
    finally:
        for p in (initiator, lost_peer, lost_initiator, orphan):
            p.close()


def test_redis_stop_is_retried_then_served_again(
    make_server: MakeServer,
    own_redis: RedisServer,
    prefix: str,
) -> None:
    """While Redis is down a stream is answered so that an EventSource retries (200, a
    ``retry:`` hint, the end) and a POST 503; once it is back, both are served."""
    server = make_server(settings(own_redis.url, prefix), workers=2)
    peer = Peer.open(server.url)
    try:
        own_redis.kill()
        with SSE.open(server.url) as refused:
            assert refused.status == 200
            assert refused.wait_end(15)
            assert b"retry: " in bytes(refused.raw)
            assert b"event: connect" not in bytes(refused.raw)
        answer = requests.post(
            f"{server.url}/{peer.id}", json={"token": peer.token, "data": 1}, timeout=15
        )
        assert answer.status_code == 503
        assert "error" in answer.json()

        own_redis.start()
        # Each worker reconnects on its own backoff: a new stream is served by a
        # worker that is back, while the other may still ask for a retry for a moment.
        deadline = time.monotonic() + 20
        while True:
            probe = SSE.open(server.url)
            if not probe.wait_end(1):  # a refusal ends at once; a served stream stays
                break
            probe.close()
            assert time.monotonic() < deadline, "still refusing after Redis came back"
            time.sleep(0.2)
        connect = probe.next()
        assert connect.event == "connect", connect
        fields = connect.json()
        again = Peer(probe, fields["id"], fields["cid"], fields["token"])
        try:
            assert again.post(server.url, "back").status_code == 200
            assert again.sse.next().json() == "back"
        finally:
            again.close()
    finally:
        peer.close()


def test_streams_share_one_pubsub_connection_per_worker(
    make_server: MakeServer,
    own_redis: RedisServer,
    prefix: str,
) -> None:
    server = make_server(settings(own_redis.url, prefix), workers=2)
    streams = []
    try:
        for i in range(500):
            streams.append(SSE.open(f"{server.url}/channels/c{i % 50}"))
        for s in streams:
            assert s.status == 200
        clients = redis.Redis.from_url(own_redis.url).client_list()
        subscribers = [c for c in clients if int(c["sub"]) > 0]
        assert len(subscribers) == 2  # one per worker, however many streams
        assert len(clients) <= 2 * 11 + 1
        # And they all get a message, whichever worker publishes.
        published = requests.post(
            f"{server.origin}/_test/publish_all", json={"data": "all"}, timeout=10
        ).json()["id"]
        for s in streams:
            assert s.next(10).id == published
    finally:
        for s in streams:
            s.close()
