"""A Python peer for a signal hub: the moshpit client's behaviour, with a requests-style API.

::

    from flask_signal.client import Peer

    with Peer("http://localhost:5000") as owner:      # creates a swarm
        print(owner.id, owner.cid)
        owner.send({"hello": "me"})                    # broadcast: reaches owner too
        for event, data in owner:                      # ("signal", {"hello": "me"}), ...
            ...

A peer reads its stream either in the caller's thread (``connect()`` and
iteration) or in a background thread (``start()``, then handlers registered
with ``on()``). Handlers run in whichever thread reads. Under gevent's
monkey patching the background thread is a greenlet and everything is
cooperative, as ``requests`` is.

Timeouts are ``(connect, read)`` seconds, as in ``requests``. ``connect``
bounds opening the connection and waiting for the ``connect`` frame; ``read``
is how long an open stream may stay silent before it is considered dead. The
hub sends a keep-alive comment every ``ping_interval`` (15 s by default), so
the default read timeout of 60 s only fires when the hub or the network is
gone; with pings disabled on the hub, pass ``read=None`` to wait forever.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.client import HTTPException
from typing import Any, TypeVar, overload
from urllib.parse import quote

try:
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error
    from urllib3.exceptions import ReadTimeoutError
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "flask_signal.client needs requests: pip install 'flask-signal[client]'"
    ) from exc

from .sse import SSEParser

__all__ = ["EVENTS", "ConnectionLost", "Peer", "SignalError", "SignalTimeout"]

#: The events a peer dispatches to handlers. ``error`` reports a send made
#: before connecting that the hub refused; ``close`` comes last, once.
EVENTS = ("connect", "join", "leave", "signal", "error", "close")

Timeout = float | tuple[float | None, float | None] | None
Handler = Callable[[Any], object]
H = TypeVar("H", bound=Handler)

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)


class SignalError(Exception):
    """The hub refused a request: ``status`` is the HTTP status, ``message`` its ``{"error"}``."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class SignalTimeout(SignalError):
    """The hub did not answer, or the stream stayed silent, within the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class ConnectionLost(SignalError):
    """The stream broke off (network error, truncated response) instead of ending cleanly."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def _error_from(response: requests.Response) -> SignalError:
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.reason or "request failed"
    return SignalError(response.status_code, message)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class Peer:
    """One peer of a swarm: ``Peer(url)`` creates a swarm, ``Peer(url, swarm_id)`` joins one.

    ``url`` is the hub's base URL (the blueprint prefix, e.g.
    ``http://localhost:5000/signal``, or the server root). Nothing is sent
    until :meth:`connect`, iteration, :meth:`start` or ``with``.
    """

    def __init__(
        self,
        url: str,
        swarm_id: str | None = None,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if isinstance(timeout, tuple):
            self.connect_timeout, self.read_timeout = timeout
        else:
            self.connect_timeout = self.read_timeout = timeout
        self.headers = dict(headers or {})
        #: Swarm id, connection id and secret token, known once connected.
        self.id: str | None = swarm_id
        self.cid: str | None = None
        self.token: str | None = None
        #: Whether this peer created the swarm.
        self.initiator = swarm_id is None
        #: Why the stream failed, once it has (``None`` after a clean end or ``close()``).
        self.error: BaseException | None = None
        self.closed = False
        self._handlers: dict[str, list[Handler]] = {}
        self._outbox: list[tuple[Any, str | None]] = []
        self._send_lock = threading.RLock()
        self._connected = threading.Event()
        self._done = threading.Event()
        self._settled = threading.Event()  # connected, or ended without
        self._stop = threading.Event()  # close() was called
        self._response: requests.Response | None = None
        self._stream: requests.Session | None = None
        self._sock: socket.socket | None = None  # the stream's socket, to shut down and close
        self._session = requests.Session()
        self._reader: Iterator[tuple[str, Any]] | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "new"
        return f"<Peer {self.id or '(new swarm)'} cid={self.cid} {state}>"

    @property
    def connected(self) -> bool:
        """Whether the ``connect`` frame has arrived (and the stream has not ended since)."""
        return self._connected.is_set() and not self.closed

    @property
    def stream_url(self) -> str:
        """Where the stream is opened and signals are posted."""
        return f"{self.url}/{quote(self.id, safe='')}" if self.id else self.url

    # -- handlers ------------------------------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[H], H]: ...

    @overload
    def on(self, event: str, handler: Handler) -> Peer: ...

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Call ``handler(data)`` for each ``event``; returns the peer, or works as a decorator.

        ``connect`` gets ``{"id", "cid", "token"}``; ``join``/``leave`` get
        ``{"id", "cid"}``; ``signal`` gets the data sent; ``error`` gets the
        :class:`SignalError` of a buffered send the hub refused; ``close``
        gets ``None`` after a clean end, else the exception that ended the stream.
        """
        if handler is None:

            def register(fn: H) -> H:
                self._handlers.setdefault(event, []).append(fn)
                return fn

            return register
        self._handlers.setdefault(event, []).append(handler)
        return self

    def _emit(self, event: str, data: Any) -> None:
        for handler in tuple(self._handlers.get(event, ())):
            handler(data)

    # -- sending -------------------------------------------------------------------

    def send(self, data: Any, cid: str | None = None) -> None:
        """Send a signal to every peer of the swarm (this one too), or to ``cid`` only.

        As in moshpit, a string ``_cid`` key in a dict is taken as ``cid`` and
        removed from the data. Before the stream is connected, sends are kept
        and posted in order as soon as it is (a refused one then comes as an
        ``error`` event). Raises :class:`SignalError` when the hub refuses a
        send made while connected.
        """
        if isinstance(data, dict) and isinstance(data.get("_cid"), str):
            data = dict(data)
            direct = data.pop("_cid")
            cid = cid if cid is not None else direct
        with self._send_lock:
            if self.closed or self._stop.is_set():
                raise SignalError(None, "the peer is closed")
            if not self._connected.is_set():
                self._outbox.append((data, cid))
                return
            self._post(data, cid)

    write = send

    def _post(self, data: Any, cid: str | None) -> None:
        body: dict[str, Any] = {"token": self.token, "data": data}
        if cid is not None:
            body["cid"] = cid
        try:
            response = self._session.post(
                self.stream_url,
                json=body,
                headers=self.headers,
                timeout=(self.connect_timeout, self.read_timeout),
            )
        except requests.Timeout as exc:
            raise SignalTimeout(f"no answer from {self.stream_url}") from exc
        except requests.RequestException as exc:
            raise ConnectionLost(f"cannot reach {self.stream_url}: {exc}") from exc
        with response:
            if response.status_code != 200:
                raise _error_from(response)

    # -- reading -------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> Peer:
        """Open the stream if needed and wait for its ``connect`` frame; returns the peer.

        ``timeout`` defaults to the connect timeout. Raises :class:`SignalError`
        when the hub refuses the stream (404 for an unknown swarm), and
        :class:`SignalTimeout` when the frame does not come in time.
        """
        if timeout is None:
            timeout = self.connect_timeout
        if self._thread is not None:
            self._settled.wait(timeout)
            if self._connected.is_set():
                return self
            if self._done.is_set():
                raise self.error or ConnectionLost("the stream ended before connecting")
            raise SignalTimeout("no connect frame in time")
        if self._connected.is_set():
            return self
        reader = self._events(timeout)
        while not self._connected.is_set():
            if next(reader, None) is None:
                raise self.error or ConnectionLost("the stream ended before connecting")
        return self

    wait_connected = connect

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """The stream's ``(event, data)`` pairs, from where reading left off.

        Ends when the stream ends; raises :class:`SignalError` for a refused
        stream and :class:`SignalTimeout`/:class:`ConnectionLost` for a failed one.
        """
        if self._thread is not None:
            raise RuntimeError("this peer is read by its start() thread; use on() handlers")
        return self._events(None)

    def start(self) -> Peer:
        """Read the stream in a background thread (a greenlet under gevent), calling handlers.

        Failures go to ``close`` handlers and :attr:`error`; see :meth:`wait`.
        """
        if self._thread is None and not self.closed:
            self._thread = threading.Thread(target=self._run, name=f"{self!r}", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the stream to end; ``True`` if it has."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            for _ in self._events(None):
                pass
        except BaseException as exc:  # kept for the caller: see wait() and .error
            self.error = self.error or exc

    def _events(self, connect_wait: float | None) -> Iterator[tuple[str, Any]]:
        if self._reader is None:
            self._reader = self._read(connect_wait)
        return self._reader

    def _read(self, connect_wait: float | None) -> Iterator[tuple[str, Any]]:
        try:
            if self._stop.is_set():
                return
            response = self._open(connect_wait)
            if self._stop.is_set():
                return
            parser = SSEParser()
            while True:
                chunk = self._chunk(response)
                if not chunk:
                    break
                for event in parser.feed(chunk):
                    data = _loads(event.data)
                    failed: list[SignalError] = []
                    if event.event == "connect" and not self._connected.is_set():
                        failed = self._on_connect(data)
                    self._emit(event.event, data)
                    yield event.event, data
                    for error in failed:
                        self._emit("error", error)
                        yield "error", error
        except SignalError as exc:
            if not self._stop.is_set():
                self.error = exc
                raise
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self._finish()

    def _open(self, connect_wait: float | None) -> requests.Response:
        self._stream = requests.Session()
        wait = connect_wait if connect_wait is not None else self.connect_timeout
        headers = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            # A compressed stream would be held back by the decompressor's buffering.
            "Accept-Encoding": "identity",
            **self.headers,
        }
        try:
            response = self._stream.get(
                self.stream_url, headers=headers, stream=True, timeout=(self.connect_timeout, wait)
            )
        except requests.Timeout as exc:
            raise SignalTimeout(f"no answer from {self.stream_url}") from exc
        except requests.RequestException as exc:
            raise ConnectionLost(f"cannot reach {self.stream_url}: {exc}") from exc
        self._response = response
        # Keep the socket: once a response has ended, urllib3 hands its
        # connection back to the pool and nothing would close it, leaving the
        # hub a connection to wait on.
        self._sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        if response.status_code not in (200, 201):
            error = _error_from(response)
            response.close()
            raise error
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            response.close()
            raise SignalError(response.status_code, f"not an event stream: {content_type!r}")
        return response

    def _chunk(self, response: requests.Response) -> bytes:
        if self._stop.is_set():
            return b""
        try:
            # read1: whatever has arrived, without waiting for a full buffer.
            return bytes(response.raw.read1(65536))
        except (ReadTimeoutError, TimeoutError) as exc:
            if self._stop.is_set():
                return b""
            raise SignalTimeout("the stream stayed silent past the read timeout") from exc
        except (Urllib3Error, HTTPException, OSError, ValueError) as exc:
            # ValueError: the response was closed under us.
            if self._stop.is_set():
                return b""
            raise ConnectionLost(f"the stream broke off: {exc}") from exc

    def _on_connect(self, data: Any) -> list[SignalError]:
        """Take the peer's identity and post the sends made before; returns those refused."""
        if not isinstance(data, dict):
            raise ConnectionLost(f"malformed connect frame: {data!r}")
        self.id, self.cid, self.token = data.get("id"), data.get("cid"), data.get("token")
        # The connect frame is in: from now on only silence longer than the
        # read timeout means trouble (the hub pings meanwhile).
        if self._sock is not None:
            self._sock.settimeout(self.read_timeout)
        failed = []
        with self._send_lock:
            self._connected.set()
            self._settled.set()
            outbox, self._outbox = self._outbox, []
            for data_, cid in outbox:
                try:
                    self._post(data_, cid)
                except SignalError as exc:
                    # Its caller is gone: report it as an event, and keep the
                    # stream (an initiator leaving would end the whole swarm).
                    failed.append(exc)
        return failed

    def _finish(self) -> None:
        already = self.closed
        self.closed = True
        if self._response is not None:
            self._response.close()
        if self._sock is not None:
            self._sock.close()
        if self._stream is not None:
            self._stream.close()
        self._session.close()
        try:
            if not already:
                self._emit("close", self.error)
        finally:
            # After the handlers: wait() returning means they have run.
            self._done.set()
            self._settled.set()

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Leave the swarm: end the stream (the initiator's close ends the swarm).

        Safe to call from any thread and from a handler; ``close`` handlers
        then get ``None``.
        """
        self._stop.set()
        self._shutdown()
        if self._thread is not None:
            if self._thread is not threading.current_thread():
                self._thread.join(5.0)
            return
        reader = self._reader
        if reader is not None:
            try:
                reader.close()  # type: ignore[attr-defined]
            except ValueError:
                # Running right now (a handler called us, or another thread reads):
                # its next read sees the stop and it finishes by itself.
                return
        if not self.closed:
            self._finish()

    def _shutdown(self) -> None:
        # Shut the socket down rather than only closing it: a read blocked in
        # another thread does not wake up on close() alone.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Peer:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
