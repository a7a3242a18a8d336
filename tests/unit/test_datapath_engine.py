"""The C datapath's replay of cached decisions, against bytes the Python twins compute.

Actions are built by hand here (the pipeline's memoisation feeds the same fields elsewhere): every
expected output comes from the helpers the pure fast path uses (``pipeline.ttl``,
``accel.pure.nat_rewrite``, ``core.egress.convert_framing``), so a difference in a byte, a counter
or a decline is a difference from the reference.
"""
from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from array import array
from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest
from hypothesis import event, given, settings, strategies as st

from vswitch.accel import pure
from vswitch.accel.datapath import (
    CONNECTION, CONSUMED, CT_ASSURED, DECAP, CT_IN_TABLE, CT_REPLIED, EINVAL, FORWARD, KEY_LEN,
    MAX_FRAME, PER_CONNECTION, UPCALL, Datapath,
)
from vswitch.core.egress import convert_framing
from vswitch.core.fast_path import FastPath, connection_key
from vswitch.core.flow_cache import CacheEntry
from vswitch.pipeline.ttl import decrement_ttl
from vswitch.tables.conntrack import ConntrackTable, Direction, FlowTuple, TcpState
from vswitch.tables.neighbors import NeighborState, NeighborTimers
from vswitch.wire import headers as h
from vswitch.wire.text import PacketSpec, build_frame

MAC_A = bytes.fromhex("0a580af40102")
MAC_B = bytes.fromhex("0a580af40103")
GATEWAY_MAC = bytes.fromhex("0a580af40101")
ROUTED = GATEWAY_MAC + bytes.fromhex("0a580af40201")  # new destination + source
NOW = 1000.0
SLOTS = 8
TCP_ESTABLISHED = 3


def frame(kind="udp", l2=10, ttl=64, flags="A", payload=0, dst="10.244.1.3", vnet=None,
          pad=0, icmp_id=7, src_port=1000, dst_port=80) -> bytes:
    tcp_flags = 0
    for letter in flags:
        tcp_flags |= {"A": h.TcpFlag.ACK, "S": h.TcpFlag.SYN, "F": h.TcpFlag.FIN,
                      "R": h.TcpFlag.RST, "P": h.TcpFlag.PSH, "U": h.TcpFlag.URG}[letter]
    spec = PacketSpec(kind, IPv4Address("10.244.1.2"), IPv4Address(dst), src_port=src_port,
                      dst_port=dst_port, tcp_flags=int(tcp_flags), ttl=ttl, payload_len=payload,
                      icmp_id=icmp_id)
    header = bytes(l2) if vnet is None else vnet.ljust(l2, b"\0")
    return header + build_frame(spec, MAC_A, MAC_B) + bytes(pad)


def key_of(port: int, data: bytes, l2: int) -> bytes:
    (flow_key,) = pure.extract_flow_keys([data], l2)
    return port.to_bytes(4, "big") + flow_key


def connection_key_of(port: int, data: bytes, l2: int) -> bytes:
    return connection_key(key_of(port, data, l2), data, l2)


class Harness:
    """A datapath with in-memory ports 1 and 2 and shared arrays the test can look into."""

    def __init__(self, l2s=None, flow_capacity=64, upcall_capacity=16):
        self.l2s = {1: 10, 2: 10} if l2s is None else l2s
        self.dp = Datapath(flow_capacity=flow_capacity, upcall_capacity=upcall_capacity)
        self.shared = dict(
            fdb_seen=array("d", [NOW - 1] * SLOTS), fdb_inc=array("I", [1] * SLOTS),
            nbr_since=array("d", [NOW - 1] * SLOTS), nbr_inc=array("I", [1] * SLOTS),
            ct_expires=array("d", [NOW + 100] * SLOTS), ct_seen=array("d", [0.0] * SLOTS),
            ct_packets=array("Q", [0] * 2 * SLOTS), ct_bytes=array("Q", [0] * 2 * SLOTS),
            ct_state=array("B", [TCP_ESTABLISHED] * SLOTS),
            ct_flags=array("B", [CT_IN_TABLE | CT_REPLIED | CT_ASSURED] * SLOTS),
            ct_inc=array("I", [1] * SLOTS), vxlan_ident=array("I", [0]))
        self.dp.set_shared(**self.shared)
        self.dp.set_params(fdb_aging=300.0, reachable_time=30.0, ct_established=86400.0,
                           ct_udp_unreplied=30.0, ct_udp_replied=120.0, ct_icmp=30.0,
                           generation=5)
        for port, l2 in self.l2s.items():
            self.dp.port_add(port, -1, l2)

    def install(self, key: bytes, **fields) -> None:
        action = dict(generation=5, kind=FORWARD, out_port=2, src_slot=0, src_inc=1,
                      dst_slot=1, dst_inc=1)
        action.update(fields)
        self.dp.install(key, **action)

    def routed(self, key: bytes, **fields) -> None:
        self.install(key, rewrite_macs=1, rewrite=ROUTED, mtu=1500, nbr_slot=2, nbr_inc=1,
                     **fields)


