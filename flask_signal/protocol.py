"""The swarm protocol over WSGI: what each request does, without Flask.

The blueprint (:mod:`flask_signal.views`) and the fast path
(:mod:`flask_signal.fastpath`) both answer through these functions, so the
two cannot drift apart. Each takes the WSGI environ and returns an
:class:`Answer`; refusals are answers too, never exceptions that escape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import framing, signals
from .brokers import Broker, BrokerUnavailable, Delivery, Membership
from .errors import (
    JSON,
    Answer,
    BadRequest,
    FlaskSignalError,
    Overloaded,
    Refusal,
    answer_for,
    error,
)
from .hub import Stream, counts, retry_frame, spread_retry
from .parsing import (
    accepts_event_stream,
    content_length,
    optional_str,
    parse_body,
    read_body,
)
from .state import AppState
from .streaming import EventStream, cooperative

log = logging.getLogger("flask_signal")

#: Swarm ids (and cids) as they appear in a path: the protocol's ``[a-z0-9]+``.
ID = re.compile(r"[a-z0-9]+")
STREAM_METHODS = ("GET", "HEAD")
OK = (b'{"ok":true}',)


def method_not_allowed(allowed: Sequence[str]) -> Answer:
    return error(405, "method not allowed", [("Allow", ", ".join(allowed))])


def check_stream_allowed(
    st: AppState, environ: dict[str, Any], channels: Sequence[str] = ()
) -> None:
    """Refusals shared by every stream: Accept, server model, client limits."""
    if not accepts_event_stream(environ.get("HTTP_ACCEPT")):
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
    if st.broker.hub.draining:
        # This process is stopping: the client reconnects, to another one.
        raise Refusal(reconnect(st, environ))
    retry = [("Retry-After", str(limits.retry_after))]
    if limits.max_clients and st.broker.connection_count() >= limits.max_clients:
        raise Refusal(full(limits.full_status, "too many clients on this server", retry))
    bound = st.broker.hub.max_streams
    if bound and st.broker.connection_count() >= bound:
        log.warning("stream refused: %d streams open, the bound of this worker", bound)
        raise Overloaded("too many streams on this server")
    if limits.channel_max_clients:
        for name in channels:
            if st.broker.connection_count(name) >= limits.channel_max_clients:
                raise Refusal(
                    full(limits.full_status, f"too many clients on channel {name!r}", retry)
                )


def full(status: int, message: str, retry: list[tuple[str, str]]) -> Answer:
    """A stream refused by a client limit: 503 with ``Retry-After``, or egg-sse's bare 204."""
    if status == 204:
        return Answer(204, [], ())
    return error(status, message, retry)


def reconnect(st: AppState, environ: dict[str, Any]) -> Answer:
    """A stream that ends at once, telling its client when to come back.

    What an EventSource retries (unlike any other status, which it takes as
    final), with the delay spread so that clients do not return all at once.
    """
    frame = retry_frame(spread_retry(st.settings.drain_spread))
    return Answer(200, st.stream_headers(environ.get("SERVER_PROTOCOL", "")), (frame,))


def stop(st: AppState) -> Answer:
    """204: what makes an EventSource stop reconnecting (a swarm it cannot get back)."""
    return Answer(204, [("Content-Length", "0")], ())


def resume_handle(st: AppState, environ: dict[str, Any]) -> str | None:
    """The ``Last-Event-ID`` of a swarm stream that asks to resume, with resume on."""
    if not st.broker.resume_grace:
        return None
    value = environ.get("HTTP_LAST_EVENT_ID")
    return value.strip() if value and value.strip() else None


def resume_stream(
    st: AppState, environ: dict[str, Any], sender: Any, handle: str, swarm_id: str | None
) -> Answer:
    """A swarm peer's stream coming back: its missed frames, or 204 if it cannot resume."""

    def attach(stream: Stream) -> tuple[Membership, bytes]:
        member = st.broker.resume_swarm(handle, stream, swarm_id)
        if member is None:
            raise Refusal(stop(st))
        # Something to send at once, so the response starts even with nothing missed.
        return member, framing.PING

    return open_stream(st, environ, sender, "swarm", attach, "leave_swarm")


