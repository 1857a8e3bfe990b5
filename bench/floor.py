"""The yardstick: the thinnest swarm server gevent allows, to measure a machine by.

``python -m bench.floor --port 8000`` serves just enough of the swarm protocol
for the load generators' three scenarios (create, join, broadcast and direct
POSTs) on raw gevent sockets: its own minimal HTTP/1.1 parsing, no WSGI, no
Flask, no validation, no limits, every frame written straight to the peer's
socket. It is not a server to use. It is what one core of *this* machine does
with the least Python per request, so that the README's figures, taken on a
shared VM whose speed varies from day to day, can be read as ratios to a
floor measured in the same session rather than as absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import secrets
from typing import Any

from gevent.server import StreamServer

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
)
OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
    b'Connection: keep-alive\r\n\r\n{"ok":true}'
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def chunk(event: bytes, data: Any) -> bytes:
    frame = b"event: %s\ndata: %s\n\n" % (event, _dumps(data).encode())
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class Floor:
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.swarms: dict[str, dict[str, Any]] = {}  # swarm id -> {cid: socket}
        self.initiators: dict[str, str] = {}

    def handle(self, sock: Any, addr: Any) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                buf += sock.recv(65536)
            body, buf = buf[:length], buf[length:]
            swarm_id = path[len(self.prefix) :].strip(b"/").decode()
            if method == b"GET":
                self.stream(sock, swarm_id)
                return
            peers = self.swarms.get(swarm_id)
            if peers is None:
                sock.sendall(NOT_FOUND)
                continue
            fields = json.loads(body)
            frame = chunk(b"signal", fields["data"])
            targets = [peers[fields["cid"]]] if "cid" in fields else list(peers.values())
            for target in targets:
                try:  # noqa: SIM105 - cheaper than contextlib.suppress in this loop
                    target.sendall(frame)
                except OSError:
                    pass
            sock.sendall(OK)

    def stream(self, sock: Any, swarm_id: str) -> None:
        cid, token = secrets.token_hex(16), secrets.token_hex(16)
        if not swarm_id:
            swarm_id = secrets.token_hex(16)
            self.swarms[swarm_id] = {}
            self.initiators[swarm_id] = cid
        peers = self.swarms.get(swarm_id)
        if peers is None:
            sock.sendall(NOT_FOUND)
            return
        connect = {"id": swarm_id, "cid": cid, "token": token}
        sock.sendall(HEAD + chunk(b"connect", connect))
        initiator = peers.get(self.initiators[swarm_id])
        if initiator is not None:
            initiator.sendall(chunk(b"join", {"id": swarm_id, "cid": cid}))
        peers[cid] = sock
        try:
            while sock.recv(1):  # until the client closes
                pass
        except OSError:
            pass
        peers.pop(cid, None)
        if self.initiators.get(swarm_id) == cid:
            del self.swarms[swarm_id], self.initiators[swarm_id]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("-p", "--port", type=int, default=8000)
    parser.add_argument("--prefix", default="/signal", help="path the hub answers under")
    args = parser.parse_args()
    floor = Floor(args.prefix.rstrip("/").encode())
    StreamServer(("127.0.0.1", args.port), floor.handle, backlog=2048).serve_forever()


if __name__ == "__main__":
    main()
