"""A TCP stream to a sink listener of echo_server.py.

Usage: stream.py HOST PORT DURATION
Prints the greeting as its first line, then sends random data for DURATION seconds in 16 KB
writes, closes its side and prints JSON with what it sent and what the sink reported. With
DURATION < 0 the connection is held idle until a line arrives on stdin, and then 1 MB is sent:
a connection kept open while the test inspects or disturbs the node.
"""
import hashlib
import json
import os
import socket
import sys
import time

from stream_io import read_to_end
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = socket.create_connection((host, port), timeout=30)
greeting = b""
while not greeting.endswith(b"\n"):
    chunk = conn.recv(1)
    if not chunk:
        break
    greeting += chunk
print(greeting.decode().strip(), flush=True)
digest, sent = hashlib.sha256(), 0
if duration < 0:
    sys.stdin.readline()
    for _ in range(64):
        block = os.urandom(16384)
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
else:
    end = time.monotonic() + duration
    while time.monotonic() < end:
        block = os.urandom(16384)
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
        time.sleep(0.002)
conn.shutdown(socket.SHUT_WR)
answer = read_to_end(conn)
conn.close()
print(json.dumps({"sent": sent, "sha256": digest.hexdigest(), "sink": json.loads(answer)}), flush=True)
