# ruff: noqa: F811 - pytest fixtures imported from redis_support are parameters here
"""The benchmark's own pieces, at tiny sizes against a real server (no timing asserted)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as side_by_side_cli
from bench import loadgen, report, scenarios, sidebyside
from bench import publish as publish_bench
from bench import suite as cli
from bench.loop import Loop
from bench.procs import Server, start_server
from bench.targets import TARGETS, redis_unavailable
from flask_signal.hub import counts

from .redis_support import RedisServer, own_redis  # noqa: F401 - fixtures

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


# -- side by side: every target of python -m bench, at tiny sizes ----------------------------

TINY: dict[str, dict[str, Any]] = {
    "capacity": {"n": 40, "swarm_size": 10, "settle": 0.2},
    "fanout": {"peers": 12, "msgs": 5, "warmup": 1},
    "pingpong": {"pairs": 2, "seconds": 0.5, "warmup": 0.2},
}


def required(why: str | None) -> None:
    """Fail under CI, skip elsewhere, when a real part of the test is missing."""
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required under CI: {why}")
    pytest.skip(why)


def check_side_by_side(results: list[dict[str, Any]], names: list[str]) -> None:
    assert [(r["scenario"], r["target"]) for r in results] == [(s, n) for s in TINY for n in names]
    for r in results:
        assert r["status"] == "ok", r
        assert r["checks"]["ok"] is True, r
        assert set(r["cpu"]) >= {"generator", "server_core_busy", "generator_bound"}
        if r["scenario"] == "capacity":
            assert r["checks"]["streams"] == r["checks"]["expected"] == 40
            assert set(r["metrics"]) >= {"rss_per_stream_kb", "connects_per_s"}
        elif r["scenario"] == "fanout":
            assert r["checks"]["delivered"] == r["checks"]["expected"] == 60
            assert {"last_p50_ms", "last_p99_ms"} <= set(r["metrics"])
        else:
            assert r["checks"]["delivered"] > 0
            assert set(r["metrics"]) >= {"signals_per_s", "rtt_p50_ms", "rtt_p99_ms"}
        if TARGETS[r["target"]].uses_redis:
            # One count per worker; the workers used their own redis-server (a worker
            # that no request reached may have had no need to connect).
            counts = r["redis_connections_per_worker"]
            assert len(counts) == r["workers"] and sum(counts) >= 1, r


def test_every_target_side_by_side_with_the_load_generator() -> None:
    script = loadgen.find()
    required(loadgen.unavailable(script))
    required(redis_unavailable())
    names = ["ceiling", "memory", "redis", "redis-2w", "gunicorn"]
    results = sidebyside.run(
        names,
        list(TINY),
        TINY,
        repeat=1,
        pin=False,
        generator=script,
        say=lambda _: None,
        fresh=False,  # one server per target: the same runs, fewer server starts
    )
    check_side_by_side(results, names)
    assert [r["workers"] for r in results[: len(names)]] == [1, 1, 1, 2, 1]
    ratios = sidebyside.ratios(results)
    assert set(ratios) == {"ceiling", "memory"}  # koa-signal was not asked for
    assert ratios["ceiling"]["ceiling"]["signals_per_s"] == 1.0
    assert set(ratios["ceiling"]["gunicorn"]) == set(sidebyside.FIGURES)
    table = sidebyside.table(results, names)
    assert "/ ceiling" in table and "Redis connections per worker" in table
    tables = sidebyside.markdown(results, names).split("\n\n")
    assert [t.splitlines()[0] for t in tables if t.endswith(":")] == [
        "measured:",
        "ratio to the ceiling:",
    ]
    rows = [line for line in "\n".join(tables).splitlines() if line.startswith("| ")]
    assert len(rows) == 2 * (1 + len(sidebyside.FIGURES))


def test_own_generator_and_an_unavailable_koa_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A koa-signal that is not there is reported, with what to do; the run goes on.
    monkeypatch.setenv("KOA_SIGNAL", str(tmp_path / "no-such-checkout"))
    out = tmp_path / "side-by-side.json"
    argv = ["fanout", "--targets", "ceiling,koa-signal,memory", "--generator", "own"]
    argv += ["--repeat", "1", "--fanout-peers", "12", "--fanout-msgs", "5"]
    argv += ["--no-pin", "-q", "--output", str(out)]
    assert side_by_side_cli.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["generator"] == "bench (own)"
    koa = [r for r in doc["results"] if r["target"] == "koa-signal"]
    assert [r["status"] for r in koa] == ["unavailable"]
    assert "koa-signal" in koa[0]["reason"]
    ok = [r for r in doc["results"] if r["target"] != "koa-signal"]
    for r in ok:
        assert r["status"] == "ok" and r["checks"]["ok"] is True, r
    assert [r["checks"]["delivered"] for r in ok] == [60, 60]
    assert set(doc["ratios"]) == {"ceiling", "memory"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["ceiling", "koa-signal", "memory"]


def test_publish_bench_batches_concurrent_events(own_redis: RedisServer) -> None:
    """``bench/publish.py`` at a tiny size: events flow, and concurrent publishers share
    script calls (far fewer operation keys than events)."""
    before = counts["redis_publish_batches"]
    result = publish_bench.one_round(own_redis.url, concurrency=10, seconds=0.5)
    assert result["events_per_s"] > 0
    assert result["cpu_us_per_event"] > 0 and result["redis_cpu_us_per_event"] > 0
    events = result["events_per_s"] * 0.5
    batches = counts["redis_publish_batches"] - before
    assert 0 < batches < events
    assert result["redis_keys"] < events
