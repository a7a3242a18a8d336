"""Frames arriving on eth0 from one IPv4 source, captured with AF_PACKET before the pod's IP
stack judges them. PACKET_AUXDATA tells whether the L4 checksum is complete: a frame the sender
handed over with a partial checksum (checksum offload through the TAPs) arrives still partial,
and TP_STATUS_CSUMNOTREADY marks it. Large frames are reported by their headers only.

Usage: capture_frames.py SOURCE LIMIT FIRST_WAIT IDLE
Prints "listening", then stops after LIMIT frames or when none came within FIRST_WAIT seconds
(the first) or IDLE seconds (the later ones), and prints a JSON list of
{"length", "status", "hex"}.
"""
import json
import select
import socket
import struct
import sys
source, limit, first_wait, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
SOL_PACKET, PACKET_AUXDATA = 263, 8
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("eth0", 0))
sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
wanted = socket.inet_aton(source)
print("listening", flush=True)
frames, wait = [], first_wait
while len(frames) < limit:
    if not select.select([sock], [], [], wait)[0]:
        break
    data, ancillary, _, address = sock.recvmsg(1 << 17, 256)
    if address[2] == 4 or data[26:30] != wanted:
        continue
    wait = idle
    status = 0
    for level, kind, aux in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status = struct.unpack_from("I", aux)[0]
    frames.append({"length": len(data), "status": status,
                   "hex": (data if len(data) <= 1600 else data[:128]).hex()})
print(json.dumps(frames), flush=True)
