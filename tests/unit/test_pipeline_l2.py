"""The L2 pipeline with crafted frames: learning, aging, flooding, gateway ARP/ICMP, port security,
malformed input, dispositions, and the flow cache's agreement with the pipeline."""
from __future__ import annotations

import struct

import pytest

from vswitch.accel import pure
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import fdb_rows
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from .conftest import make_switch

A_MAC, B_MAC, C_MAC = (mac_bytes(f"0a:58:0a:f4:01:{x}") for x in ("0a", "0b", "32"))
GW_MAC = mac_bytes("0a:58:0a:f4:01:01")
HOST, A, B, C = 1, 2, 3, 4
VNET = h.ZERO_VNET_HDR


def frame(text: str, src_mac: bytes, dst_mac: bytes = BROADCAST_MAC) -> bytes:
    return VNET + build_frame(parse_packet(text), src_mac, dst_mac)


def ports_of(txs):
    return sorted(t.port for t in txs)


def stats(switch):
    return switch.statistics()


# -- learning, flooding, aging ---------------------------------------------------------------

def test_unknown_unicast_floods_to_every_other_port_and_learns_the_source(switch):
    txs = switch.process_batch(A, [frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)], 0.0)
    assert ports_of(txs) == [HOST, B, C]
    assert all(t.data == txs[0].data for t in txs)
    assert [(r["mac"], r["port"]) for r in fdb_rows(switch, 0.0)] == [("0a:58:0a:f4:01:0a", "a")]
    assert stats(switch)["stages"]["l2-forward"]["flooded-unknown"] == 1


def test_known_unicast_goes_to_its_port_only(switch):
    switch.process_batch(B, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 0.0)
    txs = switch.process_batch(A, [frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)], 1.0)
    assert ports_of(txs) == [B]


def test_broadcast_is_flooded_but_never_back_out_of_the_ingress_port(switch):
    txs = switch.process_batch(C, [frame("arp who-has 10.244.1.10 tell 10.244.1.50", C_MAC)], 0.0)
    assert ports_of(txs) == [HOST, A, B]
    assert stats(switch)["stages"]["arp-responder"]["passed"] == 1


def test_fdb_entries_age_out_with_the_injected_clock(switch):
    switch.process_batch(B, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 0.0)
    to_b = frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)
    assert ports_of(switch.process_batch(A, [to_b], 299.0)) == [B]
    # B's entry was last refreshed at t=0; at t=300 it has aged even before the timer runs.
    assert ports_of(switch.process_batch(A, [to_b], 300.0)) == [HOST, B, C]
    assert switch.next_deadline() == pytest.approx(300.0)  # B's stale entry, not yet swept
    switch.handle_timer(300.0)
    assert [r["mac"] for r in fdb_rows(switch, 300.0)] == ["0a:58:0a:f4:01:0a"]
    assert switch.next_deadline() == pytest.approx(600.0)  # A's entry, refreshed at 300
    switch.handle_timer(600.0)
    assert fdb_rows(switch, 600.0) == []


def test_aging_time_comes_from_the_topology(topology):
    import dataclasses

    short = dataclasses.replace(topology, dataplane=dataclasses.replace(topology.dataplane,
                                                                        fdb_aging=5.0))
    switch = make_switch(short)
    switch.process_batch(B, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 0.0)
    to_b = frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)
    assert ports_of(switch.process_batch(A, [to_b], 4.9)) == [B]
    assert ports_of(switch.process_batch(A, [to_b], 5.0)) == [HOST, B, C]


def test_a_mac_that_moves_follows_the_station(topology):
    switch = make_switch(topology)
    open_port = PortSpec(9, "trunk", PortKind.MEMORY, "0a:58:00:00:00:09", "10.244.1.99", True,
                         port_security=False)
    switch.add_port(open_port)
    switch.process_batch(B, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 0.0)
    assert fdb_rows(switch, 0.0)[0]["port"] == "b"
    switch.process_batch(9, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 1.0)
    assert fdb_rows(switch, 1.0)[0]["port"] == "trunk"
    assert stats(switch)["stages"]["l2-learn"]["moved"] == 1


