"""The extension's glue: declared routes, per-app state, and answers during a broker outage.

The outage is real: the hub's broker is a redis-server this module started
and then killed, so every Redis call fails as it would in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_signal import Signal
from flask_signal.brokers.memory import MemoryBroker
from flask_signal.brokers.redis import RedisBroker
from flask_signal.state import app_state
from tests.redis_support import RedisServer
from tests.support import Server, start_server

SSE = {"Accept": "text/event-stream"}
RETRY_AFTER = 7


@pytest.fixture(scope="module", params=[False, True], ids=["flask-path", "fast-path"])
def dead_redis_hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A hub whose Redis was running once and is now gone."""
    redis_server = RedisServer().start()
    redis_server.kill()
    srv = start_server(
        tmp_path_factory.mktemp("outage"),
        {
            "broker_url": redis_server.url,
            "retry_after": RETRY_AFTER,
            "publish_key": "k",
            "fast_path": request.param,
        },
    )
    yield srv
    srv.stop()


def outage_answer(response: requests.Response) -> tuple[int, str, str | None, Any]:
    return (
        response.status_code,
        response.headers["Content-Type"],
        response.headers.get("Retry-After"),
        response.json(),
    )


def test_declared_route_answers_an_outage_as_channels_do(dead_redis_hub: Server) -> None:
    """A ``@signal.stream`` route is not under the blueprint, yet answers alike (not 500 HTML)."""
    channel = requests.get(f"{dead_redis_hub.url}/channels/room.a", headers=SSE, timeout=10)
    declared = requests.get(f"{dead_redis_hub.origin}/rooms/a/feed", headers=SSE, timeout=10)
    assert outage_answer(declared) == outage_answer(channel)
    assert declared.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/abc123", {"token": "t", "data": 1}, {}),  # a signal: the swarm protocol
        ("/channels/news", {"data": 1}, {"Authorization": "Bearer k"}),  # a publish
    ],
    ids=["signal", "publish"],
)
def test_outage_answers_503_with_the_configured_retry_after(
    dead_redis_hub: Server, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    response = requests.post(dead_redis_hub.url + path, json=body, headers=headers, timeout=10)
    assert outage_answer(response) == (
        503,
        "application/json",
        str(RETRY_AFTER),
        {"error": "signalling backend unavailable, retry later"},
    )


def test_declared_route_keeps_its_endpoint_on_every_app() -> None:
    signal = Signal()

    @signal.stream("/feed/<name>", endpoint="feed", strict_slashes=False)
    def feed(name: str) -> str:
        return name

    apps = [Flask("one"), Flask("two")]
    for app in apps:
        signal.init_app(app)
    for app in apps:
        rules = {rule.endpoint: rule for rule in app.url_map.iter_rules()}
        assert "feed" in rules, sorted(rules)
        assert rules["feed"].rule == "/feed/<name>"
        assert rules["feed"].strict_slashes is False


def test_redis_prefix_goes_to_redis_brokers_only(tmp_path: Path) -> None:
    """Any spelling of memory:// takes no Redis option; a Redis broker gets its key prefix."""
    app = Flask("memory")
    Signal(app, broker_url="MEMORY://", redis_prefix="mine:")
    assert isinstance(app.extensions["signal_state"].broker, MemoryBroker)

    app = Flask("redis")
    # Never started, so nothing needs to listen on this port.
    Signal(app, broker_url="redis://127.0.0.1:9/0", redis_prefix="mine:")
    broker = app.extensions["signal_state"].broker
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "mine:"


def test_state_starts_its_broker_once() -> None:
    app = Flask("once")
    Signal(app, ping_interval=0)
    st = app.extensions["signal_state"]
    starts: list[int] = []
    st.broker.start = lambda: starts.append(1)
    assert not st.started
    assert app_state(app) is st
    assert app_state(app) is st.ready() is st
    assert starts == [1]


def test_state_of_an_app_without_the_extension() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        app_state(Flask("bare"))
