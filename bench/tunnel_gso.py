#!/usr/bin/env python3
"""UDP-tunnel GSO on the uplink TAP, probed against a node built from kernel parts: does the
kernel take our encapsulated TSO super-frames, what does it hand back, and what does it buy?

Usage::

    sudo python3 bench/tunnel_gso.py [--megabytes 256] [--rounds 3] [--json FILE]

The lab (all names with a random suffix, everything removed at the end, also on failure):

* a *kernel node*, namespace ``K``, built as flannel builds a node: our uplink TAP (24-byte
  virtio-net header, UDP-tunnel GSO offloads) is its underlay link, with its underlay address;
  a ``vxlan`` device (VNI 1, port 4789, ``nolearning``, ``local`` = that address) with a static
  FDB entry, neighbour and route for our pod CIDR; a bridge ``cni0`` with a veth to a pod
  namespace ``P2``;
* our side, played by this process: a pod namespace ``P1`` whose eth0 is a TAP we hold (10-byte
  header, TSO, as vswitch opens pods' TAPs), and a relay thread that answers the pod's ARP for its
  gateway, encapsulates what the pod sends to ``P2``'s CIDR
  (``tunnel_offload.encapsulate_offloaded``, so super-frames stay whole) and decapsulates what
  arrives on the uplink (``decap_vnet``).

Experiments:

1. ``transfer``: a TCP stream from ``P1`` to ``P2`` and one back, SHA-256 compared, with the
   virtio-net headers seen in each direction (the largest frame, the GSO types and offsets).
2. ``bridged``: two TAPs on one Linux bridge, one with tunnel GSO and one without: a
   super-frame written into a third TAP, and what each reader gets.
3. ``measure``: one writer, no relay, plays ``P1``'s TCP sender itself: a handshake with the
   receiver in ``P2``, then prebuilt encapsulated data frames (only the sequence number patched
   per frame) written into the uplink TAP, either as 64 KB tunnel-GSO super-frames or as the same
   bytes in MTU-sized encapsulated packets with partial checksums (what segmenting in C would at
   best hand the kernel: one write per packet, no checksum work). Go-back-N on a stall, so a
   drop cannot hang it. Gbit/s of payload delivered and the receiver's SHA-256 check.

The table goes to stdout and the record (also the headers seen) to ``--json``.

Findings on Linux 6.18 (2 vCPUs shared with other work; 256 MB per run, median of 3 rounds)
-------------------------------------------------------------------------------------------
* Transmit: the kernel node takes our 64 KB tunnel-GSO frames, with and without
  ``VNET_F_UDP_TUNNEL_CSUM``; its vxlan device decapsulates each whole (as if GRO had merged it)
  and the pod behind the bridge receives the stream intact (SHA-256 equal).
* Receive: a vxlan device sending TCP through the tunnel-GSO TAP gives it super-frames of up to
  64 KB: flags ``NEEDS_CSUM | UDP_TUNNEL_CSUM`` (its ``udpcsum`` is on by default),
  ``gso_type`` 0x21, ``csum_start`` 84 (the inner TCP header), ``hdr_len`` 116 (50 outer bytes +
  inner Ethernet, IPv4 and TCP with timestamps), ``outer_th_offset`` 34, ``inner_nh_offset`` 64;
  small segments come with ``NEEDS_CSUM`` at 84 only (the outer UDP checksum done by local
  checksum offload). ``decap_vnet`` turns both into what a pod's TAP expects.
* Bridged: a Linux bridge passes a tunnel-GSO frame unchanged to another tunnel-GSO TAP; to a
  TAP with TSO only, the kernel cuts it into 46 VXLAN packets of 1514 bytes, inner TCP checksum
  partial, outer UDP checksum 0 or (with ``UDP_TUNNEL_CSUM``) valid once the inner one is done.
* One writer into the TAP, kernel TCP receiver behind vxlan, bridge and veth::

      mode          Gbit/s               rounds writes/64KB CPU us/write CPU us/64KB
      tunnel-gso      6.69       5.04 7.21 6.69         1.0         22.7          23
      mtu-packets     0.53       0.45 0.53 0.55        46.0         14.3         656

  The writer's own Python is 0.8 us of the 14.3 us per MTU-sized write; the rest is the kernel's
  per-packet path, which segmenting in C would not remove: at best about 0.56 Gbit/s, against
  super-frames at 12x the rate for 1/28 of the writer's CPU (there the Python receiver in the
  pod, not the writer, is the limit).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vswitch.accel import pure  # noqa: E402
from vswitch.runtime.tap import open_tap, read_burst  # noqa: E402
from vswitch.wire import headers as h, tunnel_offload as to, vxlan  # noqa: E402

VNI = 1
VNET_F_UDP_TUNNEL_CSUM = to.VNET_F_UDP_TUNNEL_CSUM
PORT = 4789
OVERLAY_MTU = 1450
MSS = OVERLAY_MTU - 40
SEGMENTS_PER_FRAME = 46  # 46 * 1410 = 64860 payload bytes: the largest multiple that fits
RECEIVER_PORT = 5201
# The crafted sender's congestion window, in effect: a full receive window written at once
# overruns the receiver's buffer (its skbs' truesize exceeds their data), and every loss costs a
# stall of STALL_SECONDS; real senders ramp up to what the path takes.
MAX_IN_FLIGHT = 1 << 20
STALL_SECONDS = 0.05

VTEP1_MAC = bytes.fromhex("0a5801000001")  # our VTEP (the inner source towards the kernel node)
UNDERLAY1_MAC = bytes.fromhex("0a5801000002")  # our uplink's MAC on the underlay
GATEWAY_MAC = bytes.fromhex("0a5801000003")  # P1's gateway, answered by the relay
POD1_MAC = bytes.fromhex("0a5801000004")
VTEP2_MAC = bytes.fromhex("0a5802000001")  # the kernel node's vxlan device


def ip4(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, check=check)


@dataclass
class Lab:
    suffix: str
    uplink_fd: int = -1
    pod_fd: int = -1
    namespaces: list[str] = field(default_factory=list)
    # Addresses: underlay 192.168.N.0/24, our pod CIDR 10.N.1.0/24, theirs 10.N.2.0/24.
    net: int = 0

    @property
    def k(self) -> str:
        return f"tgk-{self.suffix}"

    @property
    def p1(self) -> str:
        return f"tgp1-{self.suffix}"

    @property
    def p2(self) -> str:
        return f"tgp2-{self.suffix}"

    def addr(self, fmt: str) -> str:
        return fmt.format(n=self.net)

    @property
    def underlay1(self) -> bytes:
        return ip4(self.addr("192.168.{n}.1"))

    @property
    def underlay2(self) -> bytes:
        return ip4(self.addr("192.168.{n}.2"))

    @property
    def pod1(self) -> bytes:
        return ip4(self.addr("10.{n}.1.2"))

    @property
    def pod2(self) -> bytes:
        return ip4(self.addr("10.{n}.2.2"))


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@contextlib.contextmanager
def lab(uplink_tunnel_gso: bool = True) -> Iterator[Lab]:
    """The kernel node, the two pods and our two TAPs; removed on the way out."""
    suffix = secrets.token_hex(3)
    lb = Lab(suffix=suffix, net=200 + secrets.randbelow(50))
    up, pod = f"tgu{suffix}", f"tgp{suffix}"
    try:
        for ns in (lb.k, lb.p1, lb.p2):
            sh("ip", "netns", "add", ns)
            lb.namespaces.append(ns)
            nsx(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")
            nsx(ns, "ip", "link", "set", "lo", "up")
        lb.uplink_fd = open_tap(up, vnet_hdr=True, udp_tunnel_gso=uplink_tunnel_gso)
        lb.pod_fd = open_tap(pod, vnet_hdr=True)
        sh("ip", "link", "set", up, "netns", lb.k)
        sh("ip", "link", "set", pod, "netns", lb.p1)
        k = lambda *a: nsx(lb.k, *a)  # noqa: E731
        k("ip", "addr", "add", lb.addr("192.168.{n}.2/24"), "dev", up)
        k("ip", "link", "set", up, "up")
        k("ip", "neigh", "replace", lb.addr("192.168.{n}.1"), "lladdr", _mac(UNDERLAY1_MAC),
          "dev", up, "nud", "permanent")
        k("ip", "link", "add", "vxlan0", "address", _mac(VTEP2_MAC), "type", "vxlan", "id",
          str(VNI), "dstport", str(PORT), "nolearning", "local", lb.addr("192.168.{n}.2"),
          "dev", up)
        k("ip", "link", "set", "vxlan0", "mtu", str(OVERLAY_MTU), "up")
        k("ip", "addr", "add", lb.addr("10.{n}.2.0/32"), "dev", "vxlan0")
        k("ip", "route", "add", lb.addr("10.{n}.1.0/24"), "via", lb.addr("10.{n}.1.0"),
          "dev", "vxlan0", "onlink")
        k("ip", "neigh", "replace", lb.addr("10.{n}.1.0"), "lladdr", _mac(VTEP1_MAC),
          "dev", "vxlan0", "nud", "permanent")
        k("bridge", "fdb", "append", _mac(VTEP1_MAC), "dev", "vxlan0", "dst",
          lb.addr("192.168.{n}.1"))
        k("ip", "link", "add", "cni0", "type", "bridge")
        k("ip", "addr", "add", lb.addr("10.{n}.2.1/24"), "dev", "cni0")
        k("ip", "link", "set", "cni0", "mtu", str(OVERLAY_MTU), "up")
        k("ip", "link", "add", "veth0", "mtu", str(OVERLAY_MTU), "type", "veth", "peer", "name",
          "eth0", "mtu", str(OVERLAY_MTU), "netns", lb.p2)
        k("ip", "link", "set", "veth0", "master", "cni0", "up")
        k("sysctl", "-qw", "net.ipv4.ip_forward=1")
        nsx(lb.p2, "ip", "addr", "add", lb.addr("10.{n}.2.2/24"), "dev", "eth0")
        nsx(lb.p2, "ip", "link", "set", "eth0", "up")
        nsx(lb.p2, "ip", "route", "add", "default", "via", lb.addr("10.{n}.2.1"))
        nsx(lb.p1, "ip", "link", "set", pod, "name", "eth0")
        nsx(lb.p1, "ip", "link", "set", "eth0", "address", _mac(POD1_MAC), "mtu",
            str(OVERLAY_MTU), "up")
        nsx(lb.p1, "ip", "addr", "add", lb.addr("10.{n}.1.2/24"), "dev", "eth0")
        nsx(lb.p1, "ip", "route", "add", "default", "via", lb.addr("10.{n}.1.1"))
        yield lb
    finally:
        for fd in (lb.uplink_fd, lb.pod_fd):
            if fd >= 0:
                os.close(fd)
        for ns in lb.namespaces:
            sh("ip", "netns", "del", ns, check=False)


def describe_vnet(vnet: bytes) -> dict:
    if len(vnet) == to.VNET_TUNNEL_HDR_LEN:
        hdr = to.VIRTIO_NET_HDR_TUNNEL.parse(vnet)
    else:
        hdr = h.VIRTIO_NET_HDR.parse(vnet)
    return {k: v for k, v in hdr.items() if not k.startswith("_")
            and k not in ("num_buffers", "hash_value", "hash_report", "padding")}


@dataclass
class Seen:
    """The virtio-net headers met in one direction: each distinct shape once, the largest frame."""
    shapes: dict = field(default_factory=dict)
    largest: int = 0
    frames: int = 0
    refused: dict = field(default_factory=dict)

    def note(self, vnet: bytes, frame_len: int) -> None:
        self.frames += 1
        self.largest = max(self.largest, frame_len)
        d = describe_vnet(vnet)
        key = (d["flags"], d["gso_type"], d.get("outer_th_offset"), d.get("inner_nh_offset"))
        if key not in self.shapes:
            self.shapes[key] = dict(d, frame_len=frame_len)

    def record(self) -> dict:
        return {"frames": self.frames, "largest_frame": self.largest,
                "shapes": list(self.shapes.values()), "refused": self.refused}


class Relay(threading.Thread):
    """Our node's datapath for one pod, in Python: ARP for the gateway, encapsulation towards the
    kernel node with tunnel GSO, decapsulation back to the pod."""

    def __init__(self, lb: Lab, udp_checksum: bool = False) -> None:
        super().__init__(daemon=True)
        self.lb = lb
        self.udp_checksum = udp_checksum
        self.stop = threading.Event()
        self.to_uplink = Seen()  # what the pod gave us (10-byte headers)
        self.from_uplink = Seen()  # what the kernel node gave us (24-byte headers)
        self.outer_ident = 0
        self.error: BaseException | None = None
        self.kernel_mac = kernel_uplink_mac(lb)

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the caller after join
            self.error = exc

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.lb.pod_fd, select.POLLIN)
        poller.register(self.lb.uplink_fd, select.POLLIN)
        while not self.stop.is_set():
            for fd, _ in poller.poll(100):
                if fd == self.lb.pod_fd:
                    for frame in read_burst(fd, 64):
                        self._from_pod(frame)
                else:
                    for frame in read_burst(fd, 64):
                        self._from_uplink(frame)

    def _from_pod(self, data: bytes) -> None:
        vnet, frame = data[: h.VNET_HDR_LEN], data[h.VNET_HDR_LEN:]
        eth = h.ETHERNET.parse(frame[:14])
        if eth.ethertype == h.EtherType.ARP:
            arp = h.ARP.parse(frame[14:42])
            if arp.oper == h.ArpOp.REQUEST and arp.tpa == ip4(self.lb.addr("10.{n}.1.1")):
                reply = h.ARP.build(dict(htype=1, ptype=h.EtherType.IPV4, hlen=6, plen=4,
                                         oper=h.ArpOp.REPLY, sha=GATEWAY_MAC, spa=arp.tpa,
                                         tha=arp.sha, tpa=arp.spa))
                os.write(self.lb.pod_fd, bytes(h.VNET_HDR_LEN) + h.ETHERNET.build(dict(
                    dst=arp.sha, src=GATEWAY_MAC, ethertype=h.EtherType.ARP)) + reply)
            return
        if eth.ethertype != h.EtherType.IPV4:
            return
        self.to_uplink.note(vnet, len(frame))
        inner = VTEP2_MAC + VTEP1_MAC + frame[12:]
        self.outer_ident = (self.outer_ident + 1) & 0xFFFF
        out = to.encapsulate_offloaded(
            vnet, inner, outer_src_mac=UNDERLAY1_MAC, outer_dst_mac=self.kernel_mac,
            src_ip=self.lb.underlay1, dst_ip=self.lb.underlay2,
            src_port=vxlan.source_port(vxlan.inner_flow_key(inner)), dst_port=PORT, vni=VNI,
            ident=self.outer_ident, udp_checksum=self.udp_checksum)
        if isinstance(out, to.Refusal):
            self.to_uplink.refused[out.name] = self.to_uplink.refused.get(out.name, 0) + 1
            return
        os.write(self.lb.uplink_fd, out)

    def _from_uplink(self, data: bytes) -> None:
        vnet, frame = data[: to.VNET_TUNNEL_HDR_LEN], data[to.VNET_TUNNEL_HDR_LEN:]
        if h.ETHERNET.parse(frame[:14]).ethertype != h.EtherType.IPV4:
            return
        flags = vnet[0]
        got = vxlan.decapsulate(frame, vni=VNI, port=PORT, offset=14,
                                verify_udp_checksum=not flags & h.VNET_F_NEEDS_CSUM)
        if isinstance(got, vxlan.DropReason):
            return
        self.from_uplink.note(vnet, len(frame))
        inner_vnet = to.decap_vnet(vnet)
        if isinstance(inner_vnet, to.Refusal):
            self.from_uplink.refused[inner_vnet.name] = (
                self.from_uplink.refused.get(inner_vnet.name, 0) + 1)
            return
        os.write(self.lb.pod_fd, inner_vnet + POD1_MAC + GATEWAY_MAC + got.inner[12:])


def kernel_uplink_mac(lb: Lab) -> bytes:
    out = nsx(lb.k, "cat", f"/sys/class/net/tgu{lb.suffix}/address").stdout.strip()
    return bytes.fromhex(out.replace(":", ""))


# A receiver that reads one TCP connection to its end, then prints bytes, SHA-256 and seconds
# (from the first byte). A sender that writes deterministic bytes and prints their SHA-256.
RECEIVER = """
import hashlib, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0; buf = bytearray(1 << 20); t0 = None
want = int(sys.argv[2])
while n < want:
    k = c.recv_into(buf)
    if not k: break
    if t0 is None: t0 = time.monotonic()
    h.update(memoryview(buf)[:k]); n += k
