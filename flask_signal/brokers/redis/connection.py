"""Connections to Redis: how they are made, and how failures to reach Redis are reported."""

from __future__ import annotations

import functools
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent.monkey
import redis
from redis import exceptions as rexc

from ...hub import counts
from .. import BrokerUnavailable

#: Errors that mean "Redis cannot be reached right now" (BusyLoadingError is a ConnectionError).
UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)

#: The operating system's poll(), even when gevent has patched the select module.
_os_poll: Any
try:
    _os_poll = gevent.monkey.get_original("select", "poll")
except AttributeError:  # a platform without poll()
    _os_poll = None


def quick_check(base: type[Any]) -> type[Any]:
    """``base`` (a redis-py connection class) with a readiness check that skips the gevent hub.

    The multiplexed connection asks ``can_read()`` before every read, and the
    pub/sub listener before every message. With hiredis that
    is a ``select.poll``, which gevent's patching turns into a trip through the
    hub: about half the CPU of a command. With no timeout, the operating
    system's poll cannot block, so it is used directly. True means data or a
    closed socket, as redis-py's own check: either way the caller reads or
    reconnects.
    """

    class QuickCheck(base):  # type: ignore[misc]
        def can_read(self, timeout: float = 0) -> bool:
            reader = getattr(self._parser, "_reader", None)  # hiredis's; else redis-py's way
            sock = self._sock
            if timeout or sock is None or reader is None or _os_poll is None:
                return bool(super().can_read(timeout))
            if reader.has_data():
                return True
            pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but unread
            if pending is not None and pending():
                return True
            poller = _os_poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))

    QuickCheck.__name__ = QuickCheck.__qualname__ = f"Quick{base.__name__}"
    return QuickCheck


def connector(url: str, *, socket_timeout: float, connect_timeout: float) -> Callable[[], Any]:
    """What makes a new, unconnected redis-py connection to ``url`` (any scheme redis-py
    knows); ``socket_timeout`` is the longest a reply may take."""
    # The pool only parses the URL: it never connects.
    pool = redis.ConnectionPool.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        # RESP2: pub/sub messages as plain replies, and any Redis since 2.6 speaks it.
        protocol=2,
    )
    connection_class: Callable[..., Any] = quick_check(pool.connection_class)
    return functools.partial(connection_class, **pool.connection_kwargs)


@contextmanager
def unavailable() -> Iterator[None]:
    """Turn "Redis cannot be reached" into :class:`BrokerUnavailable`."""
    try:
        yield
    except UNAVAILABLE as exc:
        counts["redis_errors"] += 1
        raise BrokerUnavailable(f"Redis unavailable: {exc}") from exc
