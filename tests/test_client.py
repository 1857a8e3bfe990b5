"""The SSE parser (pure, WHATWG rules) and the Python peer against a real ``flask-signal``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_signal.client import ConnectionLost, Peer, SignalError, SignalTimeout
from flask_signal.sse import Event, SSEParser, parse
from tests.servers import ROOT, free_port, start_command
from tests.servers import Process as Command

# -- the SSE parser --------------------------------------------------------------------

E = Event


def M(data: str, id: str = "") -> Event:
    return Event("message", data, id)


PARSER_CASES: list[tuple[str, bytes, list[Event]]] = [
    ("plain", b"data: hi\n\n", [M("hi")]),
    ("no space after colon", b"data:hi\n\n", [M("hi")]),
    ("only one space dropped", b"data:  hi\n\n", [M(" hi")]),
    ("multi-line data joined with LF", b"data: a\ndata: b\n\n", [M("a\nb")]),
    ("empty data line", b"data\n\n", [M("")]),
    ("empty data lines", b"data\ndata\n\n", [M("\n")]),
    ("data: with nothing after", b"data:\n\n", [M("")]),
    ("event type", b"event: join\ndata: {}\n\n", [E("join", "{}")]),
    ("type resets after dispatch", b"event: a\ndata: 1\n\ndata: 2\n\n", [E("a", "1"), M("2")]),
    ("no data: no event, type reset", b"event: a\n\ndata: 2\n\n", [M("2")]),
    ("only comments", b": ping\n\n:\n\n", []),
    ("comment inside an event", b"data: a\n: ping\ndata: b\n\n", [M("a\nb")]),
    ("CRLF", b"event: x\r\ndata: 1\r\n\r\n", [E("x", "1")]),
    ("CR", b"event: x\rdata: 1\r\r", [E("x", "1")]),
    ("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\r\n", [M("a\nb\nc")]),
    ("BOM dropped", b"\xef\xbb\xbfdata: 1\n\n", [M("1")]),
    ("only the first BOM", b"\xef\xbb\xbf\xef\xbb\xbfdata: 1\n\n", []),
    ("id", b"id: 7\ndata: x\n\n", [M("x", "7")]),
    ("id persists", b"id: 7\ndata: x\n\ndata: y\n\n", [M("x", "7"), M("y", "7")]),
    ("empty id resets", b"id: 7\ndata: x\n\nid\ndata: y\n\n", [M("x", "7"), M("y", "")]),
    ("id with NUL ignored", b"id: 7\ndata: x\n\nid: a\0b\ndata: y\n\n", [M("x", "7"), M("y", "7")]),
    ("id without data still sets", b"id: 9\n\ndata: z\n\n", [M("z", "9")]),
    ("field names are case-sensitive", b"Data: x\nDATA: y\n\n", []),
    ("unknown field ignored", b"foo: bar\ndata: x\n\n", [M("x")]),
    ("value keeps further colons", b'data: {"a": 1}\n\n', [M('{"a": 1}')]),
    ("unfinished event dropped", b"data: a\n\ndata: b\n", [M("a")]),
    ("invalid UTF-8 replaced", b"data: \xff\n\n", [M("\ufffd")]),
    ("UTF-8 text", "data: ça ✓\n\n".encode(), [M("ça ✓")]),
    ("a swarm frame", b'event: connect\ndata: {"id":"a","cid":"b","token":"c"}\n\n',
     [E("connect", '{"id":"a","cid":"b","token":"c"}')]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "expected"), [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES]
)
def test_parser(stream: bytes, expected: list[Event]) -> None:  # fmt: skip
    assert parse(stream) == expected


@pytest.mark.parametrize(
    ("stream", "expected"), [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES]
)
def test_parser_any_chunking(stream: bytes, expected: list[Event]) -> None:  # fmt: skip
    """Byte by byte, and split at every point: CRLF, BOM and UTF-8 split across chunks."""
    parser = SSEParser()
    events = [e for byte in stream for e in parser.feed(bytes([byte]))] + parser.close()
    assert events == expected
    for cut in range(len(stream)):
        parser = SSEParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) + parser.close() == expected


def test_parser_dispatches_as_soon_as_the_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\r") == []
    assert parser.feed(b"\r") == [M("1")]  # CR ends a line without waiting for LF
    assert parser.feed(b"\n") == []  # ... and an LF next would not have been a blank line


def test_parser_retry_and_comments() -> None:
    parser = SSEParser()
    parser.feed(b": hello\nretry: 2500\n\n")
    assert (parser.retry, parser.comments) == (2500, 1)
    parser.feed(b"retry: 1.5\nretry: x\nretry\n\n")  # not all ASCII digits: ignored
    assert parser.retry == 2500
    parser.feed("retry: \uff13\n\n".encode())  # a non-ASCII digit is not a digit here
    assert parser.retry == 2500


# -- the peer against the command ------------------------------------------------------

PING_PONG = """\
from flask_signal.client import Peer

url = "http://localhost:5000"
initiator = Peer(url)


