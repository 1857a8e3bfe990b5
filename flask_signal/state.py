"""What the extension keeps per application, and its one lazy start.

:class:`AppState` is made by ``init_app`` and found in
``app.extensions["signal_state"]``; everything that serves a request (the
blueprint, the fast path, declared routes) reaches it through
:func:`app_state` or :meth:`AppState.ready`, which start the broker on first
use: in the serving process, after any fork.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import gevent

from . import cors, drain, ice
from .brokers import Broker, from_url
from .hub import LocalHub, keep_alive, watchdog
from .settings import DEFAULTS, Settings

#: Where ``init_app`` leaves the state in ``app.extensions``.
EXTENSION_KEY = "signal_state"

BASE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

#: What channel streams change in :data:`BASE_HEADERS`.
CHANNEL_HEADERS = {"Cache-Control": "no-cache, no-transform"}

#: URL schemes of the Redis broker, the only one that takes ``SIGNAL_REDIS_PREFIX``.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def ice_extra(settings: Settings) -> Callable[[str], dict[str, Any]]:
    """What a peer's ``connect`` data gains: its ``iceServers``, with TURN credentials."""

    def extra(cid: str) -> dict[str, Any]:
        servers = ice.ice_servers(
            settings.ice_servers,
            cid,
            turn_secret=settings.turn_secret,
            ttl=settings.turn_ttl,
            now=time.time(),
        )
        return {"iceServers": servers}

    return extra


def make_broker(settings: Settings, sender: Any) -> Broker:
    """The broker ``settings`` name, not started."""
    options = dict(settings.broker_options)
    scheme = settings.broker_url.partition("://")[0].lower()
    if scheme in REDIS_SCHEMES:
        options.setdefault("prefix", settings.redis_prefix)
        options.setdefault("swarm_log", settings.redis_swarm_log)
        options.setdefault("swarm_log_bytes", settings.redis_swarm_log_bytes)
        options.setdefault("swarm_log_ttl", settings.redis_swarm_log_ttl)
    return from_url(
        settings.broker_url,
        hub=LocalHub(),
        sender=sender,
        history_size=settings.history_size,
        resume_grace=settings.resume_grace,
        resume_bytes=min(settings.queue_bytes, 64 * 1024),
        sender_field=settings.sender_field,
        max_swarm_peers=settings.max_swarm_peers,
        connect_extra=ice_extra(settings) if settings.ice_servers else None,
        **options,
    )


