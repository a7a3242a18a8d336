"""How the suite is spread over the CPUs (pytest-xdist, ``--dist loadgroup`` in pyproject.toml).

Unit tests are pure computation and run on whichever worker is free. The integration tests run
one after another on a single worker: they create namespaces, TAPs and daemons on the one host,
and several of them judge figures against the same machine's baseline (an attacked stream
against its unattacked run, seconds without progress across a restart, watchdog pings), which a
second integration test running at the same time would distort. They are collected first, so that
one worker starts on them at once while the others take the unit tests, and the modules with
measured figures come last, once the unit tests no longer compete for the CPUs.
"""
from __future__ import annotations

import pytest

# Integration modules whose pass/fail depends on figures measured in the test.
MEASURED_LAST = ("test_adversarial.py", "test_restart.py", "test_restart_services.py",
                 "test_watchdog.py")


def _is_integration(item: pytest.Item) -> bool:
    return "integration" in item.path.parts


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_integration(item):
            item.add_marker(pytest.mark.xdist_group("integration"))

    def rank(item: pytest.Item) -> int:
        if not _is_integration(item):
            return 2
        return 1 if item.path.name in MEASURED_LAST else 0

    items.sort(key=rank)  # stable: each module keeps its own order
