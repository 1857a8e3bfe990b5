"""What one process keeps for the resume of its swarm peers (``resume_grace`` on).

Redis keeps a detached peer's frames (see ``detach.lua``, ``resume.lua`` and
``keep.lua``); this is the local side. While a peer's stream is here, its
frames are numbered here and the latest are kept (:class:`Numbered`), so
that when the stream is lost they go to Redis with the number before the
first. A peer that comes back takes the numbering up where Redis left it.
"""

from __future__ import annotations

from collections import deque

from ...hub import Stream
from .. import stamp


class Numbered:
    """A peer's resume key, the number of its last frame, and its latest frames.

    A resumed peer's record starts closed: pub/sub messages that Redis
    published before the resume are dropped (they are in the replay), and
    those after it are held until the replay is queued.

    With the swarm log on (``logged``), each frame's id also carries the number
    of the log message it came from (``0`` when not known: the ``connect``
    frame, a replayed frame but the last), so that if this process dies, any
    other can replay from the log what the client had not received
    (``resume.lua``).
    """

    __slots__ = ("held", "key", "live", "logged", "ready", "sent", "sent_bytes", "seq")

    def __init__(
        self, key: bytes, seq: int = 0, *, live: bool = True, logged: bool = False
    ) -> None:
        self.key = key
        self.seq = seq
        self.logged = logged
        #: (number, unstamped frame), oldest first, within ``limit`` bytes.
        self.sent: deque[tuple[int, bytes]] = deque()
        self.sent_bytes = 0
        #: False until the "resumed" message comes back on pub/sub.
        self.live = live
        #: False until the replay is queued; frames meanwhile wait in ``held``.
        self.ready = live
        self.held: list[tuple[bytes, int]] = []

    def put(self, stream: Stream, frame: bytes, limit: int, log: int = 0) -> None:
        """Number ``frame`` (from swarm log message ``log``), keep it, queue it on
        ``stream``, or hold it until ready."""
        if not self.live:
            return
        if not self.ready:
            self.held.append((frame, log))
            return
        self._emit(stream, frame, limit, log)

    def _emit(self, stream: Stream, frame: bytes, limit: int, log: int) -> None:
        self.seq += 1
        self.sent.append((self.seq, frame))
        self.sent_bytes += len(frame)
        while self.sent_bytes > limit and len(self.sent) > 1:
            self.sent_bytes -= len(self.sent.popleft()[1])
        stream.put(stamp(frame, self.key, self.seq, log if self.logged else None))

    def replay(
        self, stream: Stream, frames: list[tuple[bytes, int]], total: int, limit: int
    ) -> None:
        """Queue the frames Redis kept or logged (numbered up to ``total``; each with
        its log number, or 0), then the held ones."""
        self.seq = total - len(frames)
        self.ready = True
        for frame, log in frames:
            self._emit(stream, frame, limit, log)
        held, self.held = self.held, []
        for frame, log in held:
            self._emit(stream, frame, limit, log)

    def base(self) -> int:
        """The number of the frame before the first kept one."""
        return self.sent[0][0] - 1 if self.sent else self.seq


class Draining:
    """A detached peer whose "detached" message has not come back yet: frames that
    pub/sub still brings for it are collected here, for ``seal.lua``."""

    __slots__ = ("digest", "initiator", "late")

    def __init__(self, digest: str, *, initiator: bool) -> None:
        self.digest = digest
        self.initiator = initiator
        self.late: list[bytes] = []
