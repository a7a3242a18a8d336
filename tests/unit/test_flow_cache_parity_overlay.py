"""The fast path decides what the pipeline decides for traffic to other nodes too.

Two copies of node lab1 get the same bursts, one with the flow cache and one without: pods'
packets to lab2's pods (routed, encapsulated, sometimes too big, expiring, with a partial
checksum or a GSO header), translated connections to a service whose backend is on lab2, and the
underlay's ARP answers arriving in between (lab2's address resolved, its MAC changed). Every
burst must produce the same bytes on the same ports, and the port counters must end equal."""
from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings, strategies as st

from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes
from vswitch.wire.text import build_frame, parse_packet

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
)


def run(switch, bursts):
    out = []
    for step, (port, specs) in enumerate(bursts):
        frames = ([pod_frame(s) for s in specs] if port == POD else [arp_reply(i) for i in specs])
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
def test_fast_path_equals_slow_path_for_traffic_to_other_nodes(accel_name, bursts):
    cached = node("lab1", accel_name, services=SERVICE)
    uncached = node("lab1", accel_name, services=SERVICE)
    uncached.flow_cache.capacity = 0
    assert run(cached, bursts) == run(uncached, bursts)
    with_cache, without = cached.statistics(), uncached.statistics()
    assert with_cache["ports"] == without["ports"]


def test_a_repeated_flow_to_another_node_hits_the_cache(accel_name):
    switch = node("lab1", accel_name)
    spec = ("10.244.2.10", "udp", 10, 64, False, "none", 40000)
    run(switch, [(POD, [spec]), (UPLINK, [0]), (POD, [spec] * 3)])
    assert switch.flow_cache.hits == 2