def routed_output(data: bytes, l2: int) -> bytes:
    l3 = l2 + 14
    ihl = (data[l3] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", data, l3 + 2)
    return b"".join((data[:l2], ROUTED, data[l2 + 12: l3],
                     decrement_ttl(data[l3: l3 + ihl], pure), data[l3 + ihl: l3 + total]))


def translated_output(data: bytes, l2: int, target: dict) -> bytes:
    l3 = l2 + 14
    (total,) = struct.unpack_from("!H", data, l3 + 2)
    packet = bytearray(data[l3: l3 + total])
    pure.nat_rewrite(packet, src=target["src"], sport=target["sport"], dst=target["dst"],
                     dport=target["dport"], partial=l2 > 0 and bool(data[0] & 1))
    return data[:l3] + bytes(packet)


# ---- switched ----------------------------------------------------------------------------------

def test_a_switched_hit_is_the_frame_unchanged_and_counted():
    t = Harness()
    data = frame(payload=30, pad=6)
    t.install(key_of(1, data, 10))
    assert t.dp.process(1, data, NOW) == (len(data), 2, data)
    assert t.shared["fdb_seen"][0] == NOW
    stats = t.dp.stats()
    assert (stats["hits"], stats["misses"], stats["upcalls"]) == (1, 0, 0)
    assert t.dp.port_counters(1)["rx_packets"] == 1
    assert t.dp.port_counters(1)["rx_bytes"] == len(data) - 10
    assert t.dp.port_counters(2)["tx_packets"] == 1
    assert t.dp.port_counters(2)["tx_bytes"] == len(data) - 10


def test_another_generation_is_a_miss():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10))
    t.dp.set_generation(6)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.dp.stats()["misses"] == 1
    assert t.dp.port_counters(1)["rx_packets"] == 0


def test_an_aged_destination_is_a_miss_and_the_source_stamp_stays():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10))
    t.shared["fdb_seen"][1] = NOW - 300
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.shared["fdb_seen"][0] == NOW - 1
    assert t.dp.stats()["misses"] == 1


def test_incarnation_mismatches_are_misses_or_leave_the_slot_alone():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10), dst_inc=2)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    t.install(key_of(1, data, 10), src_inc=2)  # the source slot was reused: not stamped
    assert t.dp.process(1, data, NOW)[0] == len(data)
    assert t.shared["fdb_seen"][0] == NOW - 1


def test_frames_without_a_key_and_upcall_all_go_up_uncounted_as_misses():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10))
    assert t.dp.process(1, data[:30], NOW)[0] == UPCALL
    t.dp.port_set_upcall_all(1, True)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    t.dp.port_set_upcall_all(1, False)
    t.dp.set_params(upcall_all=1)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    stats = t.dp.stats()
    assert (stats["misses"], stats["upcalls"], stats["hits"]) == (0, 3, 0)
    assert t.dp.process(9, data, NOW)[0] == EINVAL


# ---- routed ------------------------------------------------------------------------------------

def test_a_routed_hit_lowers_ttl_rewrites_macs_and_drops_padding():
    t = Harness()
    data = frame(kind="tcp", payload=40, pad=8)
    t.routed(key_of(1, data, 10))
    n, port, out = t.dp.process(1, data, NOW)
    assert (n, port, out) == (len(out), 2, routed_output(data, 10))
    assert pure.checksum(out[24:44]) == 0


def test_routing_checks_decline():
    t = Harness()
    data = frame(ttl=1)
    t.routed(key_of(1, data, 10))
    assert t.dp.process(1, data, NOW)[0] == UPCALL  # TTL would expire
    data = frame(payload=1480)
    t.routed(key_of(1, data, 10))
    assert t.dp.process(1, data, NOW)[0] == UPCALL  # over the MTU
    data = frame()
    t.routed(key_of(1, data, 10))
    t.shared["nbr_since"][2] = NOW - 30
    assert t.dp.process(1, data, NOW)[0] == UPCALL  # neighbour stale
    t.shared["nbr_since"][2] = float("-inf")
    assert t.dp.process(1, data, NOW)[0] == UPCALL  # neighbour not reachable
    t.shared["nbr_since"][2] = NOW
    broken = bytearray(data)
    broken[10 + 14 + 10] ^= 0xFF
    assert t.dp.process(1, bytes(broken), NOW)[0] == UPCALL  # header checksum
    assert t.dp.process(1, data, NOW)[0] > 0
    assert t.dp.stats()["misses"] == 5


def test_the_mtu_of_a_gso_frame_is_its_segment_size():
    t = Harness()
    gso = struct.pack("<BBHHHH", 1, h.VNET_GSO_TCPV4, 54, 1448, 34, 16)
    data = frame(kind="tcp", payload=4000, vnet=gso)
    t.routed(key_of(1, data, 10))  # 20 + 20 + 1448 fits 1500 although the frame does not
    n, _, out = t.dp.process(1, data, NOW)
    assert out == routed_output(data, 10)
    big = frame(kind="tcp", payload=4000, vnet=struct.pack("<BBHHHH", 1, 1, 54, 1461, 34, 16))
    t.routed(key_of(1, big, 10))
    assert t.dp.process(1, big, NOW)[0] == UPCALL


# ---- connections -------------------------------------------------------------------------------

TARGET = dict(src=bytes([10, 244, 1, 2]), sport=40000, dst=bytes([10, 244, 2, 9]), dport=8080)


def install_connection(t: Harness, data: bytes, l2=10, **fields):
    t.install(key_of(1, data, l2), kind=PER_CONNECTION, out_port=0)
    t.install(connection_key_of(1, data, l2), kind=CONNECTION, ct_slot=3, ct_inc=1,
              target_src=TARGET["src"], target_dst=TARGET["dst"],
              target_sport=TARGET["sport"], target_dport=TARGET["dport"], **fields)


def test_an_established_tcp_ack_is_translated_counted_and_its_expiry_moved():
    t = Harness()
    data = frame(kind="tcp", flags="PA", payload=100)
    install_connection(t, data)
    n, port, out = t.dp.process(1, data, NOW)
    assert out == translated_output(data, 10, TARGET)
    assert t.shared["ct_packets"][6] == 1 and t.shared["ct_bytes"][6] == 20 + 20 + 100
    assert t.shared["ct_seen"][3] == NOW
    assert t.shared["ct_expires"][3] == NOW + 86400.0


