from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import PAIRED, Pair, Server, start_hub


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_process: checks one process's own limits or counters; not run when every "
        "test server is two processes (SIGNAL_TEST_BROKER=redis)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not PAIRED:
        return
    deselected = [item for item in items if item.get_closest_marker("single_process")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def broker_url(request: pytest.FixtureRequest) -> str | None:
    """The Redis that paired servers share, when the suite runs paired."""
    if not PAIRED:
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def make_server(tmp_path: Path, broker_url: str | None) -> Iterator[Callable[..., Server | Pair]]:
    """Start servers for one test; all are stopped (and killed if need be) afterwards."""
    started: list[Server | Pair] = []

    def make(settings: dict[str, Any] | None = None, **kw: Any) -> Server | Pair:
        srv = start_hub(tmp_path, settings, redis_url=broker_url, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str | None
) -> Iterator[Server | Pair]:
    """One hub with the default settings, shared by a module's tests."""
    srv = start_hub(tmp_path_factory.mktemp("hub"), redis_url=broker_url)
    yield srv
    srv.stop()


from tests.redis_support import redis_url  # noqa: E402, F401 - the session's Redis, when paired
