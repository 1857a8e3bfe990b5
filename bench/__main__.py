"""``python -m bench``: flask-signal beside the ceiling and koa-signal, measured in one run.

Run from the repository root; ``python -m bench --help`` lists the options.
``python -m bench.suite`` runs the bench's own scenario suite (churn, channels,
baselines) under gunicorn.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from . import loadgen, sidebyside
from .procs import ROOT, pin_self, raise_fd_limit
from .suite import machine
from .targets import TARGETS

RESULTS = ROOT / "bench" / "results" / "side-by-side.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure flask-signal (memory://, redis://, two workers on Redis, stock "
        "gunicorn -k gevent) side by side with the ceiling (bench/floor.py) and koa-signal, "
        "and report each figure as a ratio to the ceiling and to koa-signal.",
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *loadgen.SCENARIOS],
        metavar="SCENARIO",
        help=f"any of {', '.join(loadgen.SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, any of {', '.join(TARGETS)} (default: all)",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each pair; medians reported (default 3)"
    )
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to core 0 and the generator to core 1",
    )
    p.add_argument(
        "--generator",
        choices=["auto", "loadgen", "own"],
        default="auto",
        help="loadgen: the shared protocol load generator (Node + C); own: this package's "
        "Python generator; auto (default): loadgen when found, else own",
    )
    p.add_argument(
        "--loadgen",
        metavar="PATH",
        help="the load generator's bench.js (default $BENCH_LOADGEN, else "
        "shared/loadgen/bench.js beside the checkout)",
    )
    g = p.add_argument_group("sizes")
    g.add_argument("--capacity-n", type=int, default=10000, help="idle streams (default 10000)")
    g.add_argument("--swarm-size", type=int, default=100, help="streams per swarm (default 100)")
    g.add_argument(
        "--settle", type=float, default=2.0, help="seconds before reading RSS (default 2)"
    )
    g.add_argument("--fanout-peers", type=int, default=1000, help="peers (default 1000)")
    g.add_argument("--fanout-msgs", type=int, default=200, help="broadcasts (default 200)")
    g.add_argument("--pairs", type=int, default=50, help="ping-pong pairs (default 50)")
    g.add_argument(
        "--pingpong-seconds", type=float, default=20.0, help="ping-pong seconds (default 20)"
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"results file (default {RESULTS.relative_to(ROOT)})",
    )
    g.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the tables as Markdown"
    )
    g.add_argument("--note", default="", help="a remark stored in the results' meta")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def sizes(args: argparse.Namespace, generator: Path | None) -> dict[str, dict[str, Any]]:
    return {
        "capacity": {"n": args.capacity_n, "swarm_size": args.swarm_size, "settle": args.settle},
        "fanout": {"peers": args.fanout_peers, "msgs": args.fanout_msgs},
        "pingpong": {"pairs": args.pairs, "seconds": args.pingpong_seconds},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.scenarios or list(loadgen.SCENARIOS)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t!r}: use {', '.join(TARGETS)}")

    def say(text: str) -> None:
        if not args.quiet:
            print(f"[bench] {text}", file=sys.stderr, flush=True)

    generator: Path | None = None
    if args.generator != "own":
        generator = loadgen.find(args.loadgen)
        why = loadgen.unavailable(generator)
        if why:
            if args.generator == "loadgen":
                sys.exit(why)
            say(f"{why}; using the bench's own generator")
            generator = None
    fds = raise_fd_limit()
    if args.pin:
        pin_self()
    meta = {
        **machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": args.note,
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "generator": str(generator) if generator else "bench (own)",
        "settings": {
            "pinned": args.pin,
            "repeat": args.repeat,
            "ulimit_n": fds,
            "targets": {t: TARGETS[t].command for t in targets},
        },
    }
    results = sidebyside.run(
        targets,
        names,
        sizes(args, generator),
        repeat=args.repeat,
        pin=args.pin,
        generator=generator,
        say=say,
    )
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k not in ("raw", "runs")}))
    doc = {"meta": meta, "results": results, "ratios": sidebyside.ratios(results)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n" + sidebyside.table(results, targets), file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(sidebyside.markdown(results, targets))
    failed = [
        r
        for r in results
        if r["status"] == "error" or (r["status"] == "ok" and not r["checks"]["ok"])
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
