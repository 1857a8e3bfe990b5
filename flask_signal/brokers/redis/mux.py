"""Commands of many greenlets pipelined over one Redis connection.

Greenlets queue their commands; the lane's writer sends whatever is queued
as one write, and its reader hands each reply to the oldest waiting call:
Redis answers a connection's commands in the order they arrived, so replies
need no tags. Packing and parsing are redis-py's (hiredis when installed).

What a caller learns when things go wrong follows what may have happened:

- :class:`NotSent` (a ``ConnectionError``): the command never left this
  process (no connection could be made, or the caller gave up while it was
  still queued). It cannot have run.
- ``TimeoutError`` or ``ConnectionError``: it was written, but no answer came
  (the caller gave up waiting, or the connection failed). Redis may run it,
  however late.

A caller that gives up leaves its place in line: its reply is read and
dropped, so later replies still reach their callers. The connection itself
is declared dead when no reply at all comes for ``timeout`` while commands
wait, or when it fails; every call written to it fails then, and the next
command connects again.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import gevent
from gevent.event import AsyncResult, Event
from gevent.socket import wait, wait_read
from redis import exceptions as rexc
from redis._parsers import helpers as _parsers
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.commands.core import CoreCommands

_pack_command: Callable[[Any], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # redis-py's own packer, in Python
    _pack_command = None

Arg = bytes | str | int | float
Command = Sequence[Arg]


#: What the reader's wait raises when Redis sends nothing back in time.
_STALLED = rexc.TimeoutError("no reply from Redis in time")


class NotSent(rexc.ConnectionError):
    """The command never left this process: it cannot have run."""


class _Call:
    """Commands sent together (consecutively) and the replies that came back so far."""

    __slots__ = ("abandoned", "count", "payload", "replies", "result")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count
        self.replies: list[Any] = []
        self.result: AsyncResult[list[Any]] = AsyncResult()
        self.abandoned = False


class _Link:
    """One connection, with the calls written to it and not yet answered."""

    __slots__ = ("conn", "dead", "inflight", "led", "reader", "wake", "watcher")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.inflight: deque[_Call] = deque()
        self.wake = Event()
        self.dead = False
        self.reader: gevent.Greenlet[Any, Any] | None = None
        #: Set while a caller reads its own reply (see :meth:`_Lane.lead`): the
        #: reader greenlet stays out of the way.
        self.led = False
        #: The leading caller's readiness watcher on the socket, made once.
        self.watcher: Any = None


class _Lane:
    """One connection's queue, writer and reader."""

    def __init__(self, connection: Callable[[], Any], timeout: float) -> None:
        self.connection = connection
        #: How long a reply may be awaited with no byte coming back before the
        #: connection is given up.
        self.timeout = timeout
        self.queue: deque[_Call] = deque()
        self.link: _Link | None = None
        self.wake = Event()
        self.writer: gevent.Greenlet[Any, Any] | None = None
        #: Set while a write is under way (by the writer or a caller).
        self.busy = False
        #: Set when commands were written while a caller waited for its own reply:
        #: several greenlets need Redis at once, and the writer's one write for all
        #: (made once every ready greenlet has queued) costs less than writing each
        #: alone. Cleared when the writer finds a command alone again.
        self.crowded = False
        #: How many connections were made (for tests and stats).
        self.connects = 0
        #: How many calls their callers wrote themselves (for tests and stats).
        self.direct = 0

    def submit(self, call: _Call) -> _Link | None:
        """Send a call, or queue it for the writer.

        A caller that finds the connection idle (nothing queued, written or being
        written) and not ``crowded`` writes its command and then reads its own reply
        (the link is returned: see :meth:`lead`): neither the writer nor the reader
        is woken. Otherwise it queues for the writer, whose one write carries every
        command queued (fewer writes and reads on both sides)."""
        link = self.link
        if (
            not self.queue
            and not self.busy
            and not self.crowded
            and link is not None
            and not link.dead
            # Nothing is owed on an idle connection: anything readable is its end,
            # which the writer deals with (it connects again).
            and not link.inflight
            and not link.conn.can_read()
        ):
            self.direct += 1
            self._send(link, [call], call.payload, lead=True)
            return link
        self.queue.append(call)
        self._kick()
        return None

    def _kick(self) -> None:
        if self.writer is None or self.writer.dead:
            self.writer = gevent.spawn(self._write_loop)
        self.wake.set()

    def withdraw(self, call: _Call) -> bool:
        """Take a call out of the queue; False if it was written already."""
        try:
            self.queue.remove(call)
        except ValueError:
            return False
        return True

    # -- the writer ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            # While a caller writes its own command, what queues meanwhile is left to
            # that caller's wake-up once its write is done (see _send).
            while self.queue and not self.busy:
                link = self._connected()
                if link is None or self.busy:
                    continue
                batch, self.queue = self.queue, deque()
                self.crowded = len(batch) > 1 or bool(link.inflight)
                self._send(link, batch, b"".join([call.payload for call in batch]))

    def _send(
        self, link: _Link, batch: Sequence[_Call], payload: bytes, lead: bool = False
    ) -> None:
        """Write calls on the link, in the greenlet that asks (writer or caller); one
        write at a time (``busy``), so that two never interleave on the socket.
        ``lead``: the caller reads the reply itself, the reader is not woken."""
        self.busy = True
        # From here each of them may reach Redis.
        link.inflight.extend(batch)
        if lead:
            link.led = True
        else:
            link.wake.set()
        try:
            link.conn.send_packed_command([payload], check_health=False)
        except BaseException as exc:
            self._lost(link, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.busy = False
            if self.queue and gevent.getcurrent() is not self.writer:
                self._kick()

    def _connected(self) -> _Link | None:
        """The live link, connecting if there is none; None (and every queued call
        failed with :class:`NotSent`) if no connection can be made."""
        link = self.link
        if link is not None and not link.dead:
            # Nothing is owed on an idle connection: anything readable is its end.
            if link.inflight or not link.conn.can_read():
                return link
            self._lost(link, rexc.ConnectionError("connection closed by Redis"))
        conn = self.connection()
        try:
            conn.connect()
        except Exception as exc:
            conn.disconnect()
            failed, self.queue = self.queue, deque()
            for call in failed:
                _fail(call, NotSent(f"could not connect to Redis: {exc}"))
            return None
        self.connects += 1
        link = self.link = _Link(conn)
        link.reader = gevent.spawn(self._read_loop, link)
        return link

    # -- the reader ------------------------------------------------------------------

    def _read_loop(self, link: _Link) -> None:
        inflight = link.inflight
        while not link.dead:
            if not inflight or link.led:
                link.wake.clear()
                link.wake.wait()
                continue
            if not self._read(link, self.timeout):
                return

    def _read(self, link: _Link, stall: float | None = None) -> bool:
        """Read one reply and hand it to its call (:meth:`_take`); False if the link was
        given up meanwhile. With ``stall``, wait for it that long at most first."""
        conn = link.conn
        try:
            if stall is not None and not conn.can_read():
                # Waited for in the hub, so that an unpatched socket blocks no thread.
                wait_read(conn._sock.fileno(), timeout=stall, timeout_exc=_STALLED)
            reply = conn.read_response(disconnect_on_error=False)
        except rexc.ResponseError as exc:
            reply = exc
        except BaseException as exc:
            # Stopped halfway through a reply, the stream cannot be trusted.
            self._lost(link, exc)
            if not isinstance(exc, Exception):
                raise
            return False
        return self._take(link, reply)

    def _take(self, link: _Link, reply: Any) -> bool:
        """Give a reply to the first call owed one (its result once it has them all);
        False if none was owed: the stream is out of step, and the link is given up."""
        inflight = link.inflight
        if not inflight:
            self._lost(link, rexc.ConnectionError("unexpected reply from Redis"))
            return False
        call = inflight[0]
        call.replies.append(reply)
        if len(call.replies) == call.count:
            inflight.popleft()
            if not call.abandoned:
                call.result.set(call.replies)
        return True

    def lead(self, link: _Link, call: _Call, timeout: float) -> bool:
        """Read replies in the caller until its own call has its result (True), or its
        ``timeout`` is up first (False; it gives up its place in line).

        Only a caller that wrote its command on an idle link leads: its reply is the
        first owed, and nobody else reads meanwhile. Leaving, for whatever reason, it
        hands the replies still owed (commands written after its own) to the reader.
        """
        conn, inflight = link.conn, link.inflight
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        try:
            while not call.result.ready() and not link.dead:
                if not conn.can_read():
                    now = time.monotonic()
                    # The link is given up as the reader would: no reply for its timeout.
                    stalled_at = quiet_since + self.timeout
                    until = min(deadline, stalled_at)
                    if until <= now:
                        if stalled_at <= deadline:
                            self._lost(link, _STALLED)
                            break
                        return False  # the caller's time is up, not the link's
                    if link.watcher is None:
                        link.watcher = gevent.get_hub().loop.io(conn._sock.fileno(), 1)
                    try:
                        wait(link.watcher, timeout=until - now, timeout_exc=_STALLED)
                    except rexc.TimeoutError:
                        pass  # decided above, on the next turn
                    except BaseException:
                        if call.result.ready():
                            break  # _lost cancelled the wait: the call has its error
                        raise
                    continue
                if not self._read(link):
                    break
                quiet_since = time.monotonic()
            return True
        finally:
            link.led = False
            if inflight and not link.dead:
                self.crowded = True
                link.wake.set()

    def _lost(self, link: _Link, exc: BaseException) -> None:
        """The link is dead: every call written to it fails, outcome unknown."""
        if link.dead:
            return
        link.dead = True
        if self.link is link:
            self.link = None
        error: Exception
        if isinstance(exc, rexc.TimeoutError | TimeoutError):
            error = rexc.TimeoutError(f"Redis did not answer: {exc}")
        else:
            error = rexc.ConnectionError(f"connection to Redis lost: {exc}")
        watcher, link.watcher = link.watcher, None
        if watcher is not None and watcher.callback is not None:
            # A leading caller waits on the socket: woken with the error (it finds its
            # call failed), then the socket closes, never under an active watcher.
            gevent.get_hub().cancel_waits_close_and_then([watcher], error, link.conn.disconnect)
        else:
            if watcher is not None:
                watcher.close()
            link.conn.disconnect()
        failed, link.inflight = link.inflight, deque()
        for call in failed:
            _fail(call, error)
        link.wake.set()
        reader = link.reader
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.kill(block=False)
            self.writer = None
        failed, self.queue = self.queue, deque()
        for call in failed:
            _fail(call, NotSent("the connection was closed"))
        if self.link is not None:
            self._lost(self.link, rexc.ConnectionError("closed"))


def _plain(args: Command) -> tuple[Arg, ...]:
    """The command as hiredis packs it; TypeError for a name of two words
    (``"CLIENT ID"``), which redis-py's packer splits."""
    name = args[0]
    if (" " if isinstance(name, str) else b" ") in name:  # type: ignore[operator]
        raise TypeError("a command name of two words")
    return tuple(args)


def _fail(call: _Call, error: Exception) -> None:
    if not call.abandoned and not call.result.ready():
        call.result.set_exception(error)


class Mux:
    """Commands from any greenlet, pipelined over ``connections`` Redis connections.

    ``connection`` makes a new, unconnected redis-py connection whose
    ``socket_timeout`` is the longest a reply may take; ``timeout`` is how long
    a caller waits for its answer.
    """

    def __init__(
        self, connection: Callable[[], Any], *, timeout: float = 5.0, connections: int = 1
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.size = connections
        self._pid = os.getpid()
        self._lanes = [_Lane(connection, timeout) for _ in range(connections)]
        self._next = itertools.cycle(self._lanes)
        #: Packs commands, in the caller (an argument of a wrong type fails there);
        #: never connected.
        self._packer = connection()

    def call(self, *args: Arg, timeout: float | None = None) -> Any:
        """Send one command; its reply (an error reply is raised)."""
        reply = self._run([args], timeout)[0]
        if isinstance(reply, rexc.ResponseError):
            raise reply
        return reply

    def call_many(self, commands: Sequence[Command], timeout: float | None = None) -> list[Any]:
        """Send commands back to back on one connection; their replies, error replies
        as :class:`redis.exceptions.ResponseError` instances in the list."""
        if not commands:
            return []
        return self._run(commands, timeout)

    def _run(self, commands: Sequence[Command], timeout: float | None) -> list[Any]:
        if self._pid != os.getpid():
            self._forked()
        payload = self._pack(commands)
        lane = next(self._next) if self.size > 1 else self._lanes[0]
        call = _Call(payload, len(commands))
        wait = self.timeout if timeout is None else timeout
        try:
            link = lane.submit(call)
            if link is not None and not lane.lead(link, call, wait):
                raise gevent.Timeout
            replies: list[Any] = call.result.get(timeout=wait)
            return replies
        except gevent.Timeout:
            call.abandoned = True
            if lane.withdraw(call):
                raise NotSent("no connection to Redis in time") from None
            raise rexc.TimeoutError("Redis did not answer in time") from None
        except BaseException:
            # Killed while waiting: its reply, if any, is read and dropped.
            call.abandoned = True
            lane.withdraw(call)
            raise

    def _pack(self, commands: Sequence[Command]) -> bytes:
        if _pack_command is not None:
            try:
                # hiredis packs a command of plain bytes, str, int and float in one call;
                # redis-py's packer adds a few microseconds per command around it.
                return b"".join([_pack_command(_plain(args)) for args in commands])
            except TypeError:
                pass  # another type (memoryview, bool), or a name of two words
        return b"".join(self._packer.pack_commands(commands))

    def connections(self) -> int:
        """How many connections are open now."""
        return sum(1 for lane in self._lanes if lane.link is not None and not lane.link.dead)

    def connects(self) -> int:
        """How many connections were made so far."""
        return sum(lane.connects for lane in self._lanes)

    def direct_writes(self) -> int:
        """How many calls were written by their callers, the connection being idle."""
        return sum(lane.direct for lane in self._lanes)

    def close(self) -> None:
        """Close every connection; calls in flight fail, the next call connects again."""
        for lane in self._lanes:
            lane.close()

    def _forked(self) -> None:
        # A child must not share its parent's sockets: drop them without a word to Redis.
        self._pid = os.getpid()
        for lane in self._lanes:
            if lane.link is not None:
                lane.link.dead = True
                lane.link.conn.disconnect()
        self._lanes = [_Lane(self.connection, self.timeout) for _ in range(self.size)]
        self._next = itertools.cycle(self._lanes)


def _callbacks() -> dict[str, Callable[..., Any]]:
    # redis-py's reply parsers for RESP2 (what the connections speak), by command name.
    table = _parsers.get_response_callbacks(2, True)  # type: ignore[attr-defined]
    return {name.upper(): fn for name, fn in table.items()}


def _parse(
    callbacks: dict[str, Callable[..., Any]], args: Command, reply: Any, options: Any
) -> Any:
    """A reply as redis-py's client returns it (see ``redis.Redis.parse_response``)."""
    if isinstance(reply, rexc.ResponseError):
        if EMPTY_RESPONSE in options:
            return options[EMPTY_RESPONSE]
        return reply
    for name in (EMPTY_RESPONSE, NEVER_DECODE, "keys"):
        options.pop(name, None)
    callback = callbacks.get(str(args[0]).upper())
    return callback(reply, **options) if callback is not None else reply


class MuxClient(CoreCommands):
    """redis-py's commands (``get``, ``hgetall``, ``pipeline`` ...), sent through a :class:`Mux`."""

    #: What redis-py's command signatures look for in a synchronous client.
    _is_async_client: Literal[False] = False
    _event_dispatcher: Any = None

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.response_callbacks = _callbacks()

    def execute_command(self, *args: Arg, **options: Any) -> Any:
        try:
            reply = self.mux.call(*args)
        except rexc.ResponseError as exc:
            reply = exc
        parsed = _parse(self.response_callbacks, args, reply, options)
        if isinstance(parsed, rexc.ResponseError):
            raise parsed
        return parsed

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> MuxPipeline:
        """Commands queued and sent back to back; never a MULTI transaction."""
        if transaction:
            raise ValueError("transactions are not supported over the multiplexed connection")
        return MuxPipeline(self)


class MuxPipeline(CoreCommands):
    """Queued commands, sent back to back through the client's :class:`Mux`."""

    _is_async_client: Literal[False] = False
    _event_dispatcher: Any = None

    def __init__(self, client: MuxClient) -> None:
        self.client = client
        self.command_stack: list[tuple[tuple[Arg, ...], dict[str, Any]]] = []

    def execute_command(self, *args: Arg, **options: Any) -> MuxPipeline:
        self.command_stack.append((args, options))
        return self

    def __len__(self) -> int:
        return len(self.command_stack)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Every command's reply, in order; the first error reply is raised if asked."""
        stack, self.command_stack = self.command_stack, []
        replies = self.client.mux.call_many([args for args, _ in stack])
        callbacks = self.client.response_callbacks
        parsed = [
            _parse(callbacks, args, reply, options)
            for (args, options), reply in zip(stack, replies, strict=True)
        ]
        if raise_on_error:
            for value in parsed:
                if isinstance(value, rexc.ResponseError):
                    raise value
        return parsed
