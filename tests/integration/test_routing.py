"""End to end: pods on two segments of one node, joined only by the daemon's router.

One daemon serves the whole module (``routed``): the default segment (a random /24) and segment
``blue`` (another random /24, MTU 1400), each with the daemon as gateway at network + 1, and one
static route (a third random /24 via blue + 20, where nobody answers). Pods:

- ``alpha``, ``delta``, ``echo`` on the default segment (MTU 1500). Each ICMP-error test sends
  from its own pod, so the router's per-destination ICMP rate limit never decides a result.
- ``charlie`` on blue with blue's MTU (1400): its TCP advertises an MSS that fits, so traffic to it
  crosses the router without any MTU trouble.
- ``bravo`` on blue but with eth0 at MTU 1500: it advertises an MSS of 1460, so a sender on the
  default segment sends 1500-byte packets with DF, the router (egress MTU 1400) answers with
  Fragmentation Needed, and the transfer only completes if the sender's path-MTU discovery works.

Every address targeted lives in a namespace of this module, except 198.51.100.7 (TEST-NET-2), which
the router has no route for: that packet never leaves the switch.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Iterator

import pytest
from pyroute2 import IPRoute

from harness import (
    DATAPATHS,
    PYTHON,
    TCP_SINK_SCRIPT,
    TCP_SOURCE_SCRIPT,
    UDP_SOURCE_SCRIPT,
    VSWITCHD,
    Daemon,
    PodSpec,
    RouteSpec,
    SegmentSpec,
    cleanup_node,
    flatten_numbers,
    mac_for,
    make_node_spec,
    program,
    random_pod_cidr,
    read_line,
    terminate,
)

pytestmark = pytest.mark.integration

TRANSFER_BYTES = 10 * 1024 * 1024
PMTU_BYTES = 1024 * 1024
BLUE_MTU = 1400
UNROUTED = "198.51.100.7"  # TEST-NET-2 (RFC 5737): nothing routes there
ETH_HEADER = 14
PACKET_OUTGOING = 4  # sll_pkttype of frames the capturing host sends itself
TP_STATUS_CSUMNOTREADY = 0x8  # the L4 checksum is partial: the stack never completed it


def routed_daemon(workdir: Path, *, offloads: bool = True) -> Daemon:
    """The module's topology (see the docstring), not started yet."""
    daemon = Daemon(make_node_spec(workdir, (), offloads=offloads), workdir)
    default = daemon.spec.pod_cidr
    blue = SegmentSpec("blue", random_pod_cidr(avoid=[default]), mtu=BLUE_MTU)
    static = random_pod_cidr(avoid=[default, blue.cidr])
    daemon.update_spec(
        segments=(blue,),
        routes=(RouteSpec(static, blue.cidr.network_address + 20),),
        pods=(
            PodSpec("alpha"),
            PodSpec("delta"),
            PodSpec("echo"),
            PodSpec("charlie", segment="blue"),
            PodSpec("bravo", segment="blue", mtu=1500),
        ),
    )
    return daemon


@pytest.fixture(scope="module", params=DATAPATHS)
def routed(netns_environment: None, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Daemon]:
    daemon = routed_daemon(tmp_path_factory.mktemp("routed-node"))
    daemon.update_spec(accel=request.param)
    try:
        daemon.start()
        yield daemon
    finally:
        left = cleanup_node(daemon)
    if left:
        pytest.fail(f"the routed daemon left kernel objects or processes behind: {left}")


def ip_of(daemon: Daemon, pod: str) -> str:
    return str(daemon.spec.pod_ips()[pod])


def gateway_of(daemon: Daemon, pod: str) -> str:
    return str(daemon.spec.segment_gateway(daemon.spec.pod_segment(pod)))


# Programs of tests/programs that run inside pods; each file's docstring gives its arguments.
ICMP_PROBE_SCRIPT = program("icmp_probe")
UDP_TTL_PROBE_SCRIPT = program("udp_ttl_probe")
CAPTURE_SCRIPT = program("capture_frames")


def probe_icmp(daemon: Daemon, pod: str, target: str, timeout: float = 1.0) -> dict[str, Any]:
    return daemon.python_in(pod, ICMP_PROBE_SCRIPT, str(timeout), target)


