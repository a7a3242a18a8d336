"""The internet checksum (RFC 1071), for the programs here that build or check raw packets.

Not a program: the others import it as a sibling (a script's own directory is first on its
``sys.path``), since they run inside pods with nothing but the standard library.
"""
import struct


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
