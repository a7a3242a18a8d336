"""The most important property of the fast path: for any traffic it decides what the pipeline
decides.

Two switches get the same random traffic, one with the flow cache and one without; every burst must
produce the same frames on the same ports, and the FDBs (and neighbour tables) must end equal. A
burst holds different frames, so that one frame can change a table (a MAC moves, a neighbour
changes or appears) that a later frame of the same burst depends on: a cached decision from before
the change must not be replayed. Translated connections have their own property test, in
test_flow_cache_parity_services.py.
"""
from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, example, given, settings, strategies as st

from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import fdb_rows, neighbor_rows
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes, mac_text
from vswitch.wire.text import build_frame, parse_packet

from .conftest import make_switch

PODS = [(2, "10.244.1.10"), (3, "10.244.1.11"), (4, "10.244.1.50"), (1, "10.244.1.254")]
TRUNK = 9  # a port without port security, so MACs can move between ports


def weighted(*choices):
    """Draws from each (weight, strategy) in proportion to its weight. ``st.one_of`` draws evenly
    from its distinct strategies, however often one is listed, so each copy is made distinct."""
    return st.one_of([s.map(_same) for weight, s in choices for _ in range(weight)])


def _same(value):
    return value


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


# Bursts of different frames, as a port's read really returns them, so that an earlier frame of a
# burst can change a table that a later frame's cached decision depends on. Pods send mostly as
# themselves, unicast to a pod, so that flows repeat and hit the cache; spoofing, broadcasts,
# gateway traffic and corrupted bytes are mixed in. Behind the trunk (no port security) are hosts
# .77 and .78, and it also sends as the pods: a pod's MAC moves to the trunk in the middle of a
# burst, and back when the pod speaks again.
TRUNK_HOSTS = ["10.244.1.77", "10.244.1.78"]
EVERYONE = [ip for _, ip in PODS] + TRUNK_HOSTS
_flip = weighted((4, st.none()), (1, st.integers(0, 80)))
_kind = st.sampled_from(["udp", "udp", "icmp", "tcp", "arp"])
_l2dst = st.sampled_from(["unicast", "unicast", "unicast", "broadcast", "gateway"])
_destination = st.sampled_from(EVERYONE + ["10.244.1.1"])
pod_frame = st.tuples(
    weighted((3, st.none()), (1, st.sampled_from(EVERYONE))),  # spoofed source
    _destination, _kind, _l2dst, _flip)
trunk_frame = st.tuples(st.sampled_from(EVERYONE), _destination, _kind, _l2dst, _flip)
burst = st.tuples(
    st.one_of(st.tuples(st.sampled_from(PODS), st.lists(pod_frame, min_size=1, max_size=4)),
              st.tuples(st.just((TRUNK, None)), st.lists(trunk_frame, min_size=1, max_size=4))),
    st.integers(1, 2),  # the frames once, or twice over: later copies meet what earlier ones did
    st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0]),  # seconds since the previous burst (aging is 5 s)
)


def _with_trunk(switch):
    switch.add_port(PortSpec(TRUNK, "trunk", PortKind.MEMORY, "0a:58:00:00:00:09", "10.244.1.99",
                             True, port_security=False))
    return switch


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bursts=st.lists(burst, min_size=8, max_size=30))
# Always tried: from the trunk, [X->B, B->A] twice over, the second X->B after B's MAC moved.
@example(bursts=[(((2, "10.244.1.10"), [(None, "10.244.1.11", "udp", "unicast", None)]), 1, 0.0),
                 (((3, "10.244.1.11"), [(None, "10.244.1.10", "udp", "unicast", None)]), 1, 0.0),
                 (((TRUNK, None), [("10.244.1.77", "10.244.1.11", "udp", "unicast", None),
                                   ("10.244.1.11", "10.244.1.10", "udp", "unicast", None)]),
                  2, 1.0)])
