"""Operations asked for in one turn of the event loop, sent to Redis as one.

Under load, many requests of a worker post signals (or publish channel events) at
the same moment: the greenlets woken by one poll of the sockets all run before the
loop polls again. Each alone costs Redis a script call (with its at-most-once
bookkeeping) and the worker a call through the multiplexer; a batch pays those once. The
first caller of a turn leads: it yields once, so that the other greenlets ready
in the same turn add theirs, then sends them all and hands each caller its own
result. A caller alone waits one turn of the loop and no round trip more.

The batch is one operation: applied once, or not at all, or (Redis gone silent)
of unknown outcome, for every item of it alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import gevent
from gevent.event import AsyncResult

from .. import BrokerUnavailable, OutcomeUnknown

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Batch(Generic[Item, Result]):
    __slots__ = ("done", "items")

    def __init__(self, first: Item) -> None:
        self.items = [first]
        self.done: AsyncResult[Sequence[Result]] = AsyncResult()


class Batcher(Generic[Item, Result]):
    """Gathers the items of one loop turn and sends them with ``send``, which returns
    one result per item, in order (or raises, for all of them)."""

    def __init__(self, send: Callable[[list[Item]], Sequence[Result]], *, limit: int = 64) -> None:
        self.send = send
        #: The most items one call to ``send`` carries (a bound on Redis's time in one
        #: script); more in one turn go in further batches.
        self.limit = max(1, limit)
        self._open: _Batch[Item, Result] | None = None
        #: How many batches and items were sent (for tests and stats).
        self.batches = 0
        self.items = 0

    def run(self, item: Item) -> Result:
        """``item``'s result, once its batch was sent."""
        batch = self._open
        if batch is not None:
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self.limit:
                self._open = None
            # The leader completes ``done`` whatever happens to it (see below).
            mine: Result = batch.done.get()[index]
            return mine
        batch = self._open = _Batch(item)
        sent = False
        try:
            if self.limit > 1:
                gevent.sleep(0)  # the other greenlets ready in this turn join
            if self._open is batch:
                self._open = None
            self.batches += 1
            self.items += len(batch.items)
            sent = True
            results = self.send(batch.items)
            if len(results) != len(batch.items):
                raise OutcomeUnknown("Redis answered a batch with the wrong count")
        except BaseException as exc:
            if self._open is batch:
                self._open = None
            # The others learn what the leader learnt; a leader stopped (killed) before
            # the batch went out leaves it unsent, and after, of unknown outcome.
            if isinstance(exc, Exception):
                batch.done.set_exception(exc)
            elif sent:
                batch.done.set_exception(OutcomeUnknown("the request stopped while sent"))
            else:
                batch.done.set_exception(BrokerUnavailable("the request stopped before sending"))
            raise
        batch.done.set(results)
        return results[0]
