"""One datagram from each of COUNT source ports (20000 upwards, one socket at a time, so the
file-descriptor limit plays no part): COUNT distinct flows. Paced at about 2,000 flows per
second: each first packet takes the switch's slow path, and a faster burst would overflow the
pod's transmit queue, so fewer flows would reach the switch than were sent.

Usage: flood_udp.py HOST PORT COUNT
Prints {"flows": number of distinct source ports used}.
"""
import json
import socket
import sys
import time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ports = set()
for sport in range(20000, 20000 + count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", sport))
    ports.add(sock.getsockname()[1])
    sock.sendto(b"flow", (host, port))
    sock.close()
    time.sleep(0.0005)
print(json.dumps({"flows": len(ports)}))
