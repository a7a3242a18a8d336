"""Whatever arrives on a port, the switch never raises: a malformed frame is counted and dropped.

Random bytes, and valid frames of every kind the pipeline handles (switched, routed, to services,
from the uplink) with bytes flipped or cut short, go into a switch with segments, services and an
uplink. The dispositions must still add up to what the ports received.

The fuzz node (``tests/fuzz/lab.py``) adds the host port and an uplink that also carries a VXLAN
overlay, in both virtio-net framings: there each port must count exactly the frames it was
given, and a node on the native accel must send and count what one on the pure accel does.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz import lab

from vswitch.wire import headers as h
from vswitch.wire.text import build_frame, parse_packet

from .test_pipeline_services import (A, A_IP, B, C, C_IP, DNS_VIP, FAR, GW, NODE, UPLINK, VIP,
                                     _switch, mac)

TEMPLATES = [
    (C, f"tcp {C_IP}:40000 > {VIP}:80 flags S", C_IP, GW),
    (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 8", C_IP, GW),
    (C, f"icmp {C_IP} > 198.51.100.7", C_IP, GW),
    (A, f"udp {A_IP}:1 > {C_IP}:2 len 30", A_IP, C_IP),
    (A, f"arp who-has {GW} tell {A_IP}", A_IP, GW),
    (UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", FAR, NODE),
    (UPLINK, f"icmp {FAR} > {NODE}", FAR, NODE),
    # Fragments, later ones before or after their first: held, released, expired.
    (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 40 ipid 5 mf", C_IP, GW),
    (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 40 ipid 5 frag 48", C_IP, GW),
    (UPLINK, f"udp {FAR}:53 > {NODE}:5000 len 40 ipid 6 frag 48", FAR, NODE),
    (A, f"udp {A_IP}:8080 > {C_IP}:5000 len 40 ipid 7 frag 48", A_IP, C_IP),
]

mutation = st.tuples(st.integers(0, 200), st.integers(0, 255))
frame_case = st.one_of(
    st.tuples(st.sampled_from([A, B, C, UPLINK]), st.binary(max_size=200)),
    st.builds(
        lambda template, flips, cut: (template, flips, cut),
        st.sampled_from(TEMPLATES), st.lists(mutation, max_size=4), st.integers(0, 120)),
)


def _materialise(case):
    if isinstance(case[1], bytes):
        return case
    (port, text, src, dst), flips, cut = case
    frame = bytearray(h.ZERO_VNET_HDR + build_frame(parse_packet(text), mac(src), mac(dst)))
    for at, value in flips:
        frame[at % len(frame)] = value
    return port, bytes(frame[: max(len(frame) - cut, 0)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(frame_case, min_size=1, max_size=30))
def test_no_input_makes_the_switch_raise(accel_name, cases):
    switch = _switch(accel_name)
    now = 0.0
    for case in cases:
        port, data = _materialise(case)
        now += 0.5
        switch.process_batch(port, [data], now)
        switch.handle_timer(now)
    stats = switch.statistics()
    received = sum(p["rx_packets"] for p in stats["ports"].values())
    assert sum(stats["dispositions"].values()) == received


def _run_lab(switches, rng, count: int, vnet_len: int) -> dict[int, int]:
    """``count`` frames of ``lab.random_case`` into each switch (the same frames, the same
    times); what each sent must be the same. Returns the frames given to each port."""
    corpus = lab.corpus(switches[0])
    received = dict.fromkeys(lab.PORTS, 0)
    now = 0.0
    for port, frame in corpus + [lab.random_case(rng, corpus, vnet_len) for _ in range(count)]:
        now += 0.25
        received[port] += 1
        sent = [[(tx.port, tx.data) for tx in s.process_batch(port, [frame], now)
                 + s.handle_timer(now)] for s in switches]
        assert all(out == sent[0] for out in sent), (port, frame.hex())
    return received


def _assert_counted(switch, received: dict[int, int]) -> None:
    stats = switch.statistics()
    for name, port in stats["ports"].items():
        assert port["rx_packets"] == received[port["id"]], name
    assert sum(stats["dispositions"].values()) == sum(received.values())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=st.randoms(use_true_random=False), count=st.integers(1, 60),
       vnet_len=st.sampled_from(lab.FRAMINGS))
def test_every_port_type_counts_each_frame_once_whatever_it_is(accel_name, rng, count, vnet_len):
    switch = lab.node(accel_name, vnet_len)
    _assert_counted(switch, _run_lab([switch], rng, count, vnet_len))


@settings(max_examples=25, deadline=None)
@given(rng=st.randoms(use_true_random=False), count=st.integers(1, 60),
       vnet_len=st.sampled_from(lab.FRAMINGS))
def test_the_native_node_sends_and_counts_what_the_pure_node_does(rng, count, vnet_len):
    switches = [lab.node("native", vnet_len), lab.node("pure", vnet_len)]
    received = _run_lab(switches, rng, count, vnet_len)
    stats = [s.statistics() for s in switches]
    for key in ("ports", "stages", "dispositions", "conntrack", "fdb", "neighbors"):
        assert stats[0][key] == stats[1][key], key
    _assert_counted(switches[0], received)
