"""Requests to HOST:PORT, each on a new socket, so each is a new flow with its own source port.

Usage: requests.py PROTO HOST PORT COUNT TIMEOUT [SOURCE_PORT] [PAUSE]
PROTO is tcp or udp; SOURCE_PORT 0 (the default) lets the kernel choose; PAUSE is the wait
between requests in seconds. Prints {"answers": [...], "errors": [...]}, one entry per request
in order (null in the other list).
"""
import errno
import json
import socket
import sys
import time
proto, host, port, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
sport = int(sys.argv[6]) if len(sys.argv) > 6 else 0
pause = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
answers, errors = [], []
for _ in range(count):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(timeout)
    try:
        if sport:
            sock.bind(("0.0.0.0", sport))
        sock.connect((host, port))
        if proto == "udp":
            sock.send(b"hello")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
        answers.append(data.decode().strip())
        errors.append(None)
    except OSError as exc:
        answers.append(None)
        errors.append(errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__)
    finally:
        sock.close()
    if pause:
        time.sleep(pause)
print(json.dumps({"answers": answers, "errors": errors}))
