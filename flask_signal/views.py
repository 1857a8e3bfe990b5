"""The blueprint: the hub's routes under its prefix, as Flask views.

Swarm requests are answered by :mod:`flask_signal.protocol` (shared with the
fast path); channel requests, which only exist here, by the views below.
Views parse, check and answer; what a request does lives in the broker, and
how a stream is written in :mod:`flask_signal.streaming`. Whatever a view
raises of :mod:`flask_signal.errors` is answered by the blueprint's one
error handler.

A new route is one view function and one line in :data:`ROUTES`. A route
whose first path segment is fixed (``/channels``, ``/healthz``) is never
taken for a swarm id, on this path or the fast path (:func:`reserved`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import gevent
from flask import Blueprint, Response, copy_current_request_context, current_app, request

from . import errors, framing, protocol, signals
from .cors import Policy
from .errors import Answer, BadRequest, FlaskSignalError
from .hub import Stream
from .parsing import content_length, optional_str, parse_body, read_body
from .state import AppState, app_state

log = logging.getLogger("flask_signal")

CHANNEL = re.compile(r"[A-Za-z0-9_.:@~-]{1,200}")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
NO_OPTIONS: dict[str, Any] = {"provide_automatic_options": False}


def state() -> AppState:
    """The current app's state, started."""
    return app_state(current_app)


def respond(answer: Answer) -> Response:
    return Response(answer.body, answer.status, answer.headers, direct_passthrough=True)


def error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return respond(errors.error(status, message, headers))


def answer_error(exc: FlaskSignalError) -> Response:
    """The answer to ``exc`` (see :func:`flask_signal.errors.answer_for`)."""
    return respond(protocol.answer(state(), request.environ, exc))


# -- swarms ----------------------------------------------------------------------------


def create_swarm() -> Response:
    if request.method in protocol.STREAM_METHODS and "channel" in request.args:
        # Flask-SSE's subscribe URL: the blueprint's root with ?channel=.
        return channel()
    return respond(protocol.base(state(), request.environ, current_app._get_current_object()))  # type: ignore[attr-defined]


def swarm(swarm_id: str) -> Response:
    sender = current_app._get_current_object()  # type: ignore[attr-defined]
    return respond(protocol.swarm(state(), request.environ, sender, swarm_id))


def not_found(rest: str = "") -> Response:
    return error(404, "not found")


# -- operations ------------------------------------------------------------------------


def healthz() -> Response:
    """Alive: the process answers (for a liveness probe)."""
    return respond(Answer(200, errors.JSON, (b'{"ok":true}',)))


def readyz() -> Response:
    """Ready for new clients: the broker is reachable and the process is not draining."""
    st = state()
    broker = st.broker
    if broker.hub.draining:
        return error(503, "draining", [("Retry-After", str(st.settings.retry_after))])
    if not broker.healthy():
        return error(
            503, "signalling backend unavailable", [("Retry-After", str(st.settings.retry_after))]
        )
    return respond(Answer(200, errors.JSON, (b'{"ok":true}',)))


def metrics() -> Response:
    """Prometheus metrics, with ``SIGNAL_METRICS`` on (see :mod:`flask_signal.metrics`)."""
    st = state()
    if st.metrics is None:
        return error(404, "not found")
    body, content_type = st.metrics.exposition()
    return Response(body, 200, [("Content-Type", content_type)])


# -- channels --------------------------------------------------------------------------


#: Query parameters that carry the resume point for clients that cannot set
#: ``Last-Event-ID``, in precedence order after the header: sse-channel's two
#: (its own order), then Mercure's.
LAST_EVENT_ID_PARAMS = ("evs_last_event_id", "lastEventId", "lastEventID", "last_event_id")

#: What every channel stream starts with, so that headers and a first byte leave at once.
OPENING = b":ok\n\n"
#: ``?evs_preamble=1``: 2 KB of comment for old EventSource polyfills
#: (XDomainRequest), which dispatch nothing before that much has arrived.
PREAMBLE = b":" + b" " * 2048 + b"\n\n"


def last_event_id() -> str | None:
    """The resume point: the header browsers send, else the first query parameter of
    :data:`LAST_EVENT_ID_PARAMS` that is given."""
    for value in (
        request.headers.get("Last-Event-ID"),
        *(request.args.get(name) for name in LAST_EVENT_ID_PARAMS),
    ):
        if value is not None and value.strip():
            return value.strip()
    return None


