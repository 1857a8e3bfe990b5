"""The Flask extension: :class:`Signal`, the application-facing API.

Settings are declared in :mod:`flask_signal.settings`, the per-app state
lives in :mod:`flask_signal.state`, the routes in :mod:`flask_signal.views`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, has_app_context, request, url_for
from werkzeug.exceptions import HTTPException

from . import drain, framing, views
from .brokers import Broker, Delivery
from .errors import FlaskSignalError
from .settings import DEFAULTS as DEFAULTS  # re-exported: flask_signal.DEFAULTS
from .settings import Settings as Settings
from .state import EXTENSION_KEY, AppState, app_state, make_broker
from .streaming import capture_start_response

log = logging.getLogger("flask_signal")

#: Where :meth:`Signal.publish` called with data alone publishes: Flask-SSE's default channel.
DEFAULT_CHANNEL = "sse"
_NO_DATA: Any = object()
#: egg-sse's keep-alive payload, and the comment :meth:`Signal.ping` sends.
PING_DATA = ":ping"
PING_FRAME = b":ping\n\n"


@dataclass(frozen=True)
class Subscription:
    """What a declared stream view returns: channels, and optionally a first event.

    ``initial`` is a value or a zero-argument callable (sse.io's fetch); a
    callable runs after the subscription is live and after the response
    headers are sent, so events published while it computes arrive after it,
    in order. ``client`` is the application's id for this client (sse.io's
    ``clientId``): see :meth:`Signal.send_to` and :meth:`Signal.presence`.
    """

    channels: Sequence[str]
    initial: Any = None
    event: str | None = None
    client: str | None = None

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
        settings = Settings.resolve(app.config, self._overrides, os.environ)
        st = AppState(settings, make_broker(settings, app))
        # What the config said now: a key changed later is reported at start.
        st.config = app.config
        st.config_seen = {k: v for k, v in app.config.items() if k.startswith("SIGNAL_")}
        app.extensions["signal"] = self
        app.extensions[EXTENSION_KEY] = st
        # Checked here, so that an unsound CORS configuration stops the app at init.
        blueprint = views.make_blueprint(settings.url_prefix, cors=st.cors)
        app.register_blueprint(blueprint)
        if settings.fast_path is not False:
            from .fastpath import FastPath

            auto = settings.fast_path == "auto"
            app.wsgi_app = FastPath(app, app.wsgi_app, st, auto=auto)  # type: ignore[method-assign]
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
        channel: str | Iterable[str] | Any,
        data: Any = _NO_DATA,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
        type: str | None = None,
    ) -> str:
        """Publish an event on a channel (or several); returns its id.

        Strings are sent as they are; anything else as compact JSON. An
        integer ``id`` is sent in decimal, a float in its shortest form
        (egg-sse's ``Math.random()`` ids). An ``event`` or ``id`` containing
        CR, LF or NUL raises ValueError and nothing is sent.

        Flask-SSE's form works too: ``publish(data, type="greeting")`` (one
        positional argument) publishes ``data`` on :data:`DEFAULT_CHANNEL`;
        ``type`` is another name for ``event``. The string ``":ping"`` (egg-sse's
        keep-alive) is sent as a comment by :meth:`ping`, and ``""`` returned.
        """
        if data is _NO_DATA:
            channel, data = DEFAULT_CHANNEL, channel
        channels = [channel] if isinstance(channel, str) else list(channel)
        if isinstance(data, str) and data == PING_DATA:
            # egg-sse's keep-alive payload: a comment, never an event.
            self.ping(channels)
            return ""
        event = self._event(event, type)
        event_id = self._check(event, id)
        return self.broker.publish(channels, data, event=event, id=event_id, retry=retry)

    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
        type: str | None = None,
    ) -> str:
        """Publish to every channel that has subscribers."""
        event = self._event(event, type)
        event_id = self._check(event, id)
        return self.broker.publish_all(data, event=event, id=event_id, retry=retry)

    @staticmethod
    def _event(event: str | None, type: str | None) -> str | None:
        if event is not None and type is not None and event != type:
            raise TypeError("give event= or its Flask-SSE name type=, not both")
        return event if event is not None else type

    @staticmethod
    def _check(event: str | None, id: str | int | None) -> str | None:
        """Check ``event`` and ``id``; returns the id as sent (integers in decimal)."""
        if event is not None:
            framing.check_field("event", event)
        if isinstance(id, bool):
            raise TypeError("an event id is a string or a number, not a bool")
        if isinstance(id, (int, float)):
            return framing.number_id(id)
        if id is not None:
            framing.check_field("id", id)
        return id

    def ping(self, channel: str | Iterable[str] | None = None) -> int:
        """Send a keep-alive comment (``:ping``) now to this process's streams, all or those
        of ``channel`` (sse-channel's ``ping()``); returns how many got it.

        Each process pings its own streams (so does ``SIGNAL_PING_INTERVAL``): nothing
        crosses the broker.
        """
        hub = self.broker.hub
        if channel is None:
            streams = set(hub.streams)
        else:
            names = [channel] if isinstance(channel, str) else channel
            streams = {stream for name in names for stream in hub.channels.get(name, ())}
        return sum(stream.put(PING_FRAME) for stream in streams)

    def send_to(
        self,
        client: str,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        """Send an event to one client's streams only (the ``client`` of a
        :meth:`subscription`), in whichever process holds them; not kept in history."""
        self._check(event, id)
        self.broker.send_to(client, data, event=event, id=id, retry=retry)

    def disconnect(self, client: str) -> None:
        """End every stream of ``client``, in whichever process holds them."""
        self.broker.disconnect(client)

    def presence(self, channel: str) -> dict[str, int]:
        """The client ids subscribed to ``channel``, each with its number of streams:
        cluster-wide with Redis, this process's with ``memory://``."""
        return self.broker.presence(channel)

    def subscriber_count(self, channel: str) -> int:
        """Streams subscribed to ``channel``, with a client id or not: cluster-wide with
        Redis, this process's with ``memory://`` (see :meth:`connection_count`)."""
        return self.broker.subscriber_count(channel)

    def history(self, channel: str, since: str | int | None = None) -> list[dict[str, Any]]:
        """The events ``channel`` retains, oldest first, or only those after the event id
        ``since`` (sse-channel's ``sendEventsSinceId``): each a dict with ``data`` (the text
        sent: JSON for non-strings), ``id`` and, where set, ``event`` and ``retry``.
        Under a Redis broker, the history every process shares."""
        after = framing.number_id(since) if isinstance(since, (int, float)) else since
        return [
            framing.parse_message(frame)
            for frame in self.broker.channel_history(channel, after).frames
        ]

    def retry(self, milliseconds: int, channel: str | Iterable[str] | None = None) -> int:
        """Tell this process's streams, all or those of ``channel``, to wait ``milliseconds``
        before reconnecting, and start its new streams of them with it too (sse-channel's
        ``retry(duration)``); returns how many streams got it. Per process, as keep-alives:
        set ``SIGNAL_RETRY`` for every process."""
        if isinstance(milliseconds, bool) or not isinstance(milliseconds, int) or milliseconds < 0:
            raise ValueError(f"milliseconds must be an int >= 0, not {milliseconds!r}")
        st = self._state()
        hub = st.broker.hub
        if channel is None:
            st.retries.clear()
            st.retries[None] = milliseconds
            streams = {stream for stream in hub.streams if stream.kind == "channel"}
        else:
            names = [channel] if isinstance(channel, str) else list(channel)
            st.retries.update(dict.fromkeys(names, milliseconds))
            streams = {stream for name in names for stream in hub.channels.get(name, ())}
        frame = framing.retry(milliseconds)
        return sum(stream.put(frame) for stream in streams)

    def close(self, channel: str) -> None:
        """End every stream of ``channel``; clients reconnect after their retry delay."""
        self.broker.close_channel(channel)

    def shutdown(self) -> None:
        """End every stream of this process and release the broker's connections.

        For a server's shutdown hook: streams never finish by themselves, so a
        graceful shutdown would otherwise wait its whole timeout for them.
        """
        self._state().close()

    def drain(self) -> int:
        """Stop taking streams and end every open one with a jittered ``retry:``.

        For a server's shutdown hook where the extension cannot find a gunicorn
        worker to watch (see :mod:`flask_signal.drain`); returns how many
        streams were ended. POSTs are still answered.
        """
        st = self._state()
        return drain.drain(st.broker.hub, st.settings.drain_spread)

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
            # Whether swarm requests take the fast path (None: no request yet).
            "fast_path": self._state().fast_path,
            **broker.stats(),
        }

    def subscription(
        self,
        channels: str | Sequence[str],
        initial: Any = None,
        *,
        event: str | None = None,
        client: str | None = None,
    ) -> Subscription:
        """Build the return value of a :meth:`stream` view."""
        names = [channels] if isinstance(channels, str) else list(channels)
        return Subscription(names, initial, event, client)

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
        # Every app gets the same options: never consume the declaration's.
        options = dict(options)
        endpoint = options.pop("endpoint", None) or f"signal_stream.{view.__name__}"

        def stream_view(**kwargs: Any) -> Any:
            st = app_state(current_app)
            if request.method == "OPTIONS":
                if st.cors is None:
                    return current_app.make_default_options_response()
                return views.preflight(st.cors)
            return views.add_cors(st.cors, answer(st, kwargs))

        def answer(st: AppState, kwargs: dict[str, Any]) -> Any:
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
            if sub.client is not None and not views.CHANNEL.fullmatch(sub.client):
                raise ValueError(f"{view.__name__} returned an invalid client id: {sub.client!r}")
            initial = sub.initial_frame if sub.initial is not None else None
            try:
                return views.subscribe_response(st, sub.channels, initial, client=sub.client)
            except FlaskSignalError as exc:
                # Not under the blueprint, so its error handler does not apply.
                return views.answer_error(exc)

        stream_view.__name__ = view.__name__
        app.add_url_rule(rule, endpoint, stream_view, methods=["GET", "OPTIONS"], **options)
