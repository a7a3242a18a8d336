"""One row of a network policy probe matrix: does each target answer, over TCP or UDP?

Usage: policy_probe.py TIMEOUT PROTO:HOST:PORT...
Tries every target at once (one thread each): TCP connects and reads the server's line, UDP
sends a datagram and waits for the answering line; either must finish within TIMEOUT seconds.
A policy drops denied packets silently, so a denial shows as a timeout, never as a refusal.
Prints {"PROTO:HOST:PORT": true | false, ...}.
"""
import json
import socket
import sys
import threading

timeout = float(sys.argv[1])
targets = sys.argv[2:]
results = {}


def probe(target):
    proto, host, port = target.split(":")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, int(port)))
            if proto == "udp":
                sock.send(b"probe\n")
            results[target] = sock.recv(512).endswith(b"\n")
        except OSError:
            results[target] = False


threads = [threading.Thread(target=probe, args=(target,)) for target in targets]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
