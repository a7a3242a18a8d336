"""Ping one target COUNT times, INTERVAL seconds apart, over a raw ICMP socket, and report which
echo requests got no reply: a forwarding interruption shows as a run of lost sequence numbers.

Usage: ping_stream.py TARGET COUNT INTERVAL
Prints {"sent": COUNT, "lost": [sequence numbers without a reply]} after the last reply's wait.
"""
import json
import os
import select
import socket
import struct
import sys
import time

from inet_checksum import checksum

target, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
answered = set()
next_send = time.monotonic()
seq = 0
deadline = None
while True:
    now = time.monotonic()
    if seq < count and now >= next_send:
        seq += 1
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        payload = b"vswitch-stream"
        sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload,
                    (target, 0))
        next_send += interval
        if seq == count:
            deadline = now + 2.0
    if deadline is not None and now >= deadline:
        break
    wait = max(0.0, (next_send if seq < count else deadline) - time.monotonic())
    if select.select([sock], [], [], wait)[0]:
        packet, (source, _) = sock.recvfrom(65535)
        ihl = (packet[0] & 0x0F) * 4
        kind, _, _, got_ident, got_seq = struct.unpack_from("!BBHHH", packet, ihl)
        if source == target and kind == 0 and got_ident == ident:
            answered.add(got_seq)
print(json.dumps({"sent": count, "lost": [s for s in range(1, count + 1) if s not in answered]}))
