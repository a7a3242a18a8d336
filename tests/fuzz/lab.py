"""The node every fuzz run drives, the valid frames it starts from, and the ways they are broken.

One node has every kind of port the daemon opens: three pods on the pod segment, the host port,
and an uplink that carries both the outside world (NodePorts, masquerade) and a VXLAN overlay to
a peer node. Services (a TCP ClusterIP that is also a NodePort, a UDP ClusterIP with a renamed
port) make the pipeline translate. ``corpus`` lists frames that each exercise one path: ARP,
switched, routed, translated, to and from the overlay, fragments first and later, with virtio-net
headers that ask for checksum offload and GSO, in the 10- or the 24-byte framing the node uses.
``mutated`` breaks them as a hostile pod or a broken peer would: flipped bytes (biased to the
headers), cuts, garbage tails, splices of two frames and random virtio-net headers; ``random_case``
also draws plain random bytes. Everything takes its randomness from the ``random.Random`` it is
given, so a run is reproduced by its seed.
"""
from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

from vswitch import accel as accel_impls
from vswitch.config import parse_topology
from vswitch.core.port_spec import VNET_HDR_LEN, VNET_TUNNEL_HDR_LEN, PortKind, PortSpec
from vswitch.core.switch import Switch
from vswitch.model import mac_for_ip
from vswitch.wire import headers as h, vxlan
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

HOST, A, B, C, UPLINK = 1, 2, 3, 4, 9
PORTS = (HOST, A, B, C, UPLINK)
A_IP, B_IP, C_IP = "10.244.1.10", "10.244.1.11", "10.244.1.50"
GW, NODE, PEER, FAR = "10.244.1.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"
REMOTE_POD = "10.244.2.10"
VIP, DNS_VIP, REMOTE_VIP = "10.96.0.30", "10.96.0.53", "10.96.0.20"  # .10: cluster DNS
INTERNET = "198.51.100.7"
FRAMINGS = (VNET_HDR_LEN, VNET_TUNNEL_HDR_LEN)

TOPOLOGY = f"""
[node]
name = "lab1"
pod_cidr = "10.244.1.0/24"

[dataplane]
mac_limit = 8

[cluster]
cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/16"

[uplink]
address = "{NODE}/24"
gateway = "{FAR}"

[overlay]

[[peers]]
name = "lab2"
address = "{PEER}"
pod_cidr = "10.244.2.0/24"

[[pods]]
name = "a"
ip = "{A_IP}"
labels = {{ app = "web" }}

[[pods]]
name = "b"
ip = "{B_IP}"
labels = {{ app = "web" }}

[[pods]]
name = "c"
ip = "{C_IP}"

[[services]]
name = "web"
cluster_ip = "{VIP}"
type = "NodePort"
selector = {{ app = "web" }}
ports = [ {{ port = 80, target_port = 8080, node_port = 30080 }} ]

[[services]]
name = "dns"
cluster_ip = "{DNS_VIP}"
selector = {{ app = "web" }}
ports = [ {{ protocol = "udp", port = 53, target_port = 5353 }} ]

[[services]]
name = "remote"
cluster_ip = "{REMOTE_VIP}"
endpoints = ["{REMOTE_POD}"]
ports = [ {{ port = 80, target_port = 8080 }} ]
"""


def mac(ip: str) -> bytes:
    return mac_bytes(mac_for_ip(IPv4Address(ip)))


def node(accel_name: str, vnet_len: int = VNET_HDR_LEN) -> Switch:
    """The node with its five ports, all framed with ``vnet_len``-byte virtio-net headers."""
    topology = parse_topology(TOPOLOGY, "lab1.toml")
    switch = Switch(topology, accel_impls.load(accel_name))
    host = topology.host_port
    switch.add_port(PortSpec(HOST, "host", PortKind.HOST, host.mac, host.address.ip, True,
                             vnet_hdr_len=vnet_len))
    for port_id, pod in zip((A, B, C), topology.pods):
        switch.add_port(PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, True,
                                 vnet_hdr_len=vnet_len))
    switch.add_port(PortSpec(UPLINK, "uplink", PortKind.UPLINK, mac_for_ip(IPv4Address(FAR)),
                             IPv4Address(FAR), True, port_security=False,
                             segment=topology.uplink_segment_index(), vnet_hdr_len=vnet_len))
    return switch


def vnet(vnet_len: int, *, csum: tuple[int, int] | None = None, gso: int = h.VNET_GSO_NONE,
         gso_size: int = 0, hdr_len: int = 0) -> bytes:
    """A virtio-net header: ``csum`` is (csum_start, csum_offset) for a partial checksum."""
    flags = 1 if csum else 0
    start, offset = csum or (0, 0)
    header = struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, offset)
    return header.ljust(vnet_len, b"\0")


