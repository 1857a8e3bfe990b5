"""The extension's glue: declared routes, per-app state, and answers during a broker outage.

The outage is real: the hub's broker is a redis-server this module started
and then killed, so every Redis call fails as it would in production.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
import requests
from flask import Flask

from flask_signal import Signal
from flask_signal.brokers.memory import MemoryBroker
from flask_signal.brokers.redis import RedisBroker
from flask_signal.errors import OutcomeUnknown, answer_for
from flask_signal.state import app_state
from tests.servers import EventSources, RedisServer
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


def stream_outage_answer(response: requests.Response) -> tuple[int, str, list[str]]:
    """Status, type and the frames' field names (the retry delay is spread at random)."""
    lines = response.text.splitlines()
    return (
        response.status_code,
        response.headers["Content-Type"],
        [line.partition(":")[0] for line in lines],
    )


@pytest.mark.parametrize(
    "path", ["/channels/room.a", "", "/abc123"], ids=["channel", "create", "join"]
)
def test_a_stream_asked_for_in_an_outage_ends_with_a_retry_hint(
    dead_redis_hub: Server, path: str
) -> None:
    """200 and a ``retry:`` of SIGNAL_RETRY_AFTER seconds (up to half more), then the end:
    what an EventSource reconnects after, where a 503 would end it for good."""
    response = requests.get(dead_redis_hub.url + path, headers=SSE, timeout=10)
    assert stream_outage_answer(response) == (
        200,
        "text/event-stream; charset=utf-8",
        ["", "", "retry", ""],
    )
    retry = int(response.text.split("retry: ")[1].split("\n")[0])
    assert RETRY_AFTER * 1000 <= retry <= RETRY_AFTER * 1500
    assert "Retry-After" not in response.headers


def test_declared_route_answers_an_outage_as_channels_do(dead_redis_hub: Server) -> None:
    """A ``@signal.stream`` route is not under the blueprint, yet answers alike (not 500 HTML)."""
    channel = requests.get(f"{dead_redis_hub.url}/channels/room.a", headers=SSE, timeout=10)
    declared = requests.get(f"{dead_redis_hub.origin}/rooms/a/feed", headers=SSE, timeout=10)
    assert stream_outage_answer(declared) == stream_outage_answer(channel)
    assert declared.status_code == 200


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


# -- a real EventSource through a real Redis outage --------------------------------------


def test_an_eventsource_reconnects_by_itself_once_redis_is_back(
    tmp_path: Path, own_redis: RedisServer, node_modules: Path
) -> None:
    """WHATWG EventSources opened while Redis is down, one on a channel and one creating
    a swarm, are turned away in a way they retry, and connect once Redis is back."""
    srv = start_server(tmp_path, {"broker_url": own_redis.url, "retry_after": 1})
    own_redis.kill()
    sources = EventSources(node_modules)
    try:
        sources.open("channel", f"{srv.url}/channels/outage")
        sources.open("swarm", srv.url, ["connect"])
        # Both are turned away and keep trying (CONNECTING, not CLOSED), twice.
        for source in ("channel", "swarm"):
            sources.wait_for(source, 20, count=2, type="error", readyState=0)
        # A POST during the outage is still a 503.
        refused = requests.post(f"{srv.url}/abc123", json={"token": "t"}, timeout=10)
        assert refused.status_code == 503

        own_redis.start()
        # An EventSource reports "open" for the outage answers too: publish until
        # the channel's stream is live again and delivers.
        body = {"channel": "outage", "data": "back"}
        deadline = time.monotonic() + 20
        while not sources.events("channel"):
            assert time.monotonic() < deadline, sources.story("channel")
            requests.post(f"{srv.origin}/_test/publish", json=body, timeout=10)
            time.sleep(0.2)
        assert sources.events("channel")[0]["data"] == "back"
        assert json.loads(sources.wait_for("swarm", type="event", event="connect")["data"])["id"]
        for source in ("channel", "swarm"):
            assert not sources.of(source, type="error", readyState=2), sources.story(source)
    finally:
        sources.stop()
        srv.stop()


# -- the fast path, taken by default when nothing would notice ---------------------------


def signal_post(app: Flask) -> int:
    """A swarm POST through the app's whole WSGI stack (for no swarm: 404 either way)."""
    response = app.test_client().post("/signal/abc123", json={"token": "t", "data": 1})
    assert response.get_json() == {"error": "no such swarm"}
    return response.status_code


def fast_path_taken(app: Flask) -> bool | None:
    with app.app_context():
        taken: bool | None = app.extensions["signal"].stats()["fast_path"]
    return taken


def test_with_nothing_registered_swarm_requests_take_the_fast_path() -> None:
    app = Flask("bare")
    Signal(app)
    assert fast_path_taken(app) is None  # decided by the first request
    assert signal_post(app) == 404
    assert fast_path_taken(app) is True
    # As after Flask's own first request: no hook may come now that it would skip.
    with pytest.raises(AssertionError, match="can no longer be called"):
        app.before_request(lambda: None)


