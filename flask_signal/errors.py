"""The project's exceptions, and the one map from them to HTTP answers.

Every exception the hub raises on purpose derives from :class:`FlaskSignalError`.
What a client is answered for each of them is decided by :func:`answer_for`
alone, whichever way the request was served: the blueprint's error handler,
the fast path and declared stream routes all call it, so a refusal looks the
same everywhere (a JSON ``{"error": ...}`` body with its status).

This module is pure (no Flask, no I/O), so every layer may raise these.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from . import framing

log = logging.getLogger("flask_signal")

JSON = [("Content-Type", "application/json")]


class Answer(NamedTuple):
    """An HTTP answer as WSGI writes it: status, header list, body chunks."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


def error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """The protocol's error answer: ``{"error": message}`` with ``status``."""
    return Answer(status, [*JSON, *headers], (framing.to_json({"error": message}).encode(),))


class FlaskSignalError(Exception):
    """Base of every exception flask_signal raises on purpose."""


class BadRequest(FlaskSignalError):
    """A request the hub refuses; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class Refusal(FlaskSignalError):
    """A request refused before its stream opened; carries the whole answer."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class BrokerUnavailable(FlaskSignalError):
    """The broker's backing service cannot be reached; clients should retry later.

    The answer's ``Retry-After`` is the app's ``SIGNAL_RETRY_AFTER``.
    """


class OutcomeUnknown(BrokerUnavailable):
    """The broker could not be reached to learn whether an operation took effect.

    It took effect at most once: it may have been applied (a signal delivered,
    an event stored and delivered) or not, and the caller must not assume
    either. Retrying may apply it a second time, so the answer (504) carries
    no ``Retry-After``.
    """


class ResumeLater(BrokerUnavailable):
    """A swarm peer asks to resume while another process still holds it (that process
    has not found its stream lost yet, or died and is not reaped yet); it soon will be
    resumable, so the client is asked to come back, as during an outage."""


class SwarmFull(FlaskSignalError):
    """A swarm already holds as many peers as ``SIGNAL_MAX_SWARM_PEERS`` allows."""


class Overloaded(FlaskSignalError):
    """This process holds as many streams or swarms as it may; another may have room."""


def answer_for(
    exc: FlaskSignalError,
    *,
    retry_after: int,
    stream_headers: list[tuple[str, str]] | None = None,
) -> Answer:
    """The answer to a request that raised ``exc``.

    ``stream_headers`` are given for a request that asked for a stream (a GET
    that accepts ``text/event-stream``). A broker outage answers such a request
    with an event stream that ends at once after a ``retry:`` hint: an
    EventSource takes any other answer, a 503 included, as final and never
    reconnects, whereas a stream that ends is reconnected by itself after the
    hint (``SIGNAL_RETRY_AFTER`` seconds, spread by up to half as much again
    so that a crowd of clients does not return all at once; a join whose
    outcome is unknown is undone by the broker). Other requests get 503 with
    ``Retry-After``, or 504 without it when the outcome is unknown.
    """
    if isinstance(exc, Refusal):
        return exc.answer
    if isinstance(exc, BadRequest):
        return error(exc.status, exc.message)
    if isinstance(exc, ResumeLater):
        log.info("resume deferred: %s", exc)
    elif isinstance(exc, BrokerUnavailable):
        log.warning("broker unavailable: %s", exc)
    if isinstance(exc, BrokerUnavailable):
        if isinstance(exc, OutcomeUnknown) and stream_headers is None:
            # Not "retry later": the operation may have been applied already.
            return error(504, "the signalling backend did not confirm; it may have been applied")
        if stream_headers is not None:
            delay = max(retry_after, 1) * 1000 * random.uniform(1.0, 1.5)
            body = framing.comment("signalling backend unavailable, retry later") + (
                framing.retry(int(delay))
            )
            return Answer(200, stream_headers, (body,))
        return error(
            503,
            "signalling backend unavailable, retry later",
            [("Retry-After", str(retry_after))],
        )
    if isinstance(exc, SwarmFull):
        return error(429, "this swarm is full", [("Retry-After", str(retry_after))])
    if isinstance(exc, Overloaded):
        return error(503, str(exc), [("Retry-After", str(retry_after))])
    return error(500, "internal error")
