"""Server-Sent Events wire framing: pure functions from values to bytes.

Nothing here touches sockets, Flask or gevent, so every frame the hub sends
can be checked byte for byte in isolation.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: A comment frame: keeps proxies from closing an idle stream.
PING = b":\n\n"

#: No NaN nor Infinity: JSON.parse refuses them (see _dumps).
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_LINES = re.compile(r"\r\n|\r|\n")
_FORBIDDEN = re.compile(r"[\r\n\0\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _c_encoder() -> Any:
    """``_json``'s C encoder, made once instead of on every call as
    ``JSONEncoder.encode`` does (a tenth of a signal's JSON cost); None where
    this Python's accelerator is missing or takes other arguments."""
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        # No circular-reference markers: shared between calls they could be
        # left dirty by an error. A circular value overflows the recursion
        # limit instead, and to_json then asks _json for the proper error.
        encoder = c_make_encoder(
            None, _json.default, encode_basestring, None, ":", ",", False, False, False
        )
        probe = {"a": [1, 2.5, None, True, "é\n"], "b": {}}
        if "".join(encoder(probe, 0)) != _json.encode(probe):
            return None
    except (ImportError, TypeError):
        return None
    return encoder


_encode = _c_encoder()


def _dumps(value: Any) -> str:
    """Compact JSON, possibly holding lone surrogates (which UTF-8 cannot carry)."""
    try:
        if type(value) is str or _encode is None:
            return _json.encode(value)
        return "".join(_encode(value, 0))
    except RecursionError:
        return _json.encode(value)  # ValueError: circular reference
    except ValueError:
        # NaN or an infinity: written null, as JSON.stringify writes them.
        return _json.encode(_finite(value))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities made ``None``."""
    if isinstance(value, float):
        return value if value - value == 0 else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _utf16(text: str) -> str:
    """Surrogates that make a pair joined into one character, as in a JavaScript string."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _escape_surrogates(json_text: str) -> str:
    """Lone surrogates written ``\\udxxx``, as ``JSON.stringify`` writes them.

    In JSON text they can only stand inside strings, where the escape is valid.
    """
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", _utf16(json_text))


def to_json(value: Any) -> str:
    """Serialize compactly, as JavaScript's ``JSON.stringify`` does, lone surrogates escaped."""
    text = _dumps(value)
    if not text.isascii() and _SURROGATE.search(text):
        return _escape_surrogates(text)
    return text


def swarm_event(event: str, data: Any) -> bytes:
    """A swarm frame: exactly ``event:`` then ``data:`` (compact JSON), then a blank line.

    The original's clients split each line on ``": "`` and JSON-parse what
    follows, so nothing else may precede or follow these two lines.
    """
    try:
        return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()
    except UnicodeEncodeError:
        # Rare, so checked only when encoding fails: keeps the hot path as it was.
        return f"event: {event}\ndata: {to_json(data)}\n\n".encode()


def check_field(name: str, value: str) -> str:
    """Refuse a value for a single-line SSE field (``event``, ``id``) that would break
    framing, or that UTF-8 cannot carry (a lone surrogate)."""
    if _FORBIDDEN.search(value):
        raise ValueError(
            f"SSE {name} must not contain CR, LF or NUL, nor a lone surrogate: {value!r}"
        )
    return value


def number_id(value: float) -> str:
    """An event id given as a number: integers in decimal, other floats in their shortest form."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"an event id must be finite, not {value!r}")
    return repr(value)


def data_lines(data: Any) -> str:
    """The ``data:`` lines of a message: strings as they are, line by line; anything else as JSON.

    CR, LF and CRLF all end a line, as the SSE parser in every client reads
    them; empty and trailing lines are kept so the client sees the same text.
    """
    text = data if isinstance(data, str) else _dumps(data)
    return "".join(f"data: {line}\n" for line in _LINES.split(text))


def _well_formed_lines(data: Any) -> str:
    """:func:`data_lines` for data holding lone surrogates: escaped in JSON, as
    ``JSON.stringify`` does; replaced by U+FFFD in a string sent as it is, as
    Node's UTF-8 encoder does."""
    if isinstance(data, str):
        return data_lines(_SURROGATE.sub("\ufffd", _utf16(data)))
    return data_lines(to_json(data))


def message(
    data: Any,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """A channel frame: optional ``event:``, the data lines, optional ``id:`` and ``retry:``."""
    head = f"event: {check_field('event', event)}\n" if event is not None else ""
    tail = f"id: {check_field('id', id)}\n" if id is not None else ""
    if retry is not None:
        tail += f"retry: {int(retry)}\n"
    try:
        return f"{head}{data_lines(data)}{tail}\n".encode()
    except UnicodeEncodeError:
        return f"{head}{_well_formed_lines(data)}{tail}\n".encode()


def retry(milliseconds: int) -> bytes:
    """Tell the client how long to wait before reconnecting."""
    return f"retry: {int(milliseconds)}\n\n".encode()


def comment(text: str = "") -> bytes:
    """A comment frame, ignored by clients; ``comment()`` is the keep-alive ping."""
    if not text:
        return PING
    return "".join(f": {line}\n" for line in _LINES.split(text)).encode() + b"\n"


def parse_message(frame: bytes) -> dict[str, Any]:
    """The fields of a frame made by :func:`message`: ``data`` (lines joined by LF),
    ``event``, ``id`` and ``retry`` where present."""
    fields: dict[str, Any] = {}
    data: list[str] = []
    for line in frame.decode().split("\n"):
        name, _, value = line.partition(": ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            fields[name] = value
        elif name == "retry":
            fields[name] = int(value)
    return {"data": "\n".join(data), **fields}
