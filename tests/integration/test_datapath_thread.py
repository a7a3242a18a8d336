"""The C datapath's poll thread between two real TAPs, without the daemon.

Two TAPs (with the virtio-net header and its offloads, as pods have them) are moved into two fresh
namespaces that know each other's MAC statically, so no ARP is needed; switched actions for both
directions are installed by hand. Pings and a TCP transfer must then pass through the thread alone
(Python takes no frame of theirs), while anything else (IPv6 neighbour discovery, an IPv4 flow
without an entry) arrives as an upcall. Removing a port while traffic flows must be safe.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import time
from array import array

import pytest

from vswitch.accel.datapath import FORWARD, Datapath, DatapathError
from harness import (  # noqa: E402  (conftest puts this directory on the path)
    PING_SCRIPT,
    PYTHON,
    TCP_SINK_SCRIPT,
    TCP_SOURCE_SCRIPT,
    UDP_SOURCE_SCRIPT,
    read_line,
    terminate,
)

pytestmark = pytest.mark.integration

MAC_A = "0a:58:0a:63:00:01"
MAC_B = "0a:58:0a:63:00:02"
MAC_GHOST = "0a:58:0a:63:00:03"
NUD_PERMANENT = 0x80


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


@pytest.fixture
def two_pods():
    """Two namespaces, each with one TAP whose fd this process holds; removed afterwards."""
    from pyroute2 import IPRoute, NetNS, netns

    from vswitch.runtime.tap import open_tap

    tag = secrets.token_hex(3)
    names = {"a": f"vsdp-a-{tag}", "b": f"vsdp-b-{tag}"}
    macs = {"a": MAC_A, "b": MAC_B}
    net = f"10.{99}.{int(tag[:2], 16)}"
    ips = {"a": f"{net}.1", "b": f"{net}.2"}
    fds: dict[str, int] = {}
    created: list[str] = []
    try:
        for side, name in names.items():
            fds[side] = open_tap(name, vnet_hdr=True)
            netns.create(name)
            created.append(name)
            with IPRoute() as ipr:
                (index,) = ipr.link_lookup(ifname=name)
                ipr.link("set", index=index, address=macs[side])
                ipr.link("set", index=index, net_ns_fd=name)
        for side, name in names.items():
            other = "b" if side == "a" else "a"
            with NetNS(name) as ns:
                (index,) = ns.link_lookup(ifname=name)
                ns.link("set", index=index, state="up")
                (lo,) = ns.link_lookup(ifname="lo")
                ns.link("set", index=lo, state="up")
                ns.addr("add", index=index, address=ips[side], prefixlen=24)
                ns.neigh("add", dst=ips[other], lladdr=macs[other], ifindex=index,
                         state=NUD_PERMANENT)
                ns.neigh("add", dst=f"{net}.3", lladdr=MAC_GHOST, ifindex=index,
                         state=NUD_PERMANENT)
        yield dict(names=names, fds=fds, ips=ips, ghost=f"{net}.3")
    finally:
        for fd in fds.values():
            os.close(fd)
        for name in created:
            netns.remove(name)


def key(port: int, dst_mac: str, src_mac: str, src_ip: str, dst_ip: str) -> bytes:
    addresses = b"".join(bytes(int(x) for x in ip.split(".")) for ip in (src_ip, dst_ip))
    return port.to_bytes(4, "big") + mac(dst_mac) + mac(src_mac) + b"\x08\x00" + addresses


def switched_datapath(pods):

    dp = Datapath(flow_capacity=64, upcall_capacity=64)
    # The FDB stamps are fresh for an hour: the test has no MAC learning to refresh them.
    shared = dict(fdb_seen=array("d", [time.monotonic()] * 2), fdb_inc=array("I", [1, 1]))
    dp.set_shared(**shared)
    dp.set_params(fdb_aging=3600.0, generation=1)
    dp.port_add(1, pods["fds"]["a"], 10)
    dp.port_add(2, pods["fds"]["b"], 10)
    ips = pods["ips"]
    dp.install(key(1, MAC_B, MAC_A, ips["a"], ips["b"]), generation=1, kind=FORWARD,
               out_port=2, src_slot=0, src_inc=1, dst_slot=1, dst_inc=1)
    dp.install(key(2, MAC_A, MAC_B, ips["b"], ips["a"]), generation=1, kind=FORWARD,
               out_port=1, src_slot=1, src_inc=1, dst_slot=0, dst_inc=1)
    return dp, shared


def ping(ns: str, target: str, count: int = 3) -> list:
    done = subprocess.run(in_ns(ns, PYTHON, PING_SCRIPT, "2", *[target] * count),
                          capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout).values())


def test_pings_and_tcp_pass_through_the_thread_and_other_flows_go_up(two_pods):
    dp, shared = switched_datapath(two_pods)
    names, ips = two_pods["names"], two_pods["ips"]
    dp.start()
    try:
        assert all(rtt is not None for rtt in ping(names["a"], ips["b"]))
        sink = subprocess.Popen(in_ns(names["b"], PYTHON, TCP_SINK_SCRIPT, "5001"),
                                stdout=subprocess.PIPE, text=True)
        try:
            assert read_line(sink) == "listening"
            size = 8_000_000
            source = subprocess.run(
                in_ns(names["a"], PYTHON, TCP_SOURCE_SCRIPT, ips["b"], "5001", str(size)),
                capture_output=True, text=True, timeout=60, check=True)
            received = json.loads(read_line(sink, timeout=30))
        finally:
            terminate(sink)
        sent = json.loads(source.stdout)
        assert received["bytes"] == size and received["sha256"] == sent["sha256"]

        # An IPv4 flow without an entry is Python's: it waits as an upcall, as does IPv6 noise.
        assert ping(names["a"], two_pods["ghost"], count=1) == [None]
        assert select.select([dp.upcall_fd], [], [], 5)[0]
        upcalls = dp.take_upcalls(64)
        ghost = bytes(int(x) for x in two_pods["ghost"].split("."))
        assert any(port == 1 and frame[10 + 14 + 16: 10 + 14 + 20] == ghost
                   for port, frame in upcalls)
        stats = dp.stats()
        assert stats["hits"] > 100 and stats["upcalls"] >= 1 and stats["wakeups"] > 0
        a, b = dp.port_counters(1), dp.port_counters(2)
        assert a["rx_packets"] == b["tx_packets"] > 0 and b["rx_packets"] == a["tx_packets"] > 0
        assert a["rx_bytes"] >= size
        assert shared["fdb_seen"][0] > time.monotonic() - 30
    finally:
        dp.stop()
    assert dp.stats()["upcall_queued"] == len(dp.take_upcalls(64))


def test_removing_ports_while_traffic_flows_is_safe(two_pods):
    dp, _ = switched_datapath(two_pods)
    names, ips = two_pods["names"], two_pods["ips"]
    dp.start()
    source = subprocess.Popen(in_ns(names["a"], PYTHON, UDP_SOURCE_SCRIPT, ips["b"], "5002",
                                    "3000", "0.0005"), stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        dp.port_del(2)
        time.sleep(0.3)
        gone = dp.port_counters(1)["tx_port_gone"]
        assert gone > 0
        dp.port_del(1)
        with pytest.raises(DatapathError):
            dp.port_counters(1)  # the port is gone
        hits = dp.stats()["hits"]
        time.sleep(0.3)
        assert dp.stats()["hits"] == hits  # nothing read from the removed ports any more
    finally:
        terminate(source)
        dp.stop()
        dp.stop()  # stopping twice is harmless
