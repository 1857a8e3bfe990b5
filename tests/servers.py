"""Every live server the tests start, and the fixtures that start them.

One :func:`free_port`, one :class:`Process` (a listening subprocess: started on
a free port, waited for, stopped with a signal and killed if it lingers, its
workers found through ``/proc``) and one starter per kind of server:

- :func:`start_gunicorn`: gunicorn with any app and worker class
  (``gevent`` or the project's ``flask_signal.worker.GeventWorker``);
- :func:`start_server`: the end-to-end app (``tests.apps``) under gunicorn or
  gevent's own ``WSGIServer``, as a :class:`Server` with its test endpoints;
- :func:`start_command`: the ``flask-signal`` command;
- :class:`RedisServer`: a ``redis-server`` of the tests' own (never the
  machine's shared one), and :class:`Pair`, two servers sharing one Redis.

The HTTP suites run under a matrix of :class:`Stack` values (server, worker
class, broker, settings), as pytest parameters of the ``stack`` fixture:
``pytest -k redis-pair`` runs them on two processes sharing Redis,
``pytest -k "not redis-pair"`` leaves that out. Under ``CI=true`` a server
that cannot be had (no ``redis-server``, no Node) fails the test instead of
skipping it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal as os_signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "tests" / "compat"
#: The project's own worker class for gunicorn.
SIGNAL_WORKER = "flask_signal.worker.GeventWorker"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """A real part of a test is missing: fail under CI, skip (with the reason) elsewhere."""
    if under_ci():
        pytest.fail(f"required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a master's workers), from every one of its threads."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return sorted(found)


P = TypeVar("P", bound="Process")


class Process:
    """A server in a subprocess, listening on 127.0.0.1:``port``; output goes to ``log``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, prefix: str, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.prefix = prefix

    @classmethod
    def start(
        cls: type[P],
        argv: Sequence[str],
        *,
        port: int,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        prefix: str = "",
        workers: int = 0,
        timeout: float = 15,
    ) -> P:
        """Run ``argv`` (already told to listen on ``port``), wait until it accepts
        connections and, when ``workers`` is given, until that many workers were forked."""
        if log is None:
            log = Path(tempfile.mkdtemp(prefix="signal-test-")) / "server.log"
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv), cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )
        server = cls(proc, port, prefix, log)
        try:
            wait_for_port(port, proc, timeout)
            server.wait_workers(workers)
        except Exception:
            server.kill()
            raise RuntimeError(f"{argv[:4]} did not start:\n{server.output()}") from None
        return server

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def wait_workers(self, count: int, timeout: float = 10) -> list[int]:
        """Wait until at least ``count`` workers run (masters fork just after binding)."""
        deadline = time.monotonic() + timeout
        while len(pids := self.worker_pids()) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{len(pids)} of {count} workers after {timeout}s")
            time.sleep(0.05)
        return pids

    def stop(self, sig: int = os_signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` and wait for the exit status; kill the process if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """``SIGKILL`` the process and its workers, as a lost host would be."""
        if self.proc.poll() is None:
            for pid in self.worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, os_signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(5)


def gunicorn_argv(
    app: str, *args: str, port: int, worker_class: str = "gevent", workers: int = 1
) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", str(workers),
        "-b", f"127.0.0.1:{port}", *args, app,
    ]  # fmt: skip


def start_gunicorn(
    app: str,
    *args: str,
    worker_class: str = "gevent",
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cls: type[P] = Process,  # type: ignore[assignment]
) -> P:
    """gunicorn serving ``app`` (``module:variable``); ``args`` go to its command line."""
    port = free_port()
    argv = gunicorn_argv(app, *args, port=port, worker_class=worker_class, workers=workers)
    return cls.start(argv, port=port, log=log, env=env, workers=workers)


def start_command(
    *args: str, prefix: str = "", port: int | None = None, log: Path | None = None
) -> Process:
    """The ``flask-signal`` command (``python -m flask_signal``) with ``args``."""
    port = port or free_port()
    argv = [sys.executable, "-m", "flask_signal", "-p", str(port), "--log-level", "warning"]
    return Process.start([*argv, *args], port=port, log=log, prefix=prefix, workers=1)


# -- the end-to-end app ------------------------------------------------------------------


class Server(Process):
    """``tests.apps:create_app`` served in a subprocess; ``url`` is the hub's base URL."""

    def fired(self) -> list[dict[str, Any]]:
        return requests.get(self.origin + "/_test/fired", timeout=5).json()  # type: ignore[no-any-return]

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        params = {"channel": channel} if channel else {}
        return requests.get(self.origin + "/_test/stats", params=params, timeout=5).json()  # type: ignore[no-any-return]

    def count(self, channel: str | None = None) -> int:
        """Open streams in the server, all or on one channel."""
        return int(self.stats(channel)["count"])

    def wait_ready(self, timeout: float = 20) -> None:
        """Wait until a worker answers: the port accepts connections as soon as the master
        binds it, but requests wait until a worker has loaded the app."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(self.origin + "/_test/stats", timeout=deadline - time.monotonic())
                return
            except requests.RequestException:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)


def start_server(
    tmp_path: Path,
    settings: dict[str, Any] | None = None,
    *,
    server: str = "gunicorn",
    workers: int = 1,
    worker_class: str | None = None,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    app: str = "tests.apps:create_app()",
) -> Server:
    """Serve ``app`` (``SIGNAL_TEST_SETTINGS`` holds ``settings``) under gunicorn or, with
    ``server="pywsgi"``, ``tests.apps`` under gevent's ``WSGIServer``; ``extra_args`` go to
    gunicorn."""
    settings = settings or {}
    port = port or free_port()
    env = {"SIGNAL_TEST_SETTINGS": json.dumps(settings), **(extra_env or {})}
    if server == "gunicorn":
        args = ["--worker-connections", "5000", "--graceful-timeout", "2"]
        args += ["--log-level", "warning", *extra_args]
        argv = gunicorn_argv(
            app,
            *args,
            port=port,
            worker_class=worker_class or "gevent",
            workers=workers,
        )
    elif server == "pywsgi":
        argv, workers = [sys.executable, "-m", "tests.pywsgi_server", str(port)], 0
    else:
        raise ValueError(f"unknown server {server!r}")
    log = tmp_path / f"server-{port}.log"
    prefix = settings.get("url_prefix", "/signal")
    srv = Server.start(argv, port=port, log=log, env=env, prefix=prefix, workers=workers)
    try:
        srv.wait_ready()
    except Exception:
        srv.kill()
        raise RuntimeError(f"{argv[:4]} answers nothing:\n{srv.output()}") from None
    return srv


class Pair:
    """Two server processes sharing one Redis, standing in for one :class:`Server`.

    Each use of ``url`` or ``origin`` names the next process, so a test's
    requests alternate between them: what one process does must be seen by
    the other. Counts and fired signals are the two processes' together.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.prefix = servers[0].prefix
        self.port = servers[0].port
        self.proc = servers[0].proc
        self._turn = itertools.cycle(servers)

    @property
    def url(self) -> str:
        return next(self._turn).url

    @property
    def origin(self) -> str:
        return next(self._turn).origin

    def worker_pids(self) -> list[int]:
        return [pid for srv in self.servers for pid in srv.worker_pids()]

    def stop(self, sig: int = os_signal.SIGTERM, timeout: float = 10) -> int:
        return max(srv.stop(sig, timeout) for srv in self.servers)

    def kill(self) -> None:
        for srv in self.servers:
            srv.kill()

    def fired(self) -> list[dict[str, Any]]:
        return [item for srv in self.servers for item in srv.fired()]

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        each = [srv.stats(channel) for srv in self.servers]
        return {k: sum(s[k] for s in each) for k, v in each[0].items() if isinstance(v, int)}

    def count(self, channel: str | None = None) -> int:
        return sum(srv.count(channel) for srv in self.servers)


def start_pair(
    tmp_path: Path, redis_url: str, settings: dict[str, Any] | None = None, **kw: Any
) -> Pair:
    """Two servers on one Redis, under a key prefix of their own."""
    shared = {
        "broker_url": redis_url,
        "redis_prefix": f"t{uuid.uuid4().hex[:10]}:",
        **(settings or {}),
    }
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, shared, **kw))
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return Pair(servers)


# -- Redis -------------------------------------------------------------------------------


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """A ``redis-server`` subprocess with no persistence; can be killed and started again
    on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        unavailable(f"redis-server did not start on port {self.port}")
                    time.sleep(0.05)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        self.kill()

    def pause(self) -> None:
        """Stop the process (``SIGSTOP``): connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(os_signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process go on (``SIGCONT``)."""
        assert self.proc is not None
        self.proc.send_signal(os_signal.SIGCONT)

    def kill(self) -> None:
        """Stop it the hard way (``SIGKILL``), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


# -- the matrix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """What serves the hub in a test: worker class, settings, and one or two processes."""

    name: str
    worker_class: str = "gevent"
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Two processes sharing a Redis broker, each request going to the next one.
    paired: bool = False

    def __str__(self) -> str:
        return self.name


#: The matrix of the HTTP suites; a test's id names its stack (``test_x[redis-pair]``).
STACKS = (
    Stack("gevent"),
    Stack("fastpath", settings={"fast_path": True}),
    Stack("signal-worker", worker_class=SIGNAL_WORKER),
    Stack("redis-pair", paired=True),
)
DEFAULT_STACK = STACKS[0]


def start_hub(
    tmp_path: Path,
    settings: dict[str, Any] | None = None,
    *,
    stack: Stack = DEFAULT_STACK,
    redis_url: str | None = None,
    **kw: Any,
) -> Server | Pair:
    """A hub as ``stack`` serves it: one :class:`Server`, or a :class:`Pair` on ``redis_url``."""
    settings = {**stack.settings, **(settings or {})}
    if kw.get("server", "gunicorn") == "gunicorn":
        kw.setdefault("worker_class", stack.worker_class)
    if not stack.paired:
        return start_server(tmp_path, settings, **kw)
    assert redis_url is not None, "a paired stack needs the session's Redis"
    return start_pair(tmp_path, redis_url, settings, **kw)


# -- fixtures (conftest.py makes them every test's) -----------------------------------------


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    """The stack of this test: a parameter in the matrix suites, else the default one."""
    return getattr(request, "param", DEFAULT_STACK)


@pytest.fixture(scope="module")
def broker_url(request: pytest.FixtureRequest, stack: Stack) -> str | None:
    """The Redis that paired servers share, when the stack is paired."""
    if not stack.paired:
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def make_server(
    tmp_path: Path, stack: Stack, broker_url: str | None
) -> Iterator[Callable[..., Server | Pair]]:
    """Start hubs for one test, as its stack serves them; all are stopped afterwards."""
    started: list[Server | Pair] = []

    def make(settings: dict[str, Any] | None = None, **kw: Any) -> Server | Pair:
        srv = start_hub(tmp_path, settings, stack=stack, redis_url=broker_url, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, stack: Stack, broker_url: str | None
) -> Iterator[Server | Pair]:
    """One hub with the default settings, shared by a module's tests."""
    srv = start_hub(tmp_path_factory.mktemp("hub"), stack=stack, redis_url=broker_url)
    yield srv
    srv.stop()


@pytest.fixture
def command(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start ``flask-signal`` commands for one test; each is stopped, or killed, afterwards."""
    started: list[Process] = []

    def start(*args: str, prefix: str = "", port: int | None = None) -> Process:
        port = port or free_port()
        cmd = start_command(*args, prefix=prefix, port=port, log=tmp_path / f"command-{port}.log")
        started.append(cmd)
        return cmd

    yield start
    for cmd in started:
        cmd.kill()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis shared by the session (``REDIS_URL``, or one started on a free port);
    tests keep apart by using their own key prefix."""
    import redis

    url = os.environ.get("REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            unavailable(f"REDIS_URL={url} does not answer: {exc}")
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may flush, kill and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of the test's own."""
    return f"t{uuid.uuid4().hex[:10]}:"


def install_node_modules() -> Path:
    """tests/compat/node_modules, installed with ``npm ci`` when missing or older than
    the lock file; fails under CI (skips elsewhere) without Node."""
    target = COMPAT / "node_modules"
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("the Node.js tests need node and npm")
    lock = COMPAT / "package-lock.json"
    stamp = target / ".package-lock.json"  # written by npm ci
    if not stamp.is_file() or stamp.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=COMPAT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in tests/compat failed:\n{done.stderr}", pytrace=False)
    return target


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/compat/node_modules, installed if need be (see :func:`install_node_modules`)."""
    return install_node_modules()


class EventSources:
    """WHATWG EventSources in one Node process (``tests/compat/eventsource_lines.js``,
    the ``eventsource`` package): opened and closed on command, every event, open and
    error kept as a record (a dict, in the order they came, with ``at``: when it came,
    on :func:`time.monotonic`'s clock)."""

    def __init__(self, node_modules: Path) -> None:
        node = shutil.which("node")
        assert node is not None  # the node_modules fixture fails or skips without it
        self.proc = subprocess.Popen(
            [node, str(COMPAT / "eventsource_lines.js")],
            cwd=node_modules.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            record["at"] = time.monotonic()  # when it was read, on the test's clock
            self.records.append(record)  # one writer: list.append is atomic

    def open(self, name: str, url: str, events: Sequence[str] = ()) -> None:
        """Open an EventSource named ``name`` on ``url``, listening to ``events`` too
        (``message`` always)."""
        self._send({"open": name, "url": url, "events": list(events)})

    def close(self, name: str) -> None:
        self._send({"close": name})

    def _send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def of(self, source: str, **match: Any) -> list[dict[str, Any]]:
        """The records of ``source`` that have every item of ``match``."""
        return [
            r
            for r in list(self.records)
            if r.get("source") == source and match.items() <= r.items()
        ]

    def events(self, source: str, event: str = "message") -> list[dict[str, Any]]:
        return self.of(source, type="event", event=event)

    def wait_for(
        self, source: str, timeout: float = 20, count: int = 1, **match: Any
    ) -> dict[str, Any]:
        """The ``count``-th record of ``source`` like ``match``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(found := self.of(source, **match)) < count:
            assert self.proc.poll() is None, f"node exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"no {match} from {source}: {self.story(source)}"
            time.sleep(0.05)
        return found[count - 1]

    def story(self, source: str) -> list[dict[str, Any]]:
        """What befell ``source``: opens, errors and events other than data, and its last
        ten records."""
        records = self.of(source)
        data = {"message", "signal"}
        return [r for r in records[:-10] if r.get("event") not in data] + records[-10:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the script closes every EventSource and exits
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
