"""Test support: free ports, servers in subprocesses, and a raw-socket SSE reader.

The reader speaks HTTP/1.1 over a plain socket and keeps every byte it
received, so tests can check frames byte for byte, and it parses events as
the WHATWG EventSource does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal as os_signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
#: The suite runs again under other servers and settings in CI: a worker class,
#: and settings merged into every test server's (e.g. {"fast_path": true}).
WORKER = os.environ.get("SIGNAL_TEST_WORKER", "gevent")
OPTIONS: dict[str, Any] = json.loads(os.environ.get("SIGNAL_TEST_OPTIONS", "{}"))
#: "redis": every test server is two server processes sharing a Redis broker,
#: and each request goes to the next one (see :class:`Pair`).
BROKER = os.environ.get("SIGNAL_TEST_BROKER", "memory")
PAIRED = BROKER == "redis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Server:
    """A server process on a free port; ``url`` is the hub's base URL."""

    proc: subprocess.Popen[bytes]
    port: int
    prefix: str
    log: Path

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = os_signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def fired(self) -> list[dict[str, Any]]:
        return requests.get(self.origin + "/_test/fired", timeout=5).json()  # type: ignore[no-any-return]

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        params = {"channel": channel} if channel else {}
        return requests.get(self.origin + "/_test/stats", params=params, timeout=5).json()  # type: ignore[no-any-return]

    def count(self, channel: str | None = None) -> int:
        """Open streams in the server, all or on one channel."""
        return int(self.stats(channel)["count"])


