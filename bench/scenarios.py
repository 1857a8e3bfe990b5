"""The scenarios: each drives one running server and returns its measurements.

A scenario returns ``params`` (its sizes), ``metrics`` (the figures compared
with a baseline), ``checks`` (exact counts that must hold, with ``ok``) and
``cpu`` (utilisation of the generator's and the server's cores while it
measured). A broken check or a timeout raises :class:`ScenarioError`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from .loop import HttpClient, Loop, SSEClient
from .procs import Server, cpu_seconds, machine_busy_seconds, own_cpu_seconds

PREFIX = "/signal"


class ScenarioError(Exception):
    pass


@dataclass
class Context:
    server: Server
    loop: Loop
    publish_key: str
    pinned: bool
    concurrency: int = 200
    prefix: str = PREFIX


# -- measuring ------------------------------------------------------------------------------


class Meter:
    """CPU time of the generator (this process) and the server around a phase."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workers = ctx.server.worker_pids()
        self.redis = ctx.server.redis.proc.pid if ctx.server.redis else None
        self.t0 = perf_counter()
        self.gen0 = own_cpu_seconds()
        self.cpu0 = {pid: cpu_seconds(pid) for pid in ctx.server.server_pids()}
        self.machine0 = machine_busy_seconds()

    def stop(self) -> dict[str, Any]:
        wall = perf_counter() - self.t0
        gen = (own_cpu_seconds() - self.gen0) / wall
        util = {pid: (cpu_seconds(pid) - t) / wall for pid, t in self.cpu0.items()}
        workers = [round(util[pid], 3) for pid in self.workers]
        redis = round(util[self.redis], 3) if self.redis else None
        everything = [*workers, *([redis] if redis is not None else [])]
        # Pinned, the server's processes share one core; else each has its own.
        busy = sum(everything) if self.ctx.pinned else max(everything)
        # Whatever else ran on the machine meanwhile took CPU from one side or the other.
        others = (machine_busy_seconds() - self.machine0) / wall - gen - sum(everything)
        return {
            "seconds": round(wall, 3),
            "generator": round(gen, 3),
            "server": round(sum(workers), 3),
            "workers": workers,
            "redis": redis,
            "server_core_busy": round(busy, 3),
            "others": round(max(others, 0.0), 3),
            "generator_bound": gen >= 0.9 and busy < 0.9,
            "contended": others > 0.25,
        }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (not necessarily sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- opening streams --------------------------------------------------------------------------


@dataclass(eq=False)
class Peer:
    """A swarm stream and what its connect event said."""

    conn: SSEClient | None = None
    id: str = ""
    cid: str = ""
    token: str = ""
    opened_in: float = 0.0
    counts: dict[bytes, int] = field(default_factory=dict)


Handler = Callable[[Peer, bytes, bytes], None]


def open_many(
    ctx: Context,
    paths: Iterable[str],
    on_event: Handler | None = None,
    *,
    channel: bool = False,
    timeout: float = 120,
) -> list[Peer]:
    """Open a stream per path, ``ctx.concurrency`` at most being set up at once.

    A swarm stream is open once its ``connect`` event is in, a channel stream
    once its headers are; later events go to ``on_event``. Any refusal or
    early close is a :class:`ScenarioError`.
    """
    loop = ctx.loop
    pending = deque(paths)
    total = len(pending)
    peers: list[Peer] = []
    failures: list[str] = []
    inflight = 0

    def opened(peer: Peer, conn: SSEClient) -> None:
        nonlocal inflight
        inflight -= 1
        peer.opened_in = loop.now - peer.opened_in
        peers.append(peer)
        fill()

    def on_open(conn: SSEClient) -> None:
        nonlocal inflight
        peer: Peer = conn.tag
        if not 200 <= conn.status < 300:  # koa-signal answers a new swarm 201
            failures.append(f"status {conn.status}")
            inflight -= 1
            conn.on_close = None
            conn.close()
            fill()
        elif channel:
            opened(peer, conn)

    def event(conn: SSEClient, name: bytes, data: bytes) -> None:
        peer: Peer = conn.tag
        if not peer.id and not channel:
            if name != b"connect":
                raise ScenarioError(f"first event {name!r}, not connect")
            info = json.loads(data)
            peer.id, peer.cid, peer.token = info["id"], info["cid"], info["token"]
            opened(peer, conn)
        elif on_event is not None:
            on_event(peer, name, data)

    def closed(conn: SSEClient) -> None:
        nonlocal inflight
        peer: Peer = conn.tag
        if peer not in peers and 200 <= conn.status < 300:
            failures.append("closed before its connect event")
            inflight -= 1
            fill()

    def fill() -> None:
        nonlocal inflight
        while inflight < ctx.concurrency and pending:
            path = pending.popleft()
            peer = Peer(opened_in=perf_counter())
            inflight += 1
            peer.conn = SSEClient(loop, path, event, on_open=on_open, on_close=closed, tag=peer)

    fill()
    loop.run(lambda: len(peers) + len(failures) >= total, timeout, f"opening {total} streams")
    if failures:
        raise ScenarioError(f"{len(failures)} of {total} streams failed: {failures[:3]}")
    for peer in peers:
        peer.conn.on_close = None  # type: ignore[union-attr]
    return peers


def open_swarms(
    ctx: Context, streams: int, size: int, on_event: Handler | None = None
) -> list[list[Peer]]:
    """``streams`` swarm streams in swarms of ``size`` (the last may be smaller)."""
    count = -(-streams // size)
    initiators = open_many(ctx, [ctx.prefix or "/"] * count, on_event)
    paths = []
    for i, first in enumerate(initiators):
        members = min(size, streams - i * size) - 1
        paths += [f"{ctx.prefix}/{first.id}"] * members
    joiners = open_many(ctx, paths, on_event)
    swarms: dict[str, list[Peer]] = {p.id: [p] for p in initiators}
    for peer in joiners:
        swarms[peer.id].append(peer)
    return list(swarms.values())


def close_all(ctx: Context) -> None:
    for conn in list(ctx.loop.conns.values()):
        conn.close()


def expect_ok(what: str) -> Callable[[int, bytes, float], None]:
    def check(status: int, body: bytes, sent_at: float) -> None:
        if not 200 <= status < 300:
            raise ScenarioError(f"{what}: HTTP {status} {body[:200]!r}")

    return check


# -- sequential broadcasts (swarm fan-out and channel fan-out) -----------------------------------


class Rounds:
    """Messages sent one after another, each awaited at ``expected`` receivers."""

    def __init__(
        self, ctx: Context, expected: int, send: Callable[[int, Callable[..., None]], None]
    ):
        self.ctx = ctx
        self.expected = expected
        self.send = send
        self.count: dict[int, int] = {}
        self.sent: dict[int, float] = {}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.answered: set[int] = set()

    def received(self, data: bytes) -> None:
        n = json.loads(data)["n"]
        count = self.count.get(n, 0) + 1
        self.count[n] = count
        if count == 1:
            self.first[n] = self.ctx.loop.now
        if count == self.expected:
            self.last[n] = self.ctx.loop.now

    def one(self, n: int, timeout: float) -> bool:
        def answered(status: int, body: bytes, sent_at: float) -> None:
            if status != 200:
                raise ScenarioError(f"message {n}: HTTP {status} {body[:200]!r}")
            self.answered.add(n)

        self.sent[n] = perf_counter()
        self.send(n, answered)
        try:
            self.ctx.loop.run(
                lambda: n in self.last and n in self.answered, timeout, f"message {n}"
            )
        except TimeoutError:
            return False
        return True

    def run(self, msgs: int, warmup: int, timeout: float) -> dict[str, Any]:
        # Warm-up messages also wait for every receiver to be reachable (a
        # Redis subscription may lag its stream's first frame): up to 50 more
        # are sent until ``warmup`` of them reached everybody.
        reached = 0
        for n in range(-warmup - 50, 0):
            reached += self.one(n, 1.0)
            if reached >= warmup:
                break
        else:
            if reached < max(1, warmup):
                raise ScenarioError(f"warm-up: {reached} of {warmup} messages reached everybody")
        meter = Meter(self.ctx)
        for n in range(msgs):
            if not self.one(n, timeout):
                raise ScenarioError(
                    f"message {n} reached {self.count.get(n, 0)} of {self.expected}"
                )
        cpu = meter.stop()
        self.ctx.loop.run_for(0.2)  # late duplicates would show in the counts
        delivered = sum(c for n, c in self.count.items() if n >= 0)
        last = [self.last[n] - self.sent[n] for n in range(msgs)]
        first = [self.first[n] - self.sent[n] for n in range(msgs)]
        return {
            "metrics": {
                "last_p50_ms": ms(percentile(last, 50)),
                "last_p99_ms": ms(percentile(last, 99)),
                "first_p50_ms": ms(percentile(first, 50)),
                "msgs_per_s": round(msgs / cpu["seconds"], 1),
            },
            "checks": {
                "delivered": delivered,
                "expected": self.expected * msgs,
                "ok": delivered == self.expected * msgs,
            },
            "cpu": cpu,
        }


# -- scenarios ------------------------------------------------------------------------------------


def capacity(
    ctx: Context, n: int = 2000, swarm_size: int = 100, settle: float = 2.0
) -> dict[str, Any]:
    """N idle swarm streams: RSS growth per stream of the workers, and connects/s."""
    server = ctx.server
    rss0, conns0 = server.rss_kb(), server.client_connections()
    meter = Meter(ctx)
    swarms = open_swarms(ctx, n, swarm_size)
    cpu = meter.stop()
    ctx.loop.run_for(settle)  # joins delivered, garbage collected
    rss1, conns1 = server.rss_kb(), server.client_connections()
    opened = sum(len(s) for s in swarms)
    return {
        "params": {"n": n, "swarm_size": swarm_size, "settle_s": settle},
        "metrics": {
            "rss_per_stream_kb": round((rss1 - rss0) / n, 2),
            "connects_per_s": round(n / cpu["seconds"], 1),
        },
        "checks": {
            "streams": opened,
            "expected": n,
            "server_connections_added": conns1 - conns0,
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "ok": opened == n,
        },
        "cpu": cpu,
    }


def connects(ctx: Context, n: int = 2000) -> dict[str, Any]:
    """N swarm creations (open, read the connect event), kept open: connects/s and latency."""
    meter = Meter(ctx)
    peers = open_many(ctx, [ctx.prefix or "/"] * n)
    cpu = meter.stop()
    latency = [p.opened_in for p in peers]
    return {
        "params": {"n": n, "concurrency": ctx.concurrency},
        "metrics": {
            "connects_per_s": round(n / cpu["seconds"], 1),
            "connect_p50_ms": ms(percentile(latency, 50)),
            "connect_p99_ms": ms(percentile(latency, 99)),
        },
        "checks": {"streams": len(peers), "expected": n, "ok": len(peers) == n},
        "cpu": cpu,
    }


def churn(
    ctx: Context, seconds: float = 3.0, swarms: int = 10, concurrency: int = 50
) -> dict[str, Any]:
    """Peers joining a swarm, reading their connect event and leaving, for ``seconds``.

    Checks that every initiator heard a join and a leave per churned peer and
    that the workers' client connections (and, with one worker, the hub's
    stream count) return to what they were before.
    """
    loop, server = ctx.loop, ctx.server

    def tally(peer: Peer, name: bytes, data: bytes) -> None:
        peer.counts[name] = peer.counts.get(name, 0) + 1

    initiators = open_many(ctx, [ctx.prefix] * swarms, tally)
    streams0 = stream_count(ctx)
    loop.run_for(0.3)
    conns0, fds0 = server.client_connections(), server.fd_count()
    done = 0
    active = 0
    failures: list[str] = []
    running = True
    turn = 0

    def start() -> None:
        nonlocal turn, active
        first = initiators[turn % swarms]
        turn += 1
        active += 1
        SSEClient(loop, f"{ctx.prefix}/{first.id}", on_event, on_open=on_open, on_close=on_close)

    def on_open(conn: SSEClient) -> None:
        if not 200 <= conn.status < 300:  # koa-signal answers a new swarm 201
            failures.append(f"status {conn.status}")
            conn.close()

    def on_event(conn: SSEClient, name: bytes, data: bytes) -> None:
        nonlocal done
        if name == b"connect":
            conn.tag = True
            done += 1
            conn.close()

    def on_close(conn: SSEClient) -> None:
        nonlocal active
        active -= 1
        if conn.tag is None and 200 <= conn.status < 300:
            failures.append("closed before its connect event")
        if running:
            start()

    meter = Meter(ctx)
    for _ in range(concurrency):
        start()
    loop.run_for(seconds)
    running = False
    cpu = meter.stop()
    measured = done
    loop.run(lambda: active == 0, 10, "the last churned streams")
    total = done

    def heard(name: bytes) -> int:
        return sum(p.counts.get(name, 0) for p in initiators)

    with contextlib.suppress(TimeoutError):
        loop.run(lambda: heard(b"leave") >= total, 10, "leave events")
    conns1 = server.client_connections()
    for _ in range(30):
        if conns1 <= conns0:
            break
        loop.run_for(0.1)
        conns1 = server.client_connections()
    fds1 = server.fd_count()
    streams1 = stream_count(ctx)
    joins, leaves = heard(b"join"), heard(b"leave")
    ok = (
        not failures
        and joins == total
        and leaves == total
        and conns1 == conns0
        and streams1 == streams0
    )
    return {
        "params": {"seconds": seconds, "swarms": swarms, "concurrency": concurrency},
        "metrics": {"churn_per_s": round(measured / cpu["seconds"], 1)},
        "checks": {
            "churned": total,
            "joins_heard": joins,
            "leaves_heard": leaves,
            "server_connections_before": conns0,
            "server_connections_after": conns1,
            # Informational: a Redis connection pool may grow under load.
            "server_fds_before": fds0,
            "server_fds_after": fds1,
            "streams_before": streams0,
            "streams_after": streams1,
            "failures": len(failures),
            "ok": ok,
        },
        "cpu": cpu,
    }


def stream_count(ctx: Context) -> int | None:
    """The hub's open streams from ``/_bench/stats`` (one worker only), else ``None``."""
    if ctx.server.workers != 1:
        return None
    result: list[Any] = []
    client = HttpClient(ctx.loop)
    client.get("/_bench/stats", lambda status, body, _: result.append((status, body)))
    ctx.loop.run(lambda: bool(result), 10, "GET /_bench/stats")
    client.close()
    status, body = result[0]
    return int(json.loads(body)["streams"]) if status == 200 else None


def fanout(
    ctx: Context, peers: int = 200, msgs: int = 100, warmup: int = 10, msg_timeout: float = 10.0
) -> dict[str, Any]:
    """One swarm of ``peers``; broadcasts one after another; time to the last receiver."""
    rounds: Rounds

    def on_event(peer: Peer, name: bytes, data: bytes) -> None:
        if name == b"signal":
            rounds.received(data)

    (swarm,) = open_swarms(ctx, peers, peers, on_event)
    first = swarm[0]
    client = HttpClient(ctx.loop)
    path = f"{ctx.prefix}/{first.id}"
    token = first.token

    def send(n: int, answered: Callable[..., None]) -> None:
        client.post(path, b'{"token":"%s","data":{"n":%d}}' % (token.encode(), n), answered)

    rounds = Rounds(ctx, peers, send)
    result = rounds.run(msgs, warmup, msg_timeout)
    result["params"] = {"peers": peers, "msgs": msgs, "warmup": warmup}
    return result


def channel(
    ctx: Context,
    subscribers: int = 200,
    msgs: int = 100,
    warmup: int = 10,
    msg_timeout: float = 10.0,
) -> dict[str, Any]:
    """Subscribers of one channel; publishes over HTTP one after another; time to the last."""
    name = "bench-" + secrets.token_hex(4)
    rounds: Rounds

    def on_event(peer: Peer, event: bytes, data: bytes) -> None:
        rounds.received(data)

    open_many(ctx, [f"{ctx.prefix}/channels/{name}"] * subscribers, on_event, channel=True)
    client = HttpClient(ctx.loop, {"Authorization": f"Bearer {ctx.publish_key}"})
    path = f"{ctx.prefix}/channels/{name}"

    def send(n: int, answered: Callable[..., None]) -> None:
        client.post(path, b'{"data":{"n":%d}}' % n, answered)

    rounds = Rounds(ctx, subscribers, send)
    result = rounds.run(msgs, warmup, msg_timeout)
    result["params"] = {"subscribers": subscribers, "msgs": msgs, "warmup": warmup}
    return result


def pingpong(
    ctx: Context, pairs: int = 10, seconds: float = 5.0, warmup: float = 1.0
) -> dict[str, Any]:
    """Swarms of two peers bouncing direct signals: signals/s and round-trip times."""
    loop = ctx.loop
    swarms = open_swarms(ctx, pairs * 2, 2)
    measuring = False
    bouncing = True
    received = 0
    measured = 0
    round_trips: list[float] = []
    sent = 0
    answers: list[int] = []

    def answered(status: int, body: bytes, sent_at: float) -> None:
        if status != 200:
            answers.append(status)

    def bounce(conn: SSEClient, name: bytes, data: bytes) -> None:
        nonlocal received, measured, sent
        if name != b"signal":
            return
        client, path, body, initiator, started = conn.tag
        received += 1
        if measuring:
            measured += 1
            if initiator:
                round_trips.append(loop.now - started[0])
        if bouncing:
            if initiator:
                started[0] = perf_counter()
            sent += 1
            client.post(path, body, answered)

    for a, b in swarms:
        # Each side posts over its own keep-alive connection with its own token.
        for me, other in ((a, b), (b, a)):
            body = b'{"token":"%s","cid":"%s","data":1}' % (me.token.encode(), other.cid.encode())
            conn = me.conn
            assert conn is not None
            conn.tag = (HttpClient(loop), f"{ctx.prefix}/{me.id}", body, me is a, [0.0])
            conn.on_event = bounce

    for a, _ in swarms:
        client, path, body, _, started = a.conn.tag  # type: ignore[union-attr]
        started[0] = perf_counter()
        sent += 1
        client.post(path, body, answered)
    loop.run_for(warmup)
    measuring = True
    meter = Meter(ctx)
    loop.run_for(seconds)
    measuring = False
    cpu = meter.stop()
    bouncing = False
    with contextlib.suppress(TimeoutError):
        loop.run(lambda: received >= sent, 10, "the last signals")
    ok = received == sent and not answers
    return {
        "params": {"pairs": pairs, "seconds": seconds, "warmup_s": warmup},
        "metrics": {
            "signals_per_s": round(measured / cpu["seconds"], 1),
            "rtt_p50_ms": ms(percentile(round_trips, 50)),
            "rtt_p99_ms": ms(percentile(round_trips, 99)),
        },
        "checks": {"sent": sent, "delivered": received, "refused": len(answers), "ok": ok},
        "cpu": cpu,
    }


def probe(ctx: Context, rounds: int = 4, channel: bool = True) -> None:
    """A swarm signal (and a channel publish) end to end: the server works, and is warm."""
    loop = ctx.loop
    for _ in range(rounds):
        got: dict[bytes, int] = {b"signal": 0, b"message": 0}

        def on_event(peer: Peer, name: bytes, data: bytes, got: dict[bytes, int] = got) -> None:
            got[name] = got.get(name, 0) + 1

        (swarm,) = open_swarms(ctx, 2, 2, on_event)
        client = HttpClient(loop)
        client.post(
            f"{ctx.prefix}/{swarm[0].id}",
            b'{"token":"%s","data":1}' % swarm[0].token.encode(),
            expect_ok("probe signal"),
        )
        loop.run(lambda got=got: got[b"signal"] >= 2, 10, "probe signal")  # type: ignore[misc]
        client.close()
        opened = swarm
        if channel:
            opened += open_many(ctx, [f"{ctx.prefix}/channels/bench-probe"], on_event, channel=True)
            publisher = HttpClient(loop, {"Authorization": f"Bearer {ctx.publish_key}"})
            deadline = perf_counter() + 10
            # A Redis subscription may lag the stream's first frame: publish until heard.
            while not got[b"message"]:
                publisher.post(
                    f"{ctx.prefix}/channels/bench-probe", b'{"data":1}', expect_ok("probe publish")
                )
                loop.run(lambda p=publisher: not p.busy, 10, "probe publish")  # type: ignore[misc]
                loop.run_for(0.05)
                if perf_counter() > deadline:
                    raise ScenarioError("probe: a channel publish never arrived")
            publisher.close()
        for peer in opened:
            peer.conn.close()  # type: ignore[union-attr]
        loop.run_for(0.05)


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "capacity": capacity,
    "connects": connects,
    "churn": churn,
    "fanout": fanout,
    "pingpong": pingpong,
    "channel": channel,
}