def test_a_partial_checksum_is_rewritten_as_partial():
    t = Harness()
    data = frame(kind="tcp", vnet=bytes([1]))
    install_connection(t, data)
    assert t.dp.process(1, data, NOW)[2] == translated_output(data, 10, TARGET)


def test_a_routed_connection_is_translated_then_routed():
    t = Harness()
    data = frame(kind="udp", payload=20)
    install_connection(t, data, rewrite_macs=1, rewrite=ROUTED, mtu=1500, nbr_slot=2, nbr_inc=1)
    translated = translated_output(data, 10, TARGET)
    assert t.dp.process(1, data, NOW)[2] == routed_output(translated, 10)


def test_the_ns_bit_takes_no_part_in_the_tcp_check():
    t = Harness()
    data = bytearray(frame(kind="tcp"))
    data[10 + 14 + 20 + 12] |= 0x01  # the TCP checksum does not matter to the datapath
    install_connection(t, bytes(data))
    assert t.dp.process(1, bytes(data), NOW)[0] > 0


@pytest.mark.parametrize("flags", ["S", "SA", "FA", "R", "RA", ""])
def test_tcp_state_changes_go_to_the_pipeline(flags):
    t = Harness()
    data = frame(kind="tcp", flags=flags)
    install_connection(t, data)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.shared["ct_packets"][6] == 0


@pytest.mark.parametrize("change", [
    ("ct_flags", CT_IN_TABLE | CT_REPLIED), ("ct_flags", CT_REPLIED | CT_ASSURED),
    ("ct_state", 4), ("ct_expires", NOW), ("ct_inc", 2)])
def test_a_connection_not_in_its_plain_state_goes_to_the_pipeline(change):
    t = Harness()
    data = frame(kind="tcp")
    install_connection(t, data)
    name, value = change
    t.shared[name][3] = value
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.shared["ct_packets"][6] == 0


def test_udp_replies_before_the_first_one_went_through_the_pipeline_go_up():
    t = Harness()
    data = frame(kind="udp")
    install_connection(t, data, direction=1)
    t.shared["ct_flags"][3] = CT_IN_TABLE
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    t.shared["ct_flags"][3] = CT_IN_TABLE | CT_REPLIED
    assert t.dp.process(1, data, NOW)[0] > 0
    assert t.shared["ct_packets"][7] == 1
    assert t.shared["ct_expires"][3] == NOW + 120.0


def test_unreplied_udp_gets_the_unreplied_timeout_and_an_earlier_expiry_declines():
    t = Harness()
    data = frame(kind="udp")
    install_connection(t, data)
    t.shared["ct_flags"][3] = CT_IN_TABLE
    t.shared["ct_expires"][3] = NOW + 10.0
    assert t.dp.process(1, data, NOW)[0] > 0
    assert t.shared["ct_expires"][3] == NOW + 30.0
    t.shared["ct_expires"][3] = NOW + 50.0
    assert t.dp.process(1, data, NOW)[0] == UPCALL


def test_an_icmp_echo_is_translated_by_its_identifier():
    t = Harness()
    data = frame(kind="icmp", payload=56)
    install_connection(t, data)
    t.shared["ct_expires"][3] = NOW + 10.0
    n, _, out = t.dp.process(1, data, NOW)
    assert out == translated_output(data, 10, TARGET)
    assert struct.unpack_from("!H", out, 10 + 14 + 20 + 4)[0] == TARGET["sport"]
    assert t.shared["ct_expires"][3] == NOW + 30.0
    other = frame(kind="icmp", payload=56, icmp_id=8)  # another echo: another connection key
    assert t.dp.process(1, other, NOW)[0] == UPCALL


# ---- tunnels -----------------------------------------------------------------------------------

def test_a_packet_that_cannot_cross_the_tunnel_declines_without_a_trace():
    t = Harness()
    gso = struct.pack("<BBHHHH", 1, h.VNET_GSO_TCPV4, 54, 1448, 34, 16)
    data = frame(kind="tcp", payload=3000, vnet=gso)  # a GSO frame needs the 24-byte header
    install_connection(t, data, rewrite_macs=1, rewrite=ROUTED, mtu=1500, nbr_slot=2,
                       nbr_inc=1, encap=1, encap_port=4789, encap_vni=1)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.shared["ct_packets"][6] == 0 and t.shared["ct_seen"][3] == 0.0
    assert t.shared["vxlan_ident"][0] == 0 and t.shared["fdb_seen"][0] == NOW - 1
    assert t.dp.stats()["misses"] == 1


def test_a_decap_marker_on_a_frame_that_is_not_vxlan_for_us_is_a_miss():
    t = Harness()
    data = frame(kind="udp", dst_port=4789)
    t.install(key_of(1, data, 10), kind=DECAP, encap_port=4789, encap_vni=1)
    assert t.dp.process(1, data, NOW)[0] == UPCALL
    assert t.dp.stats()["misses"] == 1


# ---- egress ------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_l2,out_l2", [(10, 24), (24, 10), (0, 10), (0, 24), (10, 0), (24, 0)])
def test_framing_is_converted_as_egress_converts_it(in_l2, out_l2):
    t = Harness({1: in_l2, 2: out_l2})
    data = frame(l2=in_l2, payload=10)
    t.install(key_of(1, data, in_l2))
    n, _, out = t.dp.process(1, data, NOW)
    spec = lambda l2: SimpleNamespace(vnet_hdr=l2 > 0, l2_offset=l2)  # noqa: E731
    assert out == convert_framing(data, spec(in_l2), spec(out_l2))
    assert t.dp.port_counters(2)["tx_bytes"] == len(data) - in_l2


