"""An opt-in fast path: the swarm protocol served in front of Flask.

With ``SIGNAL_FAST_PATH = True`` the extension wraps ``app.wsgi_app`` in
:class:`FastPath`, which answers the swarm requests — GET and POST on
``{prefix}`` and ``{prefix}/<id>`` — straight from the WSGI environ, through
the same :mod:`flask_signal.protocol` functions as the blueprint, and hands
everything else to Flask. What is skipped is Flask's per-request machinery:
request context, URL matching, ``before_request``/``after_request`` hooks and
error handlers. So turn it on only when no hook of the application needs to
see swarm requests (authentication of swarm clients, request logging in a
hook, CORS other than ``"*"``). Channel routes always go through Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import protocol, views
from .errors import Answer
from .state import AppState

if TYPE_CHECKING:
    from flask import Flask

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


_CORS_ANY = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "Retry-After")]


class FastPath:
    """WSGI middleware answering swarm GETs and POSTs without Flask's dispatch."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp, state: AppState) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.state = state
        self.prefix = state.settings.url_prefix
        # With CORS on, browsers' requests (they carry Origin) need flask-cors's
        # headers; only a wildcard can be added here without its logic.
        self.cors_any = state.settings.cors in (True, "*")
        self.cors = bool(state.settings.cors)
        # Fixed routes such as /channels are the blueprint's: their static
        # rules outrank /<id> there, so they must here too.
        self.reserved = views.reserved()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if (
            (method == "GET" or method == "POST")
            and path.startswith(self.prefix)
            and (not self.cors or self.cors_any or "HTTP_ORIGIN" not in environ)
        ):
            rest = path[len(self.prefix) :]
            st = self.state.ready()
            if rest in ("", "/") and (self.prefix or rest):
                return self._send(protocol.base(st, environ, self.app), start_response)
            if rest[:1] == "/" and protocol.ID.fullmatch(rest, 1) and rest[1:] not in self.reserved:
                answer = protocol.swarm(st, environ, self.app, rest[1:])
                return self._send(answer, start_response)
        return self.wsgi_app(environ, start_response)

    def _send(self, answer: Answer, start_response: Callable[..., Any]) -> Any:
        headers = answer.headers
        body = answer.body
        if isinstance(body, tuple):
            headers = [*headers, ("Content-Length", str(sum(map(len, body))))]
        if self.cors_any:
            headers = [*headers, *_CORS_ANY]
        status = _REASONS.get(answer.status) or f"{answer.status} UNKNOWN"
        start_response(status, headers)
        return body
