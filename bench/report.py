"""Printing results, and comparing them with a baseline."""

from __future__ import annotations

import math
from typing import Any

#: Every compared metric, and whether more of it is better.
HIGHER_IS_BETTER = {
    "connects_per_s": True,
    "churn_per_s": True,
    "signals_per_s": True,
    "msgs_per_s": True,
    "rss_per_stream_kb": False,
    "connect_p50_ms": False,
    "connect_p99_ms": False,
    "last_p50_ms": False,
    "last_p99_ms": False,
    "first_p50_ms": False,
    "rtt_p50_ms": False,
    "rtt_p99_ms": False,
}


def key(result: dict[str, Any]) -> tuple[str, str]:
    return result["scenario"], result["broker"]


def table(results: list[dict[str, Any]]) -> str:
    """One line per run: its metrics, its check, and both sides' CPU."""
    lines = [
        f"{'scenario':<10} {'broker':<7} {'status':<11} {'gen cpu':>7} {'srv cpu':>7}  metrics",
    ]
    for r in results:
        cpu = r.get("cpu") or {}
        status = r["status"]
        if status == "ok" and not r.get("checks", {}).get("ok", True):
            status = "CHECK FAIL"
        gen = f"{cpu['generator']:.0%}" if "generator" in cpu else "-"
        srv = f"{cpu['server_core_busy']:.0%}" if "server_core_busy" in cpu else "-"
        if status in ("ok", "CHECK FAIL"):
            detail = "  ".join(f"{k}={v:g}" for k, v in r["metrics"].items())
            if cpu.get("generator_bound"):
                detail += "  [generator-bound]"
        else:
            detail = str(r.get("reason", ""))[:200]
        lines.append(
            f"{r['scenario']:<10} {r['broker']:<7} {status:<11} {gen:>7} {srv:>7}  {detail}"
        )
    return "\n".join(lines)


def compare(
    results: list[dict[str, Any]], baseline: dict[str, Any], tolerance: float
) -> tuple[str, list[str]]:
    """A table of changes against ``baseline``; and the regressions beyond ``tolerance`` (%)."""
    old = {key(r): r for r in baseline.get("results", []) if r.get("status") == "ok"}
    lines = [
        f"{'scenario':<10} {'broker':<7} {'metric':<18} {'baseline':>10} {'now':>10} {'change':>8}"
    ]
    regressions = []
    for r in results:
        base = old.get(key(r))
        if base is None or r.get("status") != "ok":
            continue
        for name, now in r["metrics"].items():
            then = base["metrics"].get(name)
            if then is None or name not in HIGHER_IS_BETTER or not then or math.isnan(now):
                continue
            change = (now - then) / abs(then) * 100
            worse = -change if HIGHER_IS_BETTER[name] else change
            flag = ""
            if worse > tolerance:
                flag = "  REGRESSION"
                regressions.append(
                    f"{r['scenario']}/{r['broker']} {name}: {then:g} -> {now:g} ({change:+.1f}%)"
                )
            elif worse < -tolerance:
                flag = "  better"
            where = f"{r['scenario']:<10} {r['broker']:<7} {name:<18}"
            lines.append(f"{where} {then:>10g} {now:>10g} {change:>+7.1f}%{flag}")
    return "\n".join(lines), regressions
