"""Swarm peers survive a blip: a lost stream may resume within SIGNAL_RESUME_GRACE.

Real servers, raw sockets: a connection reset (SO_LINGER 0) stands for a
network blip, a plain close for a client that left; a WHATWG EventSource
(the npm ``eventsource`` package) reconnects by itself through a proxy that
cuts its connection.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker_support import frame_number, log_number
from tests.servers import Pair, install_node_modules, start_pair
from tests.support import SSE, Peer, Server

pytestmark = pytest.mark.single_process

COMPAT = Path(__file__).parent / "compat"
# Longer than an EventSource's default reconnection delay (3 s).
GRACE = {"resume_grace": 8}


def reset(sse: SSE) -> None:
    """Drop the connection as a network blip does: a reset, no orderly close."""
    sse.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sse.sock.close()


def last_id(sse: SSE) -> str:
    """The id of the last event the client got (what an EventSource sends back)."""
    ids = [line[4:] for line in bytes(sse.raw).decode().split("\n") if line.startswith("id: ")]
    return ids[-1]


def resume(url: str, handle: str, **headers: str) -> SSE:
    return SSE.open(url, {"Last-Event-ID": handle, **headers})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.support import start_server

    server = start_server(tmp_path_factory.mktemp("resume"), GRACE)
    yield server
    server.stop()


def test_ids_are_digits_after_the_data_line(srv: Server) -> None:
    with SSE.open(srv.url) as sse:
        sse.next()
        block = bytes(sse.raw).decode().split("\n\n")[0].split("\n")
        assert block[0] == "event: connect" and block[1].startswith("data: ")
        assert block[2].startswith("id: ") and len(block) == 3
        value = block[2][4:]
        assert value.isdigit() and value[0] != "0" and len(value) > 31
        assert isinstance(json.loads(value), (int, float))  # what moshpit does with it


def test_a_reset_peer_resumes_with_every_signal_in_order(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    assert initiator.post(srv.url, {"n": 0}, cid=peer.cid).status_code == 200
    assert peer.sse.next().json() == {"n": 0}
    handle = last_id(peer.sse)
    reset(peer.sse)
    time.sleep(0.3)  # the server notices the reset
    for n in range(1, 6):
        assert initiator.post(srv.url, {"n": n}, cid=peer.cid).status_code == 200
    assert initiator.post(srv.url, {"all": True}).status_code == 200
    assert initiator.sse.next().json() == {"all": True}
    with resume(f"{srv.url}/{initiator.id}", handle) as back:
        assert back.status == 200
        got = back.events(6)
        assert [e.event for e in got] == ["signal"] * 6
        assert [e.json() for e in got] == [{"n": n} for n in range(1, 6)] + [{"all": True}]
        # Same cid and token: the peer's token still signs, the initiator saw no leave/join.
        assert peer.post(srv.url, {"back": peer.cid}).status_code == 200
        assert back.next().json() == {"back": peer.cid}
        assert initiator.sse.next().json() == {"back": peer.cid}
        assert initiator.sse.quiet(0.3) == []
    initiator.close()


def test_an_orderly_close_leaves_at_once(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    initiator.sse.next()
    handle = last_id(peer.sse)
    peer.close()
    leave = initiator.sse.next(timeout=2)
    assert (leave.event, leave.json()["cid"]) == ("leave", peer.cid)
    with resume(f"{srv.url}/{initiator.id}", handle) as back:
        assert back.status == 204
    initiator.close()


def test_a_peer_that_does_not_come_back_leaves_after_the_grace(make_server) -> None:  # type: ignore[no-untyped-def]
    grace = 2
    srv = make_server({"resume_grace": grace})
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    initiator.sse.next()
    start = time.monotonic()
    reset(peer.sse)
    assert initiator.sse.quiet(grace - 0.5) == []
    leave = initiator.sse.next(timeout=3)
    assert (leave.event, leave.json()["cid"]) == ("leave", peer.cid)
    assert time.monotonic() - start >= grace - 0.1
    assert peer.post(srv.url, "late").status_code == 401
    initiator.close()


def test_an_initiator_in_its_grace_keeps_the_swarm(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    handle = last_id(initiator.sse)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    handle = last_id(initiator.sse)
    reset(initiator.sse)
    time.sleep(0.3)
    # The swarm is up: peers still signal, and a newcomer joins.
    assert peer.post(srv.url, "while away").status_code == 200
    assert peer.sse.next().json() == "while away"
    late = Peer.open(f"{srv.url}/{peer.id}")
    # Back on the create URL, as an EventSource reconnects to the URL it opened.
    with resume(srv.url, handle) as back:
        assert back.status == 200
        got = back.events(2)
        assert [(e.event, e.json()) for e in got] == [
            ("signal", "while away"),
            ("join", {"id": peer.id, "cid": late.cid}),
        ]
        assert peer.sse.quiet(0.2) == []  # the swarm never ended
    late.close()
    peer.close()


def test_a_reconnect_that_cannot_resume_gets_204(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    handle = last_id(initiator.sse)
    other = Peer.open(srv.url)
    before = srv.stats()["swarms"]
    bogus = "1" + "0" * 30 + "1"
    for url, value in [
        (srv.url, bogus),  # unknown: no new swarm is made behind the client's back
        (srv.url, "not-an-id"),
        (f"{srv.url}/{other.id}", handle),  # a handle of another swarm
        (f"{srv.url}/{initiator.id}", handle[:-1] + "9"),  # a position never sent
    ]:
        with resume(url, value) as back:
            assert back.status == 204, (url, value)
    assert srv.stats()["swarms"] == before
    initiator.close()
    other.close()


def test_a_resume_replaces_a_connection_not_yet_found_lost(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    initiator.sse.next()
    handle = last_id(peer.sse)
    # The client gave up on its connection; the server has not noticed yet.
    with resume(f"{srv.url}/{initiator.id}", handle) as back:
        assert back.status == 200
        assert peer.sse.wait_end(2)  # the old stream is ended by the server
        assert initiator.post(srv.url, "x", cid=peer.cid).status_code == 200
        assert back.next().json() == "x"
        assert initiator.sse.quiet(0.3) == []  # no leave for the replaced stream
    initiator.close()


def test_without_grace_there_are_no_ids_and_a_reset_leaves(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"resume_grace": 0})
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    initiator.sse.next()
    assert b"\nid: " not in bytes(peer.sse.raw)
    reset(peer.sse)
    assert initiator.sse.next(timeout=2).event == "leave"
    initiator.close()


# -- a WHATWG EventSource through a connection that breaks ------------------------------


class CuttingProxy:
    """Forwards TCP to ``port`` from one thread; :meth:`cut` resets every connection."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.other: dict[socket.socket, socket.socket] = {}
        self.cut_requested = threading.Event()
        self.cut_done = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            while not self.stopped:
                if self.cut_requested.is_set():
                    for sock in list(self.other):
                        sel.unregister(sock)
                        # Linger 0: close() sends a reset, as a dropped network
                        # connection looks to both ends.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.close()
                    self.other.clear()
                    self.cut_requested.clear()
                    self.cut_done.set()
                for key, _ in sel.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        client, _ = self.listener.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target))
                        self.other[client], self.other[upstream] = upstream, client
                        sel.register(client, selectors.EVENT_READ)
                        sel.register(upstream, selectors.EVENT_READ)
                        continue
                    if sock not in self.other:
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    peer = self.other[sock]
                    if data:
                        peer.sendall(data)
                        continue
                    for end in (sock, peer):
                        sel.unregister(end)
                        self.other.pop(end, None)
                        end.close()
            for sock in self.other:
                sock.close()
            self.listener.close()

    def cut(self) -> None:
        self.cut_done.clear()
        self.cut_requested.set()
        assert self.cut_done.wait(5)

    def close(self) -> None:
        self.stopped = True
        self.thread.join(5)