def test_fast_path_equals_slow_path(topology, bursts):
    """Three switches: the C datapath's cache, its pure twin's, and no cache at all. The two
    caches must agree on every byte and every counter (hits included), and both with the
    pipeline on every byte."""
    short = dataclasses.replace(topology, dataplane=dataclasses.replace(topology.dataplane,
                                                                        fdb_aging=5.0))
    native = _with_trunk(make_switch(short, "native"))
    pure = _with_trunk(make_switch(short, "pure"))
    uncached = _with_trunk(make_switch(short, "pure", flow_cache_capacity=0))
    now = 0.0
    for ((port, own_ip), frames), repeat, delay in bursts:
        now += delay
        data = []
        for src, dst, kind, l2dst, mutate in frames:
            dst_mac = {"unicast": _mac(dst), "broadcast": BROADCAST_MAC,
                       "gateway": mac_bytes("0a:58:0a:f4:01:01")}[l2dst]
            data.append(_frame(src or own_ip, dst, kind, dst_mac, mutate))
        data *= repeat
        want = [(t.port, t.data) for t in uncached.process_batch(port, data, now)]
        assert [(t.port, t.data) for t in native.process_batch(port, data, now)] == want
        assert [(t.port, t.data) for t in pure.process_batch(port, data, now)] == want
        if delay == 2.5:  # the timer runs now and then, not before every burst
            for switch in (native, pure, uncached):
                switch.handle_timer(now)
    assert fdb_rows(native, now) == fdb_rows(uncached, now) == fdb_rows(pure, now)
    assert same_counters(native, pure)
    assert uncached.statistics()["dispositions"]["cache-hit"] == 0
    for s in (native.statistics(), pure.statistics(), uncached.statistics()):
        rx = sum(p["rx_packets"] for p in s["ports"].values())
        assert sum(s["dispositions"].values()) == rx


def same_counters(a, b) -> bool:
    """Whether two switches counted alike: ports, stages, dispositions, cache hits and misses,
    conntrack. (Cache entries and installs differ: C installs a marker and an entry where the
    dict may hold them already.)"""
    def comparable(switch):
        s = switch.statistics()
        return ({k: s[k] for k in ("ports", "stages", "dispositions", "conntrack")},
                s["flow_cache"]["hits"], s["flow_cache"]["misses"])
    return comparable(a) == comparable(b)


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
    """A burst [B->A, X->B] from the trunk while X->B is cached as "to port 3": the first frame
    moves B's MAC to the trunk, so the second must not follow the entry cached before the move."""
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

# Pod a on the default segment, pod d and a trunk on blue (MTU 1400). Behind the trunk (no port
# security) are hosts .77 and .78 of blue, and it may speak for d too, from d's MAC (d's MAC moves
# there) or from another one (d's neighbour entry changes, by ARP). Its hosts answer the router's
# ARP (a neighbour appears, and what waited for it is sent) and announce themselves with a new MAC.
BLUE_TRUNK_HOSTS = ["10.245.1.77", "10.245.1.78"]
ROUTED_PODS = [(2, "10.244.1.10", "10.244.1.1"), (4, "10.245.1.10", "10.245.1.1")]
SECOND_MAC = "0a:58:00:00:00:{:02x}"  # the same address's other MAC: a replaced NIC, a moved VM
# The first choice of each is the likeliest to repeat, so it is the one that matters most: the
# trunk's hosts sending to d through the router (a flow whose cached decision an ARP or a MAC move
# in the trunk's own burst makes stale), at a TTL and size that the fast path replays.
routed_ip = st.tuples(
    st.sampled_from(["udp", "tcp", "icmp"]),
    st.sampled_from(["10.245.1.10", "10.244.1.10", "198.51.100.1"] + BLUE_TRUNK_HOSTS),
    st.sampled_from([64, 64, 64, 2, 1]),  # TTL
    st.sampled_from([100, 0, 1352, 1353, 1472]),  # payload bytes
    st.booleans(),  # DF
)
pod_routed_frame = weighted((3, routed_ip), (1, st.just(("arp-gateway",))))
trunk_routed_frame = st.tuples(
    st.sampled_from(["10.245.1.77", "10.245.1.10", "10.245.1.77", "10.245.1.10", "10.245.1.78"]),
    st.booleans(),  # from that address's second MAC
    weighted((2, routed_ip), (1, st.just(("arp-gateway",))), (1, st.just(("arp-reply",)))),
)
routed_burst = st.tuples(
    st.one_of(st.tuples(st.sampled_from(ROUTED_PODS),
                        st.lists(pod_routed_frame, min_size=1, max_size=4)),
              st.tuples(st.just((TRUNK, None, "10.245.1.1")),
                        st.lists(trunk_routed_frame, min_size=1, max_size=5))),
    st.integers(1, 2),  # the frames once, or twice over
    st.sampled_from([0.0, 0.2, 1.0, 12.0]),  # seconds since the previous burst
)


