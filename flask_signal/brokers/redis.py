"""The Redis broker: swarms and channel history in Redis, fan-out over pub/sub.

Every process (each gunicorn worker, each server, a cron job) builds its own
:class:`RedisBroker` from the same URL and prefix. Redis holds the state and
the history; pub/sub only rings the bell. Each process keeps ONE pub/sub
connection, subscribed to exactly the topics its local streams need, plus a
small bounded pool for commands. Every change of state is one Lua script, so
concurrent processes never interleave half-done operations.

What is stored in Redis and for how long
----------------------------------------
All names start with the prefix (``signal:`` by default); ``P`` below.

- ``P swarm:{<id>}`` (hash): the initiator's cid, and per peer its owner
  process (``p:<cid>``), its token digest (``k:<cid>``) and the reverse
  lookup (``t:<digest>``). Tokens themselves are never stored. Expires after
  ``swarm_ttl`` (60 s) unless the process holding the initiator refreshes it;
  deleted when the initiator leaves.
- ``P chan:{<name>}`` (stream): the last ``history_size`` events of a channel,
  entry id ``<seq>-0``; and ``P chan:{<name>}:meta`` (hash): the epoch the
  history belongs to and the highest sequence number trimmed away. Both
  expire ``history_ttl`` (1 day) after the channel's last publish.
- ``P seq`` (hash): the epoch and the sequencer behind hub-assigned event ids
  (``<epoch>-<seq>``). Kept forever (a few bytes); if it disappears (Redis
  flushed or restarted empty), the next publish starts a new random epoch, so
  clients resuming from an older id are told their history was lost.
- ``P proc:{<process>}`` (string): a process's heartbeat, expiring after
  ``peer_ttl`` (6 s) unless renewed every ``heartbeat_interval`` (2 s);
  ``P proc:{<process>}:peers`` (set): the peers whose streams that process
  holds, so that when the heartbeat stops, the reaper of another process makes
  them leave; ``P procs`` (set): the processes to watch. The peer set and the
  registry expire after ``swarm_ttl`` (10 x for the registry) unless renewed.
- ``P reaper`` (string): a lock (``SET NX PX``) so that one process reaps per
  interval.

Pub/sub topics have the same names as the keys they concern: ``P swarm:{<id>}``
carries joins, leaves, signals and the end of a swarm; ``P chan:{<name>}``
carries a channel's events and its closing. Nothing uses ``KEYS``.

A dead process (``kill -9``, a host lost) is noticed after at most
``peer_ttl + heartbeat_interval`` (8 s by default): its peers leave, their
initiators get ``leave``, and swarms whose initiator died end everywhere.

What Redis Cluster needs
------------------------
Every key and topic of one swarm or one channel carries the same hash tag
(``{<id>}``, ``{<name>}``), so the scripts for signal and replay of one swarm
touch one slot. Three things span slots and would need a change to run on a
Cluster: create, join and leave also add the peer to (or remove it from) its
process's peer set ``P proc:{<process>}:peers`` in the same script, which
saves a round trip per stream (on a Cluster, send that SADD/SREM beside the
script instead); a publish increments the single sequencer ``P seq`` in the
same script that appends to the channels' histories (one sequencer is what
lets one Last-Event-ID resume a multi-channel stream; on a Cluster, give each
channel its own sequencer in its slot and accept per-channel ids); and
``publish_all`` asks ``PUBSUB CHANNELS``, which a Cluster node answers for its
own clients only (use a registry set of channels instead). The connection also
needs a cluster-aware client (``redis.cluster.RedisCluster``), which this
module does not create.

Round trips
-----------
A signal is one script call (EVALSHA) and a swarm stream's creation or join
one SUBSCRIBE, waited for, plus one script call; leaving is one script call.
Scripts are called one by one rather than in pipelines, because redis-py asks
``SCRIPT EXISTS`` before every pipeline that holds one; a script missing from
Redis's cache (a restarted Redis) is loaded on its first NOSCRIPT.
"""

from __future__ import annotations

import logging
import os
import random
import re
import select
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import gevent
import gevent.monkey
import redis
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from gevent.socket import wait_read
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import framing, signals
from ..hub import Stream, counts
from . import (
    Broker,
    BrokerUnavailable,
    Delivery,
    Membership,
    Replay,
    format_event_id,
    new_epoch,
    new_id,
    split_event_id,
    token_digest,
)

log = logging.getLogger("flask_signal")

#: Errors that mean "Redis cannot be reached right now" (BusyLoadingError is a ConnectionError).
_UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)

# -- Lua scripts -------------------------------------------------------------------
#
# One script per operation, so that no other process can see or change a swarm
# or a channel halfway through it. Swarm hash fields: "i" initiator cid,
# "p:<cid>" owner process, "k:<cid>" token digest, "t:<digest>" cid.

