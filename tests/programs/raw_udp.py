"""Send hand-built Ethernet/IPv4/UDP frames through AF_PACKET, so that the pod's kernel has no
say in the source addresses: how a compromised pod would try to impersonate another one.

Usage: raw_udp.py IFNAME SRC_MAC DST_MAC SRC_IP DST_IP PORT COUNT
Prints {"sent": COUNT, "frame_bytes": N}.
"""
import json
import socket
import struct
import sys

from inet_checksum import checksum

ifname, src_mac, dst_mac, src_ip, dst_ip = sys.argv[1:6]
port, count = int(sys.argv[6]), int(sys.argv[7])


def mac(text):
    return bytes(int(part, 16) for part in text.split(":"))

payload = b"spoofed"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0x4000, 64, 17, 0,
                 socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
frame = mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + udp
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((ifname, 0))
for _ in range(count):
    sock.send(frame)
print(json.dumps({"sent": count, "frame_bytes": len(frame)}))
