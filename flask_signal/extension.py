"""The Flask extension: settings, per-app state, and the application-facing API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
from flask import Flask, Request, Response, current_app, has_app_context, url_for
from werkzeug.exceptions import HTTPException

from . import framing, views
from .brokers import Broker, Delivery, from_url
from .hub import LocalHub, keep_alive
from .parsing import parse_size
from .protocol import Refusal
from .streaming import capture_start_response

log = logging.getLogger("flask_signal")

#: The settings, their ``SIGNAL_*`` config keys (upper-cased names) and defaults.
DEFAULTS: dict[str, Any] = {
    "limit": "10kb",
    "url_prefix": "/signal",
    "broker_url": "memory://",
    "broker_options": {},
    "redis_prefix": "signal:",
    "ping_interval": 15.0,
    "cors": None,
    "create_status": 200,
    "queue_size": 1000,
    "history_size": 500,
    "max_clients": 0,
    "channel_max_clients": 0,
    "retry_after": 5,
    "retry": None,
    "headers": {},
    "publish_key": None,
    "publish_auth": None,
    "lost_event": "missed",
    "fast_path": False,
    "direct_writes": True,
}

BASE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

PublishAuth = Callable[[Request, str], bool]


@dataclass(frozen=True)
class Settings:
    """Settings of one app: constructor arguments over ``SIGNAL_*`` config over defaults."""

    limit: int
    url_prefix: str
    broker_url: str
    broker_options: Mapping[str, Any]
    redis_prefix: str
    ping_interval: float
    cors: Any
    create_status: int
    queue_size: int
    history_size: int
    max_clients: int
    channel_max_clients: int
    retry_after: int
    retry: int | None
    headers: Mapping[str, str]
    publish_key: str | None
    publish_auth: PublishAuth | None
    lost_event: str
    fast_path: bool
    direct_writes: bool

    @classmethod
    def resolve(cls, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
        values = {
            name: overrides[name]
            if overrides.get(name) is not None
            else config.get(f"SIGNAL_{name.upper()}", default)
            for name, default in DEFAULTS.items()
        }
        try:
            values["limit"] = parse_size(values["limit"])
        except ValueError as exc:
            raise ValueError(f"SIGNAL_LIMIT: {exc}") from exc
        prefix = str(values["url_prefix"]).rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise ValueError(f"SIGNAL_URL_PREFIX must be empty or start with '/': {prefix!r}")
        values["url_prefix"] = prefix
        if values["create_status"] not in (200, 201):
            raise ValueError("SIGNAL_CREATE_STATUS must be 200 or 201")
        for name in ("queue_size", "history_size", "max_clients", "channel_max_clients"):
            if not isinstance(values[name], int) or values[name] < 0:
                raise ValueError(f"SIGNAL_{name.upper()} must be a non-negative int")
        for name in ("fast_path", "direct_writes"):
            if not isinstance(values[name], bool):
                raise ValueError(f"SIGNAL_{name.upper()} must be True or False")
        if values["queue_size"] < 1:
            raise ValueError("SIGNAL_QUEUE_SIZE must be at least 1")
        if float(values["ping_interval"]) < 0:
            raise ValueError("SIGNAL_PING_INTERVAL must be >= 0 (0 turns pings off)")
        values["ping_interval"] = float(values["ping_interval"])
        framing.check_field("event", values["lost_event"])
        return cls(**values)


@dataclass
class AppState:
    """What the extension keeps per application."""

    settings: Settings
    broker: Broker
    started: bool = False
    _stream_headers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def start(self) -> None:
        """Start the broker in the serving process: after any fork, since a
        gunicorn master must not own listeners that its workers inherit."""
        self.started = True
        self.broker.start()
        if self.settings.ping_interval > 0:
            gevent.spawn(keep_alive, self.broker.hub, self.settings.ping_interval)

    def stream_headers(self, protocol: str) -> list[tuple[str, str]]:
        """Response headers of a stream; ``Connection`` only where HTTP/1.x allows it."""
        cached = self._stream_headers.get(protocol)
        if cached is None:
            headers = {**BASE_HEADERS, **self.settings.headers}
            if protocol in ("HTTP/1.1", "HTTP/1.0"):
                headers.setdefault("Connection", "keep-alive")
            cached = self._stream_headers[protocol] = list(headers.items())
        return cached


def app_state(app: Flask) -> AppState:
    try:
        st: AppState = app.extensions["signal_state"]
    except KeyError:
        raise RuntimeError("flask_signal is not initialized on this app: call init_app") from None
    if not st.started:
        st.start()
    return st


@dataclass(frozen=True)
class Subscription:
    """What a declared stream view returns: channels, and optionally a first event.

    ``initial`` is a value or a zero-argument callable; a callable runs after
    the subscription is live, so events published while it computes arrive
    after it, in order.
    """

    channels: Sequence[str]
    initial: Any = None
    event: str | None = None

    def initial_frame(self) -> bytes:
        value = self.initial() if callable(self.initial) else self.initial
        return framing.message(value, event=self.event)


class Signal:
    """Swarm signalling and SSE channels for Flask.

    ``Signal(app)`` or ``signal = Signal(); signal.init_app(app)``. Keyword
    arguments override the ``SIGNAL_*`` config keys (see :data:`DEFAULTS`).
    """

    def __init__(self, app: Flask | None = None, **settings: Any) -> None:
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Signal settings: {', '.join(sorted(unknown))}")
        self._overrides = settings
        self._streams: list[tuple[str, dict[str, Any], Callable[..., Any]]] = []
        self._apps: list[Flask] = []
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        settings = Settings.resolve(app.config, self._overrides)
        options = dict(settings.broker_options)
        if not settings.broker_url.startswith("memory:"):
            options.setdefault("prefix", settings.redis_prefix)
        broker = from_url(
            settings.broker_url,
            hub=LocalHub(),
            sender=app,
            history_size=settings.history_size,
            **options,
        )
        app.extensions["signal"] = self
        app.extensions["signal_state"] = AppState(settings, broker)
        blueprint = views.make_blueprint(settings.url_prefix, cors=bool(settings.cors))
        if settings.cors:
            from flask_cors import CORS

            origins = "*" if settings.cors is True else settings.cors
            # send_wildcard: answer "*" itself rather than echoing each Origin.
            CORS(
                blueprint,
                origins=origins,
                send_wildcard=origins == "*",
                expose_headers=["Retry-After"],
            )
        app.register_blueprint(blueprint)
        if settings.fast_path:
            from .fastpath import FastPath

            app.wsgi_app = FastPath(app, app.wsgi_app, app.extensions["signal_state"])  # type: ignore[method-assign]
        # Outermost of the two, so that every stream, fast path or not, finds it.
        app.wsgi_app = capture_start_response(app.wsgi_app)  # type: ignore[method-assign]
        self._apps.append(app)
        for rule, options, view in self._streams:
            self._add_stream_route(app, rule, options, view)

    # -- application API -------------------------------------------------------------

    def _state(self) -> AppState:
        if has_app_context():
            return app_state(current_app)
        if self.app is not None:
            return app_state(self.app)
        raise RuntimeError("no Flask app: use an app context or Signal(app)")

    @property
    def broker(self) -> Broker:
        return self._state().broker

    def send(self, swarm_id: str, data: Any, cid: str | None = None) -> bool:
        """Signal a swarm from application code (no token): ``False`` if no such swarm or cid."""
        return self.broker.signal(swarm_id, data, cid=cid) is Delivery.OK

    def publish(
        self,
        channel: str | Iterable[str],
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Publish an event on a channel (or several); returns its id.

        Strings are sent as they are; anything else as compact JSON. An
        ``event`` or ``id`` containing CR, LF or NUL raises ValueError and
        nothing is sent.
        """
        channels = [channel] if isinstance(channel, str) else list(channel)
        self._check(event, id)
        return self.broker.publish(channels, data, event=event, id=id, retry=retry)

    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Publish to every channel that has subscribers."""
        self._check(event, id)
        return self.broker.publish_all(data, event=event, id=id, retry=retry)

    @staticmethod
    def _check(event: str | None, id: str | None) -> None:
        if event is not None:
            framing.check_field("event", event)
        if id is not None:
            framing.check_field("id", id)

    def close(self, channel: str) -> None:
        """End every stream of ``channel``; clients reconnect after their retry delay."""
        self.broker.close_channel(channel)

    def shutdown(self) -> None:
        """End every stream of this process and release the broker's connections.

        For a server's shutdown hook: streams never finish by themselves, so a
        graceful shutdown would otherwise wait its whole timeout for them.
        """
        self.broker.close()

    def client_url(self, *, _external: bool = False) -> str:
        """The versioned URL of the browser client (``{prefix}/client.js?v=...``), long cached."""
        return url_for("signal.client", v=views.client_asset("client.js")[1], _external=_external)

    def connection_count(self, channel: str | None = None) -> int:
        """Open streams in this process, all or on one channel."""
        return self.broker.connection_count(channel)

    def stats(self) -> dict[str, Any]:
        """Counts for this process: swarms, streams, channels, overflowed clients."""
        broker = self.broker
        return {
            "broker": broker.url.partition("://")[0],  # never the URL: it may hold a password
            "swarms": broker.swarm_count(),
            "streams": broker.hub.count(),
            "direct": sum(stream.direct for stream in tuple(broker.hub.streams)),
            "peers": len(broker.hub.peers),
            "channels": len(broker.hub.channels),
            "overflows": broker.hub.overflows,
            **broker.stats(),
        }

    def subscription(
        self, channels: str | Sequence[str], initial: Any = None, *, event: str | None = None
    ) -> Subscription:
        """Build the return value of a :meth:`stream` view."""
        names = [channels] if isinstance(channels, str) else list(channels)
        return Subscription(names, initial, event)

    def stream(
        self, rule: str, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an SSE route with URL parameters, as sse.io's rooms do.

        The view runs in the request context (so ``abort(403)`` and the
        application's auth apply) and returns a channel name, a list of
        names, or a :class:`Subscription` with an initial event::

            @signal.stream("/files/<guid>/pull")
            def pull(guid):
                if not may_read(guid):
                    abort(403)
                return signal.subscription(f"file:{guid}", lambda: load(guid), event="init")
        """

        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            self._streams.append((rule, options, view))
            for app in self._apps:
                self._add_stream_route(app, rule, options, view)
            return view

        return decorator

    def _add_stream_route(
        self, app: Flask, rule: str, options: dict[str, Any], view: Callable[..., Any]
    ) -> None:
        endpoint = options.pop("endpoint", None) or f"signal_stream.{view.__name__}"

        def stream_view(**kwargs: Any) -> Any:
            st = app_state(current_app)
            try:
                result = view(**kwargs)
            except HTTPException as exc:
                if exc.code is None or exc.code < 400:
                    raise
                return views.error(exc.code, exc.description or exc.name)
            if isinstance(result, Response):
                return result
            sub = result if isinstance(result, Subscription) else self.subscription(result)
            bad = [name for name in sub.channels if not views.CHANNEL.fullmatch(name)]
            if bad or not sub.channels:
                raise ValueError(f"{view.__name__} returned invalid channel names: {bad!r}")
            initial = sub.initial_frame if sub.initial is not None else None
            try:
                return views.subscribe_response(st, sub.channels, initial)
            except Refusal as exc:
                return views.respond(exc.answer)

        stream_view.__name__ = view.__name__
        app.add_url_rule(rule, endpoint, stream_view, methods=["GET"], **options)
