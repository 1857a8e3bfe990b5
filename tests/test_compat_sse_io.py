"""sse.io-server's documented usage, ported, against a running server: a path with
parameters chooses the room, a fetch sends the first event, rooms get messages."""

from __future__ import annotations

import time

import requests

from tests.support import SSE, Server


def wait_count(srv: Server, channel: str, expected: int) -> None:
    deadline = time.monotonic() + 3
    while srv.count(channel) != expected:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_room_from_path_params_fetch_first_then_room_messages(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    with (
        SSE.open(srv.origin + "/rooms/r1/feed?initial=1") as one,
        SSE.open(srv.origin + "/rooms/r2/feed") as two,
    ):
        first = one.next()  # the fetch's result, before what was sent meanwhile
        assert (first.event, first.json()) == ("init", {"room": "r1", "state": "initial"})
        assert one.next().data == "during-initial"
        wait_count(srv, "room.r2", 1)
        body = {"channel": "room.r1", "data": {"to": "r1"}}
        requests.post(f"{srv.origin}/_test/publish", json=body, timeout=5).raise_for_status()
        assert one.next().json() == {"to": "r1"}
        assert two.quiet(0.1) == []  # eventHandler.send reaches its room only


def test_refusal_in_the_route_is_an_answer_not_a_stream(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    refused = requests.get(srv.origin + "/rooms/secret-1/feed", timeout=5)
    assert refused.status_code == 403
    assert refused.json()["error"]
