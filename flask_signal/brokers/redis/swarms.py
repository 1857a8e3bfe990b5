"""What one process knows of the swarms whose streams it holds.

Redis holds the truth about every swarm; this is the local routing table the
pub/sub messages are delivered through: the peers of each swarm connected
here, the peers whose join Redis has not confirmed yet, the swarms whose
initiator is here (their TTL is refreshed by this process), and the leaves
Redis has not heard of because it was unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator

from ...hub import Stream


class LocalSwarms:
    """The swarm streams of this process, by swarm and cid. Never touches Redis."""

    def __init__(self) -> None:
        self._peers: dict[str, dict[str, Stream]] = {}
        self._joining: dict[str, Stream] = {}
        self._initiated: dict[str, str] = {}
        #: Leaves Redis has not recorded yet (it was unreachable): (swarm id, cid).
        self.unrecorded: list[tuple[str, str]] = []

    # -- changes ---------------------------------------------------------------------

    def add_initiator(self, swarm_id: str, cid: str, stream: Stream) -> None:
        self._peers[swarm_id] = {cid: stream}
        self._initiated[swarm_id] = cid

    def add_peer(self, swarm_id: str, cid: str, stream: Stream, *, initiator: bool) -> None:
        """A peer back from its resume grace (confirmed at once: Redis knows it)."""
        self._peers.setdefault(swarm_id, {})[cid] = stream
        if initiator:
            self._initiated[swarm_id] = cid

    def add_joining(self, cid: str, stream: Stream) -> None:
        """A peer whose join is on its way: it receives broadcasts from its own join on."""
        self._joining[cid] = stream

    def confirm_join(self, swarm_id: str, cid: str) -> None:
        """The swarm's ``joined`` message for ``cid`` arrived: route its signals from now on."""
        stream = self._joining.pop(cid, None)
        if stream is not None:
            self._peers.setdefault(swarm_id, {})[cid] = stream

    def forget_joining(self, cid: str) -> None:
        """A join that did not happen."""
        self._joining.pop(cid, None)

    def remove(
        self, swarm_id: str, cid: str, *, initiator: bool
    ) -> tuple[Stream | None, list[Stream]]:
        """Forget a peer; its stream (``None`` if unknown here), and the streams of the
        swarm's other local peers if it was the initiator (each is forgotten when it
        leaves in turn)."""
        peers = self._peers.get(swarm_id, {})
        stream = peers.pop(cid, None)
        if stream is None:
            stream = self._joining.pop(cid, None)
        if stream is None:
            return None, []
        others: list[Stream] = []
        if initiator:
            self._initiated.pop(swarm_id, None)
            others = list(peers.values())
        if not peers:
            self._peers.pop(swarm_id, None)
        return stream, others

    def clear(self) -> None:
        self._peers.clear()
        self._joining.clear()
        self._initiated.clear()
        self.unrecorded.clear()

    # -- questions -------------------------------------------------------------------

    def peer(self, swarm_id: str, cid: str) -> Stream | None:
        return self._peers.get(swarm_id, {}).get(cid)

    def streams(self, swarm_id: str) -> tuple[Stream, ...]:
        """The confirmed peers of a swarm connected here."""
        return tuple(self._peers.get(swarm_id, {}).values())

    def joining(self, swarm_id: str) -> tuple[Stream, ...]:
        return tuple(s for s in self._joining.values() if s.swarm_id == swarm_id)

    def initiator(self, swarm_id: str) -> Stream | None:
        """The initiator's stream, if it is connected here."""
        cid = self._initiated.get(swarm_id)
        return self.peer(swarm_id, cid) if cid is not None else None

    def initiated(self) -> tuple[str, ...]:
        """The swarms whose initiator is connected here."""
        return tuple(self._initiated)

    def members(self) -> Iterator[tuple[str, str, Stream]]:
        """Every peer here, confirmed or joining: (swarm id, cid, stream)."""
        for swarm_id, peers in self._peers.items():
            for cid, stream in peers.items():
                yield swarm_id, cid, stream
        for cid, stream in self._joining.items():
            yield stream.swarm_id or "", cid, stream

    def confirmed(self) -> Iterator[tuple[str, str, Stream]]:
        """The confirmed peers here: (swarm id, cid, stream)."""
        for swarm_id, peers in self._peers.items():
            for cid, stream in peers.items():
                yield swarm_id, cid, stream

    def swarm_count(self) -> int:
        return len(self._initiated)

    def peer_count(self) -> int:
        return sum(len(peers) for peers in self._peers.values())
