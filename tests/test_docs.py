"""Every ```python block of each docs/*.md page runs, in order, in one namespace per page.

A page's snippets that cannot run that way (a blocking client, a file served
by gunicorn) are written as ```{code-block} python and run by the tests below
against a real server.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Process, start_command, start_gunicorn
from tests.support import SSE, Peer

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S
)


def blocks(page: Path, info: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``page`` whose info string is ``info``, with their line numbers."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match["info"].strip() == info:
            body = textwrap.dedent(match["body"])
            # A {code-block} directive's options (":caption: ...") are not code.
            body = re.sub(r"\A(:\w[\w-]*:.*\n)+", "", body)
            found.append((text.count("\n", 0, match.start()) + 2, body))
    return found


def test_every_page_is_checked() -> None:
    assert {p.name for p in PAGES} >= {"index.md", "guide.md", "architecture.md"}


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_python_blocks_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code in blocks(page, "python"):
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{page.name}, the block at line {line} failed: {exc!r}") from exc


# -- blocks run against real servers -------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``flask-signal -p PORT``, as the client page's examples expect on port 5000."""
    cmd = start_command(log=tmp_path_factory.mktemp("docs") / "command.log")
    yield cmd
    cmd.stop()


def run_snippet(code: str, url: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    code = code.replace("http://localhost:5000", url)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("index", [0, 1])
def test_client_page_examples_run_to_their_end(hub: Process, index: int) -> None:
    """The client page's examples, verbatim but for the port, finish on their own."""
    code = blocks(DOCS / "client.md", "{code-block} python")[index][1]
    done = run_snippet(code, hub.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example prints what it received"


def test_readme_client_example_runs_to_its_end(hub: Process) -> None:
    code = blocks(ROOT / "README.md", "python")[-1][1]
    assert "flask_signal.client" in code
    done = run_snippet(code, hub.url)
    assert done.returncode == 0, done.stderr


def test_lifecycle_example_logs_under_gunicorn(tmp_path: Path) -> None:
    """The guide's app file, under ``gunicorn -k gevent``, logs a peer's join at INFO."""
    (code,) = [c for _, c in blocks(DOCS / "guide.md", "{code-block} python") if "peer_joined" in c]
    (tmp_path / "lifecycle_app.py").write_text(code)
    log = tmp_path / "gunicorn.log"
    srv = start_gunicorn(
        "lifecycle_app:app", "--chdir", str(tmp_path), "--log-level", "warning", log=log
    )
    try:
        initiator = Peer.open(srv.origin + "/signal")
        with SSE.open(f"{srv.origin}/signal/{initiator.id}"):
            assert initiator.sse.next().event == "join"
        deadline = time.monotonic() + 10
        while "joined" not in srv.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        initiator.close()
        assert f"joined {initiator.id}" in srv.output()
    finally:
        srv.stop()


def test_readme_app_runs() -> None:
    code = blocks(ROOT / "README.md", "python")[0][1]
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["app"]
    assert app.test_client().post("/scores").json == {"ok": True}  # type: ignore[attr-defined]


def test_architecture_page_names_every_module() -> None:
    """The layer table keeps up with the package: a new module or subpackage is placed there."""
    page = (DOCS / "architecture.md").read_text()
    package = ROOT / "flask_signal"
    names = [f"`{p.name}`" for p in package.glob("*.py") if not p.name.startswith("__")]
    names += [f"`{p.name}/`" for p in package.iterdir() if (p / "__init__.py").is_file()]
    missing = [name for name in names if name not in page]
    assert not missing, f"docs/architecture.md does not place {missing}"


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file of the repository."""
    links = re.findall(r"\]\((?!https?:|#)([^)#\s]+)", (ROOT / "README.md").read_text())
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