class Pair:
    """Two server processes sharing one Redis, standing in for one :class:`Server`.

    Each use of ``url`` or ``origin`` names the next process, so a test's
    requests alternate between them: what one process does must be seen by
    the other. Counts and fired signals are the two processes' together.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.prefix = servers[0].prefix
        self.port = servers[0].port
        self.proc = servers[0].proc
        self._turn = itertools.cycle(servers)

    @property
    def url(self) -> str:
        return next(self._turn).url

    @property
    def origin(self) -> str:
        return next(self._turn).origin

    def worker_pids(self) -> list[int]:
        return [pid for srv in self.servers for pid in srv.worker_pids()]

    def stop(self, sig: int = os_signal.SIGTERM, timeout: float = 10) -> int:
        return max(srv.stop(sig, timeout) for srv in self.servers)

    def fired(self) -> list[dict[str, Any]]:
        return [item for srv in self.servers for item in srv.fired()]

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        each = [srv.stats(channel) for srv in self.servers]
        return {k: sum(s[k] for s in each) for k, v in each[0].items() if isinstance(v, int)}

    def count(self, channel: str | None = None) -> int:
        return sum(srv.count(channel) for srv in self.servers)


def start_hub(
    tmp_path: Path,
    settings: dict[str, Any] | None = None,
    *,
    redis_url: str | None = None,
    **kw: Any,
) -> Server | Pair:
    """A server, or under ``SIGNAL_TEST_BROKER=redis`` a :class:`Pair` on ``redis_url``."""
    if not PAIRED:
        return start_server(tmp_path, settings, **kw)
    assert redis_url is not None
    shared = {
        "broker_url": redis_url,
        "redis_prefix": f"t{uuid.uuid4().hex[:10]}:",
        **(settings or {}),
    }
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, shared, **kw))
    except Exception:
        for srv in servers:
            srv.stop()
        raise
    return Pair(servers)


def start_server(
    tmp_path: Path,
    settings: dict[str, Any] | None = None,
    *,
    server: str = "gunicorn",
    workers: int = 1,
    worker_class: str | None = None,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Server:
    """Start tests.apps:create_app under gunicorn (or gevent's WSGIServer) and wait for it.

    ``extra_args`` go to gunicorn's command line.
    """
    settings = {**OPTIONS, **(settings or {})}
    port = port or free_port()
    env = {**os.environ, "SIGNAL_TEST_SETTINGS": json.dumps(settings), **(extra_env or {})}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if server == "gunicorn":
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            worker_class or WORKER,
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--worker-connections",
            "5000",
            "--graceful-timeout",
            "2",
            "--log-level",
            "warning",
            *extra_args,
            "tests.apps:create_app()",
        ]
    else:
        cmd = [sys.executable, "-m", "tests.pywsgi_server", str(port)]
    log = tmp_path / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()}") from None
    srv = Server(proc, port, settings.get("url_prefix", "/signal"), log)
    if workers > 1:
        deadline = time.monotonic() + 10
        while len(srv.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
    return srv


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


# -- SSE over a raw socket -------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSE:
    """One streaming GET: status, headers, the raw body, and events as they come."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    raw: bytearray = field(default_factory=bytearray)
    ended: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _chunked: bool = False
    _parsed: int = 0
    _events: list[Event] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        url: str,
        headers: dict[str, str] | None = None,
        timeout: float = 5,
        rcvbuf: int | None = None,
    ) -> SSE:
        """``rcvbuf`` shrinks the receive buffer, as a slow or distant client's."""
        parts = urlsplit(url)
        sock = socket.socket()
        sock.settimeout(timeout)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect((parts.hostname, parts.port))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before headers: {bytes(buf)!r}")
            buf += chunk
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        sse = cls(sock, int(status_line.split()[1]), hdrs)
        sse._chunked = hdrs.get("transfer-encoding", "").lower() == "chunked"
        sse._feed(rest)
        return sse

    def _feed(self, data: bytes) -> None:
        if not self._chunked:
            self.raw += data
            return
        self._buf += data
        while True:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._buf[:line_end].split(b";")[0], 16)
            if size == 0:
                self.ended = True
                return
            if len(self._buf) < line_end + 2 + size + 2:
                return
            self.raw += self._buf[line_end + 2 : line_end + 2 + size]
            del self._buf[: line_end + 2 + size + 2]

    def _receive(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.ended:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.ended = True
            return False
        self._feed(chunk)
        return True

    def _parse(self) -> None:
        text = bytes(self.raw[self._parsed :])
        normalized = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # Only parse whole blocks; normalization keeps offsets valid because
        # the hub itself never sends CR.
        while b"\n\n" in normalized:
            block, _, normalized = normalized.partition(b"\n\n")
            self._parsed += len(block) + 2
            event, data, event_id = "message", [], None
            for line in block.decode().split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
            if data:
                self._events.append(Event(event, "\n".join(data), event_id))

    def next(self, timeout: float = 5) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            self._parse()
            if self._events:
                return self._events.pop(0)
            if not self._receive(deadline):
                if self.ended:
                    raise EOFError("stream ended")
                raise TimeoutError(f"no event within {timeout}s; raw so far: {bytes(self.raw)!r}")

    def events(self, count: int, timeout: float = 5) -> list[Event]:
        return [self.next(timeout) for _ in range(count)]

    def wait_end(self, timeout: float = 5) -> bool:
        """Read until the server ends the stream; False if it is still open at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            if not self._receive(deadline) and not self.ended:
                return False
        return True

    def quiet(self, seconds: float) -> list[Event]:
        """Events that arrive within ``seconds`` (expected: none)."""
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.next(max(0.01, deadline - time.monotonic())))
            except (TimeoutError, EOFError):
                break
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> SSE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Peer:
    """A peer of a swarm over the raw reader: its stream and its connect data."""

    sse: SSE
    id: str
    cid: str
    token: str

    @classmethod
    def open(cls, url: str, **kw: Any) -> Peer:
        sse = SSE.open(url, **kw)
        assert sse.status in (200, 201), (sse.status, bytes(sse.raw))
        connect = sse.next()
        assert connect.event == "connect", connect
        data = connect.json()
        return cls(sse, data["id"], data["cid"], data["token"])

    def post(self, base: str, data: Any, cid: str | None = None, **kw: Any) -> requests.Response:
        body: dict[str, Any] = {"token": self.token, "data": data}
        if cid is not None:
            body["cid"] = cid
        return requests.post(f"{base}/{self.id}", json=body, timeout=5, **kw)

    def close(self) -> None:
        self.sse.close()


def terminate_all(procs: Iterator[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