def _frame(text: str, src_mac: bytes, dst_mac: bytes) -> bytes:
    return build_frame(parse_packet(text), src_mac, dst_mac)


def _tunnelled(text: str, inner_macs: tuple[bytes, bytes]) -> bytes:
    inner = _frame(text, *inner_macs)
    return vxlan.encapsulate(inner, outer_src_mac=mac(PEER), outer_dst_mac=mac(NODE),
                             src_ip=IPv4Address(PEER).packed, dst_ip=IPv4Address(NODE).packed,
                             src_port=50000, dst_port=h.VXLAN_IANA_PORT, vni=1, ident=9)


def corpus(switch: Switch) -> list[tuple[int, bytes]]:
    """Valid frames for ``node``'s switch as (port, frame with its virtio-net header), one per
    path of the pipeline. The first ones answer the node's ARP requests, so that a run that
    starts with them finds its neighbours resolved."""
    topology = switch.topology
    vnet_len = switch.ports[A].vnet_hdr_len
    host_ip = str(topology.host_port.address.ip)
    peer_vtep = mac_bytes(topology.peers[0].vtep_mac)
    our_vtep = mac_bytes(topology.overlay.vtep_mac)
    plain = vnet(vnet_len)
    gw = mac_bytes(topology.node.gateway_mac)
    tcp_csum = vnet(vnet_len, csum=(34, 16))
    udp_csum = vnet(vnet_len, csum=(34, 6))
    tso = vnet(vnet_len, csum=(34, 16), gso=h.VNET_GSO_TCPV4, gso_size=1448, hdr_len=66)
    tso_overlay = vnet(vnet_len, csum=(34, 16), gso=h.VNET_GSO_TCPV4, gso_size=1398, hdr_len=66)
    pod = [
        *((port, f"arp reply {ip} is-at {mac_for_ip(IPv4Address(ip))} to {GW}", gw, plain)
          for port, ip in ((A, A_IP), (B, B_IP), (C, C_IP), (HOST, host_ip))),
        (A, f"arp who-has {GW} tell {A_IP}", BROADCAST_MAC, plain),
        (A, f"arp who-has {B_IP} tell {A_IP}", BROADCAST_MAC, plain),
        (B, f"arp reply {B_IP} is-at {mac_for_ip(IPv4Address(B_IP))} to {A_IP}", mac(A_IP),
         plain),
        (A, f"udp {A_IP}:1000 > {B_IP}:2000 len 30", mac(B_IP), udp_csum),
        (B, f"udp {B_IP}:2000 > {A_IP}:1000 len 30", mac(A_IP), plain),
        (A, f"tcp {A_IP}:40000 > {B_IP}:8080 flags A len 3000 df", mac(B_IP), tso),
        (C, f"tcp {C_IP}:40000 > {VIP}:80 flags S", gw, tcp_csum),
        (A, f"tcp {A_IP}:8080 > {C_IP}:40000 flags SA", gw, plain),
        (C, f"tcp {C_IP}:40000 > {VIP}:80 flags A len 100", gw, plain),
        (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 8", gw, plain),
        (C, f"icmp {C_IP} > {INTERNET}", gw, plain),
        (A, f"icmp {A_IP} > {REMOTE_POD} len 1000", gw, plain),
        (A, f"udp {A_IP}:1 > {REMOTE_POD}:2 len 30", gw, udp_csum),
        (A, f"tcp {A_IP}:40001 > {REMOTE_POD}:8080 flags A len 4000 df", gw, tso_overlay),
        (C, f"tcp {C_IP}:40002 > {REMOTE_VIP}:80 flags S", gw, plain),
        (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 40 ipid 5 mf", gw, plain),
        (C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 40 ipid 5 frag 48", gw, plain),
        (A, f"udp {A_IP}:8080 > {C_IP}:5000 len 40 ipid 7 frag 48", mac(C_IP), plain),
        (A, f"udp {A_IP}:8080 > {REMOTE_POD}:5000 len 40 ipid 8 mf", gw, plain),
        (HOST, f"arp who-has {A_IP} tell {host_ip}", BROADCAST_MAC, plain),
        (HOST, f"icmp {host_ip} > {A_IP}", mac(A_IP), plain),
        (HOST, f"tcp {host_ip}:33000 > {VIP}:80 flags S", gw, plain),
        (HOST, f"udp {host_ip}:33000 > {B_IP}:53 len 12", mac(B_IP), udp_csum),
    ]
    frames = [(port, header + _frame(text, mac(_source(text)), dst))
              for port, text, dst, header in pod]
    inner_macs = (peer_vtep, our_vtep)
    uplink = [
        _frame(f"arp reply {FAR} is-at {mac_for_ip(IPv4Address(FAR))} to {NODE}", mac(FAR),
               mac(NODE)),
        _frame(f"arp who-has {NODE} tell {FAR}", mac(FAR), BROADCAST_MAC),
        _frame(f"arp reply {PEER} is-at {mac_for_ip(IPv4Address(PEER))} to {NODE}", mac(PEER),
               mac(NODE)),
        _frame(f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR), mac(NODE)),
        _frame(f"icmp {FAR} > {NODE}", mac(FAR), mac(NODE)),
        _frame(f"udp {INTERNET}:53 > {NODE}:5000 len 40 ipid 6 frag 48", mac(FAR), mac(NODE)),
        _tunnelled(f"udp {REMOTE_POD}:1 > {A_IP}:2 len 30", inner_macs),
        _tunnelled(f"tcp {REMOTE_POD}:1 > {A_IP}:2 flags A len 1000 df", inner_macs),
        _tunnelled(f"icmp {REMOTE_POD} > {B_IP}", inner_macs),
        _tunnelled(f"tcp {REMOTE_POD}:40000 > {VIP}:80 flags S", inner_macs),
        _tunnelled(f"udp {REMOTE_POD}:9 > {C_IP}:9 len 40 ipid 3 mf", inner_macs),
        _tunnelled(f"arp who-has {GW} tell {REMOTE_POD}", inner_macs),
        _tunnelled(f"udp {REMOTE_POD}:5 > {NODE}:5 len 10", inner_macs),
    ]
    frames += [(UPLINK, plain + frame) for frame in uplink]
    return frames


def _source(text: str) -> str:
    """The sender's address in a packet's text: the MAC it sends from is derived from it."""
    words = text.split()
    if words[0] == "arp":
        return words[2] if words[1] == "reply" else words[4]
    return words[1].split(":")[0]


def mutated(rng: random.Random, frame: bytes, vnet_len: int, other: bytes) -> bytes:
    """``frame`` broken in one to three ways; ``other`` is another valid frame to splice in."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        how = rng.randrange(6)
        if how == 0:  # bytes flipped, mostly in the headers a parser reads
            for _ in range(rng.randint(1, 4)):
                limit = len(data) if rng.random() < 0.2 else min(len(data), vnet_len + 80)
                if limit:
                    data[rng.randrange(limit)] = rng.randrange(256)
        elif how == 1:  # a bit flipped
            if data:
                at = rng.randrange(min(len(data), vnet_len + 80))
                data[at] ^= 1 << rng.randrange(8)
        elif how == 2:  # cut short
            del data[rng.randint(0, len(data)):]
        elif how == 3:  # garbage appended
            data += rng.randbytes(rng.choice((1, 4, 60, 1500)))
        elif how == 4:  # the head of one frame on the tail of another
            cut = rng.randint(0, len(data))
            data = data[:cut] + other[rng.randint(0, len(other)):]
        elif len(data) >= vnet_len:  # a random virtio-net header
            data[:vnet_len] = _random_vnet(rng, vnet_len)
    return bytes(data)


def _random_vnet(rng: random.Random, vnet_len: int) -> bytes:
    """Virtio-net headers a broken or hostile guest sends: GSO size 0, checksum offsets past the
    end, a GSO type that does not match the packet, unknown flags."""
    flags = rng.choice((0, 1, 2, 3, rng.randrange(256)))
    gso = rng.choice((h.VNET_GSO_NONE, h.VNET_GSO_TCPV4, 5, 0x21, 0x80 | 1,
                      rng.randrange(256)))
    fields = (rng.choice((0, 54, 66, 0xFFFF, rng.randrange(65536))) for _ in range(4))
    header = struct.pack("<BBHHHH", flags, gso, *fields)
    return (header + rng.randbytes(vnet_len - VNET_HDR_LEN))[:vnet_len]


def random_case(rng: random.Random, frames: list[tuple[int, bytes]], vnet_len: int
                ) -> tuple[int, bytes]:
    """One frame for the node: a valid one (1 in 8), a mutated one (3 in 4) or random bytes on a
    random port (1 in 8)."""
    pick = rng.random()
    if pick < 0.125:
        return rng.choice(frames)
    if pick < 0.875:
        port, frame = rng.choice(frames)
        return port, mutated(rng, frame, vnet_len, rng.choice(frames)[1])
    size = rng.choice((rng.randrange(vnet_len + 60), rng.randrange(2000)))
    return rng.choice(PORTS), rng.randbytes(size)
