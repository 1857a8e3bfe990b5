"""The process's one pub/sub connection to Redis.

Topics are held by reference count: the first holder's SUBSCRIBE is waited
for (so nothing published after :meth:`Listener.acquire` returns is missed),
the last holder's release sends UNSUBSCRIBE. The connection is kept alive by
PINGs while idle and replaced, with backoff, when it fails; the owner learns
of messages, losses and restorations through the callbacks it passes in.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from gevent.socket import wait_read
from redis import exceptions as rexc

from ...hub import counts
from .. import BrokerUnavailable

log = logging.getLogger("flask_signal")


@dataclass(frozen=True, slots=True)
class Timing:
    """How long the listener waits for Redis, and how often it checks on it."""

    connect_timeout: float = 2.0
    subscribe_timeout: float = 5.0
    ping_interval: float = 5.0
    ping_timeout: float = 3.0
    max_backoff: float = 5.0


class Topic:
    """One pub/sub topic this process holds, with its subscription bookkeeping.

    ``sent``/``acked`` count SUBSCRIBE commands and their confirmations on the
    current connection: confirmations come back in order, so the n-th one
    answers the n-th SUBSCRIBE even if an UNSUBSCRIBE went in between.
    """

    __slots__ = ("acked", "key", "kind", "refs", "sent", "unsubscribing", "waiters")

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self.refs = 0
        self.sent = 0
        self.acked = 0
        self.unsubscribing = 0
        self.waiters: list[tuple[int, AsyncResult[None]]] = []

    def idle(self) -> bool:
        return self.refs == 0 and self.acked >= self.sent and self.unsubscribing <= 0


class Listener:
    """The process's one pub/sub connection: subscriptions by reference count,
    reconnection with backoff, and PING health checks while idle."""

    def __init__(
        self,
        connection: Callable[[], Any],
        *,
        on_message: Callable[[Topic, bytes], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None] | None = None,
        timing: Timing | None = None,
    ) -> None:
        #: Makes a new, unconnected redis-py connection.
        self.connection = connection
        self.on_message = on_message
        self.on_lost = on_lost
        #: Called, in the listening greenlet, once a replacement connection has every
        #: topic subscribed again and before any message it carries is handled.
        self.on_restored = on_restored
        #: Set while connected: what a request waits for during a reconnection.
        self.up = Event()
        #: Cuts a reconnection's backoff short when a request needs the connection.
        self._wake = Event()
        self._connections = 0
        self._restoring = 0
        self.timing = timing or Timing()
        self.topics: dict[bytes, Topic] = {}
        self.conn: Any = None
        self.connected = False
        #: Set once the first connection attempt has finished, either way.
        self.tried = Event()
        self.send_lock = Semaphore()
        self.last_rx = time.monotonic()
        self.greenlet: gevent.Greenlet[Any, Any] | None = None
        self.stopping = False

    # -- subscriptions, called from request greenlets ---------------------------------

    def acquire(self, items: Sequence[tuple[bytes, str, str]]) -> None:
        """Hold each topic; return once Redis has confirmed every subscription."""
        if not self.connected:
            if self.tried.is_set():
                self._wake.set()  # Redis may be back: try now rather than after the backoff
                self.up.wait(self.timing.connect_timeout)
            else:
                self.tried.wait(self.timing.connect_timeout)
            if not self.connected:
                raise BrokerUnavailable("Redis unavailable: no pub/sub connection")
        fresh: list[bytes] = []
        waits: list[tuple[Topic, int]] = []
        for topic, kind, key in items:
            entry = self.topics.get(topic)
            if entry is None:
                entry = self.topics[topic] = Topic(kind, key)
            entry.refs += 1
            if entry.refs == 1:
                entry.sent += 1
                fresh.append(topic)
            if entry.acked < entry.sent:
                waits.append((entry, entry.sent))
        try:
            if fresh:
                self.send("SUBSCRIBE", *fresh)
            deadline = time.monotonic() + self.timing.subscribe_timeout
            for entry, target in waits:
                self._wait(entry, target, deadline)
        except BaseException:
            self.release([topic for topic, _, _ in items])
            raise

    def _wait(self, entry: Topic, target: int, deadline: float) -> None:
        if entry.acked >= target:
            return
        result: AsyncResult[None] = AsyncResult()
        waiter = (target, result)
        entry.waiters.append(waiter)
        try:
            result.get(timeout=max(0.0, deadline - time.monotonic()))
        except gevent.Timeout as exc:
            raise BrokerUnavailable("Redis unavailable: subscription not confirmed") from exc
        finally:
            if waiter in entry.waiters:
                entry.waiters.remove(waiter)

    def release(self, topics: Iterable[bytes]) -> None:
        gone: list[bytes] = []
        for topic in topics:
            entry = self.topics.get(topic)
            if entry is None or entry.refs <= 0:
                continue
            entry.refs -= 1
            if entry.refs == 0:
                if self.connected:
                    entry.unsubscribing += 1
                    gone.append(topic)
                else:
                    del self.topics[topic]
        if gone:
            # On failure the connection is going; its replacement will not subscribe them.
            with suppress(BrokerUnavailable):
                self.send("UNSUBSCRIBE", *gone)

    def send(self, *args: Any) -> None:
        """Write a command on the pub/sub connection; its answer comes to the listener."""
        conn = self.conn
        if not self.connected or conn is None or conn._sock is None:
            raise BrokerUnavailable("Redis unavailable: no pub/sub connection")
        # Writes from several greenlets must not interleave on the socket; the
        # connection is never closed here, only by the listener, which notices.
        with self.send_lock:
            try:
                for chunk in conn.pack_command(*args):
                    conn._sock.sendall(chunk)
            except OSError as exc:
                raise BrokerUnavailable(f"Redis unavailable: {exc}") from exc

    # -- the listening greenlet --------------------------------------------------------

    def start(self) -> None:
        self.stopping = False
        self.greenlet = gevent.spawn(self.run)

    def _stopped(self) -> bool:
        return self.stopping

    def restart(self) -> None:
        """Replace a dead or stuck listening greenlet; its streams end, as on a lost connection."""
        if self.greenlet is not None:
            self.greenlet.kill(block=True, timeout=1)
        if self.connected or self.conn is not None:
            self._lost()
        self.start()

    def stop(self) -> None:
        self.stopping = True
        greenlet, self.greenlet = self.greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            # Wait for it to go before its socket is closed: the event loop must not
            # be left watching a closed descriptor (libev aborts the process).
            greenlet.kill(block=True, timeout=1)
        self._drop()

    def run(self) -> None:
        delay = 0.0
        while True:
            try:
                self._connect()
                delay = 0.0
                self._pump()
            except (rexc.RedisError, OSError) as exc:
                if not self.stopping:
                    log.warning("redis pub/sub connection lost: %s", exc)
            finally:
                if self.connected or self.conn is not None:
                    self._lost()
                self.tried.set()
            if self._stopped():
                return
            delay = min(self.timing.max_backoff, max(0.1, delay * 2))
            self._wake.clear()
            self._wake.wait(delay * random.uniform(0.5, 1.0))

    def _connect(self) -> None:
        conn = self.connection()
        self.conn = conn
        conn.connect()
        self.last_rx = time.monotonic()
        for entry in tuple(self.topics.values()):
            entry.sent = entry.acked = entry.unsubscribing = 0
        for topic, entry in tuple(self.topics.items()):
            if entry.refs <= 0:
                del self.topics[topic]
        self.connected = True
        self._connections += 1
        again = [topic for topic in self.topics]
        # A replacement connection: the owner catches up once every topic is back.
        self._restoring = len(again) if self._connections > 1 else 0
        for entry in self.topics.values():
            entry.sent = 1
        for start in range(0, len(again), 500):
            self.send("SUBSCRIBE", *again[start : start + 500])
        counts["redis_reconnects"] += 1
        if again:
            log.info("redis pub/sub reconnected, %d topics resubscribed", len(again))
        self.up.set()
        self.tried.set()
        if self._connections > 1 and not again:
            self._restored()

    def _pump(self) -> None:
        conn = self.conn
        ping_interval = self.timing.ping_interval
        ping_timeout = self.timing.ping_timeout
        pinged_at: float | None = None
        handled = 0
        while not self.stopping:
            if conn._sock is None:
                raise rexc.ConnectionError("pub/sub connection closed")
            if conn.can_read(timeout=0):
                reply = conn.read_response()
                self.last_rx = time.monotonic()
                pinged_at = None
                self._dispatch(reply)
                handled += 1
                if handled % 64 == 0:
                    gevent.sleep(0)  # a flood of messages must not starve the streams
                continue
            now = time.monotonic()
            if pinged_at is not None:
                if now - pinged_at > ping_timeout:
                    raise rexc.TimeoutError(f"no answer to PING within {ping_timeout} s")
                wait = pinged_at + ping_timeout - now
            elif now - self.last_rx >= ping_interval:
                self.send("PING")
                pinged_at = now
                wait = ping_timeout
            else:
                wait = self.last_rx + ping_interval - now
            with suppress(TimeoutError):
                wait_read(conn._sock.fileno(), timeout=max(wait, 0.001))

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message":
            entry = self.topics.get(reply[1])
            if entry is not None and entry.refs > 0:
                try:
                    self.on_message(entry, reply[2])
                except Exception:
                    log.exception("flask_signal: failed to handle a pub/sub message")
        elif kind == b"subscribe":
            entry = self.topics.get(reply[1])
            if self._restoring > 0:
                self._restoring -= 1
                if self._restoring == 0:
                    self._restored()
            if entry is not None:
                entry.acked += 1
                for target, result in tuple(entry.waiters):
                    if target <= entry.acked:
                        result.set(None)
        elif kind == b"unsubscribe":
            entry = self.topics.get(reply[1])
            if entry is not None:
                entry.unsubscribing -= 1
                if entry.idle():
                    del self.topics[reply[1]]

    def _restored(self) -> None:
        if self.on_restored is not None:
            try:
                self.on_restored()
            except Exception:
                log.exception("flask_signal: catching up after a pub/sub reconnection failed")

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        self.connected = False
        self.up.clear()
        self._restoring = 0
        if conn is not None:
            with suppress(Exception):  # closing a broken socket may fail; it is gone anyway
                conn.disconnect()
        for entry in self.topics.values():
            for _, result in entry.waiters:
                result.set_exception(BrokerUnavailable("Redis unavailable: connection lost"))
            entry.waiters.clear()

    def _lost(self) -> None:
        self._drop()
        if not self.stopping:
            self.on_lost()

    def held(self) -> int:
        """How many topics are held."""
        return sum(1 for topic in self.topics.values() if topic.refs > 0)

    def healthy(self) -> bool:
        """Whether the listener is alive and has heard from Redis lately (if connected)."""
        if self.greenlet is None or self.greenlet.dead:
            return False
        if not self.connected:
            return True  # reconnecting, with backoff
        grace = self.timing.ping_interval + self.timing.ping_timeout * 2
        return time.monotonic() - self.last_rx < grace
