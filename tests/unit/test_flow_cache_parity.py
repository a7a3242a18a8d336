"""The most important property of the fast path: for any traffic it decides what the pipeline decides.

Two switches get the same random traffic, one with the flow cache and one without; every burst must
produce the same frames on the same ports, and the FDBs must end equal.
"""
from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import fdb_rows, neighbor_rows
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from .conftest import make_switch

PODS = [(2, "10.244.1.10"), (3, "10.244.1.11"), (4, "10.244.1.50"), (1, "10.244.1.254")]
TRUNK = 9  # a port without port security, so MACs can move between ports


def _mac(ip: str) -> bytes:
    return mac_bytes("0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split(".")))


def _frame(src_ip: str, dst_ip: str, kind: str, dst_mac: bytes, mutate: int | None) -> bytes:
    text = {"icmp": f"icmp {src_ip} > {dst_ip}", "udp": f"udp {src_ip}:1 > {dst_ip}:2",
            "tcp": f"tcp {src_ip}:1 > {dst_ip}:2 flags S",
            "arp": f"arp who-has {dst_ip} tell {src_ip}"}[kind]
    data = bytearray(h.ZERO_VNET_HDR + build_frame(parse_packet(text), _mac(src_ip), dst_mac))
    if mutate is not None:
        data[mutate % len(data)] ^= 0x5A
    return bytes(data)


# Mostly well-behaved traffic (each pod sends as itself, unicast to a pod) so that flows repeat
# and hit the cache, with spoofing, broadcasts, gateway traffic and corrupted bytes mixed in.
event = st.tuples(
    st.sampled_from(PODS + [(TRUNK, "trunk")]),  # ingress port
    st.one_of(st.none(), st.none(), st.none(), st.sampled_from([ip for _, ip in PODS])),  # spoof
    st.sampled_from([ip for _, ip in PODS] + ["10.244.1.1", "10.244.1.77"]),  # destination
    st.sampled_from(["udp", "icmp", "tcp", "arp"]),
    st.sampled_from(["unicast", "unicast", "unicast", "broadcast", "gateway"]),
    st.one_of(st.none(), st.none(), st.none(), st.integers(0, 80)),  # flip one byte
    st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0]),  # seconds since the previous burst (aging is 5 s)
    st.integers(1, 3),  # copies in the burst
)


def _with_trunk(switch):
    switch.add_port(PortSpec(TRUNK, "trunk", PortKind.MEMORY, "0a:58:00:00:00:09", "10.244.1.99",
                             True, port_security=False))
    return switch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=40))
def test_fast_path_equals_slow_path(topology, accel_name, events):
    short = dataclasses.replace(topology, dataplane=dataclasses.replace(topology.dataplane,
                                                                        fdb_aging=5.0))
    cached = _with_trunk(make_switch(short, accel_name))
    uncached = _with_trunk(make_switch(short, accel_name, flow_cache_capacity=0))
    now = 0.0
    for (port, own_ip), spoof, dst, kind, l2dst, mutate, delay, copies in events:
        now += delay
        src = spoof or (own_ip if port != TRUNK else dst)
        dst_mac = {"unicast": _mac(dst), "broadcast": BROADCAST_MAC,
                   "gateway": mac_bytes("0a:58:0a:f4:01:01")}[l2dst]
        burst = [_frame(src, dst, kind, dst_mac, mutate)] * copies
        got = [(t.port, t.data) for t in cached.process_batch(port, burst, now)]
        want = [(t.port, t.data) for t in uncached.process_batch(port, burst, now)]
        assert got == want
        if delay == 2.5:  # the timer runs now and then, not before every burst
            cached.handle_timer(now)
            uncached.handle_timer(now)
    assert fdb_rows(cached, now) == fdb_rows(uncached, now)
    assert uncached.statistics()["dispositions"]["cache-hit"] == 0
    for s in (cached.statistics(), uncached.statistics()):
        rx = sum(p["rx_packets"] for p in s["ports"].values())
        assert sum(s["dispositions"].values()) == rx


def test_repeated_flow_hits_the_cache_and_a_mac_move_invalidates_it(topology, accel_name):
    switch = _with_trunk(make_switch(topology, accel_name))
    b_to_a = _frame("10.244.1.11", "10.244.1.10", "udp", _mac("10.244.1.10"), None)
    a_to_b = _frame("10.244.1.10", "10.244.1.11", "udp", _mac("10.244.1.11"), None)
    switch.process_batch(3, [b_to_a], 0.0)
    assert [t.port for t in switch.process_batch(2, [a_to_b] * 3, 1.0)] == [3, 3, 3]
    s = switch.statistics()
    assert s["dispositions"]["cache-hit"] == 2 and s["flow_cache"]["entries"] == 1
    # B's MAC shows up behind the trunk: the cached decision "to port 3" must not survive.
    switch.process_batch(TRUNK, [b_to_a], 2.0)
    assert [t.port for t in switch.process_batch(2, [a_to_b], 3.0)] == [TRUNK]


