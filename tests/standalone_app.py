"""An application served by ``flask-signal --app tests.standalone_app:signal``
(sse.io's standalone mode): its own declared route and settings."""

from __future__ import annotations

from flask import Flask

from flask_signal import Signal

app = Flask(__name__)
signal = Signal(app, url_prefix="/hub", publish_key="standalone-key", retry=2500)


@signal.stream("/users/<user>/foo")
def foo(user: str) -> object:
    return signal.subscription(f"user.{user}", lambda: {"user": user}, event="init", client=user)
