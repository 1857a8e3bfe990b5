"""The browser tests' app: the end-to-end suite's app, plus a page that loads the JS client.

``/_test/page`` is a blank page with the client's exports on ``window`` and a few helpers
the tests drive through Playwright; ``/_test/burst`` publishes a burst on two channels and
drops their streams half-way. ``page_html`` is also served from another origin by the tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gevent
from flask import Flask, Response, jsonify, request

from tests.apps import create_app as create_test_app

# Helpers for the tests: every event of a peer or subscription, in order, and a WebRTC data
# channel between two peers signalled through the hub.
HELPERS = """
window.record = (source, events) => {
  source.seen = [];
  for (const name of events) source.on(name, (data) => source.seen.push([name, data]));
  return source;
};
window.rtcLink = (peer, remote, offering) => {
  const pc = peer.createPeerConnection();
  const link = { pc, received: [], open: false };
  pc.onicecandidate = ({ candidate }) => {
    if (candidate) peer.send({ kind: "candidate", candidate: candidate.toJSON() }, remote);
  };
  const use = (channel) => {
    link.channel = channel;
    channel.onopen = () => (link.open = true);
    channel.onmessage = ({ data }) => link.received.push(data);
  };
  pc.ondatachannel = ({ channel }) => use(channel);
  // Handled one after another: a candidate must wait for the description before it.
  let chain = Promise.resolve();
  peer.on("signal", (data) => (chain = chain.then(() => handle(data))));
  const handle = async (data) => {
    if (data.kind === "offer") {
      await pc.setRemoteDescription(data.sdp);
      await pc.setLocalDescription(await pc.createAnswer());
      peer.send({ kind: "answer", sdp: pc.localDescription.toJSON() }, remote);
    } else if (data.kind === "answer") {
      await pc.setRemoteDescription(data.sdp);
    } else if (data.kind === "candidate") {
      await pc.addIceCandidate(data.candidate);
    }
  };
  if (offering) {
    use(pc.createDataChannel("test"));
    pc.createOffer()
      .then((offer) => pc.setLocalDescription(offer))
      .then(() => peer.send({ kind: "offer", sdp: pc.localDescription.toJSON() }, remote));
  }
  return link;
};
"""


def page_html(client_url: str, hub: str) -> str:
    """A page importing the client from ``client_url`` and talking to the hub at ``hub``."""
    return f"""<!doctype html><meta charset="utf-8"><title>client test</title>
<script type="module">
import * as client from {json.dumps(client_url)};
Object.assign(window, client, {{ HUB: {json.dumps(hub)} }});
{HELPERS}
window.ready = true;
</script>"""


def docs_example() -> str:
    """The page of docs/browser.md: its first ``html`` block."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "browser.md").read_text()
    match = re.search(r"^```html\n(.*?)^```", text, re.M | re.S)
    assert match, "docs/browser.md has no html example"
    return match.group(1)


def create_app() -> Flask:
    app = create_test_app()
    signal = app.extensions["signal"]

    @app.get("/_test/page")
    def page() -> Response:
        hub = request.host_url.rstrip("/") + app.extensions["signal_state"].settings.url_prefix
        return Response(page_html(signal.client_url(), hub), mimetype="text/html")

    @app.get("/_test/docs_example")
    def docs_page() -> Response:
        return Response(docs_example(), mimetype="text/html")

    @app.get("/_test/client_url")
    def client_url() -> Any:
        return jsonify(url=signal.client_url())

    @app.post("/_test/burst")
    def burst() -> Any:
        """Publish ``count`` events alternating on ``channels``; end their streams half-way."""
        body = request.get_json()
        channels, count = body["channels"], body["count"]

        def run() -> None:
            with app.app_context():
                for n in range(count):
                    signal.publish(channels[n % len(channels)], {"n": n})
                    if n == count // 2:
                        signal.close(channels[0])
                    gevent.sleep(0.002)

        gevent.spawn(run)
        return jsonify(ok=True)

    return app
