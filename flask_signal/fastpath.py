"""The fast path: the swarm protocol served in front of Flask, whenever nothing would notice.

The extension wraps ``app.wsgi_app`` in :class:`FastPath`, which answers the
swarm requests — GET and POST on ``{prefix}`` and ``{prefix}/<id>`` —
straight from the WSGI environ, through the same :mod:`flask_signal.protocol`
functions as the blueprint, and hands everything else to Flask. What is
skipped is Flask's per-request machinery: request context, URL matching,
hooks, signals and error handlers. Channel routes always go through Flask.

With ``SIGNAL_FAST_PATH = "auto"`` (the default) the choice is made when the
first request arrives, once the app is fully set up: the fast path is taken
only if nothing registered on the app could tell the difference
(:func:`observers`); otherwise every request goes through Flask. Flask
refuses new hooks once it has served a request, and so does an app whose
first request took the fast path, so the choice stays right. ``True`` takes
the fast path whatever is registered, ``False`` never.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import flask
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from . import protocol, views
from .errors import Answer
from .state import AppState

log = logging.getLogger("flask_signal")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_REASONS = {
    200: "200 OK",
    201: "201 Created",
    400: "400 BAD REQUEST",
    401: "401 UNAUTHORIZED",
    404: "404 NOT FOUND",
    405: "405 METHOD NOT ALLOWED",
    406: "406 NOT ACCEPTABLE",
    413: "413 REQUEST ENTITY TOO LARGE",
    415: "415 UNSUPPORTED MEDIA TYPE",
    500: "500 INTERNAL SERVER ERROR",
    503: "503 SERVICE UNAVAILABLE",
}


#: Flask's registries of per-request functions, by scope: ``None`` (the app)
#: and the blueprint's name are the scopes that apply to the hub's routes.
HOOKS = (
    "before_request_funcs",
    "after_request_funcs",
    "teardown_request_funcs",
    "url_value_preprocessors",
    "url_default_functions",
)
#: Flask's signals sent while it serves a request.
SIGNALS = (
    flask.request_started,
    flask.request_finished,
    flask.got_request_exception,
    flask.request_tearing_down,
    flask.appcontext_pushed,
    flask.appcontext_popped,
    flask.appcontext_tearing_down,
)
#: Flask's methods on a request's way; a subclass that overrides one wants to see it.
METHODS = (
    "wsgi_app",
    "request_context",
    "app_context",
    "full_dispatch_request",
    "preprocess_request",
    "dispatch_request",
    "finalize_request",
    "make_response",
    "process_response",
    "handle_exception",
    "handle_user_exception",
    "handle_http_exception",
    "log_exception",
    "do_teardown_request",
    "do_teardown_appcontext",
    "inject_url_defaults",
    "create_url_adapter",
)


def own_functions(app: Flask) -> set[Any]:
    """The hooks and error handlers the hub's blueprint registered (its CORS among them)."""
    own: set[Any] = set()
    for name in HOOKS:
        own.update(getattr(app, name).get(views.BLUEPRINT, ()))
    for handlers in app.error_handler_spec.get(views.BLUEPRINT, {}).values():
        own.update(handlers.values())
    return own


def observers(app: Flask, own: set[Any], inner: Any) -> list[str]:
    """What would see a swarm request that Flask serves, and miss one the fast path
    serves: hooks and error handlers of the app or the hub's blueprint, receivers
    of Flask's request signals, a session interface or request class of the app's
    own, an overridden request-handling method, or a WSGI middleware installed
    inside the fast path (``inner`` is what it hands requests to). Empty if nothing."""
    found: list[str] = []
    scopes = (None, views.BLUEPRINT)
    for name in HOOKS:
        registry = getattr(app, name)
        for scope in scopes:
            for func in registry.get(scope, ()):
                if func not in own:
                    found.append(f"{name}: {_name(func)}")
    for func in app.teardown_appcontext_funcs:
        found.append(f"teardown_appcontext_funcs: {_name(func)}")
    for scope in scopes:
        for code, handlers in app.error_handler_spec.get(scope, {}).items():
            for cls, func in handlers.items():
                # The hub's routes answer 4xx themselves, never raising them: only
                # a handler that could catch an unexpected error (500) applies.
                if func not in own and (code is None or code == 500):
                    found.append(f"error handler for {cls.__name__}: {_name(func)}")
    for sent in SIGNALS:
        if sent.receivers and sent.has_receivers_for(app):
            found.append(f"receivers of flask.{sent.name.replace('-', '_')}")
    if type(app.session_interface) is not SecureCookieSessionInterface:
        found.append(f"session interface {type(app.session_interface).__name__}")
    if app.request_class is not flask.Request:
        found.append(f"request class {app.request_class.__name__}")
    for name in METHODS:
        if getattr(type(app), name) is not getattr(Flask, name):
            found.append(f"{type(app).__name__}.{name}")
    if getattr(inner, "__func__", None) is not Flask.wsgi_app or inner.__self__ is not app:
        found.append(f"WSGI middleware {_name(inner)} installed before the extension")
    return found


def _name(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{getattr(func, '__module__', '?')}.{name}"


class FastPath:
    """WSGI middleware answering swarm GETs and POSTs without Flask's dispatch."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp, state: AppState, *, auto: bool) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.state = state
        #: Whether swarm requests are served here: None until decided (auto).
        self.fast: bool | None = None if auto else True
        state.fast_path = self.fast
        # Taken now, when nothing but the extension has registered on the blueprint.
        self.own = own_functions(app)
        self.prefix = state.settings.url_prefix
        # The same CORS headers as the blueprint's, from the same policy.
        self.cors = state.cors
        # Fixed routes such as /channels are the blueprint's: their static
        # rules outrank /<id> there, so they must here too.
        self.reserved = views.reserved()

    def decide(self) -> bool:
        """Take the fast path only if nothing registered on the app would notice."""
        found = observers(self.app, self.own, self.wsgi_app)
        self.fast = self.state.fast_path = not found
        if found:
            log.info("flask_signal: swarm requests go through Flask for %s", "; ".join(found))
        else:
            log.info("flask_signal: swarm requests take the fast path")
        # As Flask does on its first request: setup methods now raise, so no
        # hook can be added that the fast path would skip.
        self.app._got_first_request = True
        return self.fast

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        fast = self.fast
        if fast is None:
            fast = self.decide()
        if fast and (method == "GET" or method == "POST") and path.startswith(self.prefix):
            rest = path[len(self.prefix) :]
            st = self.state.ready()
            # ``{prefix}?channel=x`` subscribes to a channel (Flask-SSE's URL): the blueprint's.
            if (
                rest in ("", "/")
                and (self.prefix or rest)
                and "channel=" not in environ.get("QUERY_STRING", "")
            ):
                answer = protocol.base(st, environ, self.app)
                return self._send(answer, environ, start_response)
            if rest[:1] == "/" and protocol.ID.fullmatch(rest, 1) and rest[1:] not in self.reserved:
                answer = protocol.swarm(st, environ, self.app, rest[1:])
                return self._send(answer, environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _send(
        self, answer: Answer, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Any:
        headers = answer.headers
        body = answer.body
        if isinstance(body, tuple):
            headers = [*headers, ("Content-Length", str(sum(map(len, body))))]
        if self.cors is not None:
            headers = [*headers, *self.cors.headers(environ.get("HTTP_ORIGIN"))]
        status = _REASONS.get(answer.status) or f"{answer.status} UNKNOWN"
        start_response(status, headers)
        return body
