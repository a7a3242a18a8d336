"""The classic libpcap file format (what tcpdump and Wireshark read), declared with construct.

``vswitchctl capture -w FILE`` writes frames the switch captured on a port. Timestamps are
microseconds; the link type is Ethernet. Frames from a pod with TSO may be up to 64 KB: they are
written as the switch saw them (one TSO segment, not yet split), which Wireshark shows as an
oversized TCP segment.
"""
from __future__ import annotations

from typing import BinaryIO, Iterable

from construct import Int16ul, Int32sl, Int32ul, Struct

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1

FILE_HEADER = Struct(
    "magic" / Int32ul,
    "version_major" / Int16ul,
    "version_minor" / Int16ul,
    "thiszone" / Int32sl,
    "sigfigs" / Int32ul,
    "snaplen" / Int32ul,
    "linktype" / Int32ul,
)

RECORD_HEADER = Struct(
    "ts_sec" / Int32ul,
    "ts_usec" / Int32ul,
    "incl_len" / Int32ul,
    "orig_len" / Int32ul,
)


def write_pcap(out: BinaryIO, records: Iterable[tuple[float, int, bytes]],
               snaplen: int = 65535) -> int:
    """Write (wall-clock time, original length, captured bytes) records; returns how many."""
    out.write(FILE_HEADER.build(dict(magic=PCAP_MAGIC, version_major=2, version_minor=4,
                                     thiszone=0, sigfigs=0, snaplen=snaplen,
                                     linktype=LINKTYPE_ETHERNET)))
    count = 0
    for when, length, data in records:
        seconds = int(when)
        micros = min(int(round((when - seconds) * 1e6)), 999_999)
        out.write(RECORD_HEADER.build(dict(ts_sec=seconds, ts_usec=micros, incl_len=len(data),
                                           orig_len=length)))
        out.write(data)
        count += 1
    return count


def read_pcap(data: bytes) -> tuple[dict, list[tuple[float, int, bytes]]]:
    """The inverse of ``write_pcap``, for tests and for anyone checking a capture in Python."""
    header = FILE_HEADER.parse(data[: FILE_HEADER.sizeof()])
    if header.magic != PCAP_MAGIC:
        raise ValueError("not a little-endian microsecond pcap file")
    records = []
    at = FILE_HEADER.sizeof()
    size = RECORD_HEADER.sizeof()
    while at + size <= len(data):
        record = RECORD_HEADER.parse(data[at: at + size])
        at += size
        records.append((record.ts_sec + record.ts_usec / 1e6, record.orig_len,
                        data[at: at + record.incl_len]))
        at += record.incl_len
    return dict(header), records
