"""The project's worker against hostile requests: each case sends its exact bytes.

A real gunicorn runs flask_signal.worker.GeventWorker (tests.worker_apps) and
is spoken to over raw sockets; every answer is read as the client sees it.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from flask_signal.http import Connection, HTTPServer
from tests.test_worker import Gunicorn, gunicorn

pytestmark = pytest.mark.timeout(60)

CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
HEADERS = b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    srv = gunicorn("tests.worker_apps:app")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def flask_server() -> Iterator[Gunicorn]:
    srv = gunicorn("tests.worker_apps:flask")
    yield srv
    srv.stop()


def exchange(srv: Gunicorn, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``data`` on a new connection: the first answer, and whether the server then closed."""
    with srv.connect() as client:
        client.send(data)
        status, headers, body = client.response()
        # A kept-alive connection stays open: only a close is waited for.
        closed = headers.get("connection") == "close" and client.closed()
        return status, headers, body, closed


def refused(srv: Gunicorn, data: bytes) -> int:
    status, headers, _, closed = exchange(srv, data)
    assert closed and headers["connection"] == "close"
    return status


# -- 1. trailers never reach the next request --------------------------------------------


def test_trailer_fields_do_not_leak_into_the_next_request(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(
            CHUNKED + b"2\r\nhi\r\n0\r\nAccept: text/html\r\nCookie: session=stolen\r\n"
            b"X-Forwarded-Proto: https\r\nX-Injected: 1\r\n\r\n" + HEADERS
        )
        status, _, body = client.response()
        assert status == 200 and json.loads(body)["body"] == "hi"
        status, _, body = client.response()
        assert status == 200
        assert json.loads(body) == {"HTTP_HOST": "t"}


@pytest.mark.parametrize("name", [b"Host", b"Authorization", b"Content-Length"])
def test_trailers_that_would_route_or_authorize_are_refused(server: Gunicorn, name: bytes) -> None:
    assert refused(server, CHUNKED + b"0\r\n" + name + b": x\r\n\r\n" + HEADERS) == 400


# -- 2. the trailer section is bounded -----------------------------------------------------


def test_an_endless_trailer_section_is_refused_with_431(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(CHUNKED + b"0\r\n")
        line = b"X-T: " + b"v" * 1000 + b"\r\n"
        with pytest.raises(OSError):  # the server stops reading and closes
            for _ in range(30_000):  # 30 MB
                client.send(line * 10)
        status, headers, _ = client.response()
    assert status == 431 and headers["connection"] == "close"


def test_one_endless_trailer_value_is_refused_and_others_are_served(server: Gunicorn) -> None:
    with server.connect() as client, server.connect() as other:
        client.send(CHUNKED + b"0\r\nX-T: ")
        with pytest.raises(OSError):
            for _ in range(30_000):
                client.send(b"v" * 1024)
        assert client.response()[0] == 431
        other.send(HEADERS)
        assert other.response()[0] == 200


# -- 3. nothing is read ahead behind an open stream -----------------------------------------


def test_requests_pipelined_behind_a_stream_wait_unread(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n" + HEADERS * 3)
        client.head()
        assert client.chunk() == b"first\n"
        server.get("/release")
        assert client.chunk() == b"second\n"
        assert client.chunk() == b""
        for _ in range(3):  # served in order once the stream ended
            assert client.response()[0] == 200


# -- 4. limits bite while a head arrives ---------------------------------------------------


def test_too_many_fields_are_refused_before_the_head_ends(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"GET /headers HTTP/1.1\r\n" + b"X-A: b\r\n" * 101)  # no end of head
        status, headers, _ = client.response()
        assert status == 431 and headers["connection"] == "close" and client.closed()


def test_an_oversized_field_is_refused_before_it_ends(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"GET /headers HTTP/1.1\r\nX-A: " + b"v" * 9000)
        assert client.response()[0] == 431 and client.closed()


# -- 5 to 8: framing as gunicorn reads it, refused before the app runs ----------------------


def test_http_1_0_with_transfer_encoding_is_refused(server: Gunicorn) -> None:
    data = (
        b"POST /echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    assert refused(server, data) == 400


def test_whitespace_around_values_is_trimmed(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2 \r\n\r\nhi")
        assert json.loads(client.response()[2])["body"] == "hi"
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                    b"2\r\nhi\r\n0\r\n\r\n")  # fmt: skip
        assert json.loads(client.response()[2])["body"] == "hi"


@pytest.mark.parametrize(
    "fields",
    [b"Host: a\r\nHost: b\r\n", b"Host: t\r\nContent-Type: a\r\nContent-Type: b\r\n",
     b"Host: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n"],
)  # fmt: skip
def test_duplicate_singleton_fields_are_refused(server: Gunicorn, fields: bytes) -> None:
    assert refused(server, b"POST /echo HTTP/1.1\r\n" + fields + b"\r\n") == 400


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        (CHUNKED + b"zz\r\nhi\r\n0\r\n\r\n", 400),
        (CHUNKED + b"2\nhi\r\n0\r\n\r\n", 400),
        (CHUNKED + b"2\r\nhi\n0\r\n\r\n", 400),
        (CHUNKED + b"2\rhi\r\n0\r\n\r\n", 400),
        (CHUNKED + b"2;x\ry\r\nhi\r\n0\r\n\r\n", 400),
        (CHUNKED + b"-2\r\nhi\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ],
)  # fmt: skip
def test_bad_framing_is_answered_before_the_app_runs(
    server: Gunicorn, data: bytes, status: int
) -> None:
    assert refused(server, data) == status


# -- 9. an Upgrade request keeps its body ------------------------------------------------------


def test_an_upgrade_request_keeps_its_body(flask_server: Gunicorn) -> None:
    body = b'{"a": [1, 2]}'
    status, _, answer, _ = exchange(
        flask_server,
        b"POST /json HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status == 200 and json.loads(answer) == {"got": {"a": [1, 2]}, "length": len(body)}


# -- 10. request lines, methods, response heads, limits --------------------------------------


@pytest.mark.parametrize("value", ["a%00b", "a%0Bb", "a%7Fb", "a%0D%0AX-Injected:%201"])
def test_control_characters_never_reach_a_response_head(server: Gunicorn, value: str) -> None:
    with server.connect() as client:
        client.send(f"GET /respond-with?{value} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, _ = client.response()
    assert status == 500 and "x-echo" not in headers and "x-injected" not in headers


@pytest.mark.parametrize(
    "line",
    [b"GET /headers HTTP/2.0", b"PRI * HTTP/2.0", b"GET /headers", b"GET * HTTP/1.1",
     b"GET  /headers HTTP/1.1", b"GET /headers  HTTP/1.1", b"get /headers HTTP/1.1"],
)  # fmt: skip
def test_request_lines_gunicorn_refuses_are_refused(server: Gunicorn, line: bytes) -> None:
    assert refused(server, line + b"\r\nHost: t\r\n\r\n") == 400


def test_an_unknown_method_gets_405_from_the_app(flask_server: Gunicorn) -> None:
    status, _, _, closed = exchange(flask_server, b"PURGE /json HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 405 and not closed


def test_an_early_answer_to_expect_100_announces_the_close(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"POST /headers HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n")  # fmt: skip
        status, headers, _ = client.response()
        assert status == 200 and headers["connection"] == "close"
        assert client.closed()


def test_the_line_limits_are_gunicorns(server: Gunicorn) -> None:
    line = b"GET /headers?" + b"a" * 4072 + b" HTTP/1.1"
    assert len(line) == 4094
    assert exchange(server, line + b"\r\nHost: t\r\n\r\n")[0] == 200
    assert refused(server, line.replace(b"?", b"?a") + b"\r\nHost: t\r\n\r\n") == 414
    field = b"X-A: " + b"v" * 8183 + b"\r\n"
    assert len(field) == 8190
    assert exchange(server, b"GET /headers HTTP/1.1\r\nHost: t\r\n" + field + b"\r\n")[0] == 200
    too_long = b"GET /headers HTTP/1.1\r\nHost: t\r\n" + field.replace(b": ", b": v") + b"\r\n"
    assert refused(server, too_long) == 431


def test_no_traceback_is_logged_for_client_input() -> None:
    srv = gunicorn("tests.worker_apps:app", "--log-level", "info")
    try:
        for data in (
            CHUNKED + b"zz\r\n",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab",  # cut short
        ):
            with srv.connect() as client:
                client.send(data)
                client.sock.shutdown(socket.SHUT_WR)
                while client.sock.recv(65536):
                    pass
    finally:
        srv.stop()
    log = srv.output()
    assert "Invalid request" in log and "Traceback" not in log


# -- 11. a closed connection is freed without the garbage collector ---------------------------


def test_a_closed_connection_is_freed_without_a_gc() -> None:
    connections: list[weakref.ref[Connection]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    http = HTTPServer(app, {}, logging.getLogger("test"))

    def handle(sock: Any, addr: Any) -> None:
        conn = Connection(http, sock, addr, ("127.0.0.1", "0"))
        connections.append(weakref.ref(conn))
        conn.serve()

    listener = StreamServer(("127.0.0.1", 0), handle)
    listener.start()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            client: Any = gevent.socket.create_connection(listener.address)
            client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            received = b""
            while not received.endswith(b"hi"):
                received += client.recv(1024)
            client.close()
        with gevent.Timeout(5):
            while any(ref() is not None for ref in connections):
                gevent.sleep(0.01)
    finally:
        gc.enable()
        listener.stop()
    assert len(connections) == 3


def test_an_app_keeping_the_environ_does_not_keep_the_connection() -> None:
    kept: list[dict[str, Any]] = []
    refs: list[weakref.ref[Connection]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        kept.append(environ)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    http = HTTPServer(app, {}, logging.getLogger("test"))

    def handle(sock: Any, addr: Any) -> None:
        conn = Connection(http, sock, addr, ("127.0.0.1", "0"))
        refs.append(weakref.ref(conn))
        conn.serve()

    listener = StreamServer(("127.0.0.1", 0), partial(handle))
    listener.start()
    gc.disable()
    try:
        client: Any = gevent.socket.create_connection(listener.address)
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert client.recv(1024).endswith(b"ok")
        client.close()
        with gevent.Timeout(5):
            while refs[0]() is not None:
                gevent.sleep(0.01)
        assert kept[0]["wsgi.input"].read() == b""  # over with its request
    finally:
        gc.enable()
        listener.stop()


# -- the time to receive a head -------------------------------------------------------------


def test_a_head_trickling_in_is_cut_off_at_the_keep_alive_time() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    http = HTTPServer(app, {}, logging.getLogger("test"), keepalive=0.5)
    listener = StreamServer(("127.0.0.1", 0), partial(http.handle, ("127.0.0.1", "0")))
    listener.start()
    sweeper = gevent.spawn(lambda: [(http.sweep(), gevent.sleep(0.1)) for _ in iter(int, 1)])
    try:
        client: Any = gevent.socket.create_connection(listener.address)
        client.sendall(b"GET / HTTP/1.1\r\n")
        sent = 0
        with pytest.raises(OSError), gevent.Timeout(10):
            while True:  # a field byte every 0.1 s: the head would take minutes
                client.sendall(b"X")
                sent += 1
                gevent.sleep(0.1)
                try:
                    closed = client._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    closed = False  # nothing to read: still open
                if closed:
                    raise ConnectionResetError("closed by the server")
    finally:
        sweeper.kill()
        listener.stop()
    assert 3 <= sent < 50  # cut off at the deadline, well before the head could end
