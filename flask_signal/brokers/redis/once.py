"""Running scripts so that each operation takes effect at most once, and saying which.

A command whose answer does not come back (Redis stalled, a connection
reset) may still run: Redis executes whatever reached its socket, however
late. Retrying such a command blindly applies it twice. So each
state-changing script runs inside ``once.lua`` with an operation key:

- A retry of the same operation (same key) returns the first run's result
  and changes nothing, so retrying until an answer comes is safe.
- When no answer comes within ``timeout``, ``settle.lua`` asks Redis whether
  the operation ran, and if it had not, marks it so that a copy still on its
  way does nothing. Its answer is definitive: the caller gets the result, or
  :class:`BrokerUnavailable` meaning "not applied".
- Only if Redis does not answer the settling either (within
  ``settle_timeout``) does the caller get :class:`OutcomeUnknown`.

A command that was never sent (no connection could be made) fails at once
with :class:`BrokerUnavailable`: it cannot have been applied.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import gevent
from redis import exceptions as rexc

from .. import BrokerUnavailable, OutcomeUnknown, new_id
from .connection import UNAVAILABLE
from .mux import Mux, NotSent
from .scripts import Script

Arg = bytes | str | int | float


class Once:
    """Script calls over a :class:`.Mux`, each operation applied at most once."""

    def __init__(
        self,
        mux: Mux,
        settle: Script,
        *,
        timeout: float = 5.0,
        settle_timeout: float = 6.0,
        remember: float = 120.0,
    ) -> None:
        self.mux = mux
        self.settle_script = settle
        #: How long an operation is retried before it is settled.
        self.timeout = timeout
        #: How long settling is retried before the outcome is reported unknown.
        self.settle_timeout = settle_timeout
        #: How long Redis remembers an operation's key (ms); far longer than any retry.
        self.remember_ms = int(remember * 1000)

    # -- calls -----------------------------------------------------------------------

    def read(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a script that changes nothing; retried once (the connection may
        predate a Redis restart)."""
        try:
            return self._evalsha(script, keys, args)
        except UNAVAILABLE:
            pass
        try:
            return self._evalsha(script, keys, args)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"Redis unavailable: {exc}") from exc

    def run(self, script: Script, keys: Sequence[bytes], args: Sequence[Arg]) -> Any:
        """Run a state-changing script once; its result.

        Raises :class:`BrokerUnavailable` if it was not applied, and
        :class:`OutcomeUnknown` if Redis could not be asked.
        """
        op_key = keys[0] + b":op:" + new_id().encode()
        full_keys = [*keys, op_key]
        full_args = [*args, self.remember_ms]
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        maybe_sent = False
        failures = 0
        while True:
            try:
                return self._evalsha(script, full_keys, full_args)
            except NotSent as exc:
                last: BaseException = exc
                failures += 1
                if not maybe_sent and failures > 1:
                    # Nothing ever reached Redis: not applied, and no need to wait.
                    raise BrokerUnavailable(f"Redis unavailable: {last}") from last
            except UNAVAILABLE as exc:
                last = exc
                maybe_sent = True
            if time.monotonic() + delay >= deadline:
                break
            gevent.sleep(delay)
            delay = min(delay * 2, 0.5)
        if not maybe_sent:
            raise BrokerUnavailable(f"Redis unavailable: {last}") from last
        return self._settle(script.name, op_key, last)

    def queue(self, pipe: Any, script: Script, keys: Sequence[bytes], args: Sequence[Arg]) -> None:
        """Add the script to a redis-py pipeline (sent whole with EVAL), with its own
        operation key; for best-effort batches whose results are not needed."""
        op_key = keys[0] + b":op:" + new_id().encode()
        pipe.execute_command(
            "EVAL", script.text, len(keys) + 1, *keys, op_key, *args, self.remember_ms
        )

    def _settle(self, name: str, op_key: bytes, cause: BaseException) -> Any:
        deadline = time.monotonic() + self.settle_timeout
        delay = 0.05
        while True:
            try:
                reply = self._evalsha(self.settle_script, [op_key], [self.remember_ms])
                break
            except UNAVAILABLE:
                if time.monotonic() + delay >= deadline:
                    raise OutcomeUnknown(
                        f"Redis did not answer: the {name} may or may not have taken effect"
                        f" ({cause})"
                    ) from cause
                gevent.sleep(delay)
                delay = min(delay * 2, 0.5)
        if int(reply[0]) == 1:
            return json.loads(reply[1])
        raise BrokerUnavailable(f"Redis unavailable: the {name} was not applied ({cause})")

    # -- the wire --------------------------------------------------------------------

    def _evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return self.mux.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            # Redis lost its script cache (a restart): EVAL runs and caches it.
            return self.mux.call("EVAL", script.text, len(keys), *keys, *args)