def open_stream(
    st: AppState,
    environ: dict[str, Any],
    sender: Any,
    kind: str,
    attach: Callable[[Stream], tuple[Any, bytes]],
    detach: str,
    *,
    status: int = 200,
) -> Answer:
    """Open a stream, attach it to the broker, and answer with its SSE body.

    ``attach`` registers the stream (queueing its first frames) and returns
    what the broker needs to detach it plus the bytes to send before queued
    frames; the broker method named ``detach`` is called with that exactly
    once, when the response ends.
    """
    broker = st.broker
    stream = Stream(st.settings.queue_size, kind, st.settings.queue_bytes)
    # Keep-alive comments only for clients that asked for an event stream (browsers
    # always do): moshpit, which sends no Accept, turns each into a row of garbage.
    stream.pings = (
        st.settings.ping_without_accept
        or "text/event-stream" in environ.get("HTTP_ACCEPT", "").lower()
    )
    attached, head = attach(stream)
    broker.hub.add(stream)
    # Per stream: no call into blinker when nothing listens (likewise on close).
    if signals.client_connected.receivers:
        signals.client_connected.send(sender, stream=stream)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "stream opened: kind=%s swarm=%s cid=%s channels=%s",
            kind,
            stream.swarm_id,
            stream.cid,
            ",".join(stream.channels),
        )
    on_close = _Detach(broker, sender, detach, stream, attached)
    body = EventStream(
        stream,
        on_close=on_close,
        head=head,
        environ=environ,
        direct=st.settings.direct_writes,
        dead_peer_timeout=st.settings.dead_peer_timeout,
    )
    return Answer(status, st.stream_headers(environ.get("SERVER_PROTOCOL", ""), kind), body)


def _leaving(member: Membership) -> Membership:
    """What a stream keeps of its membership until it leaves: not the token, which its
    ``connect`` frame carried and no broker needs to leave (some 80 bytes per peer)."""
    return Membership(member.id, member.cid, "", member.initiator)


class _Detach:
    """A stream's cleanup. Kept for as long as the client stays, so it is as
    small as can be: slots, and the broker method by name rather than bound."""

    __slots__ = ("attached", "broker", "method", "sender", "stream")

    def __init__(self, broker: Broker, sender: Any, method: str, stream: Stream, attached: Any):
        self.broker = broker
        self.sender = sender
        self.method = method
        self.stream = stream
        self.attached = attached

    def __call__(self) -> None:
        try:
            if self.method == "leave_swarm":
                # The stream tells a lost connection (resumable) from a close.
                self.broker.leave_swarm(self.attached, self.stream)
            else:
                getattr(self.broker, self.method)(self.attached)
        except BrokerUnavailable:
            log.warning("broker unavailable while closing %r", self.stream)
        finally:
            stream = self.stream
            counts["end:" + (stream.end_reason or "closed")] += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "stream ended: kind=%s swarm=%s cid=%s reason=%s",
                    stream.kind,
                    stream.swarm_id,
                    stream.cid,
                    stream.end_reason,
                )
            self.broker.hub.discard(self.stream)
            if signals.client_disconnected.receivers:
                signals.client_disconnected.send(self.sender, stream=self.stream)


def wants_stream(environ: dict[str, Any]) -> bool:
    """Whether a request asks for an event stream (as every EventSource does)."""
    return environ["REQUEST_METHOD"] == "GET" and accepts_event_stream(environ.get("HTTP_ACCEPT"))


def answer(st: AppState, environ: dict[str, Any], exc: FlaskSignalError) -> Answer:
    """The answer to a request that raised ``exc`` (:func:`flask_signal.errors.answer_for`)."""
    headers = (
        st.stream_headers(environ.get("SERVER_PROTOCOL", "")) if wants_stream(environ) else None
    )
    return answer_for(exc, retry_after=st.settings.retry_after, stream_headers=headers)


def answer_errors(handler: Callable[..., Answer]) -> Callable[..., Answer]:
    """Turn what a handler (called with the app's state first) raises into its answer."""

    def guarded(st: AppState, environ: dict[str, Any], *args: Any) -> Answer:
        try:
            return handler(st, environ, *args)
        except FlaskSignalError as exc:
            return answer(st, environ, exc)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


