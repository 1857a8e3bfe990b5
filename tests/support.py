"""Test support: the raw-socket SSE reader and peer, and (re-exported from
:mod:`tests.servers`, which owns every live server) the server helpers.

The reader speaks HTTP/1.1 over a plain socket and keeps every byte it
received, so tests can check frames byte for byte, and it parses events as
the WHATWG EventSource does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.servers import (  # noqa: F401 - the names tests import from here
    ROOT,
    Pair,
    Process,
    Server,
    Stack,
    free_port,
    have_redis_server,
    start_command,
    start_gunicorn,
    start_hub,
    start_pair,
    start_server,
    wait_for_port,
)

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
