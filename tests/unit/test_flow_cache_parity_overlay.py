"""The fast path decides what the pipeline decides for traffic to and from other nodes too.

Two copies of node lab1 get the same bursts, one with the flow cache and one without: pods'
packets to lab2's pods (routed, encapsulated, sometimes too big, expiring, with a partial
checksum or a GSO header), translated connections to a service whose backend is on lab2, the
underlay's ARP answers arriving in between (lab2's address resolved, its MAC changed), and VXLAN
from lab2, plain or with something to notice (another VNI, a CE mark, a UDP checksum right or
wrong, a partial
inner checksum, an inner TTL about to expire, an inner frame not for our VTEP). Every
burst must produce the same bytes on the same ports, and the port counters must end equal."""
from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import HealthCheck, example, given, settings, strategies as st

from vswitch.accel import pure
from vswitch.wire import vxlan

from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from .test_flow_cache_parity import same_counters
from .test_pipeline_overlay import POD, UPLINK, mac, node

SERVICE = """\
[[services]]
name = "remote"
cluster_ip = "10.96.0.20"
endpoints = ["10.244.2.10", "10.244.2.11"]
ports = [ { name = "t", port = 80, target_port = 8080 },
          { name = "u", protocol = "udp", port = 53, target_port = 5353 } ]
"""
LAB2_MACS = [mac("192.0.2.3"), mac_bytes("0a:58:c0:00:02:99")]


def _vnet(kind: str) -> bytes:
    if kind == "csum":
        return h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=0, hdr_len=0,
                                           gso_size=0, csum_start=34, csum_offset=6))
    if kind == "gso":
        return h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=h.VNET_GSO_TCPV4,
                                           hdr_len=54, gso_size=1400, csum_start=34,
                                           csum_offset=16))
    return h.ZERO_VNET_HDR


def pod_frame(spec) -> bytes:
    dst, proto, size, ttl, df, vnet, sport = spec
    ports = f":{sport} > {dst}:{80 if dst.startswith('10.96') else 5353}"
    text = {"udp": f"udp 10.244.1.10{ports} len {size}",
            "tcp": f"tcp 10.244.1.10{ports} flags {'S' if size == 0 else 'A'} len {size}",
            "icmp": f"icmp 10.244.1.10 > {dst} len {size}"}[proto]
    text += f" ttl {ttl}" + (" df" if df else "")
    if proto == "udp" and dst.startswith("10.96"):
        text = text.replace(":80 ", ":53 ")
    return _vnet(vnet) + build_frame(parse_packet(text), mac("10.244.1.10"),
                                     mac_bytes("0a:58:0a:f4:01:01"))


def arp_reply(index: int) -> bytes:
    text = f"arp reply 192.0.2.3 is-at {':'.join(f'{b:02x}' for b in LAB2_MACS[index])} to 192.0.2.2"
    return h.ZERO_VNET_HDR + build_frame(parse_packet(text), LAB2_MACS[index], mac("192.0.2.2"))


def tunnelled(spec) -> bytes:
    """A VXLAN packet from lab2 to lab1, plain or with one thing about it to notice."""
    dst, proto, ttl, variant, sport = spec
    text = {"udp": f"udp 10.244.2.10:{sport} > {dst}:53 len 20",
            "icmp": f"icmp 10.244.2.10 > {dst}",
            "tcp": f"tcp 10.244.2.10:{sport} > {dst}:80 flags A len 10"}[proto] + f" ttl {ttl}"
    inner = build_frame(parse_packet(text), mac("192.0.2.3"),
                        mac("192.0.2.2") if variant != "not-for-us" else mac("192.0.2.9"))
    packet = bytearray(vxlan.encapsulate(
        inner, outer_src_mac=mac("192.0.2.3"), outer_dst_mac=mac("192.0.2.2"),
        src_ip=IPv4Address("192.0.2.3").packed, dst_ip=IPv4Address("192.0.2.2").packed,
        src_port=50000 + sport, dst_port=4789, vni=7 if variant == "wrong-vni" else 1, ident=3,
        udp_checksum=variant in ("udp-checksum", "bad-udp-checksum")))
    if variant == "bad-udp-checksum":
        packet[40] ^= 0x01  # the outer UDP checksum's low byte
    if variant == "ce":
        packet[15] |= 0x03
        packet[24:26] = b"\x00\x00"
        packet[24:26] = pure.checksum(bytes(packet[14:34])).to_bytes(2, "big")
    vnet = h.ZERO_VNET_HDR
    if variant == "partial":
        vnet = h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=0, hdr_len=0,
                                           gso_size=0, csum_start=84, csum_offset=6))
    return vnet + bytes(packet)


