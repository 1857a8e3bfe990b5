"""The JS client and the demo in a real browser: Debian's Chromium, driven by Playwright.

Chromium comes from the distribution (.ci/run installs it); Playwright's own browser
download is never used. WebRTC runs over loopback: Chromium gathers candidates on every
interface, and the pages signal only their 127.0.0.1 ones. Under CI a missing Chromium
fails these tests; elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser_app import page_html
from tests.support import Server, free_port, start_server

CHROMIUM = os.environ.get("SIGNAL_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Every page signals only its loopback candidates: a listener added first, in the
# constructor, stops the others from hearing any other candidate.
LOOPBACK_ONLY = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("icecandidate", (event) => {
        if (event.candidate && !/ 127\\.0\\.0\\.1 /.test(event.candidate.candidate)) {
          event.stopImmediatePropagation();
        }
      });
    }
  };
})();
"""
TIMEOUT = 10_000  # ms, for anything a test waits for in a page

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Chromium is required under CI ({CHROMIUM}; .ci/run installs it)")
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context()
    ctx.add_init_script(LOOPBACK_ONLY)
    ctx.set_default_timeout(TIMEOUT)
    yield ctx
    ctx.close()


def serve(
    tmp_path: Path,
    app: str,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """``app`` under gunicorn's gevent worker on a free port."""
    return start_server(
        tmp_path, settings, app=app, extra_env=env, extra_args=["--graceful-timeout", "1"]
    )


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def make(settings: dict[str, Any] | None = None) -> Server:
        srv = serve(tmp_path, "tests.browser_app:create_app()", settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


class PageServer(ThreadingHTTPServer):
    """Another origin: serves one HTML page at every path."""

    daemon_threads = True

    def __init__(self, html: str) -> None:
        self.html = html.encode()
        super().__init__(("127.0.0.1", free_port()), _PageHandler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.html)))
        self.end_headers()
        self.wfile.write(self.server.html)

    def log_message(self, *args: Any) -> None:
        pass


def other_origin_page(hub: Server) -> Iterator[PageServer]:
    client = requests.get(hub.origin + "/_test/client_url", timeout=5).json()["url"]
    server = PageServer(page_html(hub.origin + client, hub.url))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)
    page.wait_for_function("window.ready === true")
    return page


def swarm_round_trip(a: Any, b: Any, with_credentials: bool = False) -> None:
    """Two pages: join, direct and broadcast signals, a WebRTC data channel, then leave."""
    options = json.dumps({"withCredentials": with_credentials})
    events = json.dumps(["connect", "join", "leave", "signal", "error", "close"])
    a.evaluate(f"window.peer = record(new Peer(HUB, null, {options}), {events})")
    a.wait_for_function("peer.connected")
    swarm_id = a.evaluate("peer.id")
    b.evaluate(f"window.peer = record(new Peer(HUB, {json.dumps(swarm_id)}, {options}), {events})")
    b.wait_for_function("peer.connected")
    a_cid, b_cid = a.evaluate("peer.cid"), b.evaluate("peer.cid")
    assert b.evaluate("[peer.id, peer.initiator]") == [swarm_id, False]
    a.wait_for_function(f"peer.seen.some(([e, d]) => e === 'join' && d.cid === {b_cid!r})")

    # Direct: only the peer named hears it. Broadcast: everyone, the sender too.
    b.evaluate(f"peer.send({{n: 1, to: 'a'}}, {a_cid!r})")
    b.evaluate("peer.send({n: 2, _cid: " + repr(a_cid) + "})")  # moshpit's way to say it
    a.evaluate("peer.send({n: 3, to: 'all'})")
    a.wait_for_function("peer.seen.filter(([e]) => e === 'signal').length === 3")
    b.wait_for_function("peer.seen.filter(([e]) => e === 'signal').length === 1")
    signals = "peer.seen.filter(([e]) => e === 'signal').map(([, d]) => d)"
    assert a.evaluate(signals) == [{"n": 1, "to": "a"}, {"n": 2}, {"n": 3, "to": "all"}]
    assert b.evaluate(signals) == [{"n": 3, "to": "all"}]

    # A real data channel over loopback, offered by the initiator, signalled through the hub.
    b.evaluate(f"window.link = rtcLink(peer, {a_cid!r}, false)")
    a.evaluate(f"window.link = rtcLink(peer, {b_cid!r}, true)")
    a.wait_for_function("link.open")
    b.wait_for_function("link.open")
    a.evaluate("link.channel.send('hello over WebRTC')")
    b.wait_for_function("link.received.length === 1")
    assert b.evaluate("link.received") == ["hello over WebRTC"]
    assert a.evaluate("link.pc.connectionState") == "connected"

    # B leaves: A hears it within a second.
    b.evaluate("window.link.pc.close(); peer.close()")
    a.wait_for_function(
        f"peer.seen.some(([e, d]) => e === 'leave' && d.cid === {b_cid!r})", timeout=1000
    )
    assert b.evaluate("[peer.closed, peer.seen.at(-1)]") == [True, ["close", None]]
    assert a.evaluate("peer.seen.filter(([e]) => e === 'error').length") == 0
    assert not a.errors and not b.errors, a.errors + b.errors