print(n, h.hexdigest(), time.monotonic() - t0, flush=True)
"""
SENDER = """
import hashlib, socket, sys, random
r = random.Random(int(sys.argv[3])); block = r.randbytes(1 << 20)
n = int(sys.argv[4]); h = hashlib.sha256()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
for i in range(n // len(block)):
    c.sendall(block); h.update(block)
c.shutdown(socket.SHUT_WR); c.recv(1); print(h.hexdigest(), flush=True)
"""


def start_receiver(ns: str, nbytes: int) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER,
                             str(RECEIVER_PORT), str(nbytes)], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the receiver did not start")
    return proc


def transfer(lb: Lab, src_ns: str, dst_ns: str, dst_ip: bytes, megabytes: int) -> dict:
    """A TCP stream of ``megabytes`` from one pod to the other through the relay, checked."""
    nbytes = megabytes << 20
    receiver = start_receiver(dst_ns, nbytes)
    try:
        sender = nsx(src_ns, sys.executable, "-c", SENDER, ".".join(map(str, dst_ip)),
                     str(RECEIVER_PORT), "7", str(nbytes))
        got, digest, seconds = receiver.communicate(timeout=120)[0].split()
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return {"bytes": int(got), "sha256_match": digest == sender.stdout.strip(),
            "gbit_s": round(int(got) * 8 / float(seconds) / 1e9, 3)}


def run_transfers(megabytes: int, udp_checksum: bool = False) -> dict:
    """TCP both ways between P1 and P2 through the relay, which asks the kernel to fill in the
    outer UDP checksums of super-frames with ``udp_checksum`` (and leaves them 0 otherwise)."""
    with lab() as lb:
        relay = Relay(lb, udp_checksum)
        relay.start()
        try:
            forward = transfer(lb, lb.p1, lb.p2, lb.pod2, megabytes)
            backward = transfer(lb, lb.p2, lb.p1, lb.pod1, megabytes)
        finally:
            relay.stop.set()
            relay.join()
        if relay.error is not None:
            raise relay.error
        return {"pod_to_kernel_node": forward, "kernel_node_to_pod": backward,
                "headers_from_pod": relay.to_uplink.record(),
                "headers_from_kernel_node": relay.from_uplink.record()}


# --- 2. bridged tunnel-GSO frames -------------------------------------------------------------


def super_frame(payload_len: int, *, src_ip: bytes, dst_ip: bytes, udp_csum: bool,
                dst_mac: bytes) -> tuple[bytes, bytes]:
    """An encapsulated TCP super-frame (header + frame) and the payload it carries."""
    payload = bytes(range(256)) * (payload_len // 256) + bytes(payload_len % 256)
    tcp_len = h.TCP_HEADER_LEN + payload_len
    inner_src, inner_dst = ip4("10.99.1.2"), ip4("10.99.2.2")
    tcp = struct.pack("!HHIIHHHH", 40000, RECEIVER_PORT, 1000, 1, (5 << 12) | 0x18, 65535,
                      pure.pseudo_header_sum(inner_src, inner_dst, 6, tcp_len), 0) + payload
    ip = bytearray(h.build_ipv4(src=inner_src, dst=inner_dst, protocol=6, payload_len=tcp_len,
                                df=True))
    ip[10:12] = pure.checksum(bytes(ip)).to_bytes(2, "big")
    inner = VTEP2_MAC + VTEP1_MAC + b"\x08\x00" + bytes(ip) + tcp
    vnet = h.VIRTIO_NET_HDR.build(dict(flags=1, gso_type=1, hdr_len=54, gso_size=MSS,
                                       csum_start=34, csum_offset=16))
    out = to.encapsulate_offloaded(vnet, inner, udp_checksum=udp_csum,
                                   outer_src_mac=UNDERLAY1_MAC, outer_dst_mac=dst_mac,
                                   src_ip=src_ip, dst_ip=dst_ip, src_port=50000, dst_port=PORT,
                                   vni=VNI, ident=1)
    assert not isinstance(out, to.Refusal), out
    return out, payload


def run_bridged() -> dict:
    """Three TAPs on one bridge (our node writing, a tunnel-GSO node and a TSO-only node reading):
    what each reader gets for one super-frame, with and without the outer UDP checksum."""
    suffix = secrets.token_hex(3)
    ns = f"tgb-{suffix}"
    fds: dict[str, int] = {}
    result: dict = {}
    try:
        sh("ip", "netns", "add", ns)
        nsx(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
        nsx(ns, "ip", "link", "add", "br0", "type", "bridge")
        nsx(ns, "ip", "link", "set", "br0", "up")
        for role, tunnel in (("writer", True), ("tunnel", True), ("plain", False)):
            name = f"tg{role[0]}{suffix}"
            fds[role] = open_tap(name, vnet_hdr=True, udp_tunnel_gso=tunnel)
            sh("ip", "link", "set", name, "netns", ns)
            nsx(ns, "ip", "link", "set", name, "master", "br0", "up")
        for udp_csum in (False, True):
            frame, payload = super_frame(SEGMENTS_PER_FRAME * MSS, src_ip=ip4("192.168.99.1"),
                                         dst_ip=ip4("192.168.99.2"), udp_csum=udp_csum,
                                         dst_mac=b"\xff" * 6)  # flooded to both readers
            os.write(fds["writer"], frame)
            time.sleep(0.2)
            got = {}
            for role, hdr_len in (("tunnel", to.VNET_TUNNEL_HDR_LEN), ("plain", h.VNET_HDR_LEN)):
                frames = read_burst(fds[role], 256)
                data = [f for f in frames if len(f) > hdr_len + vxlan.OUTER_HEADERS_LEN + 40
                        and f[hdr_len + 12: hdr_len + 14] == b"\x08\x00"
                        and f[hdr_len + 23] == h.IpProto.UDP]
                got[role] = {
                    "frames": len(data), "frame_lengths": sorted({len(f) - hdr_len for f in data}),
                    "headers": [describe_vnet(f[:hdr_len]) for f in data[:2]],
                    "checksums": sorted({_checksums(f[:hdr_len], f[hdr_len:]) for f in data}),
                    "payload_intact": _payloads(data, hdr_len) == payload,
                }
            result["udp_csum" if udp_csum else "no_udp_csum"] = got
    finally:
        for fd in fds.values():
            os.close(fd)
        sh("ip", "netns", "del", ns, check=False)
    return result


def _checksums(vnet: bytes, frame: bytes) -> str:
    """Whether the outer UDP and inner TCP checksums of an encapsulated frame are right once a
    partial checksum the header asks for is completed, as a NIC or the kernel would."""
    frame = bytearray(frame)
    hdr = describe_vnet(vnet)
    if hdr["flags"] & h.VNET_F_NEEDS_CSUM:
        start, field_at = hdr["csum_start"], hdr["csum_start"] + hdr["csum_offset"]
        end = h.ETH_HEADER_LEN + h.IPV4.parse(bytes(frame[14:34])).total_length
        folded = pure.sum16(bytes(frame[start:end]))
        frame[field_at: field_at + 2] = (~folded & 0xFFFF).to_bytes(2, "big")
    outer = h.IPV4.parse(bytes(frame[14:34]))
    udp = bytes(frame[34:14 + outer.total_length])
    inner_ip = h.IPV4.parse(bytes(frame[64:84]))
    tcp = bytes(frame[84: 64 + inner_ip.total_length])
    inner_ok = pure.l4_checksum(inner_ip.src, inner_ip.dst, 6, tcp) == 0
    if udp[6:8] == b"\x00\x00":
        outer_state = "outer UDP none"
    elif pure.l4_checksum(outer.src, outer.dst, 17, udp) == 0:
        outer_state = "outer UDP valid"
    else:
        outer_state = "outer UDP wrong" if not hdr["flags"] & VNET_F_UDP_TUNNEL_CSUM \
            else "outer UDP partial (tunnel GSO: filled in per segment)"
    return f"{outer_state}, inner TCP {'valid' if inner_ok else 'wrong'}"


def _payloads(frames: list[bytes], hdr_len: int) -> bytes:
    """The inner TCP payload of each frame, in order of sequence number."""
    parts = []
    for f in frames:
        inner = f[hdr_len + vxlan.OUTER_HEADERS_LEN:]
        ip = h.IPV4.parse(inner[14:34])
        tcp_at = 14 + ip.ihl * 4
        seq = struct.unpack("!I", inner[tcp_at + 4: tcp_at + 8])[0]
        offset = (inner[tcp_at + 12] >> 4) * 4
        parts.append((seq, inner[tcp_at + offset: 14 + ip.total_length]))
    return b"".join(p for _, p in sorted(parts))


# --- 3. one writer: super-frames against MTU-sized packets ------------------------------------


class CraftedSender:
    """P1's end of one TCP connection, written straight into the uplink TAP from prebuilt frames.

    Every frame is built once; per write only the sequence number changes, which a partial TCP
    checksum (the pseudo-header sum alone) does not cover. The payload repeats with the period of
    one super-frame, so both modes send the same bytes and the receiver's SHA-256 can be predicted.
    """

    def __init__(self, lb: Lab, super_frames: bool) -> None:
        self.lb = lb
        self.super_frames = super_frames
        self.k_mac = kernel_uplink_mac(lb)
        self.sport = 40000 + secrets.randbelow(20000)
        self.iss = secrets.randbits(32)
        self.unit = SEGMENTS_PER_FRAME * MSS  # the repeating payload block
        self.block = secrets.token_bytes(self.unit)
        self.ident = 0

    def _encap(self, vnet: bytes, inner: bytes) -> bytes:
        self.ident = (self.ident + 1) & 0xFFFF
        out = to.encapsulate_offloaded(
            vnet, inner, outer_src_mac=UNDERLAY1_MAC, outer_dst_mac=self.k_mac,
            src_ip=self.lb.underlay1, dst_ip=self.lb.underlay2, src_port=50000, dst_port=PORT,
            vni=VNI, ident=self.ident)
        assert not isinstance(out, to.Refusal), out
        return out

    def _segment(self, seq: int, ack: int, flags: int, payload: bytes, options: bytes = b"",
                 partial: bool = False) -> bytes:
        src, dst = self.lb.pod1, self.lb.pod2
        tcp_len = h.TCP_HEADER_LEN + len(options) + len(payload)
        head = struct.pack("!HHIIHHHH", self.sport, RECEIVER_PORT, seq, ack,
                           ((5 + len(options) // 4) << 12) | flags, 0xFFFF, 0, 0) + options
        if partial:
            csum = pure.pseudo_header_sum(src, dst, 6, tcp_len)
        else:
            csum = pure.l4_checksum(src, dst, 6, head + payload)
        tcp = head[:16] + csum.to_bytes(2, "big") + head[18:] + payload
        ip = bytearray(h.build_ipv4(src=src, dst=dst, protocol=6, payload_len=tcp_len, df=True))
        ip[10:12] = pure.checksum(bytes(ip)).to_bytes(2, "big")
        return VTEP2_MAC + VTEP1_MAC + b"\x08\x00" + bytes(ip) + tcp

    def _read_acks(self, timeout: float) -> list[tuple[int, int, int, int, bytes]]:
        """(seq, ack, window, flags, options) of every segment from the receiver waiting on the
        uplink. Parsed at fixed offsets with ``struct``: at one ACK per two packets, parsing
        through the construct declarations would cost more than the writes being measured."""
        r, _, _ = select.select([self.lb.uplink_fd], [], [], timeout)
        out = []
        if not r:
            return out
        outer = to.VNET_TUNNEL_HDR_LEN
        inner_ip = outer + vxlan.OUTER_HEADERS_LEN + h.ETH_HEADER_LEN
        unpack_from = struct.unpack_from
        for data in read_burst(self.lb.uplink_fd, 512):
            if (len(data) < inner_ip + 40 or data[outer + 23] != h.IpProto.UDP
                    or data[inner_ip + 9] != h.IpProto.TCP):
                continue
            t = inner_ip + (data[inner_ip] & 0x0F) * 4
            _, dport, seq, ack, off_flags, window = unpack_from("!HHIIHH", data, t)
            if dport != self.sport:
                continue
            options = data[t + 20: t + (off_flags >> 12) * 4]
            out.append((seq, ack, window, off_flags & 0x1FF, options))
        return out

    def run(self, nbytes: int) -> dict:
        blocks = -(-nbytes // self.unit)
        receiver = start_receiver(self.lb.p2, blocks * self.unit)
        try:
            return self._run(receiver, blocks)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()

    def _run(self, receiver: subprocess.Popen, blocks: int) -> dict:
        fd = self.lb.uplink_fd
        syn = self._segment(self.iss, 0, 0x02, b"",
                            options=struct.pack("!BBHBBBB", 2, 4, MSS, 1, 3, 3, 9))
        deadline = time.monotonic() + 5
        window_scale = None
        while window_scale is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no SYN-ACK from the kernel node")
            os.write(fd, self._encap(bytes(h.VNET_HDR_LEN), syn))
            for seq, ack, window, flags, options in self._read_acks(0.5):
                if flags & 0x12 == 0x12 and ack == (self.iss + 1) & 0xFFFFFFFF:
                    irs, window_scale, syn_window = seq, _window_scale(options), window
        rcv = (irs + 1) & 0xFFFFFFFF
        base = (self.iss + 1) & 0xFFFFFFFF
        os.write(fd, self._encap(bytes(h.VNET_HDR_LEN), self._segment(base, rcv, 0x10, b"")))
        # The frames of one block: one super-frame, or SEGMENTS_PER_FRAME packets.
        if self.super_frames:
            vnet = h.VIRTIO_NET_HDR.build(dict(flags=1, gso_type=1, hdr_len=54, gso_size=MSS,
                                               csum_start=34, csum_offset=16))
            pieces = [(0, bytearray(self._encap(
                vnet, self._segment(0, rcv, 0x18, self.block, partial=True))))]
        else:
            vnet = h.VIRTIO_NET_HDR.build(dict(flags=1, gso_type=0, hdr_len=0, gso_size=0,
                                               csum_start=34, csum_offset=16))
            pieces = [(i * MSS, bytearray(self._encap(vnet, self._segment(
                0, rcv, 0x18, self.block[i * MSS:(i + 1) * MSS], partial=True))))
                for i in range(SEGMENTS_PER_FRAME)]
        seq_at = to.VNET_TUNNEL_HDR_LEN + vxlan.OUTER_HEADERS_LEN + 14 + 20 + 4
        piece_len = self.unit // len(pieces)
        pack_into, write = struct.pack_into, os.write
        una = nxt = 0  # relative to base
        wnd = syn_window  # a SYN's window is never scaled
        total = blocks * self.unit
        writes = stalls = 0
        last_progress = t0 = time.monotonic()
        cpu0 = time.process_time()
        while una < total:
            # A piece goes when it fits the window, or alone when nothing is in flight (data
            # past the window is dropped, and waiting for a window that small would never end).
            while nxt < total and (nxt + piece_len <= una + min(wnd, MAX_IN_FLIGHT)
                                   or nxt == una):
                offset, buf = pieces[(nxt % self.unit) // piece_len]
                pack_into("!I", buf, seq_at, (base + nxt) & 0xFFFFFFFF)
                try:
                    write(fd, buf)
                except BlockingIOError:
                    break
                writes += 1
                nxt += piece_len
            room = nxt + piece_len <= una + min(wnd, MAX_IN_FLIGHT)
            for _, ack, window, _, _ in self._read_acks(0 if room else STALL_SECONDS / 4):
                acked = (ack - base) & 0xFFFFFFFF
                if una < acked <= nxt:
                    una, last_progress = acked, time.monotonic()
                wnd = window << window_scale
            if time.monotonic() - last_progress > STALL_SECONDS:  # go back N from the first unacked
                if os.environ.get("TGSO_DEBUG"):
                    print("stall", una, nxt, wnd, window_scale, total, file=sys.stderr)
                nxt = una - una % piece_len
                stalls += 1
                last_progress = time.monotonic()
        seconds = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        os.write(fd, self._encap(bytes(h.VNET_HDR_LEN),
                                 self._segment((base + total) & 0xFFFFFFFF, rcv, 0x14, b"")))
        got, digest, _ = receiver.communicate(timeout=30)[0].split()
        expected = hashlib.sha256(self.block * blocks).hexdigest()
        return {"mode": "tunnel-gso" if self.super_frames else "mtu-packets",
                "bytes": total, "writes": writes, "stalls": stalls,
                "seconds": round(seconds, 3), "gbit_s": round(total * 8 / seconds / 1e9, 3),
                "writer_cpu_s": round(cpu, 3),
                "sha256_match": int(got) >= total and digest == expected}


def _window_scale(options: bytes) -> int:
    """The window scale option's shift in a SYN's TCP options (0 without one)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if kind == 3:
            return options[i + 2]
        i += max(options[i + 1], 2)
    return 0


def run_measure(megabytes: int, rounds: int) -> list[dict]:
    results = []
    with lab() as lb:
        for r in range(rounds):
            for super_frames in (True, False):
                res = CraftedSender(lb, super_frames).run(megabytes << 20)
                res["round"] = r + 1
                res["writer_cpu_us_per_write"] = round(res["writer_cpu_s"] / res["writes"] * 1e6, 2)
                print(f"  round {r + 1} {res['mode']}: {res['gbit_s']} Gbit/s", file=sys.stderr)
                results.append(res)
    return results


def python_cost_per_write(writes: int = 200_000) -> float:
    """Microseconds the writer's loop spends per frame outside the kernel's packet path: the same
    sequence-number patch and ``os.write`` of an MTU-sized frame, into /dev/null. What segmenting
    in C would save of the MTU-sized mode is at most this much per packet."""
    buf = bytearray(to.VNET_TUNNEL_HDR_LEN + vxlan.OUTER_HEADERS_LEN + 54 + MSS)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        pack_into, write = struct.pack_into, os.write
        t0 = time.process_time()
        for i in range(writes):
            pack_into("!I", buf, 112, i)
            write(fd, buf)
        return (time.process_time() - t0) / writes * 1e6
    finally:
        os.close(fd)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--transfer-megabytes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    record: dict = {"kernel": os.uname().release}
    print("transfer through the relay...", file=sys.stderr)
    record["transfer"] = run_transfers(args.transfer_megabytes)
    print("bridged super-frames...", file=sys.stderr)
    record["bridged"] = run_bridged()
    print("measuring one writer...", file=sys.stderr)
    record["measure"] = run_measure(args.megabytes, args.rounds)
    record["python_us_per_write"] = round(python_cost_per_write(), 2)
    by_mode: dict[str, list[dict]] = {}
    for res in record["measure"]:
        by_mode.setdefault(res["mode"], []).append(res)
    medians = {m: _median([r["gbit_s"] for r in v]) for m, v in by_mode.items()}
    record["median_gbit_s"] = medians
    print(f"{'mode':<12} {'Gbit/s':>7} {'rounds':>20} {'writes/64KB':>11} {'CPU us/write':>12} "
          f"{'CPU us/64KB':>11}")
    for mode, runs in by_mode.items():
        per_write = _median([r["writer_cpu_us_per_write"] for r in runs])
        writes_per_block = runs[0]["writes"] * SEGMENTS_PER_FRAME * MSS / runs[0]["bytes"]
        rounds_text = " ".join(f"{r['gbit_s']:.2f}" for r in runs)
        print(f"{mode:<12} {medians[mode]:>7.2f} {rounds_text:>20} {writes_per_block:>11.1f} "
              f"{per_write:>12.1f} {per_write * writes_per_block:>11.0f}")
    print(f"tunnel-gso / mtu-packets: {medians['tunnel-gso'] / medians['mtu-packets']:.1f}x; "
          f"of the MTU-sized CPU time, the writer's own Python is "
          f"{record['python_us_per_write']} us per write")
    for name in ("pod_to_kernel_node", "kernel_node_to_pod"):
        res = record["transfer"][name]
        print(f"relay check {name}: sha256 match {res['sha256_match']} ({res['gbit_s']} Gbit/s "
              f"through the probe's construct-parsing relay, not a datapath figure)")
    text = json.dumps(record, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
