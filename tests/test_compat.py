"""koa-signal's own clients, unchanged, against the hub: request + ssejson, moshpit-style
line parsing, and a WHATWG EventSource (the npm eventsource package, as browsers behave).

The Node packages are installed by the ``node_modules`` fixture (``npm ci`` in
tests/compat when missing); without Node these tests fail under CI and skip elsewhere.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import Server

COMPAT = Path(__file__).parent / "compat"
pytestmark = pytest.mark.usefixtures("node_modules")


def node_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(COMPAT / name), *args], capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize("prefix", ["/signal", ""])
def test_koa_signal_readme_example(make_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"url_prefix": prefix})
    done = node_script("koa_example.js", srv.url)
    assert done.returncode == 0, done.stderr
    greeting = done.stdout.strip()
    assert greeting.startswith("hello ") and len(greeting) == len("hello ") + 32


def test_moshpit_style_line_parsing(hub: Server) -> None:
    done = node_script("moshpit_lines.js", hub.url)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0][0] == "connect" and set(rows[0][1]) == {"id", "cid", "token"}
    peer_connect = next(r for r in rows if r[:2] == ["peer", "connect"])
    assert ["join", {"id": rows[0][1]["id"], "cid": peer_connect[2]["cid"]}] in rows
    assert rows[-1][:2] == ["peer", "signal"]
    assert rows[-1][2] == {"message": "ping", "from": peer_connect[2]["cid"]}


@pytest.mark.parametrize("prefix", ["/signal", ""])
def test_whatwg_eventsource_swarm_and_channel_resume(make_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"url_prefix": prefix, "retry": 100})
    done = node_script("eventsource.js", srv.url, srv.origin)
    assert done.returncode == 0, done.stderr + done.stdout
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert [item.split("@")[0] for item in seen] == ["first", "second"]
