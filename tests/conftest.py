from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, start_server


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; all are stopped (and killed if need be) afterwards."""
    started: list[Server] = []

    def make(settings: dict[str, Any] | None = None, **kw: Any) -> Server:
        srv = start_server(tmp_path, settings, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gunicorn server with the default settings, shared by a module's tests."""
    srv = start_server(tmp_path_factory.mktemp("hub"))
    yield srv
    srv.stop()
