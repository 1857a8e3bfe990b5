"""Small WSGI apps that tests/test_worker.py serves with flask_signal.worker.GeventWorker."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.event import Event
from gevent.socket import wait_read
from greenlet import getcurrent

StartResponse = Callable[..., Any]

# Shared between the requests of the (single) worker process.
released = Event()
state = {"closed": 0, "eof_seen": 0}


def _json(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


class Counted:
    """An app iterable whose close() is counted in ``state["closed"]``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        state["closed"] += 1


def _ticks() -> Iterator[bytes]:
    while True:
        yield b"tick\n"
        gevent.sleep(0.05)


def _first_then_wait() -> Iterator[bytes]:
    yield b"first\n"
    released.wait(10)
    released.clear()
    yield b"second\n"


def _watch(sock: socket.socket) -> Iterator[bytes]:
    """Yield once, then wait for the client to close, as an SSE stream's watcher does."""
    yield b"watching\n"
    raw = getattr(sock, "_sock", sock)
    while True:
        wait_read(sock.fileno(), timeout=10)
        try:
            if raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                state["eof_seen"] += 1
                return
        except BlockingIOError:
            continue


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/echo":
        stream = environ["wsgi.input"]
        first_line = stream.readline() if environ.get("QUERY_STRING") == "lines" else b""
        body = first_line + stream.read()
        return _json(
            start_response,
            {"method": method, "length": len(body), "body": body.decode("latin-1")},
        )
    if path == "/chunks":
        # read(n) in small pieces and iterate, to exercise the input's buffering
        stream = environ["wsgi.input"]
        pieces = []
        while piece := stream.read(3):
            pieces.append(piece)
        return _json(start_response, {"pieces": len(pieces), "body": b"".join(pieces).decode()})
    if path.startswith("/environ"):
        keys = [
            "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
            "REMOTE_PORT", "HTTP_HOST", "HTTP_X_MULTI", "RAW_URI", "wsgi.url_scheme",
            "wsgi.input_terminated", "wsgi.multithread",
        ]  # fmt: skip
        data = {k: environ.get(k) for k in keys}
        data["version"] = list(environ["wsgi.version"])
        sock = environ.get("gunicorn.socket")
        data["socket"] = isinstance(sock, socket.socket) and sock.fileno() > 0
        data["greenlet"] = getcurrent().parent is not None
        return _json(start_response, data)
    if path == "/headers":  # every request header the app sees
        fields = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        return _json(start_response, fields)
    if path == "/respond-with":  # a response header holding the query, decoded
        from urllib.parse import unquote

        start_response("200 OK", [("X-Echo", unquote(environ["QUERY_STRING"]))])
        return [b"echoed"]
    if path == "/error":
        raise RuntimeError("this app fails on purpose")
    if path == "/oserror":  # the app's own OSError is an app error, not a client gone
        raise FileNotFoundError("no such file, on purpose")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _first_then_wait()
    if path == "/release":
        released.set()
        return _json(start_response, {"released": True})
    if path == "/ticks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Counted(_ticks())
    if path == "/watch":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Counted(_watch(environ["gunicorn.socket"]))
    if path == "/state":
        return _json(start_response, dict(state, pid=os.getpid()))
    if path == "/slow":
        gevent.sleep(float(environ.get("QUERY_STRING") or 1))
        return _json(start_response, {"slow": True})
    if path == "/nolength":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"abc", b"", b"def"])
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written,")
        return [b"returned"]
    if path == "/big":
        body = b"x" * int(environ["QUERY_STRING"])
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/bigstream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return iter([b"a" * 100_000, b"b" * 10])
    if path == "/overlong":  # yields more than it announced
        start_response("200 OK", [("Content-Length", "5")])
        return iter([b"abc", b"defgh"])
    if path == "/short":  # yields less than it announced
        start_response("200 OK", [("Content-Length", "10")])
        return iter([b"abc"])
    return _json(start_response, {"error": "not found"}, "404 Not Found")


def flask_app() -> Any:
    """A plain Flask app, to show Flask runs unchanged under the worker."""
    from flask import Flask, request

    fapp = Flask(__name__)

    @fapp.post("/json")
    def echo_json() -> Any:
        return {"got": request.get_json(), "length": len(request.get_data())}

    @fapp.get("/hello/<name>")
    def hello(name: str) -> Any:
        return {"hello": name, "args": request.args.to_dict()}

    return fapp


flask = flask_app()
