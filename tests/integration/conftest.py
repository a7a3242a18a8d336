"""Fixtures for the integration tests: environment check, daemons, guaranteed cleanup.

Tests marked ``integration`` need root, /dev/net/tun and the right to create network namespaces.
Where those are missing the tests skip on a developer's machine, but fail in CI (``CI=true``):
a CI that silently skips every end-to-end test would report green for a switch that forwards
nothing.
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402  (the path above makes the sibling module importable)
    DATAPATHS,
    Daemon,
    PodSpec,
    PYTHON,
    cleanup_node,
    make_node_spec,
)


def _environment_problem() -> str | None:
    """Why namespaces and TAPs cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return f"/dev/net/tun unusable: {exc}"
    os.close(fd)
    try:
        from pyroute2 import netns
    except ImportError as exc:
        return f"pyroute2 missing: {exc}"
    probe = f"vsw-probe-{secrets.token_hex(3)}"
    try:
        netns.create(probe)
    except OSError as exc:
        return f"cannot create a network namespace: {exc}"
    netns.remove(probe)
    return None


@pytest.fixture(scope="session")
def netns_environment() -> None:
    problem = _environment_problem()
    if problem is None:
        return
    message = f"integration tests need namespaces and TAP devices: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _integration_environment(request: pytest.FixtureRequest) -> None:
    """Apply the environment check to every test marked ``integration`` in this directory."""
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("netns_environment")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures can tell whether the test passed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _test_passed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is not None and report.passed


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def make_daemon(
    netns_environment: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[DaemonFactory]:
    """Build (and by default start) daemons that are always stopped and cleaned after the test.

    When the test passed, anything the daemon's own shutdown left behind fails the test at
    teardown; when it failed, the leftovers are removed without adding noise to the report.
    """
    daemons: list[Daemon] = []

    def factory(pods, *, start: bool = True, host_port: bool = True, offloads: bool = True):
        workdir = tmp_path / f"node{len(daemons)}"
        workdir.mkdir()
        spec = make_node_spec(workdir, pods, host_port=host_port, offloads=offloads)
        daemon = Daemon(spec, workdir)
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    try:
        yield factory
    finally:
        leaks = [(d.spec.name, cleanup_node(d)) for d in daemons]
    leaked = [(name, left) for name, left in leaks if left]
    if leaked and _test_passed(request):
        pytest.fail(f"the daemon left kernel objects or processes behind: {leaked}")


@pytest.fixture(scope="session", params=DATAPATHS)
def shared_daemon(netns_environment: None, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """One node with three pods and the host port, for the many tests that only read and send.

    Pod ``alpha`` runs an HTTP server bound to 127.0.0.1 as a container, so a localhost test can
    prove that processes of one pod share a network namespace. Pod ``charlie`` has an explicit
    address (network + 77) to exercise that path of the config; ``alpha`` and ``bravo`` get +10
    and +11. Pod names are words rather than letters so that a check like "the trace names the
    output port" cannot pass by matching a stray letter.
    """
    workdir = tmp_path_factory.mktemp("shared-node")
    www = workdir / "www"
    www.mkdir()
    (www / "index.html").write_text("vswitch localhost test\n")
    server = (PYTHON, "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", str(www))
    daemon = Daemon(make_node_spec(workdir, ()), workdir)
    daemon.update_spec(accel=request.param)
    daemon.replace_pods((
        PodSpec("alpha", containers=(("srv", server),)),
        PodSpec("bravo"),
        PodSpec("charlie", ip=str(daemon.spec.pod_cidr.network_address + 77)),
    ))
    try:
        daemon.start()
        yield daemon
    finally:
        left = cleanup_node(daemon)
    if left:
        pytest.fail(f"the shared daemon left kernel objects or processes behind: {left}")
