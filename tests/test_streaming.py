"""EventStream's direct writes, in-process: flask_signal.http serving one stream to a socket."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
import requests
import urllib3
from flask import Flask
from gevent.server import StreamServer

from flask_signal import Signal
from flask_signal.http import HTTPServer
from flask_signal.hub import Stream
from flask_signal.streaming import (
    START_RESPONSE,
    EventStream,
    capture_start_response,
    direct_socket,
)
from tests.servers import start_gunicorn
from tests.support import Peer, start_server

pytestmark = pytest.mark.timeout(20)


class Served:
    """One stream served over HTTP/1.1 on a free port, and the client connected to it."""

    def __init__(self) -> None:
        self.stream = Stream(100)
        self.closed: list[bool] = []
        http = HTTPServer(capture_start_response(self.app), {}, logging.getLogger("test"))
        self.server = StreamServer(("127.0.0.1", 0), partial(http.handle, ("127.0.0.1", "0")))
        self.server.start()
        self.client: Any = gevent.socket.socket()
        # Far below the 8 MB frame below, so that it cannot be sent whole, yet
        # not so small that its transfer takes thousands of round trips on a
        # busy machine (set before connecting: shrinking an open connection's
        # window stalls it).
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.client.connect(self.server.address)
        self.received = b""

    def app(self, environ: dict[str, Any], start_response: Any) -> EventStream:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return EventStream(self.stream, on_close=partial(self.closed.append, True), environ=environ)

    def read_until(self, marker: bytes) -> bytes:
        with gevent.Timeout(10):
            while marker not in self.received:
                data = self.client.recv(65536)
                assert data, f"closed; received {self.received!r}"
                self.received += data
        got, _, self.received = self.received.partition(marker)
        return got + marker

    def wait_writer(self) -> None:
        """Until the response has sent its first frame and waits for the next."""
        with gevent.Timeout(5):
            while not self.stream.direct:
                gevent.sleep(0.005)

    def close(self) -> None:
        self.client.close()
        with gevent.Timeout(5):
            while not self.closed:
                gevent.sleep(0.005)
        self.server.stop()


@pytest.fixture
def served() -> Iterator[Served]:
    served = Served()
    served.client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    served.stream.put(b"first\n\n")
    head = served.read_until(b"first\n\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
    served.wait_writer()
    yield served
    served.close()


def test_a_frame_for_an_idle_stream_is_sent_by_the_greenlet_that_puts_it(served: Served) -> None:
    assert served.stream.put(b"second\n\n")
    # No other greenlet ran since put(): the chunk is already at the client.
    assert served.client._sock.recv(100, socket.MSG_DONTWAIT) == b"8\r\nsecond\n\n\r\n"


def test_a_write_cut_short_is_finished_before_later_frames(served: Served) -> None:
    big = b"data: " + b"z" * (8 << 20) + b"\n\n"  # more than both ends' buffers hold
    assert served.stream.put(big)
    assert served.stream.direct and served.stream.pending() == 0
    # Queued behind the rest of `big`, which the response's greenlet sends.
    assert served.stream.put(b"after\n\n")
    assert served.stream.pending() == 1
    expected = b"%x\r\n%b\r\n" % (len(big), big) + b"7\r\nafter\n\n\r\n"
    assert served.read_until(b"after\n\n\r\n") == expected
    # Idle again: direct once more.
    gevent.sleep(0.05)
    assert served.stream.put(b"again\n\n")
    assert served.client._sock.recv(100, socket.MSG_DONTWAIT) == b"7\r\nagain\n\n\r\n"


def test_a_client_gone_ends_the_stream_on_the_next_direct_write(served: Served) -> None:
    served.client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    served.client._sock.close()  # a reset, before the server's close watcher runs
    while served.stream.put(b"x\n\n"):
        pass  # the first write may still be accepted by the kernel
    assert served.stream.end_reason == "disconnected"
    served.client = gevent.socket.socket()  # for close()


def test_no_direct_socket_for_unknown_servers() -> None:
    assert direct_socket({}) is None
    assert direct_socket({START_RESPONSE: lambda status, headers: None}) is None

    class Response:  # a look-alike, but not a server whose framing is known
        headers_sent = True
        chunked = True
        sock = gevent.socket.socket()

    assert direct_socket({START_RESPONSE: Response().__init__}) is None


def test_a_server_offers_direct_writes_by_the_protocol() -> None:
    """Any server whose response writer has ``direct_socket()`` (DirectWrites) may take them."""
    plain = gevent.socket.socket()

    class Writer:
        sent = False

        def direct_socket(self) -> tuple[socket.socket, bool] | None:
            return (plain._sock, False) if self.sent else None

        def start_response(self, status: str, headers: list[tuple[str, str]]) -> None:
            self.sent = True

    writer = Writer()
    environ = {START_RESPONSE: writer.start_response}
    assert direct_socket(environ) is None  # nothing sent yet
    writer.start_response("200 OK", [])
    assert direct_socket(environ) == (plain._sock, False)
    plain.close()


def test_streams_over_tls_are_written_through_the_tls_socket(tmp_path: Path) -> None:
    """Direct writes never bypass TLS: frames reach a TLS client intact."""
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = start_gunicorn(
        "tests.apps:create_app()",
        *("--certfile", str(cert), "--keyfile", str(key), "--log-level", "warning"),
        env={"SIGNAL_TEST_SETTINGS": "{}"},
        log=tmp_path / "server.log",
    )
    deadline = time.monotonic() + 20
    while True:  # until a worker answers, over TLS
        try:
            requests.get(f"https://127.0.0.1:{srv.port}/_test/stats", verify=False, timeout=5)
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.05)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        with context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"GET /signal HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            received = b""
            while b"\n\n" not in received.partition(b"event: connect\n")[2]:
                received += client.recv(65536)
            data_line = received.partition(b"event: connect\ndata: ")[2].partition(b"\n")[0]
            connect = json.loads(data_line)
            for n in range(3):  # each finds the stream idle, as direct writes would want
                answer = requests.post(
                    f"https://127.0.0.1:{srv.port}/signal/{connect['id']}",
                    json={"token": connect["token"], "data": {"n": n}},
                    verify=False,
                    timeout=5,
                )
                assert answer.status_code == 200, answer.text
                frame = b'event: signal\ndata: {"n":%d}\n\n' % n
                while frame not in received:
                    received += client.recv(65536)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("settings", "server", "direct"),
    [
        ({}, "gevent", 2),
        ({}, "flask_signal.worker.GeventWorker", 2),
        ({"direct_writes": False}, "gevent", 0),
        ({}, "pywsgi", 0),
    ],
)
def test_which_streams_take_direct_writes(
    tmp_path: Path, settings: dict[str, Any], server: str, direct: int
) -> None:
    """Under both gunicorn workers (gunicorn's through its adapter, the project's
    through its own DirectWrites), unless turned off; never under a server that
    does not offer them."""
    if server == "pywsgi":
        srv = start_server(tmp_path, settings, server=server)
    else:
        srv = start_server(tmp_path, settings, worker_class=server)
    peers: list[Peer] = []
    try:
        initiator = Peer.open(srv.url)
        peers.append(initiator)
        peer = Peer.open(f"{srv.url}/{initiator.id}")
        peers.append(peer)
        assert initiator.sse.next().event == "join"
        deadline = time.monotonic() + 3
        while srv.stats()["direct"] != direct and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.stats()["direct"] == direct
        for n in range(3):
            assert peer.post(srv.url, {"n": n}).status_code == 200
            assert initiator.sse.next().json() == {"n": n}
            assert peer.sse.next().json() == {"n": n}
    finally:
        for each in peers:
            each.close()
        srv.stop()


def test_direct_writes_setting_is_a_bool() -> None:
    with pytest.raises(ValueError, match="SIGNAL_DIRECT_WRITES"):
        Signal(Flask(__name__), direct_writes="no")
