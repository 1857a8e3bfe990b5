"""sse.io's initial fetch on a declared stream (``signal.subscription(..., initial)``),
against a running server: the response starts before the fetch returns, live events
wait behind its result, a failing fetch is an ``error`` event on an open stream."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import requests

from tests.servers import Server, start_server
from tests.support import SSE

_gates = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("fetch"), app="tests.client_app:create_app()")
    yield server
    server.stop()


def post(srv: Server, path: str, **body: object) -> None:
    response = requests.post(srv.origin + path, json=body, timeout=5)
    assert response.status_code == 200, response.text


def test_headers_and_first_bytes_go_out_before_the_fetch_returns(srv: Server) -> None:
    gate = f"g{next(_gates)}"
    with SSE.open(f"{srv.origin}/fetch/slow?gate={gate}&user=ann") as sse:
        # The fetch is blocked on the gate: the head and the opening comment are out.
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.quiet(0.2) == []
        assert bytes(sse.raw) == b":ok\n\n"
        post(srv, "/_test/publish", channel="fetch.slow", data="during")
        assert sse.quiet(0.2) == []  # held behind the fetch's result
        post(srv, f"/_test/gate/{gate}")
        first, second = sse.events(2)
        assert (first.event, first.json()) == ("init", {"kind": "slow", "user": "ann"})
        assert second.data == "during"


def test_a_failing_fetch_sends_an_error_event_and_keeps_the_stream(srv: Server) -> None:
    with SSE.open(f"{srv.origin}/fetch/raise") as sse:
        assert sse.status == 200
        error = sse.next()
        assert (error.event, error.json()) == ("error", {"error": "initial data failed"})
        post(srv, "/_test/publish", channel="fetch.raise", data="still here")
        assert sse.next().data == "still here"
        assert not sse.ended
    fired = requests.get(srv.origin + "/_test/errors", timeout=5).json()
    assert fired == ["RuntimeError('the database is down')"]
    assert "initial data for" in srv.output() and "the database is down" in srv.output()


def test_a_string_result_is_sent_as_it_is(srv: Server) -> None:
    with SSE.open(f"{srv.origin}/fetch/string") as sse:
        sse.next()
        assert bytes(sse.raw) == (b":ok\n\nevent: init\ndata: first line\ndata: second line\n\n")


def test_a_client_gone_before_the_fetch_returns_leaves_nothing(srv: Server) -> None:
    gate = f"g{next(_gates)}"
    with SSE.open(f"{srv.origin}/fetch/gone?gate={gate}") as sse:
        assert sse.status == 200
    post(srv, f"/_test/gate/{gate}")
    deadline = time.monotonic() + 5
    while srv.count("fetch.gone") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.count("fetch.gone") == 0
    with SSE.open(f"{srv.origin}/fetch/gone") as again:
        assert again.next().json() == {"kind": "gone", "user": None}
