"""Liveness across processes: heartbeats, the reaper, and the fence.

Each process renews its heartbeat key every ``heartbeat_interval``; it expires
after ``peer_ttl``. Each process also records, in its peer set, the peers
whose streams it holds. When a heartbeat expires, a reaper (one process per
interval, under a lock) makes that process's peers leave their swarms, or with
a resume grace puts them in it, as if their streams were lost. When a process
finds its own heartbeat gone (it was reaped, or Redis lost its data), the fence
ends its local streams of peers Redis no longer knows, or that it no longer holds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from redis import exceptions as rexc

from .. import BrokerUnavailable
from .keys import Keys, decode
from .swarms import LocalSwarms

log = logging.getLogger("flask_signal")

#: Makes a peer of a process leave in Redis: (swarm id, cid, process) -> leave outcome.
Leave = Callable[[str, str, str], int]
#: What the fence does with a local peer another process took over: (swarm id, cid).
TakenOver = Callable[[str, str], None]


#: Delete a lock only if its value is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Liveness:
    """The heartbeat and reaper greenlets of one process."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        swarms: LocalSwarms,
        *,
        leave: Leave,
        reap: Leave | None = None,
        taken_over: TakenOver | None = None,
        renew: Callable[[], Iterable[bytes]] | None = None,
        heartbeat_interval: float = 2.0,
        peer_ttl: float = 6.0,
        swarm_ttl: float = 60.0,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        if not 0 < heartbeat_interval * 2 <= peer_ttl:
            raise ValueError("peer_ttl must be at least twice heartbeat_interval")
        self.client = client
        self.keys = keys
        self.swarms = swarms
        self.leave = leave
        #: What the reaper does with a dead process's peer (1 if it counts as reaped).
        self.reap_peer = reap or leave
        self.taken_over = taken_over
        #: Keys that live as long as this process's peers (renewed with the swarms).
        self.renew = renew
        self.heartbeat_interval = heartbeat_interval
        self.peer_ttl = peer_ttl
        self.swarm_ttl = max(swarm_ttl, peer_ttl * 2)
        #: Called after every heartbeat, successful or not (the broker checks its listener).
        self.on_beat = on_beat
        self.process = ""
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        self._beats = 0
        self._refreshed = 0.0
        #: Since when this process's heartbeats have succeeded without a gap.
        self._serving_since: float | None = None
        self._last_beat = 0.0

    def start(self, process: str) -> None:
        self.process = process
        self._beats = 0
        self._refreshed = 0.0
        self._greenlets = [gevent.spawn(self._heartbeat_loop), gevent.spawn(self._reaper_loop)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    def forget(self, pipe: Any) -> None:
        """Queue on ``pipe`` the removal of this process's heartbeat and registration."""
        pipe.delete(self.keys.proc(self.process), self.keys.proc_peers(self.process))
        pipe.srem(self.keys.procs, self.process)

    # -- heartbeat -------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while True:
            started = time.monotonic()
            late = started - self._last_beat > self.heartbeat_interval * 2
            try:
                self.beat()
                self._last_beat = time.monotonic()
                if late or self._last_beat - started > self.heartbeat_interval:
                    # A stall (of Redis, or of this process): the others' beats were
                    # held up too, and may have expired.
                    self._serving_since = None
                elif self._serving_since is None:
                    self._serving_since = started
            except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
                self._serving_since = None
                log.debug("heartbeat failed: %s", exc)
            except Exception:
                log.exception("flask_signal: heartbeat failed")
            if self.on_beat is not None:
                self.on_beat()
            gevent.sleep(self.heartbeat_interval)

    def beat(self) -> None:
        """Renew this process's heartbeat and its swarms' TTLs; record pending leaves."""
        alive = self.keys.proc(self.process)
        peers_key = self.keys.proc_peers(self.process)
        ttl = int(self.swarm_ttl * 1000)
        pipe = self.client.pipeline(transaction=False)
        # SET before SADD: a reaper never sees this process without its heartbeat.
        pipe.set(alive, b"1", px=int(self.peer_ttl * 1000), get=True)
        pipe.sadd(self.keys.procs, self.process)
        pipe.pexpire(self.keys.procs, ttl * 10)
        pipe.pexpire(peers_key, ttl)
        pipe.pexpire(self.keys.proc_presence(self.process), ttl)
        now = time.monotonic()
        refresh = now - self._refreshed >= self.swarm_ttl / 3
        if refresh:
            for swarm_id in self.swarms.initiated():
                pipe.pexpire(self.keys.swarm(swarm_id), ttl)
            for key in self.renew() if self.renew is not None else ():
                pipe.pexpire(key, ttl)
        previous = pipe.execute()[0]
        if refresh:
            self._refreshed = now
        if previous is None and self._beats:
            self.fence()
        self._beats += 1
        unrecorded = self.swarms.unrecorded
        while unrecorded:
            swarm_id, cid = unrecorded[0]
            self.leave(swarm_id, cid, self.process)
            unrecorded.pop(0)

    def fence(self) -> None:
        """Redis forgot this process (it missed heartbeats and was reaped, or Redis lost
        its data): end the local streams of peers Redis no longer knows, whose swarms
        would never deliver to them again, and hand over those a reaper put in their
        resume grace (or that resumed elsewhere meanwhile): their clients resume."""
        local = list(self.swarms.confirmed())
        pipe = self.client.pipeline(transaction=False)
        for swarm_id, cid, _ in local:
            pipe.hmget(self.keys.swarm(swarm_id), [f"k:{cid}", f"p:{cid}", f"g:{cid}"])
        gone: list[Any] = []
        taken: list[tuple[str, str]] = []
        for (swarm_id, cid, stream), (known, holder, grace) in zip(
            local, pipe.execute(), strict=True
        ):
            if known is None:
                gone.append(stream)
            elif grace is not None or (holder is not None and decode(holder) != self.process):
                taken.append((swarm_id, cid))
        if gone or taken:
            log.warning(
                "heartbeat had expired; ending %d swarm streams Redis forgot, %d taken over",
                len(gone),
                len(taken),
            )
        for stream in gone:
            stream.end("broker unavailable")
        for swarm_id, cid in taken:
            if self.taken_over is not None:
                self.taken_over(swarm_id, cid)

    # -- reaper ----------------------------------------------------------------------

    def _reaper_loop(self) -> None:
        while True:
            # Never longer apart than heartbeat_interval, so a dead process is
            # reaped within peer_ttl + heartbeat_interval (the documented bound).
            gevent.sleep(self.heartbeat_interval * random.uniform(0.5, 1.0))
            try:
                self.reap()
            except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
                log.debug("reaper failed: %s", exc)
            except Exception:
                log.exception("flask_signal: reaper failed")

    def reap(self) -> int:
        """Reap the peers of processes whose heartbeat expired (they leave, or with a
        resume grace enter it); returns how many.

        Every process runs this; a ``SET NX PX`` lock lets one do it per interval.
        """
        # After an outage or a stall every heartbeat may have expired, the living
        # processes' too: reap only once Redis has served this process's own beats
        # for a whole peer_ttl, time enough for every living process to beat again.
        since, now = self._serving_since, time.monotonic()
        if (
            since is None
            or now - since < self.peer_ttl
            or now - self._last_beat > self.heartbeat_interval * 2
        ):
            return 0
        keys = self.keys
        lock_ttl = int(self.heartbeat_interval * 1000)
        if not self.client.set(keys.reaper, self.process, nx=True, px=lock_ttl):
            return 0
        try:
            return self._reap()
        finally:
            # Released once done, so the next attempt (of any process) is not
            # turned away for the rest of the interval; only if still ours.
            self.client.eval(_RELEASE, 1, keys.reaper, self.process)

    def _reap(self) -> int:
        keys = self.keys
        processes = [p for p in self.client.smembers(keys.procs) if decode(p) != self.process]
        if not processes:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for process in processes:
            pipe.exists(keys.proc(decode(process)))
        dead = [decode(p) for p, alive in zip(processes, pipe.execute(), strict=True) if not alive]
        reaped = 0
        for process in dead:
            peers = self.client.smembers(keys.proc_peers(process))
            log.warning(
                "process %s stopped its heartbeat: reaping its %d peers", process, len(peers)
            )
            for entry in peers:
                swarm_id, _, cid = decode(entry).partition(" ")
                if self.reap_peer(swarm_id, cid, process):
                    reaped += 1
            self.reap_presence(process)
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(keys.proc_peers(process))
            pipe.srem(keys.procs, process)
            pipe.execute()
        return reaped

    def reap_presence(self, process: str) -> None:
        """Remove ``process``'s entries from the presence of every channel it recorded."""
        mark = f"{process}\n".encode()
        for raw in self.client.smembers(self.keys.proc_presence(process)):
            key = self.keys.presence(decode(raw))
            fields = [f for f in self.client.hkeys(key) if bytes(f).startswith(mark)]
            if fields:
                self.client.hdel(key, *fields)
        self.client.delete(self.keys.proc_presence(process))
