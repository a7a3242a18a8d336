"""One attempt that must be refused: a TCP connect, or a datagram on a connected UDP socket
followed by a receive (the kernel reports an ICMP port unreachable as ECONNREFUSED there).

Usage: refusal.py PROTO HOST PORT TIMEOUT
Prints {"error": "ECONNREFUSED" | "timeout" | ..., "answer": ..., "elapsed": seconds}.
"""
import errno
import json
import socket
import sys
import time
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
sock.settimeout(timeout)
start = time.monotonic()
error, answer = None, None
try:
    sock.connect((host, port))
    if proto == "udp":
        sock.send(b"anyone?")
    answer = sock.recv(512).decode()
except socket.timeout:
    error = "timeout"
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({"error": error, "answer": answer, "elapsed": time.monotonic() - start}))
