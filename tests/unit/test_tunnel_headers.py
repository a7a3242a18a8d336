"""The struct-packed header conversions of the overlay's hot path (``pipeline.tunnel``) against
their construct reference (``wire.tunnel_offload``), on every kind of header."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from vswitch.pipeline import tunnel
from vswitch.wire import headers as h, tunnel_offload as to

_HEADER = struct.Struct("<BBHHHHHIHHHH")
flags = st.sampled_from([0, 1, 2, 3, 8, 9, 0x0B, 0x10, 0x81])
gso_types = st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x21, 0x24, 0x41, 0x20, 0x23, 0xA1, 0x61])
u16 = st.one_of(st.integers(0, 200), st.integers(0, 0xFFFF))
offsets = st.one_of(st.just((34, 64)), st.tuples(u16, u16))


def header(f, g, hdr_len, gso_size, csum_start, csum_offset, tunnel_offsets) -> bytes:
    return _HEADER.pack(f, g, hdr_len, gso_size, csum_start, csum_offset, 0, 0, 0, 0,
                        *tunnel_offsets)


@settings(max_examples=400)
@given(flags, gso_types, u16, u16, u16, st.sampled_from([6, 16, 0xFFFF]),
       st.one_of(st.integers(60, 65535), st.integers(0, 0x10000)))
def test_the_encapsulated_headers_are_the_references(f, g, hdr_len, gso_size, csum_start,
                                                       csum_offset, inner_len):
    vnet = header(f, g, hdr_len, gso_size, csum_start, csum_offset, (0, 0))
    ours = tunnel.outer_vnet(vnet, inner_len)
    if g == h.VNET_GSO_NONE:
        # A plain frame keeps its header, its checksum start moved (see the stage tests), unless
        # the checksum lies outside the frame, which the reference refuses too.
        reference = to.encap_vnet(vnet[:10], inner_len)
        assert (ours is None) == isinstance(reference, to.Refusal)
        assert ours is None or len(ours) == len(vnet)
        return
    reference = to.encap_vnet(vnet[:10], inner_len)
    assert ours == (None if isinstance(reference, to.Refusal) else reference)


@settings(max_examples=400)
@given(flags, gso_types, u16, u16, u16, st.sampled_from([6, 16]), offsets)
def test_the_decapsulated_headers_are_the_references(f, g, hdr_len, gso_size, csum_start,
                                                      csum_offset, tunnel_offsets):
    vnet = header(f, g, hdr_len, gso_size, csum_start, csum_offset, tunnel_offsets)
    ours = tunnel.inner_vnet(vnet)
    if g == h.VNET_GSO_NONE and not f & ~(h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID):
        return  # the plain case: its checksum start moves back, see the stage tests
    reference = to.decap_vnet(vnet)
    assert ours == (None if isinstance(reference, to.Refusal) else to.widen_vnet(reference))
