"""memory:// and redis:// ping-pong side by side, in one process, no HTTP (load-independent parts).

P pairs of peers of one swarm each, all in one broker (one worker): each peer's reader
greenlet answers every signal it gets with a signal back, so P signals are in flight at
once. Each round runs memory:// then redis:// for the same time; the ratio of their
signals per second is what scale-out costs the broker, nothing else. Per signal it also
gives the CPU of this process and of ``redis-server`` (its ``INFO cpu``), the reads
Redis made from its clients' sockets (``total_reads_processed``), and the
greenlet switches (counted with ``greenlet.settrace`` over a separate, shorter run)::

    redis-server --port 7001 --save "" --appendonly no &
    python -m bench.inproc redis://127.0.0.1:7001/0 --pairs 50 --seconds 3 --rounds 3

Times are only compared within a run; switches and CPU per signal hardly depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import gevent
import greenlet
import redis

from flask_signal.brokers.memory import MemoryBroker
from flask_signal.brokers.redis import RedisBroker
from flask_signal.hub import LocalHub, Stream

QUIET = {"heartbeat_interval": 30.0, "peer_ttl": 60.0, "ping_interval": 60.0}


class Pairs:
    """P pairs bouncing signals through one broker until stopped."""

    def __init__(self, broker: Any, pairs: int) -> None:
        self.broker = broker
        self.count = 0
        self.stopped = False
        self.greenlets: list[Any] = []
        for _ in range(pairs):
            a, b = Stream(10000), Stream(10000)
            ma = broker.create_swarm(a)
            mb = broker.join_swarm(ma.id, b)
            a.get()
            b.get()  # the join's frames
            self.greenlets.append(gevent.spawn(self._bounce, b, ma.id, ma.cid, mb.token))
            self.greenlets.append(gevent.spawn(self._bounce, a, ma.id, mb.cid, ma.token))
            broker.signal(ma.id, 0, cid=mb.cid, token=ma.token)

    def _bounce(self, stream: Stream, swarm: str, to: str, token: str) -> None:
        while not self.stopped:
            got = stream.get()
            if got is None:
                continue
            self.count += got.count(b"event: signal")
            self.broker.signal(swarm, 1, cid=to, token=token)

    def stop(self) -> None:
        self.stopped = True
        gevent.killall(self.greenlets)


def redis_cpu(client: redis.Redis | None) -> tuple[float, int]:
    """redis-server's CPU seconds so far, and the reads from its clients' sockets."""
    if client is None:
        return 0.0, 0
    info = client.info("cpu")
    reads = int(client.info("stats")["total_reads_processed"])
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), reads


def measure(broker: Any, pairs: int, seconds: float, client: redis.Redis | None) -> dict[str, Any]:
    run = Pairs(broker, pairs)
    gevent.sleep(0.3)  # warm: scripts cached, connections open
    c0, r0, t0, n0 = time.process_time(), redis_cpu(client), time.monotonic(), run.count
    gevent.sleep(seconds)
    c1, r1, t1, n1 = time.process_time(), redis_cpu(client), time.monotonic(), run.count
    run.stop()
    switches = [0]

    def trace(event: str, args: Any) -> None:
        if event == "switch":
            switches[0] += 1

    run = Pairs(broker, pairs)
    gevent.sleep(0.2)
    n2 = run.count
    old = greenlet.settrace(trace)
    gevent.sleep(min(seconds, 1.0))
    greenlet.settrace(old)
    n3 = run.count
    run.stop()
    n = max(n1 - n0, 1)
    return {
        "signals_per_s": round(n / (t1 - t0)),
        "cpu_ms_per_signal": round((c1 - c0) * 1000 / n, 4),
        "redis_cpu_ms_per_signal": round((r1[0] - r0[0]) * 1000 / n, 4),
        "redis_reads_per_signal": round((r1[1] - r0[1]) / n, 3),
        "switches_per_signal": round(switches[0] / max(n3 - n2, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swarm-log", type=int, default=1000)
    opts = parser.parse_args()
    client = redis.Redis.from_url(opts.url)
    results: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
    for _ in range(opts.rounds):
        memory = MemoryBroker(hub=LocalHub())
        memory.start()
        results["memory"].append(measure(memory, opts.pairs, opts.seconds, None))
        memory.close()
        prefix = f"inproc{os.getpid()}:"
        broker = RedisBroker(
            opts.url, hub=LocalHub(), prefix=prefix, swarm_log=opts.swarm_log, **QUIET
        )
        broker.start()
        results["redis"].append(measure(broker, opts.pairs, opts.seconds, client))
        broker.close()
    ratios = [
        r["signals_per_s"] / m["signals_per_s"]
        for m, r in zip(results["memory"], results["redis"], strict=True)
    ]
    print(json.dumps(results))
    for name, rows in results.items():
        best = sorted(rows, key=lambda row: row["signals_per_s"])[len(rows) // 2]
        print(name, json.dumps(best))
    print("redis/memory signals/s per round:", ", ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    main()
