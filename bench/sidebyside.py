"""Every target measured side by side in one run, and the ratios between them.

For each repetition, each scenario runs against each target in turn, each on
a fresh server, so a slow spell of a shared machine falls on all of them
rather than on one. The figures of a target are the medians of its runs.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import loadgen, report, scenarios
from .loop import Loop
from .targets import TARGETS, Target, Unavailable

#: The figures compared across targets, and whether more is better.
FIGURES: dict[str, tuple[str, str, bool]] = {
    "rss_per_stream_kb": ("capacity", "memory per idle stream, KB", False),
    "connects_per_s": ("capacity", "stream connects/s", True),
    "last_p50_ms": ("fanout", "fan-out, last delivery p50, ms", False),
    "last_p99_ms": ("fanout", "fan-out, last delivery p99, ms", False),
    "signals_per_s": ("pingpong", "ping-pong, signals/s", True),
    "rtt_p50_ms": ("pingpong", "ping-pong, round trip p50, ms", False),
}
#: Targets every other is divided by, when they ran.
REFERENCES = ("ceiling", "koa-signal", "memory")


def warm(target: Target, server: Any, pin: bool) -> None:
    """A swarm signal end to end before measuring: the server works and has served a request.

    A gunicorn worker is forked before it imports the app (some 15 MB here): its RSS
    read as the idle baseline before that would count the import as the streams'.
    """
    loop = Loop("127.0.0.1", server.port)
    try:
        scenarios.probe(
            scenarios.Context(server, loop, "", pin, prefix=target.prefix), channel=False
        )
    finally:
        loop.close()


def own_generator(
    scenario: str, target: Target, server: Any, sizes: dict[str, Any], pin: bool
) -> dict[str, Any]:
    """The scenario driven by the bench's own Python generator (``--generator own``)."""
    loop = Loop("127.0.0.1", server.port)
    try:
        ctx = scenarios.Context(server, loop, "", pin, prefix=target.prefix)
        scenarios.probe(ctx, channel=False)
        if scenario == "capacity":
            return scenarios.capacity(ctx, **sizes)
        if scenario == "fanout":
            return scenarios.fanout(ctx, **sizes)
        return scenarios.pingpong(ctx, **sizes)
    finally:
        loop.close()


