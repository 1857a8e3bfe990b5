"""A Flask app with the signalling hub mounted under /signal.

Run it:   gunicorn -k gevent --worker-connections 10000 example_app:app
Try it:   curl -N localhost:8000/signal          # creates a swarm, prints its connect event

Settings come from FLASK_-prefixed environment variables, values as JSON:
FLASK_SIGNAL_BROKER_URL=redis://localhost:6379/0, FLASK_SIGNAL_FAST_PATH=true ...
"""

from flask import Flask

from flask_signal import Signal

app = Flask(__name__)
app.config.from_prefixed_env()
signal = Signal(app)


@app.get("/")
def index() -> dict[str, str]:
    return {
        "hub": "/signal",
        "try": "curl -N localhost:8000/signal  (then POST to /signal/<id> with the token)",
    }
