"""What one connection can make the server hold, in each state (docs/http-server.md).

The server runs in this process (flask_signal.http on a gevent StreamServer)
and is measured with tracemalloc (every Python allocation made with the
server's code on the stack: buffers, bytes, objects) and with its own count
of the bytes its connections hold; the heads case is also measured as the
RSS of a real worker process.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from flask_signal import h1
from flask_signal import http as http_server
from flask_signal.h1 import Limits
from flask_signal.http import HTTPServer
from tests.test_worker import gunicorn

pytestmark = pytest.mark.timeout(120)

KIB = 1024
RECEIVE = 64 * KIB  # one receive of the server
LIMITS = Limits().resolved()
CONNECTIONS = 8
# What any connection costs whatever it does (greenlet, socket, parser, environ).
FIXED = 16 * KIB


class Served:
    """flask_signal.http serving ``app`` in this process; clients are gevent sockets."""

    def __init__(self) -> None:
        self.release = Event()
        self.http = HTTPServer(self.app, {}, logging.getLogger("test"), keepalive=60)
        self.listener = StreamServer(("127.0.0.1", 0), partial(self.http.handle, ("h", "0")))
        self.listener.start()
        self.clients: list[Any] = []

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/read":  # reads its whole body
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/wait":  # answers once released, the body unread
            self.release.wait()
            start_response("200 OK", [("Content-Length", "0")])
            return []
        if path == "/stream":  # a stream of 64 KiB chunks, for as long as it is read
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return iter(lambda: b"s" * RECEIVE, None)
        if path == "/open":  # a stream that stays open and idle
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return self._open()
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    def _open(self) -> Iterator[bytes]:
        yield b"open\n"
        self.release.wait()

    def connect(self) -> Any:
        client = gevent.socket.create_connection(self.listener.address)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.clients.append(client)
        return client

    def close(self) -> None:
        self.release.set()
        for client in self.clients:
            client.close()
        self.listener.stop()


@pytest.fixture
def served() -> Iterator[Served]:
    srv = Served()
    yield srv
    srv.close()


def send_for(client: Any, data: bytes, seconds: float = 0.5) -> int:
    """Send as much of ``data`` as the connection takes within ``seconds``; bytes sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            with gevent.Timeout(max(0.01, deadline - time.monotonic())):
                sent += client.send(view[sent : sent + RECEIVE])
        except gevent.Timeout:
            break
        except OSError:
            break
    return sent


#: Allocations made with the server's code on the stack: a connection's greenlet runs
#: from HTTPServer.handle, so everything it allocates is counted, while whatever else
#: this process runs meanwhile (the test's clients, other suites' background loops) is not.
SERVER_CODE = [
    tracemalloc.Filter(True, module.__file__ or "", all_frames=True) for module in (http_server, h1)
]


def server_bytes() -> int:
    snapshot = tracemalloc.take_snapshot().filter_traces(SERVER_CODE)
    return sum(stat.size for stat in snapshot.statistics("filename"))


def measure(srv: Served, put_in_state: Callable[[Any], None]) -> tuple[int, int]:
    """Per connection: Python memory the server allocated and bytes it says it holds."""
    # Warm up first: what the first connection imports or caches is no connection's.
    warm = gevent.socket.create_connection(srv.listener.address)
    warm.sendall(b"GET /read HTTP/1.1\r\nHost: t\r\n\r\n")
    assert warm.recv(1024).startswith(b"HTTP/1.1 200 ")
    warm.close()
    tracemalloc.start(64)
    try:
        gevent.sleep(0.1)
        before = server_bytes()
        for _ in range(CONNECTIONS):
            put_in_state(srv.connect())
        gevent.sleep(0.3)  # let the server receive and parse what it will
        grown = server_bytes() - before
    finally:
        tracemalloc.stop()
    return grown // CONNECTIONS, srv.http.held() // CONNECTIONS


def test_an_idle_kept_alive_connection_costs_little(served: Served) -> None:
    def idle(client: Any) -> None:
        client.sendall(b"GET /read HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.1 200 ")

    per_connection, held = measure(served, idle)
    assert held == 0 and per_connection < FIXED


