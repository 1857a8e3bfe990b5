"""Instructions per swarm signal through Redis, counted with callgrind (load-independent).

N direct signals between two ``RedisBroker`` s of this one process, each delivered
before the next is sent. Redis's share: run ``redis-server`` under callgrind and give
its pid; its counters are zeroed before the signals and dumped after them::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.redis.%p \\
        redis-server --port 7001 --save "" --appendonly no &
    python -m bench.signal_cost redis://127.0.0.1:7001/0 2000 --redis-pid $!
    grep summary: /tmp/cg.redis.*.1

The Python side (sending, receiving, queueing): the difference of two runs under
callgrind, of 200 and 2200 signals, divided by 2000::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.py.200 \\
        python -m bench.signal_cost redis://127.0.0.1:6379/0 200

``--swarm-log 0`` turns the swarm log off, to compare both in one build.
"""

from __future__ import annotations

import argparse
import subprocess

from flask_signal.brokers.redis import RedisBroker
from flask_signal.hub import LocalHub, Stream

#: Signals sent before counting starts: scripts cached, connections open, log full.
WARM = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("signals", type=int)
    parser.add_argument("--redis-pid", help="a redis-server under callgrind")
    parser.add_argument("--swarm-log", type=int, default=1000)
    opts = parser.parse_args()
    quiet = {"heartbeat_interval": 30.0, "peer_ttl": 60.0, "ping_interval": 60.0}
    brokers = [
        RedisBroker(opts.url, hub=LocalHub(), prefix="cost:", swarm_log=opts.swarm_log, **quiet)
        for _ in range(2)
    ]
    a, b = brokers
    a.start()
    b.start()
    initiator, peer = Stream(10000), Stream(10000)
    m1 = a.create_swarm(initiator)
    m2 = b.join_swarm(m1.id, peer)
    assert m2 is not None
    peer.get()

    def run(count: int) -> None:
        for i in range(count):
            a.signal(m1.id, i, cid=m2.cid, token=m1.token)
            while peer.get() is None:
                pass

    run(WARM)
    if opts.redis_pid:
        subprocess.run(["callgrind_control", "-z", opts.redis_pid], check=True)
    run(opts.signals)
    if opts.redis_pid:
        subprocess.run(["callgrind_control", "-d", opts.redis_pid], check=True)
    a.close()
    b.close()


if __name__ == "__main__":
    main()