# KEYS: the swarm, the process's peer set. ARGV: cid, token digest, process,
# swarm ttl (ms), peer entry ("<swarm id> <cid>").
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'i', cid, 'p:' .. cid, ARGV[3], 'k:' .. cid, digest,
  't:' .. digest, cid)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""

# KEYS: the swarm, the process's peer set. ARGV: cid, token digest, process,
# topic, peer entry.
_JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cid, digest = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'p:' .. cid, ARGV[3], 'k:' .. cid, digest, 't:' .. digest, cid)
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[4], 'j ' .. cid)
return 1
"""

# KEYS: the swarm, the owner process's peer set. ARGV: cid, topic, peer entry.
# 0: not a peer (any more), 1: a peer left, 2: the initiator left and the swarm ended.
_LEAVE = """
local cid = ARGV[1]
redis.call('SREM', KEYS[2], ARGV[3])
local initiator = redis.call('HGET', KEYS[1], 'i')
if not initiator then return 0 end
if initiator == cid then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'e ' .. cid)
  return 2
end
local digest = redis.call('HGET', KEYS[1], 'k:' .. cid)
if not digest then return 0 end
redis.call('HDEL', KEYS[1], 'p:' .. cid, 'k:' .. cid, 't:' .. digest)
redis.call('PUBLISH', ARGV[2], 'l ' .. cid)
return 1
"""

# Returns a Delivery value. ARGV: token digest ('' = trusted), cid ('' = all), frame, topic.
# One HMGET answers all three questions; a swarm hash always has its initiator "i".
_SIGNAL = """
local found = redis.call('HMGET', KEYS[1], 'i', 't:' .. ARGV[1], 'k:' .. ARGV[2])
if not found[1] then return 404 end
if ARGV[1] ~= '' and not found[2] then return 401 end
if ARGV[2] ~= '' then
  if not found[3] then return 4040 end
  redis.call('PUBLISH', ARGV[4], 'd ' .. ARGV[2] .. '\\n' .. ARGV[3])
else
  redis.call('PUBLISH', ARGV[4], 'b\\n' .. ARGV[3])
end
return 200
"""

# KEYS: sequencer, then (history, meta) per channel.
# ARGV: candidate epoch, history size, history ttl (ms), frame head, frame tail,
#       application id ('' = hub-assigned), event marker, then one topic per channel.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- The history is gone (new Redis, flushed): a new epoch makes old ids unresumable.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = ARGV[6]
if id == '' then id = epoch .. '-' .. seq end
local frame = ARGV[4] .. 'id: ' .. id .. '\\n' .. ARGV[5]
local size, ttl = tonumber(ARGV[2]), ARGV[3]
local message = 'm ' .. seq .. ' ' .. ARGV[7] .. '\\n' .. id .. '\\n' .. frame
for k = 1, (#KEYS - 1) / 2 do
  local history, meta = KEYS[2 * k], KEYS[2 * k + 1]
  if size > 0 then
    if redis.call('HGET', meta, 'epoch') ~= epoch then
      redis.call('DEL', history)
      redis.call('HSET', meta, 'epoch', epoch, 'evicted', 0)
    end
    local over = redis.call('XLEN', history) + 1 - size
    if over > 0 then
      local gone = redis.call('XRANGE', history, '-', '+', 'COUNT', over)
      redis.call('HSET', meta, 'evicted', string.match(gone[#gone][1], '^%d+'))
    end
    local added = redis.pcall('XADD', history, 'MAXLEN', size, seq .. '-0', 'f', frame, 'i', id)
    if type(added) == 'table' and added.err then
      -- Entries newer than the sequencer: a history that outlived its epoch.
      redis.call('DEL', history)
      redis.call('XADD', history, 'MAXLEN', size, seq .. '-0', 'f', frame, 'i', id)
    end
    redis.call('PEXPIRE', history, ttl)
    redis.call('PEXPIRE', meta, ttl)
  end
  redis.call('PUBLISH', ARGV[7 + k], message)
end
return {epoch, seq}
"""

# KEYS: sequencer, then (history, meta) per channel. ARGV: Last-Event-ID, and its
# epoch and sequence number if it has the hub's form (else '').
# Returns {epoch or false, current seq, lost (0/1), resume point, seq, frame, seq, frame...}.
_REPLAY = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local wanted, head, tail = ARGV[1], ARGV[2], ARGV[3]
local n = (#KEYS - 1) / 2
local live = {}
for k = 1, n do
  live[k] = epoch and redis.call('HGET', KEYS[2 * k + 1], 'epoch') == epoch
end
local after = nil
if wanted == '0' then
  after = 0
elseif epoch and head == epoch and tail ~= '' then
  local seq = tonumber(tail)
  if seq <= current then after = seq end
elseif epoch then
  -- An id the application chose: the latest event that carries it.
  for k = 1, n do
    if live[k] and not after then
      for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2 * k], '+', '-')) do
        if entry[2][4] == wanted then
          after = tonumber(string.match(entry[1], '^%d+'))
          break
        end
      end
    end
  end
