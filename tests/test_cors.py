"""CORS as browsers need it, on every answer of the hub: streams, signals, errors,
preflights, channels and declared routes, through Flask and through the fast path."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_signal import Signal
from tests.support import SSE, Pair, Peer, Server, start_hub

PAGE = "http://page.example"
OTHER = "http://other.example"
PATHS = ["swarm", "no-such-swarm", "channel", "declared"]


def url_of(srv: Any, what: str) -> str:
    if what == "swarm":
        return srv.url
    if what == "no-such-swarm":
        return srv.url + "/0123456789abcdef"
    if what == "channel":
        return srv.url + "/channels/news"
    return srv.origin + "/rooms/lobby/feed"


def stream_headers(url: str, origin: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if origin:
        headers["Origin"] = origin
    with SSE.open(url, headers=headers) as sse:
        return sse.headers


CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "any": {"cors": "*", "cors_max_age": 600},
    "listed": {"cors": [PAGE], "cors_max_age": 600},
    "credentials": {"cors": [PAGE], "cors_credentials": True, "cors_max_age": 600},
}


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str | None
) -> Iterator[dict[tuple[str, bool], Server | Pair]]:
    """A server per configuration, through Flask and through the fast path, for the module."""
    tmp: Path = tmp_path_factory.mktemp("cors")
    wanted = [(name, fast) for name in CONFIGS for fast in (False, True)]

    def start(item: tuple[str, bool]) -> Server | Pair:
        name, fast = item
        return start_hub(tmp, {**CONFIGS[name], "fast_path": fast}, redis_url=broker_url)

    # Two at a time: each boot is CPU-bound, and more at once only slows every one down.
    with ThreadPoolExecutor(2) as pool:
        started = dict(zip(wanted, pool.map(start, wanted), strict=True))
    yield started
    with ThreadPoolExecutor(len(wanted)) as pool:
        list(pool.map(lambda srv: srv.stop(), started.values()))


@pytest.fixture(params=[False, True], ids=["flask", "fast-path"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_credentials_with_any_origin_are_refused_at_init() -> None:
    for cors in (True, "*"):
        with pytest.raises(ValueError, match="SIGNAL_CORS_CREDENTIALS cannot be used"):
            Signal(Flask(__name__), cors=cors, cors_credentials=True)
    with pytest.raises(ValueError, match="needs SIGNAL_CORS"):
        Signal(Flask(__name__), cors_credentials=True)


def test_any_origin(servers: Any, fast_path: bool) -> None:
    srv = servers["any", fast_path]
    for what in PATHS:
        headers = stream_headers(url_of(srv, what), PAGE)
        assert headers["access-control-allow-origin"] == "*", what
        assert "access-control-allow-credentials" not in headers
        assert "origin" not in headers.get("vary", "").lower(), what
    peer = Peer.open(srv.url, headers={"Origin": PAGE, "Accept": "text/event-stream"})
    try:
        for body, status in (({"token": peer.token, "data": 1}, 200), ({"data": 1}, 401)):
            answer = requests.post(
                f"{srv.url}/{peer.id}", json=body, headers={"Origin": PAGE}, timeout=5
            )
            assert answer.status_code == status
            assert answer.headers["Access-Control-Allow-Origin"] == "*"
            assert "Retry-After" in answer.headers["Access-Control-Expose-Headers"]
    finally:
        peer.close()


@pytest.mark.parametrize("credentials", [False, True])
def test_listed_origins(servers: Any, fast_path: bool, credentials: bool) -> None:
    srv = servers["credentials" if credentials else "listed", fast_path]
    for what in PATHS:
        url = url_of(srv, what)
        allowed = stream_headers(url, PAGE)
        assert allowed["access-control-allow-origin"] == PAGE, what
        assert "origin" in allowed["vary"].lower(), what
        assert allowed.get("access-control-allow-credentials") == ("true" if credentials else None)
        # The answer depends on the origin even where none is allowed: Vary says so.
        for origin in (OTHER, None):
            refused = stream_headers(url, origin)
            assert "access-control-allow-origin" not in refused, (what, origin)
            assert "origin" in refused["vary"].lower(), (what, origin)


@pytest.mark.parametrize("status", [401, 404, 413, 415, 400])
def test_errors_carry_cors(servers: Any, fast_path: bool, status: int) -> None:
    srv = servers["credentials", fast_path]
    peer = Peer.open(srv.url)
    try:
        target = f"{srv.url}/{peer.id}"
        kwargs: dict[str, Any] = {
            401: {"json": {"token": "0" * 32, "data": 1}},
            404: {"json": {"token": peer.token, "data": 1, "cid": "0" * 32}},
            413: {"json": {"token": peer.token, "data": "x" * 20000}},
            415: {"data": b"x", "headers": {"Content-Type": "text/plain"}},
            400: {"data": b"{", "headers": {"Content-Type": "application/json"}},
        }[status]
        headers = {"Origin": PAGE, **kwargs.pop("headers", {})}
        answer = requests.post(target, headers=headers, timeout=5, **kwargs)
        assert answer.status_code == status
        assert answer.headers["Access-Control-Allow-Origin"] == PAGE
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert "origin" in answer.headers["Vary"].lower()
        assert "error" in answer.json()
    finally:
        peer.close()


@pytest.mark.parametrize("config", ["any", "credentials"])
def test_preflight(servers: Any, fast_path: bool, config: str) -> None:
    srv = servers[config, fast_path]
    cors = CONFIGS[config]["cors"]
    for url, method, asked in (
        (srv.url + "/0123abcd", "POST", "content-type"),
        (srv.url + "/channels/news", "GET", "last-event-id"),
        (srv.origin + "/rooms/lobby/feed", "GET", "last-event-id"),
    ):
        answer = requests.options(
            url,
            headers={
                "Origin": PAGE,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": asked,
            },
            timeout=5,
        )
        assert answer.status_code in (200, 204), url
        allowed = answer.headers["Access-Control-Allow-Headers"].lower()
        assert asked in allowed and "last-event-id" in allowed
        assert method in answer.headers["Access-Control-Allow-Methods"]
        assert answer.headers["Access-Control-Max-Age"] == "600"
        assert answer.headers["Access-Control-Allow-Origin"] == ("*" if cors == "*" else PAGE)
        if cors != "*":
            assert "origin" in answer.headers["Vary"].lower()
            assert answer.headers["Access-Control-Allow-Credentials"] == "true"


def test_without_cors_no_headers_and_no_options(servers: Any, fast_path: bool) -> None:
    srv = servers["none", fast_path]
    headers = stream_headers(srv.url, PAGE)
    assert not [name for name in headers if name.startswith("access-control-")]
    answer = requests.options(srv.url + "/abc", headers={"Origin": PAGE}, timeout=5)
    assert answer.status_code == 405