def test_reading_a_head(served: Served) -> None:
    # Just under the head limit, with fields of the largest size, never ended.
    line = b"X-F: " + b"v" * (LIMITS.field_size - 7) + b"\r\n"
    head = b"GET /read HTTP/1.1\r\n" + line * (LIMITS.fields - 1)

    per_connection, held = measure(served, lambda client: client.sendall(head))
    assert len(head) - RECEIVE <= held <= LIMITS.head
    # The measure sees the server's buffers: what it holds was allocated by its code.
    assert per_connection >= held
    assert per_connection <= LIMITS.head * 9 // 8 + RECEIVE + FIXED
    # One more field line and it is refused, and freed.
    client = served.clients[0]
    client.sendall(line * 2)
    assert client.recv(1024).startswith(b"HTTP/1.1 431 ")


def test_a_head_of_small_fields_is_refused_long_before_its_bytes_add_up(served: Served) -> None:
    def many_fields(client: Any) -> None:
        send_for(client, b"GET /read HTTP/1.1\r\n" + b"X-a: b\r\n" * 100_000)

    per_connection, held = measure(served, many_fields)
    assert held == 0 and per_connection < FIXED
    assert served.clients[0].recv(1024).startswith(b"HTTP/1.1 431 ")


def test_reading_a_body(served: Served) -> None:
    def unread_body(client: Any) -> None:
        head = b"POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n"
        send_for(client, head + b"b" * 10_000_000, seconds=0.2)

    per_connection, held = measure(served, unread_body)
    assert held <= RECEIVE
    assert per_connection <= RECEIVE + FIXED


def test_reading_trailers(served: Served) -> None:
    trailers = b"X-T: " + b"v" * 1000 + b"\r\n"

    def endless_trailers(client: Any) -> None:
        client.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.sendall(b"2\r\nhi\r\n0\r\n" + trailers * 31)  # within the limit, not ended

    per_connection, held = measure(served, endless_trailers)
    assert 31 * len(trailers) <= held <= LIMITS.trailers
    assert per_connection <= LIMITS.trailers * 9 // 8 + RECEIVE + FIXED
    client = served.clients[0]
    send_for(client, trailers * 300)  # past the limit: refused
    assert client.recv(1024).startswith(b"HTTP/1.1 431 ")


def test_pipelined_requests_behind_an_open_stream(served: Served) -> None:
    def pipelined(client: Any) -> None:
        client.sendall(b"GET /open HTTP/1.1\r\nHost: t\r\n\r\n")
        send_for(client, b"GET /read HTTP/1.1\r\nHost: t\r\n\r\n" * 100_000, seconds=0.2)

    per_connection, held = measure(served, pipelined)
    assert held <= RECEIVE
    assert per_connection <= RECEIVE + FIXED


def test_a_stream_that_is_not_read(served: Served) -> None:
    def not_reading(client: Any) -> None:
        client.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")

    per_connection, held = measure(served, not_reading)
    # The write in progress (a chunk and its framing), nothing queued behind it.
    assert held == 0 and per_connection <= 2 * RECEIVE + FIXED


# -- a real worker ------------------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


def test_a_workers_rss_with_unfinished_heads_stays_within_the_bound() -> None:
    srv = gunicorn("tests.worker_apps:app")
    try:
        (pid,) = srv.worker_pids()
        srv.get("/headers")
        before = rss(pid)
        line = b"X-F: " + b"v" * (LIMITS.field_size - 7) + b"\r\n"
        head = b"GET /headers HTTP/1.1\r\n" + line * 99  # 815 KB, never ended
        clients = []
        for _ in range(20):
            client = socket.create_connection(("127.0.0.1", srv.port))
            client.sendall(head)
            clients.append(client)
        tiny = []
        for _ in range(20):  # the 815 KB of small fields: refused early
            client = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            with contextlib.suppress(OSError):
                client.sendall(b"GET /headers HTTP/1.1\r\n" + b"X-a: b\r\n" * 100_000)
            tiny.append(client)
        time.sleep(1)
        grown = rss(pid) - before
        assert grown <= 20 * (LIMITS.head * 9 // 8 + RECEIVE) + 8 * 1024 * KIB
        for client in tiny:
            assert client.recv(1024).startswith(b"HTTP/1.1 431 ")
        for client in clients + tiny:
            client.close()
    finally:
        srv.stop()
