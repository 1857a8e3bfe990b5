"""The standalone hub (moshpit's server): an app factory and gunicorn, run in-process.

``create_app()`` builds a Flask app that serves the swarm protocol at its
root with CORS open, as moshpit's koa app does. :class:`HubApplication`
serves it with gunicorn's application API, with settings and hooks suited
to long-lived streams; ``flask-signal`` (:mod:`flask_signal.cli`) is its
command line.
"""

from __future__ import annotations

import contextlib
import gc
import grp
import importlib
import os
import pwd
import resource
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from . import drain
from .extension import Signal
from .settings import option_default, options

#: The gunicorn worker class the hub runs on: the project's own HTTP/1.1 server
#: (flask_signal.http over flask_signal.h1); ``gevent`` (gunicorn's) is fully supported too.
WORKER_CLASS = "flask_signal.worker.GeventWorker"

#: gunicorn settings for a server of long-lived streams.
STREAM_SETTINGS: dict[str, Any] = {
    "worker_class": WORKER_CLASS,
    # Each open stream holds a connection (and a greenlet) for as long as the
    # peer stays; gunicorn's default of 1000 per worker would leave the
    # 1001st peer waiting in the accept queue, i.e. a silently hung client.
    # Each also needs a file descriptor: see raise_fd_limit().
    "worker_connections": 20000,
    # Streams never finish by themselves: shutdown ends them (see
    # end_streams), so waiting long for "open requests" only delays exit.
    "graceful_timeout": 3,
    # Worker liveness (heartbeat), not request duration: gevent workers keep
    # beating while streams are open.
    "timeout": 30,
    # Idle time allowed between POSTs on a kept-alive connection.
    "keepalive": 5,
    # The control socket is an admin endpoint this server does not use; it
    # would be created in $HOME after privileges are dropped.
    "control_socket_disable": True,
}


def create_app(*, prefix: str | None = None, **settings: Any) -> Flask:
    """A standalone hub with the command's defaults: the swarm protocol at the root, CORS open.

    Keyword arguments are :class:`~flask_signal.Signal` settings (``prefix``
    is ``url_prefix``). The fast path is on: this app has no hooks of its own
    for swarm requests to skip.
    """
    if prefix is not None:
        settings["url_prefix"] = prefix
    for name, _ in options():
        settings.setdefault(name, option_default(name))
    settings.setdefault("fast_path", True)
    app = Flask("flask_signal.server")
    # No CORS is False here, not None, which would mean "not given".
    Signal(app, **{**settings, "cors": settings["cors"] or False})
    return app


#: Modules a gevent worker imports only after the fork (monkey-patching, IDNA host
#: names). They are imported before privileges are dropped, since the new user may be
#: unable to read the Python installation (an interpreter under root's home directory).
PRELOAD = (
    "_threading_local",
    "concurrent.futures.thread",
    "encodings.idna",
    "stringprep",
    "subprocess",
    "gevent.events",
    "gevent.local",
    "gevent.monkey",
    "gevent.monkey._patch_thread_common",
    "gevent.monkey._patch_thread_lt313",
    "gevent.monkey._patch_thread_gte313",
    "gevent.select",
    "gevent.selectors",
    "gevent.signal",
    "gevent.ssl",
    "gevent.subprocess",
    "gevent.thread",
    "gevent.threading",
    "gevent.time",
)


