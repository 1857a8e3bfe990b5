"""Dead peers are found within a bounded time: a peer in its own network
namespace, joined over a veth pair, whose link then goes down.

No FIN, no reset reaches the server: only TCP keep-alive probes and
``TCP_USER_TIMEOUT`` (``SIGNAL_DEAD_PEER_TIMEOUT``) can tell it the peer is
gone. Needs root and iproute2 (``ip``), which .ci/run installs; each test
makes its own namespace and veth pair under unique names and removes them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Peer, start_server

pytestmark = pytest.mark.single_process

#: Small, so the test is quick; the default is 45 s.
TIMEOUT = 3.0

# Joins a swarm from inside the namespace, says so, then holds the stream.
CLIENT = r"""
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
data = b""
while b"event: connect" not in data:
    data += sock.recv(65536)
print("connected", flush=True)
sock.settimeout(None)
while sock.recv(65536):
    pass
"""


def need_netns() -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("network namespace tests need root and iproute2 under CI")
    pytest.skip("needs root and iproute2 (ip)")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Namespace:
    name: str
    host_link: str
    host_ip: str
    peer_ip: str


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A network namespace joined to this one by a veth pair; always removed."""
    need_netns()
    tag = uuid.uuid4().hex[:8]
    net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.{random.randrange(0, 256, 4)}"
    base = net.rsplit(".", 1)
    host_ip, peer_ip = f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}"
    ns = Namespace(f"fsn{tag}", f"fsh{tag}", host_ip, peer_ip)
    peer_link = f"fsp{tag}"
    try:
        ip("netns", "add", ns.name)
        ip("link", "add", ns.host_link, "type", "veth", "peer", "name", peer_link)
        ip("link", "set", peer_link, "netns", ns.name)
        ip("addr", "add", f"{host_ip}/30", "dev", ns.host_link)
        ip("link", "set", ns.host_link, "up")
        ip("-n", ns.name, "addr", "add", f"{peer_ip}/30", "dev", peer_link)
        ip("-n", ns.name, "link", "set", peer_link, "up")
        ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            ip("netns", "del", ns.name)
        with contextlib.suppress(subprocess.SubprocessError):
            ip("link", "del", ns.host_link)  # gone with the namespace, normally


@pytest.mark.parametrize("traffic", [False, True], ids=["idle", "data-in-flight"])
def test_a_peer_whose_link_goes_down_leaves_within_the_bound(tmp_path: Path, traffic: bool) -> None:
    with namespace() as ns:
        port = random.randint(20000, 30000)
        srv = start_server(
            tmp_path,
            {"dead_peer_timeout": TIMEOUT},
            port=port,
            extra_args=["-b", f"{ns.host_ip}:{port}"],
        )
        client = None
        try:
            initiator = Peer.open(srv.url)
            client = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns.name,
                    sys.executable,
                    "-c",
                    CLIENT,
                    ns.host_ip,
                    str(port),
                    f"{srv.prefix}/{initiator.id}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
            join = initiator.sse.next()
            assert join.event == "join"
            cid = join.json()["cid"]
            ip("link", "set", ns.host_link, "down")
            start = time.monotonic()
            if traffic:  # writes that are never acknowledged
                for n in range(3):
                    assert initiator.post(srv.url, {"n": n}, cid=cid).status_code == 200
            leave = initiator.sse.next(timeout=TIMEOUT + 5)
            took = time.monotonic() - start
            assert (leave.event, leave.json()["cid"]) == ("leave", cid)
            assert took < TIMEOUT + 2, took
            print(f"\nleave {took:.2f} s after the link went down (timeout {TIMEOUT} s)")
        finally:
            if client is not None:
                client.kill()
                client.wait(5)
            srv.stop()
