"""Printing results, and comparing them with a baseline."""

from __future__ import annotations

import math
from typing import Any

#: Every compared metric, and whether more of it is better. The others
#: (first_p50_ms, msgs_per_s) are printed but too noisy or too derived to gate on.
HIGHER_IS_BETTER = {
    "connects_per_s": True,
    "churn_per_s": True,
    "signals_per_s": True,
    "rss_per_stream_kb": False,
    "connect_p50_ms": False,
    "connect_p99_ms": False,
    "last_p50_ms": False,
    "last_p99_ms": False,
    "rtt_p50_ms": False,
    "rtt_p99_ms": False,
}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one scenario as one result: the median of each figure.

    Every run's checks must hold; any generator-bound or contended run marks
    the result. The runs themselves are kept under ``runs``.
    """
    if len(runs) == 1:
        return runs[0]
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        return {**bad[0], "runs": runs}
    merged = dict(runs[0])
    merged["metrics"] = {
        name: round(median([r["metrics"][name] for r in runs]), 3) for name in runs[0]["metrics"]
    }
    cpu: dict[str, Any] = {}
    for name, value in runs[0]["cpu"].items():
        values = [r["cpu"][name] for r in runs]
        if isinstance(value, bool):
            cpu[name] = any(values)
        elif isinstance(value, (int, float)):
            cpu[name] = round(median(values), 3)
    merged["cpu"] = cpu
    merged["checks"] = {**runs[-1]["checks"], "ok": all(r["checks"]["ok"] for r in runs)}
    merged["generator_bound"] = cpu["generator_bound"]
    merged["runs"] = [{k: r[k] for k in ("metrics", "checks", "cpu")} for r in runs]
    return merged


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
            if cpu.get("contended"):
                detail += f"  [contended: other processes used {cpu['others']:.0%} of a core]"
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
