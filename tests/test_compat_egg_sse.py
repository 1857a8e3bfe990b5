"""egg-sse's documented configuration and behaviours, ported, against a running server."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.support import SSE, Server

#: egg-sse's config.default.js, as settings.
EGG = {
    "url_prefix": "/stream",
    "max_clients": 2,
    "full_status": 204,
    "headers": {"Access-Control-Allow-Origin": "*"},
}


def publish(srv: Server, channel: str, data: Any, **kw: Any) -> str:
    body = {"channel": channel, "data": data, **kw}
    response = requests.post(f"{srv.origin}/_test/publish", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_count(srv: Server, channel: str | None, expected: int) -> None:
    deadline = time.monotonic() + 3
    while srv.count(channel) != expected:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.single_process
def test_config_headers_pools_and_max_clients(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(EGG)
    with (
        SSE.open(srv.origin + "/stream/channels/news") as news,
        SSE.open(srv.origin + "/stream?channel=sports") as sports,
    ):
        for sse in (news, sports):
            assert sse.headers["content-type"].startswith("text/event-stream")
            assert sse.headers["cache-control"] == "no-cache, no-transform"
            assert sse.headers["connection"] == "keep-alive"
            assert sse.headers["x-accel-buffering"] == "no"
            assert sse.headers["access-control-allow-origin"] == "*"
        wait_count(srv, None, 2)
        over = requests.get(srv.origin + "/stream/channels/news", timeout=5)
        assert over.status_code == 204 and over.content == b""
        # publish(key, {id: Math.random(), event: 'data', data: {aa: 11}}): one pool only
        assert publish(srv, "news", {"aa": 11}, event="data", id=0.25) == "0.25"
        event = news.next()
        assert (event.event, event.json(), event.id) == ("data", {"aa": 11}, "0.25")
        assert sports.quiet(0.1) == []
        # publishAll(data): every pool
        requests.post(f"{srv.origin}/_test/publish_all", json={"data": "all"}, timeout=5)
        assert news.next().data == "all" and sports.next().data == "all"


def test_ping_payload_is_a_comment(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"url_prefix": "/stream"})
    with SSE.open(srv.origin + "/stream/channels/news") as news:
        wait_count(srv, "news", 1)
        news.quiet(0.05)
        start = len(news.raw)
        assert publish(srv, "news", ":ping") == ""
        publish(srv, "news", "after")
        assert news.next().data == "after"
        assert bytes(news.raw)[start:].startswith(b":ping\n\ndata: after\n")