def test_handlers_that_cannot_apply_keep_the_fast_path() -> None:
    """The hub answers its 4xx itself: a 404 handler never sees them, on either path."""
    app = Flask("notfound")

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "gone", 404

    @app.get("/page")
    def page() -> str:
        return "page"

    Signal(app)
    assert signal_post(app) == 404
    assert fast_path_taken(app) is True
    assert app.test_client().get("/nowhere").get_data() == b"gone"


class Preprocessing(Flask):
    def preprocess_request(self) -> Any:
        seen.append("preprocess_request")
        return super().preprocess_request()


seen: list[str] = []


def register_before_request(app: Flask) -> None:
    app.before_request(lambda: seen.append("before_request"))


def register_after_request(app: Flask) -> None:
    @app.after_request
    def after(response: Any) -> Any:
        seen.append("after_request")
        return response


def register_teardown_request(app: Flask) -> None:
    app.teardown_request(lambda exc: seen.append("teardown_request"))


def register_teardown_appcontext(app: Flask) -> None:
    app.teardown_appcontext(lambda exc: seen.append("teardown_appcontext"))


def register_url_value_preprocessor(app: Flask) -> None:
    app.url_value_preprocessor(lambda endpoint, values: seen.append("url_value_preprocessor"))


def register_error_handler(app: Flask) -> None:
    # It would see an unexpected error of a swarm request (none happens here).
    @app.errorhandler(Exception)
    def handler(exc: Exception) -> Any:
        return "handled", 500


def register_request_started(app: Flask) -> None:
    def receiver(sender: Flask, **kw: Any) -> None:
        seen.append("request_started")

    flask.request_started.connect(receiver, app, weak=False)


def register_blueprint_hook(app: Flask) -> None:
    # The hub's blueprint is registered: a hook for its routes goes in the app's registry.
    app.before_request_funcs.setdefault("signal", []).append(
        lambda: seen.append("the hub blueprint's before_request")
    )


def register_middleware(app: Flask) -> None:
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append("middleware")
        return inner(environ, start_response)

    app.wsgi_app = middleware  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("register", "after_signal"),
    [
        (register_before_request, True),
        (register_after_request, True),
        (register_teardown_request, True),
        (register_teardown_appcontext, True),
        (register_url_value_preprocessor, True),
        (register_error_handler, True),
        (register_request_started, True),
        (register_blueprint_hook, True),
        (register_middleware, False),  # a middleware the extension wraps
        (None, True),  # a Flask subclass with its own request handling
    ],
    ids=lambda item: getattr(item, "__name__", str(item)).removeprefix("register_"),
)
def test_anything_that_would_see_swarm_requests_keeps_them_on_flask(
    register: Any, after_signal: bool
) -> None:
    app = (Flask if register else Preprocessing)("observed")
    if register and not after_signal:
        register(app)
    Signal(app)
    if register and after_signal:
        register(app)
    seen.clear()
    try:
        assert signal_post(app) == 404
        if register is not register_error_handler:
            assert seen, "the observer did not see the swarm request"
        assert fast_path_taken(app) is False
    finally:
        for sent in (flask.request_started,):
            for receiver in list(sent.receivers_for(app)):
                sent.disconnect(receiver, app)


def test_forced_on_the_fast_path_skips_hooks_and_forced_off_never_takes_it() -> None:
    for forced, expect_seen in ((True, False), (False, True)):
        app = Flask("forced")
        Signal(app, fast_path=forced)
        register_before_request(app)
        seen.clear()
        assert signal_post(app) == 404
        assert bool(seen) is expect_seen
        assert fast_path_taken(app) is forced


def test_an_unknown_outcome_answers_504_without_retry_after() -> None:
    """A POST whose effect the broker could not confirm is not "retry later": a retry
    may apply it twice, so it answers 504 with no Retry-After. A stream asked for in
    the same state still gets the retry hint (the broker undoes a join it cannot
    confirm), so an EventSource comes back by itself."""
    app = Flask("unknown")
    signal = Signal(app, ping_interval=0, fast_path=False, publish_key="k")
    broker = app.extensions["signal_state"].broker

    def unconfirmed(*args: Any, **kwargs: Any) -> Any:
        raise OutcomeUnknown("Redis did not answer; the operation may or may not have run")

    broker.publish = unconfirmed  # type: ignore[method-assign]
    client = app.test_client()
    response = client.post(
        "/signal/channels/news", json={"data": 1}, headers={"Authorization": "Bearer k"}
    )
    assert response.status_code == 504, response.data
    assert "Retry-After" not in response.headers
    assert "may have been applied" in response.get_json()["error"]
    # Publishing from application code raises it as it is.
    with app.app_context(), pytest.raises(OutcomeUnknown):
        signal.publish("news", 1)

    answer = answer_for(OutcomeUnknown("x"), retry_after=5)
    assert answer.status == 504
    assert "Retry-After" not in dict(answer.headers)
    assert json.loads(b"".join(answer.body))["error"].startswith("the signalling backend")
    streamed = answer_for(OutcomeUnknown("x"), retry_after=5, stream_headers=[("A", "b")])
    assert streamed.status == 200
    assert b"retry:" in b"".join(streamed.body)
