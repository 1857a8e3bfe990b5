"""Brokers: where swarm state lives and how messages reach the right process.

One interface, :class:`Broker`, and implementations chosen by the scheme of a
URL, as the ``limits`` library does for its storage:

- ``memory://`` (:class:`~flask_signal.brokers.memory.MemoryBroker`): state in
  this process, delivery straight into the local hub. The default; one
  process only.
- ``redis://``, ``rediss://``, ``unix://``
  (:class:`~flask_signal.brokers.redis.RedisBroker`): state and history in
  Redis, fan-out over one pub/sub connection per process.

The HTTP layer only calls the methods below; it never sees which broker runs.

A new broker subclasses :class:`Broker`, names its URL schemes in
``schemes`` (defining the class registers it) and passes the contract suite,
``tests/test_broker_contract.py``, by adding itself to that suite's fixture.
"""

from __future__ import annotations

import hashlib
import importlib
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, NamedTuple

from .. import framing
from ..errors import BrokerUnavailable as BrokerUnavailable  # re-exported for brokers
from ..errors import OutcomeUnknown as OutcomeUnknown  # re-exported for brokers
from ..hub import LocalHub, Stream


class Delivery(Enum):
    """The outcome of a signal, in the order the protocol checks them."""

    OK = 200
    NO_SWARM = 404
    BAD_TOKEN = 401
    NO_PEER = 4040


class Membership(NamedTuple):
    """A peer's place in a swarm: its ``connect`` data, and whether it created the swarm.

    A named tuple rather than a frozen dataclass: one is made for every stream
    connect, and a tuple is made in C, where a frozen dataclass sets each field
    through ``object.__setattr__``.
    """

    id: str
    cid: str
    token: str
    initiator: bool

    def connect_data(self) -> dict[str, str]:
        return {"id": self.id, "cid": self.cid, "token": self.token}


@dataclass(frozen=True, slots=True)
class Replay:
    """What a subscriber gets before live events: retained frames, and whether some were lost."""

    frames: list[bytes]
    lost: bool = False


#: Length of a resume key: a nonzero digit, then 30 random digits (~100 bits).
RESUME_KEY_LENGTH = 31


def new_resume_key() -> str:
    """A swarm peer's resume secret, all digits (see :func:`parse_resume`)."""
    return str(secrets.randbelow(9) + 1) + f"{secrets.randbelow(10**30):030d}"


def resume_id(key: bytes, seq: int, log: int | None = None) -> bytes:
    """The SSE ``id`` of a peer's ``seq``-th frame: its resume key, then ``seq``.

    With ``log`` (the number of the swarm log message the frame came from, ``0`` if
    unknown; see :func:`resume_position`) the key is followed by ``0``, the count of
    ``seq``'s digits, ``seq``, then ``log``: still digits only.
    """
    if log is None:
        return key + b"%d" % seq
    digits = b"%d" % seq
    return key + b"0%d%s%d" % (len(digits), digits, log)


def stamp(frame: bytes, key: bytes, seq: int, log: int | None = None) -> bytes:
    """``frame`` (a swarm event) with its ``id:`` line after the ``data:`` line.

    Digits only, so that clients which JSON-parse every line after the
    first (moshpit) read a number; an EventSource sends it back as
    ``Last-Event-ID`` when it reconnects.
    """
    return frame[:-1] + b"id: " + resume_id(key, seq, log) + b"\n\n"


def resume_position(value: str) -> tuple[str, int, int | None] | None:
    """A ``Last-Event-ID`` as (resume key, frame number, swarm log number or ``None``
    if the id carries none); ``None`` if it is not a resume handle.

    A frame number never starts with ``0`` (the first frame is 1), so a ``0`` after
    the key marks the form with a log number (:func:`resume_id`).
    """
    if (
        len(value) <= RESUME_KEY_LENGTH
        or len(value) > RESUME_KEY_LENGTH + 40
        or not value.isascii()
        or not value.isdigit()
    ):
        return None
    key, rest = value[:RESUME_KEY_LENGTH], value[RESUME_KEY_LENGTH:]
    if rest[0] != "0" or len(rest) == 1:
        return (key, int(rest), None) if len(rest) <= 18 else None
    digits = int(rest[1])
    seq, log = rest[2 : 2 + digits], rest[2 + digits :]
    if not digits or len(seq) != digits or not log or seq[0] == "0" or len(log) > 19:
        return None
    return key, int(seq), int(log)


def parse_resume(value: str) -> tuple[str, int] | None:
    """A ``Last-Event-ID`` as (resume key, sequence number); ``None`` if it is not one."""
    position = resume_position(value)
    return None if position is None else (position[0], position[1])


def new_id() -> str:
    """A 128-bit identifier or secret: 32 lowercase hex characters from a CSPRNG."""
    return secrets.token_hex(16)


