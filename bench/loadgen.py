"""Driving the shared protocol load generator (``bench.js``, Node 20 and a C epoll engine).

The generator is not part of this repository: it is found beside it
(``../shared/loadgen/bench.js`` from any parent of the checkout) or named by
``--loadgen`` / ``$BENCH_LOADGEN``. Each scenario is one run of it, pinned to
core 1 when the server is pinned to core 0; it prints one JSON line, which
:func:`run` turns into the bench's own shape: ``metrics``, ``checks``, ``cpu``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .procs import (
    GENERATOR_CORE,
    ROOT,
    Server,
    client_connections,
    cpu_seconds,
    forked,
    machine_busy_seconds,
    own_cpu_seconds,
    rss_kb,
)

SCENARIOS = ("capacity", "fanout", "pingpong")


def find(explicit: str | None = None) -> Path | None:
    """The generator's ``bench.js``: ``explicit``, ``$BENCH_LOADGEN``, or beside the checkout."""
    named = explicit or os.environ.get("BENCH_LOADGEN")
    if named:
        path = Path(named)
        path = path / "bench.js" if path.is_dir() else path
        return path if path.is_file() else None
    for parent in ROOT.parents:
        candidate = parent / "shared" / "loadgen" / "bench.js"
        if candidate.is_file():
            return candidate
    return None


def unavailable(path: Path | None) -> str | None:
    if path is None:
        return "the load generator was not found: pass --loadgen PATH/TO/bench.js"
    if shutil.which("node") is None:
        return "node is not installed"
    return None


def argv(scenario: str, sizes: dict[str, Any]) -> list[str]:
    """The generator's options for one scenario at ``sizes``."""
    if scenario == "capacity":
        return [
            "--n",
            str(sizes["n"]),
            "--swarm-size",
            str(sizes["swarm_size"]),
            "--settle",
            str(int(sizes["settle"] * 1000)),
        ]
    if scenario == "fanout":
        return ["--peers", str(sizes["peers"]), "--msgs", str(sizes["msgs"])] + (
            ["--warmup", str(sizes["warmup"])] if "warmup" in sizes else []
        )
    if scenario == "pingpong":
        return [
            "--pairs",
            str(sizes["pairs"]),
            "--seconds",
            str(sizes["seconds"]),
            "--warmup-seconds",
            str(sizes.get("warmup", 2)),
        ]
    raise ValueError(f"unknown scenario {scenario!r}")


def redis_connections(server: Server) -> list[int]:
    """Connections each worker holds to its redis-server."""
    if server.redis is None:
        return []
    port = server.redis.port
    return [client_connections([pid], port, remote=True) for pid in server.worker_pids()]


def run(
    script: Path,
    scenario: str,
    server: Server,
    prefix: str,
    sizes: dict[str, Any],
    *,
    pin: bool,
    timeout: float = 600,
) -> dict[str, Any]:
    """One scenario against a running server; raises ``RuntimeError`` when it fails."""
    workers = server.worker_pids()
    aux = workers[1:] + ([server.redis.proc.pid] if server.redis else [])
    cmd = ["node", str(script), scenario, "--url", f"http://127.0.0.1:{server.port}{prefix}"]
    cmd += ["--pid", str(workers[0])] + (["--aux-pid", ",".join(map(str, aux))] if aux else [])
    cmd += argv(scenario, sizes)
    if pin:
        cmd = ["taskset", "-c", str(GENERATOR_CORE), *cmd]
    measured = server.server_pids()
    idle_kb = sum(rss_kb(pid) for pid in workers)
    cpu0 = {pid: cpu_seconds(pid) for pid in measured}
    machine0, t0 = machine_busy_seconds(), time.perf_counter()
    before = os.times()
    own0 = own_cpu_seconds()
    proc = subprocess.Popen(
        cmd, cwd=script.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # While it runs: the most Redis connections any worker held (the pool's high-water mark).
    most_redis = redis_connections(server)
    deadline = time.monotonic() + timeout
    pause = 0.25
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the load generator ran over {timeout:g} s")
        time.sleep(pause)
        looked = time.perf_counter()
        now = redis_connections(server)
        most_redis = [max(a, b) for a, b in zip(most_redis, now, strict=True)]
        # Each look reads /proc/net/tcp, long with 10k streams: at most 5 % of a core.
        pause = max(0.25, 20 * (time.perf_counter() - looked))
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if server.forks and sorted(forked(server.proc.pid)) != sorted(workers):
        raise RuntimeError(
            f"workers {workers} were replaced by {forked(server.proc.pid)} during the run:\n"
            + server.log_tail()
        )
    after = os.times()
    generator = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    server_cpu = sum(cpu_seconds(pid) - t for pid, t in cpu0.items())
    own = own_cpu_seconds() - own0
    # Everything else the machine did meanwhile.
    others = (machine_busy_seconds() - machine0 - generator - server_cpu - own) / wall
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"the load generator failed (exit {proc.returncode}): {tail}")
    raw = json.loads(lines[-1])
    if "error" in raw:
        raise RuntimeError(f"the load generator failed: {raw['error'].splitlines()[0]}")
    result = shape(scenario, raw, sizes, idle_kb, len(workers))
    result["cpu"].update(
        {
            "others": round(max(others, 0.0), 3),
            "contended": others > 0.25,
            "whole_run_s": round(wall, 2),
            "bench": round(own / wall, 3),
        }
    )
    if server.redis is not None:
        result["redis_connections_per_worker"] = most_redis
    result["raw"] = raw
    return result


