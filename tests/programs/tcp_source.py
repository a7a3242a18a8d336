"""Send SIZE random bytes over TCP, close the sending side and read the receiver's answer.

Usage: tcp_source.py HOST PORT SIZE
Prints one JSON object: bytes sent, their SHA-256, the answer, and the path MTU the kernel
settled on for the connection (IP_MTU), which the PMTU test checks.
"""
import hashlib
import json
import os
import socket
import sys

from stream_io import read_to_end
IP_MTU = 14
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
conn = socket.create_connection((host, port), timeout=30)
conn.sendall(data)
conn.shutdown(socket.SHUT_WR)
answer = read_to_end(conn, 64)
path_mtu = conn.getsockopt(socket.IPPROTO_IP, IP_MTU)
conn.close()
print(json.dumps({"bytes": size, "sha256": hashlib.sha256(data).hexdigest(),
                  "answer": answer.decode(), "path_mtu": path_mtu}))