def test_mac_limit_per_port_drops_and_counts(topology):
    switch = make_switch(topology)  # mac_limit = 4 in the unit topology
    switch.add_port(PortSpec(9, "trunk", PortKind.MEMORY, "0a:58:00:00:00:09", "10.244.1.99",
                             True, port_security=False))
    frames = [frame("icmp 10.244.1.99 > 10.244.1.10", bytes([2, 0, 0, 0, 0, i]), A_MAC)
              for i in range(6)]
    txs = switch.process_batch(9, frames, 0.0)
    assert len(txs) == 4 * 4  # four learned and flooded to the four other ports
    s = stats(switch)
    assert s["stages"]["l2-learn"]["mac-limit"] == 2
    assert s["ports"]["trunk"]["rx_drops"] == {"mac-limit": 2}


def test_unicast_to_a_mac_behind_the_ingress_port_is_filtered(topology):
    switch = make_switch(topology)
    switch.process_batch(A, [frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)], 0.0)
    txs = switch.process_batch(A, [frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, A_MAC)], 0.0)
    assert txs == []
    assert stats(switch)["stages"]["l2-forward"]["same-port"] == 1


# -- the gateway: ARP and ICMP ---------------------------------------------------------------

def test_arp_request_for_the_gateway_gets_this_exact_reply(switch):
    request = frame("arp who-has 10.244.1.1 tell 10.244.1.10", A_MAC)
    txs = switch.process_batch(A, [request], 0.0)
    assert len(txs) == 1 and txs[0].port == A
    expected = (
        VNET
        + A_MAC + GW_MAC + b"\x08\x06"  # Ethernet: to the asker, from the gateway, ARP
        + b"\x00\x01\x08\x00\x06\x04\x00\x02"  # Ethernet/IPv4, hlen 6, plen 4, op reply
        + GW_MAC + bytes([10, 244, 1, 1])  # sender: the gateway
        + A_MAC + bytes([10, 244, 1, 10])  # target: the asker
    )
    assert txs[0].data == expected
    assert stats(switch)["dispositions"]["local"] == 1


def test_icmp_echo_to_the_gateway_is_answered(switch, accel_name):
    request = VNET + build_frame(parse_packet("icmp 10.244.1.10 > 10.244.1.1 id 77 seq 5 len 40"),
                                 A_MAC, GW_MAC)
    txs = switch.process_batch(A, [request], 0.0)
    assert len(txs) == 1 and txs[0].port == A
    reply = txs[0].data[len(VNET):]
    eth = h.ETHERNET.parse(reply)
    assert (eth.dst, eth.src, eth.ethertype) == (A_MAC, GW_MAC, h.EtherType.IPV4)
    ip = h.IPV4.parse(reply[14:])
    assert (ip.src, ip.dst, ip.protocol, ip.ttl) == (bytes([10, 244, 1, 1]), bytes([10, 244, 1, 10]),
                                                     1, 64)
    assert pure.checksum(reply[14:34]) == 0
    icmp_bytes = reply[34:14 + ip.total_length]
    assert pure.checksum(icmp_bytes) == 0
    icmp = h.ICMP.parse(icmp_bytes)
    assert (icmp.type, icmp.code) == (0, 0)
    assert struct.unpack("!HH", icmp.rest) == (77, 5)
    assert icmp.payload == bytes(40)


def test_icmp_with_a_bad_checksum_to_the_gateway_is_dropped(switch):
    good = bytearray(VNET + build_frame(parse_packet("icmp 10.244.1.10 > 10.244.1.1"), A_MAC, GW_MAC))
    good[10 + 34 + 2] ^= 0xFF  # corrupt the ICMP checksum
    assert switch.process_batch(A, [bytes(good)], 0.0) == []
    assert stats(switch)["stages"]["ip4-local"]["bad-icmp"] == 1