def subscribe_response(
    st: AppState,
    channels: Sequence[str],
    initial: Callable[[], bytes] | None = None,
    *,
    client: str | None = None,
) -> Response:
    """Stream ``channels``: a comment, ``retry:``, the replay, ``initial``, then live events.

    ``initial`` (sse.io's fetch) runs in its own greenlet once the stream is
    subscribed, so the response headers and the first bytes do not wait for
    it; what is published meanwhile is held behind its result. If it raises,
    the client gets an ``error`` event and the stream stays open.
    """
    environ = request.environ
    protocol.check_stream_allowed(st, environ, channels)
    resume = last_event_id()
    padded = request.args.get("evs_preamble") not in (None, "", "0", "false")
    opening = OPENING + PREAMBLE if padded else OPENING
    sender = current_app._get_current_object()  # type: ignore[attr-defined]

    def attach(stream: Stream) -> tuple[Stream, bytes]:
        stream.client = client
        replay = st.broker.subscribe(stream, channels, resume)
        frames = [opening]
        retry = st.retry_for(channels)
        if retry is not None:
            frames.append(framing.retry(retry))
        if replay.lost:
            frames.append(framing.message({"lastEventId": resume}, event=st.settings.lost_event))
        frames.extend(replay.frames)
        if initial is not None:
            stream.held = True
            gevent.spawn(copy_current_request_context(fetch_initial), stream, initial, sender)
        return stream, b"".join(frames)

    return respond(protocol.open_stream(st, environ, sender, "channel", attach, "unsubscribe"))


def fetch_initial(stream: Stream, initial: Callable[[], bytes], sender: Any) -> None:
    """Run a stream's initial fetch and send its result first, or an ``error`` event."""
    try:
        frame = initial()
    except Exception as exc:
        log.exception("initial data for %r failed", stream)
        signals.error.send(sender, exception=exc, stream=stream)
        frame = framing.message({"error": "initial data failed"}, event="error")
    stream.release(frame)


def channel_names(name: str | None) -> list[str]:
    names = ([name] if name else []) + request.args.getlist("channel")
    if not names:
        raise BadRequest("name at least one channel: /channels/<name> or ?channel=<name>")
    for item in names:
        if not CHANNEL.fullmatch(item):
            raise BadRequest(f"invalid channel name {item!r}")
    return list(dict.fromkeys(names))


def channel(name: str | None = None) -> Response:
    st = state()
    if request.method in protocol.STREAM_METHODS:
        return subscribe_response(st, channel_names(name))
    if request.method == "POST":
        return publish(st, name)
    return respond(protocol.method_not_allowed(["GET", "HEAD", "POST"]))


def authorize_publish(st: AppState, channels: Sequence[str]) -> Response | None:
    """``None`` if this request may publish to every one of ``channels``, else the refusal.

    Every channel is checked: a request names them in its path, in ``channel``
    parameters and in its body (``channel``, ``topic``), and publishes to all of them.
    With no channels, only the key is checked.
    """
    key, auth = st.settings.publish_key, st.settings.publish_auth
    if key is None and auth is None:
        return error(403, "publishing over HTTP is disabled")
    if key is not None:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return error(
                401,
                "publishing needs a key: Authorization: Bearer <key>",
                [("WWW-Authenticate", 'Bearer realm="flask_signal"')],
            )
        if not hmac.compare_digest(secret.encode(), key.encode()):
            return error(403, "invalid publish key")
    if auth is not None:
        for channel in channels:
            if not auth(request, channel):
                return error(403, "not allowed to publish to this channel")
    return None


def channel_history(name: str) -> Response:
    """``GET {prefix}/channels/<name>/history[?since=<id>]``: the retained events and the
    subscriber count, as JSON, to those who may publish."""
    st = state()
    (checked,) = channel_names(name)
    refusal = authorize_publish(st, [checked])
    if refusal is not None:
        return refusal
    since = request.args.get("since") or last_event_id()
    replay = st.broker.channel_history(checked, since)
    body = {
        "channel": checked,
        "subscribers": st.broker.subscriber_count(checked),
        "lost": replay.lost,
        "events": [framing.parse_message(frame) for frame in replay.frames],
    }
    return Response(framing.to_json(body), mimetype="application/json")


def publish_channels(name: str | None, fields: Mapping[str, Any]) -> list[str]:
    """The channels of a publish: the path's, ``?channel=`` ones, and the body's ``channel``
    or Mercure's ``topic`` (a string, or a list: repeated in a form)."""
    names: list[str] = [name] if name else []
    names += request.args.getlist("channel")
    for field in ("channel", "topic"):
        value = fields.get(field)
        items = value if isinstance(value, list) else [value] if value is not None else []
        for item in items:
            if not isinstance(item, str):
                raise BadRequest(f"{field!r} must be a channel name or a list of them")
            names.append(item)
    if not names:
        raise BadRequest("name at least one channel: /channels/<name>, ?channel= or 'topic'")
    for item in names:
        if not CHANNEL.fullmatch(item):
            raise BadRequest(f"invalid channel name {item!r}")
    return list(dict.fromkeys(names))


def event_id(value: Any) -> str | None:
    """An event id from a body: a string, or a number (see :func:`number_id`)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return framing.number_id(value)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if not isinstance(value, str):
        raise BadRequest("'id' must be a string or a number")
    return value


def retry_ms(value: Any) -> int | None:
    """A ``retry`` from a body: milliseconds, as an integer or a form's decimal string."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadRequest("'retry' must be a number of milliseconds >= 0")


