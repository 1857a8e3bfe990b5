"""The Redis broker, as a package of small parts.

Every process (each gunicorn worker, each server, a cron job) builds its own
:class:`RedisBroker` from the same URL and prefix. Redis holds the state and
the history; pub/sub only rings the bell. Each process keeps one pub/sub
connection, subscribed to exactly the topics its local streams need, plus one
connection over which every greenlet's commands are pipelined. Every change of
state is one Lua script, so concurrent processes never interleave half-done
operations.

=====================  ==========================================================
module                 what it holds
=====================  ==========================================================
:mod:`.keys`           the name of every key and topic
:mod:`.scripts`        the Lua scripts (``lua/*.lua``), one per operation
:mod:`.codec`          the pub/sub message format
:mod:`.connection`     making connections, and "Redis unavailable" as an exception
:mod:`.mux`            commands of many greenlets pipelined over one connection
:mod:`.once`           state-changing scripts applied at most once, and saying which
:mod:`.listener`       the pub/sub connection: subscriptions, reconnection, PINGs
:mod:`.swarms`         the local table of swarm streams messages are routed through
:mod:`.liveness`       heartbeats, the reaper of dead processes, the fence
:mod:`.broker`         :class:`RedisBroker`, which puts them together
=====================  ==========================================================

The keys, topics, scripts, message format and failure behaviour are described
for operators in the documentation's scale-out page.
"""

try:
    import redis  # noqa: F401 - redis-py, from the [redis] extra
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("the Redis broker needs redis-py: pip install 'flask-signal[redis]'") from exc

from .broker import RedisBroker

__all__ = ["RedisBroker"]
