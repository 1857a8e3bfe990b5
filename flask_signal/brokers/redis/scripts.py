"""The Lua scripts, loaded from the ``.lua`` files shipped beside this module.

One script per operation, so that no other process sees or changes a swarm
or a channel halfway through one. Each file starts with a comment giving its
KEYS, ARGV and reply. The scripts that change state are wrapped in
``once.lua`` (see :mod:`.once`): each run carries an operation key, and a
second copy of one operation never takes effect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources

#: Scripts that change state, run through :class:`~.once.Once`.
CHANGING = ("create", "join", "leave", "signal", "publish", "detach", "seal", "resume")
#: Scripts that only read, or settle an operation.
PLAIN = ("replay", "settle", "missed")


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


#: Scripts that use ``keep.lua`` (the keeping of frames for a peer in its resume grace).
KEEPING = ("join", "leave", "signal")


#: Scripts that publish on a swarm's topic through ``log.lua`` (the swarm log): the
#: caller appends the log's bounds to ARGV (``RedisBroker._log_bounds``) and, but for
#: ``signal`` (a batch, which names each signal's log in KEYS), the log's key to KEYS
#: (``log_key.lua``).
LOGGING = ("join", "leave", "signal", "detach", "resume")


def wrapped(name: str) -> str:
    """A state-changing script inside ``once.lua`` (after ``log.lua``, ``log_key.lua``
    and ``keep.lua`` if it uses them)."""
    body = source(name)
    if name in KEEPING:
        body = source("keep") + body
    if name in LOGGING:
        body = source("log") + (source("log_key") if name != "signal" else "") + body
    return source("once").replace("--BODY--", body)


@dataclass(frozen=True, slots=True)
class Script:
    """A script's text and the SHA1 Redis knows it by."""

    name: str
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


class Scripts:
    """Every script of the broker."""

    def __init__(self) -> None:
        self.create = Script("create", wrapped("create"))
        self.join = Script("join", wrapped("join"))
        self.leave = Script("leave", wrapped("leave"))
        self.signal = Script("signal", wrapped("signal"))
        self.publish = Script("publish", wrapped("publish"))
        self.detach = Script("detach", wrapped("detach"))
        self.seal = Script("seal", wrapped("seal"))
        self.resume = Script("resume", wrapped("resume"))
        self.replay = Script("replay", source("replay"))
        self.settle = Script("settle", source("settle"))
        self.missed = Script("missed", source("missed"))
