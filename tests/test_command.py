"""The ``flask-signal`` command, run as a real process: options, privileges, CORS, shutdown."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from flask_signal import __version__
from flask_signal.client import Peer, SignalError
from tests.servers import ROOT, RedisServer, free_port
from tests.servers import Process as Command


def run_command(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for options that exit at once)."""
    return subprocess.run(
        [sys.executable, "-m", "flask_signal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def privileged_free_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 1024")


def ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of a process's status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            found[name] = [int(v) for v in value.split()]
    return found


# -- options ---------------------------------------------------------------------------


def test_version() -> None:
    for flag in ("-V", "--version"):
        done = run_command(flag)
        assert done.returncode == 0
        assert done.stdout.strip() == f"flask-signal {__version__}"


def test_help() -> None:
    done = run_command("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: flask-signal")
    for option in ("--port", "--bind", "--uid", "--gid", "--workers", "--prefix", "--limit",
                   "--cors", "--ping", "--broker", "--log-level", "--version"):  # fmt: skip
        assert option in done.stdout
    assert run_command("-h").stdout == done.stdout


def test_several_workers_need_a_shared_broker() -> None:
    done = run_command("-w", "2", "-p", str(free_port()))
    assert done.returncode == 2
    assert "memory://" in done.stderr
    assert "--broker redis://" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "lots"], "--limit"),
        (["-u", "no-such-user-here"], "no such user"),
        (["-g", "no-such-group-here"], "no such group"),
        (["-p", "70000"], "--port"),
        (["--ping", "-1"], "--ping"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    done = run_command(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_prints_where_it_listens_and_serves(command: Callable[..., Command]) -> None:
    cmd = command()
    assert f"flask-signal listening on http://127.0.0.1:{cmd.port}\n" in cmd.output()
    with Peer(cmd.url, timeout=(5, 5)) as peer:
        assert peer.initiator and peer.id and peer.cid and peer.token


@pytest.mark.parametrize("worker", [None, "gevent"])
def test_worker_classes(command: Callable[..., Command], worker: str | None) -> None:
    """The project's worker by default; gunicorn's gevent worker on request."""
    cmd = command(*(["-k", worker] if worker else []))
    with Peer(cmd.url, timeout=(5, 5)) as owner, Peer(cmd.url, owner.id, timeout=(5, 5)) as peer:
        peer.send({"to": "all"})
        events = iter(owner)
        assert next(events) == ("join", {"id": owner.id, "cid": peer.cid})
        assert next(events) == ("signal", {"to": "all"})
    # Which parser: flask_signal.h1 refuses a head with too many fields as
    # soon as they arrive; gunicorn's waits for the head to end.
    with socket.create_connection(("127.0.0.1", cmd.port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101)
        try:
            answer = sock.recv(100)
        except TimeoutError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 431 ") is (worker is None)


def test_prefix(command: Callable[..., Command]) -> None:
    cmd = command("--prefix", "/signal", prefix="/signal")
    assert f"listening on http://127.0.0.1:{cmd.port}/signal\n" in cmd.output()
    with Peer(cmd.url, timeout=(5, 5)) as owner:
        owner.send("hi")
        assert next(iter(owner)) == ("signal", "hi")
    with pytest.raises(SignalError) as refused:
        Peer(f"http://127.0.0.1:{cmd.port}", timeout=(5, 5)).connect()
    assert refused.value.status == 404


def test_several_workers_with_redis(
    command: Callable[..., Command],
    own_redis: RedisServer,
) -> None:
    cmd = command("-w", "2", "--broker", own_redis.url)
    deadline = time.monotonic() + 10
    while len(cmd.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(cmd.worker_pids()) == 2
    owner = Peer(cmd.url, timeout=(5, 5)).connect()
    peers = [Peer(cmd.url, owner.id, timeout=(5, 5)).connect() for _ in range(4)]
    try:
        peers[-1].send({"to": "all"})
        for peer in [owner, *peers]:
            assert next(e for e in peer if e[0] == "signal") == ("signal", {"to": "all"})
    finally:
        for peer in [*peers, owner]:
            peer.close()
    # gevent patched the master before redis-py was imported, not each worker after it.
    assert "MonkeyPatchWarning" not in cmd.output()


# -- privileges ------------------------------------------------------------------------


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@needs_root
@pytest.mark.parametrize("how", ["names", "numbers"])
def test_drops_privileges_after_binding(command: Callable[..., Command], how: str) -> None:
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup")
    if how == "names":
        # A port only root may bind: the switch must come after binding.
        cmd = command("-u", "nobody", "-g", "nogroup", port=privileged_free_port())
        gid = nogroup.gr_gid
    else:
        # A uid alone: the process takes that user's own group, not root's.
        cmd = command("-u", str(nobody.pw_uid))
        gid = nobody.pw_gid
    for pid in [cmd.proc.pid, *cmd.worker_pids()]:
        status = ids(pid)
        assert status["Uid"] == [nobody.pw_uid] * 4, pid
        assert status["Gid"] == [gid] * 4, pid
        assert 0 not in status["Groups"], pid
    # Still serving, as nobody.
    with Peer(cmd.url, timeout=(5, 5)) as peer:
        peer.send({"as": "nobody"})
        assert next(iter(peer)) == ("signal", {"as": "nobody"})
    assert cmd.stop() == 0


# -- CORS ------------------------------------------------------------------------------


def test_cors_on_streams_errors_and_preflight(command: Callable[..., Command]) -> None:
    cmd = command()
    origin = {"Origin": "http://example.org"}
    with requests.get(
        cmd.url, headers={"Accept": "text/event-stream", **origin}, stream=True, timeout=5
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["Access-Control-Allow-Origin"] == "*"
    missing = requests.get(f"{cmd.url}/{'0' * 32}", headers=origin, timeout=5)
    assert missing.status_code == 404
    assert missing.headers["Access-Control-Allow-Origin"] == "*"
    assert "error" in missing.json()
    preflight = requests.options(
        f"{cmd.url}/{'0' * 32}",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
        timeout=5,
    )
    assert preflight.status_code == 204  # No Content, as the hub answers every preflight
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_cors_off(command: Callable[..., Command]) -> None:
    cmd = command("--cors", "")
    missing = requests.get(f"{cmd.url}/{'0' * 32}", headers={"Origin": "http://x.org"}, timeout=5)
    assert missing.status_code == 404
    assert "Access-Control-Allow-Origin" not in missing.headers


# -- shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_open_streams_and_exits_0(command: Callable[..., Command], sig: int) -> None:
    cmd = command()
    owner = Peer(cmd.url, timeout=(5, 10)).connect()
    peer = Peer(cmd.url, owner.id, timeout=(5, 10)).connect()
    other = Peer(cmd.url, timeout=(5, 10)).connect()  # a second swarm
    closes: list[object] = []
    for p in (owner, peer, other):
        p.on("close", closes.append).start()
    started = time.monotonic()
    cmd.proc.send_signal(sig)
    assert cmd.proc.wait(8) == 0
    assert time.monotonic() - started < 6
    for p in (owner, peer, other):
        assert p.wait(5), p
        assert p.error is None, p.error  # a clean end of stream, not a broken connection
    assert closes == [None, None, None]


# -- publishing, and an application's own routes ---------------------------------------


def test_publish_key_history_and_retry(command: Callable[..., Command]) -> None:
    from tests.support import SSE

    cmd = command("--publish-key", "s3cret", "--history", "3", "--retry", "1500")
    url = f"http://127.0.0.1:{cmd.port}/channels/news"
    assert requests.post(url, json={"data": "x"}, timeout=5).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert requests.post(url, json={"data": "x"}, headers=bad, timeout=5).status_code == 403
    key = {"Authorization": "Bearer s3cret"}
    for n in range(5):
        answer = requests.post(url, json={"data": n}, headers=key, timeout=5)
        assert answer.status_code == 200, answer.text
    with SSE.open(url, headers={"Last-Event-ID": "0"}) as sse:
        # Three events kept; the stream opens with the retry hint.
        assert [event.data for event in sse.events(3)] == ["2", "3", "4"]
        assert b"retry: 1500\n" in bytes(sse.raw)
        requests.post(url, json={"data": "live"}, headers=key, timeout=5)
        assert sse.next().data == "live"


def test_serves_an_applications_declared_routes(command: Callable[..., Command]) -> None:
    from tests.support import SSE

    cmd = command("--app", "tests.standalone_app:signal")
    origin = f"http://127.0.0.1:{cmd.port}"
    assert f"listening on {origin}/hub\n" in cmd.output()
    with SSE.open(f"{origin}/users/ann/foo") as sse:
        assert sse.status == 200
        init = sse.next()
        assert (init.event, init.json()) == ("init", {"user": "ann"})
        assert b"retry: 2500\n" in bytes(sse.raw)  # the application's own settings
        answer = requests.post(
            f"{origin}/hub/channels/user.ann",
            json={"data": "hello"},
            headers={"Authorization": "Bearer standalone-key"},
            timeout=5,
        )
        assert answer.status_code == 200, answer.text
        assert sse.next().data == "hello"
    done = run_command("--app", "tests.standalone_app:signal", "--retry", "5")
    assert done.returncode == 2 and "configure the application itself" in done.stderr
    done = run_command("--app", "tests.standalone_app:missing")
    assert done.returncode == 2 and "has no 'missing'" in done.stderr