def shape(
    scenario: str, raw: dict[str, Any], sizes: dict[str, Any], idle_kb: int, workers: int
) -> dict[str, Any]:
    """The generator's JSON line as ``metrics``, ``checks`` and ``cpu``."""
    if scenario == "capacity":
        # The generator reads the RSS of --pid and of each --aux-pid; the workers come first.
        total = (raw.get("rss_kb") or 0) + sum((raw.get("aux_rss_kb") or [])[: workers - 1])
        n = sizes["n"]
        metrics = {
            "rss_per_stream_kb": round((total - idle_kb) / n, 2),
            "connects_per_s": raw["connects_per_s"],
        }
        checks = {
            "streams": raw["connected"],
            "expected": n,
            "failed": raw["failed"],
            "joins_seen": raw.get("joins_seen"),
            "errors": raw.get("errors") or {},
            "ok": raw["connected"] == n and not raw["failed"] and not raw.get("timed_out"),
        }
    elif scenario == "fanout":
        metrics = {
            "last_p50_ms": raw["last_p50_ms"],
            "last_p99_ms": raw["last_p99_ms"],
            "first_p50_ms": raw["first_p50_ms"],
        }
        checks = {
            "delivered": raw["delivered"],
            "expected": raw["expected"],
            "post_errors": raw["post_errors"] + raw["post_non2xx"],
            "ok": raw["delivered"] == raw["expected"]
            and not raw["post_errors"]
            and not raw["post_non2xx"]
            and not raw.get("stray_events"),
        }
    else:
        metrics = {
            "signals_per_s": raw["signals_per_s"],
            "rtt_p50_ms": raw["rtt_p50_ms"],
            "rtt_p99_ms": raw["rtt_p99_ms"],
        }
        checks = {
            "delivered": raw["delivered"],
            "post_errors": raw["post_errors"] + raw["post_non2xx"],
            "ok": raw["delivered"] > 0 and not raw["post_errors"] and not raw["post_non2xx"],
        }
    server_pct = raw.get("server_cpu_pct") or 0
    aux_pct = sum(p or 0 for p in raw.get("aux_cpu_pct") or [])
    cpu = {
        "generator": round((raw.get("gen_cpu_pct") or 0) / 100, 3),
        "server_core_busy": round((server_pct + aux_pct) / 100, 3),
        # The C engine busy-polls while measuring when pinned apart from the server
        # (``spin``); then its busy share, not its CPU, says whether it kept up.
        "spin": bool(raw.get("spin")),
        "generator_busy": round((raw.get("engine_busy_pct") or 0) / 100, 3),
    }
    return {"params": dict(sizes), "metrics": metrics, "checks": checks, "cpu": cpu}
