"""The lab command's checks, before it starts anything: the bundled three-node cluster, and the
sets of files it refuses."""
from __future__ import annotations

from pathlib import Path

import pytest

from vswitch.lab import cluster

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "config" / "cluster"


def test_the_bundled_cluster_is_three_nodes_sharing_one_etcd_and_one_underlay():
    nodes, endpoints = cluster.load_nodes(CLUSTER_DIR)
    assert [n.name for n in nodes] == ["node1", "node2", "node3"]
    assert endpoints == ["http://127.0.0.1:23790"]
    assert len({n.socket for n in nodes}) == 3
    from vswitch.config import load_topology
    topologies = [load_topology(n.path) for n in nodes]
    assert {(t.uplink.netns, t.uplink.bridge) for t in topologies} == {
        ("vswlab-underlay", "vswlab-br0")}
    assert len({t.node.pod_cidr for t in topologies}) == 3
    assert len({t.uplink.address for t in topologies}) == 3
    services = {tuple((s.name, s.cluster_ip) for s in t.services) for t in topologies}
    assert len(services) == 1  # every node serves the same services


def test_a_lab_refuses_two_etcds_and_duplicate_names_naming_the_files(tmp_path):
    text = (CLUSTER_DIR / "node1.toml").read_text()
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text(text.replace("23790", "23791"))
    with pytest.raises(cluster.LabError) as caught:
        cluster.load_nodes(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / 'b.toml'}: node.name: 'node1' is node {tmp_path / 'a.toml'}'s name too" \
        in message
    assert "different etcd endpoints" in message


def test_a_lab_refuses_an_empty_directory_and_a_remote_etcd(tmp_path):
    with pytest.raises(cluster.LabError, match="no \\*.toml topology files"):
        cluster.load_nodes(tmp_path)
    with pytest.raises(cluster.LabError, match="http://127.0.0.1:PORT only"):
        cluster.local_etcd("http://192.0.2.10:2379")


def test_the_lab_command_reports_a_bad_directory_and_exits_2(tmp_path, capsys):
    assert cluster.main([str(tmp_path)]) == 2
    assert "no *.toml topology files" in capsys.readouterr().err
