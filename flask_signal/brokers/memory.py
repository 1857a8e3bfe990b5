"""The in-process broker: swarms, tokens and channel history in this process's memory."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import gevent

from .. import framing, signals
from ..errors import SwarmFull
from ..hub import Stream, counts
from . import (
    Broker,
    Delivery,
    Membership,
    Replay,
    format_event_id,
    new_epoch,
    new_id,
    new_resume_key,
    parse_event_id,
    parse_resume,
    stamp,
    token_digest,
)

log = logging.getLogger("flask_signal")


def _digest(token: str) -> bytes:
    """A swarm token as this broker keeps it: :func:`token_digest`'s hash, as 32 raw
    bytes rather than 64 hex digits (half the size, for every peer of the process)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class _Peer:
    """A swarm peer: its stream while connected, and what it needs to resume."""

    __slots__ = ("cid", "digest", "expiry", "key", "sent", "sent_bytes", "seq", "stream")

    def __init__(self, cid: str, digest: bytes, stream: Stream, key: bytes) -> None:
        self.cid = cid
        self.digest = digest
        self.stream: Stream | None = stream
        #: The resume key (empty with resume off), and the last frame number sent.
        self.key = key
        self.seq = 0
        #: The latest frames sent, as (seq, frame), for a resume to replay; None
        #: with resume off (an empty deque is some 600 bytes, and a server holds
        #: tens of thousands of peers).
        self.sent: deque[tuple[int, bytes]] | None = deque() if key else None
        self.sent_bytes = 0
        #: The greenlet that makes a detached peer leave when its grace is over.
        self.expiry: gevent.Greenlet[Any] | None = None


class _Swarm:
    __slots__ = ("id", "initiator", "peers", "tokens")

    def __init__(self, swarm_id: str, initiator: str) -> None:
        self.id = swarm_id
        self.initiator = initiator
        self.peers: dict[str, _Peer] = {}
        self.tokens: dict[bytes, str] = {}  # token digest -> cid


class _Event(NamedTuple):
    seq: int
    id: str
    frame: bytes


class _Channel:
    __slots__ = ("events", "evicted_seq", "touched")

    def __init__(self, size: int) -> None:
        self.events: deque[_Event] = deque(maxlen=size)
        #: The highest sequence number pushed out of the history, 0 if none yet.
        self.evicted_seq = 0
        self.touched = time.monotonic()


