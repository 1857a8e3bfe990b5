"""Serve requests in the order they arrived, across connections.

A client that sends requests one after another, each on a new connection (as
moshpit does for every write), expects them handled in that order. Under
gevent they may not be: the server accepts both connections before their
bytes arrive, each greenlet then waits on a read watcher, and when both turn
readable in one turn of the loop, libev runs its pending watchers last-queued
first, so the later request is served first (a bare gevent ``StreamServer``
does the same).

The remedy here is on the accept path: ``TCP_DEFER_ACCEPT`` on the listening
sockets makes the kernel hand over a connection only once its first bytes
are in. Connections are then accepted in the order their requests arrived,
and each greenlet, started in accept order, finds its request already there
and handles it before the next one runs. Linux only (elsewhere nothing is
done); a request whose head comes in several packets may still wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat

log = logging.getLogger("flask_signal")

#: Seconds the kernel waits for a silent connection's first bytes before
#: handing it over anyway.
DEFER_SECONDS = 1


def defer_accept(fds: list[int] | None = None) -> int:
    """Set ``TCP_DEFER_ACCEPT`` on this process's listening TCP sockets; returns how many.

    ``fds`` defaults to every descriptor of the process (Linux's ``/proc/self/fd``):
    whichever server runs the app, its listeners are among them.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None:
        return 0
    if fds is None:
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            return 0
    count = 0
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            # A duplicate to inspect: closing it leaves the server's socket alone.
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with contextlib.closing(sock):
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                ):
                    sock.setsockopt(socket.IPPROTO_TCP, option, DEFER_SECONDS)
                    count += 1
            except OSError as exc:
                log.debug("cannot defer accepts on fd %d: %s", fd, exc)
    return count
