"""A UDP datagram with a given TTL, and the ICMP error the kernel queues for the socket
(IP_RECVERR): struct sock_extended_err {u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad;
u32 ee_info, ee_data;} followed by the offender's sockaddr_in.

Usage: udp_ttl_probe.py HOST PORT TTL TIMEOUT
Prints the error as {"errno", "origin", "type", "code", "offender", "elapsed_ms"}, or null.
"""
import json
import socket
import struct
import sys
import time
host, port, ttl, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
IP_RECVERR = 11
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
sock.connect((host, port))
start = time.monotonic()
sock.send(b"vswitch ttl probe")
found = None
while found is None and time.monotonic() - start < timeout:
    try:
        _, ancillary, _, _ = sock.recvmsg(2048, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except BlockingIOError:
        time.sleep(0.005)
        continue
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_RECVERR:
            errno_, origin, etype, code, _, info, _ = struct.unpack_from("=IBBBBII", data)
            offender = socket.inet_ntoa(data[16 + 4:16 + 8])
            found = {"errno": errno_, "origin": origin, "type": etype, "code": code,
                     "offender": offender, "elapsed_ms": (time.monotonic() - start) * 1000}
print(json.dumps(found))
