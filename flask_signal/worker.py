"""A gunicorn worker for streaming Flask apps: gevent, with the project's HTTP/1.1 server.

Use it as ``gunicorn -k flask_signal.worker.GeventWorker app:app``. It behaves
like ``-k gevent`` (same settings, hooks, heartbeat and graceful stop) but
serves HTTP/1.1 with :mod:`flask_signal.http` over the sans-IO parser of
:mod:`flask_signal.h1` (gunicorn's rules, limits that bite while bytes
arrive) instead of gunicorn's request machinery, which is most of the
per-request cost of ``-k gevent``. It speaks HTTP/1.x only: no HTTP/2, no
proxy protocol.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import SERVER, config
from gunicorn.http.wsgi import base_environ
from gunicorn.sock import ssl_context
from gunicorn.workers import ggevent

from .http import HTTPServer, Request, ResponseInfo
from .state import EXTENSION_KEY
from .streaming import DEAD_PEER_ENV, detect_dead_peers

__all__ = ["GeventWorker"]


def _trust_check(cfg: Any) -> Callable[[Any], bool]:
    """A predicate telling whether a peer may set the scheme and forwarder headers.

    gunicorn's forwarded_allow_ips rule, answered once per address.
    """
    allowed = [ip.strip() for ip in cfg.forwarded_allow_ips]
    if "*" in allowed:
        return lambda addr: True
    try:
        networks = cfg.forwarded_allow_networks()
    except AttributeError:  # a gunicorn without network entries
        networks = []
    known: dict[str, bool] = {}

    def trusted(addr: Any) -> bool:
        if not isinstance(addr, tuple):
            return True  # a unix socket: only local processes reach it
        ip = addr[0]
        found = known.get(ip)
        if found is None:
            try:
                address = ipaddress.ip_address(ip)
                found = ip in allowed or any(address in net for net in networks)
            except ValueError:
                found = False
            if len(known) < 1024:
                known[ip] = found
        return found

    return trusted


def _dead_peer_timeout(app: Any) -> float:
    """The dead-peer timeout of the flask_signal app served, 0 if there is none to be seen."""
    state = getattr(app, "extensions", {}).get(EXTENSION_KEY)
    return float(getattr(getattr(state, "settings", None), "dead_peer_timeout", 0.0) or 0.0)


def _listener_info(sock: Any) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT for requests on ``sock``."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        return str(name[0]), str(name[1])
    return "localhost", ""  # a unix socket


class GeventWorker(ggevent.GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, serving HTTP/1.1 through :class:`~flask_signal.http.HTTPServer`."""

    http: HTTPServer | None = None
    alive: bool  # set by gunicorn's Worker; the signal handlers clear it

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse settings this worker cannot honour (gunicorn's arbiter calls this at start)."""
        h_protocols = ",".join(getattr(cfg, "http_protocols", None) or ["h1"])
        unsupported = [
            f"--{name.replace('_', '-')} {value}"
            for name, value, fine in (
                ("protocol", getattr(cfg, "protocol", "http"), ("http",)),
                ("proxy_protocol", getattr(cfg, "proxy_protocol", "off"), ("off", "False", "None")),
                ("http_protocols", h_protocols, ("h1",)),
            )
            if str(value) not in fine
        ]
        if unsupported:
            # Serving these as HTTP/1.1 would garble every request: refuse to start.
            log.error(
                "%s serves plain HTTP/1.x only; use -k gevent for %s",
                cls.__name__,
                ", ".join(unsupported),
            )
            sys.exit(1)

    def make_server(self) -> HTTPServer:
        """The HTTP server of this process, configured from gunicorn's settings."""
        cfg = self.cfg
        environ = base_environ(cfg)
        environ["wsgi.multithread"] = True
        pre = cfg.pre_request
        post = cfg.post_request
        on_request = None
        after_request = None
        if pre is not config.PreRequest.default:

            def on_request(req: Request) -> None:
                pre(self, req)

        if post is not config.PostRequest.default:

            def after_request(req: Request, env: dict[str, Any], resp: ResponseInfo | None) -> None:
                post(self, req, env, resp)

        access = self.log.access if getattr(self.log, "access_log_enabled", True) else None
        return HTTPServer(
            self.wsgi,
            environ,
            self.log,
            keepalive=cfg.keepalive,
            limit_request_line=cfg.limit_request_line,
            limit_request_fields=cfg.limit_request_fields,
            limit_request_field_size=cfg.limit_request_field_size,
            header_map=getattr(cfg, "header_map", "refuse"),
            forwarder_headers=getattr(cfg, "forwarder_headers", ()),
            secure_scheme_headers=cfg.secure_scheme_headers,
            trusted_proxy=_trust_check(cfg),
            # init_process has put the `env` setting into os.environ by now
            script_name=os.environ.get("SCRIPT_NAME", ""),
            max_requests=self.max_requests,
            server_header=SERVER,
            on_request=on_request,
            after_request=after_request,
            access=access,
        )

    def run(self) -> None:
        self.http = http = self.make_server()
        # Streams find vanished clients with TCP keep-alive options: set once on
        # the listeners, which every accepted socket inherits, rather than per stream.
        timeout = _dead_peer_timeout(self.wsgi)
        inet = [sock for sock in self.sockets if sock.family in (socket.AF_INET, socket.AF_INET6)]
        if timeout > 0 and inet and all(detect_dead_peers(sock, timeout) for sock in inet):
            http.environ[DEAD_PEER_ENV] = timeout
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for sock in self.sockets:
            sock.setblocking(1)
            server = StreamServer(
                sock,
                handle=partial(http.handle, _listener_info(sock)),
                spawn=Pool(self.worker_connections),
                **ssl_args,
            )
            if self.cfg.workers > 1:
                server.max_accept = 1  # leave the next connection to a sibling
            server.start()
            servers.append(server)

        while self.alive and http.alive:
            self.notify()
            gevent.sleep(1.0)
            http.sweep()
        self.alive = False
        http.alive = False

        for server in servers:
            server.close()  # stop accepting
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            # Connections waiting for a next request would wait out their
            # keep-alive: end them; those in a request close after it.
            http.sweep(0)
            if all(server.pool.free_count() == server.pool.size for server in servers):
                return
            self.notify()
            gevent.sleep(0.1)
        self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
        for server in servers:
            server.stop(timeout=1)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self.http is not None:
            self.http.alive = False
