"""Prometheus metrics, through ``prometheus_client`` (``pip install flask_signal[metrics]``).

With ``SIGNAL_METRICS = True`` the hub serves ``GET {prefix}/metrics``:

- gauges: ``flask_signal_streams`` (by ``kind``), ``flask_signal_swarms``,
  ``flask_signal_peers``, ``flask_signal_channels``, ``flask_signal_draining``;
- counters: ``flask_signal_signals_in_total`` / ``_signals_out_total``
  (signals accepted / frames queued to peers), ``flask_signal_events_in_total``
  / ``_events_out_total``, ``flask_signal_stream_ends_total`` by ``reason``
  (``disconnected``, ``reset``, ``timeout``, ``write timeout``, ``overflow``,
  ``drain``, ``lifetime``, ...: the drops), ``flask_signal_resumes_total``,
  ``flask_signal_redis_errors_total``, ``flask_signal_redis_reconnects_total``,
  ``flask_signal_redis_signal_batches_total`` (``signals_in`` over it: the signals a
  call to Redis carries), ``flask_signal_redis_publish_batches_total`` (the same for
  channel events, over ``events_in``).

The hot paths only bump plain counts (:data:`flask_signal.hub.counts`); they
are copied into the Prometheus metrics every ``PERIOD`` seconds and before
each scrape. Under gunicorn with several workers, set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, as ``prometheus_client``
requires): each worker then writes its own values there, gauges are summed
over live workers, and any worker's ``/metrics`` answers for all of them
(values of other workers at most ``PERIOD`` seconds old).
"""

from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING, Any

import gevent

from . import hub

if TYPE_CHECKING:
    from .state import AppState

#: Seconds between two copies of this process's counts into its metrics.
PERIOD = 5.0

COUNTERS = {
    "signals_in": "signals accepted (POSTs and application sends)",
    "signals_out": "signal frames queued to swarm peers",
    "events_in": "channel events published",
    "events_out": "channel event frames queued to subscribers",
    "resumes": "swarm peers resumed after a lost connection",
    "redis_errors": "Redis calls that failed for want of Redis",
    "redis_reconnects": "pub/sub connections to Redis made again",
    "redis_signal_batches": "script calls to Redis carrying the signals of one loop turn",
    "redis_publish_batches": "script calls to Redis carrying the channel events of one loop turn",
}


def require() -> Any:
    """``prometheus_client``, or an ImportError that says how to install it."""
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "SIGNAL_METRICS needs prometheus_client: pip install 'flask_signal[metrics]'"
        ) from exc
    return prometheus_client


class Metrics:
    """This process's metrics for one app, kept in step with the hub."""

    def __init__(self, state: AppState) -> None:
        prom = require()
        self.prom = prom
        self.state = state
        self.registry = prom.CollectorRegistry(auto_describe=True)
        multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        mode = {"multiprocess_mode": "livesum"} if multi else {}
        self.multiprocess = multi

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return prom.Gauge(f"flask_signal_{name}", doc, labels, registry=self.registry, **mode)

        self.streams = gauge("streams", "open streams", ("kind",))
        self.swarms = gauge("swarms", "swarms whose initiator is held here")
        self.peers = gauge("peers", "swarm peers connected here")
        self.channels = gauge("channels", "channels with a subscriber here")
        self.draining = gauge("draining", "1 while the process drains")
        self.counters = {
            name: prom.Counter(f"flask_signal_{name}", doc, registry=self.registry)
            for name, doc in COUNTERS.items()
        }
        self.ends = prom.Counter(
            "flask_signal_stream_ends",
            "streams ended, by reason",
            ("reason",),
            registry=self.registry,
        )
        self._seen: dict[str, int] = {}
        if multi:
            # Gauges of a worker that exits stop counting (a killed one's stay
            # until gunicorn's child_exit hook calls mark_process_dead).
            from prometheus_client import multiprocess

            atexit.register(multiprocess.mark_process_dead, os.getpid())

    def sync(self) -> None:
        """Copy the hub's state and counts into the metrics."""
        local = self.state.broker.hub
        kinds = {"swarm": 0, "channel": 0}
        for stream in tuple(local.streams):
            kinds[stream.kind] = kinds.get(stream.kind, 0) + 1
        for kind, value in kinds.items():
            self.streams.labels(kind).set(value)
        self.swarms.set(self.state.broker.swarm_count())
        self.peers.set(len(local.peers))
        self.channels.set(len(local.channels))
        self.draining.set(1 if local.draining else 0)
        for name, value in tuple(hub.counts.items()):
            delta = value - self._seen.get(name, 0)
            if delta <= 0:
                continue
            self._seen[name] = value
            if name.startswith("end:"):
                self.ends.labels(name[4:]).inc(delta)
            elif name in self.counters:
                self.counters[name].inc(delta)

    def run(self) -> None:
        while True:
            gevent.sleep(PERIOD)
            self.sync()

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        self.sync()
        prom = self.prom
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


def start(state: AppState) -> Metrics:
    """The metrics of ``state``'s app in this process, kept up to date by a greenlet."""
    metrics = Metrics(state)
    gevent.spawn(metrics.run)
    return metrics
