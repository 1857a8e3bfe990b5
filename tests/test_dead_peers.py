"""Stream sockets carry the TCP keep-alive options that find a vanished client.

The project's worker sets them once on its listeners (Linux copies them to
every accepted socket); under stock ``-k gevent`` each stream sets them on its
own socket. Either way the kernel's view of the server's socket (``ss``) shows
a keep-alive timer. Detection itself, with a link that goes down, is tested in
``tests/test_netns.py``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flask_signal.streaming import dead_peer_options, detect_dead_peers
from tests.servers import SIGNAL_WORKER
from tests.support import Peer, start_server

TIMEOUT = 30  # keep-alive probes after 10 s of silence


def test_options_set_on_a_listener_are_those_of_every_accepted_socket() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        assert detect_dead_peers(listener, TIMEOUT)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            options = dead_peer_options(TIMEOUT)
            assert options  # keep-alive at least, on any platform
            for level, option, value in options:
                assert accepted.getsockopt(level, option) == value
    # An idle time that is a third of the timeout, and the whole timeout unacknowledged.
    by_option = {option: value for _, option, value in options}
    assert by_option[socket.SO_KEEPALIVE] == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert by_option[socket.TCP_KEEPIDLE] == TIMEOUT // 3
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert by_option[socket.TCP_USER_TIMEOUT] == TIMEOUT * 1000


def test_no_options_when_detection_is_off() -> None:
    assert dead_peer_options(0) == ()
    with socket.socket() as sock:
        assert detect_dead_peers(sock, 0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def keepalive_timers(port: int) -> list[float]:
    """Seconds left on the keep-alive timers of the server's sockets on ``port``."""
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed"
    out = subprocess.run(
        [ss, "-tnoH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    timers = []
    for mins, amount, unit in re.findall(r"timer:\(keepalive,(?:(\d+)min)?([\d.]+)(sec|ms)", out):
        timers.append(int(mins or 0) * 60 + float(amount) / (1000 if unit == "ms" else 1))
    return timers


@pytest.mark.parametrize("worker_class", ["gevent", SIGNAL_WORKER], ids=["gevent", "signal-worker"])
def test_a_stream_socket_has_keepalive_probes(tmp_path: Path, worker_class: str) -> None:
    srv = start_server(tmp_path, {"dead_peer_timeout": TIMEOUT}, worker_class=worker_class)
    try:
        peer = Peer.open(srv.url)
        try:
            deadline = time.monotonic() + 10
            timers = keepalive_timers(srv.port)
            while not timers and time.monotonic() < deadline:
                time.sleep(0.1)
                timers = keepalive_timers(srv.port)
            assert len(timers) == 1, timers
            assert 0 <= timers[0] <= TIMEOUT // 3
        finally:
            peer.close()
    finally:
        srv.stop()