# -- port security ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, src_mac, reason",
    [
        ("icmp 10.244.1.10 > 10.244.1.11", B_MAC, "spoofed-mac"),
        ("icmp 10.244.1.11 > 10.244.1.50", A_MAC, "spoofed-ip"),
        ("arp who-has 10.244.1.50 tell 10.244.1.11", A_MAC, "spoofed-arp"),
        ("arp reply 10.244.1.10 is-at 0a:58:0a:f4:01:0b to 10.244.1.50", A_MAC, "spoofed-arp"),
    ],
)
def test_a_pod_cannot_send_as_someone_else(switch, text, src_mac, reason):
    assert switch.process_batch(A, [frame(text, src_mac, C_MAC)], 0.0) == []
    s = stats(switch)
    assert s["ports"]["a"]["rx_drops"] == {reason: 1}
    assert s["stages"]["port-security"][reason] == 1
    assert fdb_rows(switch, 0.0) == []  # nothing learned from a spoofed frame


def test_arp_probe_from_unconfigured_address_is_allowed(switch):
    txs = switch.process_batch(A, [frame("arp who-has 10.244.1.10 tell 0.0.0.0", A_MAC)], 0.0)
    assert ports_of(txs) == [HOST, B, C]


# -- malformed frames ------------------------------------------------------------------------

def _valid_ip_frame() -> bytes:
    return frame("udp 10.244.1.10:1000 > 10.244.1.11:2000 len 8", A_MAC, B_MAC)


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


MALFORMED = {  # case -> (frame, the reason it must be counted under)
    "truncated-vnet": (b"\x00\x00\x00", "truncated-vnet"),
    "runt": (VNET + A_MAC + B_MAC, "runt"),
    "vlan": (frame("icmp 10.244.1.10 > 10.244.1.11 vlan 7", A_MAC, B_MAC), "vlan-tagged"),
    "ipv6": (VNET + B_MAC + A_MAC + b"\x86\xdd" + bytes(40), "unsupported-ethertype"),
    "802.3-length": (VNET + B_MAC + A_MAC + b"\x00\x40" + bytes(64), "unsupported-ethertype"),
    "short-arp": (VNET + BROADCAST_MAC + A_MAC + b"\x08\x06" + bytes(10), "malformed-arp"),
    "arp-not-ipv4": (_with(frame("arp who-has 10.244.1.11 tell 10.244.1.10", A_MAC), 10 + 16,
                           b"\x86\xdd"), "malformed-arp"),
    "short-ipv4": (VNET + B_MAC + A_MAC + b"\x08\x00" + b"\x45" + bytes(10), "truncated-ipv4"),
    "version-6": (_with(_valid_ip_frame(), 10 + 14, b"\x65"), "bad-ip-version"),
    "ihl-4": (_with(_valid_ip_frame(), 10 + 14, b"\x44"), "bad-ihl"),
    "ihl-beyond-frame": (_with(frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC), 10 + 14,
                               b"\x4f"), "bad-ihl"),
    "total-length-beyond-frame": (_with(_valid_ip_frame(), 10 + 14 + 2, b"\x05\xdc"),
                                  "bad-total-length"),
    "total-length-below-header": (_with(_valid_ip_frame(), 10 + 14 + 2, b"\x00\x10"),
                                  "bad-total-length"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_are_counted_and_dropped(switch, case):
    data, reason = MALFORMED[case]
    assert switch.process_batch(A, [data], 0.0) == []
    s = stats(switch)
    assert s["stages"]["eth-input"][reason] == 1
    assert s["ports"]["a"]["rx_drops"] == {reason: 1}
    assert s["dispositions"]["dropped"] == 1
    assert fdb_rows(switch, 0.0) == []


def test_ethernet_padding_is_not_a_length_error(switch):
    padded = _valid_ip_frame() + bytes(20)
    assert ports_of(switch.process_batch(A, [padded], 0.0)) == [HOST, B, C]


# -- counters --------------------------------------------------------------------------------

def test_dispositions_partition_everything_received(switch):
    batch = [
        frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC),  # from B: flood (forwarded)
    ]
    switch.process_batch(B, batch, 0.0)
    traffic = [frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)] * 5  # miss, then hits
    traffic += [frame("arp who-has 10.244.1.1 tell 10.244.1.10", A_MAC)]  # local
    traffic += [data for data, _ in MALFORMED.values()]  # dropped
    switch.process_batch(A, traffic, 1.0)
    s = stats(switch)
    rx = sum(p["rx_packets"] for p in s["ports"].values())
    assert rx == 1 + len(traffic)
    assert sum(s["dispositions"].values()) == rx
    assert s["dispositions"]["cache-hit"] == 4
    assert s["dispositions"]["dropped"] == len(MALFORMED)
    assert s["dispositions"]["local"] == 1
    assert s["ports"]["b"]["tx_packets"] == 5