@pytest.mark.parametrize("in_l2,out_l2,vnet", [
    (10, 0, bytes([1])),
    # A GSO header the frame can have (1296-byte segments): one that lies never gets this far.
    (24, 0, bytes([0, h.VNET_GSO_TCPV4, 54, 0, 0x10, 0x05])),
    (24, 10, bytes([0, 0x21]))])
def test_a_frame_the_out_port_cannot_take_is_counted_there(in_l2, out_l2, vnet):
    t = Harness({1: in_l2, 2: out_l2})
    data = frame(l2=in_l2, vnet=vnet, kind="tcp")
    t.install(key_of(1, data, in_l2))
    assert t.dp.process(1, data, NOW)[0] == CONSUMED
    assert t.dp.port_counters(2)["tx_offload_unsupported"] == 1
    assert t.dp.port_counters(2)["tx_packets"] == 0
    assert t.dp.stats()["hits"] == 1


def test_an_out_port_gone_consumes_the_frame():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10))
    t.dp.port_del(2)
    assert t.dp.process(1, data, NOW)[0] == CONSUMED
    assert t.dp.port_counters(1)["tx_port_gone"] == 1


def test_a_full_table_evicts_one_entry_for_the_next_install():
    """Every entry was used since it was installed: the clock's hand marks them all idle on its
    first round and evicts the first one on the next; a flush empties the table at once."""
    t = Harness(flow_capacity=4)
    frames = [frame(dst=f"10.244.1.{i}") for i in range(10, 15)]
    installed = [t.dp.install(key_of(1, f, 10), generation=5, kind=FORWARD, out_port=2,
                              dst_slot=1, dst_inc=1) for f in frames]
    assert installed == [True] * 4 + [False]
    stats = t.dp.stats()
    assert (stats["entries"], stats["evictions"], stats["installs"]) == (4, 1, 5)
    assert t.dp.process(1, frames[0], NOW)[0] == UPCALL
    assert all(t.dp.process(1, f, NOW)[0] > 0 for f in frames[1:])
    t.dp.flush()
    assert (t.dp.stats()["entries"], t.dp.stats()["flushes"]) == (0, 1)


def test_a_full_table_evicts_an_idle_entry_and_spares_one_in_use():
    t = Harness(flow_capacity=4)
    frames = [frame(dst=f"10.244.1.{i}") for i in range(10, 16)]
    for f in frames[:5]:  # the fifth evicts the first; the hand marked the others idle
        t.install(key_of(1, f, 10))
    assert t.dp.process(1, frames[1], NOW)[0] > 0  # in use again
    t.install(key_of(1, frames[5], 10))
    assert t.dp.process(1, frames[2], NOW)[0] == UPCALL  # the first idle one the hand reached
    assert all(t.dp.process(1, f, NOW)[0] > 0 for f in (frames[1], frames[3], frames[4]))
    assert t.dp.stats()["evictions"] == 2


def test_a_sweep_removes_the_entries_not_looked_up_since_the_one_before():
    t = Harness(flow_capacity=4)
    frames = [frame(dst=f"10.244.1.{i}") for i in range(10, 15)]
    for f in frames[:3]:
        t.install(key_of(1, f, 10))
    t.install(key_of(1, frames[3], 10), generation=4)  # another generation: never a lookup
    assert t.dp.sweep() == 0  # installed since: marked idle
    assert t.dp.process(1, frames[0], NOW)[0] > 0
    assert t.dp.process(1, frames[3], NOW)[0] == UPCALL
    assert t.dp.sweep() == 3
    stats = t.dp.stats()
    assert (stats["entries"], stats["swept"], stats["evictions"]) == (1, 3, 0)
    assert t.dp.process(1, frames[0], NOW)[0] > 0
    for f in frames[1:4]:  # the swept slots are taken again before anything is evicted
        t.install(key_of(1, f, 10))
    assert (t.dp.stats()["entries"], t.dp.stats()["evictions"]) == (4, 0)


def test_keys_longer_than_the_table_takes_are_refused():
    with pytest.raises(ValueError):
        Harness().dp.install(bytes(KEY_LEN + 1), kind=FORWARD)


# ---- robustness --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, 10, 24]), st.binary(max_size=200), st.integers(0, 199),
       st.integers(0, 255))
def test_any_bytes_on_any_port_type_never_crash(l2, noise, at, value):
    t = Harness({1: l2, 2: 10, 3: 0})
    base = frame(l2=l2, kind="tcp", payload=20)
    t.install(key_of(1, base, l2))
    install_connection(t, frame(l2=l2, kind="udp"), l2=l2)
    t.install(key_of(1, frame(l2=l2, kind="icmp"), l2), kind=DECAP, encap_port=4789)
    mutated = bytearray(base + noise)
    mutated[at % len(mutated)] = value
    for data in (bytes(mutated), noise, bytes(mutated)[: at % len(mutated)]):
        n, _, out = t.dp.process(1, data, NOW)
        assert n in (UPCALL, CONSUMED) or (0 <= n == len(out) <= len(data) + 24)


def test_a_frame_longer_than_any_port_reads_is_refused_whole():
    t = Harness()
    data = frame(payload=30)
    t.install(key_of(1, data, 10))
    longest = data.ljust(MAX_FRAME, b"\0")
    assert t.dp.process(1, longest, NOW)[:2] == (MAX_FRAME, 2)
    assert t.dp.process(1, longest + b"\0", NOW)[0] == EINVAL
    assert t.dp.stats()["hits"] == 1