@answer_errors
def base(st: AppState, environ: dict[str, Any], sender: Any) -> Answer:
    """``{prefix}`` and ``{prefix}/``: GET creates a swarm."""
    method = environ["REQUEST_METHOD"]
    if method == "GET":
        check_stream_allowed(st, environ)
        broker = st.broker
        handle = resume_handle(st, environ)
        if handle is not None:  # an initiator's EventSource reconnecting
            return resume_stream(st, environ, sender, handle, None)
        if st.settings.max_swarms and broker.swarm_count() >= st.settings.max_swarms:
            raise Overloaded("too many swarms on this server")
        return open_stream(
            st,
            environ,
            sender,
            "swarm",
            lambda stream: (_leaving(broker.create_swarm(stream)), b""),
            "leave_swarm",
            status=st.settings.create_status,
        )
    if method == "HEAD":
        return Answer(200, st.stream_headers(""), ())
    if method == "POST":
        # The protocol's "path is not /:id": a POST must name its swarm.
        return error(404, "no such swarm: POST to <prefix>/<swarm id>")
    return method_not_allowed(["GET", "HEAD"])


@answer_errors
def swarm(st: AppState, environ: dict[str, Any], sender: Any, swarm_id: str) -> Answer:
    """``{prefix}/<id>``: GET joins, POST signals."""
    if not ID.fullmatch(swarm_id):
        return error(404, "no such swarm")
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        return post_signal(st, environ, swarm_id)
    if method == "GET":
        return join_swarm(st, environ, sender, swarm_id)
    if method == "HEAD":
        status = 200 if st.broker.swarm_exists(swarm_id) else 404
        return Answer(status, st.stream_headers(""), ())
    return method_not_allowed(["GET", "HEAD", "POST"])


def join_swarm(st: AppState, environ: dict[str, Any], sender: Any, swarm_id: str) -> Answer:
    check_stream_allowed(st, environ)
    broker = st.broker
    handle = resume_handle(st, environ)
    if handle is not None:  # a peer's EventSource reconnecting
        return resume_stream(st, environ, sender, handle, swarm_id)

    def attach(stream: Stream) -> tuple[Membership, bytes]:
        member = broker.join_swarm(swarm_id, stream)
        if member is None:
            raise Refusal(error(404, "no such swarm"))
        return _leaving(member), b""

    return open_stream(st, environ, sender, "swarm", attach, "leave_swarm")


def post_signal(st: AppState, environ: dict[str, Any], swarm_id: str) -> Answer:
    """Answers in the protocol's order: swarm, size, type, parse, token, data, cid.

    The body is checked first and the broker's answer to the signal says whether
    the swarm exists, so that a valid signal costs one call to the broker (one
    round trip to Redis). Only a refused body asks whether the swarm exists, so
    that 404 still comes before 413/415/400/401.
    """
    broker = st.broker
    try:
        body = read_body(
            environ["wsgi.input"],
            st.settings.limit,
            content_length(environ.get("CONTENT_LENGTH")),
            bool(environ.get("wsgi.input_terminated")),
        )
        fields = parse_body(environ.get("CONTENT_TYPE"), body)
    except BadRequest:
        if not broker.swarm_exists(swarm_id):
            return error(404, "no such swarm")
        raise
    token = fields.get("token")
    if not isinstance(token, str) or not token:
        if not broker.swarm_exists(swarm_id):
            return error(404, "no such swarm")
        return error(401, "missing or invalid token")
    data = fields.get("data")
    if data is None:
        checked = broker.authenticate(swarm_id, token)
        return delivery_error(checked) if checked is not Delivery.OK else error(400, "missing data")
    cid = optional_str(fields, "cid")
    if cid is not None and not ID.fullmatch(cid):
        # No peer has such a cid (the hub makes them); refused here, in the
        # protocol's order, so that nothing malformed reaches a broker.
        checked = broker.authenticate(swarm_id, token)
        return delivery_error(checked if checked is not Delivery.OK else Delivery.NO_PEER)
    result = broker.signal(swarm_id, data, cid=cid, token=token)
    if result is not Delivery.OK:
        return delivery_error(result)
    counts["signals_in"] += 1
    return Answer(200, JSON, OK)


def delivery_error(result: Delivery) -> Answer:
    if result is Delivery.NO_SWARM:
        return error(404, "no such swarm")
    if result is Delivery.BAD_TOKEN:
        return error(401, "missing or invalid token")
    return error(404, "no such peer in this swarm")