end
local lost = 0
if not after then
  lost = 1
  after = 0
end
local out = {epoch or false, current, 0, after}
for k = 1, n do
  if live[k] then
    local evicted = tonumber(redis.call('HGET', KEYS[2 * k + 1], 'evicted') or '0')
    if after < evicted and wanted ~= '0' then lost = 1 end
    for _, entry in ipairs(redis.call('XRANGE', KEYS[2 * k], '(' .. after .. '-0', '+')) do
      out[#out + 1] = string.match(entry[1], '^%d+')
      out[#out + 1] = entry[2][2]
    end
  end
end
out[3] = lost
return out
"""


#: The operating system's poll(), even when gevent has patched the select module.
_os_poll: Any
try:
    _os_poll = gevent.monkey.get_original("select", "poll")
except AttributeError:  # a platform without poll()
    _os_poll = None


def _quick_check(base: type[Any]) -> type[Any]:
    """``base`` (a redis-py connection class) with a readiness check that skips the gevent hub.

    The pool asks ``can_read()`` before handing out a connection, for every
    command, and the pub/sub listener before every message. With hiredis that
    is a ``select.poll``, which gevent's patching turns into a trip through the
    hub: about half the CPU of a command. With no timeout, the operating
    system's poll cannot block, so it is used directly. True means data or a
    closed socket, as redis-py's own check: either way the caller reads or
    reconnects.
    """

    class QuickCheck(base):  # type: ignore[misc]
        def can_read(self, timeout: float = 0) -> bool:
            reader = getattr(self._parser, "_reader", None)  # hiredis's; else redis-py's way
            sock = self._sock
            if timeout or sock is None or reader is None or _os_poll is None:
                return bool(super().can_read(timeout))
            if reader.has_data():
                return True
            pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but unread
            if pending is not None and pending():
                return True
            poller = _os_poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))

    QuickCheck.__name__ = QuickCheck.__qualname__ = f"Quick{base.__name__}"
    return QuickCheck


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn "Redis cannot be reached" into :class:`BrokerUnavailable`."""
    try:
        yield
    except _UNAVAILABLE as exc:
        counts["redis_errors"] += 1
        raise BrokerUnavailable(f"Redis unavailable: {exc}") from exc


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogatepass")


# -- the pub/sub connection ----------------------------------------------------------


class _Topic:
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


class _Listener:
    """The process's one pub/sub connection: subscriptions by reference count,
    reconnection with backoff, and PING health checks while idle."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.topics: dict[bytes, _Topic] = {}
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
            self.tried.wait(self.broker.connect_timeout)
            if not self.connected:
                raise BrokerUnavailable("Redis unavailable: no pub/sub connection")
        fresh: list[bytes] = []
        waits: list[tuple[_Topic, int]] = []
        for topic, kind, key in items:
            entry = self.topics.get(topic)
            if entry is None:
                entry = self.topics[topic] = _Topic(kind, key)
            entry.refs += 1
            if entry.refs == 1:
                entry.sent += 1
                fresh.append(topic)
            if entry.acked < entry.sent:
                waits.append((entry, entry.sent))
        try:
            if fresh:
                self.send("SUBSCRIBE", *fresh)
            deadline = time.monotonic() + self.broker.subscribe_timeout
            for entry, target in waits:
                self._wait(entry, target, deadline)
        except BaseException:
            self.release([topic for topic, _, _ in items])
            raise

    def _wait(self, entry: _Topic, target: int, deadline: float) -> None:
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
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None
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
            delay = min(self.broker.max_backoff, max(0.1, delay * 2))
            gevent.sleep(delay * random.uniform(0.5, 1.0))

    def _connect(self) -> None:
        conn = self.broker._new_connection()
        self.conn = conn
        conn.connect()
        self.last_rx = time.monotonic()
        for entry in tuple(self.topics.values()):
            entry.sent = entry.acked = entry.unsubscribing = 0
        for topic, entry in tuple(self.topics.items()):
            if entry.refs <= 0:
                del self.topics[topic]
        self.connected = True
        again = [topic for topic in self.topics]
        for entry in self.topics.values():
            entry.sent = 1
        for start in range(0, len(again), 500):
            self.send("SUBSCRIBE", *again[start : start + 500])
        counts["redis_reconnects"] += 1
        if again:
            log.info("redis pub/sub reconnected, %d topics resubscribed", len(again))
        self.tried.set()

    def _pump(self) -> None:
        conn = self.conn
        ping_interval = self.broker.ping_interval
        ping_timeout = self.broker.ping_timeout
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
                    self.broker._on_message(entry, reply[2])
                except Exception:
                    log.exception("flask_signal: failed to handle a pub/sub message")
        elif kind == b"subscribe":
            entry = self.topics.get(reply[1])
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

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        self.connected = False
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
            self.broker._on_lost()

    def healthy(self) -> bool:
        """Whether the listener is alive and has heard from Redis lately (if connected)."""
        if self.greenlet is None or self.greenlet.dead:
            return False
        if not self.connected:
            return True  # reconnecting, with backoff
        grace = self.broker.ping_interval + self.broker.ping_timeout * 2
        return time.monotonic() - self.last_rx < grace


# -- the broker ------------------------------------------------------------------------


class _Pending:
    """A subscriber between its SUBSCRIBE and its history read: live events wait here."""

    __slots__ = ("events", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events: dict[int, bytes] = {}


class RedisBroker(Broker):
    """Swarms, channel history and routing in Redis, shared by every process
    configured with the same URL and ``prefix``.

    ``heartbeat_interval`` and ``peer_ttl`` bound how long a dead process's
    peers linger (at most ``peer_ttl + heartbeat_interval``); ``swarm_ttl`` is
    how long a swarm outlives every process that could clean it up;
    ``history_ttl`` how long a channel's history outlives its last publish.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "signal:",
        heartbeat_interval: float = 2.0,
        peer_ttl: float = 6.0,
        swarm_ttl: float = 60.0,
        history_ttl: float = 86400.0,
        max_connections: int = 10,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        subscribe_timeout: float = 5.0,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        max_backoff: float = 5.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not 0 < heartbeat_interval * 2 <= peer_ttl:
            raise ValueError("peer_ttl must be at least twice heartbeat_interval")
        if "{" in prefix or "}" in prefix:
            raise ValueError("the Redis prefix must not contain braces (they are hash tags)")
        self.url = url
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.peer_ttl = peer_ttl
        self.swarm_ttl = max(swarm_ttl, peer_ttl * 2)
        self.history_ttl = history_ttl
        self.connect_timeout = connect_timeout
        self.subscribe_timeout = subscribe_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_backoff = max_backoff
        self.pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,  # how long a command waits for a free connection
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # One retry: a pooled connection may predate a Redis restart.
            retry=Retry(NoBackoff(), 1),
            # RESP2: pub/sub messages as plain replies, and any Redis since 2.6 speaks it.
            protocol=2,
        )
        self.pool.connection_class = _quick_check(self.pool.connection_class)
        self.redis = redis.Redis(connection_pool=self.pool)
        self._create = self.redis.register_script(_CREATE)
        self._join = self.redis.register_script(_JOIN)
        self._leave = self.redis.register_script(_LEAVE)
        self._signal = self.redis.register_script(_SIGNAL)
        self._publish = self.redis.register_script(_PUBLISH)
        self._replay = self.redis.register_script(_REPLAY)
        self._seq_key = _encode(f"{prefix}seq")
        self._procs_key = _encode(f"{prefix}procs")
        self._reaper_key = _encode(f"{prefix}reaper")
        self._channels_pattern = _encode(re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "chan:{*}")

        #: This process's id in Redis; set by :meth:`start`, after any fork.
        self.process = ""
        self._started_in: int | None = None
        self._listener = _Listener(self)
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        self._beats = 0
        self._refreshed = 0.0
        # Local swarm state: active peers by swarm, peers whose join is not yet
        # confirmed, and the swarms whose initiator is here.
        self._peers: dict[str, dict[str, Stream]] = {}
        self._joining: dict[str, Stream] = {}
        self._initiated: dict[str, str] = {}
        #: Leaves Redis has not heard of yet (it was unreachable): (swarm id, cid).
        self._orphans: list[tuple[str, str]] = []
        self._pending: dict[str, set[_Pending]] = {}
        self._subscribed: dict[Stream, tuple[bytes, ...]] = {}

    # -- names -----------------------------------------------------------------------

    def _swarm_key(self, swarm_id: str) -> bytes:
        return _encode(f"{self.prefix}swarm:{{{swarm_id}}}")

    def _channel_key(self, channel: str) -> bytes:
        return _encode(f"{self.prefix}chan:{{{channel}}}")

    def _proc_key(self, process: str) -> bytes:
        return _encode(f"{self.prefix}proc:{{{process}}}")

    def _proc_peers_key(self, process: str) -> bytes:
        return _encode(f"{self.prefix}proc:{{{process}}}:peers")

    def _new_connection(self) -> Any:
        return self.pool.connection_class(**self.pool.connection_kwargs)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener, heartbeat and reaper greenlets of this process (idempotent)."""
        if self._started_in == os.getpid():
            return
        self._started_in = os.getpid()
        self.process = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._beats = 0
        self._listener = _Listener(self)
        self._listener.start()
        self._greenlets = [gevent.spawn(self._heartbeat_loop), gevent.spawn(self._reaper_loop)]

    def halt(self) -> None:
        """Stop all background work without touching Redis, as a killed process would.

        Other processes reap this one's peers once its heartbeat expires.
        """
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        self._listener.stop()
        self._started_in = None

    def close(self) -> None:
        """Leave every local swarm, end every local stream and release connections."""
        started = self._started_in is not None
        members = [(sid, cid) for sid, peers in self._peers.items() for cid in peers]
        members += [(stream.swarm_id or "", cid) for cid, stream in self._joining.items()]
        members += self._orphans
        self.halt()
        for stream in self._all_streams():
            stream.end("shutdown")
        super().close()
        if started:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for swarm_id, cid in members:
                    self._leave(**self._leave_call(swarm_id, cid), client=pipe)
                pipe.delete(self._proc_key(self.process), self._proc_peers_key(self.process))
                pipe.srem(self._procs_key, self.process)
                pipe.execute()
            except (rexc.RedisError, OSError) as exc:
                log.warning("could not clean up this process's swarms in Redis: %s", exc)
        self._peers.clear()
        self._joining.clear()
        self._initiated.clear()
        self._orphans.clear()
        self.hub.peers.clear()
        self.pool.disconnect()

    def _all_streams(self) -> list[Stream]:
        streams = [s for peers in self._peers.values() for s in peers.values()]
        streams += self._joining.values()
        streams += self._subscribed
        return streams

    def healthy(self) -> bool:
        """Redis answers a PING and this process's pub/sub listener is up."""
        try:
            with _unavailable():
                self.redis.ping()
        except BrokerUnavailable:
            return False
        return self._listener.connected and self._listener.healthy()

    def stats(self) -> dict[str, Any]:
        """What this process holds, for monitoring."""
        return {
            "process": self.process,
            "pubsub_connected": self._listener.connected,
            "topics": sum(1 for t in self._listener.topics.values() if t.refs > 0),
            "swarms": len(self._initiated),
            "peers": sum(len(p) for p in self._peers.values()),
            "subscribers": len(self._subscribed),
        }

    # -- swarms --------------------------------------------------------------------

    def create_swarm(self, stream: Stream) -> Membership:
        self.start()
        while True:
            member = Membership(new_id(), new_id(), new_id(), initiator=True)
            key = self._swarm_key(member.id)
            self._listener.acquire([(key, "swarm", member.id)])
            try:
                with _unavailable():
                    created = self._create(
                        keys=[key, self._proc_peers_key(self.process)],
                        args=[
                            member.cid,
                            token_digest(member.token),
                            self.process,
                            int(self.swarm_ttl * 1000),
                            f"{member.id} {member.cid}",
                        ],
                    )
            except BaseException:
                self._listener.release([key])
                raise
            if created:
                break
            self._listener.release([key])  # 128-bit id collision: never in practice
        stream.swarm_id, stream.cid = member.id, member.cid
        self._peers[member.id] = {member.cid: stream}
        self._initiated[member.id] = member.cid
        self.hub.peers[member.cid] = stream
        stream.put(framing.swarm_event("connect", member.connect_data()))
        signals.swarm_created.send(self.sender, swarm_id=member.id, cid=member.cid)
        return member

    def join_swarm(self, swarm_id: str, stream: Stream) -> Membership | None:
        self.start()
        member = Membership(swarm_id, new_id(), new_id(), initiator=False)
        key = self._swarm_key(swarm_id)
        self._listener.acquire([(key, "swarm", swarm_id)])
        # Registered before Redis knows the peer, so that nothing meant for it is
        # missed; it receives broadcasts only from its own "join" on (see _on_swarm).
        stream.swarm_id, stream.cid = swarm_id, member.cid
        self._joining[member.cid] = stream
        self.hub.peers[member.cid] = stream
        stream.put(framing.swarm_event("connect", member.connect_data()))
        joined = 0
        try:
            with _unavailable():
                joined = self._join(
                    keys=[key, self._proc_peers_key(self.process)],
                    args=[
                        member.cid,
                        token_digest(member.token),
                        self.process,
                        key,
                        f"{swarm_id} {member.cid}",
                    ],
                )
        finally:
            if not joined:
                self._joining.pop(member.cid, None)
                self.hub.peers.pop(member.cid, None)
                stream.swarm_id = stream.cid = None
                self._listener.release([key])
        if not joined:
            return None
        signals.peer_joined.send(self.sender, swarm_id=swarm_id, cid=member.cid)
        return member

    def leave_swarm(self, member: Membership, stream: Stream | None = None) -> None:
        """Forget the peer here at once; tell Redis, or retry later if it is unreachable."""
        peers = self._peers.get(member.id, {})
        stream = peers.pop(member.cid, None)
        if stream is None:
            stream = self._joining.pop(member.cid, None)
        if stream is None:
            return
        if not peers:
            self._peers.pop(member.id, None)
        self.hub.peers.pop(member.cid, None)
        self._listener.release([self._swarm_key(member.id)])
        if member.initiator:
            self._initiated.pop(member.id, None)
            for other in tuple(peers.values()):
                other.end("swarm closed")
        try:
            outcome = self._leave_in_redis(member.id, member.cid)
        except (rexc.RedisError, OSError) as exc:
            log.warning("could not record that %s left swarm %s: %s", member.cid, member.id, exc)
            self._orphans.append((member.id, member.cid))
            return
        if outcome == 2:
            signals.swarm_closed.send(self.sender, swarm_id=member.id, cid=member.cid)
        elif outcome == 1:
            signals.peer_left.send(self.sender, swarm_id=member.id, cid=member.cid)

    def _leave_in_redis(self, swarm_id: str, cid: str, process: str | None = None) -> int:
        """Remove a peer from its swarm and from its process's peer set, in one script."""
        return int(self._leave(**self._leave_call(swarm_id, cid, process)))

    def _leave_call(self, swarm_id: str, cid: str, process: str | None = None) -> dict[str, Any]:
        key = self._swarm_key(swarm_id)
        return {
            "keys": [key, self._proc_peers_key(process or self.process)],
            "args": [cid, key, f"{swarm_id} {cid}"],
        }

    def swarm_exists(self, swarm_id: str) -> bool:
        with _unavailable():
            return bool(self.redis.exists(self._swarm_key(swarm_id)))

    def authenticate(self, swarm_id: str, token: str) -> Delivery:
        with _unavailable():
            initiator, cid = self.redis.hmget(
                self._swarm_key(swarm_id), ["i", f"t:{token_digest(token)}"]
            )
        if initiator is None:
            return Delivery.NO_SWARM
        return Delivery.OK if cid is not None else Delivery.BAD_TOKEN

    def signal(
        self, swarm_id: str, data: Any, *, cid: str | None = None, token: str | None = None
    ) -> Delivery:
        frame = framing.swarm_event("signal", data)
        key = self._swarm_key(swarm_id)
        digest = token_digest(token) if token is not None else ""
        with _unavailable():
            code = self._signal(keys=[key], args=[digest, cid or "", frame, key])
        return Delivery(int(code))

    def swarm_count(self) -> int:
        return len(self._initiated)

    def _on_swarm(self, swarm_id: str, payload: bytes) -> None:
        """A swarm's pub/sub message: deliver it to this process's peers of the swarm."""
        kind = payload[:1]
        if kind == b"b":
            frame = payload[2:]  # encoded once by the sender, queued as the same bytes
            peers = tuple(self._peers.get(swarm_id, {}).values())
            for stream in peers:
                stream.put(frame)
            counts["signals_out"] += len(peers)
        elif kind == b"d":
            head, _, frame = payload.partition(b"\n")
            target = self._peers.get(swarm_id, {}).get(_decode(head[2:]))
            if target is not None:
                target.put(frame)
                counts["signals_out"] += 1
        elif kind == b"j":
            cid = _decode(payload[2:])
            joined = self._joining.pop(cid, None)
            if joined is not None:
                self._peers.setdefault(swarm_id, {})[cid] = joined
            self._to_initiator(swarm_id, "join", cid)
        elif kind == b"l":
            self._to_initiator(swarm_id, "leave", _decode(payload[2:]))
        elif kind == b"e":
            # The initiator left (or died): every stream of the swarm ends. The
            # peers stay registered until their leave_swarm, which releases them.
            for stream in tuple(self._peers.get(swarm_id, {}).values()):
                stream.end("swarm closed")
            for stream in tuple(self._joining.values()):
                if stream.swarm_id == swarm_id:
                    stream.end("swarm closed")

    def _to_initiator(self, swarm_id: str, event: str, cid: str) -> None:
        initiator = self._initiated.get(swarm_id)
        stream = self._peers.get(swarm_id, {}).get(initiator) if initiator else None
        if stream is not None:
            stream.put(framing.swarm_event(event, {"id": swarm_id, "cid": cid}))

    # -- channels ------------------------------------------------------------------

    def publish(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        if id is not None:
            framing.check_field("id", id)
        counts["events_in"] += 1
        # The id is only known inside the script: send the frame around it.
        frame = framing.message(data, event=event, id="0", retry=retry)
        head, _, tail = frame.rpartition(b"\nid: 0\n")
        names = tuple(dict.fromkeys(channels))
        keys = [self._seq_key]
        topics = []
        for name in names:
            key = self._channel_key(name)
            keys += [key, key + b":meta"]
            topics.append(key)
        args: list[bytes | str | int] = [
            new_epoch(),
            self.history_size,
            int(self.history_ttl * 1000),
            head + b"\n",
            tail,
            id or "",
            "" if event is None else f"={event}",
            *topics,
        ]
        with _unavailable():
            epoch, seq = self._publish(keys=keys, args=args)
        return id if id is not None else format_event_id(_decode(epoch), int(seq))

    def publish_all(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        # Redis knows which channel topics have a subscriber, in any process.
        with _unavailable():
            topics = self.redis.pubsub_channels(self._channels_pattern)
        start = len(_encode(f"{self.prefix}chan:{{"))
        names = sorted({_decode(topic[start:-1]) for topic in topics} | set(self.hub.channels))
        return self.publish(names, data, event=event, id=id, retry=retry)

    def subscribe(
        self, stream: Stream, channels: Sequence[str], last_event_id: str | None = None
    ) -> Replay:
        self.start()
        names = tuple(dict.fromkeys(channels))
        topics = tuple(self._channel_key(name) for name in names)
        pending = _Pending(stream)
        for name in names:
            self._pending.setdefault(name, set()).add(pending)
        try:
            # Live events are buffered from the moment Redis confirms the
            # subscription; only then is the history read, so none falls between.
            self._listener.acquire([(t, "chan", n) for t, n in zip(topics, names, strict=True)])
            try:
                history = (
                    self._read_history(names, last_event_id) if last_event_id is not None else None
                )
            except BaseException:
                self._listener.release(topics)
                raise
        finally:
            for name in names:
                waiting = self._pending.get(name)
                if waiting is not None:
                    waiting.discard(pending)
                    if not waiting:
                        del self._pending[name]
        # From here to hub.subscribe nothing yields: the listener cannot slip in.
        after, current, lost, events = history if history is not None else (0, 0, False, {})
        for seq, frame in pending.events.items():
            if seq > after:
                events[seq] = frame
        stream.last_seq = max(current, *events) if events else current
        self._subscribed[stream] = topics
        for name in self.hub.subscribe(stream, names):
            signals.channel_opened.send(self.sender, channel=name)
        return Replay([events[seq] for seq in sorted(events)], lost)

    def _read_history(
        self, names: Sequence[str], last_event_id: str
    ) -> tuple[int, int, bool, dict[int, bytes]]:
        keys = [self._seq_key]
        for name in names:
            key = self._channel_key(name)
            keys += [key, key + b":meta"]
        parts = split_event_id(last_event_id)
        head, tail = (parts[0], str(parts[1])) if parts is not None else ("", "")
        with _unavailable():
            reply = self._replay(keys=keys, args=[last_event_id, head, tail])
        current, lost, after, flat = int(reply[1]), bool(reply[2]), int(reply[3]), reply[4:]
        events = {int(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        return after, current, lost, events

    def unsubscribe(self, stream: Stream) -> None:
        topics = self._subscribed.pop(stream, None)
        if topics is None:
            return
        for name in self.hub.unsubscribe(stream):
            signals.channel_emptied.send(self.sender, channel=name)
        self._listener.release(topics)

    def close_channel(self, channel: str) -> None:
        self.hub.end_channel(channel)
        with _unavailable():
            self.redis.publish(self._channel_key(channel), f"c {self.process}")

    def _on_channel(self, channel: str, payload: bytes) -> None:
        if payload[:1] == b"c":
            if _decode(payload[2:]) != self.process:
                self.hub.end_channel(channel)
            return
        if payload[:1] != b"m":
            return
        header, id_, frame = payload.split(b"\n", 2)
        _, seq_text, marker = header.split(b" ", 2)
        seq = int(seq_text)
        for pending in self._pending.get(channel, ()):
            pending.events[seq] = frame
        if channel not in self.hub.channels:
            return
        reached = self.hub.deliver(channel, seq, frame)
        event = _decode(marker[1:]) if marker else None
        signals.message_published.send(
            self.sender, channel=channel, id=_decode(id_), event=event, clients=reached
        )

    # -- pub/sub callbacks -------------------------------------------------------------

    def _on_message(self, topic: _Topic, payload: bytes) -> None:
        if topic.kind == "swarm":
            self._on_swarm(topic.key, payload)
        else:
            self._on_channel(topic.key, payload)

    def _on_lost(self) -> None:
        """The pub/sub connection failed: what it carried may be lost, so every stream
        of this process ends and its clients reconnect (to a healthy process, or later)."""
        streams = self._all_streams() + list(self.hub.streams)
        streams = [stream for stream in set(streams) if not stream.ended]
        if streams:
            log.warning("ending %d streams: Redis pub/sub connection lost", len(streams))
        for stream in streams:
            stream.end("broker unavailable")
        for waiting in self._pending.values():
            for pending in waiting:
                pending.stream.end("broker unavailable")

    # -- heartbeat and reaper ------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while True:
            try:
                self._beat()
            except (rexc.RedisError, OSError) as exc:
                log.debug("heartbeat failed: %s", exc)
            except Exception:
                log.exception("flask_signal: heartbeat failed")
            if not self._listener.healthy():
                log.error("redis pub/sub listener died or stopped receiving; restarting it")
                self._listener.restart()
            gevent.sleep(self.heartbeat_interval)

    def _beat(self) -> None:
        alive = self._proc_key(self.process)
        peers_key = self._proc_peers_key(self.process)
        ttl = int(self.swarm_ttl * 1000)
        pipe = self.redis.pipeline(transaction=False)
        # SET before SADD: a reaper never sees this process without its heartbeat.
        pipe.set(alive, b"1", px=int(self.peer_ttl * 1000), get=True)
        pipe.sadd(self._procs_key, self.process)
        pipe.pexpire(self._procs_key, ttl * 10)
        pipe.pexpire(peers_key, ttl)
        now = time.monotonic()
        if now - self._refreshed >= self.swarm_ttl / 3:
            for swarm_id in self._initiated:
                pipe.pexpire(self._swarm_key(swarm_id), ttl)
        previous = pipe.execute()[0]
        if now - self._refreshed >= self.swarm_ttl / 3:
            self._refreshed = now
        if previous is None and self._beats:
            self._fence()
        self._beats += 1
        while self._orphans:
            swarm_id, cid = self._orphans[0]
            self._leave_in_redis(swarm_id, cid)
            self._orphans.pop(0)

    def _fence(self) -> None:
        """Redis forgot this process (it missed heartbeats and was reaped, or Redis lost
        its data): end the local streams of peers Redis no longer knows, whose swarms
        would never deliver to them again."""
        local = [(sid, cid, s) for sid, peers in self._peers.items() for cid, s in peers.items()]
        pipe = self.redis.pipeline(transaction=False)
        for swarm_id, cid, _ in local:
            pipe.hexists(self._swarm_key(swarm_id), f"k:{cid}")
        gone = [s for (_, _, s), known in zip(local, pipe.execute(), strict=True) if not known]
        if gone:
            log.warning("heartbeat had expired; ending %d swarm streams Redis forgot", len(gone))
        for stream in gone:
            stream.end("broker unavailable")

    def _reaper_loop(self) -> None:
        while True:
            gevent.sleep(self.heartbeat_interval * random.uniform(0.8, 1.2))
            try:
                self.reap()
            except (rexc.RedisError, OSError) as exc:
                log.debug("reaper failed: %s", exc)
            except Exception:
                log.exception("flask_signal: reaper failed")

    def reap(self) -> int:
        """Make the peers of processes whose heartbeat expired leave; returns how many.

        Every process runs this; a ``SET NX PX`` lock lets one do it per interval.
        """
        lock_ttl = int(self.heartbeat_interval * 1000)
        if not self.redis.set(self._reaper_key, self.process, nx=True, px=lock_ttl):
            return 0
        processes = [p for p in self.redis.smembers(self._procs_key) if _decode(p) != self.process]
        if not processes:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for process in processes:
            pipe.exists(self._proc_key(_decode(process)))
        dead = [_decode(p) for p, alive in zip(processes, pipe.execute(), strict=True) if not alive]
        reaped = 0
        for process in dead:
            peers = self.redis.smembers(self._proc_peers_key(process))
            log.warning(
                "process %s stopped its heartbeat: removing its %d peers", process, len(peers)
            )
            for entry in peers:
                swarm_id, _, cid = _decode(entry).partition(" ")
                if self._leave_in_redis(swarm_id, cid, process):
                    reaped += 1
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self._proc_peers_key(process))
            pipe.srem(self._procs_key, process)
            pipe.execute()
        return reaped
