"""port-security: a pod may only send as itself.

Each pod port is pinned to the pod's MAC and IP (the host port to the host side's). A frame whose
Ethernet source, ARP sender or IPv4 source is anyone else's is dropped and counted, so one pod cannot
poison the FDB, answer ARP for another pod or spoof its address. ARP probes (sender 0.0.0.0, RFC 5227)
are allowed.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.wire.addresses import ip_text, mac_text

NAME = "port-security"
NEXT = ("l2-learn",)

_ANY_IP = bytes(4)


class Counter(enum.Enum):
    PASSED = "frames whose source addresses belong to their port"
    SPOOFED_MAC = "Ethernet source MAC is not the port's"
    SPOOFED_ARP = "ARP sender MAC or IP is not the port's"
    SPOOFED_IP = "IPv4 source address is not the port's"


def process(pkt: Packet, env: Env):
    port = pkt.port
    if not port.port_security:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"port {port.name} is not pinned: any source accepted")
        return "l2-learn"
    mac = port.mac_bytes
    if pkt.eth.src != mac:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"source MAC {mac_text(pkt.eth.src)} is not {port.mac}")
        return env.drop(pkt, Counter.SPOOFED_MAC)
    ip = port.ip_bytes
    if pkt.arp is not None:
        if pkt.arp.sha != mac or pkt.arp.spa not in (ip, _ANY_IP):
            if pkt.trace is not None:
                pkt.trace.note(NAME, f"ARP sender {ip_text(pkt.arp.spa)} ({mac_text(pkt.arp.sha)}) "
                                     f"is not {port.ip} ({port.mac})")
            return env.drop(pkt, Counter.SPOOFED_ARP)
    elif pkt.ip.src != ip:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"IPv4 source {ip_text(pkt.ip.src)} is not {port.ip}")
        return env.drop(pkt, Counter.SPOOFED_IP)
    env.count(Counter.PASSED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"source {port.mac} / {port.ip} belongs to port {port.name}")
    return "l2-learn"
