"""The Redis broker: swarms and channel history in Redis, fan-out over pub/sub.

It composes the parts of this package: the key names (:mod:`.keys`), the
scripts (:mod:`.scripts`), the message format (:mod:`.codec`), the pub/sub
connection (:mod:`.listener`), the local swarm table (:mod:`.swarms`) and
liveness (:mod:`.liveness`). Each part is used through its public methods only.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import gevent
from redis import exceptions as rexc

from ... import framing, signals
from ...errors import ResumeLater, SwarmFull
from ...hub import Stream, counts, end_with_retry
from .. import (
    Broker,
    BrokerUnavailable,
    Delivery,
    Membership,
    OutcomeUnknown,
    Replay,
    format_event_id,
    new_epoch,
    new_id,
    new_resume_key,
    resume_position,
    split_event_id,
    token_digest,
)
from . import codec
from .batch import Batcher
from .connection import connector, unavailable
from .keys import LOG_SUFFIX, Keys, decode
from .listener import Listener, Timing, Topic
from .liveness import Liveness
from .mux import Mux, MuxClient
from .once import Once
from .resume import Draining, Numbered
from .scripts import Scripts
from .swarms import LocalSwarms

log = logging.getLogger("flask_signal")

#: Seconds between rewrites of all of a process's presence entries.
PRESENCE_REFRESH = 60.0
#: The most signals one call of ``signal.lua`` carries (see :mod:`.batch`).
SIGNAL_BATCH = 64
#: The most channel events one call of ``publish.lua`` carries.
PUBLISH_BATCH = 64
#: An event to more channels than this is published alone, so that a batch never
#: keeps Redis busy much longer than the largest single event would.
PUBLISH_BATCH_CHANNELS = 8
#: A channel event on its way to ``publish.lua``: its channels, the frame around its
#: id (head, tail), the application's id ('' = the hub's) and the codec's event marker.
_Publish = tuple[tuple[str, ...], bytes, bytes, str, str]
#: ``signal.lua``'s answer for each signal of a batch, one byte each.
SIGNAL_CODES = {
    ord("0"): Delivery.OK,
    ord("1"): Delivery.NO_SWARM,
    ord("2"): Delivery.BAD_TOKEN,
    ord("3"): Delivery.NO_PEER,
}
#: How long a resume waits for the previous process of a peer to hand Redis the
#: frames that were on their way to it (ms); past it, the resume goes ahead.
DRAINING_MS = 2000
#: Seconds over which streams ended by a loss in Redis (a swarm whose log no longer reaches
#: back to a pub/sub outage, channel history gone) spread their reconnections.
GAP_SPREAD = 3.0


class _Pending:
    """A subscriber between its SUBSCRIBE and its history read: live events wait here."""

    __slots__ = ("events", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events: dict[int, bytes] = {}


class RedisBroker(Broker):
    """Swarms, channel history and routing in Redis, shared by every process
    configured with the same URL and ``prefix``.

    ``heartbeat_interval`` and ``peer_ttl`` bound how long a dead process's
    peers linger (at most ``peer_ttl + heartbeat_interval``); ``swarm_ttl`` is
    how long a swarm outlives every process that could clean it up;
    ``history_ttl`` how long a channel's history outlives its last publish.
    ``swarm_log`` messages (at most ``swarm_log_bytes``) of each swarm stay in Redis
    for ``swarm_log_ttl`` seconds after its last one, for the processes whose pub/sub
    connection was down meanwhile (``0``: no log, see :mod:`.codec`).
    """

    schemes = ("redis", "rediss", "unix")

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "signal:",
        heartbeat_interval: float = 2.0,
        peer_ttl: float = 6.0,
        swarm_ttl: float = 60.0,
        history_ttl: float = 86400.0,
        max_connections: int = 1,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        subscribe_timeout: float = 5.0,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        max_backoff: float = 5.0,
        swarm_log: int = 1000,
        swarm_log_bytes: int = 256 * 1024,
        swarm_log_ttl: float = 60.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.url = url
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.history_ttl = history_ttl
        self.swarm_log = swarm_log
        #: What ``log.lua`` takes off the end of ARGV (bytes: encoded once).
        self._log_bounds = tuple(
            b"%d" % value for value in (swarm_log, swarm_log_bytes, int(swarm_log_ttl * 1000))
        )
        #: What ``signal.lua`` needs to keep a frame for a peer in its grace (resume on).
        self._grace_bounds = (
            (b"%d" % self.resume_bytes, b"%d" % int(self.resume_grace * 1000))
            if self.resume_grace
            else ()
        )
        self.timing = Timing(
            connect_timeout=connect_timeout,
            subscribe_timeout=subscribe_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_backoff=max_backoff,
        )
        #: Makes a new connection: the listener's, and the multiplexed ones'.
        self.connect = connector(
            url, socket_timeout=socket_timeout, connect_timeout=connect_timeout
        )
        #: Every command and script of this process, pipelined over
        #: ``max_connections`` connections (1 to 3; the pub/sub one makes at most 4).
        self.mux = Mux(
            self.connect, timeout=socket_timeout, connections=min(max(max_connections, 1), 3)
        )
        self.redis = MuxClient(self.mux)
        self.scripts = Scripts()
        self.once = Once(
            self.mux,
            self.scripts.settle,
            timeout=socket_timeout,
            settle_timeout=socket_timeout + 1,
        )
        #: The signals of one loop turn go to Redis in one script call.
        self._signals: Batcher[tuple[str, str, str, bytes], Delivery] = Batcher(
            self._send_signals, limit=SIGNAL_BATCH
        )
        #: So do the channel events published in one loop turn.
        self._publishes: Batcher[_Publish, tuple[str, int]] = Batcher(
            self._send_publishes, limit=PUBLISH_BATCH
        )
        self.swarms = LocalSwarms()
        self.liveness = Liveness(
            self.redis,
            self.keys,
            self.swarms,
            leave=self._leave_in_redis,
            reap=self._reap_peer,
            taken_over=self._taken_over,
            renew=self._resume_index,
            heartbeat_interval=heartbeat_interval,
            peer_ttl=peer_ttl,
            swarm_ttl=swarm_ttl,
            on_beat=self._check_listener,
        )
        self.listener = self._new_listener()
        #: This process's id in Redis; set by :meth:`start`, after any fork.
        self.process = ""
        self._started_in: int | None = None
        self._pending: dict[str, set[_Pending]] = {}
        #: The epoch of event ids, once learnt from Redis.
        self._epoch: str | None = None
        #: The highest sequence number heard on pub/sub. Messages arrive in the order
        #: Redis ran the scripts, so a lower one means the sequencer started again.
        self._heard = 0
        self._subscribed: dict[Stream, tuple[bytes, ...]] = {}
        #: This process's channel streams by (channel, client id or ""): what its
        #: presence entries in Redis say once written (see :meth:`_flush_presence`).
        self._present: dict[tuple[str, str], int] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._flusher: gevent.Greenlet[Any, Any] | None = None
        self._presence_asserted = time.monotonic()
        #: The numbering of this process's swarm peers (resume on), by cid.
        self._numbered: dict[str, Numbered] = {}
        #: Peers detached here whose "detached" message has not come back, by (swarm, cid).
        self._draining: dict[tuple[str, str], Draining] = {}
        self._grace_loop: gevent.Greenlet[Any, Any] | None = None
        #: The number of the last swarm log message applied here, by swarm with local
        #: peers; and where a swarm's local peers came in (their own join's message, or 0
        #: at its creation), the point to catch up from while none was applied.
        self._applied: dict[str, int] = {}
        self._came_in: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        return cls(url, **options)

    def _new_listener(self) -> Listener:
        return Listener(
            self.connect,
            on_message=self._on_message,
            on_lost=self._on_lost,
            on_restored=self._on_restored,
            timing=self.timing,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener, heartbeat and reaper greenlets of this process (idempotent)."""
        if self._started_in == os.getpid():
            return
        self._started_in = os.getpid()
        self.process = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self.listener = self._new_listener()
        self.listener.start()
        self.liveness.start(self.process)
        if self.resume_grace:
            self._grace_loop = gevent.spawn(self._expire_loop)

    def halt(self) -> None:
        """Stop all background work without touching Redis, as a killed process would.

        Other processes reap this one's peers once its heartbeat expires.
        """
        if self._grace_loop is not None:
            self._grace_loop.kill(block=False)
            self._grace_loop = None
        self.liveness.stop()
        self.listener.stop()
        self._started_in = None

    def close(self) -> None:
        """Leave every local swarm, end every local stream and release connections."""
        started = self._started_in is not None
        members = [(swarm_id, cid) for swarm_id, cid, _ in self.swarms.members()]
        members += self.swarms.unrecorded
        self.halt()
        for stream in self._all_streams():
            stream.end("shutdown")
        super().close()
        if started:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for swarm_id, cid in members:
                    self.once.queue(pipe, self.scripts.leave, *self._leave_call(swarm_id, cid))
                self.liveness.forget(pipe)
                pipe.execute()
                self.liveness.reap_presence(self.process)
            except (rexc.RedisError, OSError) as exc:
                log.warning("could not clean up this process's swarms in Redis: %s", exc)
        self.swarms.clear()
        self._numbered.clear()
        self._draining.clear()
        self.hub.peers.clear()
        self.mux.close()

    def reap(self) -> int:
        """Reap the peers of processes whose heartbeat expired (they leave, or with a
        resume grace enter it); returns how many."""
        return self.liveness.reap()

    def _check_listener(self) -> None:
        if time.monotonic() - self._presence_asserted >= PRESENCE_REFRESH:
            self.refresh_presence()
        if self._dirty:
            self._start_flusher()  # presence writes that failed: try again
        if not self.listener.healthy():
            log.error("redis pub/sub listener died or stopped receiving; restarting it")
            self.listener.restart()

    def _all_streams(self) -> list[Stream]:
        streams = [stream for _, _, stream in self.swarms.members()]
        streams += self._subscribed
        return streams

    def healthy(self) -> bool:
        """Redis answers a PING and this process's pub/sub listener is up."""
        try:
            with unavailable():
                self.redis.ping()
        except BrokerUnavailable:
            return False
        if self._started_in is not None and not self.listener.tried.is_set():
            # Just started: the pub/sub connection's first attempt is still on its way
            # (the PING, pipelined, can be answered before it).
            self.listener.tried.wait(self.timing.connect_timeout)
        return self.listener.connected and self.listener.healthy()

    def stats(self) -> dict[str, Any]:
        """What this process holds, for monitoring."""
        return {
            "process": self.process,
            "pubsub_connected": self.listener.connected,
            "topics": self.listener.held(),
            "swarms": self.swarms.swarm_count(),
            "peers": self.swarms.peer_count(),
            "subscribers": len(self._subscribed),
        }

    # -- swarms --------------------------------------------------------------------

    def create_swarm(self, stream: Stream) -> Membership:
        self.start()
        resume_key = new_resume_key() if self.resume_grace else ""
        while True:
            member = Membership(new_id(), new_id(), new_id(), initiator=True)
            key = self.keys.swarm(member.id)
            self.listener.acquire([(key, "swarm", member.id)])
            try:
                created = self.once.run(
                    self.scripts.create,
                    [key, self.keys.proc_peers(self.process)],
                    [
                        member.cid,
                        token_digest(member.token),
                        self.process,
                        int(self.liveness.swarm_ttl * 1000),
                        f"{member.id} {member.cid}",
                        *([token_digest(resume_key)] if resume_key else []),
                    ],
                )
            except BaseException as exc:
                self.listener.release([key])
                if isinstance(exc, OutcomeUnknown):
                    # It may exist in Redis: have it removed once Redis answers.
                    self.swarms.unrecorded.append((member.id, member.cid))
                raise
            if created:
                break
            self.listener.release([key])  # 128-bit id collision: never in practice
        stream.swarm_id, stream.cid = member.id, member.cid
        self._came_in[member.id] = 0
        self.swarms.add_initiator(member.id, member.cid, stream)
        self.hub.peers[member.cid] = stream
        if resume_key:
            self._numbered[member.cid] = self._numbering(resume_key.encode())
            self._index(resume_key, member.id, member.cid)
        self._put(stream, self.connect_frame(member))
        signals.swarm_created.send(self.sender, swarm_id=member.id, cid=member.cid)
        return member

    def join_swarm(self, swarm_id: str, stream: Stream) -> Membership | None:
        self.start()
        member = Membership(swarm_id, new_id(), new_id(), initiator=False)
        key = self.keys.swarm(swarm_id)
        self._untrack(swarm_id)  # a number left from an earlier subscription is stale
        self.listener.acquire([(key, "swarm", swarm_id)])
        # Registered before Redis knows the peer, so that nothing meant for it is
        # missed; it receives broadcasts only from its own "join" on (see _on_swarm).
        stream.swarm_id, stream.cid = swarm_id, member.cid
        self.swarms.add_joining(member.cid, stream)
        self.hub.peers[member.cid] = stream
        resume_key = new_resume_key() if self.resume_grace else ""
        if resume_key:
            self._numbered[member.cid] = self._numbering(resume_key.encode())
        self._put(stream, self.connect_frame(member))
        joined = 0
        try:
            joined = self.once.run(
                self.scripts.join,
                [
                    key,
                    self.keys.proc_peers(self.process),
                    self.keys.grace_set(swarm_id),
                    self.keys.swarm_log(swarm_id),
                ],
                [
                    member.cid,
                    token_digest(member.token),
                    self.process,
                    key,
                    f"{swarm_id} {member.cid}",
                    codec.joined(member.cid),
                    self.max_swarm_peers,
                    *self._keeping(
                        framing.swarm_event("join", {"id": swarm_id, "cid": member.cid})
                    ),
                    *([token_digest(resume_key)] if resume_key else []),
                    *self._log_bounds,
                ],
            )
        except OutcomeUnknown:
            # It may have joined (and the initiator been told): make it leave once
            # Redis answers, so that a join it never learned of is followed by a leave.
            self.swarms.unrecorded.append((swarm_id, member.cid))
            raise
        finally:
            if joined <= 0:
                self.swarms.forget_joining(member.cid)
                self._numbered.pop(member.cid, None)
                self.hub.peers.pop(member.cid, None)
                stream.swarm_id = stream.cid = None
                self.listener.release([key])
                self._untrack(swarm_id)
        if joined == -1:
            raise SwarmFull(swarm_id)
        if not joined:
            return None
        if resume_key:
            self._index(resume_key, swarm_id, member.cid)
        if self.swarm_log:
            self._enter(swarm_id, int(joined))
        signals.peer_joined.send(self.sender, swarm_id=swarm_id, cid=member.cid)
        return member

    def leave_swarm(self, member: Membership, stream: Stream | None = None) -> None:
        """Forget the peer here at once; tell Redis, or retry later if it is unreachable.

        With resume on, a ``stream`` lost rather than closed only detaches the peer
        (see :meth:`_detach`)."""
        current = self.swarms.peer(member.id, member.cid)
        if stream is not None and current is not None and current is not stream:
            return  # replaced by a resume
        if (
            stream is not None
            and current is stream
            and stream.resumable
            and member.cid in self._numbered
            and self._detach(member.id, member.cid, initiator=member.initiator)
        ):
            return
        gone, others = self.swarms.remove(member.id, member.cid, initiator=member.initiator)
        if gone is None:
            return
        self._numbered.pop(member.cid, None)
        self.hub.peers.pop(member.cid, None)
        self.listener.release([self.keys.swarm(member.id)])
        self._untrack(member.id)
        for other in others:
            other.end("swarm closed")
        try:
            outcome = self._leave_in_redis(member.id, member.cid, self.process)
        except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
            log.warning("could not record that %s left swarm %s: %s", member.cid, member.id, exc)
            self.swarms.unrecorded.append((member.id, member.cid))
            return
        if outcome == 2:
            signals.swarm_closed.send(self.sender, swarm_id=member.id, cid=member.cid)
        elif outcome == 1:
            signals.peer_left.send(self.sender, swarm_id=member.id, cid=member.cid)

    def _leave_in_redis(self, swarm_id: str, cid: str, process: str) -> int:
        """Remove a peer from its swarm and from its process's peer set, in one script."""
        return int(self.once.run(self.scripts.leave, *self._leave_call(swarm_id, cid, process)))

    def _leave_call(
        self, swarm_id: str, cid: str, process: str | None = None, grace_digest: str = ""
    ) -> tuple[list[bytes], list[bytes | str | int]]:
        key = self.keys.swarm(swarm_id)
        args: list[bytes | str | int] = [
            cid,
            key,
            f"{swarm_id} {cid}",
            codec.left(cid),
            codec.ended(cid),
        ]
        if self.resume_grace:
            args += [
                grace_digest,
                *self._keeping(framing.swarm_event("leave", {"id": swarm_id, "cid": cid})),
            ]
        args += self._log_bounds
        return (
            [
                key,
                self.keys.proc_peers(process or self.process),
                self.keys.grace_set(swarm_id),
                self.keys.swarm_log(swarm_id),
            ],
            args,
        )

    def swarm_exists(self, swarm_id: str) -> bool:
        with unavailable():
            return bool(self.redis.exists(self.keys.swarm(swarm_id)))

    def authenticate(self, swarm_id: str, token: str) -> Delivery:
        with unavailable():
            initiator, cid = self.redis.hmget(
                self.keys.swarm(swarm_id), ["i", f"t:{token_digest(token)}"]
            )
        if initiator is None:
            return Delivery.NO_SWARM
        return Delivery.OK if cid is not None else Delivery.BAD_TOKEN

    def signal(
        self, swarm_id: str, data: Any, *, cid: str | None = None, token: str | None = None
    ) -> Delivery:
        if self.sender_field and token is not None and isinstance(data, dict):
            # The sender's cid, from its token: one more round trip, only when asked.
            with unavailable():
                initiator, sender = self.redis.hmget(
                    self.keys.swarm(swarm_id), ["i", f"t:{token_digest(token)}"]
                )
            if initiator is None:
                return Delivery.NO_SWARM
            if sender is None:
                return Delivery.BAD_TOKEN
            data = {**data, self.sender_field: decode(sender)}
        frame = framing.swarm_event("signal", data)
        message = codec.direct(cid, frame) if cid is not None else codec.broadcast(frame)
        digest = token_digest(token) if token is not None else ""
        return self._signals.run((swarm_id, digest, cid or "", message))

    def _send_signals(self, batch: list[tuple[str, str, str, bytes]]) -> list[Delivery]:
        """Run ``signal.lua`` once for the signals of one loop turn (see :mod:`.batch`)."""
        keys: list[bytes] = []
        args: list[bytes | str] = list(self._grace_bounds or (b"", b""))
        for swarm_id, digest, cid, message in batch:
            key = self.keys.swarm(swarm_id)
            keys += (key, self.keys.grace_set(swarm_id), key + LOG_SUFFIX)
            args += (digest, cid, key, message)
        codes: bytes | str = self.once.run(self.scripts.signal, keys, [*args, *self._log_bounds])
        counts["redis_signal_batches"] += 1
        if isinstance(codes, str):  # a settled operation's result, read back from JSON
            codes = codes.encode("ascii")
        return [SIGNAL_CODES[code] for code in codes]

    def _keeping(self, frame: bytes) -> list[bytes | int]:
        """What a script needs to keep ``frame`` for a peer in its grace (resume on)."""
        if not self.resume_grace:
            return []
        return [frame, self.resume_bytes, int(self.resume_grace * 1000)]

    def swarm_count(self) -> int:
        return self.swarms.swarm_count()

    def _on_swarm(self, swarm_id: str, payload: bytes) -> None:
        """A swarm's pub/sub message: deliver it to this process's peers of the swarm.

        A numbered message (swarm log on) is applied once: live, or from the log after
        a pub/sub outage (see :meth:`_catch_up_swarms`), whichever comes first."""
        seq = 0
        if payload[:1] == b"#":
            seq, payload = codec.numbered(payload)
            if seq <= self._applied.get(swarm_id, 0):
                return  # applied already (or malformed: number 0)
            self._applied[swarm_id] = seq
        message = codec.decode(payload)
        if isinstance(message, codec.Broadcast):
            peers = self.swarms.streams(swarm_id)
            for stream in peers:
                self._put(stream, message.frame, seq)  # encoded once by the sender
            counts["signals_out"] += len(peers)
            for (sid, _), draining in self._draining.items():
                if sid == swarm_id:
                    draining.late.append(message.frame)
        elif isinstance(message, codec.Direct):
            target = self.swarms.peer(swarm_id, message.cid)
            if target is not None:
                self._put(target, message.frame, seq)
                counts["signals_out"] += 1
            elif (swarm_id, message.cid) in self._draining:
                self._draining[swarm_id, message.cid].late.append(message.frame)
        elif isinstance(message, codec.Detached):
            sealed = self._draining.get((swarm_id, message.cid))
            if sealed is not None:
                del self._draining[swarm_id, message.cid]
                gevent.spawn(self._seal, swarm_id, message.cid, sealed)
        elif isinstance(message, codec.Resumed):
            numbered = self._numbered.get(message.cid)
            if numbered is not None and self.swarms.peer(swarm_id, message.cid) is not None:
                numbered.live = True
        elif isinstance(message, codec.Joined):
            self.swarms.confirm_join(swarm_id, message.cid)
            self._to_initiator(swarm_id, "join", message.cid, seq)
        elif isinstance(message, codec.Left):
            self._to_initiator(swarm_id, "leave", message.cid, seq)
        elif isinstance(message, codec.Ended):
            # The initiator left (or died): every stream of the swarm ends. The
            # peers stay registered until their leave_swarm, which releases them.
            for stream in self.swarms.streams(swarm_id) + self.swarms.joining(swarm_id):
                stream.end("swarm closed")

    def _to_initiator(self, swarm_id: str, event: str, cid: str, seq: int = 0) -> None:
        stream = self.swarms.initiator(swarm_id)
        if stream is not None:
            self._put(stream, framing.swarm_event(event, {"id": swarm_id, "cid": cid}), seq)
        elif self.resume_grace:
            # An initiator detached here, whose "detached" message is still on its way.
            for (sid, _), draining in self._draining.items():
                if sid == swarm_id and draining.initiator:
                    draining.late.append(framing.swarm_event(event, {"id": swarm_id, "cid": cid}))

    def _put(self, stream: Stream, frame: bytes, seq: int = 0) -> None:
        """Queue a swarm frame (from swarm log message ``seq``, 0 if none); with resume
        on, numbered and kept (see :class:`Numbered`)."""
        numbered = self._numbered.get(stream.cid or "")
        if numbered is None:
            stream.put(frame)
        else:
            numbered.put(stream, frame, self.resume_bytes, seq)

    def _numbering(self, key: bytes, *, live: bool = True) -> Numbered:
        """A peer's frame numbering; its ids carry log numbers with the swarm log on."""
        return Numbered(key, live=live, logged=bool(self.swarm_log))

    # -- resume ----------------------------------------------------------------------

    def _detach(self, swarm_id: str, cid: str, *, initiator: bool) -> bool:
        """The peer's stream here was lost: keep it in Redis for the grace, with the
        frames it may not have received. False if Redis could not be told (it leaves)."""
        numbered = self._numbered.get(cid)
        if numbered is None:
            return False
        digest = token_digest(numbered.key.decode())
        self._draining[swarm_id, cid] = Draining(digest, initiator=initiator)
        try:
            done = self._run_detach(
                swarm_id,
                cid,
                digest,
                numbered.base(),
                self.process,
                DRAINING_MS,
                [frame for _, frame in numbered.sent],
            )
        except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
            log.warning("could not keep %s of swarm %s for a resume: %s", cid, swarm_id, exc)
            self._draining.pop((swarm_id, cid), None)
            return False
        if done == 2:
            # Taken over (it resumed elsewhere, or a reaper put it in its grace while
            # this process stalled): forget it here, and leave Redis alone.
            self._draining.pop((swarm_id, cid), None)
            self._forget_local(swarm_id, cid, initiator=initiator)
            return True
        if not done:
            self._draining.pop((swarm_id, cid), None)
            return False
        stream, _ = self.swarms.remove(swarm_id, cid, initiator=initiator)
        self._numbered.pop(cid, None)
        self.hub.peers.pop(cid, None)
        self._untrack(swarm_id)
        log.info(
            "peer lost, may resume: swarm=%s cid=%s reason=%s grace=%ss",
            swarm_id,
            cid,
            stream.end_reason if stream is not None else None,
            self.resume_grace,
        )
        # The topic is held until the "detached" message comes back (see _seal).
        return True

    def _run_detach(
        self,
        swarm_id: str,
        cid: str,
        digest: str,
        base: int,
        process: str,
        draining_ms: int,
        frames: list[bytes],
    ) -> int:
        """Run ``detach.lua`` for a peer of ``process``; its outcome (1, 0 or 2)."""
        key = self.keys.swarm(swarm_id)
        entry = f"{swarm_id} {cid}"
        return int(
            self.once.run(
                self.scripts.detach,
                [
                    key,
                    self.keys.proc_peers(process),
                    self.keys.grace_set(swarm_id),
                    self.keys.kept(swarm_id, cid),
                    self.keys.queue(swarm_id, cid),
                    self.keys.draining(swarm_id, cid),
                    self.keys.resume(digest),
                    self.keys.grace,
                    self.keys.swarm_log(swarm_id),
                ],
                [
                    cid,
                    digest,
                    base,
                    entry,
                    int(self.resume_grace * 1000),
                    int(self.liveness.swarm_ttl * 1000),
                    entry,
                    key,
                    codec.detached(cid),
                    draining_ms,
                    process,
                    *frames,
                    *self._log_bounds,
                ],
            )
        )

    def _forget_local(self, swarm_id: str, cid: str, *, initiator: bool) -> Stream | None:
        """Forget a peer here that another process now holds; its stream, if any."""
        stream, _ = self.swarms.remove(swarm_id, cid, initiator=initiator)
        self._numbered.pop(cid, None)
        if self.hub.peers.get(cid) is stream:
            self.hub.peers.pop(cid, None)
        if stream is not None:
            self.listener.release([self.keys.swarm(swarm_id)])
            self._untrack(swarm_id)
        return stream

    def _taken_over(self, swarm_id: str, cid: str) -> None:
        """The fence found a peer of this process held by another, or in its grace:
        its stream here ends, and its client resumes (no leave: it did not leave)."""
        numbered = self._numbered.get(cid)
        if numbered is not None and not numbered.ready:
            return  # resuming here right now: Redis is about to say so
        initiator = self.swarms.initiator(swarm_id) is self.swarms.peer(swarm_id, cid)
        stream = self._forget_local(swarm_id, cid, initiator=initiator)
        if stream is not None:
            stream.end("replaced")

    def _reap_peer(self, swarm_id: str, cid: str, process: str) -> int:
        """The reaper found ``process`` dead: its peer goes into its resume grace like a
        peer whose stream was lost (with the grace on), else leaves at once."""
        if self.resume_grace:
            digest = self.redis.hget(self.keys.swarm(swarm_id), f"r:{cid}")
            if digest is not None:
                # Only the process that died knew which frames the client got: the
                # position the client gives is taken as it is (base -1).
                done = self._run_detach(swarm_id, cid, decode(digest), -1, process, 1, [])
                if done == 1:
                    log.info(
                        "peer of a dead process may resume: swarm=%s cid=%s grace=%ss",
                        swarm_id,
                        cid,
                        self.resume_grace,
                    )
                return 1 if done == 1 else 0
        return self._leave_in_redis(swarm_id, cid, process)

    def _resume_index(self) -> list[bytes]:
        """The resume index entries of this process's peers, for the heartbeat to renew."""
        return [self.keys.resume(token_digest(n.key.decode())) for n in self._numbered.values()]

    def _index(self, resume_key: str, swarm_id: str, cid: str) -> None:
        """Let any process find a peer by its resume key from now on, before its stream
        is lost too: its process may die (the heartbeat renews the entry)."""
        try:
            self.redis.set(
                self.keys.resume(token_digest(resume_key)),
                f"{swarm_id} {cid}",
                px=int(self.liveness.swarm_ttl * 1000),
            )
        except (rexc.RedisError, OSError) as exc:
            log.warning("could not index %s of swarm %s for a resume: %s", cid, swarm_id, exc)

    def _seal(self, swarm_id: str, cid: str, draining: Draining) -> None:
        """Hand Redis the frames that were on their way to a detached peer."""
        try:
            self.once.run(
                self.scripts.seal,
                [
                    self.keys.swarm(swarm_id),
                    self.keys.kept(swarm_id, cid),
                    self.keys.draining(swarm_id, cid),
                ],
                [cid, draining.digest, int(self.resume_grace * 1000), *draining.late],
            )
        except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
            # The draining mark expires by itself; these frames are lost to the resume.
            log.warning("could not add %d frames for %s's resume: %s", len(draining.late), cid, exc)
        finally:
            self.listener.release([self.keys.swarm(swarm_id)])
            self._untrack(swarm_id)

    def resume_swarm(
        self, handle: str, stream: Stream, swarm_id: str | None = None
    ) -> Membership | None:
        parsed = resume_position(handle)
        if parsed is None or not self.resume_grace:
            return None
        self.start()
        key, seq, position = parsed
        digest = token_digest(key)
        with unavailable():
            found = self.redis.get(self.keys.resume(digest))
        if found is None:
            return self._replace_local(handle, key, stream, swarm_id)
        sid, _, cid = decode(found).partition(" ")
        if swarm_id is not None and sid != swarm_id:
            return None
        numbered = self._numbered.get(cid)
        if numbered is not None and numbered.key == key.encode():
            return self._replace_local(handle, key, stream, swarm_id)
        topic = self.keys.swarm(sid)
        self._untrack(sid)
        self.listener.acquire([(topic, "swarm", sid)])
        # Routed from before the resume script, so nothing published after it is missed;
        # what was published before it is in the replay and is dropped (Numbered.live).
        numbered = self._numbered[cid] = self._numbering(key.encode(), live=False)
        stream.swarm_id, stream.cid = sid, cid
        self.swarms.add_peer(sid, cid, stream, initiator=False)
        reply: list[Any] = [0]
        try:
            reply = self._run_resume(sid, cid, digest, seq, position)
        finally:
            if int(reply[0]) != 3:
                self.swarms.remove(sid, cid, initiator=False)
                self._numbered.pop(cid, None)
                stream.swarm_id = stream.cid = None
                self.listener.release([topic])
                self._untrack(sid)
        if int(reply[0]) == 2:
            log.warning("peer cannot resume, frames lost: swarm=%s cid=%s", sid, cid)
            self._end_grace(sid, cid, digest)
            return None
        if int(reply[0]) == 0 and self._held_elsewhere(sid, cid, digest):
            raise ResumeLater(f"peer {cid} of swarm {sid} is still held by another process")
        if int(reply[0]) != 3:
            return None
        self._index(key, sid, cid)
        total, initiator, logged, count = (
            int(reply[1]),
            bool(int(reply[2])),
            int(reply[3]),
            int(reply[4]),
        )
        frames = self._concerning(sid, cid, initiator, reply[5 : 5 + count])
        frames += [(frame, 0) for frame in reply[5 + count :]]
        total += len(frames) - (len(reply) - 5 - count)
        if frames and logged:
            # Once the client has them all, it has everything for it up to the resume.
            frames[-1] = (frames[-1][0], logged)
        if logged:
            self._enter(sid, logged)
        if initiator:
            self.swarms.add_peer(sid, cid, stream, initiator=True)
        self.hub.peers[cid] = stream
        numbered.replay(stream, frames, total, self.resume_bytes)
        counts["resumes"] += 1
        log.info("peer resumed: swarm=%s cid=%s after=%d", sid, cid, seq)
        return Membership(sid, cid, "", initiator=initiator)

    @staticmethod
    def _concerning(
        swarm_id: str, cid: str, initiator: bool, entries: Sequence[bytes]
    ) -> list[tuple[bytes, int]]:
        """The frames that swarm log ``entries`` (oldest first) make for peer ``cid``, each
        with its log number, as :meth:`_on_swarm` would have queued them for it."""
        frames: list[tuple[bytes, int]] = []
        for entry in entries:
            seq, payload = codec.numbered(entry)
            message = codec.decode(payload)
            if isinstance(message, codec.Broadcast) or (
                isinstance(message, codec.Direct) and message.cid == cid
            ):
                frames.append((message.frame, seq))
            elif initiator and isinstance(message, (codec.Joined, codec.Left)):
                event = "join" if isinstance(message, codec.Joined) else "leave"
                frames.append(
                    (framing.swarm_event(event, {"id": swarm_id, "cid": message.cid}), seq)
                )
        return frames

    def _held_elsewhere(self, sid: str, cid: str, digest: str) -> bool:
        """Whether the peer of this resume key is held by another process, not yet in its
        grace: that process did not find the stream lost yet, or died and is not yet
        reaped. Either soon puts it in its grace; its client is asked to come back."""
        with unavailable():
            process, grace, resume = self.redis.hmget(
                self.keys.swarm(sid), [f"p:{cid}", f"g:{cid}", f"r:{cid}"]
            )
        return (
            process is not None
            and grace is None
            and resume is not None
            and decode(resume) == digest
            and decode(process) != self.process
        )

    def _run_resume(
        self, sid: str, cid: str, digest: str, seq: int, position: int | None = None
    ) -> list[Any]:
        """Run ``resume.lua``, asking again while the previous process drains."""
        entry = f"{sid} {cid}"
        for _ in range(int(DRAINING_MS / 50) + 10):
            reply = self.once.run(
                self.scripts.resume,
                [
                    self.keys.swarm(sid),
                    self.keys.grace_set(sid),
                    self.keys.kept(sid, cid),
                    self.keys.queue(sid, cid),
                    self.keys.draining(sid, cid),
                    self.keys.proc_peers(self.process),
                    self.keys.resume(digest),
                    self.keys.grace,
                    self.keys.swarm_log(sid),
                ],
                [
                    cid,
                    digest,
                    seq,
                    self.process,
                    entry,
                    self.keys.swarm(sid),
                    codec.resumed(cid),
                    entry,
                    "" if position is None else position,
                    *self._log_bounds,
                ],
            )
            if int(reply[0]) != 1:
                return list(reply)
            gevent.sleep(0.05)
        return [0]

    def _replace_local(
        self, handle: str, key: str, stream: Stream, swarm_id: str | None
    ) -> Membership | None:
        """A resume of a peer whose stream here is not yet known to be lost: detach it
        now, then resume."""
        for sid, cid, old in list(self.swarms.confirmed()):
            numbered = self._numbered.get(cid)
            if numbered is None or numbered.key != key.encode():
                continue
            if swarm_id is not None and sid != swarm_id:
                return None
            initiator = self.swarms.initiator(sid) is old
            if not self._detach(sid, cid, initiator=initiator):
                return None
            old.end("replaced")
            return self.resume_swarm(handle, stream, swarm_id)
        return None

    def _end_grace(self, swarm_id: str, cid: str, digest: str) -> int:
        """Make a peer in its grace leave (once, whichever process asks first)."""
        outcome = int(
            self.once.run(
                self.scripts.leave, *self._leave_call(swarm_id, cid, self.process, digest)
            )
        )
        if outcome == 2:
            signals.swarm_closed.send(self.sender, swarm_id=swarm_id, cid=cid)
        elif outcome == 1:
            signals.peer_left.send(self.sender, swarm_id=swarm_id, cid=cid)
        return outcome

    def _expire_loop(self) -> None:
        interval = min(1.0, self.resume_grace / 4)
        while True:
            gevent.sleep(interval * random.uniform(0.5, 1.0))
            try:
                self.expire_graces()
            except (BrokerUnavailable, rexc.RedisError, OSError) as exc:
                log.debug("grace expiry failed: %s", exc)
            except Exception:
                log.exception("flask_signal: grace expiry failed")

    def expire_graces(self) -> int:
        """Make the peers whose grace is over leave; returns how many left here."""
        seconds, micros = self.redis.time()
        now = seconds * 1000 + micros // 1000
        left = 0
        due: list[Any] = self.redis.zrangebyscore(self.keys.grace, "-inf", now, start=0, num=100)
        for raw in due:
            entry = decode(raw)
            swarm_id, _, cid = entry.partition(" ")
            digest = self.redis.hget(self.keys.swarm(swarm_id), f"g:{cid}")
            if digest is not None:
                log.info("peer did not resume: swarm=%s cid=%s", swarm_id, cid)
                if self._end_grace(swarm_id, cid, decode(digest)):
                    left += 1
            self.redis.zrem(self.keys.grace, raw)
        return left

    # -- channels ------------------------------------------------------------------

    def publish(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        if id is not None:
            framing.check_field("id", id)
        counts["events_in"] += 1
        # The id is only known inside the script: send the frame around it.
        frame = framing.message(data, event=event, id="0", retry=retry)
        head, _, tail = frame.rpartition(b"\nid: 0\n")
        names = tuple(dict.fromkeys(channels))
        item = (names, head + b"\n", tail, id or "", codec.event_marker(event))
        if len(names) > PUBLISH_BATCH_CHANNELS:
            epoch, seq = self._send_publishes([item])[0]
        else:
            epoch, seq = self._publishes.run(item)
        return id if id is not None else format_event_id(epoch, seq)

    def _send_publishes(self, batch: list[_Publish]) -> list[tuple[str, int]]:
        """Run ``publish.lua`` once for the events published in one loop turn (see
        :mod:`.batch`); they are numbered in the order they came."""
        keys = [self.keys.seq]
        args: list[bytes | str | int] = [
            new_epoch(),
            self.history_size,
            int(self.history_ttl * 1000),
        ]
        for names, head, tail, app_id, marker in batch:
            topics = []
            for name in names:
                topic = self.keys.channel(name)
                keys += (topic, self.keys.channel_meta(name))
                topics.append(topic)
            args += (head, tail, app_id, marker, len(topics), *topics)
        epoch, last = self.once.run(self.scripts.publish, keys, args)
        counts["redis_publish_batches"] += 1
        first = int(last) - len(batch) + 1
        text = decode(epoch)
        return [(text, first + i) for i in range(len(batch))]

    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        # Redis knows which channel topics have a subscriber, in any process.
        with unavailable():
            topics = self.redis.pubsub_channels(self.keys.channels_pattern)
        names = sorted({self.keys.channel_name(topic) for topic in topics} | set(self.hub.channels))
        return self.publish(names, data, event=event, id=id, retry=retry)

    def subscribe(
        self, stream: Stream, channels: Sequence[str], last_event_id: str | None = None
    ) -> Replay:
        self.start()
        names = tuple(dict.fromkeys(channels))
        items = [(self.keys.channel(name), "chan", name) for name in names]
        if stream.client is not None:
            items.append((self.keys.client(stream.client), "client", stream.client))
        topics = tuple(item[0] for item in items)
        pending = _Pending(stream)
        for name in names:
            self._pending.setdefault(name, set()).add(pending)
        baseline = self._heard
        if last_event_id is None and self._epoch is None:
            # Where the sequencer stands: the point to catch up from after a reconnection.
            with unavailable():
                known_epoch, known_seq = self.redis.hmget(self.keys.seq, ["epoch", "seq"])
            if known_epoch is not None:
                self._epoch = decode(known_epoch)
                baseline = max(baseline, int(known_seq or 0))
        try:
            # Live events are buffered from the moment Redis confirms the
            # subscription; only then is the history read, so none falls between.
            self.listener.acquire(items)
            try:
                history = (
                    self._read_history(names, last_event_id) if last_event_id is not None else None
                )
            except BaseException:
                self.listener.release(topics)
                raise
        finally:
            for name in names:
                waiting = self._pending.get(name)
                if waiting is not None:
                    waiting.discard(pending)
                    if not waiting:
                        del self._pending[name]
        # From here to hub.subscribe nothing yields: the listener cannot slip in.
        after, current, lost, events = history if history is not None else (0, baseline, False, {})
        for seq, frame in pending.events.items():
            if seq > after:
                events[seq] = frame
        stream.last_seq = max(current, *events) if events else current
        self._subscribed[stream] = topics
        for name in self.hub.subscribe(stream, names):
            signals.channel_opened.send(self.sender, channel=name)
        self._presence_change(names, stream.client, 1)
        return Replay([events[seq] for seq in sorted(events)], lost)

    def channel_history(self, channel: str, since: str | None = None) -> Replay:
        _, _, lost, events = self._read_history([channel], "0" if since is None else since)
        return Replay([events[seq] for seq in sorted(events)], lost)

    def _read_history(
        self, names: Sequence[str], last_event_id: str
    ) -> tuple[int, int, bool, dict[int, bytes]]:
        keys = [self.keys.seq]
        for name in names:
            keys += [self.keys.channel(name), self.keys.channel_meta(name)]
        parts = split_event_id(last_event_id)
        head, tail = (parts[0], str(parts[1])) if parts is not None else ("", "")
        reply = self.once.read(self.scripts.replay, keys, [last_event_id, head, tail])
        current, lost, after, flat = int(reply[1]), bool(reply[2]), int(reply[3]), reply[4:]
        if reply[0]:
            self._epoch = decode(reply[0])
        events = {int(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        return after, current, lost, events

    def unsubscribe(self, stream: Stream) -> None:
        topics = self._subscribed.pop(stream, None)
        if topics is None:
            return
        for name in self.hub.unsubscribe(stream):
            signals.channel_emptied.send(self.sender, channel=name)
        self._presence_change(stream.channels, stream.client, -1)
        self.listener.release(topics)

    # -- clients and presence ------------------------------------------------------

    def send_to(
        self,
        client: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        # Through Redis even when this process holds the client: one path, one order.
        frame = framing.message(data, event=event, id=id, retry=retry)
        with unavailable():
            self.redis.publish(self.keys.client(client), codec.to_client(frame))

    def disconnect(self, client: str) -> None:
        with unavailable():
            self.redis.publish(self.keys.client(client), codec.drop())

    def presence(self, channel: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for client, count in self._presence_entries(channel):
            if client:
                found[client] = found.get(client, 0) + count
        return found

    def subscriber_count(self, channel: str) -> int:
        return sum(count for _, count in self._presence_entries(channel))

    def _presence_entries(self, channel: str) -> list[tuple[str, int]]:
        """(client id or "", streams) of every process's entries for ``channel``."""
        with unavailable():
            entries = self.redis.hgetall(self.keys.presence(channel))
        return [(decode(field).partition("\n")[2], int(count)) for field, count in entries.items()]

    def _presence_change(self, names: Sequence[str], client: str | None, delta: int) -> None:
        """Count a stream in or out of ``names`` here; Redis learns of it in the background."""
        who = client or ""
        for name in names:
            key = (name, who)
            count = self._present.get(key, 0) + delta
            if count > 0:
                self._present[key] = count
            else:
                self._present.pop(key, None)
            self._dirty.add(key)
        self._start_flusher()

    def refresh_presence(self) -> None:
        """Write every presence entry of this process again (from the heartbeat, every
        :data:`PRESENCE_REFRESH` seconds): entries a reaper removed while this process
        stalled, or Redis lost, come back, and the keys' expiry is renewed."""
        self._presence_asserted = time.monotonic()
        self._dirty.update(self._present)
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn(self._flush_presence)

    def _flush_presence(self) -> None:
        """Write this process's changed presence entries, from one greenlet so that
        writes reach Redis in order; each writes the count as it is now. A failed
        write is retried at the next heartbeat; if this process dies, the reaper of
        another removes its entries (see :meth:`.Liveness.reap_presence`)."""
        while self._dirty and self.process:
            batch, self._dirty = self._dirty, set()
            ttl = int(self.history_ttl * 1000)
            pipe = self.redis.pipeline(transaction=False)
            for name, who in batch:
                key, field = self.keys.presence(name), f"{self.process}\n{who}"
                count = self._present.get((name, who), 0)
                if count:
                    pipe.hset(key, field, count)
                    pipe.pexpire(key, ttl)
                    pipe.sadd(self.keys.proc_presence(self.process), name)
                else:
                    pipe.hdel(key, field)
            try:
                pipe.execute()
            except (rexc.RedisError, OSError) as exc:
                log.warning("could not record channel presence in Redis: %s", exc)
                self._dirty |= batch
                return

    def _on_client(self, client: str, payload: bytes) -> None:
        message = codec.decode(payload)
        if isinstance(message, codec.ToClient):
            self.hub.to_client(client, message.frame)
        elif isinstance(message, codec.Drop):
            self.hub.end_client(client)

    def close_channel(self, channel: str) -> None:
        self.hub.end_channel(channel)
        with unavailable():
            self.redis.publish(self.keys.channel(channel), codec.closed(self.process))

    def _on_channel(self, channel: str, payload: bytes) -> None:
        message = codec.decode(payload)
        if isinstance(message, codec.Closed):
            if message.process != self.process:
                self.hub.end_channel(channel)
            return
        if not isinstance(message, codec.Event):
            return
        if message.seq < self._heard:
            self._history_lost()
        elif self._epoch is None:
            # The epoch of what streams were given, for a catch-up to resume from: a
            # process whose streams subscribed before the first event learns it here.
            parts = split_event_id(message.id)
            if parts is not None and parts[1] == message.seq:
                self._epoch = parts[0]
        self._heard = message.seq
        for pending in self._pending.get(channel, ()):
            pending.events[message.seq] = message.frame
        if channel not in self.hub.channels:
            return
        reached = self.hub.deliver(channel, message.seq, message.frame)
        signals.message_published.send(
            self.sender, channel=channel, id=message.id, event=message.event, clients=reached
        )

    # -- pub/sub callbacks -------------------------------------------------------------

    def _on_message(self, topic: Topic, payload: bytes) -> None:
        if topic.kind == "swarm":
            self._on_swarm(topic.key, payload)
        elif topic.kind == "client":
            self._on_client(topic.key, payload)
        else:
            self._on_channel(topic.key, payload)

    def _on_lost(self) -> None:
        """The pub/sub connection failed. Streams stay open: once a new connection has
        every topic again, :meth:`_on_restored` catches them up."""
        log.warning("redis pub/sub connection lost; streams stay open while it reconnects")

    def _on_restored(self) -> None:
        """A new pub/sub connection holds every topic again: channels catch up from
        their history, and swarms are checked against Redis, before any new message."""
        self._catch_up_channels()
        self._catch_up_swarms()
        self._resync_swarms()

    def _history_lost(self) -> None:
        """The event sequencer started again (Redis flushed or restarted empty): end the
        channel streams, whose clients resume and are told that history was lost."""
        log.warning("channel history in Redis was lost; ending channel streams")
        self._epoch = None
        # Soon and spread: a client comes back to learn what it missed, not after an
        # EventSource's default 3 s, and not all of them in the same instant.
        for stream in tuple(self._subscribed):
            end_with_retry(stream, "broker unavailable", GAP_SPREAD)

    def _catch_up_channels(self) -> None:
        streams = [stream for stream in self._subscribed if not stream.ended]
        if not streams:
            return
        after = min(stream.last_seq for stream in streams)
        last_id = format_event_id(self._epoch, after) if self._epoch else "0"
        collected: list[tuple[int, str, bytes]] = []
        for name in sorted({name for stream in streams for name in stream.channels}):
            _, _, lost, events = self._read_history([name], last_id)
            if lost:
                self.hub.end_channel(name, "broker unavailable", retry_spread=GAP_SPREAD)
                continue
            collected += [(seq, name, frame) for seq, frame in events.items()]
        # In the order they were published, so that no stream skips an older one.
        for seq, name, frame in sorted(collected):
            self.hub.deliver(name, seq, frame)
        if collected:
            log.info("channels caught up: %d events from history", len(collected))

    def _enter(self, swarm_id: str, seq: int) -> None:
        """A local peer came in with the swarm log's message ``seq`` (its join or resume):
        nothing before it concerns it, so a catch-up need not reach further back."""
        self._came_in[swarm_id] = min(self._came_in.get(swarm_id, seq - 1), seq - 1)

    def _untrack(self, swarm_id: str) -> None:
        """Forget where a swarm's log stands once no local peer is left in it: its topic
        may be released, and what it then misses concerns no one here."""
        if not self.swarms.streams(swarm_id) and not self.swarms.joining(swarm_id):
            self._applied.pop(swarm_id, None)
            self._came_in.pop(swarm_id, None)

    def _catch_up_swarms(self) -> None:
        """Apply what the lost connection missed of each swarm with local peers, from its
        log, in order and once each (newer live messages wait in the socket meanwhile).
        If the log no longer reaches back, the swarm's local streams end with a
        ``retry:`` hint: their clients come back (as new peers), rather than miss
        signals, joins or leaves without knowing."""
        if not self.swarm_log:
            return
        local = {swarm_id for swarm_id, _, _ in self.swarms.members()}
        for table in (self._applied, self._came_in):
            for swarm_id in [swarm_id for swarm_id in table if swarm_id not in local]:
                del table[swarm_id]
        applied = 0
        for swarm_id in sorted(local):
            after = self._applied.get(swarm_id, self._came_in.get(swarm_id))
            if after is None:
                continue  # came in while Redis was unsure (OutcomeUnknown): resync only
            reply = self.once.read(
                self.scripts.missed,
                [self.keys.swarm(swarm_id), self.keys.swarm_log(swarm_id)],
                [after],
            )
            if int(reply[0]):
                log.warning(
                    "swarm %s: messages lost in a pub/sub outage are no longer in its log;"
                    " ending its streams here",
                    swarm_id,
                )
                for stream in self.swarms.streams(swarm_id) + self.swarms.joining(swarm_id):
                    end_with_retry(stream, "gap", GAP_SPREAD)
                continue
            for payload in reply[1:]:
                self._on_swarm(swarm_id, payload)
            applied += len(reply) - 1
        if applied:
            log.info("swarms caught up: %d messages from their logs", applied)

    def _resync_swarms(self) -> None:
        """Apply what the lost connection may have carried: joins confirmed, peers
        removed, swarms ended."""
        swarm_ids = sorted({swarm_id for swarm_id, _, _ in self.swarms.members()})
        if not swarm_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for swarm_id in swarm_ids:
            pipe.hgetall(self.keys.swarm(swarm_id))
        for swarm_id, fields in zip(swarm_ids, pipe.execute(), strict=True):
            if not fields:
                for stream in self.swarms.streams(swarm_id) + self.swarms.joining(swarm_id):
                    stream.end("swarm closed")
                continue
            for stream in self.swarms.joining(swarm_id):
                if stream.cid is not None and f"k:{stream.cid}".encode() in fields:
                    self.swarms.confirm_join(swarm_id, stream.cid)
            for sid, cid, stream in list(self.swarms.confirmed()):
                if sid == swarm_id and f"k:{cid}".encode() not in fields:
                    stream.end("broker unavailable")
