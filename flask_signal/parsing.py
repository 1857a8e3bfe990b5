"""Request parsing: sizes, Accept headers, bounded bodies and bracket-nested forms.

These functions take plain values (header strings, a readable stream) and
raise :class:`BadRequest` subclasses carrying the HTTP status to answer,
so the Flask layer only translates them into JSON error responses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import unquote_plus

from .errors import BadRequest as BadRequest  # re-exported: raised by these parsers

#: qs's defaults: the forms the original's clients send never come close.
FORM_MAX_DEPTH = 5
FORM_MAX_PARAMS = 1000
#: qs turns ``a[3]=x`` into a list only up to this index.
FORM_ARRAY_LIMIT = 20
#: Arrays and objects nested deeper than this in a JSON body are refused:
#: signalling data is shallow, and a bound keeps every later step (framing,
#: the Redis broker's encoding) far from Python's recursion limit.
JSON_MAX_DEPTH = 64

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_MEDIA = re.compile(r"^\s*([^/;\s]+)/([^;\s]+)\s*(?:;\s*q\s*=\s*([0-9.]+))?", re.IGNORECASE)


class TooLarge(BadRequest):
    status = 413


class UnsupportedMediaType(BadRequest):
    status = 415


def parse_size(value: int | str) -> int:
    """``10kb`` → 10240: bytes, or a number with ``b``, ``kb``, ``mb`` or ``gb`` (1 kb = 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size limit: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"size limit must be positive, got {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size limit {value!r}: use bytes or a string like '10kb', '1mb'")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower() if unit else None])
    if size <= 0:
        raise ValueError(f"size limit must be positive, got {value!r}")
    return size


def accepts_event_stream(accept: str | None) -> bool:
    """Whether an Accept header admits ``text/event-stream``.

    No header (or an empty one) accepts everything: the moshpit client sends
    none. ``*/*`` and ``text/*`` accept it unless given ``q=0``; an explicit
    ``text/event-stream;q=0`` refuses it whatever the wildcards say.
    """
    if accept is None or accept == "text/event-stream":  # what every EventSource sends
        return True
    if not accept.strip():
        return True
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        match = _MEDIA.match(item)
        if not match:
            continue
        kind, sub, q = (match.group(1).lower(), match.group(2).lower(), match.group(3))
        if (kind, sub) == ("text", "event-stream"):
            rank = 2
        elif (kind, sub) == ("text", "*"):
            rank = 1
        elif (kind, sub) == ("*", "*"):
            rank = 0
        else:
            continue
        try:
            quality = float(q) if q is not None else 1.0
        except ValueError:
            quality = 1.0
        if rank > best[0]:
            best = (rank, quality)
    return best[0] >= 0 and best[1] > 0


def content_length(value: str | None) -> int | None:
    """A Content-Length header's value; 400 if it is not a non-negative integer."""
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest("invalid Content-Length")
    return int(value)


