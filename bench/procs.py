"""The processes under test: gunicorn (and redis-server), and what /proc says of them."""

from __future__ import annotations

import contextlib
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 0
GENERATOR_CORE = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:g}s")


def raise_fd_limit() -> int:
    """Raise this process's descriptor limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_self() -> None:
    os.sched_setaffinity(0, {GENERATOR_CORE})


def pinned(cmd: list[str], pin: bool) -> list[str]:
    if not pin:
        return cmd
    if shutil.which("taskset") is None:
        raise RuntimeError("--pin needs taskset (util-linux)")
    return ["taskset", "-c", str(SERVER_CORE), *cmd]


# -- /proc ----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def forked(pid: int) -> list[int]:
    """Children of ``pid`` running its own program: forked workers, not a helper it ran
    (an import may run ``ldconfig``, which would pass for a worker while it lives)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return []
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/exe") == exe:
                found.append(child)
    return found


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_connections(pids: list[int], port: int, remote: bool = False) -> int:
    """Open connections to ``port`` (accepted clients, not redis or pipes) the processes hold.

    With ``remote``, connections the processes opened to ``port`` elsewhere instead.
    """
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                # fields: sl local remote state ... inode. Only ESTABLISHED (01):
                # a connection its client already closed (CLOSE_WAIT, say, while
                # the server has yet to notice) holds no stream.
                address = fields[2] if remote else fields[1]
                if fields[3] == "01" and fields[9] in inodes and int(address[-4:], 16) == port:
                    count += 1
    return count


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idling, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- servers ----------------------------------------------------------------------------


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_redis(pin: bool | str) -> Redis:
    """A redis-server of its own on a free port, on core 0 when ``pin`` (or on ``pin``'s cores)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd = ["taskset", "-c", pin, *cmd] if isinstance(pin, str) else pinned(cmd, pin)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, 10)
    except Exception as exc:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"redis-server did not start: {exc}") from None
    return Redis(proc, port)


@dataclass
class Server:
    """A server under test on a free port: gunicorn and its workers, or one process."""

    proc: subprocess.Popen[bytes]
    port: int
    workers: int
    log: Path
    redis: Redis | None = None
    #: Whether the serving is done by children of ``proc`` (gunicorn's workers)
    #: rather than by ``proc`` itself (the ceiling, Node).
    forks: bool = True
    _pids: list[int] = field(default_factory=list)

    def worker_pids(self) -> list[int]:
        if not self._pids:
            self._pids = forked(self.proc.pid) if self.forks else [self.proc.pid]
        return self._pids

    def server_pids(self) -> list[int]:
        """Processes doing the serving: the workers, and redis-server when used."""
        pids = list(self.worker_pids())
        if self.redis is not None:
            pids.append(self.redis.proc.pid)
        return pids

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.worker_pids())

    def fd_count(self) -> int:
        return sum(fd_count(pid) for pid in self.worker_pids())

    def client_connections(self) -> int:
        return client_connections(self.worker_pids(), self.port)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """Stop at once, master first (no worker is forked again), once measured."""
        workers = list(self.worker_pids()) if self.forks else []
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.redis is not None:
            self.redis.stop()
        with contextlib.suppress(OSError):
            self.log.unlink()


def launch(
    cmd: list[str],
    *,
    port: int,
    workers: int = 1,
    forks: bool = True,
    cores: str | None = None,
    env: dict[str, str] | None = None,
    redis: Redis | None = None,
    timeout: float = 20,
) -> Server:
    """Start ``cmd`` (listening on ``port``), on ``cores`` when given (taskset's list).

    With ``forks``, also wait until ``workers`` children are forked: those are
    the processes measured. On failure the process is stopped and the error
    carries the tail of its output.
    """
    if cores is not None:
        if shutil.which("taskset") is None:
            raise RuntimeError("pinning needs taskset (util-linux)")
        cmd = ["taskset", "-c", cores, *cmd]
    fd, name = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, workers, log, redis, forks)
    try:
        wait_for_port(port, proc, timeout)
        deadline = time.monotonic() + 10
        while forks and len(forked(proc.pid)) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} workers did not start")
            time.sleep(0.05)
    except Exception as exc:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"{shlex.join(cmd)} did not start ({exc}):\n{tail}") from None
    return server


def start_server(
    *,
    app: str,
    worker_class: str,
    workers: int,
    broker_url: str,
    publish_key: str,
    pin: bool,
    worker_connections: int = 20000,
    redis: Redis | None = None,
) -> Server:
    """Start gunicorn serving ``app``; wait until it listens and every worker is forked."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Read by bench/app.py (and by any app calling app.config.from_prefixed_env()).
    env["FLASK_SIGNAL_BROKER_URL"] = broker_url
    env["FLASK_SIGNAL_PUBLISH_KEY"] = publish_key
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-connections",
        str(worker_connections),
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
        app,
    ]
    cores = str(SERVER_CORE) if pin else None
    return launch(cmd, port=port, workers=workers, cores=cores, env=env, redis=redis)