def publish(st: AppState, name: str | None) -> Response:
    environ = request.environ
    # The key first, before reading a body; the callable per channel, once
    # the body has named them all.
    refusal = authorize_publish(st, ())
    if refusal is not None:
        return refusal
    body = read_body(
        environ["wsgi.input"],
        st.settings.limit,
        content_length(environ.get("CONTENT_LENGTH")),
        bool(environ.get("wsgi.input_terminated")),
    )
    fields = parse_body(request.content_type, body)
    channels = publish_channels(name, fields)
    refusal = authorize_publish(st, channels)
    if refusal is not None:
        return refusal
    if "data" not in fields:
        return error(400, "missing data")
    # Mercure names the event ``type``.
    event = optional_str(fields, "event") or optional_str(fields, "type")
    try:
        published = st.broker.publish(
            channels,
            fields["data"],
            event=event,
            id=event_id(fields.get("id")),
            retry=retry_ms(fields.get("retry")),
        )
    except ValueError as exc:
        return error(400, str(exc))
    return Response(framing.to_json({"ok": True, "id": published}), mimetype="application/json")


# -- the browser client ----------------------------------------------------------------

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "client.js": ("signal.js", "text/javascript"),
    "client.d.ts": ("signal.d.ts", "text/plain"),
}


@cache
def client_asset(name: str) -> tuple[bytes, str]:
    """A client file's bytes and version (a digest of the bytes, so every change gets a URL)."""
    body = (STATIC / ASSETS[name][0]).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:16]


def client_file(name: str) -> Response:
    """The JS client or its types; cached for a year at the versioned URL (``?v=...``)."""
    body, version = client_asset(name)
    response = Response(body, mimetype=ASSETS[name][1])
    if request.args.get("v") == version:
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    response.set_etag(version)
    response.make_conditional(request)
    return response


def client_js() -> Response:
    return client_file("client.js")


def client_types() -> Response:
    return client_file("client.d.ts")


# -- blueprint -------------------------------------------------------------------------


#: The hub's blueprint's name: its endpoints are ``signal.<endpoint>``.
BLUEPRINT = "signal"


class Route(NamedTuple):
    """One of the hub's routes: ``rule`` is relative to the prefix."""

    rule: str
    endpoint: str
    view: Callable[..., Any]
    #: The hub's own routes take every method and answer 405 themselves.
    methods: Sequence[str] = ALL_METHODS


#: The hub's routes. Werkzeug matches fixed segments before ``<swarm_id>``,
#: whatever the order here.
ROUTES = [
    Route("", "create", create_swarm),
    Route("/client.js", "client", client_js, ["GET"]),
    Route("/client.d.ts", "client_types", client_types, ["GET"]),
    Route("/healthz", "healthz", healthz, ["GET", "HEAD"]),
    Route("/readyz", "readyz", readyz, ["GET", "HEAD"]),
    Route("/metrics", "metrics", metrics, ["GET"]),
    Route("/channels", "channels", channel),
    Route("/channels/<name>", "channel", channel),
    Route("/channels/<name>/history", "channel_history", channel_history, ["GET"]),
    Route("/<swarm_id>", "swarm", swarm),
    Route("/<path:rest>", "not_found", not_found),
]


def reserved() -> frozenset[str]:
    """First path segments (under the prefix) that are routes of their own, not swarm ids."""
    return frozenset(
        route.rule.split("/")[1]
        for route in ROUTES
        if route.rule and "<" not in route.rule.split("/")[1]
    )


def preflight(policy: Policy) -> Response:
    """The answer to a CORS preflight."""
    response = Response(b"", 204)
    origin = request.headers.get("Origin")
    response.headers.extend(policy.headers(origin, preflight=True))
    return response


def add_cors(policy: Policy | None, result: Any) -> Any:
    """``result`` (a view's return value) with the CORS headers ``policy`` gives this request."""
    if policy is None:
        return result
    response = current_app.make_response(result)
    for name, value in policy.headers(request.headers.get("Origin")):
        if name == "Vary":
            response.vary.add(value)
        else:
            response.headers[name] = value
    return response


def make_blueprint(prefix: str, *, cors: Policy | None) -> Blueprint:
    """The hub's routes under ``prefix`` (``""`` mounts them at the root)."""
    bp = Blueprint(BLUEPRINT, __name__)
    for route in ROUTES:
        # The prefix itself answers with and without its trailing slash.
        rules = [prefix or "/", prefix + "/"] if not route.rule else [prefix + route.rule]
        for rule in dict.fromkeys(rules):
            bp.add_url_rule(rule, route.endpoint, route.view, methods=route.methods, **NO_OPTIONS)

    @bp.before_request
    def options() -> Response | None:
        # A CORS preflight is answered here, whatever the path; without CORS,
        # OPTIONS is just another method the hub does not serve.
        if request.method != "OPTIONS":
            return None
        if cors is not None:
            return preflight(cors)
        return respond(protocol.method_not_allowed(["GET", "HEAD", "POST"]))

    if cors is not None:

        @bp.after_request
        def cors_headers(response: Response) -> Response:
            # Every answer, errors included; a preflight has its own already.
            if request.method == "OPTIONS":
                return response
            result: Response = add_cors(cors, response)
            return result

    bp.register_error_handler(FlaskSignalError, answer_error)
    return bp
