"""One UDP datagram of SIZE payload bytes to HOST:PORT, sent as two IP fragments in reverse order
(the later one first) through a raw socket, as a reordering network would deliver it.

Usage: reordered_udp.py HOST PORT SIZE
Prints {"answer": the server's line or null, "sport": the source port}.
"""
import json
import os
import random
import socket
import struct
import sys

from inet_checksum import checksum

host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("0.0.0.0", 0))
receiver.settimeout(5)
sport = receiver.getsockname()[1]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((host, port))
src = probe.getsockname()[0]
probe.close()
length = 8 + size
udp = struct.pack("!HHHH", sport, port, length, 0) + os.urandom(size)
pseudo = socket.inet_aton(src) + socket.inet_aton(host) + struct.pack("!BBH", 0, 17, length)
udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
ident = random.randrange(1, 65536)

def fragment(body, offset, more):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident,
                         (0x2000 if more else 0) | offset // 8, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(host))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + body

raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.sendto(fragment(udp[1480:], 1480, False), (host, 0))
raw.sendto(fragment(udp[:1480], 0, True), (host, 0))
try:
    answer = receiver.recv(2048).decode().strip()
except socket.timeout:
    answer = None
print(json.dumps({"answer": answer, "sport": sport}))
