"""sse-channel's documented examples and behaviours, ported, against a running server."""

from __future__ import annotations

import time
from typing import Any

import requests

from tests.support import SSE, Server


def publish(srv: Server, channel: str, data: Any, **kw: Any) -> str:
    body = {"channel": channel, "data": data, **kw}
    response = requests.post(f"{srv.origin}/_test/publish", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_count(srv: Server, channel: str, expected: int) -> None:
    deadline = time.monotonic() + 3
    while srv.count(channel) != expected:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_advanced_example_sysinfo_with_counter_ids(make_server) -> None:  # type: ignore[no-untyped-def]
    """README: ``new SseChannel({retryTimeout: 250, historySize: 300, jsonEncode: true})``,
    ``send({id: sysInfoCounter++, data: {...}})``, a client that reconnects resumes."""
    srv = make_server({"retry": 250, "history_size": 300})
    with SSE.open(srv.url + "/channels/sysinfo") as sse:
        sse.quiet(0.05)
        assert bytes(sse.raw) == b":ok\n\nretry: 250\n\n"
        wait_count(srv, "sysinfo", 1)
        for counter in range(3):
            publish(srv, "sysinfo", {"freemem": 100 - counter, "loadavg": [0.5]}, id=counter)
        events = sse.events(3)
        assert [e.id for e in events] == ["0", "1", "2"]
        assert events[0].json() == {"freemem": 100, "loadavg": [0.5]}
    # The browser reconnects with the last id it saw; the counter started at 0.
    for last, expected in (("0", ["1", "2"]), ("1", ["2"])):
        with SSE.open(srv.url + "/channels/sysinfo", headers={"Last-Event-ID": last}) as again:
            assert [e.id for e in again.events(len(expected))] == expected
            assert again.quiet(0.1) == []


def test_named_events_and_query_resume_for_polyfills(make_server) -> None:  # type: ignore[no-untyped-def]
    """README: ``send({event: 'goal', data: ...})``; old polyfills send the resume point
    as ``evs_last_event_id`` and ask for ``evs_preamble``; the header still wins."""
    srv = make_server()
    first = publish(srv, "soccer-goals", "Manchester Utd - Swansea (1-1)", event="goal")
    goal = "Manchester Utd - Swansea (2-1: Wayne Rooney)"
    second = publish(srv, "soccer-goals", goal, event="goal")
    path = f"/channels/soccer-goals?evs_preamble=1&evs_last_event_id={first}&lastEventId=0"
    with SSE.open(srv.url + path) as sse:
        event = sse.next()
        assert (event.event, event.data, event.id) == ("goal", goal, second)
        assert bytes(sse.raw).startswith(b":ok\n\n:" + b" " * 2048 + b"\n\n")
    with SSE.open(srv.url + path, headers={"Last-Event-ID": second}) as sse:
        assert sse.quiet(0.2) == []


def test_resent_id_ping_and_retry(make_server) -> None:  # type: ignore[no-untyped-def]
    """History keeps one event per id; ``ping()`` and ``retry(duration)`` reach clients."""
    srv = make_server()
    publish(srv, "ticker", "draft", id="t1")
    publish(srv, "ticker", "final", id="t1")
    with SSE.open(srv.url + "/channels/ticker", headers={"Last-Event-ID": "0"}) as sse:
        assert [(e.id, e.data) for e in sse.events(1)] == [("t1", "final")]
        wait_count(srv, "ticker", 1)
        start = len(sse.raw)
        requests.post(f"{srv.origin}/_test/ping", json={"channel": "ticker"}, timeout=5)
        requests.post(f"{srv.origin}/_test/retry", json={"ms": 900, "channel": "ticker"}, timeout=5)
        publish(srv, "ticker", "next")
        assert sse.next().data == "next"
        assert bytes(sse.raw)[start:].startswith(b":ping\n\nretry: 900\n\n")
    with SSE.open(srv.url + "/channels/ticker") as late:
        late.quiet(0.05)
        assert bytes(late.raw) == b":ok\n\nretry: 900\n\n"