def run_one(
    target: Target,
    scenarios_sizes: list[tuple[str, dict[str, Any]]],
    *,
    pin: bool,
    generator: Path | None,
) -> list[dict[str, Any]]:
    """Scenarios one after another against one fresh server of ``target``."""
    results: list[dict[str, Any]] = []
    base: dict[str, Any] = {"target": target.name, "broker": target.name}
    try:
        server = target.start(pin)
    except Unavailable as exc:
        return [
            {**base, "scenario": s, "status": "unavailable", "reason": str(exc)}
            for s, _ in scenarios_sizes
        ]
    except Exception as exc:
        return [
            {**base, "scenario": s, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            for s, _ in scenarios_sizes
        ]
    try:
        for scenario, sizes in scenarios_sizes:
            result: dict[str, Any] = {**base, "scenario": scenario}
            try:
                if generator is not None:
                    warm(target, server, pin)
                    out = loadgen.run(generator, scenario, server, target.prefix, sizes, pin=pin)
                else:
                    out = own_generator(scenario, target, server, sizes, pin)
            except Exception as exc:
                traceback.print_exc()
                result.update(
                    status="error",
                    reason=f"{type(exc).__name__}: {exc}",
                    server_log=server.log_tail(),
                )
            else:
                result.update(out)
                result["status"] = "ok"
                result["workers"] = len(server.worker_pids())
                result["cpu"].setdefault("generator_bound", False)
                result["generator_bound"] = result["cpu"]["generator_bound"]
            results.append(result)
        return results
    finally:
        server.kill()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged = report.merge(runs)
    redis = [r["redis_connections_per_worker"] for r in runs if "redis_connections_per_worker" in r]
    if redis:
        merged["redis_connections_per_worker"] = [max(c) for c in zip(*redis, strict=True)]
    if len(runs) > 1 and merged["status"] == "ok":
        merged["raw"] = [r.get("raw") for r in runs]
    return merged


def run(
    target_names: list[str],
    scenario_names: list[str],
    sizes: dict[str, dict[str, Any]],
    *,
    repeat: int,
    pin: bool,
    generator: Path | None,
    say: Callable[[str], None],
    fresh: bool = True,
) -> list[dict[str, Any]]:
    """Every scenario against every target, ``repeat`` times, interleaved; medians.

    Each scenario gets a fresh server; without ``fresh``, one server per target
    and repetition runs them all (quicker, for checking the bench itself).
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    skip: dict[str, list[dict[str, Any]]] = {}
    batches = [[s] for s in scenario_names] if fresh else [scenario_names]
    for i in range(repeat):
        for batch in batches:
            for name in target_names:
                if name in skip:
                    continue
                say(f"run {i + 1}/{repeat}: {', '.join(batch)} against {name}")
                results = run_one(
                    TARGETS[name], [(s, sizes[s]) for s in batch], pin=pin, generator=generator
                )
                if results[0]["status"] == "unavailable":
                    say(f"{name}: unavailable: {results[0]['reason']}")
                    skip[name] = [{**results[0], "scenario": s} for s in scenario_names]
                    continue
                for result in results:
                    runs.setdefault((name, result["scenario"]), []).append(result)
    merged = []
    for scenario in scenario_names:
        for name in target_names:
            if name in skip:
                merged.append({**skip[name][0], "scenario": scenario})
            else:
                merged.append(median_of(runs[name, scenario]))
    return merged


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{reference: {target: {figure: value / reference's value}}}`` over the ok results."""
    values: dict[str, dict[str, float]] = {}
    for r in results:
        if r["status"] == "ok":
            for figure, value in r["metrics"].items():
                if figure in FIGURES:
                    values.setdefault(r["target"], {})[figure] = value
    out: dict[str, dict[str, dict[str, float]]] = {}
    for ref in REFERENCES:
        if ref not in values:
            continue
        out[ref] = {
            target: {
                f: round(v / values[ref][f], 3)
                for f, v in figures.items()
                if values[ref].get(f) and not math.isnan(v)
            }
            for target, figures in values.items()
        }
    return out


def table(results: list[dict[str, Any]], target_names: list[str]) -> str:
    """Figures per target, then each as a ratio to the ceiling and to koa-signal."""
    by = {(r["target"], r["scenario"]): r for r in results}
    rel = ratios(results)
    width = max(10, *(len(n) for n in target_names))
    head = f"{'':<32}" + "".join(f"{n:>{width + 1}}" for n in target_names)
    lines = [head]
    notes: list[str] = []
    for figure, (scenario, title, _) in FIGURES.items():
        cells = []
        for name in target_names:
            r = by.get((name, scenario))
            if r is None or r["status"] != "ok":
                cells.append("-" if r is None else r["status"][:width])
                continue
            mark = ""
            if not r["checks"]["ok"]:
                mark = "!"
            elif r["cpu"].get("contended"):
                mark = "*"
            cells.append(f"{r['metrics'][figure]:g}{mark}")
        lines.append(f"{title:<32}" + "".join(f"{c:>{width + 1}}" for c in cells))
        for ref in ("ceiling", "koa-signal"):
            if ref in rel:
                row = [rel[ref].get(name, {}).get(figure) for name in target_names]
                text = ["-" if v is None else f"{v:.2f}x" for v in row]
                lines.append(f"{'  / ' + ref:<32}" + "".join(f"{c:>{width + 1}}" for c in text))
    for r in results:
        if r["status"] == "ok" and r["cpu"].get("contended"):
            notes.append(
                f"* {r['scenario']} / {r['target']}: contended, other processes used "
                f"{r['cpu']['others']:.0%} of a core meanwhile"
            )
        elif r["status"] == "ok" and not r["checks"]["ok"]:
            notes.append(f"! {r['scenario']} / {r['target']}: CHECK FAILED {r['checks']}")
        elif r["status"] != "ok" and r["scenario"] == results[0]["scenario"]:
            notes.append(f"{r['target']}: {r['status']}: {r.get('reason', '')}")
        if r["status"] == "ok" and r.get("redis_connections_per_worker"):
            notes.append(
                f"{r['scenario']} / {r['target']}: Redis connections per worker (most held) "
                f"{r['redis_connections_per_worker']}"
            )
    return "\n".join([*lines, "", *notes])


def number(value: float) -> str:
    """Three significant figures, without an exponent."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(results: list[dict[str, Any]], target_names: list[str]) -> str:
    """The figures and their ratios to the ceiling and to koa-signal as Markdown tables."""
    by = {(r["target"], r["scenario"]): r for r in results}
    rel = ratios(results)
    shown = [n for n in target_names if any(r["target"] == n for r in results)]
    head = "| | " + " | ".join(f"`{n}`" for n in shown) + " |\n|---" + "|---" * len(shown) + "|"
    out = []
    for caption, ref in (
        ("measured", None),
        ("ratio to the ceiling", "ceiling"),
        ("ratio to koa-signal", "koa-signal"),
    ):
        if ref is not None and ref not in rel:
            continue
        rows = [f"{caption}:", "", head]
        for figure, (scenario, title, _) in FIGURES.items():
            cells = []
            for name in shown:
                r = by.get((name, scenario))
                if r is None or r["status"] != "ok":
                    cells.append("—" if r is None else r["status"])
                elif ref is None:
                    mark = " (contended)" if r["cpu"].get("contended") else ""
                    cells.append(f"{number(r['metrics'][figure])}{mark}")
                else:
                    value = rel[ref].get(name, {}).get(figure)
                    cells.append("—" if value is None else f"{value:.2f}")
            rows.append(f"| {title} | " + " | ".join(cells) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out) + "\n"
