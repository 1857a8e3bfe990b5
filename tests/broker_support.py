"""Reading what a broker queued on a stream, for the broker tests.

The test thread is not monkey-patched: broker calls block it briefly, and
waiting on a stream (a gevent queue) lets the brokers' greenlets run.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from typing import Any

import gevent

from flask_signal.brokers import Broker, Membership, resume_position
from flask_signal.hub import ENDED, Stream


def stream(size: int = 1000) -> Stream:
    return Stream(size)


#: Frames already taken off a stream but not yet looked at: Stream.get joins waiting frames.
_unread: weakref.WeakKeyDictionary[Stream, list[bytes]] = weakref.WeakKeyDictionary()


def next_frame(stream: Stream, timeout: float | None) -> bytes | None:
    """The stream's next frame, ENDED once over, or None after ``timeout`` seconds idle."""
    unread = _unread.setdefault(stream, [])
    if not unread:
        chunk = None
        with gevent.Timeout(timeout, False):
            chunk = stream.get()
        if chunk is None or chunk == ENDED:
            return chunk
        unread += [frame + b"\n\n" for frame in chunk.split(b"\n\n")[:-1]]
    return unread.pop(0)


def frame_of(stream: Stream, timeout: float = 5) -> bytes:
    frame = next_frame(stream, timeout)
    assert frame is not None, f"no frame within {timeout} s on {stream!r}"
    return frame


def event_of(stream: Stream, timeout: float = 5) -> tuple[str, Any]:
    frame = frame_of(stream, timeout)
    assert frame != ENDED, f"stream ended: {stream.end_reason}"
    name, data = frame.decode().split("\n")[:2]
    assert name.startswith("event: ") and data.startswith("data: "), frame
    return name[7:], json.loads(data[6:])


def assert_quiet(stream: Stream, wait: float = 0.3) -> None:
    """Nothing more arrives (no duplicate) within ``wait`` seconds."""
    assert next_frame(stream, wait) is None


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with gevent.Timeout(timeout, AssertionError(f"condition not met in {timeout} s")):
        while not condition():
            gevent.sleep(0.02)


def ended(stream: Stream, timeout: float = 10) -> str | None:
    """Drain the stream until it ends; its end reason."""
    with gevent.Timeout(timeout, AssertionError(f"{stream!r} did not end in {timeout} s")):
        while next_frame(stream, None) != ENDED:
            pass
    return stream.end_reason


def ended_with_retry(stream: Stream, timeout: float = 10) -> tuple[str | None, int | None]:
    """Drain the stream until it ends: its end reason, and the ``retry:`` (ms) of its
    last frame, None if that frame gives none."""
    last = b""
    with gevent.Timeout(timeout, AssertionError(f"{stream!r} did not end in {timeout} s")):
        while (frame := next_frame(stream, None)) != ENDED:
            last = frame or last
    retry = re.search(rb"^retry: (\d+)$", last, re.M)
    return stream.end_reason, int(retry.group(1)) if retry else None


def swarm(a: Broker, b: Broker) -> tuple[Membership, Stream, Membership, Stream]:
    """An initiator on ``a`` and a peer on ``b``, both past their first frames."""
    s1, s2 = stream(), stream()
    m1 = a.create_swarm(s1)
    assert event_of(s1) == ("connect", m1.connect_data())
    m2 = b.join_swarm(m1.id, s2)
    assert m2 is not None
    assert event_of(s2) == ("connect", m2.connect_data())
    assert event_of(s1) == ("join", {"id": m1.id, "cid": m2.cid})
    return m1, s1, m2, s2


def ids_of(frames: list[bytes]) -> list[str]:
    out = []
    for frame in frames:
        lines = [line for line in frame.decode().split("\n") if line.startswith("id: ")]
        out.append(lines[0][4:])
    return out


def data_of(frame: bytes) -> str:
    return "\n".join(line[6:] for line in frame.decode().split("\n") if line.startswith("data: "))


def frame_number(event_id: str) -> int:
    """The peer's frame number an SSE ``id`` (a resume handle) carries."""
    position = resume_position(event_id)
    assert position is not None, event_id
    return position[1]


def log_number(event_id: str) -> int | None:
    """The swarm log number an SSE ``id`` carries (``None``: an id without one)."""
    position = resume_position(event_id)
    assert position is not None, event_id
    return position[2]
