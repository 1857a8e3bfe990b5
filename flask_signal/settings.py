"""Every setting, declared once.

A setting is one field of :class:`Settings`, made with :func:`setting`: its
default, the check that validates (and normalizes) a value, its doc, and
optionally its command-line form. From these declarations come the
``SIGNAL_*`` config keys (the upper-cased name), :data:`DEFAULTS`, the
validation at ``init_app``, the options of the ``flask-signal`` command
(:mod:`flask_signal.cli`) and the settings reference in the docs
(:func:`reference`). A new setting is one declaration here.

No Flask, no I/O: plain values in, plain values out.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import framing, ice
from .parsing import parse_size

if TYPE_CHECKING:
    from flask import Request

PublishAuth = Callable[["Request", str], bool]
#: An :class:`Option` default meaning "the setting's own default".
SAME = "<the setting's default>"
Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Option:
    """The command-line form of a setting.

    ``parse`` turns the option's string into the setting's value (before the
    setting's own check); ``default`` is the command's default where it differs
    from the extension's (the standalone hub serves at the root, CORS open).
    """

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] = str
    default: Any = SAME


def setting(
    default: Any = None,
    *,
    doc: str,
    check: Check | None = None,
    cli: Option | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare one field of :class:`Settings`."""
    metadata = {"doc": doc, "check": check, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# -- checks: each returns the value to keep, or raises ValueError -------------------------


def _int(minimum: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an int, not {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, not {value}")
        return value

    return check


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, not {value!r}")
    return value


def _fast_path(value: Any) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"must be 'auto', True or False, not {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping, not {value!r}")
    return MappingProxyType(dict(value))


def _headers(value: Any) -> Mapping[str, str]:
    headers = _mapping(value)
    for name, item in headers.items():
        if not isinstance(name, str) or not isinstance(item, str):
            raise ValueError(f"names and values must be strings: {name!r}: {item!r}")
        framing.check_field("header", name + item)
    return headers


_PREFIX_CHARS = re.compile(r"[^\s<>?#%]*")


def url_prefix(value: Any) -> str:
    """``"hub/"`` → ``"/hub"``; ``""`` and ``"/"`` mount at the root."""
    prefix = _str(value).strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    if not _PREFIX_CHARS.fullmatch(prefix):
        raise ValueError(f"a URL path without spaces, '<', '>', '?', '#' or '%': {value!r}")
    return prefix


def _create_status(value: Any) -> int:
    if value not in (200, 201) or isinstance(value, bool):
        raise ValueError(f"must be 200 or 201, not {value!r}")
    return int(value)


def _choice(value: Any, allowed: tuple[Any, ...]) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return value


def _cors(value: Any) -> Any:
    if value is None or value is False or value is True or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError(f"must be None, True, '*', an origin or a list of origins, not {value!r}")


def _origins(value: str) -> Any:
    """The command's ``--cors a,b``: ``''`` for none, ``'*'`` for any."""
    origins = [item.strip() for item in value.split(",") if item.strip()]
    return None if not origins else "*" if origins == ["*"] else origins


def _callable(value: Any) -> Any:
    if not callable(value):
        raise ValueError(f"must be callable, not {value!r}")
    return value


def _event_name(value: Any) -> str:
    framing.check_field("event", _str(value))
    return str(value)


@dataclass(frozen=True)
class Settings:
    """The settings of one app: constructor arguments over ``SIGNAL_*`` config over defaults.

    Building one checks every value (``ValueError`` names the config key);
    some are normalized (``limit`` in bytes, ``url_prefix`` without its
    trailing slash).
    """

    limit: int = setting(
        "10kb",
        check=parse_size,
        doc='largest POST body: bytes, or `"10kb"`, `"1mb"` (1 kb = 1024 bytes); '
        "counted on the bytes read, chunked bodies included",
        cli=Option(("--limit",), "largest signal body accepted"),
    )
    url_prefix: str = setting(
        "/signal",
        check=url_prefix,
        doc='where the hub answers; `""` mounts it at the root (a missing leading `/` is '
        "added, a trailing one dropped)",
        cli=Option(("--prefix",), "URL path the hub is served under ('' = root)", default=""),
    )
    broker_url: str = setting(
        "memory://",
        check=_str,
        doc="`memory://` (one process) or `redis://`, `rediss://`, `unix://`",
        cli=Option(
            ("--broker",),
            "where swarms live: memory:// (one process) or redis://host:port/db",
            metavar="URL",
        ),
    )
    broker_options: Mapping[str, Any] = setting(
        factory=dict,
        check=_mapping,
        doc="extra keyword arguments for the broker (for Redis: `heartbeat_interval`, "
        "`peer_ttl`, `swarm_ttl`, `history_ttl`, `max_connections` (pipelined command "
        "connections, 1 to 3), ...)",
    )
    redis_prefix: str = setting(
        "signal:",
        check=_str,
        doc="prefix of every Redis key and pub/sub topic (Redis brokers only)",
        cli=Option(("--redis-prefix",), "prefix of every Redis key and topic"),
    )
    redis_swarm_log: int = setting(
        1000,
        check=_int(0),
        doc="messages each swarm keeps in Redis (signals, joins, leaves...), from which a "
        "process whose pub/sub connection was down catches up, each once and in order; "
        "`0`: off (the format older versions understand, see the Redis page)",
        cli=Option(
            ("--redis-swarm-log",),
            "messages each swarm keeps for pub/sub catch-up, 0 = off",
            metavar="N",
            parse=int,
        ),
    )
    redis_swarm_log_bytes: int = setting(
        "256kb",
        check=parse_size,
        doc="bytes each swarm's log keeps at most (its newest message always stays)",
    )
    redis_swarm_log_ttl: float = setting(
        60.0,
        check=_seconds,
        doc="seconds a swarm's log outlives its last message; a pub/sub outage longer than "
        "this, or than the log reaches back, ends the swarm's streams with a `retry:` hint",
    )
    ping_interval: float = setting(
        15.0,
        check=_seconds,
        doc="seconds between keep-alive comments on idle streams; `0` turns them off",
        cli=Option(
            ("--ping",),
            "keep-alive comment interval on idle streams, 0 = off",
            metavar="SECONDS",
            parse=float,
        ),
    )
    cors: Any = setting(  # noqa: RUF009 (setting() is a dataclass field)
        None,
        check=_cors,
        doc='`True` or `"*"` for any origin, or a list of origins: CORS headers on every '
        "answer of the hub, errors and preflights included, with `Vary: Origin` whenever "
        "the answer depends on the origin",
        cli=Option(
            ("--cors",),
            "allowed origins, comma separated; '*' for any, '' for no CORS",
            metavar="ORIGINS",
            parse=_origins,
            default="*",
        ),
    )
    cors_credentials: bool = setting(
        False,
        check=_bool,
        doc="allow credentials (cookies, HTTP authentication: `withCredentials`) from the "
        "origins of `SIGNAL_CORS`, which must then be a list: never with `*`",
    )
    cors_max_age: int = setting(
        7200,
        check=_int(0),
        doc="seconds browsers may cache the answer to a CORS preflight",
    )
    create_status: int = setting(
        200,
        check=_create_status,
        doc="status of a swarm-creating stream; `201` as the original (breaks browsers' "
        "EventSource)",
    )
    queue_size: int = setting(
        1000,
        check=_int(1),
        doc="frames a stream may have waiting; a client that falls further behind is disconnected",
        cli=Option(("--queue-size",), "frames a stream may have waiting", metavar="N", parse=int),
    )
    history_size: int = setting(
        500,
        check=_int(0),
        doc="events each channel retains for resume",
        cli=Option(
            ("--history", "--history-size"),
            "events each channel keeps for resume",
            metavar="N",
            parse=int,
        ),
    )
    max_clients: int = setting(
        0,
        check=_int(0),
        doc="open streams per process before new ones get 503 (`0`: no limit)",
        cli=Option(
            ("--max-clients",), "open streams per worker, 0 = no limit", metavar="N", parse=int
        ),
    )
    channel_max_clients: int = setting(
        0,
        check=_int(0),
        doc="subscribers per channel per process before 503 (`0`: no limit)",
    )
    full_status: int = setting(
        503,
        check=lambda value: _choice(value, (503, 204)),
        doc="status of a stream refused by `SIGNAL_MAX_CLIENTS` or `SIGNAL_CHANNEL_MAX_CLIENTS`: "
        "`503` with `Retry-After` (an EventSource gives up), or `204` with no body as egg-sse "
        "(an EventSource gives up too; its own clients may retry)",
    )
    retry_after: int = setting(
        5,
        check=_int(0),
        doc="seconds a client is asked to wait before retrying: the `Retry-After` of a 503 "
        "(broker outage, client limits); for a stream asked for during a broker outage, "
        "the `retry:` hint of the 200 that ends at once (spread up to half as much again)",
        cli=Option(
            ("--retry-after",), "seconds clients wait before retrying", metavar="SECONDS", parse=int
        ),
    )
    retry: int | None = setting(
        None,
        check=_optional(_int(0)),
        doc="milliseconds sent as `retry:` at the start of channel streams",
        cli=Option(
            ("--retry",),
            "milliseconds sent as retry: at the start of channel streams",
            metavar="MS",
            parse=int,
        ),
    )
    headers: Mapping[str, str] = setting(
        factory=dict, check=_headers, doc="extra or replaced stream response headers"
    )
    publish_key: str | None = setting(
        None,
        check=_optional(_str),
        doc="a secret that allows publishing over HTTP (`Authorization: Bearer <key>`)",
        cli=Option(
            ("--publish-key",),
            "a secret that allows publishing over HTTP (Authorization: Bearer KEY)",
            metavar="KEY",
        ),
    )
    publish_auth: PublishAuth | None = setting(  # noqa: RUF009
        None,
        check=_optional(_callable),
        doc="a callable `(request, channel) -> bool` that allows publishing over HTTP",
    )
    lost_event: str = setting(
        "missed",
        check=_event_name,
        doc="the event name that tells a resuming client some events are gone",
    )
    fast_path: bool | str = setting(
        "auto",
        check=_fast_path,
        doc='serve swarm GETs and POSTs in front of Flask: `"auto"` whenever nothing '
        "registered on the app (hooks, error handlers, request signals) would notice, decided "
        "at the first request; `True` always; `False` never",
    )
    direct_writes: bool = setting(
        True,
        check=_bool,
        doc="let the greenlet that publishes write a frame straight to an idle stream's "
        "socket; only ever done under gunicorn's gevent worker and the project's worker "
        "over plain HTTP/1.x. Turn it off if a WSGI middleware must see or rewrite each "
        "chunk of a stream",
    )

    queue_bytes: int = setting(
        "256kb",
        check=parse_size,
        doc='unsent bytes a stream may hold (`"256kb"`); a client that falls further behind '
        "is disconnected (a swarm peer then cannot resume)",
    )
    resume_grace: float = setting(
        0.0,
        check=_seconds,
        doc="seconds a swarm peer whose connection was lost (reset, timeout, server restart) "
        "may take to come back with its `Last-Event-ID`, keeping its cid, token and every "
        "signal meanwhile; swarm frames then carry a numeric `id:`. `0`: a lost peer leaves "
        "at once",
        cli=Option(
            ("--resume-grace",),
            "seconds a lost swarm peer may take to resume, 0 = off",
            metavar="SECONDS",
            parse=float,
        ),
    )
    dead_peer_timeout: float = setting(
        45.0,
        check=_seconds,
        doc="seconds after which a silent client counts as gone: TCP keep-alive probes and "
        "`TCP_USER_TIMEOUT` on stream sockets; `0` leaves the kernel's defaults",
    )
    write_timeout: float = setting(
        30.0,
        check=_seconds,
        doc="seconds one write of a stream may take before the client counts as gone "
        "(`0`: no deadline)",
    )
    max_stream_age: float = setting(
        0.0,
        check=_seconds,
        doc="seconds after which a stream is ended with a jittered `retry:` so its client "
        "reconnects (spreads load after a deploy; `0`: streams last as long as clients stay)",
    )
    drain_spread: float = setting(
        3.0,
        check=_seconds,
        doc="seconds over which the `retry:` delays of streams ended together (shutdown, "
        "restart, lifetime) are spread, so clients do not all come back at once",
    )
    max_swarm_peers: int = setting(
        0,
        check=_int(0),
        doc="peers a swarm may hold before joins get 429 (`0`: no limit)",
    )
    max_swarms: int = setting(
        0,
        check=_int(0),
        doc="swarms created per process before new ones get 503 (`0`: no limit)",
    )
    metrics: bool = setting(
        False,
        check=_bool,
        doc="serve Prometheus metrics at `{prefix}/metrics` (needs the `[metrics]` extra; "
        "set `PROMETHEUS_MULTIPROC_DIR` under several workers)",
    )
    sender_field: str | None = setting(
        None,
        check=_optional(_str),
        doc='a field (e.g. `"from"`) in which the server stamps the sending peer\'s cid into '
        "object signals, overwriting what the client put there (`None`: off)",
    )
    ice_servers: tuple[Mapping[str, Any], ...] = setting(
        (),
        check=lambda value: tuple(ice.normalize(value)),
        doc="STUN/TURN servers handed to every peer in its `connect` data (`iceServers`), "
        'for RTCPeerConnection: URLs (`"stun:stun.example.org:3478"`) or RTCIceServer '
        "dicts (`urls`, `username`, `credential`)",
    )
    turn_secret: str | None = setting(
        None,
        check=_optional(_str),
        doc="a secret shared with the TURN server (coturn's `static-auth-secret`): TURN "
        "entries of `SIGNAL_ICE_SERVERS` without credentials get short-lived ones per peer "
        "(username `<expiry>:<cid>`, password base64 HMAC-SHA1)",
    )
    turn_ttl: int = setting(
        86400,
        check=_int(1),
        doc="seconds the TURN credentials of `SIGNAL_TURN_SECRET` stay valid",
    )
    defer_accept: bool = setting(
        True,
        check=_bool,
        doc="accept a connection only once its first bytes are in (Linux `TCP_DEFER_ACCEPT` "
        "on the server's listening sockets), so that requests a client sends one after "
        "another on separate connections are served in the order they arrived",
    )
    ping_without_accept: bool = setting(
        False,
        check=_bool,
        doc="send keep-alive comments also to streams whose request did not ask for "
        "`text/event-stream` (moshpit sends no Accept header, and its line parser turns "
        "each comment into a row)",
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            check = item.metadata["check"]
            if check is None:
                continue
            try:
                value = check(getattr(self, item.name))
            except ValueError as exc:
                raise ValueError(f"{key(item.name)}: {exc}") from None
            object.__setattr__(self, item.name, value)

    @classmethod
    def resolve(
        cls,
        config: Mapping[str, Any],
        overrides: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """The first given of: arguments (not None), ``config``'s ``SIGNAL_*`` keys, the
        environment's ``FLASK_SIGNAL_*`` then ``SIGNAL_*`` variables (see
        :func:`from_environ`); else the default."""
        unknown = set(overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Signal settings: {', '.join(sorted(unknown))}")
        env = from_environ(environ if environ is not None else {})
        values = {}
        for name in DEFAULTS:
            if overrides.get(name) is not None:
                values[name] = overrides[name]
            elif key(name) in config:
                values[name] = config[key(name)]
            elif name in env:
                values[name] = env[name]
        return cls(**values)


#: Prefixes of the environment variables that set a setting, the first found winning:
#: Flask's own (what ``app.config.from_prefixed_env()`` reads), then the bare key.
ENV_PREFIXES = ("FLASK_SIGNAL_", "SIGNAL_")


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings given by environment variables, by name.

    A value is read as JSON when it parses (``5``, ``true``, ``{"a": "b"}``), else
    kept as the string, as Flask's ``from_prefixed_env`` does.
    """
    found: dict[str, Any] = {}
    for name in DEFAULTS:
        for prefix in ENV_PREFIXES:
            raw = environ.get(prefix + name.upper())
            if raw is not None:
                try:
                    found[name] = json.loads(raw)
                except ValueError:
                    found[name] = raw
                break
    return found


def key(name: str) -> str:
    """The config key of a setting: ``url_prefix`` → ``SIGNAL_URL_PREFIX``."""
    return f"SIGNAL_{name.upper()}"


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


#: Every setting's default, by name (a copy: changing it changes nothing).
DEFAULTS: dict[str, Any] = {item.name: _default(item) for item in fields(Settings)}


def options() -> list[tuple[str, Option]]:
    """The settings that have a command-line form, in declaration order."""
    return [(item.name, item.metadata["cli"]) for item in fields(Settings) if item.metadata["cli"]]


def option_default(name: str) -> Any:
    """The command's default for setting ``name``."""
    option: Option = next(item for setting_name, item in options() if setting_name == name)
    return DEFAULTS[name] if option.default is SAME else option.default


def reference() -> str:
    """The settings reference: a Markdown table of every key, default and doc."""
    rows = ["| Key | Default | Command line | Meaning |", "|---|---|---|---|"]
    for item in fields(Settings):
        default = _default(item)
        shown = "`{}`" if not isinstance(default, str) else '`"{}"`'
        cli: Option | None = item.metadata["cli"]
        flag = f"`{cli.flags[-1]}`" if cli else ""
        rows.append(
            f"| `{key(item.name)}` | {shown.format(default)} | {flag} | {item.metadata['doc']} |"
        )
    return "\n".join(rows) + "\n"
