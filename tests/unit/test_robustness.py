"""Whatever arrives on a port, the switch never raises: a malformed frame is counted and dropped.

Random bytes, and valid frames of every kind the pipeline handles (switched, routed, to services,
from the uplink) with bytes flipped or cut short, go into a switch with segments, services and an
uplink. The dispositions must still add up to what the ports received.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

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
