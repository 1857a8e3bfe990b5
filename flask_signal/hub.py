"""The in-process hub: this process's open streams, indexed for delivery.

No Flask here and no network: a :class:`Stream` is a bounded queue of ready
frames that one response iterator drains; the :class:`LocalHub` knows which
streams are the peers and channel subscribers of this process. Brokers (see
:mod:`flask_signal.brokers`) decide *what* to deliver; the hub only delivers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import gevent
from gevent.queue import Full, Queue

from .framing import PING

#: What :meth:`Stream.get` returns once the stream has ended.
ENDED = b""
#: At most this many waiting frames go out in one write.
COALESCE = 64

_serial = itertools.count(1)


class Stream:
    """One open SSE response: a bounded queue of encoded frames.

    ``put`` never blocks: a client too slow to drain ``maxsize`` frames is
    ended (``end_reason == "overflow"``) instead of growing server memory.
    """

    __slots__ = (
        "__weakref__",
        "_queue",
        "abort",
        "channels",
        "cid",
        "end_reason",
        "ended",
        "kind",
        "last_seq",
        "serial",
        "swarm_id",
    )

    def __init__(self, maxsize: int, kind: str = "swarm") -> None:
        self._queue: Queue[bytes] = Queue(maxsize)
        self.serial = next(_serial)
        self.kind = kind
        self.ended = False
        self.end_reason: str | None = None
        #: Channels this stream is subscribed to.
        self.channels: tuple[str, ...] = ()
        #: The channel sequence number of the last event queued, to drop duplicates on resume.
        self.last_seq = 0
        self.swarm_id: str | None = None
        self.cid: str | None = None
        #: Cuts the connection; set by the response so that an overflowing
        #: stream whose writer is stuck on a full socket is freed at once.
        self.abort: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = f"ended:{self.end_reason}" if self.ended else "open"
        return f"<Stream #{self.serial} {self.kind} {state}>"

    def put(self, frame: bytes) -> bool:
        """Queue a frame; ``False`` if the stream has ended or just overflowed."""
        if self.ended:
            return False
        try:
            self._queue.put_nowait(frame)
        except Full:
            self.end("overflow")
            return False
        return True

    def end(self, reason: str = "closed") -> None:
        """End the stream: its reader gets :data:`ENDED` after the frames already queued."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        if reason == "overflow" or self._queue.full():
            # A reader that cannot keep up loses its backlog, not the server its memory.
            self._queue.queue.clear()
        self._queue.put_nowait(ENDED)
        if reason == "overflow" and self.abort is not None:
            self.abort()

    def get(self) -> bytes:
        """The next frames, joined so that one write carries them, or :data:`ENDED` when over.

        Blocks without a timer: keep-alives come from :func:`keep_alive`,
        one greenlet for every stream, rather than a timeout per wait.
        """
        frame: bytes = self._queue.get()
        waiting = self._queue.queue
        if waiting and frame:
            parts = [frame]
            while waiting and waiting[0] and len(parts) < COALESCE:
                parts.append(waiting.popleft())
            frame = b"".join(parts)
        return frame

    def pending(self) -> int:
        return int(self._queue.qsize())


class LocalHub:
    """The streams of this process: swarm peers by cid, channel subscribers by channel."""

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.peers: dict[str, Stream] = {}
        self.channels: dict[str, set[Stream]] = {}
        #: Streams ended because they could not keep up.
        self.overflows = 0

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)

    def discard(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if stream.end_reason == "overflow":
            self.overflows += 1

    def subscribe(self, stream: Stream, channels: Iterable[str]) -> list[str]:
        """Add ``stream`` to ``channels``; returns the channels that had no local subscriber."""
        opened = []
        names = tuple(dict.fromkeys(channels))
        stream.channels = names
        for name in names:
            members = self.channels.get(name)
            if members is None:
                members = self.channels[name] = set()
                opened.append(name)
            members.add(stream)
        return opened

    def unsubscribe(self, stream: Stream) -> list[str]:
        """Remove ``stream`` from its channels; returns those left with no local subscriber."""
        emptied = []
        for name in stream.channels:
            members = self.channels.get(name)
            if members is None:
                continue
            members.discard(stream)
            if not members:
                del self.channels[name]
                emptied.append(name)
        return emptied

    def deliver(self, channel: str, seq: int, frame: bytes) -> int:
        """Queue a channel event for its local subscribers that have not had it yet."""
        reached = 0
        for stream in tuple(self.channels.get(channel, ())):
            # A stream subscribed to several channels, or resumed from history,
            # may already hold this event: sequence numbers make it once only.
            if seq and seq <= stream.last_seq:
                continue
            if stream.put(frame):
                if seq:
                    stream.last_seq = seq
                reached += 1
        return reached

    def end_channel(self, channel: str, reason: str = "channel closed") -> int:
        members = tuple(self.channels.get(channel, ()))
        for stream in members:
            stream.end(reason)
        return len(members)

    def count(self, channel: str | None = None) -> int:
        if channel is None:
            return len(self.streams)
        return len(self.channels.get(channel, ()))


def keep_alive(hub: LocalHub, interval: float) -> None:
    """Every ``interval`` seconds, queue a comment on each stream with nothing waiting.

    Run in one greenlet per process: proxies keep idle streams open, and a
    write to a client that vanished without closing fails, ending its stream.
    """
    while True:
        gevent.sleep(interval)
        for stream in tuple(hub.streams):
            if not stream.pending():
                stream.put(PING)
