"""``python -m bench.suite``: the bench's own scenarios under gunicorn, with a baseline.

Run from the repository root; ``python -m bench --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from . import report, scenarios
from .loop import Loop
from .procs import ROOT, Redis, pin_self, raise_fd_limit, start_redis, start_server

RESULTS = ROOT / "bench" / "results" / "latest.json"
BASELINE = ROOT / "bench" / "baseline.json"
BROKERS = {"memory": 1, "redis": 2}  # broker -> gunicorn workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description="Benchmark flask_signal under gunicorn: memory, connects, churn, fan-out, "
        "ping-pong and channel fan-out, with memory:// and redis:// brokers.",
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *scenarios.SCENARIOS],
        metavar="SCENARIO",
        help=f"any of {', '.join(scenarios.SCENARIOS)} (default: all)",
    )
    g = p.add_argument_group("server")
    g.add_argument(
        "--app",
        default="bench.app:app",
        help="WSGI app for gunicorn (default bench.app:app; example_app:app serves "
        "swarms only unless it reads FLASK_SIGNAL_* from the environment)",
    )
    g.add_argument(
        "--worker-class",
        "-k",
        default="gevent",
        help="gunicorn worker class (default gevent), e.g. flask_signal.worker.GeventWorker",
    )
    g.add_argument(
        "--brokers",
        default="memory,redis",
        help="comma-separated: memory (1 worker), redis (2 workers and a redis-server "
        "started on a free port); default memory,redis",
    )
    g.add_argument(
        "--pin",
        action="store_true",
        help="pin the server (and redis-server) to core 0, this generator to core 1",
    )
    g.add_argument(
        "--concurrency", type=int, default=200, help="streams being set up at once (default 200)"
    )
    g.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each scenario, each on a fresh server; the median is reported",
    )
    g = p.add_argument_group("sizes")
    g.add_argument(
        "--capacity-n", type=int, default=2000, help="capacity: idle streams (default 2000)"
    )
    g.add_argument(
        "--swarm-size", type=int, default=100, help="capacity: streams per swarm (default 100)"
    )
    g.add_argument(
        "--settle", type=float, default=2.0, help="capacity: seconds before reading RSS (default 2)"
    )
    g.add_argument(
        "--connects-n", type=int, default=2000, help="connects: swarm creations (default 2000)"
    )
    g.add_argument("--churn-seconds", type=float, default=3.0, help="churn: seconds (default 3)")
    g.add_argument(
        "--churn-concurrency", type=int, default=50, help="churn: peers at once (default 50)"
    )
    g.add_argument(
        "--fanout-peers", type=int, default=200, help="fanout: peers in the swarm (default 200)"
    )
    g.add_argument("--fanout-msgs", type=int, default=100, help="fanout: broadcasts (default 100)")
    g.add_argument("--pairs", type=int, default=10, help="pingpong: swarms of two (default 10)")
    g.add_argument(
        "--pingpong-seconds", type=float, default=5.0, help="pingpong: seconds (default 5)"
    )
    g.add_argument(
        "--channel-subs", type=int, default=200, help="channel: subscribers (default 200)"
    )
    g.add_argument("--channel-msgs", type=int, default=100, help="channel: publishes (default 100)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"results file (default {RESULTS.relative_to(ROOT)})",
    )
    g.add_argument("--compare", type=Path, metavar="BASELINE", help="compare with a baseline file")
    g.add_argument(
        "--tolerance",
        type=float,
        default=15.0,
        help="percent a metric may get worse before it is a regression (default 15)",
    )
    g.add_argument("--fail-on-regression", action="store_true", help="exit 1 on a regression")
    g.add_argument(
        "--save-baseline",
        type=Path,
        nargs="?",
        const=BASELINE,
        metavar="FILE",
        help=f"also write the results as a baseline (default {BASELINE.relative_to(ROOT)})",
    )
    g.add_argument("--note", default="", help="a remark stored in the results' meta")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def sizes(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {
        "capacity": {"n": args.capacity_n, "swarm_size": args.swarm_size, "settle": args.settle},
        "connects": {"n": args.connects_n},
        "churn": {"seconds": args.churn_seconds, "concurrency": args.churn_concurrency},
        "fanout": {"peers": args.fanout_peers, "msgs": args.fanout_msgs},
        "pingpong": {"pairs": args.pairs, "seconds": args.pingpong_seconds},
        "channel": {"subscribers": args.channel_subs, "msgs": args.channel_msgs},
    }[name]


def redis_unavailable() -> str | None:
    """Why Redis runs cannot happen here, or ``None``."""
    try:
        import flask_signal.brokers.redis  # noqa: F401
    except Exception as exc:
        return f"flask_signal.brokers.redis does not import: {exc!r}"
    return None


def run_one(args: argparse.Namespace, name: str, broker: str, say: Any) -> dict[str, Any]:
    workers = BROKERS[broker]
    result: dict[str, Any] = {
        "scenario": name,
        "broker": broker,
        "workers": workers,
        "worker_class": args.worker_class,
        "app": args.app,
        "pinned": args.pin,
    }
    redis: Redis | None = None
    server = None
    loop = None
    try:
        if broker == "redis":
            why = redis_unavailable()
            if why is None:
                try:
                    redis = start_redis(args.pin)
                except RuntimeError as exc:
                    why = str(exc)
            if why is not None:
                return {**result, "status": "unavailable", "reason": why}
        key = "bench-" + secrets.token_hex(16)
        try:
            server = start_server(
                app=args.app,
                worker_class=args.worker_class,
                workers=workers,
                broker_url=redis.url if redis else "memory://",
                publish_key=key,
                pin=args.pin,
                redis=redis,
            )
        except RuntimeError as exc:
            if redis is not None:
                return {**result, "status": "unavailable", "reason": str(exc)}
            raise
        loop = Loop("127.0.0.1", server.port)
        ctx = scenarios.Context(server, loop, key, args.pin, args.concurrency)
        try:
            scenarios.probe(ctx, channel=name == "channel")
        except (scenarios.ScenarioError, TimeoutError) as exc:
            if redis is not None:
                return {**result, "status": "unavailable", "reason": f"probe failed: {exc}"}
            raise
        say(f"{name} / {broker}: running ({sizes(args, name)})")
        out = scenarios.SCENARIOS[name](ctx, **sizes(args, name))
        result.update(out)
        result["status"] = "ok"
        result["generator_bound"] = out["cpu"]["generator_bound"]
        return result
    except Exception as exc:
        tail = server.log_tail() if server else ""
        if not args.quiet:
            traceback.print_exc()
        return {
            **result,
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "server_log": tail,
        }
    finally:
        if loop is not None:
            loop.close()
        if server is not None:
            server.stop()
        elif redis is not None:
            redis.stop()


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {model}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            n: version(n) for n in ("flask", "gevent", "gunicorn", "redis", "flask-signal")
        },
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.scenarios or list(scenarios.SCENARIOS)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in BROKERS:
            sys.exit(f"unknown broker {b!r}: use memory, redis")

    def say(text: str) -> None:
        if not args.quiet:
            print(f"[bench] {text}", file=sys.stderr, flush=True)

    fds = raise_fd_limit()
    if args.pin:
        pin_self()
    meta = {
        **machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": args.note,
        "command": "python -m bench.suite "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "worker_class": args.worker_class,
            "app": args.app,
            "pinned": args.pin,
            "worker_connections": 20000,
            "ulimit_n": fds,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "brokers": {b: f"{BROKERS[b]} worker(s)" for b in brokers},
        },
    }
    results = []
    for broker in brokers:
        for name in names:
            result = report.merge([run_one(args, name, broker, say) for _ in range(args.repeat)])
            print(json.dumps(result), flush=True)
            results.append(result)
    doc = {"meta": meta, "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n" + report.table(results), file=sys.stderr)
    failed = [
        r
        for r in results
        if r["status"] == "error" or (r["status"] == "ok" and not r["checks"]["ok"])
    ]
    if args.save_baseline:
        args.save_baseline.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"baseline written to {args.save_baseline}")
    code = 1 if failed else 0
    if args.compare:
        baseline = json.loads(args.compare.read_text())
        text, regressions = report.compare(results, baseline, args.tolerance)
        print(
            f"\ncompared with {args.compare} ({baseline.get('meta', {}).get('date', '?')}), "
            f"tolerance {args.tolerance:g}%:\n{text}",
            file=sys.stderr,
        )
        if regressions:
            print("\nregressions:\n  " + "\n  ".join(regressions), file=sys.stderr)
            if args.fail_on_regression:
                code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
