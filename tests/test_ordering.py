"""The original Node clients' expectations, tried as moshpit behaves.

moshpit sends each write as its own POST on its own connection, without waiting for the
previous one, and reads its stream with a line parser that turns every non-empty line into
a row. ``tests/compat/ordering.js`` does both: a direct write, then on the next tick a
broadcast, for many trials, counting the trials whose broadcast overtook the direct write.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import SSE
from tests.test_compat import node_script

WORKERS = ["gevent", "flask_signal.worker.GeventWorker"]


def moshpit_run(url: str, trials: int, hold_ms: int = 0) -> dict[str, Any]:
    done = node_script("ordering.js", url, str(trials), str(hold_ms))
    assert done.returncode == 0, done.stderr + done.stdout
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trials"] == trials
    return result


@pytest.mark.single_process
@pytest.mark.parametrize("worker", WORKERS)
def test_writes_on_separate_connections_are_served_in_arrival_order(
    make_server: Any, worker: str
) -> None:
    srv = make_server(worker_class=worker)
    result = moshpit_run(srv.url, 100)
    assert result["swapped"] == 0, result


@pytest.mark.parametrize("worker", WORKERS)
def test_clients_without_accept_get_no_keepalive_rows(make_server: Any, worker: str) -> None:
    srv = make_server({"ping_interval": 0.1}, worker_class=worker)
    # Held open for several ping intervals after the trials: no row but events.
    result = moshpit_run(srv.url, 5, hold_ms=600)
    assert result["rows"] == []
    # A client that asks for an event stream (every browser does) still gets them.
    with SSE.open(srv.url, headers={"Accept": "text/event-stream"}) as sse:
        assert sse.next().event == "connect"
        assert sse.quiet(0.5) == []
        assert b"\n\n:\n\n" in bytes(sse.raw)


def test_keepalive_rows_for_every_client_when_configured(make_server: Any) -> None:
    srv = make_server({"ping_interval": 0.1, "ping_without_accept": True})
    result = moshpit_run(srv.url, 2, hold_ms=600)
    assert result["rows"], "pings were configured for every client"
    assert all(row == [None, ":"] for row in result["rows"]), result["rows"]
