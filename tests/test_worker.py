"""flask_signal.worker.GeventWorker under a real gunicorn, spoken to over raw sockets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, SIGNAL_WORKER, Process, free_port, start_gunicorn

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
WORKER = SIGNAL_WORKER


class Gunicorn(Process):
    """A gunicorn master with one GeventWorker, in a subprocess."""

    def connect(self) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=5))

    def get(self, path: str) -> Any:
        with self.connect() as client:
            client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, _, body = client.response()
            assert status == 200, body
            return json.loads(body)


def gunicorn(app: str, *args: str, env: dict[str, str] | None = None) -> Gunicorn:
    """gunicorn with one GeventWorker serving ``app``; ``args`` go to its command line."""
    args = ("--graceful-timeout", "5", "--keep-alive", "5", *args)
    return start_gunicorn(app, *args, worker_class=WORKER, env=env, cls=Gunicorn)


class Client:
    """A raw HTTP/1.1 connection with a small response reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buf += data
        return data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._more():
                raise EOFError(f"closed before {marker!r}; got {self.buf!r}")
        out, _, self.buf = self.buf.partition(marker)
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict[str, str]]:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last one)."""
        size = int(self._until(b"\r\n"), 16)
        data = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return data

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        if head_only:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while piece := self.chunk():
                body += piece
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:
            while self._more():
                pass
            body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server has closed the connection (after what was buffered)."""
        return not self.buf and self.sock.recv(1) == b""


