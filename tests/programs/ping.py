"""Ping each target once over a raw ICMP socket (iputils' ping is not assumed to be installed).

Usage: ping.py TIMEOUT TARGET...
TIMEOUT is the wait for each reply in seconds. Prints one JSON object: target address ->
round-trip time in microseconds, or null when no matching reply came in time.
"""
import json
import os
import select
import socket
import struct
import sys
import time

from inet_checksum import checksum

timeout = float(sys.argv[1])
targets = sys.argv[2:]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
results = {}
for seq, target in enumerate(targets, start=1):
    payload = b"vswitch-ping-%05d" % seq
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
    start = time.perf_counter()
    sock.sendto(packet, (target, 0))
    deadline = start + timeout
    rtt = None
    while rtt is None:
        left = deadline - time.perf_counter()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data, (source, _) = sock.recvfrom(4096)
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if kind == 0 and rid == ident and rseq == seq and source == target:
            if data[ihl + 8:] == payload:
                rtt = (time.perf_counter() - start) * 1e6
    results[target] = rtt
print(json.dumps(results))
