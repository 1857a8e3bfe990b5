"""The in-process hub: this process's open streams, indexed for delivery.

No Flask here and no network: a :class:`Stream` is a bounded buffer of ready
frames that one response iterator drains; the :class:`LocalHub` knows which
streams are the peers and channel subscribers of this process. Brokers (see
:mod:`flask_signal.brokers`) decide *what* to deliver; the hub only delivers.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import gevent
from greenlet import getcurrent

from .framing import PING

#: What :attr:`Stream._waiter` holds once woken until its reader runs again.
_WOKEN: Any = object()

#: What :meth:`Stream.get` returns once the stream has ended.
ENDED = b""

#: What this process has done, for metrics (see :mod:`flask_signal.metrics`):
#: ``signals_in``, ``signals_out``, ``events_in``, ``events_out``, ``resumes``,
#: ``redis_errors``, ``redis_reconnects``, ``redis_signal_batches``,
#: ``redis_publish_batches``, and
#: ``end:<reason>`` per ended stream.
#: Plain counts, cheap to bump on any path; read and exported elsewhere.
counts: Counter[str] = Counter()

#: Unsent bytes a stream may hold by default before its client counts as too slow.
MAX_BYTES = 256 * 1024

#: End reasons that say the connection was lost rather than closed by its
#: client: a swarm peer whose stream ends for one of these may come back
#: within the resume grace (see :mod:`flask_signal.brokers`). A client that
#: closes its connection (``"disconnected"``, ``"closed"``) has left; a client
#: too slow to keep up (``"overflow"``) has lost frames and cannot resume.
RESUMABLE = frozenset({"reset", "timeout", "write timeout", "lifetime", "drain", "shutdown"})


class Response(Protocol):
    """What a response reading a :class:`Stream` offers it."""

    def write_now(self, frame: bytes) -> bool:
        """Send ``frame`` to the client without blocking; False if nothing was sent."""

    def abort(self) -> None:
        """Cut the connection, so that a writer stuck on a full socket is freed."""


class Stream:
    """One open SSE response: a bounded buffer of encoded frames and its one reader.

    ``put`` never blocks: a client too slow to drain ``maxsize`` frames or
    ``max_bytes`` bytes is ended (``end_reason == "overflow"``) instead of
    growing server memory.
    Lighter than a gevent Queue on purpose: with one reader, a list and a
    :class:`~gevent.hub.Waiter` are all a stream needs, and a server holds
    tens of thousands of them.
    """

    __slots__ = (
        "__weakref__",
        "_frames",
        "_waiter",
        "channels",
        "cid",
        "client",
        "direct",
        "end_reason",
        "ended",
        "held",
        "kind",
        "last_seq",
        "max_bytes",
        "maxsize",
        "nbytes",
        "opened",
        "pings",
        "response",
        "swarm_id",
        "writing",
    )

    def __init__(self, maxsize: int, kind: str = "swarm", max_bytes: int = MAX_BYTES) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        #: Bytes queued and not yet taken by the reader.
        self.nbytes = 0
        #: When the stream opened (``time.monotonic()``), for the lifetime bound.
        self.opened = time.monotonic()
        #: When the reader handed its last frames to the server, 0.0 once the
        #: server came back for more: how long a write has been stuck.
        self.writing = 0.0
        self._frames: list[bytes] | None = None
        self._waiter: Any = None  # the reader's greenlet while it waits, or _WOKEN
        self.kind = kind
        self.ended = False
        self.end_reason: str | None = None
        #: Channels this stream is subscribed to.
        self.channels: tuple[str, ...] = ()
        #: The channel sequence number of the last event queued, to drop duplicates on resume.
        self.last_seq = 0
        self.swarm_id: str | None = None
        self.cid: str | None = None
        #: The application's id for the client of a channel stream, if it gave one.
        self.client: str | None = None
        #: The response that reads this stream, when it can do more than read
        #: (see :class:`Response`); one reference, as a stream lives long.
        self.response: Response | None = None
        #: Whether :meth:`put` may hand frames to ``response.write_now``
        #: while the reader waits with nothing queued: a delivery then costs
        #: one ``send`` instead of waking the reader.
        self.direct = False
        #: While set, frames queue but the reader is not woken (see :meth:`release`).
        self.held = False
        #: Whether :func:`keep_alive` sends this stream comments (see
        #: ``SIGNAL_PING_WITHOUT_ACCEPT``: naive line parsers turn them into rows).
        self.pings = True

    def __repr__(self) -> str:
        state = f"ended:{self.end_reason}" if self.ended else "open"
        who = self.cid or ",".join(self.channels) or hex(id(self))
        return f"<Stream {self.kind} {who} {state}>"

    def put(self, frame: bytes) -> bool:
        """Queue a frame; ``False`` if the stream has ended or just overflowed."""
        if self.ended:
            return False
        frames = self._frames
        if frames is None:
            if self.direct and self.waiting() and not self.held:
                assert self.response is not None
                if self.response.write_now(frame):
                    return True
                if self.end_reason is not None:  # the write found the client gone
                    return False
            if len(frame) > self.max_bytes:
                self.end("overflow")
                return False
            self._frames = [frame]
            self.nbytes = len(frame)
        elif len(frames) < self.maxsize and self.nbytes + len(frame) <= self.max_bytes:
            frames.append(frame)
            self.nbytes += len(frame)
        else:
            self.end("overflow")
            return False
        if not self.held:
            self.wake()
        return True

    def release(self, first: bytes) -> None:
        """End a hold: ``first`` goes out before every frame queued while held."""
        self.held = False
        if self.ended and self.end_reason == "overflow":
            return
        self._frames = [first, *(self._frames or ())]
        self.nbytes += len(first)
        self.wake()

    def finish(self, frame: bytes, reason: str) -> None:
        """Queue ``frame`` as the stream's last, past the bounds if need be, and end it."""
        if self.ended:
            return
        if self._frames is None:
            if self.direct and self.waiting():
                assert self.response is not None
                if self.response.write_now(frame):
                    self.end(reason)
                    return
            if self.end_reason is not None:  # that write found the client gone
                return
            self._frames = [frame]
        else:
            self._frames.append(frame)
        self.nbytes += len(frame)
        self.end(reason)

    def waiting(self) -> bool:
        """Whether the reader waits in :meth:`get` and nothing has woken it yet."""
        waiter = self._waiter
        return waiter is not None and waiter is not _WOKEN

    def wake(self) -> None:
        """Make a waiting :meth:`get` return, even with nothing queued."""
        waiter = self._waiter
        if waiter is not None and waiter is not _WOKEN:
            # Once per wake-up however many frames arrive meanwhile; the
            # switch itself must come from the event loop.
            self._waiter = _WOKEN
            gevent.get_hub().loop.run_callback(self._resume, waiter)

    def _resume(self, reader: Any) -> None:
        # Only into the wait that was woken: ``_WOKEN`` is cleared as soon as
        # the reader leaves get(), whether this switched it back or it was
        # killed, so a late call never lands in any other wait of its greenlet.
        if self._waiter is _WOKEN:
            reader.switch(None)

    def end(self, reason: str = "closed") -> None:
        """End the stream: its reader gets :data:`ENDED` after the frames already queued."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        if reason == "overflow":
            # A reader that cannot keep up loses its backlog, not the server its memory.
            self._frames = None
            self.nbytes = 0
        self.wake()
        if reason == "overflow" and self.response is not None:
            self.response.abort()

    def get(self) -> bytes | None:
        """Every frame waiting, joined so that one write carries them; :data:`ENDED` when over.

        Blocks without a timer: keep-alives come from :func:`keep_alive`,
        one greenlet for every stream, rather than a timeout per wait.
        ``None`` when :meth:`wake` ended the wait with nothing queued.
        """
        if self._frames is None:
            if self.ended:
                return ENDED
            # The greenlet itself rather than a gevent Waiter: one object and
            # one C frame less on the stack a parked greenlet keeps, per stream.
            hub = gevent.get_hub()
            self._waiter = getcurrent()
            try:
                hub.switch()
            finally:
                self._waiter = None
            if self._frames is None:
                return ENDED if self.ended else None
        frames, self._frames = self._frames, None
        self.nbytes = 0
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def pending(self) -> int:
        return len(self._frames) if self._frames else 0

    @property
    def resumable(self) -> bool:
        """Whether the stream ended by a lost connection (see :data:`RESUMABLE`)."""
        return self.end_reason in RESUMABLE


class LocalHub:
    """The streams of this process: swarm peers by cid, channel subscribers by channel."""

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.peers: dict[str, Stream] = {}
        self.channels: dict[str, set[Stream]] = {}
        #: Channel streams by the client id the application gave them.
        self.clients: dict[str, set[Stream]] = {}
        #: Streams ended because they could not keep up.
        self.overflows = 0
        #: Set once this process drains: new streams are turned away.
        self.draining = False
        #: Streams this process may hold (0: no bound); set from the server's
        #: connection limit when known, so that POSTs always find a slot.
        self.max_streams = 0

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
        if stream.client is not None:
            self.clients.setdefault(stream.client, set()).add(stream)
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
        if stream.client is not None:
            same = self.clients.get(stream.client)
            if same is not None:
                same.discard(stream)
                if not same:
                    del self.clients[stream.client]
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
        counts["events_out"] += reached
        return reached

    def end_channel(
        self, channel: str, reason: str = "channel closed", *, retry_spread: float | None = None
    ) -> int:
        """End every stream of ``channel``; with ``retry_spread``, after a ``retry:`` hint
        spread over that many seconds (see :func:`end_with_retry`)."""
        members = tuple(self.channels.get(channel, ()))
        for stream in members:
            if retry_spread is None:
                stream.end(reason)
            else:
                end_with_retry(stream, reason, retry_spread)
        return len(members)

    def count(self, channel: str | None = None) -> int:
        if channel is None:
            return len(self.streams)
        return len(self.channels.get(channel, ()))

    def to_client(self, client: str, frame: bytes) -> int:
        """Queue ``frame`` on every stream of ``client``; returns how many took it."""
        reached = sum(stream.put(frame) for stream in tuple(self.clients.get(client, ())))
        counts["events_out"] += reached
        return reached

    def end_client(self, client: str, reason: str = "disconnected by server") -> int:
        members = tuple(self.clients.get(client, ()))
        for stream in members:
            stream.end(reason)
        return len(members)

    def presence(self, channel: str) -> dict[str, int]:
        """The client ids subscribed to ``channel`` here, each with its number of streams."""
        found: dict[str, int] = {}
        for stream in tuple(self.channels.get(channel, ())):
            if stream.client is not None:
                found[stream.client] = found.get(stream.client, 0) + 1
        return found


def retry_frame(milliseconds: int) -> bytes:
    """A ``retry:`` hint that every client reads: a comment first, no data.

    Swarm clients that split each frame on its first line (moshpit) skip a
    block that starts with a comment; an EventSource takes the ``retry:``
    field and dispatches nothing.
    """
    return b":\nretry: %d\n\n" % milliseconds


def spread_retry(spread: float, floor: float = 0.25) -> int:
    """A reconnection delay in milliseconds, drawn from ``floor`` to ``floor + spread`` seconds,
    so that the clients of one closing process do not all come back in the same instant."""
    return int(1000 * (floor + random.random() * max(spread, 0.0)))


def end_with_retry(stream: Stream, reason: str, spread: float) -> None:
    """End ``stream`` after a jittered ``retry:`` hint (see :func:`spread_retry`)."""
    stream.finish(retry_frame(spread_retry(spread)), reason)


def watchdog(
    hub: LocalHub,
    *,
    write_timeout: float = 0.0,
    max_age: float = 0.0,
    spread: float = 3.0,
    period: float = 1.0,
) -> None:
    """Every ``period`` seconds, end the streams that outlived their bounds.

    Run in one greenlet per process. A stream whose server write has not
    returned for ``write_timeout`` seconds (a client that stopped reading,
    or vanished with data in flight) is cut; one older than ``max_age``
    seconds (each stream's own age, spread by up to a tenth so a process's
    streams do not all end together) ends with a jittered ``retry:``.
    """
    while True:
        gevent.sleep(period)
        now = time.monotonic()
        for stream in tuple(hub.streams):
            if stream.ended:
                continue
            if write_timeout and stream.writing and now - stream.writing > write_timeout:
                stream.end("write timeout")
                if stream.response is not None:
                    stream.response.abort()
            elif max_age and now - stream.opened > max_age * (0.9 + (id(stream) >> 4) % 11 / 100):
                end_with_retry(stream, "lifetime", spread)


def keep_alive(hub: LocalHub, interval: float) -> None:
    """Every ``interval`` seconds, queue a comment on each stream with nothing waiting.

    Run in one greenlet per process: proxies keep idle streams open, and a
    write to a client that vanished without closing fails, ending its stream.
    """
    while True:
        gevent.sleep(interval)
        for stream in tuple(hub.streams):
            if stream.pings and not stream.pending():
                stream.put(PING)