def on_connect(data):
    initiator_id = data["cid"]

    def on_join(data):
        peer_id = data["cid"]
        initiator.send({"message": "ping " + peer_id, "from": initiator_id, "_cid": peer_id})

    def on_signal(data):
        print(data["message"])
        initiator.close()

    initiator.on("join", on_join).on("signal", on_signal)

    peer = Peer(url, data["id"])

    def on_peer_signal(data):
        print(data["message"])
        # omit _cid to send a broadcast message
        peer.send({"message": "pong " + data["from"], "_cid": data["from"]})

    peer.on("signal", on_peer_signal).start()


initiator.on("connect", on_connect).start().wait()
"""

TIMEOUT = (5.0, 5.0)


@pytest.fixture(scope="module")
def hub_command(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Command]:
    """One ``flask-signal`` (quick pings) shared by this module's tests."""
    log = tmp_path_factory.mktemp("hub") / "command.log"
    cmd = start_command("--ping", "0.2", "--limit", "1kb", log=log)
    try:
        yield cmd
    finally:
        cmd.stop()  # SIGTERM, then SIGKILL if it does not exit


@pytest.fixture
def peers(hub_command: Command) -> Iterator[Callable[..., Peer]]:
    """Make peers of the shared hub; all are closed afterwards."""
    made: list[Peer] = []

    def make(swarm_id: str | None = None, **kw: Any) -> Peer:
        kw.setdefault("timeout", TIMEOUT)
        peer = Peer(hub_command.url, swarm_id, **kw)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def next_signal(events: Iterator[tuple[str, Any]]) -> Any:
    """The data of the next ``signal``, skipping ``join``/``leave``."""
    for event, data in events:
        if event == "signal":
            return data
    raise AssertionError("the stream ended")


def run_example(url: str, *, gevent: bool) -> list[str]:
    code = PING_PONG.replace("http://localhost:5000", url)
    if gevent:
        code = "from gevent import monkey\nmonkey.patch_all()\n" + code
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("gevent", [False, True], ids=["threads", "gevent"])
def test_ping_pong_example(hub_command: Command, gevent: bool) -> None:
    lines = run_example(hub_command.url, gevent=gevent)
    assert len(lines) == 2, lines
    assert re.fullmatch(r"ping [0-9a-f]{32}", lines[0])
    assert re.fullmatch(r"pong [0-9a-f]{32}", lines[1])
    assert lines[0][5:] != lines[1][5:]  # the peer's cid, then the initiator's


def test_connect_data(peers: Callable[..., Peer]) -> None:
    owner = peers()
    assert not owner.connected and owner.id is None
    owner.connect()
    assert owner.connected and owner.initiator
    for value in (owner.id, owner.cid, owner.token):
        assert re.fullmatch(r"[0-9a-f]{32}", value or "")
    peer = peers(owner.id).connect()
    assert peer.id == owner.id and not peer.initiator
    assert peer.cid != owner.cid and peer.token != owner.token
    assert next(iter(owner)) == ("join", {"id": owner.id, "cid": peer.cid})


def test_connect_is_the_first_pair_when_iterating(peers: Callable[..., Peer]) -> None:
    owner = peers()
    event, data = next(iter(owner))
    assert event == "connect"
    assert data == {"id": owner.id, "cid": owner.cid, "token": owner.token}


def test_buffered_sends_arrive_in_order(peers: Callable[..., Peer]) -> None:
    owner = peers()
    for n in range(5):
        owner.send({"n": n})
    owner.connect()
    owner.send({"n": 5})
    events = iter(owner)
    assert [next_signal(events) for _ in range(6)] == [{"n": n} for n in range(6)]


def test_refused_buffered_send_is_an_error_event(peers: Callable[..., Peer]) -> None:
    owner = peers()
    errors: list[SignalError] = []
    owner.on("error", errors.append)
    owner.send("x" * 2000)  # over the hub's 1kb limit
    owner.send("fits")
    events = iter(owner)
    assert next(events)[0] == "connect"
    event, error = next(events)
    assert event == "error" and isinstance(error, SignalError) and error.status == 413
    assert errors == [error]
    assert next_signal(events) == "fits"  # the stream (and the swarm) go on
    assert owner.connected


