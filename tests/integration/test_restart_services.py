"""Restarts that do not break service connections: an iperf3 TCP stream through a ClusterIP (pod to
pod) and through a NodePort (from the uplink's far side, SNATed to the node address) runs through
a daemon that is stopped (SIGTERM) and started again, or killed (SIGKILL) and taken over by its
hot standby (which must keep the stall within ``MAX_TAKEOVER_STALL``).

What makes it possible, besides the pods that outlive the daemon (``test_restart``): SIGTERM
saves the connection table, with its DNAT and SNAT bindings and the ClientIP affinity, and the
next start restores it before any port is read; after SIGKILL the next start restores the last
periodic snapshot (every 2 s), and a connection it missed is picked up from its client's next
mid-stream segment. Two backends and ClientIP affinity: iperf3's control and data connections
must reach the same server, and after a restart they must still reach it.

Each test prints and records how long no daemon ran and the longest stretch without progress.
"""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from harness import NETNS_DIR, Daemon
from services_support import ServiceNode, ServicePodSpec, make_service_node, service_port
from test_restart import INTERVAL, IPERF_PORT, RESTART_AT, STREAM_SECONDS, judge_stream, \
    restart

pytestmark = [pytest.mark.integration, pytest.mark.measured]

NODE_PORT = 30521
BACKENDS = ("srv-1", "srv-2")


@pytest.fixture
def node(netns_environment: None, tmp_path: Path) -> Iterator[ServiceNode]:
    spec = make_service_node(tmp_path)
    selector = {"app": "iperf"}
    services = (
        {"name": "iperf", "cluster_ip": spec.cluster_ip(20), "selector": selector,
         "type": "NodePort", "load_balancer": "maglev", "session_affinity": "ClientIP",
         "ports": [service_port("data", "tcp", 5201, 5201, node_port=NODE_PORT)]},
    )
    pods = (*(ServicePodSpec(name, labels=selector) for name in BACKENDS),
            ServicePodSpec("client"))
    service_node = ServiceNode(Daemon(dataclasses.replace(spec, pods=pods, services=services),
                                      tmp_path, standby=True))
    try:
        service_node.daemon.start()
        service_node.daemon.wait_standby()
        for name in BACKENDS:
            service_node.serve_iperf(name, int(IPERF_PORT))
        yield service_node
    finally:
        problems = service_node.close()
    assert not problems, problems


def stream_across_restart(node: ServiceNode, argv: list[str], port: int | str, signum: int,
                          record_property) -> dict:
    """Run ``argv`` (an iperf3 client, to ``port``) and restart the daemon with ``signum`` in the
    middle; the client's JSON report, after checking that the stream completed."""
    daemon = node.daemon
    # The daemon a SIGTERM test started afresh starts its standby once ready; a SIGKILL test
    # measures a takeover by a standby that is ready.
    daemon.wait_standby()
    client = subprocess.Popen(
        [*argv, "-p", str(port), "-t", str(STREAM_SECONDS), "-i", str(INTERVAL), "-b", "200M",
         "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(RESTART_AT)
        downtime = restart(daemon, signum)
        out, err = client.communicate(timeout=STREAM_SECONDS + 60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return judge_stream(daemon, client.returncode, out, err, downtime, signum,
                        record_property)


def assert_carried_over(node: ServiceNode, signum: int) -> None:
    """SIGTERM: the stream's connections were restored from the final snapshot. SIGKILL: from
    the last periodic one, or picked up mid-stream."""
    stats = node.conntrack_stats()
    log = node.daemon.log()
    if signum == signal.SIGTERM:
        assert stats["restored"] >= 2, f"{stats}\n{log}"
        assert "(final snapshot)" in log, log
    else:
        assert stats["restored"] + stats["picked_up"] >= 1, f"{stats}\n{log}"
    # Restored and picked-up connections are listed as any others.
    assert any(row["dnat"] is not None and row["dnat"]["port"] == 5201
               for row in node.conntrack()), node.conntrack()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_clusterip_stream_survives_a_restart(node: ServiceNode, signum: int,
                                               record_property) -> None:
    vip = node.spec.cluster_ip(20)
    argv = ["nsenter", f"--net={NETNS_DIR / node.spec.netns('client')}", "iperf3", "-c", vip]
    stream_across_restart(node, argv, IPERF_PORT, signum, record_property)
    assert_carried_over(node, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_nodeport_stream_from_outside_survives_a_restart(node: ServiceNode, signum: int,
                                                          record_property) -> None:
    argv = node.internet_argv("iperf3", "-c", str(node.spec.node_address))
    stream_across_restart(node, argv, NODE_PORT, signum, record_property)
    assert_carried_over(node, signum)
    rows = node.conntrack()
    assert any(row["snat"] is not None and row["snat"]["ip"] == str(node.spec.node_address)
               for row in rows), rows
