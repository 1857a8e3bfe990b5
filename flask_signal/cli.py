"""``flask-signal``: run a standalone signal hub, as moshpit's command does.

::

    flask-signal -p 5000 -u nobody -g nogroup

The hub runs on gunicorn in this process (gevent workers). Privileges are
dropped after the listening socket is bound, so a port below 1024 works.
SIGINT and SIGTERM end every open stream and stop the server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .parsing import parse_size
from .server import WORKER_CLASS, Identity, create_app, serve

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flask-signal",
        description="Exchange messages between peers over HTTP and Server-Sent Events.",
        epilog="Clients: flask_signal.client.Peer, moshpit, or any EventSource plus POST.",
    )
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"flask-signal {__version__}",
        help="show version number and exit",
    )
    add = parser.add_argument
    add("-p", "--port", type=int, default=5000, help="listen for connections on this port (5000)")
    add("-b", "--bind", default="127.0.0.1", metavar="HOST", help="address to bind (127.0.0.1)")
    add("-u", "--uid", metavar="USER", help="drop permissions to this user (name or number)")
    add("-g", "--gid", metavar="GROUP", help="drop permissions to this group (name or number)")
    add("-w", "--workers", type=int, default=1, help="worker processes (1)")
    add("--prefix", default="", help="URL path the hub is served under ('' = root)")
    add("--limit", default="10kb", help="largest signal body accepted (10kb)")
    add(
        "--cors",
        default="*",
        metavar="ORIGINS",
        help="allowed origins, comma separated; '*' for any (default), '' for no CORS",
    )
    add(
        "--ping",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="keep-alive comment interval on idle streams (15; 0 = off)",
    )
    add(
        "--broker",
        default="memory://",
        metavar="URL",
        help="where swarms live: memory:// (one process) or redis://host:port/db",
    )
    add(
        "-k",
        "--worker-class",
        default=WORKER_CLASS,
        metavar="CLASS",
        help=f"gunicorn worker class ({WORKER_CLASS}; 'gevent' for gunicorn's own)",
    )
    add("--log-level", default="info", choices=LOG_LEVELS, help="server log level (info)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, not {args.port}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.broker.startswith("memory:"):
        parser.error(
            "--workers > 1 needs a shared broker: with memory:// each worker would hold "
            "its own swarms and peers would miss each other; use --broker redis://..."
        )
    if args.ping < 0:
        parser.error("--ping must be >= 0")
    try:
        parse_size(args.limit)
    except ValueError as exc:
        parser.error(f"--limit: {exc}")
    prefix = args.prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    cors: str | list[str] | None
    origins = [o.strip() for o in args.cors.split(",") if o.strip()]
    cors = None if not origins else "*" if origins == ["*"] else origins
    try:
        identity = Identity.resolve(args.uid, args.gid)
        identity.check()
    except (ValueError, PermissionError) as exc:
        parser.error(str(exc))

    try:
        app = create_app(
            prefix=prefix,
            limit=args.limit,
            cors=cors,
            ping_interval=args.ping,
            broker_url=args.broker,
        )
    except ValueError as exc:
        parser.error(str(exc))

    host = args.bind
    if host.startswith("unix:"):
        bind = host
    elif ":" in host:  # IPv6
        bind = f"[{host.strip('[]')}]:{args.port}"
    else:
        bind = f"{host}:{args.port}"
    options = {
        "bind": [bind],
        "workers": args.workers,
        "worker_class": args.worker_class,
        "loglevel": args.log_level,
        "proc_name": "flask-signal",
    }
    serve(app, options, identity=identity, path=prefix)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