def test_a_mac_move_earlier_in_the_same_burst_invalidates_the_cache(topology, accel_name):
    """A burst [B->A, X->B] from the trunk while X->B is cached as "to port 3": the first frame moves
    B's MAC to the trunk, so the second must not follow the entry cached before the move."""
    switch = _with_trunk(make_switch(topology, accel_name))
    b_to_a = _frame("10.244.1.11", "10.244.1.10", "udp", _mac("10.244.1.10"), None)
    x_to_b = _frame("10.244.1.77", "10.244.1.11", "udp", _mac("10.244.1.11"), None)
    a_to_b = _frame("10.244.1.10", "10.244.1.11", "udp", _mac("10.244.1.11"), None)
    switch.process_batch(2, [a_to_b], 0.0)  # A is learned on port 2
    switch.process_batch(3, [b_to_a], 0.0)  # and B on port 3
    assert [t.port for t in switch.process_batch(TRUNK, [x_to_b] * 2, 1.0)] == [3, 3]
    assert switch.statistics()["dispositions"]["cache-hit"] == 1
    # B's MAC is now behind the trunk, where X->B came from: a switch never sends a frame back
    # out of the port it arrived on.
    sent = switch.process_batch(TRUNK, [b_to_a, x_to_b], 2.0)
    assert [t.port for t in sent] == [2]
    assert switch.statistics()["dispositions"]["cache-hit"] == 1


def test_cache_hits_keep_the_sender_mac_alive(topology, accel_name):
    short = dataclasses.replace(topology, dataplane=dataclasses.replace(topology.dataplane,
                                                                        fdb_aging=5.0))
    switch = make_switch(short, accel_name)
    b_to_a = _frame("10.244.1.11", "10.244.1.10", "udp", _mac("10.244.1.10"), None)
    a_to_b = _frame("10.244.1.10", "10.244.1.11", "udp", _mac("10.244.1.11"), None)
    switch.process_batch(3, [b_to_a], 0.0)
    for t in (1.0, 3.0, 4.5):
        switch.process_batch(2, [a_to_b], t)  # B stays known: last seen at 0.0, aging 5 s
    assert switch.statistics()["dispositions"]["cache-hit"] == 2
    # A sent only through the cache since t=1; its FDB entry must still be fresh at t=6.5.
    assert [t.port for t in switch.process_batch(3, [b_to_a], 6.5)] == [2]


# -- routed traffic ----------------------------------------------------------------------------

ROUTED_PODS = [(2, "10.244.1.10", "10.244.1.1"), (4, "10.245.1.10", "10.245.1.1")]

routed_event = st.tuples(
    st.sampled_from(ROUTED_PODS),  # sender
    st.sampled_from(["udp", "tcp", "icmp", "arp-gateway"]),
    st.sampled_from(["10.244.1.10", "10.245.1.10", "10.245.1.77", "198.51.100.1"]),
    st.sampled_from([64, 64, 2, 1]),  # TTL
    st.sampled_from([0, 100, 1352, 1353, 1472]),  # payload bytes (blue's MTU is 1400)
    st.booleans(),  # DF
    st.sampled_from([0.0, 0.2, 1.0, 12.0]),  # seconds since the previous burst
    st.integers(1, 3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(routed_event, min_size=1, max_size=30))
def test_fast_path_equals_slow_path_for_routed_traffic(accel_name, events):
    from .test_pipeline_l3 import _routed_switch

    cached = _routed_switch(accel_name)
    uncached = _routed_switch(accel_name, capacity=0)
    now = 0.0
    for (port, src, gateway), kind, dst, ttl, size, df, delay, copies in events:
        now += delay
        if kind == "arp-gateway":
            text = f"arp who-has {gateway} tell {src}"
            dst_mac = BROADCAST_MAC
        else:
            ports = ":1 > " if kind != "icmp" else " > "
            text = (f"{kind} {src}{ports}{dst}{':2' if kind != 'icmp' else ''} ttl {ttl} "
                    f"len {size}{' df' if df else ''}")
            dst_mac = _mac(gateway)
        frame = h.ZERO_VNET_HDR + build_frame(parse_packet(text), _mac(src), dst_mac)
        got = [(t.port, t.data) for t in cached.process_batch(port, [frame] * copies, now)]
        want = [(t.port, t.data) for t in uncached.process_batch(port, [frame] * copies, now)]
        assert got == want
        if delay >= 1.0:
            assert ([(t.port, t.data) for t in cached.handle_timer(now)]
                    == [(t.port, t.data) for t in uncached.handle_timer(now)])
    assert neighbor_rows(cached, now) == neighbor_rows(uncached, now)
