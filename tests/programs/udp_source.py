"""Send COUNT numbered UDP datagrams of 206 bytes, GAP seconds apart.

Usage: udp_source.py HOST PORT COUNT GAP [FIRST]
Sequence numbers start at FIRST (default 0). Prints {"sent": COUNT}.
"""
import json
import socket
import sys
import time
host, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
first = int(sys.argv[5]) if len(sys.argv) > 5 else 0
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for seq in range(first, first + count):
    sock.sendto(b"%06d" % seq + bytes((seq + i) & 0xFF for i in range(200)), (host, port))
    time.sleep(gap)
print(json.dumps({"sent": count}))
