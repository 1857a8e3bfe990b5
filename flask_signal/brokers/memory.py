"""The in-process broker: swarms, tokens and channel history in this process's memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from .. import framing, signals
from ..hub import Stream
from . import (
    Broker,
    Delivery,
    Membership,
    Replay,
    format_event_id,
    new_epoch,
    new_id,
    parse_event_id,
    token_digest,
)


class _Swarm:
    __slots__ = ("id", "initiator", "peers", "tokens")

    def __init__(self, swarm_id: str, initiator: str) -> None:
        self.id = swarm_id
        self.initiator = initiator
        self.peers: dict[str, Stream] = {}
        self.tokens: dict[str, str] = {}  # token digest -> cid


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

    def __init__(self, *, history_ttl: float = 86400.0, **options: Any) -> None:
        super().__init__(**options)
        self.history_ttl = history_ttl
        self.swarms: dict[str, _Swarm] = {}
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
        member = Membership(swarm_id, new_id(), new_id(), initiator=False)
        self._add_peer(swarm, member, stream)
        initiator = swarm.peers.get(swarm.initiator)
        if initiator is not None:
            initiator.put(framing.swarm_event("join", {"id": swarm_id, "cid": member.cid}))
        signals.peer_joined.send(self.sender, swarm_id=swarm_id, cid=member.cid)
        return member

    def _add_peer(self, swarm: _Swarm, member: Membership, stream: Stream) -> None:
        stream.swarm_id, stream.cid = member.id, member.cid
        swarm.peers[member.cid] = stream
        swarm.tokens[token_digest(member.token)] = member.cid
        self.hub.peers[member.cid] = stream
        stream.put(framing.swarm_event("connect", member.connect_data()))

    def leave_swarm(self, member: Membership) -> None:
        swarm = self.swarms.get(member.id)
        if swarm is None or swarm.peers.pop(member.cid, None) is None:
            return
        swarm.tokens.pop(token_digest(member.token), None)
        self.hub.peers.pop(member.cid, None)
        if member.initiator:
            del self.swarms[member.id]
            for cid, stream in swarm.peers.items():
                self.hub.peers.pop(cid, None)
                stream.end("swarm closed")
            signals.swarm_closed.send(self.sender, swarm_id=member.id, cid=member.cid)
            return
        initiator = swarm.peers.get(swarm.initiator)
        if initiator is not None:
            initiator.put(framing.swarm_event("leave", {"id": member.id, "cid": member.cid}))
        signals.peer_left.send(self.sender, swarm_id=member.id, cid=member.cid)

    def swarm_exists(self, swarm_id: str) -> bool:
        return swarm_id in self.swarms

    def authenticate(self, swarm_id: str, token: str) -> Delivery:
        swarm = self.swarms.get(swarm_id)
        if swarm is None:
            return Delivery.NO_SWARM
        if token_digest(token) not in swarm.tokens:
            return Delivery.BAD_TOKEN
        return Delivery.OK

    def signal(
        self, swarm_id: str, data: Any, *, cid: str | None = None, token: str | None = None
    ) -> Delivery:
        swarm = self.swarms.get(swarm_id)
        if swarm is None:
            return Delivery.NO_SWARM
        if token is not None and token_digest(token) not in swarm.tokens:
            return Delivery.BAD_TOKEN
        if cid is not None:
            target = swarm.peers.get(cid)
            if target is None:
                return Delivery.NO_PEER
            target.put(framing.swarm_event("signal", data))
            return Delivery.OK
        # Encoded once; every peer's queue holds the same bytes object.
        frame = framing.swarm_event("signal", data)
        for stream in tuple(swarm.peers.values()):
            stream.put(frame)
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
        event_id = id if id is not None else format_event_id(self.epoch, self.seq)
        frame = framing.message(data, event=event, id=event_id, retry=retry)
        for name in dict.fromkeys(channels):
            channel = self.history.get(name)
            if channel is None:
                channel = self.history[name] = _Channel(self.history_size)
            channel.touched = time.monotonic()
            if self.history_size:
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
        if last_event_id == "0":
            return 0
        seq = parse_event_id(self.epoch, last_event_id)
        if seq is not None:
            return seq if seq <= self.seq else None
        for name in channels:  # an id the application chose
            channel = self.history.get(name)
            for item in reversed(channel.events if channel else ()):
                if item.id == last_event_id:
                    return item.seq
        return None

    def unsubscribe(self, stream: Stream) -> None:
        for name in self.hub.unsubscribe(stream):
            signals.channel_emptied.send(self.sender, channel=name)

    def close_channel(self, channel: str) -> None:
        self.hub.end_channel(channel)