def read_body(stream: IO[bytes], limit: int, length: int | None, terminated: bool = True) -> bytes:
    """Read a request body of at most ``limit`` bytes, counting what is read.

    A declared Content-Length over the limit is refused before reading, and
    no more than it declares is read; a chunked body (no Content-Length, on
    a server that ends the input stream) is refused as soon as it passes the
    limit. Without either, there is no body.
    """
    if length is not None:
        if length > limit:
            raise TooLarge(f"request body is larger than the limit of {limit} bytes")
        want = length
    elif terminated:
        want = limit + 1
    else:
        return b""
    chunks: list[bytes] = []
    size = 0
    while size < want:
        chunk = stream.read(min(65536, want - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise TooLarge(f"request body is larger than the limit of {limit} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _split_key(key: str, depth: int) -> list[str]:
    """``a[b][]`` → ``["a", "b", ""]``; segments past ``depth`` stay one literal key, as qs does."""
    open_at = key.find("[")
    if open_at <= 0 or not key.endswith("]"):
        return [key]
    parts = [key[:open_at]]
    rest = key[open_at:]
    while rest.startswith("[") and len(parts) <= depth:
        close = rest.find("]")
        if close < 0:
            break
        parts.append(rest[1:close])
        rest = rest[close + 1 :]
    if rest:
        parts.append(rest)
    return parts


class _List(list[Any]):
    """A list built from ``[]`` or small indices, told apart from plain values while parsing."""


def _assign(target: dict[str, Any], parts: list[str], value: str, field: str) -> None:
    node = target
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if last:
            if part == "" and isinstance(node, dict) and "" in node and isinstance(node[""], _List):
                node[""].append(value)
            elif part in node and not isinstance(node[part], dict):
                existing = node[part]
                node[part] = existing if isinstance(existing, _List) else _List([existing])
                node[part].append(value)
            elif part in node:
                raise BadRequest(f"form field {field!r} is both a value and an object")
            else:
                node[part] = _List([value]) if part == "" else value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise BadRequest(f"form field {field!r} is both a value and an object")
        node = child


def _index(key: str) -> int | None:
    """An array index as qs reads one: ASCII digits in canonical form (``"3"``,
    not ``"03"`` nor ``"²"``), at most :data:`FORM_ARRAY_LIMIT`; else ``None``."""
    if not (0 < len(key) <= 2 and key.isascii() and key.isdigit()):
        return None
    index = int(key)
    return index if index <= FORM_ARRAY_LIMIT and str(index) == key else None


def _finish(value: Any) -> Any:
    """Turn ``{"": [..]}`` and ``{"0": .., "1": ..}`` nodes into lists, as qs does."""
    if isinstance(value, _List):
        return [_finish(v) for v in value]
    if not isinstance(value, dict):
        return value
    if list(value) == [""] and isinstance(value[""], _List):
        return [_finish(v) for v in value[""]]
    if value and all(_index(k) is not None for k in value):
        return [_finish(value[k]) for k in sorted(value, key=int)]
    return {k: _finish(v) for k, v in value.items()}


def parse_form(
    body: bytes, *, max_depth: int = FORM_MAX_DEPTH, max_params: int = FORM_MAX_PARAMS
) -> dict[str, Any]:
    """Parse a urlencoded body with bracket nesting, as Node's ``qs`` does.

    ``token=T&data[x]=1&data[y][]=a`` → ``{"token": "T", "data": {"x": "1", "y": ["a"]}}``.
    Values are strings. Nesting deeper than ``max_depth`` is kept as a literal
    key; more than ``max_params`` parameters is an error.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("form body is not valid UTF-8") from exc
    pairs = [p for p in text.split("&") if p]
    if len(pairs) > max_params:
        raise BadRequest(f"too many form parameters (the limit is {max_params})")
    result: dict[str, Any] = {}
    for pair in pairs:
        raw_key, _, raw_value = pair.partition("=")
        key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        if not key:
            continue
        _assign(result, _split_key(key, max_depth), value, key)
    finished: dict[str, Any] = _finish(result)
    return finished


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    kind = media_type(content_type)
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


_INF = float("inf")
#: As JavaScript's JSON.parse: no NaN, Infinity or -Infinity (the browsers
#: that receive the data would fail to parse the frame), and no number that
#: overflows a double (JSON.parse makes it Infinity, which no frame can carry).
_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_JSON_SPACE = " \t\n\r"


def loads(body: bytes) -> Any:
    """``json.loads`` for a request body, as strict as ``JSON.parse``.

    Refuses (``ValueError``) NaN and infinities, numbers out of a double's
    range and arrays or objects nested over :data:`JSON_MAX_DEPTH`;
    ``UnicodeDecodeError`` for a body that is not valid UTF-8 (nor UTF-16/32,
    which ``json.loads`` also reads). A UTF-8 body that opens with an object
    skips the encoding sniffing and the whitespace regexes of ``json.loads``.
    """
    if body[:1] == b"{" and body[1:2] != b"\0":
        text = body.decode("utf-8")
    else:
        text = body.decode(json.detect_encoding(body))
    try:
        value, end = _decoder.raw_decode(text, len(text) - len(text.lstrip(_JSON_SPACE)))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise json.JSONDecodeError("Extra data", text, end)
    # Only a body with enough brackets can be too deep: most are let through
    # on two counts over bytes, without walking the value.
    if body.count(b"[") + body.count(b"{") > JSON_MAX_DEPTH and _depth(value) > JSON_MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {JSON_MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > JSON_MAX_DEPTH:
                break
        todo.extend((child, level + 1) for child in children)
    return deepest


def parse_body(content_type: str | None, body: bytes) -> Mapping[str, Any]:
    """Parse a JSON or urlencoded-form body into a mapping (415 / 400 on failure)."""
    if is_json(content_type):
        try:
            value = loads(body)
        except UnicodeDecodeError as exc:
            raise BadRequest("body is not valid UTF-8") from exc
        except ValueError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise BadRequest("JSON body must be an object")
        return value
    if media_type(content_type) == "application/x-www-form-urlencoded":
        return parse_form(body)
    raise UnsupportedMediaType(
        "Content-Type must be application/json or application/x-www-form-urlencoded"
    )


def optional_str(body: Mapping[str, Any], field: str) -> str | None:
    """A string field, ``None`` when absent, null or empty; 400 when of another type."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field!r} must be a string")
    return value