def start_capture(daemon: Daemon, pod: str, source: str, limit: int,
                  first_wait: float = 15.0, idle: float = 1.5) -> subprocess.Popen:
    capture = daemon.popen_in(pod, PYTHON, CAPTURE_SCRIPT, source, str(limit),
                              str(first_wait), str(idle),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(capture) == "listening"
    except BaseException:
        terminate(capture)
        raise
    return capture


def finish_capture(capture: subprocess.Popen) -> list[dict]:
    try:
        out, err = capture.communicate(timeout=60)
    finally:
        terminate(capture)
    assert capture.returncode == 0, err
    return json.loads(out)


def tcp_transfer(daemon: Daemon, sender: str, receiver: str, size: int) -> tuple[dict, dict]:
    port = random.randrange(20000, 60000)  # pods have their own port space
    server = daemon.popen_in(receiver, PYTHON, TCP_SINK_SCRIPT, str(port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(server) == "listening"
        sent = daemon.python_in(sender, TCP_SOURCE_SCRIPT, ip_of(daemon, receiver), str(port),
                                str(size))
        out, err = server.communicate(timeout=60)
    finally:
        terminate(server)
    assert server.returncode == 0, err
    return sent, json.loads(out)


def host_routes_via(gateway: IPv4Address) -> list[IPv4Network]:
    """Routes of the host's main table whose next hop is ``gateway``."""
    found = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET):
            if route.get("RTA_GATEWAY") == str(gateway) and route.get("RTA_DST"):
                found.append(IPv4Network(f"{route.get('RTA_DST')}/{route['dst_len']}"))
    return found


def stage_counters(daemon: Daemon) -> dict[str, float]:
    return flatten_numbers(daemon.ctl("stats").get("stages", {}))


# ---------------------------------------------------------------------------------------------
# Forwarding between segments
# ---------------------------------------------------------------------------------------------


def test_pods_on_two_segments_ping_with_one_hop(routed: Daemon) -> None:
    """The reply from the other segment arrives with TTL 63 (one router); within one segment
    nothing routes, so the control pair sees the sender's TTL of 64 untouched."""
    charlie = ip_of(routed, "charlie")
    across = probe_icmp(routed, "alpha", charlie, timeout=2.0)
    assert across["reply"] is not None, f"{across}\ndaemon log:\n{routed.log()}"
    assert across["reply"]["ttl"] == 63
    back = probe_icmp(routed, "charlie", ip_of(routed, "alpha"), timeout=2.0)
    assert back["reply"] is not None and back["reply"]["ttl"] == 63
    same = probe_icmp(routed, "charlie", ip_of(routed, "bravo"), timeout=2.0)
    assert same["reply"] is not None and same["reply"]["ttl"] == 64


def test_each_pod_reaches_its_own_gateway(routed: Daemon) -> None:
    for pod in ("alpha", "charlie"):
        result = probe_icmp(routed, pod, gateway_of(routed, pod), timeout=2.0)
        assert result["reply"] is not None, f"{pod} got no reply from {gateway_of(routed, pod)}"


def test_receiver_sees_its_gateway_mac_as_source(routed: Daemon) -> None:
    """What a routed frame looks like on the receiving segment: from the gateway's MAC (0a:58 +
    the blue gateway's address), to the receiver's MAC, TTL one lower than the sender's."""
    alpha, charlie = ip_of(routed, "alpha"), ip_of(routed, "charlie")
    capture = start_capture(routed, "charlie", alpha, limit=1)
    try:
        result = probe_icmp(routed, "alpha", charlie, timeout=2.0)
    finally:
        frames = finish_capture(capture)
    assert result["reply"] is not None
    assert frames, "charlie captured nothing from alpha"
    frame = bytes.fromhex(frames[0]["hex"])
    blue_gateway = IPv4Address(gateway_of(routed, "charlie"))
    assert frame[6:12].hex(":") == mac_for(blue_gateway)
    assert frame[0:6].hex(":") == mac_for(IPv4Address(charlie))
    assert frame[ETH_HEADER + 8] == 63  # the sender's kernel sent it with 64


def test_tcp_stream_across_segments_arrives_intact(routed: Daemon) -> None:
    sent, got = tcp_transfer(routed, "alpha", "charlie", TRANSFER_BYTES)
    assert sent["answer"] == "done"
    assert got["bytes"] == TRANSFER_BYTES
    assert got["sha256"] == sent["sha256"]
    assert got["peer"] == ip_of(routed, "alpha"), "routing must not translate addresses"


# ---------------------------------------------------------------------------------------------
# ICMP errors
# ---------------------------------------------------------------------------------------------


def test_udp_with_ttl_1_gets_time_exceeded_from_the_gateway(routed: Daemon) -> None:
    found = routed.python_in("delta", UDP_TTL_PROBE_SCRIPT, ip_of(routed, "charlie"), "33434",
                             "1", "2")
    assert found is not None, f"no ICMP error queued within 2 s\ndaemon log:\n{routed.log()}"
    assert (found["origin"], found["type"], found["code"]) == (2, 11, 0)  # ICMP, time exceeded
    assert found["offender"] == gateway_of(routed, "delta")


def test_udp_with_ttl_2_passes_the_router(routed: Daemon) -> None:
    """The control for the TTL-1 probe: one more hop of TTL and the router forwards it; the
    receiver has no socket on the port, so the answer is its port unreachable, not ours."""
    found = routed.python_in("delta", UDP_TTL_PROBE_SCRIPT, ip_of(routed, "charlie"), "33435",
                             "2", "2")
    assert found is not None
    assert (found["type"], found["code"]) == (3, 3)
    assert found["offender"] == ip_of(routed, "charlie")


def test_ping_to_an_unrouted_address_gets_unreachable_within_a_second(routed: Daemon) -> None:
    result = probe_icmp(routed, "echo", UNROUTED, timeout=1.0)
    error = result["error"]
    assert error is not None, f"{result}\ndaemon log:\n{routed.log()}"
    assert error["type"] == 3 and error["code"] in (0, 1)  # network (or host) unreachable
    assert error["source"] == gateway_of(routed, "echo")
    assert error["elapsed_ms"] < 1000
    assert error["icmp_checksum_ok"]
    # RFC 792: the quoted header is the datagram as the router received it.
    assert error["quoted_ttl"] == 64


def test_path_mtu_discovery_across_a_smaller_mtu(routed: Daemon) -> None:
    """bravo advertises an MSS for 1500-byte packets, but its segment carries 1400: the transfer
    completes only because alpha's kernel learns 1400 from the router's Fragmentation Needed."""
    before = stage_counters(routed)
    sent, got = tcp_transfer(routed, "alpha", "bravo", PMTU_BYTES)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == PMTU_BYTES
    assert sent["path_mtu"] <= BLUE_MTU
    after = stage_counters(routed)
    frag_needed = [key for key in after if "frag" in key and "need" in key]
    assert frag_needed, f"no fragmentation-needed counter among {sorted(after)}"
    assert sum(after[k] - before.get(k, 0) for k in frag_needed) > 0


# ---------------------------------------------------------------------------------------------
# Checksums of forwarded packets
# ---------------------------------------------------------------------------------------------


def capture_forwarded_traffic(daemon: Daemon) -> list[dict]:
    """What charlie's eth0 receives from alpha while alpha pings it, sends it UDP datagrams and
    a 256 KB TCP stream (whose SHA-256 must match)."""
    alpha, charlie = ip_of(daemon, "alpha"), ip_of(daemon, "charlie")
    capture = start_capture(daemon, "charlie", alpha, limit=400)
    try:
        for _ in range(3):
            assert probe_icmp(daemon, "alpha", charlie, timeout=2.0)["reply"] is not None
        daemon.python_in("alpha", UDP_SOURCE_SCRIPT, charlie, "9", "5", "0.01")
        sent, got = tcp_transfer(daemon, "alpha", "charlie", 256 * 1024)
    finally:
        frames = finish_capture(capture)
    assert got["sha256"] == sent["sha256"]
    return frames


def check_checksums(frames: list[dict]) -> dict[str, int]:
    """Verify every frame's checksums with ``vswitch.accel.pure``; count what was verified how.

    * The IPv4 header checksum (which the router updates after decrementing TTL): every frame.
    * A complete L4 checksum (ICMP always; TCP/UDP when the sender's stack completed it): over
      the pseudo-header and the whole segment.
    * A partial L4 checksum (the sending pod handed the frame over with checksum offload, and
      the receiving kernel marks it TP_STATUS_CSUMNOTREADY): the field must hold the folded
      pseudo-header sum of the packet as it arrives, which is what the receiver completes it from.
    * Frames larger than the MTU are GSO frames the receiving kernel splits; they are captured
      by their headers only, so only their IPv4 header is checked.
    """
    from vswitch.accel import pure

    checked = {"ip": 0, "icmp": 0, "udp": 0, "tcp": 0, "partial": 0, "gso": 0}
    problems = []
    for entry in frames:
        frame = bytes.fromhex(entry["hex"])
        ip = frame[ETH_HEADER:]
        ihl = (ip[0] & 0x0F) * 4
        checked["ip"] += 1
        if pure.checksum(ip[:ihl]) != 0:
            problems.append(f"bad IPv4 header checksum: {ip[:ihl].hex()}")
        assert ip[8] == 63, "every frame from alpha crossed the router once"
        protocol = ip[9]
        total = struct.unpack("!H", ip[2:4])[0]
        if entry["length"] > BLUE_MTU + ETH_HEADER or total > len(ip):
            checked["gso"] += 1
            continue
        l4 = ip[ihl:total]
        src, dst = ip[12:16], ip[16:20]
        if protocol == 1:
            name, ok = "icmp", pure.checksum(l4) == 0
        elif protocol in (6, 17):
            field = 16 if protocol == 6 else 6
            value = struct.unpack("!H", l4[field:field + 2])[0]
            if entry["status"] & TP_STATUS_CSUMNOTREADY:
                name = "partial"
                ok = value == pure.pseudo_header_sum(src, dst, protocol, len(l4))
            elif protocol == 17 and value == 0:
                continue  # UDP without a checksum, which IPv4 allows
            else:
                name = "tcp" if protocol == 6 else "udp"
                ok = pure.l4_checksum(src, dst, protocol, l4) == 0
        else:
            continue
        checked[name] += 1
        if not ok:
            problems.append(f"bad {name} checksum in {frame[:64].hex()}")
    assert not problems, problems[:5]
    return checked


def test_every_forwarded_packet_has_valid_checksums(routed: Daemon) -> None:
    """With offloads (the default), as the module's daemon runs: see ``check_checksums``."""
    checked = check_checksums(capture_forwarded_traffic(routed))
    assert checked["ip"] >= 10 and checked["icmp"] >= 3, checked
    assert checked["tcp"] + checked["udp"] + checked["partial"] >= 5, checked


def test_every_forwarded_packet_has_valid_checksums_without_offloads(
    netns_environment: None, tmp_path: Path
) -> None:
    """Without offloads every pod's stack completes its own checksums, so every TCP and UDP
    checksum the router forwarded is verified in full.

    This daemon is also stopped within the test, which shows that the host routes it added for
    the blue segment and the static route are gone with it.
    """
    daemon = routed_daemon(tmp_path, offloads=False)
    wanted = {daemon.spec.segments[0].cidr, daemon.spec.routes[0].dst}
    try:
        daemon.start()
        assert wanted <= set(host_routes_via(daemon.spec.gateway)), daemon.log()
        checked = check_checksums(capture_forwarded_traffic(daemon))
    finally:
        left = cleanup_node(daemon)
    assert not left, f"the daemon left kernel objects or processes behind: {left}"
    assert not wanted & set(host_routes_via(daemon.spec.gateway))
    assert checked["partial"] == checked["gso"] == 0, checked
    assert checked["tcp"] >= 20 and checked["udp"] == 5 and checked["icmp"] >= 3, checked


# ---------------------------------------------------------------------------------------------
# vswitchctl and vswitchd
# ---------------------------------------------------------------------------------------------


def test_ctl_routes_lists_connected_and_static_routes(routed: Daemon) -> None:
    spec = routed.spec
    rows = {row["prefix"]: row for row in routed.ctl("routes")}
    blue = spec.segments[0]
    assert rows[str(spec.pod_cidr)]["kind"] == "connected"
    assert rows[str(spec.pod_cidr)]["segment"] == "default"
    assert rows[str(blue.cidr)]["kind"] == "connected"
    assert rows[str(blue.cidr)]["segment"] == "blue"
    static = spec.routes[0]
    assert rows[str(static.dst)]["kind"] == "static"
    assert rows[str(static.dst)]["via"] == str(static.via)
    assert rows[str(static.dst)]["segment"] == "blue"
    table = routed.ctl("routes", json=False)
    assert table.splitlines()[0].split()[:3] == ["PREFIX", "KIND", "SEGMENT"]
    for prefix in (spec.pod_cidr, blue.cidr, static.dst):
        assert str(prefix) in table


def test_ctl_neighbors_lists_the_peers_after_traffic(routed: Daemon) -> None:
    alpha, charlie = ip_of(routed, "alpha"), ip_of(routed, "charlie")
    assert probe_icmp(routed, "alpha", charlie, timeout=2.0)["reply"] is not None
    rows = {row["ip"]: row for row in routed.ctl("neighbors")}
    for pod, ip in (("charlie", charlie), ("alpha", alpha)):
        assert ip in rows, f"{pod} ({ip}) missing from {rows}"
        assert rows[ip]["mac"] == mac_for(IPv4Address(ip))
        assert rows[ip]["segment"] == routed.spec.pod_segment(pod)
    table = routed.ctl("neighbors", json=False)
    assert charlie in table and mac_for(IPv4Address(charlie)) in table


def test_ctl_pods_shows_segments(routed: Daemon) -> None:
    pods = {row["name"]: row for row in routed.ctl("pods")}
    assert (pods["bravo"]["segment"], pods["bravo"]["mtu"]) == ("blue", 1500)
    assert (pods["charlie"]["segment"], pods["charlie"]["mtu"]) == ("blue", BLUE_MTU)
    assert (pods["alpha"]["segment"], pods["alpha"]["mtu"]) == ("default", 1500)
    assert routed.ctl("pods", json=False).splitlines()[0].split()[:4] == ["NAMESPACE", "NAME", "IP",
                                                                     "SEGMENT"]


def test_trace_across_segments_names_the_route(routed: Daemon) -> None:
    alpha, charlie = ip_of(routed, "alpha"), ip_of(routed, "charlie")
    assert probe_icmp(routed, "alpha", charlie, timeout=2.0)["reply"] is not None
    text = routed.ctl("trace", "alpha", f"icmp {alpha} > {charlie}", json=False)
    blue = str(routed.spec.segments[0].cidr)
    lookup = [line for line in text.splitlines() if blue in line]
    assert lookup, text
    assert "connected" in text
    final = [line for line in text.splitlines() if line.strip().startswith("=>")]
    assert final and "charlie" in final[-1], text


def test_the_host_reaches_the_other_segment(routed: Daemon) -> None:
    """The daemon routes the blue segment into the host port, so the node reaches blue's pods
    through the router as well: the reply has crossed it once."""
    result = subprocess.run([PYTHON, ICMP_PROBE_SCRIPT, "2", ip_of(routed, "charlie")],
                            capture_output=True, text=True, timeout=30, check=True)
    reply = json.loads(result.stdout)["reply"]
    assert reply is not None and reply["ttl"] == 63


def test_vswitchd_check_rejects_overlapping_segments(tmp_path: Path) -> None:
    config = tmp_path / "overlap.toml"
    config.write_text(
        '[node]\nname = "ovl"\npod_cidr = "10.201.1.0/24"\n'
        '[[segments]]\nname = "blue"\ncidr = "10.201.0.0/16"\n'
    )
    done = subprocess.run([*VSWITCHD, "--check", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert f"{config}: segments[0].cidr: 10.201.0.0/16 overlaps node.pod_cidr 10.201.1.0/24" \
        in done.stderr