def test_a_short_frame_matching_a_connection_marker_goes_up():
    t = Harness()
    data = frame(kind="tcp")
    install_connection(t, data)
    l3 = 24
    # The same flow key, but the IP total length leaves no room for the TCP header.
    short = bytearray(data[: l3 + 20 + 4])
    short[l3 + 2: l3 + 4] = (24).to_bytes(2, "big")
    short[l3 + 10: l3 + 12] = b"\0\0"
    short[l3 + 10: l3 + 12] = pure.checksum(bytes(short[l3: l3 + 20])).to_bytes(2, "big")
    assert t.dp.process(1, bytes(short), NOW)[0] == UPCALL


def test_a_replaced_action_keeps_its_slot():
    t = Harness()
    data = frame()
    t.install(key_of(1, data, 10))
    t.install(key_of(1, data, 10), out_port=1)
    assert t.dp.process(1, data, NOW)[1] == 1
    assert t.dp.stats()["entries"] == 1



# ---- parity with the pure fast path ------------------------------------------------------------

def _vnet(l2: int, needs_csum: bool, gso_size: int | None) -> bytes:
    if not l2:
        return b""
    gso_type = h.VNET_GSO_TCPV4 if gso_size else h.VNET_GSO_NONE
    return struct.pack("<BBHHHH", int(needs_csum), gso_type, 54, gso_size or 0, 34, 16)


parity_case = st.fixed_dictionaries(dict(
    kind=st.sampled_from(["tcp", "udp", "icmp"]),
    flags=st.sampled_from(["A", "PA", "S", "SA", "FA", "RA", "", "AU"]),
    ttl=st.sampled_from([0, 1, 2, 64]),
    payload=st.integers(0, 1600),
    pad=st.sampled_from([0, 0, 5]),
    l2=st.sampled_from([0, 10, 24]),
    needs_csum=st.booleans(),
    gso_size=st.sampled_from([None, None, 536, 1448, 1500]),
    mtu=st.sampled_from([576, 1500, 9000]),
    neighbour_age=st.sampled_from([0.0, 29.5, 30.0, None]),  # None: not REACHABLE
    routed=st.booleans(),
    connection=st.booleans(),
    direction=st.sampled_from([0, 1]),
    replied=st.booleans(),
    assured=st.booleans(),
    tcp_state=st.sampled_from([3, 3, 4]),
    expires_in=st.sampled_from([-1.0, 10.0, 100.0, 500000.0]),
))


@settings(max_examples=400, deadline=None)
@given(parity_case)
def test_a_hit_is_what_the_pure_fast_path_makes_of_the_frame(case):
    """Where the C datapath answers, its bytes and conntrack changes are the pure fast path's;
    where it declines, so does the pure one, or the packet would change the entry in a way only
    the pipeline makes (a first reply, an expiry moved earlier, a TCP entry not yet assured)."""
    l2 = case["l2"]
    gso = case["gso_size"] if l2 else None
    data = frame(kind=case["kind"], l2=l2, ttl=case["ttl"], flags=case["flags"],
                 payload=case["payload"], pad=case["pad"],
                 vnet=_vnet(l2, case["needs_csum"], gso))
    t = Harness({1: l2, 2: l2})
    neighbour = SimpleNamespace(state=NeighborState.REACHABLE, confirmed=NOW)
    if case["neighbour_age"] is None:
        neighbour.state = NeighborState.STALE
        t.shared["nbr_since"][2] = float("-inf")
    else:
        neighbour.confirmed = t.shared["nbr_since"][2] = NOW - case["neighbour_age"]
    routed = dict(rewrite_macs=1, rewrite=ROUTED, mtu=case["mtu"], nbr_slot=2, nbr_inc=1)
    fdb = SimpleNamespace(last_seen=NOW - 1)
    python_entry = CacheEntry(5, 2, fdb, fdb, ROUTED if case["routed"] else None, neighbour,
                              case["mtu"])
    conntrack = ConntrackTable()
    ct = None
    if case["connection"]:
        proto = {"tcp": 6, "udp": 17, "icmp": 1}[case["kind"]]
        ports = (7, 7) if proto == 1 else (1000, 80)
        ct = conntrack.create(FlowTuple(proto, bytes([10, 244, 1, 2]), ports[0],
                                        bytes([10, 244, 1, 3]), ports[1]), NOW - 5)
        ct.tcp_state = TcpState(case["tcp_state"]) if proto == 6 else TcpState.NONE
        ct.replied, ct.assured = case["replied"], case["assured"]
        ct.expires = NOW + case["expires_in"]
        t.shared["ct_state"][3] = ct.tcp_state.value
        t.shared["ct_flags"][3] = (CT_IN_TABLE | (CT_REPLIED if ct.replied else 0)
                                   | (CT_ASSURED if ct.assured else 0))
        t.shared["ct_expires"][3] = ct.expires
        python_entry.ct = ct
        python_entry.direction = Direction(case["direction"])
        python_entry.target = FlowTuple(proto, TARGET["src"], TARGET["sport"], TARGET["dst"],
                                        TARGET["dport"])
        t.dp.install(key_of(1, data, l2), generation=5, kind=CONNECTION, out_port=2,
                     src_slot=0, src_inc=1, dst_slot=1, dst_inc=1, ct_slot=3, ct_inc=1,
                     direction=case["direction"], target_src=TARGET["src"],
                     target_dst=TARGET["dst"], target_sport=TARGET["sport"],
                     target_dport=TARGET["dport"], **(routed if case["routed"] else {}))
    else:
        t.install(key_of(1, data, l2), **(routed if case["routed"] else {}))

    n, _, c_out = t.dp.process(1, data, NOW)
    expiry_before = ct.expires if ct is not None else None
    py_out = FastPath(pure, conntrack, NeighborTimers()).apply(python_entry, data, l2, NOW)
    event("hit" if c_out is not None else "both decline" if py_out is None else "C declines")
    if c_out is not None:
        assert c_out == py_out
        if ct is not None:
            d = case["direction"]
            assert t.shared["ct_packets"][6 + d] == ct.packets[d]
            assert t.shared["ct_bytes"][6 + d] == ct.bytes[d]
            assert t.shared["ct_expires"][3] == ct.expires
            assert t.shared["ct_seen"][3] == ct.last_seen
        return
    assert n == UPCALL
    if py_out is None:
        return
    assert ct is not None, "a plain forward the pure fast path takes must not go up"
    replied_first = case["direction"] == 1 and not case["replied"] and case["kind"] != "tcp"
    earlier = ct.expires < expiry_before
    not_assured = case["kind"] == "tcp" and not case["assured"]
    assert replied_first or earlier or not_assured


