"""Hostile input at the endpoints: what no client may do, byte for byte, then by hypothesis.

The exact requests first (each a regression test of its own), in process:
Flask's test client on an app with :class:`Signal`, streams read inside a
greenlet, as a gevent worker runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import gevent
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_signal import Signal
from flask_signal.sse import Event, SSEParser

from .redis_support import prefix, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

PREFIX = "/signal"


def make_app(**settings: Any) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    Signal(app, ping_interval=0, **settings)
    return app


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings naming a broker: memory, or the session's Redis under a key prefix of its own."""
    if request.param == "memory":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"broker_url": url, "redis_prefix": request.getfixturevalue("prefix")}


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps made by a test; their brokers are closed afterwards."""
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["signal_state"].broker.close()


def in_greenlet(func: Any, *args: Any, timeout: float = 10, **kwargs: Any) -> Any:
    """Run ``func`` in a greenlet, as a gevent worker runs a request; its result or error."""
    job = gevent.spawn(func, *args, **kwargs)
    job.join(timeout)
    if not job.dead:
        job.kill()
        raise AssertionError(f"{func.__name__} hung for {timeout}s")
    return job.get()


def opening(client: FlaskClient, path: str, headers: dict[str, str] | None = None) -> Any:
    """A stream's status and the events sent as it opened (replay included); then it is closed."""

    def read() -> tuple[int, list[Event], bytes]:
        response = client.get(path, headers=headers or {}, buffered=False)
        try:
            if response.status_code != 200:
                return response.status_code, [], response.get_data()
            head = next(iter(response.response))
            parser = SSEParser()
            return response.status_code, parser.feed(head), head
        finally:
            response.close()

    return in_greenlet(read)


def history(client: FlaskClient, channel: str) -> list[Event]:
    """Every retained event of ``channel``."""
    status, events, body = opening(client, f"{PREFIX}/channels/{channel}", {"Last-Event-ID": "0"})
    assert status == 200, body
    return events


# -- case 12: publish authorization covers every channel a request names --------------


def anyone(request: Any, channel: str) -> bool:
    return True


def only_public(request: Any, channel: str) -> bool:
    return bool(channel.startswith("public"))


@pytest.mark.parametrize(
    "path",
    [
        "/channels/public?channel=private",
        "/channels/public?channel=public2&channel=private",
        "/channels/private?channel=public",
    ],
)
def test_publish_auth_covers_every_named_channel(
    apps: list[Flask], broker: dict[str, Any], path: str
) -> None:
    app = make_app(publish_auth=only_public, **broker)
    apps.append(app)
    client = app.test_client()
    response = in_greenlet(client.post, PREFIX + path, json={"data": "sneaky"})
    assert response.status_code == 403
    for channel in ("public", "public2", "private"):
        assert history(client, channel) == []


def test_publish_auth_allows_when_every_channel_is_allowed(
    apps: list[Flask], broker: dict[str, Any]
) -> None:
    app = make_app(publish_auth=only_public, **broker)
    apps.append(app)
    client = app.test_client()
    path = f"{PREFIX}/channels/public?channel=public2"
    response = in_greenlet(client.post, path, json={"data": "hi"})
    assert response.status_code == 200, response.data
    for channel in ("public", "public2"):
        assert [e.data for e in history(client, channel)] == ["hi"]


def test_publish_key_and_auth_both_hold_for_query_channels(apps: list[Flask]) -> None:
    app = make_app(publish_key="k", publish_auth=only_public)
    apps.append(app)
    client = app.test_client()
    path = f"{PREFIX}/channels/public?channel=private"
    key = {"Authorization": "Bearer k"}
    assert client.post(path, json={"data": 1}).status_code == 401
    assert client.post(path, json={"data": 1}, headers=key).status_code == 403
    assert history(client, "private") == []


# -- case 13: Last-Event-ID values that are not the hub's ids ---------------------------


def hub_epoch(client: FlaskClient) -> str:
    response = in_greenlet(client.post, f"{PREFIX}/channels/probe", json={"data": 0})
    assert response.status_code == 200
    epoch: str = response.get_json()["id"].rpartition("-")[0]
    return epoch


@pytest.mark.parametrize(
    "tail", ["²", "1²", "٣", "1" * 5000, "9" * 16, "", "-1", "1.5", " 1", "0x1", "1_000"]
)
def test_malformed_sequence_in_last_event_id(
    apps: list[Flask], broker: dict[str, Any], tail: str
) -> None:
    app = make_app(publish_auth=anyone, **broker)
    apps.append(app)
    client = app.test_client()
    epoch = hub_epoch(client)
    value = f"{epoch}-{tail}"
    # A header arrives as latin-1 (a byte 0xB2 is "²"); the query as UTF-8, percent-encoded.
    try:
        header = value.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        header = value.encode().decode("latin-1")
    for headers, query in (
        ({"Last-Event-ID": header}, ""),
        ({}, "?lastEventId=" + quote(value)),
        ({}, "?evs_last_event_id=" + quote(value)),
    ):
        status, events, body = opening(client, f"{PREFIX}/channels/probe{query}", headers)
        # Not an id the hub gave: the client is told that events may be lost,
        # then gets every retained event.
        assert status == 200, body
        assert [(e.event, e.data) for e in events][1:] == [("message", "0")]
        assert events[0].event == "missed"


def test_last_event_id_with_leading_zeros_still_resumes(
    apps: list[Flask], broker: dict[str, Any]
) -> None:
    app = make_app(publish_auth=anyone, **broker)
    apps.append(app)
    client = app.test_client()
    epoch = hub_epoch(client)
    in_greenlet(client.post, f"{PREFIX}/channels/probe", json={"data": 1})
    status, events, _ = opening(
        client, f"{PREFIX}/channels/probe", {"Last-Event-ID": f"{epoch}-0001"}
    )
    assert status == 200
    assert [e.data for e in events] == ["1"]