def token_digest(token: str) -> str:
    """What brokers store and look tokens up by.

    Looking up a digest rather than the token itself keeps the lookup's timing
    independent of how much of a guessed token is right.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Broker(ABC):
    """Swarm state, channel history and routing for one process.

    ``sender`` is what lifecycle signals are sent with (the Flask app).
    Methods may raise :class:`BrokerUnavailable`.
    """

    url: str
    #: The URL schemes this broker serves; defining a subclass that names some
    #: registers it for :func:`from_url`.
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class naming its own schemes: a subclass of a registered broker
        # (a test double, a variant) does not take its parent's URLs over.
        for scheme in cls.__dict__.get("schemes", ()):
            register(scheme, cls)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Broker:
        """The broker for ``url`` (one of :attr:`schemes`) with ``options``."""
        return cls(**options)

    def __init__(
        self,
        *,
        hub: LocalHub | None = None,
        sender: Any = None,
        history_size: int = 500,
        resume_grace: float = 0.0,
        resume_bytes: int = 64 * 1024,
        sender_field: str | None = None,
        max_swarm_peers: int = 0,
        connect_extra: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        self.hub = hub if hub is not None else LocalHub()
        self.sender = sender
        self.history_size = history_size
        #: Seconds a swarm peer whose connection was lost may take to resume; 0: never.
        self.resume_grace = resume_grace
        #: Bytes of a peer's latest frames kept for its resume.
        self.resume_bytes = resume_bytes
        #: Where signals from a peer carry its cid, stamped by the server.
        self.sender_field = sender_field
        #: Peers a swarm may hold; 0: no bound.
        self.max_swarm_peers = max_swarm_peers
        #: Extra fields of a peer's ``connect`` data, given its cid (``iceServers``).
        self.connect_extra = connect_extra

    def connect_frame(self, member: Membership) -> bytes:
        """The ``connect`` frame of a new peer: its membership, and any extra fields."""
        data: dict[str, Any] = member.connect_data()
        if self.connect_extra is not None:
            data.update(self.connect_extra(member.cid))
        return framing.swarm_event("connect", data)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (listeners, heartbeats). Called once per process before serving."""

    def close(self) -> None:
        """End every local stream and release connections."""
        for stream in tuple(self.hub.streams):
            stream.end("shutdown")

    # -- swarms --------------------------------------------------------------------

    @abstractmethod
    def create_swarm(self, stream: Stream) -> Membership:
        """Create a swarm with ``stream`` as its initiator; queue its ``connect`` frame."""

    @abstractmethod
    def join_swarm(self, swarm_id: str, stream: Stream) -> Membership | None:
        """Add ``stream`` as a new peer: queue its ``connect``, then ``join`` to the initiator.

        ``None`` if there is no such swarm.
        """

    @abstractmethod
    def leave_swarm(self, member: Membership, stream: Stream | None = None) -> None:
        """A peer's stream ended: remove it and tell the initiator (``leave``), or, for the
        initiator, end every stream of the swarm and forget it.

        With resume on, a ``stream`` lost rather than closed (see
        :attr:`Stream.resumable`) only detaches the peer: it stays for the
        resume grace, receiving into its buffer, and leaves if it does not
        come back. A ``stream`` that is no longer the peer's (a resume
        replaced it) changes nothing.
        """

    def resume_swarm(
        self, handle: str, stream: Stream, swarm_id: str | None = None
    ) -> Membership | None:
        """Give a detached (or not yet known to be lost) peer the new ``stream``.

        ``handle`` is the ``Last-Event-ID`` the client sent. The frames it
        missed are queued on ``stream`` in order; no ``join`` or ``leave`` is
        sent. ``None`` when this cannot be done faithfully (unknown or expired
        handle, another swarm, frames no longer retained): the client is
        then told to stop.
        """
        return None

    @abstractmethod
    def swarm_exists(self, swarm_id: str) -> bool: ...

    @abstractmethod
    def authenticate(self, swarm_id: str, token: str) -> Delivery:
        """``OK`` if ``token`` belongs to a peer of the swarm, else ``NO_SWARM``/``BAD_TOKEN``."""

    @abstractmethod
    def signal(
        self, swarm_id: str, data: Any, *, cid: str | None = None, token: str | None = None
    ) -> Delivery:
        """Send ``data`` as a ``signal`` event to every peer (the sender too), or only ``cid``.

        With a ``token``, it is checked first; ``token=None`` is for trusted
        application code only.
        """

    @abstractmethod
    def swarm_count(self) -> int:
        """Swarms whose initiator is connected to this process."""

    # -- channels ------------------------------------------------------------------

    @abstractmethod
    def publish(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Record an event in the history of ``channels`` and deliver it; returns its id."""

    @abstractmethod
    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Publish to every channel that has subscribers (in any process)."""

    @abstractmethod
    def subscribe(
        self, stream: Stream, channels: Sequence[str], last_event_id: str | None = None
    ) -> Replay:
        """Subscribe ``stream``; events after ``last_event_id`` come back in the :class:`Replay`.

        Live events published from here on are queued on the stream; none is
        both replayed and queued, none is skipped.
        """

    @abstractmethod
    def unsubscribe(self, stream: Stream) -> None: ...

    @abstractmethod
    def channel_history(self, channel: str, since: str | None = None) -> Replay:
        """The retained events of ``channel`` (after ``since``, an event id), oldest first;
        ``lost`` when ``since`` is unknown or older than what is retained."""

    @abstractmethod
    def close_channel(self, channel: str) -> None:
        """End every stream subscribed to ``channel``, in every process."""

    # -- clients -------------------------------------------------------------------
    #
    # A channel stream may carry a client id the application chose
    # (``Stream.client``, set before :meth:`subscribe`). These defaults serve
    # one process (memory://); a broker shared by processes overrides them.

    def send_to(
        self,
        client: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        """Send an event to every stream of ``client``, in every process; not kept in
        any channel's history."""
        self.hub.to_client(client, framing.message(data, event=event, id=id, retry=retry))

    def disconnect(self, client: str) -> None:
        """End every stream of ``client``, in every process."""
        self.hub.end_client(client)

    def presence(self, channel: str) -> dict[str, int]:
        """The client ids subscribed to ``channel``, each with its number of streams.

        Every process's under a shared broker; this process's otherwise.
        """
        return self.hub.presence(channel)

    def subscriber_count(self, channel: str) -> int:
        """Streams subscribed to ``channel`` (with a client id or not), counted as
        :meth:`presence` is."""
        return self.hub.count(channel)

    def stats(self) -> dict[str, Any]:
        """Broker-specific figures for :meth:`Signal.stats`."""
        return {}

    def healthy(self) -> bool:
        """Whether the backing service is reachable (for readiness probes)."""
        return True

    def connection_count(self, channel: str | None = None) -> int:
        """Open streams of this process, all or on one channel."""
        return self.hub.count(channel)


#: URL scheme -> the broker class, or where to import it from ("module:Class"),
#: so that a broker's dependencies (redis-py) load only when it is used.
_registry: dict[str, type[Broker] | str] = {
    "memory": "flask_signal.brokers.memory:MemoryBroker",
    "redis": "flask_signal.brokers.redis:RedisBroker",
    "rediss": "flask_signal.brokers.redis:RedisBroker",
    "unix": "flask_signal.brokers.redis:RedisBroker",
}


def register(scheme: str, broker: type[Broker] | str) -> None:
    """Serve ``scheme://`` URLs with ``broker`` (a class, or ``"module:Class"`` to import
    on first use)."""
    _registry[scheme.lower()] = broker


def schemes() -> tuple[str, ...]:
    """The URL schemes a broker is registered for."""
    return tuple(sorted(_registry))


def broker_class(url: str) -> type[Broker]:
    """The broker class registered for the scheme of ``url``."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    entry = _registry.get(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in schemes())
        raise ValueError(f"unsupported broker URL {url!r}: use one of {known}")
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
        if not (isinstance(entry, type) and issubclass(entry, Broker)):
            raise TypeError(f"{module}:{name} is not a Broker")
        _registry[scheme] = entry
    return entry


def from_url(url: str, **options: Any) -> Broker:
    """The broker for a ``SIGNAL_BROKER_URL``: ``memory://``, a Redis URL, or any
    registered scheme."""
    return broker_class(url).from_url(url, **options)


# -- event ids ---------------------------------------------------------------------
#
# Hub-assigned ids are "<epoch>-<seq>": seq comes from one sequencer for all
# channels, so one Last-Event-ID resumes a multi-channel stream; the epoch
# changes whenever the history is lost (a restart of the memory broker, a
# flushed Redis), so a resume against another epoch is reported, never
# silently answered with the wrong events.


def format_event_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


#: A sequence number has at most this many digits: below 2**53, so exact in
#: Redis's Lua numbers, and far beyond any count of events a hub reaches.
SEQ_DIGITS = 15


def split_event_id(value: str) -> tuple[str, int] | None:
    """``(epoch, seq)`` of an id in the hub's form, else ``None`` (an application's id).

    Only ASCII digits count (``"²".isdigit()`` is true), and at most
    :data:`SEQ_DIGITS` of them, so nothing malformed reaches ``int`` or a script.
    """
    head, sep, tail = value.rpartition("-")
    if sep and 0 < len(tail) <= SEQ_DIGITS and tail.isascii() and tail.isdigit():
        return head, int(tail)
    return None


def parse_event_id(epoch: str, value: str) -> int | None:
    """The sequence number of a hub-assigned id of ``epoch``, else ``None``."""
    parts = split_event_id(value)
    return parts[1] if parts is not None and parts[0] == epoch else None


def new_epoch() -> str:
    return secrets.token_hex(4)
