"""Flask-SSE's documented usage, ported, against a running server.

Flask-SSE mounts its blueprint with ``url_prefix="/stream"``; clients subscribe to
``/stream?channel=<name>`` and the application calls ``sse.publish(data, type=...)``,
which goes to the channel ``sse`` unless another is named.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.support import SSE, Server


def flask_sse_publish(srv: Server, data: Any, **kw: Any) -> str:
    """The application's ``signal.publish(data, type=..., id=...)``, Flask-SSE's call."""
    response = requests.post(
        f"{srv.origin}/_test/publish_flask_sse", json={"data": data, **kw}, timeout=5
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_count(srv: Server, channel: str, expected: int) -> None:
    deadline = time.monotonic() + 3
    while srv.count(channel) != expected:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("fast_path", [False, True])
def test_readme_example_greeting_on_the_default_channel(make_server, fast_path: bool) -> None:  # type: ignore[no-untyped-def]
    """README: ``sse.publish({"message": "Hello!"}, type='greeting')`` and a page listening
    for ``greeting`` on ``/stream?channel=sse``."""
    srv = make_server({"url_prefix": "/stream", "fast_path": fast_path})
    with SSE.open(srv.origin + "/stream?channel=sse") as sse:
        assert sse.status == 200
        assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"
        wait_count(srv, "sse", 1)
        flask_sse_publish(srv, {"message": "Hello!"}, type="greeting")
        event = sse.next()
        assert event.event == "greeting"
        assert event.json()["message"] == "Hello!"


def test_channels_by_query_parameter_and_ids(make_server) -> None:  # type: ignore[no-untyped-def]
    """``/stream?channel=users.social`` sees its channel only; ``id=`` (an int) resumes."""
    srv = make_server({"url_prefix": "/stream"})
    with (
        SSE.open(srv.origin + "/stream?channel=users.social") as social,
        SSE.open(srv.origin + "/stream/?channel=sse") as default,
    ):
        wait_count(srv, "users.social", 1)
        wait_count(srv, "sse", 1)
        requests.post(
            f"{srv.origin}/_test/publish",
            json={"channel": "users.social", "data": {"m": 1}, "event": "greeting", "id": 1},
            timeout=5,
        ).raise_for_status()
        assert flask_sse_publish(srv, "to default", id=2) == "2"
        event = social.next()
        assert (event.event, event.json(), event.id) == ("greeting", {"m": 1}, "1")
        assert [e.data for e in default.events(1)] == ["to default"]
        assert social.quiet(0.1) == [] and default.quiet(0.1) == []
    with SSE.open(srv.origin + "/stream?channel=sse", headers={"Last-Event-ID": "0"}) as again:
        assert [(e.id, e.data) for e in again.events(1)] == [("2", "to default")]


def test_prefix_without_channel_is_still_a_swarm(make_server) -> None:  # type: ignore[no-untyped-def]
    """The one documented difference: ``/stream`` alone creates a swarm."""
    srv = make_server({"url_prefix": "/stream"})
    with SSE.open(srv.origin + "/stream") as swarm:
        assert swarm.next().event == "connect"
