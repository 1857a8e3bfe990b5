"""A Flask app with the signalling hub mounted under /signal, and a demo of it in the browser.

Run it:   gunicorn -k gevent --worker-connections 10000 example_app:app
Open it:  http://localhost:8000/ in two tabs (or on two devices, by the page's link):
          they chat peer to peer over a WebRTC data channel, signalled through the hub.
          /live follows channels the app publishes to.
Try it:   curl -N localhost:8000/signal          # creates a swarm, prints its connect event

Settings come from FLASK_-prefixed environment variables, values as JSON:
FLASK_SIGNAL_BROKER_URL=redis://localhost:6379/0, FLASK_SIGNAL_FAST_PATH=true,
FLASK_SIGNAL_ICE_SERVERS='[{"urls": "stun:stun.example.org:3478"}]' ...
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gevent
from flask import Flask, render_template, request

from flask_signal import Signal

DEMO = Path(__file__).resolve().parent / "demo"

app = Flask(
    __name__,
    template_folder=str(DEMO / "templates"),
    static_folder=str(DEMO / "static"),
    static_url_path="/demo",
)
app.config.from_prefixed_env()
signal = Signal(app)

#: The channels the live page follows: a clock the app ticks, and notes visitors post.
CLOCK, NOTES = "demo.clock", "demo.notes"
_ticker: list[gevent.Greenlet] = []


@app.context_processor
def hub_urls() -> dict[str, Any]:
    prefix = app.extensions["signal_state"].settings.url_prefix
    return {"hub": prefix or "/", "client_url": signal.client_url()}


@app.get("/")
def chat() -> str:
    """Two tabs or devices join one swarm by the page's link and chat peer to peer."""
    return render_template("chat.html")


def tick() -> None:
    with app.app_context():
        while True:
            stats = signal.stats()
            signal.publish(
                CLOCK,
                {"time": time.time(), "streams": stats["streams"], "swarms": stats["swarms"]},
                event="tick",
            )
            gevent.sleep(1)


@app.get("/live")
def live() -> str:
    """A page following the app's channels: the clock, and notes anyone can post."""
    if not _ticker:
        _ticker.append(gevent.spawn(tick))
    return render_template("live.html", channels=[CLOCK, NOTES])


@app.post("/live/notes")
def post_note() -> tuple[dict[str, Any], int]:
    body = request.get_json(silent=True) or {}
    text = str(body.get("text", "")).strip()[:280]
    if not text:
        return {"error": "write something"}, 400
    event_id = signal.publish(NOTES, {"text": text, "time": time.time()}, event="note")
    return {"ok": True, "id": event_id}, 200


@app.get("/api")
def index() -> dict[str, str]:
    return {
        "hub": "/signal",
        "try": "curl -N localhost:8000/signal  (then POST to /signal/<id> with the token)",
    }
