"""``flask-signal``: run a standalone signal hub, as moshpit's command does.

::

    flask-signal -p 5000 -u nobody -g nogroup
    flask-signal -p 5000 --app myapp:signal

The hub runs on gunicorn in this process (gevent workers). Privileges are
dropped after the listening socket is bound, so a port below 1024 works.
SIGINT and SIGTERM end every open stream and stop the server.

With ``--app``, the command serves an application's own routes and
declarations (sse.io's standalone mode) instead of a hub it configures itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from flask import Flask

from . import __version__, settings
from .extension import Signal
from .server import WORKER_CLASS, Identity, create_app, patch_early, serve
from .state import EXTENSION_KEY

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
    add(
        "--app",
        metavar="MODULE:NAME",
        help="serve this application (a Flask app or its Signal, or a factory called as "
        "NAME()) with its own routes and settings, instead of a hub configured here",
    )
    add_setting_options(parser)
    add(
        "-k",
        "--worker-class",
        default=WORKER_CLASS,
        metavar="CLASS",
        help=f"gunicorn worker class ({WORKER_CLASS}; 'gevent' for gunicorn's own)",
    )
    add("--log-level", default="info", choices=LOG_LEVELS, help="server log level (info)")
    return parser


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option for each setting that declares a command-line form."""
    for name, option in settings.options():
        default = settings.option_default(name)
        shown = "''" if default == "" else "none" if default is None else default
        parser.add_argument(
            *option.flags,
            dest=name,
            default=None,
            metavar=option.metavar or option.flags[-1].lstrip("-").upper(),
            help=f"{option.help} ({shown})",
        )


def setting_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives, parsed and checked as ``SIGNAL_*`` keys are."""
    values: dict[str, Any] = {}
    for name, option in settings.options():
        given = getattr(args, name)
        flag = option.flags[-1]
        try:
            value = option.parse(given) if given is not None else settings.option_default(name)
        except ValueError:
            parser.error(f"{flag}: invalid value {given!r}")
        try:
            values[name] = getattr(settings.Settings(**{name: value}), name)
        except ValueError as exc:
            # The check's own words, without the config key it is prefixed with.
            parser.error(f"{flag}: {str(exc).partition(': ')[2]}")
    return values


def load_app(target: str) -> Flask:
    """The Flask app ``module:name`` names: an app, a :class:`Signal` (its app), or
    ``module:factory()``, imported from the current directory as ``flask run`` does."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"--app takes MODULE:NAME, not {target!r}")
    call = name.endswith("()")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        found = getattr(module, name.removesuffix("()"))
    except AttributeError:
        raise ValueError(f"{module_name} has no {name.removesuffix('()')!r}") from None
    if call:
        found = found()
    if isinstance(found, Signal):
        if found.app is None:
            raise ValueError(f"{target} is a Signal without an app: use Signal(app)")
        found = found.app
    if not isinstance(found, Flask) or "signal" not in found.extensions:
        raise ValueError(f"{target} is not a Flask app with Signal, nor its Signal")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, not {args.port}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if "gevent" in args.worker_class.lower():
        patch_early()  # before the app and its imports are loaded
    if args.app is not None:
        given = [
            opt.flags[0] for name, opt in settings.options() if getattr(args, name) is not None
        ]
        if given:
            parser.error(f"{', '.join(given)}: with --app, configure the application itself")
        try:
            app = load_app(args.app)
        except (ImportError, ValueError) as exc:
            parser.error(str(exc))
        # Its settings as resolved, without starting its broker before the fork.
        own = app.extensions[EXTENSION_KEY].settings
        values = {"broker_url": own.broker_url, "url_prefix": own.url_prefix}
    else:
        values = setting_values(parser, args)
    if args.workers > 1 and values["broker_url"].startswith("memory:"):
        parser.error(
            "--workers > 1 needs a shared broker: with memory:// each worker would hold "
            "its own swarms and peers would miss each other; use --broker redis://..."
        )
    try:
        identity = Identity.resolve(args.uid, args.gid)
        identity.check()
    except (ValueError, PermissionError) as exc:
        parser.error(str(exc))

    if args.app is None:
        try:
            app = create_app(**values)
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
    serve(app, options, identity=identity, path=values["url_prefix"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