# ---- the poll thread, over socket pairs (packet boundaries kept, as a TAP keeps frames) ---------

@contextlib.contextmanager
def socket_ports(l2s: dict[int, int], upcall_capacity: int = 16):
    """A datapath whose ports (``l2s``: id -> virtio-net header size) are SOCK_SEQPACKET pairs:
    the test writes and reads the far ends. Ports are removed before the sockets close, as the
    datapath's contract asks."""
    pairs = {port: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for port in l2s}
    t = Harness({}, upcall_capacity=upcall_capacity)
    for port, (near, _) in pairs.items():
        t.dp.port_add(port, near.fileno(), l2s[port])
    t.dp.set_params(fdb_aging=1e12)  # the thread's clock is CLOCK_MONOTONIC: stamps of NOW
    far = {port: pair[1] for port, pair in pairs.items()}
    for sock in far.values():
        sock.settimeout(5)
    try:
        yield t, far
    finally:
        t.dp.stop()
        for port in pairs:
            t.dp.port_del(port)
        for near, other in pairs.values():
            near.close()
            other.close()


@pytest.fixture
def threaded(request):
    """``socket_ports`` with ports 1 and 2 and an upcall capacity of 16. Their virtio-net header
    sizes: 10, or {port: size} given as the fixture's indirect parameter."""
    with socket_ports(getattr(request, "param", {1: 10, 2: 10})) as ports:
        yield ports


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_the_thread_forwards_hits_and_queues_the_rest(threaded):
    t, far = threaded
    data = frame(payload=20)
    t.install(key_of(1, data, 10))
    t.dp.start()
    far[1].send(data)
    assert far[2].recv(4096) == data
    unknown = frame(dst="10.244.1.9")
    far[1].send(unknown)
    assert _readable(t.dp.upcall_fd, 5)
    assert t.dp.take_upcalls(8) == [(1, unknown)]
    assert not _readable(t.dp.upcall_fd, 0)  # readable exactly while upcalls wait
    assert t.dp.take_upcalls(8) == []
    stats = t.dp.stats()
    assert (stats["hits"], stats["misses"], stats["upcalls"]) == (1, 1, 1)
    assert t.dp.port_counters(2)["tx_packets"] == 1


def test_the_thread_rewrites_frames_in_place_and_a_declined_one_goes_up_as_read(threaded):
    t, far = threaded
    routed = frame(kind="tcp", payload=40, pad=8)
    t.routed(key_of(1, routed, 10))
    translated = frame(kind="udp", payload=20, dst="10.244.1.4")
    install_connection(t, translated, rewrite_macs=1, rewrite=ROUTED, mtu=1500, nbr_slot=2,
                       nbr_inc=1)
    expiring = frame(kind="udp", ttl=1, dst="10.244.1.9")
    t.routed(key_of(1, expiring, 10))
    t.dp.set_params(clock_offset=NOW - time.monotonic())  # the thread's clock reads NOW
    t.dp.start()
    far[1].send(routed)
    assert far[2].recv(4096) == routed_output(routed, 10)
    far[1].send(translated)
    assert far[2].recv(4096) == routed_output(translated_output(translated, 10, TARGET), 10)
    far[1].send(expiring)  # declined after the lookup: the TTL would expire
    assert _readable(t.dp.upcall_fd, 5)
    assert t.dp.take_upcalls(8) == [(1, expiring)]
    assert (t.dp.stats()["hits"], t.dp.stats()["misses"]) == (2, 1)


def test_the_thread_encapsulates_in_front_of_the_frame_and_undoes_a_wrap_it_cannot_make(threaded):
    t, far = threaded
    tunnel = dict(rewrite_macs=1, rewrite=ROUTED, mtu=1500, nbr_slot=2, nbr_inc=1, encap=1,
                  encap_port=4789, encap_vni=1)
    data = frame(kind="tcp", payload=200)
    install_connection(t, data, **tunnel)
    gso = struct.pack("<BBHHHH", 1, h.VNET_GSO_TCPV4, 54, 1448, 34, 16)
    cannot = frame(kind="tcp", payload=3000, vnet=gso, dst="10.244.1.9")  # needs 24 bytes
    install_connection(t, cannot, **tunnel)
    reference = Harness()
    install_connection(reference, data, **tunnel)
    expected = reference.dp.process(1, data, NOW)[2]
    t.dp.set_params(clock_offset=NOW - time.monotonic())  # the thread's clock reads NOW
    t.dp.start()
    far[1].send(cannot)  # translated and routed in place, then the wrap fails: undone
    assert _readable(t.dp.upcall_fd, 5)
    assert t.dp.take_upcalls(8) == [(1, cannot)]
    far[1].send(data)
    assert far[2].recv(4096) == expected
    assert t.shared["vxlan_ident"][0] == 1
    assert (t.dp.stats()["hits"], t.dp.stats()["misses"]) == (1, 1)


