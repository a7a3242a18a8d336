"""One ICMP echo over a raw socket, reporting either the reply (with the TTL it arrived with) or
the ICMP error that quotes our echo, with the error's own checksum checked.

Usage: icmp_probe.py TIMEOUT TARGET
Prints {"reply": {"ttl", "elapsed_ms"} or null, "error": {"type", "code", "source",
"elapsed_ms", "icmp_checksum_ok", "quoted_ttl"} or null}.
"""
import json
import os
import select
import socket
import struct
import sys
import time

from inet_checksum import checksum

timeout, target = float(sys.argv[1]), sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq = os.getpid() & 0xFFFF, 1
payload = b"vswitch-routing-probe"
header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
start = time.monotonic()
sock.sendto(packet, (target, 0))
result = {"reply": None, "error": None}
while result["reply"] is None and result["error"] is None:
    left = start + timeout - time.monotonic()
    if left <= 0 or not select.select([sock], [], [], left)[0]:
        break
    data, (source, _) = sock.recvfrom(65535)
    ihl = (data[0] & 0x0F) * 4
    kind, code = data[ihl], data[ihl + 1]
    elapsed_ms = (time.monotonic() - start) * 1000
    if kind == 0 and source == target:
        rid, rseq = struct.unpack("!HH", data[ihl + 4:ihl + 8])
        if (rid, rseq) == (ident, seq) and data[ihl + 8:] == payload:
            result["reply"] = {"ttl": data[8], "elapsed_ms": elapsed_ms}
    elif kind in (3, 11, 12):
        inner = data[ihl + 8:]
        inner_ihl = (inner[0] & 0x0F) * 4
        quoted_id = struct.unpack("!H", inner[inner_ihl + 4:inner_ihl + 6])[0]
        if inner[9] == 1 and socket.inet_ntoa(inner[16:20]) == target and quoted_id == ident:
            result["error"] = {"type": kind, "code": code, "source": source,
                               "elapsed_ms": elapsed_ms,
                               "icmp_checksum_ok": checksum(data[ihl:]) == 0,
                               "quoted_ttl": inner[8]}
print(json.dumps(result))
