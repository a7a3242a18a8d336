"""Bogus virtio-net headers: counted by reason, never a crash, never forwarded.

A pod cannot send these through its ``eth0``: the daemon reads the virtio-net header the pod's
kernel wrote from an skb it built and validated itself, so the integration tests of adversarial
pods (``tests/integration/test_adversarial.py``) cannot produce them. They can still arrive
wherever a header is not the kernel's own work (a TAP written by another program, a kernel bug,
a future port type), and a header that lies must not reach an output port, whose kernel would
refuse the write or, worse, segment by it. So they are tested here, through
``Switch.process_batch`` on both accels, on a switched, a routed and a translated path, each
time after a good frame of the same flow has been cached, so that the fast path is tried first:

- GSO with ``gso_size`` 0 (the kernel would divide a super-frame into segments of nothing);
- a checksum start and offset that point past the frame's end;
- a GSO type that does not match the packet (TCPv4 on UDP, UDP on TCP, TCPv6 on IPv4).
"""
from __future__ import annotations

import struct

import pytest

from vswitch.wire import headers as h
from vswitch.wire.text import build_frame, parse_packet

from .test_pipeline_services import A, A_IP, B_IP, C, C_IP, FAR, GW, VIP, _switch, mac

_LEGACY = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_L4_START = h.ETH_HEADER_LEN + 20

# (name, packet text, source port, source IP, next hop's IP for the destination MAC)
PATHS = [
    ("switched", f"tcp {A_IP}:40000 > {B_IP}:8080 flags A len 1400", A, A_IP, B_IP),
    ("switched-udp", f"udp {A_IP}:5000 > {B_IP}:53 len 1400", A, A_IP, B_IP),
    ("routed", f"udp {C_IP}:5000 > {FAR}:53 len 1400", C, C_IP, GW),
    ("translated", f"tcp {C_IP}:40001 > {VIP}:80 flags S", C, C_IP, GW),
]

# (reason counter of eth-input, header for a TCP frame or None, header for a UDP one or None)
BOGUS = [
    ("gso-size-zero",
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_TCPV4, 54, 0, _L4_START, 16),
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_UDP, 42, 0, _L4_START, 6)),
    ("checksum-past-end",
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_NONE, 0, 0, 2000, 16),
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_NONE, 0, 0, _L4_START, 4000)),
    ("gso-type-mismatch",
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_UDP, 54, 1448, _L4_START, 16),
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_TCPV4, 42, 1448, _L4_START, 6)),
    ("gso-type-mismatch",
     _LEGACY.pack(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_TCPV6, 54, 1448, _L4_START, 16), None),
]


def plausible(frame: bytes) -> bool:
    """What a TAP's kernel would accept as the header of an output frame (10 bytes or more)."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = _LEGACY.unpack_from(frame)
    length = len(frame) - h.VNET_HDR_LEN
    if flags & h.VNET_F_NEEDS_CSUM and csum_start + csum_offset + 2 > length:
        return False
    if gso_type == h.VNET_GSO_NONE:
        return True
    proto = frame[h.VNET_HDR_LEN + h.ETH_HEADER_LEN + 9]
    expected = {h.VNET_GSO_TCPV4: h.IpProto.TCP, h.VNET_GSO_UDP: h.IpProto.UDP}
    return gso_size > 0 and expected.get(gso_type & ~h.VNET_GSO_ECN) == proto


def frame_with(header: bytes, text: str, src_ip: str, next_hop: str) -> bytes:
    return header + build_frame(parse_packet(text), mac(src_ip), mac(next_hop))


def eth_input(switch) -> dict[str, int]:
    return dict(switch.statistics()["stages"]["eth-input"])


CASES = [(path, reason, tcp if path[1].startswith("tcp") else udp)
         for path in PATHS for reason, tcp, udp in BOGUS
         if (tcp if path[1].startswith("tcp") else udp) is not None]


@pytest.mark.parametrize("path,reason,header", CASES,
                         ids=[f"{c[0][0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_a_bogus_virtio_net_header_is_counted_and_never_forwarded(accel_name, path, reason,
                                                                   header):
    _, text, port, src_ip, next_hop = path
    switch = _switch(accel_name)
    now = 1.0
    # A good frame of the flow first: its decision is cached, the bogus one meets the cache.
    good = switch.process_batch(port, [frame_with(h.ZERO_VNET_HDR, text, src_ip, next_hop)], now)
    assert good, "the good frame of the flow was not forwarded"
    before = eth_input(switch)
    out = []
    for _ in range(3):
        now += 0.1
        out += switch.process_batch(port, [frame_with(header, text, src_ip, next_hop)], now)
    assert not [tx for tx in out if len(tx.data) >= h.VNET_HDR_LEN and not plausible(tx.data)]
    after = eth_input(switch)
    assert after.get(reason, 0) - before.get(reason, 0) == 3, (before, after)
    assert out == [], out
    stats = switch.statistics()
    received = sum(p["rx_packets"] for p in stats["ports"].values())
    assert sum(stats["dispositions"].values()) == received
    drops = stats["ports"]["c" if port == C else "a"]["rx_drops"]
    assert drops.get(reason) == 3, drops