def need_node() -> None:
    install_node_modules()  # npm ci when missing; fails under CI without Node


def node_process(*args: str) -> subprocess.Popen[str]:
    need_node()
    return subprocess.Popen(
        ["node", str(COMPAT / "resume_peer.js"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_row(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "node exited"
    return json.loads(line)


def test_an_eventsource_resumes_by_itself_after_its_connection_is_cut(srv: Server) -> None:
    initiator = Peer.open(srv.url)
    proxy = CuttingProxy(srv.port)
    node = node_process(f"http://127.0.0.1:{proxy.port}{srv.prefix}/{initiator.id}")
    try:
        kind, data = read_row(node)
        assert kind == "connect"
        cid = data["cid"]
        assert initiator.sse.next().json()["cid"] == cid
        assert initiator.post(srv.url, {"n": 0}, cid=cid).status_code == 200
        assert read_row(node) == ["signal", {"n": 0}]
        proxy.cut()
        assert read_row(node) == ["error", None]
        for n in range(1, 4):  # while the browser is away
            assert initiator.post(srv.url, {"n": n}, cid=cid).status_code == 200
        assert read_row(node) == ["open", None]  # reconnected by itself
        assert [read_row(node) for _ in range(3)] == [["signal", {"n": n}] for n in (1, 2, 3)]
        assert initiator.sse.quiet(0.3) == []  # no leave, no join
    finally:
        node.kill()
        node.wait(5)
        proxy.close()
        initiator.close()


def test_moshpit_style_clients_read_frames_with_ids(srv: Server) -> None:
    """moshpit JSON-parses every line after a frame's first: the ids must parse."""
    need_node()
    done = subprocess.run(
        ["node", str(COMPAT / "moshpit_lines.js"), srv.url],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0][0] == "connect" and rows[-1][:2] == ["peer", "signal"]


# -- two processes sharing a real Redis -------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Pair]:
    servers = start_pair(tmp_path_factory.mktemp("resume-pair"), redis_url, GRACE)
    yield servers
    servers.stop()


def test_a_peer_reset_on_one_process_resumes_on_the_other(pair: Pair) -> None:
    a, b = pair.servers
    initiator = Peer.open(a.url)
    peer = Peer.open(f"{a.url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    assert initiator.post(a.url, {"n": 0}, cid=peer.cid).status_code == 200
    assert peer.sse.next().json() == {"n": 0}
    handle = last_id(peer.sse)
    reset(peer.sse)
    time.sleep(0.3)  # process A notices the reset
    for n in range(1, 6):  # sent through both processes
        assert initiator.post((a, b)[n % 2].url, {"n": n}, cid=peer.cid).status_code == 200
    assert initiator.post(b.url, {"all": True}).status_code == 200
    assert initiator.sse.next().json() == {"all": True}
    with resume(f"{b.url}/{initiator.id}", handle) as back:
        assert back.status == 200
        got = back.events(6)
        assert [e.json() for e in got] == [{"n": n} for n in range(1, 6)] + [{"all": True}]
        assert back.quiet(0.3) == []  # each once
        # Same cid and token, wherever it signals; the initiator saw no leave/join.
        assert peer.post(a.url, {"back": peer.cid}).status_code == 200
        assert back.next().json() == {"back": peer.cid}
        assert initiator.sse.next().json() == {"back": peer.cid}
        assert initiator.post(a.url, "direct", cid=peer.cid).status_code == 200
        assert back.next().json() == "direct"
        assert initiator.sse.quiet(0.3) == []
    initiator.close()


def test_an_initiator_reset_on_one_process_resumes_on_the_other(pair: Pair) -> None:
    a, b = pair.servers
    initiator = Peer.open(a.url)
    peer = Peer.open(f"{b.url}/{initiator.id}")
    assert initiator.sse.next().event == "join"
    handle = last_id(initiator.sse)
    reset(initiator.sse)
    time.sleep(0.3)
    assert peer.post(b.url, "while away").status_code == 200
    assert peer.sse.next().json() == "while away"
    late = Peer.open(f"{a.url}/{peer.id}")
    with resume(b.url, handle) as back:
        assert back.status == 200
        got = back.events(2)
        assert [(e.event, e.json()) for e in got] == [
            ("signal", "while away"),
            ("join", {"id": peer.id, "cid": late.cid}),
        ]
        late.close()
        leave = back.next(timeout=3)
        assert (leave.event, leave.json()["cid"]) == ("leave", late.cid)
        assert peer.sse.quiet(0.2) == []  # the swarm never ended
    peer.close()


def test_an_orderly_close_cannot_be_resumed_on_the_other_process(pair: Pair) -> None:
    a, b = pair.servers
    initiator = Peer.open(a.url)
    peer = Peer.open(f"{a.url}/{initiator.id}")
    initiator.sse.next()
    handle = last_id(peer.sse)
    peer.close()
    leave = initiator.sse.next(timeout=2)
    assert (leave.event, leave.json()["cid"]) == ("leave", peer.cid)
    with resume(f"{b.url}/{initiator.id}", handle) as back:
        assert back.status == 204
    initiator.close()


# -- kill -9 of the process that held a peer ------------------------------------------------


def killed_pair(tmp_path: Path, redis_url: str, **options: Any) -> tuple[Pair, str]:
    """Two servers whose dead processes are reaped within 4 s; and their key prefix."""
    key_prefix = f"k9{uuid.uuid4().hex[:8]}:"
    settings = {
        **GRACE,
        "resume_grace": 15,
        "retry_after": 1,
        "redis_prefix": key_prefix,
        "broker_options": {"heartbeat_interval": 1.0, "peer_ttl": 3.0, **options},
    }
    return start_pair(tmp_path, redis_url, settings), key_prefix


def test_a_peer_of_a_killed_worker_resumes_on_another_process(
    tmp_path: Path,
    redis_url: str,
) -> None:
    """The worker holding a peer's stream is killed (SIGKILL): its client reconnects to
    another process and is asked to come back until the reaper has put the peer in its
    grace; then it resumes with its cid and token and every signal sent to it since the
    last frame it got (from the swarm log up to the reap, from its queue after), once, in
    order, and its initiator sees no leave and no join."""
    import redis

    pair, key_prefix = killed_pair(tmp_path, redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        a, b = pair.servers
        initiator = Peer.open(a.url)
        peer = Peer.open(f"{b.url}/{initiator.id}")
        assert initiator.sse.next().event == "join"
        assert initiator.post(a.url, {"n": 0}, cid=peer.cid).status_code == 200
        assert peer.sse.next().json() == {"n": 0}
        handle = last_id(peer.sse)
        assert log_number(handle)
        swarm_key = f"{key_prefix}swarm:{{{initiator.id}}}"
        (worker,) = b.worker_pids()
        os.kill(worker, signal.SIGKILL)
        # Between the death and the reap: lost before the swarm log carried frame ids.
        assert initiator.post(a.url, {"n": 1}, cid=peer.cid).status_code == 200
        assert initiator.post(a.url, {"all": 1}).status_code == 200
        assert initiator.sse.next().json() == {"all": 1}
        assert client.hget(swarm_key, f"g:{peer.cid}") is None, "reaped too soon for the test"
        assert peer.sse.wait_end(5)  # the kernel closed its connection
        # Too early: its dead process is not reaped yet. An EventSource follows the hint.
        with resume(f"{a.url}/{initiator.id}", handle) as early:
            assert early.status == 200
            assert early.wait_end(5) and b"retry: " in bytes(early.raw)
        deadline = time.monotonic() + 10
        while client.hget(swarm_key, f"g:{peer.cid}") is None:
            assert time.monotonic() < deadline, "the dead worker's peer was not reaped"
            time.sleep(0.1)
        for n in (2, 3):
            assert initiator.post(a.url, {"n": n}, cid=peer.cid).status_code == 200
        assert initiator.post(a.url, {"all": 2}).status_code == 200
        assert initiator.sse.next().json() == {"all": 2}
        with resume(f"{a.url}/{initiator.id}", handle) as back:
            assert back.status == 200
            got = back.events(5)
            assert [e.json() for e in got] == [
                {"n": 1},
                {"all": 1},
                {"n": 2},
                {"n": 3},
                {"all": 2},
            ]
            seq = frame_number(handle)
            assert [frame_number(e.id or "") for e in got] == list(range(seq + 1, seq + 6))
            assert back.quiet(0.3) == []
            assert peer.post(a.url, {"back": peer.cid}).status_code == 200  # same token
            assert back.next().json() == {"back": peer.cid}
            assert initiator.sse.next().json() == {"back": peer.cid}
            assert initiator.sse.quiet(0.5) == []  # no leave, no join
        initiator.close()
    finally:
        client.close()
        pair.kill()


def test_an_initiator_of_a_killed_worker_gets_the_joins_and_leaves_of_the_gap(
    tmp_path: Path,
    redis_url: str,
) -> None:
    import redis

    pair, key_prefix = killed_pair(tmp_path, redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        a, b = pair.servers
        initiator = Peer.open(b.url)
        peer = Peer.open(f"{a.url}/{initiator.id}")
        assert initiator.sse.next().event == "join"
        handle = last_id(initiator.sse)
        swarm_key = f"{key_prefix}swarm:{{{initiator.id}}}"
        (worker,) = b.worker_pids()
        os.kill(worker, signal.SIGKILL)
        early = Peer.open(f"{a.url}/{initiator.id}")  # before the reap
        early.close()
        deadline = time.monotonic() + 5
        while client.hexists(swarm_key, f"k:{early.cid}"):  # its leave went through
            assert time.monotonic() < deadline, "the closed peer did not leave"
            time.sleep(0.05)
        assert peer.post(a.url, "gap").status_code == 200
        assert peer.sse.next().json() == "gap"
        assert client.hget(swarm_key, f"g:{initiator.cid}") is None, "reaped too soon"
        deadline = time.monotonic() + 10
        while client.hget(swarm_key, f"g:{initiator.cid}") is None:
            assert time.monotonic() < deadline, "the dead worker's initiator was not reaped"
            time.sleep(0.1)
        late = Peer.open(f"{a.url}/{initiator.id}")  # after the reap
        with resume(a.url, handle) as back:
            assert back.status == 200
            got = back.events(4)
            assert [(e.event, e.json()) for e in got] == [
                ("join", {"id": initiator.id, "cid": early.cid}),
                ("leave", {"id": initiator.id, "cid": early.cid}),
                ("signal", "gap"),
                ("join", {"id": initiator.id, "cid": late.cid}),
            ]
            assert back.quiet(0.3) == []
            assert peer.sse.quiet(0.2) == []  # the swarm never ended
        late.close()
        peer.close()
    finally:
        client.close()
        pair.kill()


def test_a_peer_of_a_killed_worker_whose_gap_left_the_swarm_log_gets_204(
    tmp_path: Path,
    redis_url: str,
) -> None:
    """More was sent to it before the reap than the swarm log keeps: its resume is
    refused (204) and it leaves, rather than come back with a silent gap."""
    import redis

    pair, key_prefix = killed_pair(tmp_path, redis_url, swarm_log=4)
    client = redis.Redis.from_url(redis_url)
    try:
        a, b = pair.servers
        initiator = Peer.open(a.url)
        peer = Peer.open(f"{b.url}/{initiator.id}")
        assert initiator.sse.next().event == "join"
        assert initiator.post(a.url, 0, cid=peer.cid).status_code == 200
        assert peer.sse.next().json() == 0
        handle = last_id(peer.sse)
        (worker,) = b.worker_pids()
        os.kill(worker, signal.SIGKILL)
        for n in range(1, 7):
            assert initiator.post(a.url, n, cid=peer.cid).status_code == 200
        swarm_key = f"{key_prefix}swarm:{{{initiator.id}}}"
        deadline = time.monotonic() + 10
        while client.hget(swarm_key, f"g:{peer.cid}") is None:
            assert time.monotonic() < deadline, "the dead worker's peer was not reaped"
            time.sleep(0.1)
        with resume(f"{a.url}/{initiator.id}", handle) as back:
            assert back.status == 204
        leave = initiator.sse.next(timeout=3)
        assert (leave.event, leave.json()["cid"]) == ("leave", peer.cid)
        initiator.close()
    finally:
        client.close()
        pair.kill()


def test_an_eventsource_whose_worker_is_killed_resumes_on_another_process(
    tmp_path: Path, redis_url: str
) -> None:
    """A WHATWG EventSource, through a proxy that sends its reconnection to the other
    process once the worker it was on is killed: it comes back by itself (after a
    `retry:` while the dead worker is not yet reaped) and gets every signal sent to it
    from the reap on, once, in order."""
    import redis

    key_prefix = f"k9{uuid.uuid4().hex[:8]}:"
    settings = {
        "resume_grace": 15,
        "retry_after": 1,
        "redis_prefix": key_prefix,
        "broker_options": {"heartbeat_interval": 1.0, "peer_ttl": 3.0},
    }
    pair = start_pair(tmp_path, redis_url, settings)
    client = redis.Redis.from_url(redis_url)
    a, b = pair.servers
    proxy = CuttingProxy(b.port)
    initiator = Peer.open(a.url)
    node = node_process(f"http://127.0.0.1:{proxy.port}{b.prefix}/{initiator.id}")
    try:
        kind, data = read_row(node)
        assert kind == "connect"
        cid = data["cid"]
        assert initiator.sse.next().json()["cid"] == cid
        assert initiator.post(a.url, {"n": 0}, cid=cid).status_code == 200
        assert read_row(node) == ["signal", {"n": 0}]
        proxy.target = a.port  # where the browser's next connection lands
        (worker,) = b.worker_pids()
        os.kill(worker, signal.SIGKILL)
        swarm_key = f"{key_prefix}swarm:{{{initiator.id}}}"
        deadline = time.monotonic() + 10
        while client.hget(swarm_key, f"g:{cid}") is None:
            assert time.monotonic() < deadline, "the dead worker's peer was not reaped"
            time.sleep(0.1)
        for n in (1, 2):
            assert initiator.post(a.url, {"n": n}, cid=cid).status_code == 200
        got = []
        while len(got) < 2:
            row = read_row(node)
            assert row[0] in ("open", "error", "signal"), row  # never "closed"
            if row[0] == "signal":
                got.append(row[1])
        assert got == [{"n": 1}, {"n": 2}]
        assert initiator.post(a.url, {"n": 3}, cid=cid).status_code == 200
        assert read_row(node) == ["signal", {"n": 3}]
        assert initiator.sse.quiet(0.5) == []  # no leave, no join
    finally:
        node.kill()
        node.wait(5)
        proxy.close()
        client.close()
        initiator.close()
        pair.kill()
