"""A long-running UDP client with one fixed source port, as a DNS resolver or a metrics collector
is: one unconnected socket (so ICMP errors do not end it), a datagram every INTERVAL seconds,
each answer logged with the wall-clock time it arrived.

Usage: fixed_port_udp.py HOST PORT SOURCE_PORT DURATION INTERVAL
Prints "started", then stops at a line on stdin or after DURATION seconds at the latest and
prints {"sent": N, "events": [[time, answer], ...]}.
"""
import json
import select
import socket
import sys
import time
host, port, sport, duration, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", sport))
print("started", flush=True)
events, sent, stop = [], 0, False
end = time.monotonic() + duration
while time.monotonic() < end and not stop:
    sock.sendto(b"tick", (host, port))
    sent += 1
    deadline = time.monotonic() + interval
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready = select.select([sock, sys.stdin], [], [], left)[0]
        if sys.stdin in ready:
            sys.stdin.readline()
            stop = True
            break
        if not ready:
            break
        try:
            data = sock.recv(512)
        except OSError:
            continue
        events.append([time.time(), data.decode().strip()])
print(json.dumps({"sent": sent, "events": events}), flush=True)
