"""How the suite is spread over the CPUs (pytest-xdist; ``--numprocesses`` in pyproject.toml).

Unit tests are pure computation and run on whichever worker is free, one by one. Each
integration module runs whole on one worker (its shared daemons are set up once), beside another
module or unit tests on the other worker: they create namespaces, TAPs and daemons with names of
their own, so two never meet. The tests marked ``measured`` judge figures against the same
machine's baseline (an attacked stream against its unattacked run, seconds without progress
across a restart, watchdog pings), which anything running beside them would distort, so they form
one group that runs last and alone: ``ExclusiveLastScheduling`` hands it out only once every
other worker has no more than the one test a worker holds back (the test after which it learns
what comes next; the order below makes that a unit test of milliseconds), and then lets the
others finish.

The order is: integration modules first (they are the long ones, so both workers start on them),
then the unit tests, then the measured tests.
"""
from __future__ import annotations

from typing import Any

import pytest

MEASURED_GROUP = "integration-measured-alone"  # the tests marked ``measured``


def _is_integration(item: pytest.Item) -> bool:
    return "integration" in item.path.parts


def _is_measured(item: pytest.Item) -> bool:
    return item.get_closest_marker("measured") is not None


def _rank(item: pytest.Item) -> int:
    if _is_measured(item):
        return 2
    return 0 if _is_integration(item) else 1


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_measured(item):
            item.add_marker(pytest.mark.xdist_group(MEASURED_GROUP))
        elif _is_integration(item):
            item.add_marker(pytest.mark.xdist_group(f"integration-{item.path.stem}"))
    items.sort(key=_rank)  # stable: each module keeps its own order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadGroupScheduling

    class ExclusiveLastScheduling(LoadGroupScheduling):
        """``--dist loadgroup``, except that the measured group waits until it can run alone."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            # Work goes out in the order above, not largest group first.
            config.option.loadscopereorder = False

        def _assign_work_unit(self, node: Any) -> None:
            scope = next(iter(self.workqueue))
            if scope == MEASURED_GROUP:
                busy = [other for other in self.nodes if other is not node
                        and self._pending_of(self.assigned_work.get(other, {})) > 1]
                if busy:
                    # Asked again when this worker or a busy one completes a test.
                    self.assigned_work.setdefault(node, {})
                    return
            super()._assign_work_unit(node)
            if scope == MEASURED_GROUP:
                # The queue is empty now: tell the others, which may wait for more work with
                # their last test held back, to finish.
                for other in self.nodes:
                    if other is not node:
                        self._reschedule(other)

    return ExclusiveLastScheduling(config, log)
