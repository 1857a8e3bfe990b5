"""The benchmark's own pieces, at tiny sizes against a real server (no timing asserted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import suite as cli
from bench import report, scenarios
from bench.loop import Loop
from bench.procs import Server, start_server

KEY = "bench-test-key"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = start_server(
        app="bench.app:app",
        worker_class="gevent",
        workers=1,
        broker_url="memory://",
        publish_key=KEY,
        pin=False,
    )
    yield srv
    srv.stop()


@pytest.fixture
def ctx(server: Server) -> Iterator[scenarios.Context]:
    loop = Loop("127.0.0.1", server.port)
    yield scenarios.Context(server, loop, KEY, pinned=False, concurrency=20)
    loop.close()


def check_shape(result: dict[str, object]) -> None:
    assert set(result) >= {"params", "metrics", "checks", "cpu"}
    cpu = result["cpu"]
    assert isinstance(cpu, dict)
    assert set(cpu) >= {"generator", "server", "server_core_busy", "generator_bound"}


def test_capacity_and_connects(ctx: scenarios.Context) -> None:
    result = scenarios.capacity(ctx, n=30, swarm_size=10, settle=0.1)
    check_shape(result)
    assert result["checks"]["streams"] == 30
    assert result["checks"]["server_connections_added"] == 30
    assert set(result["metrics"]) == {"rss_per_stream_kb", "connects_per_s"}
    scenarios.close_all(ctx)
    result = scenarios.connects(ctx, n=20)
    check_shape(result)
    assert result["checks"] == {"streams": 20, "expected": 20, "ok": True}


def test_churn_returns_to_baseline(ctx: scenarios.Context) -> None:
    result = scenarios.churn(ctx, seconds=0.5, swarms=2, concurrency=4)
    check_shape(result)
    checks = result["checks"]
    assert checks["churned"] > 0
    assert checks["joins_heard"] == checks["leaves_heard"] == checks["churned"]
    assert checks["streams_after"] == checks["streams_before"] == 2
    assert checks["ok"] is True


def test_fanout_and_channel_deliver_exactly(ctx: scenarios.Context) -> None:
    result = scenarios.fanout(ctx, peers=12, msgs=5, warmup=1)
    check_shape(result)
    assert result["checks"] == {"delivered": 60, "expected": 60, "ok": True}
    assert {"last_p50_ms", "last_p99_ms"} <= set(result["metrics"])
    result = scenarios.channel(ctx, subscribers=7, msgs=4, warmup=1)
    assert result["checks"] == {"delivered": 28, "expected": 28, "ok": True}


def test_pingpong_loses_nothing(ctx: scenarios.Context) -> None:
    result = scenarios.pingpong(ctx, pairs=2, seconds=0.3, warmup=0.1)
    check_shape(result)
    checks = result["checks"]
    assert checks["sent"] == checks["delivered"] > 0
    assert checks["refused"] == 0


def test_cli_writes_results_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, base = tmp_path / "latest.json", tmp_path / "baseline.json"
    argv = ["fanout", "--brokers", "memory", "--fanout-peers", "5", "--fanout-msgs", "3", "-q"]
    assert cli.main([*argv, "--output", str(out), "--save-baseline", str(base)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["meta"]) >= {"machine", "date", "command", "settings"}
    (result,) = doc["results"]
    assert result["status"] == "ok"
    assert result["checks"] == {"delivered": 15, "expected": 15, "ok": True}
    assert json.loads(capsys.readouterr().out.strip())["scenario"] == "fanout"
    # A baseline twice as fast makes every latency a regression.
    faster = json.loads(base.read_text())
    metrics = faster["results"][0]["metrics"]
    for name in ("last_p50_ms", "last_p99_ms"):
        metrics[name] /= 2
    text, regressions = report.compare(doc["results"], faster, tolerance=15)
    assert "REGRESSION" in text
    assert {r.split(":")[0] for r in regressions} >= {"fanout/memory last_p50_ms"}
