"""UDP-tunnel GSO on a real kernel: TCP super-frames encapsulated in VXLAN cross a TAP whole,
into and out of a node built from kernel parts as flannel builds one, with the data intact.

The lab and the relay are those of ``bench/tunnel_gso.py`` (the probe whose findings these tests
pin): a namespace with a ``vxlan`` device (``nolearning``, static FDB, neighbour and route) behind
our uplink TAP and a pod behind a bridge, and a pod of ours whose TAP a relay thread reads,
encapsulates and writes with ``tunnel_offload``. A kernel without the offload fails these tests
with its reason: skipping them would hide that the overlay cannot pass super-frames.
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

from vswitch.runtime.tap import UdpTunnelGsoUnsupported, open_tap
from vswitch.wire import headers as h, tunnel_offload as to

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import tunnel_gso as lab  # noqa: E402  (bench/ is not a package)

pytestmark = pytest.mark.integration

TUNNEL_TCPV4 = h.VNET_GSO_TCPV4 | to.VNET_GSO_UDP_TUNNEL_IPV4


def test_the_kernel_opens_a_tap_for_udp_tunnel_gso():
    try:
        fd = open_tap(f"tgso{secrets.token_hex(4)}", vnet_hdr=True, udp_tunnel_gso=True)
    except UdpTunnelGsoUnsupported as exc:
        pytest.fail(str(exc))
    os.close(fd)


@pytest.mark.parametrize("udp_checksum", [False, True], ids=["no-udp-csum", "udp-csum"])
def test_super_frames_cross_to_a_kernel_node_and_back(udp_checksum):
    record = lab.run_transfers(8, udp_checksum=udp_checksum)
    for direction in ("pod_to_kernel_node", "kernel_node_to_pod"):
        assert record[direction]["bytes"] == 8 << 20, record[direction]
        assert record[direction]["sha256_match"], record[direction]
    from_pod, from_kernel = record["headers_from_pod"], record["headers_from_kernel_node"]
    assert not from_pod["refused"] and not from_kernel["refused"]
    # Our pod's TSO frames went out whole (far beyond one 1500-byte packet) ...
    assert from_pod["largest_frame"] > 16000
    assert any(s["gso_type"] == h.VNET_GSO_TCPV4 for s in from_pod["shapes"])
    # ... and the kernel node's came back as tunnel super-frames, offsets counted from the outer
    # Ethernet header, the inner TCP checksum partial; its vxlan device has udpcsum on, so the
    # kernel asks for the outer UDP checksum to be completed.
    assert from_kernel["largest_frame"] > 16000
    tunnel = [s for s in from_kernel["shapes"] if s["gso_type"] == TUNNEL_TCPV4]
    assert tunnel, from_kernel["shapes"]
    assert all(s["outer_th_offset"] == 34 and s["inner_nh_offset"] == 64
               and s["csum_start"] >= 84 and s["flags"] & h.VNET_F_NEEDS_CSUM
               and s["flags"] & to.VNET_F_UDP_TUNNEL_CSUM for s in tunnel), tunnel


def test_a_bridge_passes_super_frames_whole_or_segments_them():
    record = lab.run_bridged()
    for case in ("no_udp_csum", "udp_csum"):
        tunnel, plain = record[case]["tunnel"], record[case]["plain"]
        # A TAP with the tunnel offload gets the super-frame as written ...
        assert tunnel["frames"] == 1 and tunnel["payload_intact"], tunnel
        # ... one without gets it cut into MTU-sized VXLAN packets with correct checksums.
        assert plain["frames"] == lab.SEGMENTS_PER_FRAME and plain["payload_intact"], plain
        assert plain["frame_lengths"] == [1514]
        outer = "outer UDP valid" if case == "udp_csum" else "outer UDP none"
        assert plain["checksums"] == [f"{outer}, inner TCP valid"], plain
