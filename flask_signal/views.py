"""The blueprint: swarm and channel routes, translating HTTP to broker calls.

Views only parse, check and answer; what a request does lives in the
broker, and how a stream is written lives in :mod:`flask_signal.streaming`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request

from . import framing, signals
from .brokers import BrokerUnavailable, Delivery, Membership
from .hub import Stream
from .parsing import BadRequest, accepts_event_stream, optional_str, parse_body, read_body
from .streaming import EventStream, cooperative

if TYPE_CHECKING:
    from .extension import AppState

log = logging.getLogger("flask_signal")

#: Swarm ids (and cids) as they appear in a path: the protocol's ``[a-z0-9]+``.
ID = re.compile(r"[a-z0-9]+")
CHANNEL = re.compile(r"[A-Za-z0-9_.:@~-]{1,200}")
STREAM_METHODS = ("GET", "HEAD")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
NO_OPTIONS: dict[str, Any] = {"provide_automatic_options": False}
OK = b'{"ok":true}'


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error answer: ``{"error": message}`` with ``status``."""
    body = framing.to_json({"error": message})
    return Response(body, status, headers, mimetype="application/json")


def state() -> AppState:
    st: AppState = current_app.extensions["signal_state"]
    if not st.started:
        st.start()
    return st


class Refusal(Exception):
    """A request refused before its stream opened; carries the answer."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _check_stream_allowed(st: AppState, channels: Sequence[str] = ()) -> None:
    """Refusals shared by every stream: Accept, server model, client limits."""
    if not accepts_event_stream(request.headers.get("Accept")):
        raise Refusal(error(406, "this endpoint serves text/event-stream"))
    if not cooperative():
        log.error(
            "flask_signal streams need gevent: serve with `gunicorn -k gevent`, or call "
            "gevent.monkey.patch_all() before anything else when using another server"
        )
        raise Refusal(
            error(
                500, "server misconfigured: SSE streams need a gevent worker (gunicorn -k gevent)"
            )
        )
    limits = st.settings
    retry = {"Retry-After": str(limits.retry_after)}
    if limits.max_clients and st.broker.connection_count() >= limits.max_clients:
        raise Refusal(error(503, "too many clients on this server", retry))
    if limits.channel_max_clients:
        for name in channels:
            if st.broker.connection_count(name) >= limits.channel_max_clients:
                raise Refusal(error(503, f"too many clients on channel {name!r}", retry))


def open_stream(
    st: AppState,
    kind: str,
    attach: Callable[[Stream], tuple[Any, bytes]],
    detach: Callable[[Stream, Any], None],
    *,
    status: int = 200,
) -> Response:
    """Open a stream, attach it to the broker, and answer with its SSE response.

    ``attach`` registers the stream (queueing its first frames) and returns
    what ``detach`` needs plus the bytes to send before queued frames;
    ``detach(stream, attached)`` runs exactly once when the response ends.
    """
    broker = st.broker
    stream = Stream(st.settings.queue_size, kind)
    attached, head = attach(stream)
    broker.hub.add(stream)
    sender = current_app._get_current_object()  # type: ignore[attr-defined]
    signals.client_connected.send(sender, stream=stream)

    def on_close() -> None:
        try:
            detach(stream, attached)
        except BrokerUnavailable:
            log.warning("broker unavailable while closing %r", stream)
        finally:
            broker.hub.discard(stream)
            signals.client_disconnected.send(sender, stream=stream)

    body = EventStream(
        stream,
        ping_interval=st.settings.ping_interval,
        on_close=on_close,
        head=head,
        environ=request.environ,
    )
    return Response(
        body,
        status,
        headers=st.stream_headers(request.environ.get("SERVER_PROTOCOL", "")),
        direct_passthrough=True,
    )


# -- swarms ----------------------------------------------------------------------------


def create_swarm() -> Response:
    st = state()
    if request.method == "POST":
        # POST to the base URL names no swarm: the protocol's "path is not /:id".
        return error(404, "no such swarm: POST to <prefix>/<swarm id>")
    if request.method not in STREAM_METHODS:
        return method_not_allowed(["GET", "HEAD"])
    if request.method == "HEAD":
        return Response(b"", 200, st.stream_headers(""))
    _check_stream_allowed(st)
    return open_stream(
        st,
        "swarm",
        lambda stream: (st.broker.create_swarm(stream), b""),
        lambda stream, member: st.broker.leave_swarm(member),
        status=st.settings.create_status,
    )


def swarm(swarm_id: str) -> Response:
    if not ID.fullmatch(swarm_id):
        return error(404, "no such swarm")
    if request.method in STREAM_METHODS:
        return join_swarm(swarm_id)
    if request.method == "POST":
        return post_signal(swarm_id)
    return method_not_allowed(["GET", "HEAD", "POST"])


def join_swarm(swarm_id: str) -> Response:
    st = state()
    if request.method == "HEAD":
        status = 200 if st.broker.swarm_exists(swarm_id) else 404
        return Response(b"", status, st.stream_headers(""))
    _check_stream_allowed(st)

    def attach(stream: Stream) -> tuple[Membership, bytes]:
        member = st.broker.join_swarm(swarm_id, stream)
        if member is None:
            raise Refusal(error(404, "no such swarm"))
        return member, b""

    return open_stream(st, "swarm", attach, lambda stream, m: st.broker.leave_swarm(m))


def post_signal(swarm_id: str) -> Response:
    st = state()
    broker = st.broker
    if not broker.swarm_exists(swarm_id):
        return error(404, "no such swarm")
    body = read_body(request.stream, st.settings.limit, request.content_length)
    fields = parse_body(request.content_type, body)
    token = fields.get("token")
    if not isinstance(token, str) or not token:
        return error(401, "missing or invalid token")
    data = fields.get("data")
    if data is None:
        checked = broker.authenticate(swarm_id, token)
        if checked is not Delivery.OK:
            return delivery_error(checked)
        return error(400, "missing data")
    result = broker.signal(swarm_id, data, cid=optional_str(fields, "cid"), token=token)
    if result is not Delivery.OK:
        return delivery_error(result)
    return Response(OK, 200, mimetype="application/json")


def delivery_error(result: Delivery) -> Response:
    if result is Delivery.NO_SWARM:
        return error(404, "no such swarm")
    if result is Delivery.BAD_TOKEN:
        return error(401, "missing or invalid token")
    return error(404, "no such peer in this swarm")


def method_not_allowed(allowed: list[str]) -> Response:
    return error(405, "method not allowed", {"Allow": ", ".join(allowed)})


def not_found(rest: str = "") -> Response:
    return error(404, "not found")


# -- channels --------------------------------------------------------------------------


def last_event_id() -> str | None:
    """The resume point: the header browsers send, or a query parameter for clients that cannot."""
    for value in (
        request.headers.get("Last-Event-ID"),
        request.args.get("lastEventId"),
        request.args.get("evs_last_event_id"),
    ):
        if value is not None and value.strip():
            return value.strip()
    return None


def subscribe_response(
    st: AppState, channels: Sequence[str], initial: Callable[[], bytes] | None = None
) -> Response:
    """Stream ``channels``: a comment, ``retry:``, the replay, ``initial``, then live events."""
    _check_stream_allowed(st, channels)
    resume = last_event_id()

    def attach(stream: Stream) -> tuple[None, bytes]:
        replay = st.broker.subscribe(stream, channels, resume)
        frames = [b": ok\n\n"]
        if st.settings.retry is not None:
            frames.append(framing.retry(st.settings.retry))
        if replay.lost:
            frames.append(framing.message({"lastEventId": resume}, event=st.settings.lost_event))
        frames.extend(replay.frames)
        if initial is not None:
            # Computed after subscribing: what is published meanwhile waits
            # in the stream's queue, behind the initial event.
            try:
                frames.append(initial())
            except BaseException:
                st.broker.unsubscribe(stream)
                raise
        return None, b"".join(frames)

    return open_stream(st, "channel", attach, lambda stream, _: st.broker.unsubscribe(stream))


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
    if request.method in STREAM_METHODS:
        return subscribe_response(st, channel_names(name))
    if request.method == "POST" and name is not None:
        return publish(st, channel_names(name))
    return method_not_allowed(["GET", "HEAD", "POST"] if name else ["GET", "HEAD"])


def publish(st: AppState, channels: list[str]) -> Response:
    refusal = st.authorize_publish(request, channels[0])
    if refusal is not None:
        return refusal
    body = read_body(request.stream, st.settings.limit, request.content_length)
    fields = parse_body(request.content_type, body)
    if "data" not in fields:
        return error(400, "missing data")
    event = optional_str(fields, "event")
    event_id = optional_str(fields, "id")
    try:
        published = st.broker.publish(channels, fields["data"], event=event, id=event_id)
    except ValueError as exc:
        return error(400, str(exc))
    return Response(framing.to_json({"ok": True, "id": published}), mimetype="application/json")


# -- blueprint -------------------------------------------------------------------------


def make_blueprint(prefix: str, *, cors: bool) -> Blueprint:
    """The hub's routes under ``prefix`` (``""`` mounts them at the root)."""
    bp = Blueprint("signal", __name__)
    for path in dict.fromkeys([prefix or "/", prefix + "/"]):
        bp.add_url_rule(path, "create", create_swarm, methods=ALL_METHODS, **NO_OPTIONS)
    bp.add_url_rule(f"{prefix}/channels", "channels", channel, methods=ALL_METHODS, **NO_OPTIONS)
    bp.add_url_rule(
        f"{prefix}/channels/<name>", "channel", channel, methods=ALL_METHODS, **NO_OPTIONS
    )
    bp.add_url_rule(f"{prefix}/<swarm_id>", "swarm", swarm, methods=ALL_METHODS, **NO_OPTIONS)
    bp.add_url_rule(
        f"{prefix}/<path:rest>", "not_found", not_found, methods=ALL_METHODS, **NO_OPTIONS
    )

    @bp.before_request
    def options() -> Response | None:
        # A CORS preflight is answered here and decorated by flask-cors;
        # without CORS, OPTIONS is just another method the hub does not serve.
        if request.method != "OPTIONS":
            return None
        return Response(b"", 200) if cors else method_not_allowed(["GET", "HEAD", "POST"])

    @bp.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Response:
        return error(exc.status, exc.message)

    @bp.errorhandler(Refusal)
    def refused(exc: Refusal) -> Response:
        return exc.response

    @bp.errorhandler(BrokerUnavailable)
    def unavailable(exc: BrokerUnavailable) -> Response:
        log.warning("broker unavailable: %s", exc)
        return error(
            503,
            "signalling backend unavailable, retry later",
            {"Retry-After": str(exc.retry_after)},
        )

    return bp
