"""The pods' resolv.conf files, and the private mount namespace that shows one in place of the
host's (in a child process: the test's own mount table is never touched)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vswitch.config import runtime_cluster
from vswitch.runtime.resolv_conf import (dns_off_reason, private_resolv_conf, remove_resolv_confs,
                                         resolv_conf_path)

from .daemon.support import make_topology


def test_one_file_per_namespace_written_once_and_removed(tmp_path: Path) -> None:
    topology = make_topology(tmp_path)
    path = resolv_conf_path(topology, "prod")
    assert path is not None and path.endswith("/t1.resolv/prod.conf")
    assert Path(path).read_text().splitlines()[1:] == [
        "nameserver 10.96.0.10",
        "search prod.svc.cluster.local svc.cluster.local cluster.local", "options ndots:5"]
    before = os.stat(path)
    assert resolv_conf_path(topology, "prod") == path
    assert os.stat(path).st_ino == before.st_ino  # unchanged content: not rewritten
    Path(path).write_text("stale")
    resolv_conf_path(topology, "prod")
    assert "nameserver 10.96.0.10" in Path(path).read_text()
    remove_resolv_confs(topology)
    assert not Path(path).parent.exists()


def test_no_file_when_dns_is_off(tmp_path: Path) -> None:
    without_host_port = make_topology(tmp_path, host_port=False)
    assert "host_port.enabled = false" in dns_off_reason(without_host_port)
    assert resolv_conf_path(without_host_port, "default") is None
    topology = make_topology(tmp_path)
    cluster = dataclasses.replace(runtime_cluster(topology), dns_ip=None)
    off = dataclasses.replace(topology, cluster=cluster)
    assert dns_off_reason(off) == "cluster DNS is off ([cluster] dns = false)"
    assert resolv_conf_path(off, "default") is None


SHOW = """
import sys
from vswitch.runtime.resolv_conf import private_resolv_conf
private_resolv_conf(sys.argv[1], sys.argv[2])()
print(open(sys.argv[2]).read(), end="")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_a_child_sees_the_file_through_a_symlink_and_nobody_else_does(tmp_path: Path) -> None:
    real = tmp_path / "stub-resolv.conf"
    real.write_text("nameserver 127.0.0.53\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(real)
    pods = tmp_path / "pods.conf"
    pods.write_text("nameserver 10.96.0.10\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    shown = subprocess.run([sys.executable, "-c", SHOW, str(pods), str(link)], env=env,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "nameserver 10.96.0.10\n"
    assert link.read_text() == real.read_text() == "nameserver 127.0.0.53\n"


def test_nothing_to_mount_over_is_refused_before_the_fork(tmp_path: Path) -> None:
    dangling = tmp_path / "resolv.conf"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(OSError, match="which is not a file"):
        private_resolv_conf(str(tmp_path / "pods.conf"), str(dangling))
