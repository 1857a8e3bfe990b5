"""The nginx configuration of docs/deployment.md, verbatim but for ports, in front of a hub.

A real nginx (installed by .ci/run) serves the documented ``server`` block on a
free port, proxying to the end-to-end app under ``gunicorn -k gevent``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, Process, Server, free_port, start_server, unavailable
from tests.support import SSE, Peer

NGINX_BLOCK = re.compile(r"```nginx\n(?P<conf>.*?)```", re.S)


def documented_config() -> str:
    (conf,) = NGINX_BLOCK.findall((ROOT / "docs" / "deployment.md").read_text())
    return conf


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("upstream"), {"publish_key": "k"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[Process]:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )
    if binary is None:
        unavailable("nginx is not installed")
    home = tmp_path_factory.mktemp("nginx")
    home.chmod(0o777)
    port = free_port()
    site = documented_config()
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream.port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    temps = "\n".join(
        f"    {name}_temp_path {home / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (home / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temps}
{site}
}}
"""
    )
    argv = [binary, "-p", str(home), "-c", str(home / "nginx.conf")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = Process.start(argv, port=port, log=home / "stdout.log")
    yield proc
    proc.stop(timeout=5)


def test_the_documented_create_url_opens_a_swarm_without_a_redirect(nginx: Process) -> None:
    with SSE.open(f"{nginx.origin}/signal") as sse:
        assert sse.status == 200, bytes(sse.raw)
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.next().event == "connect"


def test_join_and_signal_through_nginx_arrive_at_once(nginx: Process) -> None:
    initiator = Peer.open(f"{nginx.origin}/signal")
    peer = Peer.open(f"{nginx.origin}/signal/{initiator.id}")
    try:
        assert initiator.sse.next().event == "join"
        for n in range(3):  # one by one: nothing waits in a proxy buffer
            posted = peer.post(f"{nginx.origin}/signal", {"n": n})
            assert posted.status_code == 200, posted.text
            for who in (initiator, peer):
                event = who.sse.next(timeout=2)
                assert (event.event, event.json()) == ("signal", {"n": n})
    finally:
        peer.close()
        initiator.close()


def test_channel_resume_through_nginx(nginx: Process) -> None:
    auth = {"Authorization": "Bearer k"}
    ids = []
    for n in range(3):
        answer = requests.post(
            f"{nginx.origin}/signal/channels/news", json={"data": n}, headers=auth, timeout=5
        )
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    url = f"{nginx.origin}/signal/channels/news"
    with SSE.open(url, headers={"Last-Event-ID": ids[0]}) as sse:
        assert sse.status == 200
        assert [(e.id, e.data) for e in sse.events(2)] == [(ids[1], "1"), (ids[2], "2")]


def test_other_paths_reach_the_app(nginx: Process) -> None:
    assert requests.get(f"{nginx.origin}/_test/stats", timeout=5).status_code == 200
