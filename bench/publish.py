"""Channel events published through Redis by one process: rate, and CPU per event.

C greenlets of one ``RedisBroker`` each publish to a channel of its own, one event after
the other, for S seconds: as many requests of one worker publishing at once. Per event
it gives the CPU of this process and of ``redis-server`` (its ``INFO cpu``), and the
keys Redis holds at the end (the histories, and the operation keys each call keeps for
two minutes: see ``docs/scale-out.md``)::

    redis-server --port 7001 --save "" --appendonly no &
    python -m bench.publish redis://127.0.0.1:7001/0 --concurrency 50 --seconds 3

Times are only compared within a run (``--rounds``), on a Redis flushed before each.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import gevent
import redis

from flask_signal.brokers.redis import RedisBroker
from flask_signal.hub import LocalHub


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    broker = RedisBroker(url, hub=LocalHub(), prefix="bench:")
    broker.start()
    published = 0
    stop = False

    def publisher(n: int) -> None:
        nonlocal published
        while not stop:
            broker.publish([f"room{n}"], {"text": "hello", "n": published}, event="message")
            published += 1

    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    jobs = [gevent.spawn(publisher, n) for n in range(concurrency)]
    gevent.sleep(0.5)  # warm: scripts loaded, histories made
    count, cpu, rcpu, start = published, _cpu(), redis_cpu(), time.perf_counter()
    gevent.sleep(seconds)
    count = published - count
    elapsed = time.perf_counter() - start
    cpu, rcpu = _cpu() - cpu, redis_cpu() - rcpu
    stop = True
    gevent.joinall(jobs)
    keys = client.dbsize()
    broker.close()
    return {
        "events_per_s": round(count / elapsed),
        "cpu_us_per_event": round(cpu * 1e6 / count, 1),
        "redis_cpu_us_per_event": round(rcpu * 1e6 / count, 1),
        "redis_keys": keys,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    opts = parser.parse_args()
    for _ in range(opts.rounds):
        print(json.dumps(one_round(opts.url, opts.concurrency, opts.seconds)), flush=True)


if __name__ == "__main__":
    main()
