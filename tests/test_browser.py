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

from flask_signal import ice
from tests.browser_app import page_html
from tests.support import Peer as RawPeer
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
    """Another origin: serves one HTML page (``html``, set once known) at every path."""

    daemon_threads = True
    html = b""

    def __init__(self) -> None:
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


@pytest.fixture
def other_origin() -> Iterator[PageServer]:
    server = PageServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def serve_page_for(server: PageServer, hub: Server) -> None:
    """The test page, on ``server``'s origin, importing the client from the hub's."""
    client = requests.get(hub.origin + "/_test/client_url", timeout=5).json()["url"]
    server.html = page_html(hub.origin + client, hub.url).encode()


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


@pytest.mark.parametrize("credentials", [False, True], ids=["anonymous", "credentials"])
def test_a_page_on_another_origin(
    context: Any, hub_factory: Any, other_origin: PageServer, credentials: bool
) -> None:
    hub = hub_factory({"cors": [other_origin.origin], "cors_credentials": credentials})
    serve_page_for(other_origin, hub)
    context.add_cookies([{"name": "session", "value": "s1", "url": hub.origin}])
    a = open_page(context, other_origin.origin + "/a")
    b = open_page(context, other_origin.origin + "/b")
    assert a.evaluate("HUB") == hub.url and not hub.url.startswith(other_origin.origin)
    swarm_round_trip(a, b, with_credentials=credentials)


def test_credentials_need_the_hub_to_allow_them(
    context: Any, hub_factory: Any, other_origin: PageServer
) -> None:
    hub = hub_factory({"cors": [other_origin.origin]})
    serve_page_for(other_origin, hub)
    page = open_page(context, other_origin.origin + "/")
    page.evaluate("window.peer = record(new Peer(HUB, null, {withCredentials: true}), ['close'])")
    page.wait_for_function("peer.closed")
    assert page.evaluate("peer.connected") is False
    assert page.evaluate("peer.seen[0][0]") == "close"


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


def test_the_docs_example_chats_between_two_pages(context: Any, hub_factory: Any) -> None:
    """docs/browser.md's page, as written: two pages meet by its link and chat peer to peer."""
    hub = hub_factory()
    a = context.new_page()
    a.goto(hub.origin + "/_test/docs_example")
    a.wait_for_function("document.getElementById('link').href.includes('#')")
    b = context.new_page()
    b.goto(a.evaluate("document.getElementById('link').href"))
    for page in (a, b):
        page.wait_for_function("document.getElementById('log').textContent.includes('connected')")
    b.fill("#text", "hi from b")
    b.press("#text", "Enter")
    a.wait_for_function("document.getElementById('log').textContent.includes('them: hi from b')")
    a.fill("#text", "hi from a")
    a.press("#text", "Enter")
    b.wait_for_function("document.getElementById('log').textContent.includes('them: hi from a')")


# -- ICE servers ---------------------------------------------------------------------------


def test_turn_credentials_are_coturns_shared_secret_scheme() -> None:
    # The username is "<expiry>:<cid>", the password base64(HMAC-SHA1(secret, username)):
    # what coturn's use-auth-secret recomputes from its static-auth-secret.
    # The value is openssl's:
    # echo -n 1700000000:abc | openssl dgst -sha1 -hmac north -binary | base64
    username, password = ice.turn_credentials("north", "abc", 1700000000)
    assert username == "1700000000:abc"
    assert password == "g5HTmCBrPDhYXFpM/1dHUtfE+c4="


def test_ice_servers_from_settings() -> None:
    servers = ice.normalize(
        [
            "stun:stun.example.org:3478",
            {"urls": ["turn:turn.example.org:3478", "turns:turn.example.org:5349"]},
            {"urls": "turn:other.example.org", "username": "u", "credential": "c"},
        ]
    )
    given = ice.ice_servers(servers, "cid1", turn_secret="s", ttl=600, now=1000.5)
    assert given[0] == {"urls": "stun:stun.example.org:3478"}
    username, password = ice.turn_credentials("s", "cid1", 1600)
    assert given[1] == {
        "urls": ["turn:turn.example.org:3478", "turns:turn.example.org:5349"],
        "username": username,
        "credential": password,
    }
    assert given[2] == {"urls": "turn:other.example.org", "username": "u", "credential": "c"}
    assert ice.ice_servers(servers, "cid1", now=0)[1] == servers[1]  # no secret, no credentials
    for bad in (["http://x"], [{"urls": []}], [{"urls": "stun:x", "password": "p"}]):
        with pytest.raises(ValueError):
            ice.normalize(bad)


def test_connect_data_carries_ice_servers(hub_factory: Any) -> None:
    hub = hub_factory(
        {
            "ice_servers": ["stun:stun.example.org", "turn:turn.example.org:3478"],
            "turn_secret": "s3cret",
            "turn_ttl": 300,
        }
    )
    peer = RawPeer.open(hub.url, headers={"Accept": "text/event-stream"})
    try:
        data = json.loads(bytes(peer.sse.raw).split(b"data: ")[1].split(b"\n")[0])
        assert set(data) == {"id", "cid", "token", "iceServers"}
        stun, turn = data["iceServers"]
        assert stun == {"urls": "stun:stun.example.org"}
        expiry, cid = turn["username"].split(":")
        assert cid == peer.cid and int(expiry) > 0
        assert ice.turn_credentials("s3cret", cid, int(expiry))[1] == turn["credential"]
    finally:
        peer.close()
    # Without ICE servers configured, connect data is what the original sends.
    plain = RawPeer.open(hub_factory().url)
    try:
        assert b"iceServers" not in bytes(plain.sse.raw)
    finally:
        plain.close()
