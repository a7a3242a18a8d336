"""Ping one target over a raw ICMP socket and report the reply's TTL, which counts the routers
the reply passed (a pod answers with 64).

Usage: ping_ttl.py TIMEOUT TARGET
Prints {"rtt_us": ..., "ttl": ...}, both null when no matching reply came in time.
"""
import json
import os
import select
import socket
import struct
import sys
import time

from inet_checksum import checksum

timeout, target = float(sys.argv[1]), sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq, payload = os.getpid() & 0xFFFF, 1, b"vswitch-ttl-probe"
header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload,
            (target, 0))
start = time.perf_counter()
deadline = start + timeout
found = {"rtt_us": None, "ttl": None}
while found["ttl"] is None:
    left = deadline - time.perf_counter()
    if left <= 0 or not select.select([sock], [], [], left)[0]:
        break
    packet, (source, _) = sock.recvfrom(65535)
    ihl = (packet[0] & 0x0F) * 4
    kind, _, _, got_ident, got_seq = struct.unpack_from("!BBHHH", packet, ihl)
    if source == target and kind == 0 and (got_ident, got_seq) == (ident, seq):
        found = {"rtt_us": round((time.perf_counter() - start) * 1e6), "ttl": packet[8]}
print(json.dumps(found))
