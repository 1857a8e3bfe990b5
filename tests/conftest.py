"""Every test's fixtures (from :mod:`tests.servers`) and the matrix of the HTTP suites.

The suites in ``MATRIX_SUITES`` (and any test marked ``matrix``) run once per
:data:`tests.servers.STACKS` entry, as parameters of the ``stack`` fixture, so
``-k`` selects them: ``pytest -k redis-pair tests/test_channels.py``. Every
other test that starts a hub gets the default stack, unparametrized.
"""

from __future__ import annotations

import pytest

from tests.servers import (  # noqa: F401 - fixtures for every test module
    STACKS,
    broker_url,
    command,
    hub,
    make_server,
    node_modules,
    own_redis,
    prefix,
    redis_url,
    stack,
)

#: The suites whose behaviour must not change with the server, worker class or broker.
MATRIX_SUITES = frozenset({"test_swarm_protocol.py", "test_channels.py", "test_compat.py"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "matrix: run under every stack (server, worker class, broker) of the matrix"
    )
    config.addinivalue_line(
        "markers",
        "single_process: checks one process's own limits or counters; not run on a paired "
        "stack (two processes sharing Redis)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" not in metafunc.fixturenames:
        return
    in_matrix = metafunc.definition.path.name in MATRIX_SUITES or (
        metafunc.definition.get_closest_marker("matrix") is not None
    )
    if in_matrix:
        stacks = list(STACKS)
        metafunc.parametrize("stack", stacks, ids=str, indirect=True, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def paired(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("stack") if callspec else None
        return bool(param is not None and param.paired)

    deselected = [i for i in items if i.get_closest_marker("single_process") and paired(i)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