tunnel_spec = st.tuples(
    st.sampled_from(["10.244.1.10", "10.244.1.10", "10.244.1.99"]),
    st.sampled_from(["udp", "icmp", "tcp"]),
    st.sampled_from([64, 64, 2, 1]),
    st.sampled_from(["plain", "plain", "plain", "wrong-vni", "ce", "udp-checksum",
                     "bad-udp-checksum", "partial", "not-for-us"]),
    st.sampled_from([1, 2]),
)

pod_spec = st.tuples(
    st.sampled_from(["10.244.2.10", "10.244.2.11", "10.96.0.20"]),
    st.sampled_from(["udp", "udp", "tcp", "icmp"]),
    st.sampled_from([0, 10, 1000, 1422, 1423, 3000]),
    st.sampled_from([64, 64, 64, 2, 1]),
    st.booleans(),
    st.sampled_from(["none", "none", "csum", "gso"]),
    st.sampled_from([40000, 40001]),
)
burst = st.one_of(
    st.tuples(st.just(POD), st.lists(pod_spec, min_size=1, max_size=5)),
    st.tuples(st.just(UPLINK), st.lists(st.sampled_from([0, 0, 1]), min_size=1, max_size=2)),
    st.tuples(st.just("tunnel"), st.lists(tunnel_spec, min_size=1, max_size=5)),
)


def run(switch, bursts):
    out = []
    for step, (port, specs) in enumerate(bursts):
        if port == "tunnel":
            port, frames = UPLINK, [tunnelled(s) for s in specs]
        elif port == POD:
            frames = [pod_frame(s) for s in specs]
        else:
            frames = [arp_reply(i) for i in specs]
        out.append([(t.port, t.data) for t in switch.process_batch(port, frames, step * 0.1)])
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bursts=st.lists(burst, min_size=4, max_size=20))
@example(bursts=[(POD, [("10.244.2.10", "udp", 10, 64, False, "none", 40000)]),
                 (UPLINK, [0]),
                 (POD, [("10.244.2.10", "udp", 10, 64, False, "none", 40000)] * 2),
                 (UPLINK, [1]),
                 (POD, [("10.244.2.10", "udp", 10, 64, False, "csum", 40000)] * 2)])
@example(bursts=[("tunnel", [("10.244.1.10", "udp", 64, "plain", 1)] * 3),
                 ("tunnel", [("10.244.1.10", "udp", 64, "ce", 1),
                             ("10.244.1.10", "udp", 64, "partial", 1)]),
                 ("tunnel", [("10.244.1.10", "udp", 1, "plain", 1),
                             ("10.244.1.10", "udp", 64, "udp-checksum", 1),
                             ("10.244.1.10", "udp", 64, "bad-udp-checksum", 1)])])
def test_fast_path_equals_slow_path_for_traffic_between_nodes(bursts):
    """The C datapath's cache, its pure twin's and none: the same bytes; the two caches the same
    counters, hits included; the pipeline alone the same port counters."""
    cached = node("lab1", "native", services=SERVICE)
    twin = node("lab1", "pure", services=SERVICE)
    uncached = node("lab1", "pure", services=SERVICE)
    uncached.flow_cache.capacity = 0
    want = run(uncached, bursts)
    assert run(cached, bursts) == want
    assert run(twin, bursts) == want
    with_cache, without = cached.statistics(), uncached.statistics()
    assert with_cache["ports"] == without["ports"]
    assert same_counters(cached, twin)


def test_a_repeated_flow_from_another_node_hits_the_cache_through_the_tunnel(accel_name):
    switch = node("lab1", accel_name)
    spec = ("10.244.1.10", "udp", 64, "plain", 1)
    out = run(switch, [("tunnel", [spec] * 4)])
    assert [port for port, _ in out[0]] == [POD] * 4
    assert switch.flow_cache.hits == 3


def test_a_repeated_flow_to_another_node_hits_the_cache(accel_name):
    switch = node("lab1", accel_name)
    spec = ("10.244.2.10", "udp", 10, 64, False, "none", 40000)
    run(switch, [(POD, [spec]), (UPLINK, [0]), (POD, [spec] * 3)])
    assert switch.flow_cache.hits == 2
