"""The Lua scripts, loaded from the ``.lua`` files shipped beside this module.

One script per operation, so that no other process sees or changes a swarm
or a channel halfway through one. Each file starts with a comment giving its
KEYS, ARGV and reply.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

NAMES = ("create", "join", "leave", "signal", "publish", "replay")


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


class Scripts:
    """Every script registered on one redis-py client (called by SHA, loaded on NOSCRIPT)."""

    def __init__(self, client: Any) -> None:
        self.create = client.register_script(source("create"))
        self.join = client.register_script(source("join"))
        self.leave = client.register_script(source("leave"))
        self.signal = client.register_script(source("signal"))
        self.publish = client.register_script(source("publish"))
        self.replay = client.register_script(source("replay"))
