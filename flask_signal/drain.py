"""Graceful drain: a stopping process ends its streams with a ``retry:`` and exits in seconds.

Streams never finish by themselves, so a server that waits for its open
requests before exiting waits its whole graceful timeout and then cuts them
with a bare EOF. Draining instead, as soon as the process is told to stop:

- new streams are turned away with ``200`` and a ``retry:`` (what an
  EventSource retries; the next attempt reaches another process);
- every open stream gets a ``retry:`` hint, its delay drawn over
  ``SIGNAL_DRAIN_SPREAD`` seconds so clients do not all return at once,
  and ends; swarm peers then leave (or, with a resume grace, wait to be
  resumed elsewhere) and channel subscribers come back with their
  ``Last-Event-ID``;
- POSTs are still served until the server stops accepting.

Under gunicorn (``-k gevent``, the project's worker, the ``flask-signal``
command) nothing needs configuring: the extension finds the worker it runs
in and watches its ``alive`` flag, which gunicorn clears on SIGTERM, on the
SIGHUP of a reload (old workers get SIGTERM) and after ``max_requests``.
Elsewhere, call :meth:`flask_signal.Signal.drain` from the server's own
shutdown hook.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import gevent

from .hub import LocalHub, end_with_retry

log = logging.getLogger("flask_signal")

#: Seconds between two looks at the worker's ``alive`` flag.
POLL = 0.2

#: The gunicorn worker of this process, once known (see :func:`post_worker_init`).
_worker: Any = None


def drain(hub: LocalHub, spread: float) -> int:
    """Turn new streams away and end every open one with a jittered ``retry:``.

    Returns how many streams were ended. Idempotent: a second call only
    ends the streams that opened meanwhile.
    """
    if not hub.draining:
        log.info("draining: %d streams end with a retry hint", len(hub.streams))
    hub.draining = True
    ended = 0
    for stream in tuple(hub.streams):
        if not stream.ended:
            end_with_retry(stream, "drain", spread)
            ended += 1
    return ended


def post_worker_init(worker: Any) -> None:
    """A gunicorn ``post_worker_init`` hook that makes the worker known to the extension.

    Only needed where another hook replaced gunicorn's SIGTERM handler
    (the extension otherwise finds the worker through it), e.g. in a
    ``gunicorn.conf.py``: ``from flask_signal.drain import post_worker_init``.
    """
    global _worker
    _worker = worker


def find_worker() -> Any:
    """The gunicorn worker this process runs, or None (another server, or no gunicorn)."""
    if _worker is not None:
        return _worker
    base = sys.modules.get("gunicorn.workers.base")
    if base is None:
        return None
    handler = signal.getsignal(signal.SIGTERM)
    worker = getattr(handler, "__self__", None)
    return worker if isinstance(worker, base.Worker) else None


def worker_connections(worker: Any) -> int:
    """How many connections the worker serves at once (0 if it does not say)."""
    value = getattr(worker, "worker_connections", 0)
    return value if isinstance(value, int) else 0


def watch(worker: Any, hub: LocalHub, spread: float) -> gevent.Greenlet[Any]:
    """Drain ``hub`` as soon as gunicorn's ``worker`` is told to stop."""

    def run() -> None:
        while getattr(worker, "alive", False):
            gevent.sleep(POLL)
        drain(hub, spread)

    return gevent.spawn(run)