def test_port_byte_counters_exclude_the_virtio_header(switch):
    data = _valid_ip_frame()
    switch.process_batch(A, [data], 0.0)
    s = stats(switch)
    assert s["ports"]["a"]["rx_bytes"] == len(data) - 10
    assert s["ports"]["b"]["tx_bytes"] == len(data) - 10


def test_tx_drop_reported_by_the_runtime_is_counted(switch):
    switch.process_batch(A, [_valid_ip_frame()], 0.0)
    switch.note_tx_drop(B, "tx-busy")
    s = stats(switch)
    assert s["ports"]["b"]["tx_drops"] == {"tx-busy": 1}
    assert s["ports"]["b"]["tx_packets"] == 0


# -- virtio-net framing ----------------------------------------------------------------------

def test_gso_frames_pass_between_offload_ports_untouched(switch):
    switch.process_batch(B, [frame("icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)], 0.0)
    vnet = h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=h.VNET_GSO_TCPV4,
                                       hdr_len=66, gso_size=1448, csum_start=34, csum_offset=16))
    payload = bytes(60000)
    tcp = builders.tcp(src=bytes([10, 244, 1, 10]), dst=bytes([10, 244, 1, 11]), src_port=1,
                       dst_port=2, flags=0x18, payload=payload)
    ip = builders.ipv4(src=bytes([10, 244, 1, 10]), dst=bytes([10, 244, 1, 11]), protocol=6,
                       payload=tcp, df=True)
    big = vnet + builders.ethernet(B_MAC, A_MAC, 0x0800, ip)
    txs = switch.process_batch(A, [big, big], 1.0)
    assert [(t.port, t.data == big) for t in txs] == [(B, True), (B, True)]
    if switch.datapath is None:
        # The pure path passes the very object on (the C datapath writes its own copy).
        assert all(t.data is big for t in txs)


def test_frames_lose_or_gain_the_virtio_header_between_unlike_ports(topology):
    switch = make_switch(topology)
    switch.add_port(PortSpec(9, "plain", PortKind.MEMORY, "0a:58:00:00:00:09", "10.244.1.99",
                             False))
    plain = build_frame(parse_packet("icmp 10.244.1.99 > 10.244.1.10"), mac_bytes("0a:58:00:00:00:09"),
                        A_MAC)
    switch.process_batch(A, [frame("icmp 10.244.1.10 > 10.244.1.99", A_MAC, BROADCAST_MAC)], 0.0)
    txs = switch.process_batch(9, [plain], 0.0)
    assert [(t.port, t.data) for t in txs] == [(A, VNET + plain)]


def test_stages_import_no_other_stage():
    """The graph is the one place that wires stages: a stage module may import helper modules of
    the pipeline (which declare no NAME), never another stage, so no stage calls another's code
    or counts into another's counters."""
    import ast
    from pathlib import Path

    from vswitch.pipeline import graph

    stage_modules = {m.__name__ for m in graph.STAGES.values()}
    assert len(stage_modules) == len(graph.STAGES) >= 15
    breaches = []
    for module in graph.STAGES.values():
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            breaches += [f"{module.__name__} imports {n}" for n in names
                         if n in stage_modules and n != module.__name__]
    assert breaches == []