def preload() -> None:
    """Import :data:`PRELOAD` (names missing from this gevent version are skipped)."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def patch_early() -> None:
    """Monkey-patch the standard library for gevent now, before the application (and
    what it imports, redis-py say) is loaded in this process, the gunicorn master.

    The gevent worker patches again after the fork, which then changes nothing. Left
    to the worker alone, the patching comes after the app's imports: a module that took
    names straight from ``ssl`` (redis-py's asyncio client does) keeps the blocking ones,
    and gevent warns of it at every worker's boot."""
    from gevent import monkey

    monkey.patch_all()


def end_streams(app: Flask) -> None:
    """End every stream of this process, so a graceful shutdown has no open request to wait for."""
    extension = app.extensions.get("signal")
    if extension is not None:
        with app.app_context():
            extension.shutdown()


# -- privileges ------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the server becomes once its socket is bound."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None  # the uid's login name, for its supplementary groups

    @classmethod
    def resolve(cls, user: str | None, group: str | None) -> Identity:
        """Names or numbers to ids; raises ValueError for an unknown name.

        With a user but no group, the user's primary group is taken, so the
        process does not keep root's group.
        """
        uid = gid = None
        name = None
        if user is not None:
            entry = _lookup(pwd.getpwnam, pwd.getpwuid, user, "user")
            if isinstance(entry, int):
                uid = entry
            else:
                uid, name = entry.pw_uid, entry.pw_name
                if group is None:
                    gid = entry.pw_gid
        if group is not None:
            found = _lookup(grp.getgrnam, grp.getgrgid, group, "group")
            gid = found if isinstance(found, int) else found.gr_gid
        return cls(uid, gid, name)

    def __bool__(self) -> bool:
        return self.uid is not None or self.gid is not None

    def check(self) -> None:
        """Raise PermissionError now if switching is impossible, rather than after binding."""
        if os.geteuid() == 0:
            return
        if (self.uid is not None and self.uid != os.getuid()) or (
            self.gid is not None and self.gid != os.getgid()
        ):
            raise PermissionError("only root can switch to another user or group")

    def apply(self) -> None:
        """Become this identity: groups first (a non-root process may no longer change them)."""
        if self.gid is not None:
            if os.geteuid() == 0:
                if self.user is not None:
                    os.initgroups(self.user, self.gid)
                else:
                    os.setgroups([])
            os.setgid(self.gid)
        if self.uid is not None:
            os.setuid(self.uid)


def _lookup(
    by_name: Callable[[str], Any], by_id: Callable[[int], Any], value: str, kind: str
) -> Any:
    """An entry by name or number; a number without an entry is returned as is."""
    if value.isdigit():
        try:
            return by_id(int(value))
        except KeyError:
            return int(value)
    try:
        return by_name(value)
    except KeyError:
        raise ValueError(f"no such {kind}: {value!r}") from None


# -- gunicorn --------------------------------------------------------------------------


class HubApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn serving a Flask app in this process, with stream-friendly settings and hooks.

    Hooks: after the master binds its sockets it drops privileges (so the
    master and every worker it forks run as ``identity``) and prints where it
    listens; in each worker, SIGTERM (graceful stop) and SIGINT/SIGQUIT (quick
    stop) end the open streams so the worker can exit at once.
    """

    def __init__(
        self,
        app: Flask,
        options: Mapping[str, Any] | None = None,
        *,
        identity: Identity | None = None,
        banner: str = "flask-signal listening on {address}",
        path: str = "",
    ) -> None:
        self.application = app
        self.options = {**STREAM_SETTINGS, **(options or {})}
        self.identity = identity or Identity()
        self.banner = banner
        self.path = path
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if self.identity:
            # gunicorn would switch only the workers, and keep root's
            # supplementary groups; it still needs the ids so it neither
            # chowns its worker files nor switches again.
            if self.identity.uid is not None:
                self.cfg.set("user", self.identity.uid)
            if self.identity.gid is not None:
                self.cfg.set("group", self.identity.gid)
        self.cfg.set("when_ready", self._when_ready)
        self.cfg.set("post_worker_init", self._post_worker_init)
        self.cfg.set("worker_int", self._worker_int)

    def load(self) -> Flask:
        return self.application

    def _when_ready(self, arbiter: Any) -> None:
        # The sockets are bound: only now may a privileged port be given up.
        if self.identity:
            preload()
            self.identity.apply()
        for listener in arbiter.LISTENERS:
            print(self.banner.format(address=f"{listener}{self.path}"), flush=True)

    def _post_worker_init(self, worker: Any) -> None:
        tune_gc()
        # SIGTERM, SIGHUP and max_requests drain the worker's streams (see
        # flask_signal.drain), which watches this worker.
        drain.post_worker_init(worker)

    def _worker_int(self, worker: Any) -> None:
        end_streams(self.application)


def tune_gc() -> None:
    """Collect less often in a process that holds thousands of long-lived streams.

    Every full collection walks all of them, and a broadcast allocates enough
    to trigger collections; what the app loaded is frozen out of them, and
    the youngest generation allowed to grow before a pass.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit.

    Every stream is a socket: the common default soft limit of 1024 would cap a
    hub far below ``worker_connections``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(app: Flask, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """Run gunicorn on ``app`` until it is stopped; exits the process with gunicorn's status."""
    raise_fd_limit()
    HubApplication(app, options, **kwargs).run()
    sys.exit(0)