def test_buffered_sends_of_a_joining_peer(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    peer = peers(owner.id)
    peer.send("first")
    peer.send("second", cid=owner.cid)
    peer.connect()
    events = iter(owner)
    assert [next_signal(events), next_signal(events)] == ["first", "second"]


def test_broadcast_reaches_everyone_direct_only_its_cid(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    a = peers(owner.id).connect()
    b = peers(owner.id).connect()
    a.send({"to": "all"})
    a.send({"to": "b"}, cid=b.cid)
    a.send({"to": "owner", "_cid": owner.cid})  # moshpit's way; _cid is not delivered
    a.send({"to": "all", "end": True})
    got = {}
    for name, peer in (("owner", owner), ("a", a), ("b", b)):
        events = iter(peer)
        got[name] = [next_signal(events) for _ in range(3 if name != "a" else 2)]
    end = {"to": "all", "end": True}
    assert got["owner"] == [{"to": "all"}, {"to": "owner"}, end]
    assert got["a"] == [{"to": "all"}, end]  # the sender gets broadcasts, not its direct sends
    assert got["b"] == [{"to": "all"}, {"to": "b"}, end]


def test_handlers_and_leave(peers: Callable[..., Peer]) -> None:
    owner = peers()
    seen: list[tuple[str, Any]] = []
    for name in ("connect", "join", "leave", "signal"):
        owner.on(name, lambda data, name=name: seen.append((name, data)))

    @owner.on("close")
    def closed(error: BaseException | None) -> None:
        seen.append(("close", error))

    owner.start().connect()
    peer = peers(owner.id).connect()
    peer.send("hi")
    peer.close()
    deadline = time.monotonic() + 5
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    owner.close()
    assert owner.wait(5)
    assert [name for name, _ in seen] == ["connect", "join", "signal", "leave", "close"]
    assert seen[1][1] == seen[3][1] == {"id": owner.id, "cid": peer.cid}
    assert seen[2][1] == "hi" and seen[4][1] is None


def test_initiator_close_ends_joined_peers(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    peer = peers(owner.id).connect()
    closes: list[object] = []
    peer.on("close", closes.append)
    owner.close()
    rest = list(peer)  # ends: no hang
    assert rest == []
    assert closes == [None] and peer.closed and peer.error is None
    with pytest.raises(SignalError) as gone:
        peers(owner.id).connect()
    assert gone.value.status == 404


def test_close_from_a_handler_and_from_another_thread(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    owner.on("signal", lambda data: owner.close())
    owner.send("bye")
    assert list(owner) == [("signal", "bye")]
    assert owner.closed
    with pytest.raises(SignalError):
        owner.send("after close")

    other = peers().start().connect()
    started = time.monotonic()
    other.close()  # the reader thread is blocked in a read: it must wake up
    assert other.wait(5) and time.monotonic() - started < 3


def test_unknown_swarm_is_404(peers: Callable[..., Peer]) -> None:
    with pytest.raises(SignalError) as refused:
        peers("0" * 32).connect()
    assert refused.value.status == 404
    assert refused.value.message  # the hub's {"error": ...}
    with pytest.raises(SignalError) as bad:
        peers("Not-An-Id").connect()
    assert bad.value.status == 404


def test_bad_token_is_401(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    other = peers().connect()
    owner.token = other.token  # a real token, of another swarm
    with pytest.raises(SignalError) as refused:
        owner.send("x")
    assert refused.value.status == 401
    assert refused.value.message


def test_over_limit_is_413_and_unknown_cid_404(peers: Callable[..., Peer]) -> None:
    owner = peers().connect()
    with pytest.raises(SignalError) as big:
        owner.send("x" * 2000)  # the hub runs with --limit 1kb
    assert big.value.status == 413
    with pytest.raises(SignalError) as nobody:
        owner.send("x", cid="0" * 32)
    assert nobody.value.status == 404
    owner.send("still fine")  # refused sends leave the stream alone
    assert next_signal(iter(owner)) == "still fine"


def test_keepalive_comments_do_not_break_reading(peers: Callable[..., Peer]) -> None:
    owner = peers(timeout=(5, 1)).connect()  # pings every 0.2 s keep a 1 s read timeout happy
    time.sleep(1.5)
    owner.send({"after": "pings"})
    assert next_signal(iter(owner)) == {"after": "pings"}


def test_silent_stream_times_out(command: Callable[..., Command]) -> None:
    cmd = command("--ping", "0")
    owner = Peer(cmd.url, timeout=(5, 0.5)).connect()
    closes: list[object] = []
    owner.on("close", closes.append)
    started = time.monotonic()
    with pytest.raises(SignalTimeout):
        list(owner)
    assert time.monotonic() - started < 3
    assert owner.closed and isinstance(owner.error, SignalTimeout) and closes == [owner.error]


def test_unreachable_hub_fails_fast() -> None:
    peer = Peer(f"http://127.0.0.1:{free_port()}", timeout=(2, 2))
    with pytest.raises(ConnectionLost):
        peer.connect()
    assert peer.closed


def test_context_manager(peers: Callable[..., Peer]) -> None:
    with peers() as owner:
        assert owner.connected
        joined = peers(owner.id).connect()
    assert owner.closed
    assert list(joined) == []  # the swarm ended with its initiator


def test_hub_killed_mid_stream_raises(command: Callable[..., Command]) -> None:
    cmd = command()
    owner = Peer(cmd.url, timeout=(5, 30)).connect()
    closes: list[object] = []
    owner.on("close", closes.append)
    for pid in cmd.worker_pids():
        os.kill(pid, signal.SIGKILL)  # no chunked terminator: a broken stream, not an end
    with pytest.raises(ConnectionLost):
        list(owner)
    assert closes == [owner.error] and isinstance(owner.error, ConnectionLost)


def test_connect_in_background_fails_fast(peers: Callable[..., Peer]) -> None:
    peer = peers("0" * 32, timeout=(10, 10)).start()
    started = time.monotonic()
    with pytest.raises(SignalError) as refused:
        peer.connect()
    assert refused.value.status == 404
    assert time.monotonic() - started < 5  # not the whole connect timeout
