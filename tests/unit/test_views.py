"""The struct-read header views equal the construct declarations, field by field, on any bytes."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from vswitch.wire import headers as h, views

CASES = [
    (views.VirtioNetHeader, h.VIRTIO_NET_HDR, 10),
    (views.Ethernet, h.ETHERNET, 14),
    (views.Arp, h.ARP, h.ARP_LEN),
    (views.Ipv4, h.IPV4, 20),
    (views.Tcp, h.TCP, 20),
    (views.Udp, h.UDP, 8),
    (views.Vxlan, h.VXLAN, 8),
]


@settings(max_examples=300)
@given(case=st.sampled_from(CASES), data=st.binary(min_size=64, max_size=64),
       offset=st.integers(0, 8))
def test_every_view_reads_what_the_declaration_parses(case, data, offset):
    view, declaration, size = case
    parsed = declaration.parse(data[offset: offset + size])
    read = view(data, offset)
    fields = [name for name in parsed if not name.startswith("_")]
    assert set(fields) == set(view.__slots__)
    assert {name: getattr(read, name) for name in fields} == {name: parsed[name]
                                                             for name in fields}