def test_two_pages_signal_and_open_a_data_channel(context: Any, hub_factory: Any) -> None:
    hub = hub_factory()
    a = open_page(context, hub.origin + "/_test/page")
    b = open_page(context, hub.origin + "/_test/page")
    swarm_round_trip(a, b)


def test_client_is_served_versioned_and_long_cached(hub_factory: Any) -> None:
    hub = hub_factory()
    url = requests.get(hub.origin + "/_test/client_url", timeout=5).json()["url"]
    assert url.startswith("/signal/client.js?v=")
    versioned = requests.get(hub.origin + url, timeout=5)
    assert versioned.status_code == 200
    assert versioned.headers["Content-Type"].startswith("text/javascript")
    assert "max-age=31536000" in versioned.headers["Cache-Control"]
    assert "export class Peer" in versioned.text
    bare = requests.get(hub.url + "/client.js", timeout=5)
    assert bare.text == versioned.text and bare.headers["Cache-Control"] == "no-cache"
    again = requests.get(hub.url + "/client.js", headers={"If-None-Match": bare.headers["ETag"]})
    assert again.status_code == 304
    types = requests.get(hub.url + "/client.d.ts", timeout=5)
    assert types.status_code == 200 and "export declare class Peer" in types.text


def test_channels_resume_after_a_drop_mid_burst(context: Any, hub_factory: Any) -> None:
    hub = hub_factory({"retry": 100})
    page = open_page(context, hub.origin + "/_test/page")
    page.evaluate(
        "window.sub = subscribe(HUB, ['burst.a', 'burst.b']);"
        "window.got = []; window.opens = 0;"
        "sub.on('open', () => opens++);"
        "sub.on('message', (data) => got.push(data.n));"
    )
    page.wait_for_function("opens === 1")
    count = 200
    requests.post(
        hub.origin + "/_test/burst",
        json={"channels": ["burst.a", "burst.b"], "count": count},
        timeout=5,
    ).raise_for_status()
    page.wait_for_function(f"got.length >= {count}")
    page.wait_for_timeout(300)  # anything duplicated would arrive meanwhile
    assert page.evaluate("got") == list(range(count))
    assert page.evaluate("opens") >= 2, "the stream was not dropped"
    assert page.evaluate("sub.lastEventId") != ""
    page.evaluate("sub.close()")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Server]:
    srv = serve(tmp_path, "example_app:app", env={"FLASK_SIGNAL_PING_INTERVAL": "5"})
    yield srv
    srv.stop()


PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}


def test_demo_chat_between_two_pages(
    browser: Any, context: Any, demo: Server, tmp_path: Path
) -> None:
    """The demo renders (screenshots kept beside the test's server logs) and its chat works."""
    context.close()
    desktop = browser.new_context(viewport={"width": 1280, "height": 860})
    phone = browser.new_context(**PHONE)
    try:
        for ctx in (desktop, phone):
            ctx.add_init_script(LOOPBACK_ONLY)
            ctx.set_default_timeout(TIMEOUT)
        a = desktop.new_page()
        a.goto(demo.origin + "/")
        link = a.locator("#link")
        a.wait_for_function("document.getElementById('link').value.includes('?room=')")
        assert a.locator("#status").get_attribute("data-state") == "waiting"
        b = phone.new_page()
        b.goto(link.input_value())
        for page in (a, b):
            page.wait_for_function("document.getElementById('status').dataset.state === 'p2p'")
        b.fill("#text", "hello from the phone")
        b.click("#send")
        a.wait_for_function(
            "[...document.querySelectorAll('#messages .theirs .text')]"
            ".some((el) => el.textContent === 'hello from the phone')"
        )
        a.fill("#text", "hello from the desktop")
        a.press("#text", "Enter")
        b.wait_for_function(
            "[...document.querySelectorAll('#messages .theirs .text')]"
            ".some((el) => el.textContent === 'hello from the desktop')"
        )
        # The signalling shows as it happens: the offer went out, the answer came in.
        assert "offer" in a.locator("#log").inner_text()
        assert "signal: answer" in a.locator("#log").inner_text()
        a.screenshot(path=tmp_path / "demo-chat-desktop.png", full_page=True)
        b.screenshot(path=tmp_path / "demo-chat-phone.png", full_page=True)

        b.close()  # the peer leaves: the initiator's page says so
        a.wait_for_function("document.getElementById('status').dataset.state === 'waiting'")

        # The live page, on both: a note posted on one reaches the other at once.
        live, wide = phone.new_page(), desktop.new_page()
        for page in (live, wide):
            page.goto(demo.origin + "/live")
            page.wait_for_function("document.getElementById('time').textContent.includes(':')")
        live.fill("#note", "a note for everyone")
        live.press("#note", "Enter")
        for page in (live, wide):
            page.wait_for_function(
                "document.getElementById('notes').textContent.includes('a note')"
            )
        live.screenshot(path=tmp_path / "demo-live-phone.png", full_page=True)
        wide.screenshot(path=tmp_path / "demo-live-desktop.png", full_page=True)
    finally:
        desktop.close()
        phone.close()
