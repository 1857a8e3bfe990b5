"""The app the end-to-end suite serves, configured from the environment.

``SIGNAL_TEST_SETTINGS`` holds JSON keyword arguments for :class:`Signal`.
Routes under ``/_test`` let tests drive the application-side API (send,
publish, stats) and read which lifecycle signals fired, from outside the
server process, as a real application would expose them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, abort, jsonify, request

from flask_signal import Signal, signals


def create_app() -> Flask:
    settings: dict[str, Any] = json.loads(os.environ.get("SIGNAL_TEST_SETTINGS", "{}"))
    app = Flask(__name__)
    signal = Signal(app, **settings)
    fired: list[dict[str, Any]] = []

    def recorder(name: str) -> Any:
        def record(sender: Flask, **kwargs: Any) -> None:
            stream = kwargs.pop("stream", None)
            if stream is not None:
                kwargs["stream"] = {"kind": stream.kind, "cid": stream.cid}
            fired.append({"signal": name, **kwargs})

        return record

    # Churn tests run without the record, which grows with every stream.
    recorded = (
        ()
        if os.environ.get("SIGNAL_TEST_NO_RECORD")
        else (
            "swarm_created",
            "peer_joined",
            "peer_left",
            "swarm_closed",
            "client_connected",
            "client_disconnected",
            "channel_opened",
            "channel_emptied",
            "message_published",
        )
    )
    for name in recorded:
        getattr(signals, name).connect(recorder(name), app, weak=False)

    hooked: list[str] = []

    @app.before_request
    def count_hooked() -> None:
        if not request.path.startswith("/_test"):
            hooked.append(f"{request.method} {request.path}")

    @app.get("/_test/hooked")
    def get_hooked() -> Any:
        return jsonify(hooked)

    @app.get("/_test/fired")
    def get_fired() -> Any:
        return jsonify(fired)

    @app.post("/_test/send/<swarm_id>")
    def send(swarm_id: str) -> Any:
        body = request.get_json()
        return jsonify(ok=signal.send(swarm_id, body["data"], cid=body.get("cid")))

    @app.post("/_test/publish")
    def publish() -> Any:
        body = request.get_json()
        try:
            event_id = signal.publish(
                body["channel"],
                body["data"],
                event=body.get("event"),
                id=body.get("id"),
                retry=body.get("retry"),
            )
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(id=event_id)

    @app.post("/_test/publish_flask_sse")
    def publish_flask_sse() -> Any:
        """Flask-SSE's call: ``publish(data, type=..., id=..., retry=...)``."""
        body = request.get_json()
        return jsonify(id=signal.publish(body["data"], type=body.get("type"), id=body.get("id")))

    @app.post("/_test/retry")
    def retry() -> Any:
        body = request.get_json()
        return jsonify(reached=signal.retry(body["ms"], body.get("channel")))

    @app.post("/_test/ping")
    def ping() -> Any:
        return jsonify(reached=signal.ping((request.get_json() or {}).get("channel")))

    @app.get("/_test/history/<channel>")
    def history(channel: str) -> Any:
        return jsonify(signal.history(channel, since=request.args.get("since")))

    @app.post("/_test/publish_burst")
    def publish_burst() -> Any:
        body = request.get_json()
        import gevent

        ids = []
        for i in range(body["count"]):
            ids.append(signal.publish(body["channel"], {"n": i}))
            if i % 10 == 0:
                gevent.sleep(0)
        return jsonify(ids=ids)

    @app.post("/_test/publish_all")
    def publish_all() -> Any:
        body = request.get_json()
        return jsonify(id=signal.publish_all(body["data"], event=body.get("event")))

    @app.post("/_test/close/<channel>")
    def close(channel: str) -> Any:
        signal.close(channel)
        return jsonify(ok=True)

    @app.post("/_test/compat_channel")
    def compat_channel() -> Any:
        """Publish, drop the channel's streams, publish again while clients reconnect."""
        import gevent

        def run() -> None:
            with app.app_context():
                signal.publish("compat", "first")
                gevent.sleep(0.1)
                signal.close("compat")
                gevent.sleep(0.05)
                signal.publish("compat", "second")

        gevent.spawn(run)
        return jsonify(ok=True)

    @app.get("/_test/stats")
    def stats() -> Any:
        return jsonify(
            {**signal.stats(), "count": signal.connection_count(request.args.get("channel"))}
        )

    @app.get("/_test/process")
    def process() -> Any:
        """What the worker holds: descriptors, greenlets, resident memory (for churn tests)."""
        import gc

        import greenlet

        gc.collect()
        rss = 0
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return jsonify(
            fds=len(os.listdir("/proc/self/fd")),
            greenlets=sum(
                isinstance(o, greenlet.greenlet) and not o.dead for o in gc.get_objects()
            ),
            rss=rss,
            peers=len(signal.broker.hub.peers),
            channels=len(signal.broker.hub.channels),
            streams=len(signal.broker.hub.streams),
            swarms=signal.broker.swarm_count(),
        )

    @signal.stream("/rooms/<room>/feed")
    def room_feed(room: str) -> Any:
        if room.startswith("secret"):
            abort(403)
        if request.args.get("initial"):

            def initial() -> Any:
                # Publish while the initial data is computed: it must come after.
                signal.publish(f"room.{room}", "during-initial")
                return {"room": room, "state": "initial"}

            return signal.subscription(f"room.{room}", initial, event="init")
        return f"room.{room}"

    return app
