"""Receive numbered UDP datagrams (as udp_source.py sends them) and report which arrived intact.

Usage: udp_sink.py PORT EXPECTED FIRST_WAIT IDLE
Stops after EXPECTED datagrams, or when none arrives within FIRST_WAIT seconds (the first) or
IDLE seconds (the later ones). Prints "listening" once bound, then one JSON object: sequence
numbers received, peers, whether every payload was intact, and datagrams of other senders.
"""
import json
import socket
import sys
port, expected = int(sys.argv[1]), int(sys.argv[2])
first_wait, idle = float(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sock.bind(("0.0.0.0", port))
print("listening", flush=True)
received, peers, intact, strangers = [], set(), True, []
sock.settimeout(first_wait)
while len(received) < expected:
    try:
        data, peer = sock.recvfrom(4096)
    except socket.timeout:
        break
    sock.settimeout(idle)
    peers.add(peer[0])
    if not data[:6].isdigit():
        strangers.append(data[:32].decode(errors="replace"))
        continue
    seq = int(data[:6])
    intact = intact and data == b"%06d" % seq + bytes((seq + i) & 0xFF for i in range(200))
    received.append(seq)
print(json.dumps({"received": received, "peers": sorted(peers), "intact": intact,
                  "strangers": strangers}), flush=True)
