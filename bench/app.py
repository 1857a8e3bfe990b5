"""The application the benchmark serves: example_app's hub, configured from the environment.

``app.config.from_prefixed_env()`` turns ``FLASK_SIGNAL_BROKER_URL`` and
``FLASK_SIGNAL_PUBLISH_KEY`` into the extension's settings, so one module
serves memory:// and Redis runs and allows publishing over HTTP.
``/_bench/stats`` exposes :meth:`Signal.stats` of the answering worker.
"""

from typing import Any

from flask import Flask

from flask_signal import Signal

app = Flask(__name__)
app.config.from_prefixed_env()
signal = Signal(app)


@app.get("/_bench/stats")
def stats() -> dict[str, Any]:
    return signal.stats()
