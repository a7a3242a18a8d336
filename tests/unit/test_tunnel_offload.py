"""UDP-tunnel GSO headers: the 24-byte layout, the arithmetic of encap_vnet and decap_vnet on
the headers Linux 6.18 was seen to give and take, every refusal, round trips, and the outer UDP
checksum that encapsulate_offloaded leaves for the kernel."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vswitch.accel import pure
from vswitch.wire import builders, headers as h, tunnel_offload as to, vxlan
from vswitch.wire.tunnel_offload import Refusal

OUTER = vxlan.OUTER_HEADERS_LEN
NEEDS_CSUM, DATA_VALID = h.VNET_F_NEEDS_CSUM, h.VNET_F_DATA_VALID
VTEP_IP, PEER_IP = bytes([192, 168, 100, 1]), bytes([192, 168, 100, 2])
POD_IP, REMOTE_POD_IP = bytes([10, 244, 1, 5]), bytes([10, 244, 2, 5])


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return h.VIRTIO_NET_HDR.build(dict(flags=flags, gso_type=gso_type, hdr_len=hdr_len,
                                       gso_size=gso_size, csum_start=csum_start,
                                       csum_offset=csum_offset))


def tunnel_vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0,
                outer_th_offset=0, inner_nh_offset=0) -> bytes:
    return to.VIRTIO_NET_HDR_TUNNEL.build(dict(
        flags=flags, gso_type=gso_type, hdr_len=hdr_len, gso_size=gso_size,
        csum_start=csum_start, csum_offset=csum_offset, num_buffers=0, hash_value=0,
        hash_report=0, padding=0, outer_th_offset=outer_th_offset,
        inner_nh_offset=inner_nh_offset))


# What a pod's kernel hands its TAP for a TSO super-frame over a 1450-byte MTU (TCP timestamps on),
# and what the kernel gives a tunnel-GSO uplink for the same stream from a Linux vxlan device.
POD_TSO = vnet(NEEDS_CSUM, h.VNET_GSO_TCPV4, 66, 1398, 34, 16)
KERNEL_TSO = tunnel_vnet(NEEDS_CSUM | to.VNET_F_UDP_TUNNEL_CSUM,
                         h.VNET_GSO_TCPV4 | to.VNET_GSO_UDP_TUNNEL_IPV4, 116, 1398, 84, 16, 34, 64)


def test_the_header_is_struct_virtio_net_hdr_v1_hash_tunnel():
    built = tunnel_vnet(1, 2, 0x0304, 0x0506, 0x0708, 0x090A, 0x0B0C, 0x0D0E)
    assert len(built) == to.VNET_TUNNEL_HDR_LEN == 24
    # The legacy header first, little endian; then num_buffers, hash_value, hash_report and
    # padding (12 bytes, zero), then the two tunnel offsets.
    assert built[:10] == bytes([1, 2, 4, 3, 6, 5, 8, 7, 0x0A, 9])
    assert built[10:20] == bytes(10)
    assert built[20:] == bytes([0x0C, 0x0B, 0x0E, 0x0D])
    assert to.VNET_GSO_UDP_TUNNEL_IPV4 == 0x20 and to.VNET_F_UDP_TUNNEL_CSUM == 0x08


def test_a_tso_super_frame_becomes_a_tunnel_gso_frame():
    got = to.encap_vnet(POD_TSO, 64374)
    assert got == tunnel_vnet(NEEDS_CSUM, 0x21, 66 + OUTER, 1398, 34 + OUTER, 16, 34, 64)


def test_udp_tunnel_csum_asks_for_the_outer_checksum():
    got = to.encap_vnet(POD_TSO, 64374, udp_tunnel_csum=True)
    assert got[0] == NEEDS_CSUM | to.VNET_F_UDP_TUNNEL_CSUM


@pytest.mark.parametrize("inner_type", [h.VNET_GSO_TCPV4, h.VNET_GSO_TCPV6,
                                        h.VNET_GSO_TCPV4 | h.VNET_GSO_ECN])
def test_the_inner_gso_type_is_kept_under_the_tunnel_bit(inner_type):
    got = to.encap_vnet(vnet(NEEDS_CSUM, inner_type, 74, 1000, 54, 16), 2000)
    assert got[1] == inner_type | to.VNET_GSO_UDP_TUNNEL_IPV4


def test_a_partial_checksum_alone_moves_by_the_outer_headers():
    got = to.encap_vnet(vnet(NEEDS_CSUM, 0, 0, 0, 34, 16), 74)
    assert got == tunnel_vnet(NEEDS_CSUM, 0, 0, 0, 34 + OUTER, 16)
    udp = to.encap_vnet(vnet(NEEDS_CSUM, 0, 42, 0, 34, 6), 100, udp_tunnel_csum=True)
    assert udp == tunnel_vnet(NEEDS_CSUM, 0, 42 + OUTER, 0, 34 + OUTER, 6)


@pytest.mark.parametrize("flags", [0, DATA_VALID])
def test_a_complete_frame_gets_an_all_zero_header(flags):
    assert to.encap_vnet(vnet(flags), 100) == to.ZERO_VNET_TUNNEL_HDR


@pytest.mark.parametrize("header, length, reason", [
    (vnet(NEEDS_CSUM, h.VNET_GSO_UDP, 42, 1000, 34, 6), 3000, Refusal.GSO_TYPE),
    (vnet(NEEDS_CSUM, to.VNET_GSO_UDP_L4, 42, 1000, 34, 6), 3000, Refusal.GSO_TYPE),
    (vnet(0, h.VNET_GSO_TCPV4, 54, 1000, 0, 0), 3000, Refusal.GSO_WITHOUT_CSUM),
    (vnet(0x04), 100, Refusal.UNKNOWN_FLAGS),
    (POD_TSO, vxlan.MAX_INNER_FRAME_LEN + 1, Refusal.TOO_LONG),
    (vnet(NEEDS_CSUM, 0, 0, 0, 65535, 16), 1500, Refusal.CSUM_OUTSIDE_INNER),
    (vnet(NEEDS_CSUM, 0, 0, 0, 34, 16), 51, Refusal.CSUM_OUTSIDE_INNER),
    (vnet(NEEDS_CSUM, h.VNET_GSO_TCPV4, 54, 1000, 14, 16), 3000, Refusal.CSUM_OUTSIDE_INNER),
])
def test_encap_refusals(header, length, reason):
    assert to.encap_vnet(header, length) is reason


def test_the_longest_inner_frame_still_fits():
    assert not isinstance(to.encap_vnet(POD_TSO, vxlan.MAX_INNER_FRAME_LEN), Refusal)


def test_the_kernels_tunnel_super_frame_becomes_the_pods_tso_frame():
    assert to.decap_vnet(KERNEL_TSO) == POD_TSO


def test_a_partial_inner_checksum_moves_back():
    # What the kernel gives for a small segment from a vxlan device with udpcsum: the inner TCP
    # checksum partial, the outer UDP one done (local checksum offload).
    got = to.decap_vnet(tunnel_vnet(NEEDS_CSUM, 0, 0, 0, 84, 16))
    assert got == vnet(NEEDS_CSUM, 0, 0, 0, 34, 16)


def test_a_partial_outer_checksum_goes_with_the_outer_headers():
    assert to.decap_vnet(tunnel_vnet(NEEDS_CSUM, 0, 0, 0, 34, 6)) == vnet()


@pytest.mark.parametrize("flags, inner_flags", [
    (0, 0),
    (DATA_VALID, 0),  # only the outer checksum was checked
    (DATA_VALID | to.VNET_F_UDP_TUNNEL_CSUM, DATA_VALID),  # csum_level 1: the inner one too
])
def test_checked_checksums(flags, inner_flags):
    assert to.decap_vnet(tunnel_vnet(flags)) == vnet(inner_flags)


@pytest.mark.parametrize("header, reason", [
    (tunnel_vnet(NEEDS_CSUM, 0x41, 116, 1398, 84, 16, 34, 64), Refusal.OUTER_IPV6),
    (tunnel_vnet(NEEDS_CSUM, to.VNET_GSO_UDP_L4 | 0x20, 92, 1398, 84, 6, 34, 64),
     Refusal.GSO_TYPE),
    (tunnel_vnet(NEEDS_CSUM, h.VNET_GSO_TCPV4, 116, 1398, 84, 16), Refusal.GSO_TYPE),
    (tunnel_vnet(NEEDS_CSUM, 0x20, 0, 0, 84, 16, 34, 64), Refusal.GSO_TYPE),
    (tunnel_vnet(0, 0x21, 116, 1398, 0, 0, 34, 64), Refusal.GSO_WITHOUT_CSUM),
    (tunnel_vnet(NEEDS_CSUM, 0x21, 120, 1398, 88, 16, 38, 68), Refusal.OFFSETS),
    (tunnel_vnet(NEEDS_CSUM, 0x21, 116, 1398, 40, 16, 34, 64), Refusal.CSUM_OUTSIDE_INNER),
    (tunnel_vnet(0x04), Refusal.UNKNOWN_FLAGS),
    (tunnel_vnet(NEEDS_CSUM, 0, 0, 0, 60, 16), Refusal.CSUM_OUTSIDE_INNER),
])
def test_decap_refusals(header, reason):
    assert to.decap_vnet(header) is reason


def test_other_outer_lengths_shift_the_offsets():
    # An outer IPv4 header with 4 bytes of options: everything moves by 4 more.
    got = to.encap_vnet(POD_TSO, 64374, outer_len=OUTER + 4)
    hdr = to.VIRTIO_NET_HDR_TUNNEL.parse(got)
    assert (hdr.outer_th_offset, hdr.inner_nh_offset, hdr.csum_start) == (38, 68, 88)
    assert to.decap_vnet(got, outer_len=OUTER + 4) == POD_TSO
    assert to.decap_vnet(got) is Refusal.OFFSETS


@settings(max_examples=300, deadline=None)
@given(inner_type=st.sampled_from([h.VNET_GSO_TCPV4, h.VNET_GSO_TCPV6]),
       ecn=st.booleans(), udp_csum=st.booleans(),
       gso_size=st.integers(1, 9000), csum_start=st.integers(34, 200),
       hdr_len=st.integers(0, 300), csum_offset=st.sampled_from([6, 16]))
def test_decap_undoes_encap_for_gso(inner_type, ecn, udp_csum, gso_size, csum_start, hdr_len,
                                    csum_offset):
    inner = vnet(NEEDS_CSUM, inner_type | (h.VNET_GSO_ECN if ecn else 0), hdr_len, gso_size,
                 csum_start, csum_offset)
    outer = to.encap_vnet(inner, 60000, udp_tunnel_csum=udp_csum)
    assert to.decap_vnet(outer) == inner


@settings(max_examples=200, deadline=None)
@given(csum_start=st.integers(34, 1000), csum_offset=st.sampled_from([6, 16]),
       hdr_len=st.integers(0, 300), needs_csum=st.booleans())
def test_decap_undoes_encap_without_gso(csum_start, csum_offset, hdr_len, needs_csum):
    inner = vnet(NEEDS_CSUM, 0, hdr_len, 0, csum_start, csum_offset) if needs_csum else vnet()
    assert to.decap_vnet(to.encap_vnet(inner, 1500)) == inner


@given(st.binary(min_size=24, max_size=24))
def test_decap_never_raises(header):
    got = to.decap_vnet(header)
    assert isinstance(got, Refusal) or len(got) == h.VNET_HDR_LEN


@given(st.binary(min_size=10, max_size=10), st.integers(0, 70000))
def test_encap_never_raises(header, length):
    got = to.encap_vnet(header, length)
    assert isinstance(got, Refusal) or len(got) == to.VNET_TUNNEL_HDR_LEN


def tcp_frame(payload: bytes, partial: bool) -> bytes:
    """An inner frame with a TCP segment whose checksum is complete or partial."""
    segment = builders.tcp(src=POD_IP, dst=REMOTE_POD_IP, src_port=40000, dst_port=5201,
                           flags=0x18, payload=payload)
    if partial:
        pseudo = pure.pseudo_header_sum(POD_IP, REMOTE_POD_IP, h.IpProto.TCP, len(segment))
        segment = segment[:16] + pseudo.to_bytes(2, "big") + segment[18:]
    ip = builders.ipv4(src=POD_IP, dst=REMOTE_POD_IP, protocol=h.IpProto.TCP, payload=segment,
                       df=True)
    return bytes(6) + bytes(range(1, 7)) + b"\x08\x00" + ip


OUTER_ARGS = dict(outer_src_mac=bytes.fromhex("020000000001"),
                  outer_dst_mac=bytes.fromhex("020000000002"), src_ip=VTEP_IP, dst_ip=PEER_IP,
                  src_port=50000, dst_port=h.VXLAN_IANA_PORT, vni=1, ident=7)


def _outer_udp(frame: bytes) -> tuple[bytes, int]:
    udp = frame[34:]
    return udp, int.from_bytes(udp[6:8], "big")


def test_a_gso_frame_leaves_the_outer_checksum_to_the_kernel():
    inner = tcp_frame(bytes(20000), partial=True)
    out = to.encapsulate_offloaded(vnet(NEEDS_CSUM, h.VNET_GSO_TCPV4, 54, 1398, 34, 16), inner,
                                   udp_checksum=True, **OUTER_ARGS)
    header, frame = out[:24], out[24:]
    assert header[0] == NEEDS_CSUM | to.VNET_F_UDP_TUNNEL_CSUM
    udp, csum = _outer_udp(frame)
    assert csum == to.partial_udp_checksum(VTEP_IP, PEER_IP, len(udp))
    plain = vxlan.encapsulate(inner, **OUTER_ARGS)
    assert frame[:40] + frame[42:] == plain[:40] + plain[42:]


def test_without_udp_checksum_the_field_stays_zero():
    inner = tcp_frame(bytes(20000), partial=True)
    out = to.encapsulate_offloaded(vnet(NEEDS_CSUM, h.VNET_GSO_TCPV4, 54, 1398, 34, 16), inner,
                                   **OUTER_ARGS)
    assert out[24:] == vxlan.encapsulate(inner, **OUTER_ARGS)
    assert out[0] == NEEDS_CSUM


def test_a_complete_frame_gets_its_outer_checksum_in_software():
    inner = tcp_frame(b"complete", partial=False)
    out = to.encapsulate_offloaded(vnet(), inner, udp_checksum=True, **OUTER_ARGS)
    assert out[:24] == to.ZERO_VNET_TUNNEL_HDR
    udp, csum = _outer_udp(out[24:])
    assert csum and pure.l4_checksum(VTEP_IP, PEER_IP, h.IpProto.UDP, udp) == 0


def test_a_partial_frame_outside_gso_gets_no_outer_checksum():
    inner = tcp_frame(b"partial", partial=True)
    out = to.encapsulate_offloaded(vnet(NEEDS_CSUM, 0, 0, 0, 34, 16), inner, udp_checksum=True,
                                   **OUTER_ARGS)
    assert _outer_udp(out[24:])[1] == 0


def test_refusals_pass_through():
    inner = tcp_frame(b"x", partial=True)
    assert to.encapsulate_offloaded(vnet(NEEDS_CSUM, h.VNET_GSO_UDP, 42, 1000, 34, 6), inner,
                                    **OUTER_ARGS) is Refusal.GSO_TYPE


def test_frames_that_are_not_encapsulated_keep_their_header_across_sizes():
    wide = to.widen_vnet(POD_TSO)
    assert len(wide) == to.VNET_TUNNEL_HDR_LEN and wide[:10] == POD_TSO and not any(wide[10:])
    assert to.narrow_vnet(wide) == POD_TSO
    assert to.narrow_vnet(to.ZERO_VNET_TUNNEL_HDR) == vnet()


@pytest.mark.parametrize("header, reason", [
    (KERNEL_TSO, Refusal.GSO_TYPE),
    (tunnel_vnet(DATA_VALID | to.VNET_F_UDP_TUNNEL_CSUM), Refusal.UNKNOWN_FLAGS),
])
def test_tunnel_frames_do_not_narrow(header, reason):
    assert to.narrow_vnet(header) is reason
