"""The end-to-end app (:mod:`tests.apps`) plus declared streams with initial data and
client ids, and routes that drive ``send_to``, ``disconnect`` and ``presence``."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
from flask import Flask, jsonify, request

from flask_signal import signals


def create_app() -> Flask:
    from tests.apps import create_app as base

    app = base()
    signal = app.extensions["signal"]
    errors: list[str] = []
    #: Fetches wait on these until a test opens them (``/_test/gate/<name>``).
    gates: dict[str, gevent.event.Event] = {}

    def record_error(sender: Flask, exception: BaseException, **kwargs: Any) -> None:
        errors.append(repr(exception))

    signals.error.connect(record_error, app, weak=False)

    @signal.stream("/fetch/<kind>")
    def fetch(kind: str) -> Any:
        def initial() -> Any:
            gate = request.args.get("gate")
            if gate:
                gates.setdefault(gate, gevent.event.Event()).wait(10)
            if kind == "raise":
                raise RuntimeError("the database is down")
            if kind == "string":
                return "first line\nsecond line"
            return {"kind": kind, "user": request.args.get("user")}

        return signal.subscription(f"fetch.{kind}", initial, event="init")

    @signal.stream("/clients/<client>")
    def client_feed(client: str) -> Any:
        return signal.subscription(request.args.getlist("channel") or ["lobby"], client=client)

    @app.post("/_test/gate/<name>")
    def open_gate(name: str) -> Any:
        gates.setdefault(name, gevent.event.Event()).set()
        return jsonify(ok=True)

    @app.get("/_test/errors")
    def get_errors() -> Any:
        return jsonify(errors)

    @app.post("/_test/send_to/<client>")
    def send_to(client: str) -> Any:
        body = request.get_json()
        signal.send_to(client, body["data"], event=body.get("event"), id=body.get("id"))
        return jsonify(ok=True)

    @app.post("/_test/disconnect/<client>")
    def disconnect(client: str) -> Any:
        signal.disconnect(client)
        return jsonify(ok=True)

    @app.get("/_test/presence/<channel>")
    def presence(channel: str) -> Any:
        return jsonify(
            clients=sorted(signal.presence(channel)), count=signal.subscriber_count(channel)
        )

    return app
