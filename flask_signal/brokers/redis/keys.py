"""The names of everything the Redis broker keeps in Redis, in one place.

All names start with the prefix (``signal:`` by default). Every key and topic
of one swarm or one channel carries the same hash tag (``{<id>}``,
``{<name>}``), so that the scripts touching one swarm or channel touch one
Cluster slot. Topics have the same names as the keys they concern.
"""

from __future__ import annotations

import re

#: What a swarm's log key adds to its hash key (see :meth:`Keys.swarm_log`).
LOG_SUFFIX = b":log"


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def decode(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogatepass")


class Keys:
    """Key and topic names under one prefix."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the Redis prefix must not contain braces (they are hash tags)")
        self.prefix = prefix
        #: The sequencer behind hub-assigned event ids (hash: epoch, seq).
        self.seq = encode(f"{prefix}seq")
        #: The processes to watch (set).
        self.procs = encode(f"{prefix}procs")
        #: The reaper's lock (string).
        self.reaper = encode(f"{prefix}reaper")
        #: The deadlines of peers in their resume grace (sorted set of "<swarm id> <cid>"
        #: by the Redis time, in ms, at which they leave).
        self.grace = encode(f"{prefix}grace")
        #: A PUBSUB CHANNELS pattern matching every channel topic.
        self.channels_pattern = encode(re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "chan:{*}")
        self._channel_start = len(encode(f"{prefix}chan:{{"))

    def swarm(self, swarm_id: str) -> bytes:
        """A swarm's hash, and its topic."""
        return encode(f"{self.prefix}swarm:{{{swarm_id}}}")

    def swarm_log(self, swarm_id: str) -> bytes:
        """A swarm's latest pub/sub messages, numbered (list; see ``lua/log.lua``)."""
        return self.swarm(swarm_id) + LOG_SUFFIX

    def grace_set(self, swarm_id: str) -> bytes:
        """A swarm's peers in their resume grace (set of cids)."""
        return self.swarm(swarm_id) + b":grace"

    def kept(self, swarm_id: str, cid: str) -> bytes:
        """A detached peer's latest frames, from the process that held its stream (list)."""
        return self.swarm(swarm_id) + b":kept:" + encode(cid)

    def queue(self, swarm_id: str, cid: str) -> bytes:
        """Frames addressed to a peer in its resume grace (list; the scripts build this
        name from the swarm's)."""
        return self.swarm(swarm_id) + b":queue:" + encode(cid)

    def draining(self, swarm_id: str, cid: str) -> bytes:
        """Set while a detached peer's previous process adds the frames still on their way
        to it (string with a short TTL)."""
        return self.swarm(swarm_id) + b":draining:" + encode(cid)

    def resume(self, digest: str) -> bytes:
        """Which peer a resume key digest belongs to, during its grace (string
        ``"<swarm id> <cid>"``)."""
        return encode(f"{self.prefix}resume:{{{digest}}}")

    def channel(self, name: str) -> bytes:
        """A channel's history (stream), and its topic."""
        return encode(f"{self.prefix}chan:{{{name}}}")

    def channel_meta(self, name: str) -> bytes:
        """A channel history's epoch and highest evicted sequence number (hash)."""
        return self.channel(name) + b":meta"

    def channel_name(self, topic: bytes | str) -> str:
        """The channel a channel topic names."""
        raw = topic if isinstance(topic, bytes) else encode(topic)
        return decode(raw[self._channel_start : -1])

    def presence(self, name: str) -> bytes:
        """Who is subscribed to a channel (hash: ``"<process>\\n<client id>"`` -> streams;
        an empty client id counts the streams without one)."""
        return self.channel(name) + b":presence"

    def client(self, client: str) -> bytes:
        """A client id's topic: events for its streams, and their disconnection."""
        return encode(f"{self.prefix}client:{{{client}}}")

    def proc(self, process: str) -> bytes:
        """A process's heartbeat (string with a TTL)."""
        return encode(f"{self.prefix}proc:{{{process}}}")

    def proc_peers(self, process: str) -> bytes:
        """The peers whose streams a process holds (set of ``"<swarm id> <cid>"``)."""
        return encode(f"{self.prefix}proc:{{{process}}}:peers")

    def proc_presence(self, process: str) -> bytes:
        """The channels under which a process has presence entries (set of names)."""
        return encode(f"{self.prefix}proc:{{{process}}}:presence")