@pytest.mark.parametrize("threaded", [{1: 0, 2: 24}, {1: 24, 2: 10}, {1: 10, 2: 0}],
                         indirect=True)
def test_the_thread_converts_framing_around_the_frame_it_read(threaded, request):
    t, far = threaded
    in_l2, out_l2 = request.node.callspec.params["threaded"].values()
    data = frame(l2=in_l2, kind="tcp", payload=30, pad=4)
    t.install(key_of(1, data, in_l2))
    routed = frame(l2=in_l2, kind="udp", payload=30, pad=4, dst="10.244.1.4")
    t.routed(key_of(1, routed, in_l2))
    t.dp.set_params(clock_offset=NOW - time.monotonic())  # the thread's clock reads NOW
    t.dp.start()
    spec = lambda l2: SimpleNamespace(vnet_hdr=l2 > 0, l2_offset=l2)  # noqa: E731
    far[1].send(data)
    assert far[2].recv(4096) == convert_framing(data, spec(in_l2), spec(out_l2))
    far[1].send(routed)
    assert far[2].recv(4096) == convert_framing(routed_output(routed, in_l2), spec(in_l2),
                                                spec(out_l2))


def _upcalled(t: Harness, count: int) -> None:
    """Waits until the poll thread has handed ``count`` frames in all to the upcall queue."""
    deadline = time.monotonic() + 5
    while t.dp.stats()["upcalls"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.dp.stats()["upcalls"] == count


def _take_all(t: Harness, count: int) -> list[tuple[int, bytes]]:
    """Upcalls taken until ``count`` frames in all were handed over and none waits."""
    taken: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        taken += t.dp.take_upcalls(100)
        stats = t.dp.stats()
        if stats["upcalls"] == count and stats["upcall_queued"] == 0:
            break
        time.sleep(0.01)
    return taken


def test_a_port_that_holds_its_share_is_not_read_until_python_takes_it_down(threaded):
    """Half of the queue (8 of 16) is a port's share: then its frames wait in its fd, unread
    (a TAP's queue, where the pod's kernel drops what does not fit), until Python has taken
    the port's down to a quarter. Nothing is lost meanwhile, and the order is kept."""
    t, far = threaded
    t.dp.start()
    frames = [frame(dst=f"10.244.1.{i}") for i in range(40)]
    for data in frames:
        far[1].send(data)
    _upcalled(t, 8)
    time.sleep(0.05)
    stats = t.dp.stats()
    assert (stats["upcalls"], stats["upcall_queued"], stats["upcall_lost"]) == (8, 8, 0)
    assert t.dp.take_upcalls(3) == [(1, data) for data in frames[:3]]
    time.sleep(0.05)
    assert t.dp.stats()["upcalls"] == 8  # 5 left: still above a quarter
    taken = t.dp.take_upcalls(1) + _take_all(t, 40)  # at 4 the port is read again
    assert taken == [(1, data) for data in frames[3:]]
    assert (t.dp.stats()["upcall_lost"], t.dp.port_counters(1)["upcall_lost"]) == (0, 0)


def test_a_full_upcall_queue_makes_the_port_with_the_most_waiting_pay():
    """Ports 1 and 2 hold their shares, and the queue is full: each frame of port 3 takes the
    place of the oldest frame of the port with the most waiting (the first such), which loses
    it, counted for the datapath and for that port."""
    with socket_ports({1: 10, 2: 10, 3: 10}) as (t, far):
        t.dp.start()
        sent = {port: [frame(dst=f"10.244.{port}.{i}") for i in range(10)] for port in (1, 2)}
        for port in (1, 2):
            for data in sent[port]:
                far[port].send(data)
        _upcalled(t, 16)
        assert t.dp.stats()["upcall_queued"] == 16
        sent[3] = [frame(dst=f"10.244.3.{i}") for i in range(3)]
        for data in sent[3]:
            far[3].send(data)
        _upcalled(t, 19)
        stats = t.dp.stats()
        assert (stats["upcall_queued"], stats["upcall_lost"]) == (16, 3)
        assert [t.dp.port_counters(port)["upcall_lost"] for port in (1, 2, 3)] == [2, 1, 0]
        taken = _take_all(t, 23)  # the frames 1 and 2 still had in their fds come after
        assert [data for port, data in taken if port == 1] == sent[1][2:]
        assert [data for port, data in taken if port == 2] == sent[2][1:]
        assert [data for port, data in taken if port == 3] == sent[3]


def test_upcalls_are_taken_from_the_ports_in_turn():
    """Up to 8 frames of a port, then the next port's turn: a port's first frames wait behind
    at most one turn of a port that keeps many waiting."""
    with socket_ports({1: 10, 2: 10}, upcall_capacity=64) as (t, far):
        t.dp.start()
        many = [frame(dst=f"10.244.1.{i}") for i in range(11)]
        for data in many:
            far[1].send(data)
        _upcalled(t, 11)
        few = [frame(dst=f"10.244.2.{i}") for i in range(3)]
        for data in few:
            far[2].send(data)
        _upcalled(t, 14)
        assert t.dp.take_upcalls(5) == [(1, data) for data in many[:5]]
        assert t.dp.take_upcalls(100) == ([(1, data) for data in many[5:8]]
                                          + [(2, data) for data in few]
                                          + [(1, data) for data in many[8:]])
        assert not _readable(t.dp.upcall_fd, 0)
        far[2].send(few[0])  # alone: its turn comes at once
        _upcalled(t, 15)
        assert t.dp.take_upcalls(100) == [(2, few[0])]


def test_a_removed_port_loses_the_upcalls_it_had_waiting(threaded):
    t, far = threaded
    t.dp.start()
    for i in range(3):
        far[1].send(frame(dst=f"10.244.1.{i}"))
    far[2].send(frame(dst="10.244.2.1"))
    _upcalled(t, 4)
    t.dp.stop()
    t.dp.port_del(1)
    stats = t.dp.stats()
    assert (stats["upcall_queued"], stats["upcall_lost"]) == (1, 3)
    assert t.dp.take_upcalls(100) == [(2, frame(dst="10.244.2.1"))]
    t.dp.port_add(1, -1, 10)  # the fixture removes it again


def test_a_port_that_cannot_take_more_counts_busy_and_takes_the_count_back(threaded):
    t, far = threaded
    data = frame(payload=1000)
    t.install(key_of(1, data, 10))
    t.dp.start()
    sent = 0
    deadline = time.monotonic() + 10
    while t.dp.port_counters(2)["tx_busy"] == 0 and time.monotonic() < deadline:
        far[1].send(data)  # nobody reads port 2's far end
        sent += 1
        if sent % 64 == 0:
            time.sleep(0.01)
    while t.dp.stats()["hits"] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    counters = t.dp.port_counters(2)
    assert counters["tx_busy"] > 0
    assert counters["tx_packets"] + counters["tx_busy"] == sent
    received = 0
    far[2].setblocking(False)
    while True:
        try:
            far[2].recv(4096)
        except BlockingIOError:
            break
        received += 1
    assert received == counters["tx_packets"]


def test_a_port_at_its_end_leaves_the_poll_set(threaded):
    t, far = threaded
    t.dp.start()
    far[1].close()  # the near end now reads end-of-file, forever
    time.sleep(0.2)
    wakeups = t.dp.stats()["wakeups"]
    time.sleep(0.2)
    assert t.dp.stats()["wakeups"] - wakeups <= 1  # not spinning


def test_arrays_not_handed_over_make_misses_not_crashes():
    dp = Datapath(flow_capacity=8, upcall_capacity=4)
    dp.port_add(1, -1, 10)
    dp.port_add(2, -1, 10)
    dp.set_params(fdb_aging=300.0, reachable_time=30.0, generation=5)
    dp.set_shared(fdb_seen=array("d", [NOW] * 2))  # its incarnations missing
    routed = frame(kind="udp")
    dp.install(key_of(1, routed, 10), generation=5, kind=FORWARD, out_port=2, dst_slot=1)
    assert dp.process(1, routed, NOW)[0] == UPCALL
    dp.set_shared(fdb_inc=array("I", [0, 0]))
    assert dp.process(1, routed, NOW)[0] > 0
    dp.install(key_of(1, routed, 10), generation=5, kind=FORWARD, out_port=2, dst_slot=1,
               rewrite_macs=1, mtu=1500)
    assert dp.process(1, routed, NOW)[0] == UPCALL  # no neighbour arrays
    dp.set_shared(ct_inc=array("I", [0]))
    translated = frame(kind="tcp")
    dp.install(key_of(1, translated, 10), generation=5, kind=CONNECTION, out_port=2,
               dst_slot=1)
    assert dp.process(1, translated, NOW)[0] == UPCALL  # the other conntrack arrays missing


# -- packing an action -------------------------------------------------------------------------

_FIELD_VALUES = st.fixed_dictionaries({}, optional={
    "generation": st.integers(0, 2**64 - 1), "out_port": st.integers(0, 2**32 - 1),
    "kind": st.integers(0, 255), "rewrite_macs": st.integers(0, 1), "mtu": st.integers(0, 65535),
    "src_slot": st.integers(0, 2**32 - 1), "dst_inc": st.integers(0, 2**32 - 1),
    "rewrite": st.binary(min_size=12, max_size=12), "target_sport": st.integers(0, 65535),
    "target_dst": st.binary(min_size=4, max_size=4), "encap_vni": st.integers(0, 2**24 - 1),
    "encap_hash_seed": st.integers(0, 2**64 - 1),
    "decap_vtep_mac": st.binary(min_size=6, max_size=6)})


@settings(max_examples=200)
@given(fields=_FIELD_VALUES)
def test_a_packed_action_is_the_struct_cffi_fills_field_by_field(fields):
    from vswitch._native import ffi
    from vswitch.accel.datapath import pack_action

    action = ffi.new("vs_dp_action *")
    for name, value in fields.items():
        if isinstance(value, bytes):
            ffi.memmove(getattr(action, name), value, len(value))
        else:
            setattr(action, name, value)
    assert pack_action(fields) == bytes(ffi.buffer(action))


def test_packing_refuses_unknown_fields_and_wrong_sizes():
    from vswitch.accel.datapath import pack_action

    with pytest.raises(ValueError, match="no field"):
        pack_action({"turbo": 1})
    with pytest.raises(ValueError, match="holds 12 bytes"):
        pack_action({"rewrite": bytes(11)})


def test_a_switch_in_a_reference_cycle_is_collected_without_crashing():
    # The collector clears memoryviews in any order; when C's pointers pinned a memoryview
    # cast, clearing its managed buffer unmapped the shared arrays under C and the daemon died
    # with SIGSEGV at exit. A child process, since the failure is a crash.
    import subprocess
    import sys

    script = ("import gc; from vswitch.runtime.daemon import _system_switch; "
              "from vswitch.config import load_topology; "
              "topology = load_topology('config/services.toml'); "
              "switch = _system_switch(topology); assert switch.datapath is not None; "
              "del switch; gc.collect(); print('collected')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "collected"), done.stderr[-2000:]
    assert "BufferError" not in done.stderr