HOOKS = """
def pre_request(worker, req):
    with open(LOG, "a") as f:
        f.write(f"pre {req.method} {req.path}\\n")

def post_request(worker, req, environ, resp):
    with open(LOG, "a") as f:
        f.write(f"post {req.method} {req.path} {resp.status}\\n")
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker")


@pytest.fixture(scope="module")
def server(logs: Path) -> Iterator[Gunicorn]:
    hooks = logs / "hooks.py"
    hooks.write_text(f"LOG = {str(logs / 'hooks.log')!r}\n" + HOOKS)
    srv = gunicorn(
        "tests.worker_apps:app", "-c", str(hooks), "--access-logfile", str(logs / "access.log")
    )
    yield srv
    assert srv.stop() == 0


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


def test_keep_alive_serves_several_requests_on_one_connection(server: Gunicorn) -> None:
    with server.connect() as client:
        for i in range(5):
            client.send(get(f"/environ?n={i}"))
            status, headers, body = client.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert json.loads(body)["QUERY_STRING"] == f"n={i}"
        assert "date" in headers and headers["server"] == "gunicorn"


def test_pipelined_requests_are_answered_in_order(server: Gunicorn) -> None:
    body = b"pipelined body"
    post = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with server.connect() as client:
        client.send(get("/environ?a") + post + get("/environ?b"))
        answers = [json.loads(client.response()[2]) for _ in range(3)]
    assert answers[0]["QUERY_STRING"] == "a"
    assert answers[1] == {"method": "POST", "length": len(body), "body": body.decode()}
    assert answers[2]["QUERY_STRING"] == "b"


def test_chunked_request_body_is_read_whole_and_counted(server: Gunicorn) -> None:
    parts = [b"hello ", b"chunked\n", b"world" * 1000]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with server.connect() as client:
        client.send(head)
        time.sleep(0.05)  # the body comes later, in pieces
        for i in range(0, len(chunked), 1000):
            client.send(chunked[i : i + 1000])
        status, _, body = client.response()
        assert status == 200
        assert json.loads(body)["length"] == sum(map(len, parts))
        # read(3) in a loop and readline() see the same bytes
        client.send(head.replace(b"/echo", b"/chunks") + chunked)
        assert json.loads(client.response()[2])["body"] == b"".join(parts).decode()
        client.send(head.replace(b"/echo", b"/echo?lines") + chunked)
        assert json.loads(client.response()[2])["body"] == b"".join(parts).decode()


def test_unread_body_is_skipped_before_the_next_request(server: Gunicorn) -> None:
    body = b"x" * 5000
    with server.connect() as client:
        client.send(b"POST /environ HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + body)
        assert client.response()[0] == 200
        client.send(get("/environ?after"))
        assert json.loads(client.response()[2])["QUERY_STRING"] == "after"


def test_http_1_0_closes_unless_keep_alive(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/environ", version="1.0"))
        status, headers, body = client.response()
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["SERVER_PROTOCOL"] == "HTTP/1.0"
        assert client.closed()
    with server.connect() as client:
        for _ in range(2):
            client.send(get("/environ", "Connection: keep-alive\r\n", version="1.0"))
            status, headers, _ = client.response()
            assert status == 200 and headers["connection"] == "keep-alive"
        # no length known: HTTP/1.0 gets the body delimited by the close
        client.send(get("/nolength", "Connection: keep-alive\r\n", version="1.0"))
        status, headers, body = client.response()
        assert body == b"abcdef" and "transfer-encoding" not in headers
        assert client.closed()


def test_head_sends_no_body_and_keeps_the_connection(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(b"HEAD /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = client.response(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        client.send(get("/environ?next"))
        status, _, body = client.response()  # a HEAD body would corrupt this one
        assert json.loads(body)["QUERY_STRING"] == "next"


def test_expect_100_continue(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert client.head() == (100, {})
        client.send(b"ping")
        status, _, body = client.response()
        assert status == 200 and json.loads(body)["body"] == "ping"


def test_app_error_is_a_500_and_the_connection_goes_on(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/error"))
        status, _, body = client.response()
        assert status == 500 and body == b"Internal Server Error"
        client.send(get("/oserror"))
        assert client.response()[0] == 500
        client.send(get("/environ?after"))
        assert json.loads(client.response()[2])["QUERY_STRING"] == "after"


def test_streamed_chunks_arrive_as_they_are_yielded(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/stream"))
        status, headers = client.head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        # the app now waits for /release: the first chunk must be here already
        assert client.chunk() == b"first\n"
        assert server.get("/release") == {"released": True}
        assert client.chunk() == b"second\n"
        assert client.chunk() == b""
        client.send(get("/environ?after"))  # the connection is still usable
        assert json.loads(client.response()[2])["QUERY_STRING"] == "after"


def test_write_callable_and_empty_chunks(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/write") + get("/nolength"))
        assert client.response()[2] == b"written,returned"
        assert client.response()[2] == b"abcdef"


def test_large_bodies_and_content_length_kept_by_the_server(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/big?300000") + get("/bigstream") + get("/overlong"))
        assert client.response()[2] == b"x" * 300_000
        assert client.response()[2] == b"a" * 100_000 + b"b" * 10
        # cut at the announced length, and the connection goes on
        assert client.response()[2] == b"abcde"
        client.send(get("/short"))
        _, headers = client.head()
        assert headers["content-length"] == "10"
        with pytest.raises(EOFError):  # 3 bytes, then the close tells the client
            client._exactly(10)


def wait_for(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_close_is_called_when_the_client_disconnects(server: Gunicorn) -> None:
    before = server.get("/state")["closed"]
    client = server.connect()
    client.send(get("/ticks"))
    client.head()
    assert client.chunk() == b"tick\n"
    client.sock.close()
    wait_for(lambda: server.get("/state")["closed"] > before)


def test_gunicorn_socket_shows_the_clients_eof_while_streaming(server: Gunicorn) -> None:
    before = server.get("/state")
    client = server.connect()
    client.send(get("/watch"))
    client.head()
    assert client.chunk() == b"watching\n"
    client.sock.close()
    wait_for(lambda: server.get("/state")["eof_seen"] > before["eof_seen"])
    wait_for(lambda: server.get("/state")["closed"] > before["closed"])


def test_environ(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(
            b"POST /environ/caf%C3%A9%20x?q=%20a&b=2 HTTP/1.1\r\nHost: example.org:81\r\n"
            b"X-Multi: one\r\nX-Multi: two\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        env = json.loads(client.response()[2])
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/environ/caf\u00c3\u00a9 x"  # UTF-8 bytes read as latin-1
    assert env["QUERY_STRING"] == "q=%20a&b=2"
    assert env["RAW_URI"] == "/environ/caf%C3%A9%20x?q=%20a&b=2"
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_X_MULTI"] == "one,two"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "0"
    assert env["HTTP_HOST"] == "example.org:81"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(server.port))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and int(env["REMOTE_PORT"]) > 0
    assert env["wsgi.url_scheme"] == "http" and env["wsgi.input_terminated"] is True
    assert env["version"] == [1, 0] and env["wsgi.multithread"] is True
    assert env["socket"] is True and env["greenlet"] is True


def test_headers_with_underscores_and_a_proxy_set_script_name(server: Gunicorn) -> None:
    with server.connect() as client:
        # gunicorn's rules: X_Multi would pass for X-Multi, so it is dropped;
        # SCRIPT_NAME is a forwarder header a trusted proxy (127.0.0.1) may set.
        client.send(get("/mount/environ", "X_Multi: sneaky\r\nSCRIPT_NAME: /mount\r\n"))
        env = json.loads(client.response()[2])
    assert env["HTTP_X_MULTI"] is None
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mount", "/environ")


def test_bad_requests(server: Gunicorn) -> None:
    with server.connect() as client:
        client.send(get("/" + "a" * 5000))
        status, headers, _ = client.response()
        assert status in (400, 414) and headers["connection"] == "close"
        assert client.closed()
    with server.connect() as client:
        client.send(get("/environ", "".join(f"X-H{i}: v\r\n" for i in range(150))))
        assert client.response()[0] == 431
    with server.connect() as client:
        client.send(get("/environ", "X-Big: " + "v" * 9000 + "\r\n"))
        assert client.response()[0] == 431
    with server.connect() as client:
        client.send(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, _ = client.response()
        assert status == 400 and client.closed()
    with server.connect() as client:
        # a good request still answered before the garbage that follows it
        client.send(get("/environ?ok") + b"\x00garbage\r\n\r\n")
        assert client.response()[0] == 200
        assert client.response()[0] == 400


def test_flask_app_runs_unchanged() -> None:
    srv = gunicorn("tests.worker_apps:flask", "--keep-alive", "1", env={"SCRIPT_NAME": "/mnt"})
    try:
        with srv.connect() as client:
            payload = json.dumps({"a": [1, 2]}).encode()
            client.send(
                b"POST /mnt/json HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
            )
            status, _, body = client.response()
            assert status == 200
            assert json.loads(body) == {"got": {"a": [1, 2]}, "length": len(payload)}
            client.send(get("/mnt/hello/w%C3%B6rld?x=1"))
            assert json.loads(client.response()[2]) == {"hello": "w\u00f6rld", "args": {"x": "1"}}
            client.send(get("/elsewhere"))
            assert client.response()[0] == 404
        with srv.connect() as client:
            client.send(get("/mnt/hello/idle"))
            assert client.response()[0] == 200
            client.sock.settimeout(4)  # keep-alive is 1 s: the server ends it first
            assert client.closed()
        with srv.connect() as client:
            # a head that trickles in gets no more time in all than keep-alive
            client.send(b"GET /mnt/hello/slow HTTP/1.1\r\n")
            with pytest.raises(OSError):
                for _ in range(40):
                    time.sleep(0.1)
                    client.send(b"X-Slow: 1\r\n")
    finally:
        assert srv.stop() == 0


def test_sigterm_lets_in_flight_requests_finish_and_exits_0() -> None:
    srv = gunicorn("tests.worker_apps:app", "--max-requests", "0")
    try:
        idle = srv.connect()  # a keep-alive connection between requests
        idle.send(get("/environ"))
        idle.response()
        busy = srv.connect()
        busy.send(get("/slow?1.0"))
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        status, headers, body = busy.response()
        assert status == 200 and json.loads(body) == {"slow": True}
        assert headers["connection"] == "close"
        assert idle.closed()  # ended without waiting out its keep-alive
        assert srv.proc.wait(10) == 0
    finally:
        srv.stop()


def test_sigterm_ends_endless_streams_after_the_graceful_timeout() -> None:
    srv = gunicorn("tests.worker_apps:app", "--graceful-timeout", "1")
    try:
        stream = srv.connect()
        stream.send(get("/ticks"))
        assert stream.head()[0] == 200
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        while stream.chunk():  # ticks until the worker ends the stream, then EOF
            pass
    except (EOFError, ConnectionError):
        pass  # cut without the last chunk: the stream was ended by force
    finally:
        srv.stop()


def test_max_requests_restarts_the_worker() -> None:
    srv = gunicorn("tests.worker_apps:app", "--max-requests", "3")
    try:
        first = srv.get("/state")["pid"]
        for _ in range(2):
            srv.get("/state")
        wait_for(lambda: srv.get("/state")["pid"] != first, timeout=10)
    finally:
        assert srv.stop() == 0


def test_streams_and_requests_concurrently(server: Gunicorn) -> None:
    """Many clients at once: each gets its own answers, none blocks another."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            with server.connect() as client:
                for i in range(20):
                    client.send(get(f"/environ?{n}-{i}"))
                    assert json.loads(client.response()[2])["QUERY_STRING"] == f"{n}-{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors


def test_access_log_and_request_hooks(server: Gunicorn, logs: Path) -> None:
    with server.connect() as client:
        client.send(get("/environ?logged=1") + get("/error"))
        assert client.response()[0] == 200
        assert client.response()[0] == 500
    hook_log = logs / "hooks.log"
    wait_for(lambda: "post GET /error" in hook_log.read_text())
    hooks = hook_log.read_text()
    assert "pre GET /environ\npost GET /environ 200 OK\n" in hooks
    assert "post GET /error 500 Internal Server Error" in hooks
    access = wait_for(lambda: (logs / "access.log").read_text())
    assert '"GET /environ?logged=1 HTTP/1.1" 200' in access


def test_settings_it_cannot_honour_stop_gunicorn_with_the_reason() -> None:
    proc = subprocess.run(
        [GUNICORN, "-k", WORKER, "-b", f"127.0.0.1:{free_port()}", "--protocol", "uwsgi",
         "tests.worker_apps:app"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert b"serves plain HTTP/1.x only; use -k gevent for --protocol uwsgi" in proc.stderr
