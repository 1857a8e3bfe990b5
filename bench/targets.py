"""The servers compared side by side, and how each is started.

Each target starts on a free port and returns a :class:`~bench.procs.Server`
whose ``worker_pids()`` are the processes serving (and measured). Pinned, a
target runs on core 0 (the load generator on core 1), except the two-worker
Redis target, which is given both cores: that is what it is for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .procs import ROOT, SERVER_CORE, Redis, Server, free_port, launch, start_redis

KOA_DIR = ROOT / "bench" / "koa"


class Unavailable(Exception):
    """The target cannot run on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    #: URL path the hub answers under.
    prefix: str
    start: Callable[[bool], Server]
    #: What the command line is, for the report (``PORT`` stands for the port).
    command: str
    uses_redis: bool = False


def _clean_env() -> dict[str, str]:
    """The environment without settings an app would read (the shipped configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cores(pin: bool, both: bool = False) -> str | None:
    if not pin:
        return None
    return "0,1" if both else str(SERVER_CORE)


def start_ceiling(pin: bool) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.floor", "-p", str(port)]
    return launch(cmd, port=port, forks=False, cores=_cores(pin), env=_clean_env())


def _flask_signal(pin: bool, *, workers: int = 1, redis: bool = False) -> Server:
    store: Redis | None = None
    if redis:
        why = redis_unavailable()
        if why:
            raise Unavailable(why)
        try:
            store = start_redis(_cores(pin, both=workers > 1) or False)
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
    port = free_port()
    cmd = [sys.executable, "-m", "flask_signal", "-p", str(port), "--prefix", "/signal"]
    cmd += ["--log-level", "warning", "-w", str(workers)]
    if store is not None:
        cmd += ["--broker", store.url]
    try:
        return launch(
            cmd,
            port=port,
            workers=workers,
            cores=_cores(pin, both=workers > 1),
            env=_clean_env(),
            redis=store,
        )
    except Exception:
        if store is not None:
            store.stop()
        raise


def start_gunicorn(pin: bool) -> Server:
    """``gunicorn -k gevent example_app:app`` as shipped: no ``SIGNAL_*`` setting at all.

    ``--worker-connections`` is raised above the streams opened (gunicorn's
    default of 1000 would stop the worker accepting anything past them).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-b", f"127.0.0.1:{port}"]
    cmd += ["--worker-connections", "20000", "--log-level", "warning", "example_app:app"]
    return launch(cmd, port=port, cores=_cores(pin), env=_clean_env())


def koa_signal_module() -> Path | None:
    """Where koa-signal is: ``$KOA_SIGNAL`` (a checkout), or bench/koa/node_modules."""
    where = os.environ.get("KOA_SIGNAL")
    if where:
        return Path(where).resolve()
    installed = KOA_DIR / "node_modules" / "koa-signal"
    return installed if installed.is_dir() else None


def koa_unavailable() -> str | None:
    """Why koa-signal cannot run here, or ``None``."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    if not version.stdout.startswith("v2"):
        return f"node {version.stdout.strip()} is too old (Node 20 is measured)"
    if not (KOA_DIR / "node_modules" / "koa").is_dir():
        return "koa-signal's dependencies (koa 1) are not installed: cd bench/koa && npm ci"
    module = koa_signal_module()
    if module is None or not (module / "package.json").is_file():
        return (
            "koa-signal is not installed: cd bench/koa && npm install --no-save "
            "koa-signal@0.1.1 (or set KOA_SIGNAL to a checkout of koa-signal 0.1.1)"
        )
    return None


def start_koa(pin: bool) -> Server:
    why = koa_unavailable()
    if why:
        raise Unavailable(why)
    module = koa_signal_module()
    port = free_port()
    env = _clean_env()
    # A checkout's own dependencies (co-body, hat, end-of-stream) come from bench/koa.
    env["NODE_PATH"] = str(KOA_DIR / "node_modules")
    env["KOA_SIGNAL"] = str(module)
    cmd = ["node", str(KOA_DIR / "server.js"), str(port)]
    return launch(cmd, port=port, forks=False, cores=_cores(pin), env=env)


def redis_unavailable() -> str | None:
    """Why Redis targets cannot run here, or ``None``."""
    try:
        import flask_signal.brokers.redis  # noqa: F401
    except Exception as exc:
        return f"flask_signal.brokers.redis does not import: {exc!r}"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "ceiling",
            "the ceiling (bench/floor.py)",
            "/signal",
            start_ceiling,
            "python -m bench.floor -p PORT",
        ),
        Target(
            "koa-signal",
            "koa-signal 0.1.1 on Node",
            "",
            start_koa,
            "node bench/koa/server.js PORT",
        ),
        Target(
            "memory",
            "flask-signal, memory://",
            "/signal",
            _flask_signal,
            "flask-signal -p PORT --prefix /signal",
        ),
        Target(
            "redis",
            "flask-signal, redis://",
            "/signal",
            lambda pin: _flask_signal(pin, redis=True),
            "flask-signal -p PORT --prefix /signal --broker redis://127.0.0.1:RPORT/0",
            uses_redis=True,
        ),
        Target(
            "redis-2w",
            "flask-signal -w 2, redis://, two cores",
            "/signal",
            lambda pin: _flask_signal(pin, workers=2, redis=True),
            "flask-signal -p PORT --prefix /signal -w 2 --broker redis://127.0.0.1:RPORT/0",
            uses_redis=True,
        ),
        Target(
            "gunicorn",
            "gunicorn -k gevent example_app:app",
            "/signal",
            start_gunicorn,
            "gunicorn -k gevent --worker-connections 20000 -b 127.0.0.1:PORT example_app:app",
        ),
    )
}
