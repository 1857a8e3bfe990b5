"""The pub/sub message format: what one process tells the others through Redis.

Every message is bytes on a topic named after the swarm or channel it concerns
(see :mod:`.keys`). Its first byte says what it is:

=========  ====================================  ======================================
kind       bytes                                 meaning
=========  ====================================  ======================================
broadcast  ``b\\n<frame>``                        a signal frame for every peer of the swarm
direct     ``d <cid>\\n<frame>``                  a signal frame for one peer
joined     ``j <cid>``                           a peer joined (tell the initiator)
left       ``l <cid>``                           a peer left (tell the initiator)
ended      ``e <cid>``                           the initiator left: every stream of the swarm ends
detached   ``g <cid>``                           a peer's stream was lost; it is in its grace
resumed    ``u <cid>``                           a peer in its grace came back
event      ``m <seq> <marker>\\n<id>\\n<frame>``   a channel event; marker ``=<event>`` or empty
closed     ``c <process>``                       the channel was closed by ``process``
to client  ``t\\n<frame>``                        a frame for every stream of a client id
drop       ``r\\n``                               every stream of a client id ends
=========  ====================================  ======================================

Frames are complete SSE frames, encoded once by the sender and queued as the
same bytes by every receiver. The event message is assembled inside the
publish script (only it knows the sequence number); :func:`event` builds the
same bytes and the tests hold the two to each other.

With the swarm log on (``SIGNAL_REDIS_SWARM_LOG``), a message on a swarm's topic
comes numbered: ``#<n> <message>``, ``n`` counting the swarm's messages from 1
(:func:`numbered`). The same bytes are kept in the swarm's log in Redis, from
which a process whose pub/sub connection was down reads what it missed; the
number tells it which messages it already applied.

The format is kept stable across releases, so that processes of two versions
sharing one Redis (a rolling deploy) understand each other; a receiver ignores
a kind it does not know (:func:`decode` returns ``None``). A process older than
the swarm log therefore ignores numbered messages: its peers would miss the
signals, joins and leaves that newer processes publish. Upgrade such a
deployment with ``SIGNAL_REDIS_SWARM_LOG = 0`` (unnumbered messages, understood
by both), then turn the log on; a process with the log on applies unnumbered
messages as they come.

The same holds for the SSE ids of swarm frames with resume on: with the log on
they also carry the log number of the message a frame came from
(``flask_signal.brokers.resume_id``). A release older than the log numbers reads
such an id as a frame number never sent (or no id at all): it refuses to resume
a peer lost from a newer process (``204``), and resumes a dead process's peer, if
at all, from the reap on. With the log off the ids keep the older form. A
process reading an id of the older form resumes a dead process's peer as before:
from the reap on.
"""

from __future__ import annotations

from typing import NamedTuple


class Broadcast(NamedTuple):
    frame: bytes


class Direct(NamedTuple):
    cid: str
    frame: bytes


class Joined(NamedTuple):
    cid: str


class Left(NamedTuple):
    cid: str


class Ended(NamedTuple):
    cid: str


class Detached(NamedTuple):
    cid: str


class Resumed(NamedTuple):
    cid: str


class Event(NamedTuple):
    seq: int
    id: str
    #: The SSE ``event:`` name, ``None`` for the default "message".
    event: str | None
    frame: bytes


class Closed(NamedTuple):
    process: str


class ToClient(NamedTuple):
    frame: bytes


class Drop(NamedTuple):
    pass


Message = (
    Broadcast
    | Direct
    | Joined
    | Left
    | Ended
    | Detached
    | Resumed
    | Event
    | Closed
    | ToClient
    | Drop
)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# -- encoding ----------------------------------------------------------------------


def broadcast(frame: bytes) -> bytes:
    return b"b\n" + frame


def direct(cid: str, frame: bytes) -> bytes:
    return b"d " + _raw(cid) + b"\n" + frame


def joined(cid: str) -> bytes:
    return b"j " + _raw(cid)


def left(cid: str) -> bytes:
    return b"l " + _raw(cid)


def ended(cid: str) -> bytes:
    return b"e " + _raw(cid)


def detached(cid: str) -> bytes:
    return b"g " + _raw(cid)


def resumed(cid: str) -> bytes:
    return b"u " + _raw(cid)


def event_marker(event: str | None) -> str:
    """The marker an event message carries for its SSE event name."""
    return "" if event is None else f"={event}"


def event(seq: int, id: str, event: str | None, frame: bytes) -> bytes:
    """An event message; the publish script builds the same bytes."""
    return b"m %d %s\n%s\n%s" % (seq, _raw(event_marker(event)), _raw(id), frame)


def closed(process: str) -> bytes:
    return b"c " + _raw(process)


def to_client(frame: bytes) -> bytes:
    return b"t\n" + frame


def drop() -> bytes:
    return b"r\n"


def number(n: int, message: bytes) -> bytes:
    """A numbered swarm message, as ``log.lua`` builds it."""
    return b"#%d %s" % (n, message)


# -- decoding ----------------------------------------------------------------------


def numbered(payload: bytes) -> tuple[int, bytes]:
    """A swarm message's number and the message it numbers; ``0`` and ``payload`` for an
    unnumbered one (or a malformed number)."""
    if payload[:1] != b"#":
        return 0, payload
    head, _, message = payload.partition(b" ")
    number = head[1:]
    return (int(number), message) if number.isdigit() else (0, payload)


def decode(payload: bytes) -> Message | None:
    """The message ``payload`` holds; ``None`` for a kind this version does not know
    or a malformed payload."""
    try:
        return _decode(payload)
    except UnicodeDecodeError:
        return None


def _decode(payload: bytes) -> Message | None:
    kind = payload[:1]
    if kind == b"b":
        if payload[1:2] != b"\n":
            return None
        return Broadcast(payload[2:])
    if kind == b"d":
        head, sep, frame = payload.partition(b"\n")
        if not sep or head[1:2] != b" ":
            return None
        return Direct(_text(head[2:]), frame)
    if kind in (b"j", b"l", b"e", b"c", b"g", b"u"):
        if payload[1:2] != b" ":
            return None
        value = _text(payload[2:])
        if kind == b"j":
            return Joined(value)
        if kind == b"l":
            return Left(value)
        if kind == b"e":
            return Ended(value)
        if kind == b"g":
            return Detached(value)
        if kind == b"u":
            return Resumed(value)
        return Closed(value)
    if kind == b"t":
        return ToClient(payload[2:]) if payload[1:2] == b"\n" else None
    if payload == b"r\n":
        return Drop()
    if kind == b"m":
        parts = payload.split(b"\n", 2)
        if len(parts) != 3:
            return None
        header, id_, frame = parts
        fields = header.split(b" ", 2)
        if len(fields) != 3 or not fields[1].isdigit():
            return None
        marker = fields[2]
        if marker and marker[:1] != b"=":
            return None
        return Event(int(fields[1]), _text(id_), _text(marker[1:]) if marker else None, frame)
    return None