class MemoryBroker(Broker):
    """State in this process. Every operation completes without yielding to
    another greenlet, so each is atomic under gevent.

    A channel's history is forgotten ``history_ttl`` seconds after its last
    publish once it has no subscriber, so that channel names that come and
    go (one per user, per document) do not accumulate.
    """

    url = "memory://"
    schemes = ("memory",)

    def __init__(self, *, history_ttl: float = 86400.0, **options: Any) -> None:
        super().__init__(**options)
        self.history_ttl = history_ttl
        self.swarms: dict[str, _Swarm] = {}
        #: Resume key digest -> (swarm id, cid), for peers that may resume.
        self.resumes: dict[str, tuple[str, str]] = {}
        self.history: dict[str, _Channel] = {}
        self.epoch = new_epoch()
        self.seq = 0

    # -- swarms --------------------------------------------------------------------

    def create_swarm(self, stream: Stream) -> Membership:
        member = Membership(new_id(), new_id(), new_id(), initiator=True)
        swarm = self.swarms[member.id] = _Swarm(member.id, member.cid)
        self._add_peer(swarm, member, stream)
        signals.swarm_created.send(self.sender, swarm_id=member.id, cid=member.cid)
        return member

    def join_swarm(self, swarm_id: str, stream: Stream) -> Membership | None:
        swarm = self.swarms.get(swarm_id)
        if swarm is None:
            return None
        if self.max_swarm_peers and len(swarm.peers) >= self.max_swarm_peers:
            raise SwarmFull(swarm_id)
        # The swarm's own id string, not the one parsed from this request: each
        # peer would keep its own copy (some 80 bytes) for as long as it stays.
        member = Membership(swarm.id, new_id(), new_id(), initiator=False)
        self._add_peer(swarm, member, stream)
        initiator = swarm.peers.get(swarm.initiator)
        if initiator is not None:
            self._deliver(
                initiator, framing.swarm_event("join", {"id": swarm_id, "cid": member.cid})
            )
        if signals.peer_joined.receivers:  # per peer: no blinker call when nobody listens
            signals.peer_joined.send(self.sender, swarm_id=swarm_id, cid=member.cid)
        return member

    def _add_peer(self, swarm: _Swarm, member: Membership, stream: Stream) -> None:
        stream.swarm_id, stream.cid = member.id, member.cid
        digest = _digest(member.token)
        key = b""
        if self.resume_grace:
            text = new_resume_key()
            key = text.encode()
            self.resumes[token_digest(text)] = (member.id, member.cid)
        peer = swarm.peers[member.cid] = _Peer(member.cid, digest, stream, key)
        swarm.tokens[digest] = member.cid
        self.hub.peers[member.cid] = stream
        self._deliver(peer, self.connect_frame(member))

    def _deliver(self, peer: _Peer, frame: bytes) -> None:
        """Send ``frame`` to ``peer``; with resume on, numbered and kept for a resume."""
        sent = peer.sent
        if sent is not None:
            peer.seq += 1
            frame = stamp(frame, peer.key, peer.seq)
            sent.append((peer.seq, frame))
            peer.sent_bytes += len(frame)
            while peer.sent_bytes > self.resume_bytes and len(sent) > 1:
                peer.sent_bytes -= len(sent.popleft()[1])
        if peer.stream is not None:
            peer.stream.put(frame)

    def leave_swarm(self, member: Membership, stream: Stream | None = None) -> None:
        swarm = self.swarms.get(member.id)
        peer = swarm.peers.get(member.cid) if swarm is not None else None
        if swarm is None or peer is None:
            return
        if stream is not None:
            if peer.stream is not stream:
                return  # replaced by a resume, or already detached
            if peer.key and stream.resumable:
                self._detach(swarm, peer, stream)
                return
        self._remove(swarm, peer)

    def _detach(self, swarm: _Swarm, peer: _Peer, stream: Stream) -> None:
        """The peer's connection was lost: keep it for the grace, buffering its frames."""
        peer.stream = None
        self.hub.peers.pop(peer.cid, None)
        peer.expiry = gevent.spawn_later(self.resume_grace, self._expire, swarm.id, peer)
        log.info(
            "peer lost, may resume: swarm=%s cid=%s reason=%s grace=%ss",
            swarm.id,
            peer.cid,
            stream.end_reason,
            self.resume_grace,
        )

    def _expire(self, swarm_id: str, peer: _Peer) -> None:
        swarm = self.swarms.get(swarm_id)
        if swarm is not None and swarm.peers.get(peer.cid) is peer and peer.stream is None:
            peer.expiry = None
            log.info("peer did not resume: swarm=%s cid=%s", swarm_id, peer.cid)
            self._remove(swarm, peer)

    def _forget(self, peer: _Peer) -> None:
        self.hub.peers.pop(peer.cid, None)
        if peer.key:
            self.resumes.pop(token_digest(peer.key.decode()), None)
        expiry, peer.expiry = peer.expiry, None
        if expiry is not None and expiry is not gevent.getcurrent():
            expiry.kill(block=False)

    def _remove(self, swarm: _Swarm, peer: _Peer) -> None:
        """The peer is gone for good: ``leave``, or for the initiator the end of the swarm."""
        del swarm.peers[peer.cid]
        swarm.tokens.pop(peer.digest, None)
        self._forget(peer)
        if peer.cid == swarm.initiator:
            del self.swarms[swarm.id]
            for other in swarm.peers.values():
                self._forget(other)
                if other.stream is not None:
                    other.stream.end("swarm closed")
            signals.swarm_closed.send(self.sender, swarm_id=swarm.id, cid=peer.cid)
            return
        initiator = swarm.peers.get(swarm.initiator)
        if initiator is not None:
            self._deliver(
                initiator, framing.swarm_event("leave", {"id": swarm.id, "cid": peer.cid})
            )
        if signals.peer_left.receivers:
            signals.peer_left.send(self.sender, swarm_id=swarm.id, cid=peer.cid)

    def resume_swarm(
        self, handle: str, stream: Stream, swarm_id: str | None = None
    ) -> Membership | None:
        parsed = parse_resume(handle)
        if parsed is None:
            return None
        key, seq = parsed
        found = self.resumes.get(token_digest(key))
        if found is None or (swarm_id is not None and found[0] != swarm_id):
            return None
        swarm = self.swarms[found[0]]
        peer = swarm.peers[found[1]]
        if seq > peer.seq or not hmac.compare_digest(key.encode(), peer.key):
            return None
        if seq < peer.seq and (not peer.sent or peer.sent[0][0] > seq + 1):
            # Frames it missed are gone: it cannot get every signal in order.
            log.warning("peer cannot resume, frames lost: swarm=%s cid=%s", swarm.id, peer.cid)
            if peer.stream is not None:
                peer.stream.end("replaced")
            self._remove(swarm, peer)
            return None
        old, peer.stream = peer.stream, stream
        if old is not None:
            old.end("replaced")  # a connection the server had not yet found lost
        expiry, peer.expiry = peer.expiry, None
        if expiry is not None:
            expiry.kill(block=False)
        stream.swarm_id, stream.cid = swarm.id, peer.cid
        self.hub.peers[peer.cid] = stream
        for number, frame in peer.sent or ():
            if number > seq:
                stream.put(frame)
        counts["resumes"] += 1
        log.info("peer resumed: swarm=%s cid=%s after=%d", swarm.id, peer.cid, seq)
        return Membership(swarm.id, peer.cid, "", initiator=peer.cid == swarm.initiator)

    def swarm_exists(self, swarm_id: str) -> bool:
        return swarm_id in self.swarms

    def authenticate(self, swarm_id: str, token: str) -> Delivery:
        swarm = self.swarms.get(swarm_id)
        if swarm is None:
            return Delivery.NO_SWARM
        if _digest(token) not in swarm.tokens:
            return Delivery.BAD_TOKEN
        return Delivery.OK

    def signal(
        self, swarm_id: str, data: Any, *, cid: str | None = None, token: str | None = None
    ) -> Delivery:
        swarm = self.swarms.get(swarm_id)
        if swarm is None:
            return Delivery.NO_SWARM
        if token is not None:
            sender = swarm.tokens.get(_digest(token))
            if sender is None:
                return Delivery.BAD_TOKEN
            if self.sender_field and isinstance(data, dict):
                data = {**data, self.sender_field: sender}
        if cid is not None:
            target = swarm.peers.get(cid)
            if target is None:
                return Delivery.NO_PEER
            self._deliver(target, framing.swarm_event("signal", data))
            counts["signals_out"] += 1
            return Delivery.OK
        # Encoded once; without resume every peer's queue holds the same bytes object.
        frame = framing.swarm_event("signal", data)
        for peer in tuple(swarm.peers.values()):
            self._deliver(peer, frame)
        counts["signals_out"] += len(swarm.peers)
        return Delivery.OK

    def swarm_count(self) -> int:
        return len(self.swarms)

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
        self.seq += 1
        if self.seq % 1024 == 0:
            self._forget_idle_channels()
        counts["events_in"] += 1
        event_id = id if id is not None else format_event_id(self.epoch, self.seq)
        frame = framing.message(data, event=event, id=event_id, retry=retry)
        for name in dict.fromkeys(channels):
            channel = self.history.get(name)
            if channel is None:
                channel = self.history[name] = _Channel(self.history_size)
            channel.touched = time.monotonic()
            if self.history_size:
                if id is not None and any(item.id == id for item in channel.events):
                    # A re-sent application id replaces its stored copy (sse-channel's history).
                    kept = [item for item in channel.events if item.id != id]
                    channel.events = deque(kept, maxlen=self.history_size)
                if len(channel.events) == channel.events.maxlen:
                    channel.evicted_seq = channel.events[0].seq
                channel.events.append(_Event(self.seq, event_id, frame))
            reached = self.hub.deliver(name, self.seq, frame)
            signals.message_published.send(
                self.sender, channel=name, id=event_id, event=event, clients=reached
            )
        return event_id

    def _forget_idle_channels(self) -> None:
        expired = time.monotonic() - self.history_ttl
        for name, channel in tuple(self.history.items()):
            if channel.touched < expired and name not in self.hub.channels:
                del self.history[name]

    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        return self.publish(tuple(self.hub.channels), data, event=event, id=id, retry=retry)

    def subscribe(
        self, stream: Stream, channels: Sequence[str], last_event_id: str | None = None
    ) -> Replay:
        replay = self._replay(channels, last_event_id)
        stream.last_seq = self.seq
        for name in self.hub.subscribe(stream, channels):
            signals.channel_opened.send(self.sender, channel=name)
        return replay

    def channel_history(self, channel: str, since: str | None = None) -> Replay:
        return self._replay([channel], "0" if since is None else since)

    def _replay(self, channels: Sequence[str], last_event_id: str | None) -> Replay:
        if last_event_id is None:
            return Replay([])
        after = self._resolve(channels, last_event_id)
        lost = after is None
        after = after or 0
        events: dict[int, bytes] = {}
        for name in channels:
            channel = self.history.get(name)
            if channel is None:
                continue
            if after < channel.evicted_seq and last_event_id != "0":
                lost = True
            for item in channel.events:
                if item.seq > after:
                    events[item.seq] = item.frame
        return Replay([events[seq] for seq in sorted(events)], lost)

    def _resolve(self, channels: Sequence[str], last_event_id: str) -> int | None:
        """The sequence number a Last-Event-ID stands for, ``None`` if unknown here."""
        seq = parse_event_id(self.epoch, last_event_id)
        if seq is not None:
            return seq if seq <= self.seq else None
        for name in channels:  # an id the application chose
            channel = self.history.get(name)
            for item in reversed(channel.events if channel else ()):
                if item.id == last_event_id:
                    return item.seq
        # "0" asks for everything, unless it is an application id (a counter from 0) kept here.
        return 0 if last_event_id == "0" else None

    def unsubscribe(self, stream: Stream) -> None:
        for name in self.hub.unsubscribe(stream):
            signals.channel_emptied.send(self.sender, channel=name)

    def close_channel(self, channel: str) -> None:
        self.hub.end_channel(channel)