@dataclass
class AppState:
    """The settings and broker of one app."""

    settings: Settings
    broker: Broker
    started: bool = False
    #: This process's Prometheus metrics, with ``SIGNAL_METRICS`` on.
    metrics: Any = None
    #: Whether swarm requests take the fast path: None until the first request decides.
    fast_path: bool | None = False
    #: The app's config, and its ``SIGNAL_*`` keys as ``init_app`` read them.
    #: Reconnection delays set by :meth:`Signal.retry`, by channel (``None``: every stream).
    retries: dict[str | None, int] = field(default_factory=dict)
    config: Any = None
    config_seen: dict[str, Any] = field(default_factory=dict)
    _stream_headers: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    #: The background loops :meth:`start` spawned (keep-alive, watchdog), ended by :meth:`close`.
    _loops: list[Any] = field(default_factory=list)

    def ready(self) -> AppState:
        """This state, its broker started (once)."""
        if not self.started:
            self.start()
        return self

    def start(self) -> None:
        """Start the broker in the serving process: after any fork, since a
        gunicorn master must not own listeners that its workers inherit."""
        self.started = True
        if self.settings.defer_accept:
            from .listeners import defer_accept

            defer_accept()
        self.check_config()
        self.broker.start()
        settings = self.settings
        worker = drain.find_worker()
        workers = getattr(getattr(worker, "cfg", None), "workers", 1)
        if settings.broker_url.startswith("memory:") and isinstance(workers, int) and workers > 1:
            warnings.warn(
                f"flask_signal: memory:// under {workers} worker processes: a publish or a "
                "signal reaches only the clients of the process that made it; set "
                "SIGNAL_BROKER_URL to a redis:// URL, or run one worker",
                RuntimeWarning,
                stacklevel=2,
            )
        if worker is not None:
            drain.watch(worker, self.broker.hub, settings.drain_spread)
            connections = drain.worker_connections(worker)
            if connections and not settings.max_clients:
                # Streams hold their connection: keep some of the worker's
                # slots for POSTs, so signals still get through at capacity.
                self.broker.hub.max_streams = connections - max(1, min(100, connections // 10))
        if settings.metrics:
            from . import metrics

            self.metrics = metrics.start(self)
        if settings.ping_interval > 0:
            self._loops.append(gevent.spawn(keep_alive, self.broker.hub, settings.ping_interval))
        if settings.write_timeout or settings.max_stream_age:
            self._loops.append(
                gevent.spawn(
                    watchdog,
                    self.broker.hub,
                    write_timeout=settings.write_timeout,
                    max_age=settings.max_stream_age,
                    spread=settings.drain_spread,
                    period=min(1.0, (settings.write_timeout or settings.max_stream_age) / 4),
                )
            )

    def close(self) -> None:
        """End every stream of this process, release the broker's connections and
        stop the background loops (each holds the hub: an app made and dropped in a
        long-lived process, as tests do, would otherwise keep them running)."""
        try:
            self.broker.close()
        finally:
            loops, self._loops = self._loops, []
            gevent.killall(loops, block=False)

    @cached_property
    def cors(self) -> cors.Policy | None:
        """The CORS policy (``None``: off); ValueError for an unsound configuration."""
        settings = self.settings
        return cors.policy(settings.cors, settings.cors_credentials, settings.cors_max_age)

    def retry_for(self, channels: Any) -> int | None:
        """The ``retry:`` a new stream of ``channels`` starts with: the longest a
        :meth:`Signal.retry` set for one of them, else for every stream, else ``SIGNAL_RETRY``."""
        retries = self.retries
        if retries:
            own = [retries[name] for name in channels if name in retries]
            if own:
                return max(own)
            if None in retries:
                return retries[None]
        return self.settings.retry

    def check_config(self) -> None:
        """Warn about ``SIGNAL_*`` config keys set or changed after ``init_app``, which
        read the config once: they have no effect."""
        if self.config is None:
            return
        late = sorted(
            name
            for name, value in self.config.items()
            if name.startswith("SIGNAL_")
            and name[len("SIGNAL_") :].lower() in DEFAULTS
            and (name not in self.config_seen or self.config_seen[name] is not value)
        )
        if late:
            warnings.warn(
                f"flask_signal: {', '.join(late)} set after Signal(app) / init_app and "
                "ignored: set SIGNAL_* keys before initializing the extension",
                RuntimeWarning,
                stacklevel=2,
            )

    def stream_headers(self, protocol: str, kind: str = "swarm") -> list[tuple[str, str]]:
        """Response headers of a stream; ``Connection`` only where HTTP/1.x allows it.

        Channel streams add ``no-transform`` to ``Cache-Control`` (as egg-sse), so that
        a compressing proxy does not hold events back; swarm streams keep the
        protocol's exact ``no-cache``.
        """
        cached = self._stream_headers.get((protocol, kind))
        if cached is None:
            own = CHANNEL_HEADERS if kind == "channel" else {}
            headers = {**BASE_HEADERS, **own, **self.settings.headers}
            if protocol in ("HTTP/1.1", "HTTP/1.0"):
                headers.setdefault("Connection", "keep-alive")
            cached = self._stream_headers[(protocol, kind)] = list(headers.items())
        return cached


def app_state(app: Any) -> AppState:
    """The started state of a Flask ``app``; RuntimeError if the extension is not on it."""
    try:
        st: AppState = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("flask_signal is not initialized on this app: call init_app") from None
    return st.ready()