def _routed_frame(src: str, src_mac: bytes, gateway: str, frame) -> bytes:
    kind = frame[0]
    if kind == "arp-gateway":
        return h.ZERO_VNET_HDR + build_frame(parse_packet(f"arp who-has {gateway} tell {src}"),
                                             src_mac, BROADCAST_MAC)
    if kind == "arp-reply":
        text = f"arp reply {src} is-at {mac_text(src_mac)} to {gateway}"
        return h.ZERO_VNET_HDR + build_frame(parse_packet(text), src_mac, _mac(gateway))
    _, dst, ttl, size, df = frame
    ports = ":1 > " if kind != "icmp" else " > "
    text = (f"{kind} {src}{ports}{dst}{':2' if kind != 'icmp' else ''} ttl {ttl} "
            f"len {size}{' df' if df else ''}")
    return h.ZERO_VNET_HDR + build_frame(parse_packet(text), src_mac, _mac(gateway))


def _with_blue_trunk(switch):
    switch.add_port(PortSpec(TRUNK, "trunk", PortKind.MEMORY, "0a:58:00:00:01:09", "10.245.1.99",
                             True, port_security=False, segment=1))
    return switch


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bursts=st.lists(routed_burst, min_size=8, max_size=30))
# Always tried: from the trunk, [.77->d, d's ARP from its second MAC] twice over.
@example(bursts=[(((4, "10.245.1.10", "10.245.1.1"), [("arp-gateway",)]), 1, 0.0),
                 (((TRUNK, None, "10.245.1.1"),
                   [("10.245.1.77", False, ("udp", "10.245.1.10", 64, 100, False)),
                    ("10.245.1.10", True, ("arp-gateway",))]), 2, 0.2)])
def test_fast_path_equals_slow_path_for_routed_traffic(accel_name, bursts):
    from .test_pipeline_l3 import _routed_switch

    cached = _with_blue_trunk(_routed_switch(accel_name))
    uncached = _with_blue_trunk(_routed_switch(accel_name, capacity=0))
    now = 0.0
    for ((port, own_ip, gateway), frames), repeat, delay in bursts:
        now += delay
        data = []
        for frame in frames:
            if port == TRUNK:
                src, second, frame = frame
                src_mac = (mac_bytes(SECOND_MAC.format(int(src.split(".")[-1]))) if second
                           else _mac(src))
            else:
                src, src_mac = own_ip, _mac(own_ip)
            data.append(_routed_frame(src, src_mac, gateway, frame))
        data *= repeat
        got = [(t.port, t.data) for t in cached.process_batch(port, data, now)]
        want = [(t.port, t.data) for t in uncached.process_batch(port, data, now)]
        assert got == want
        if delay >= 1.0:
            assert ([(t.port, t.data) for t in cached.handle_timer(now)]
                    == [(t.port, t.data) for t in uncached.handle_timer(now)])
    assert neighbor_rows(cached, now) == neighbor_rows(uncached, now)
    assert fdb_rows(cached, now) == fdb_rows(uncached, now)
