"""Where the search for a free SNAT port starts: a keyed hash of the flow.

Theory of operation
-------------------
* When the client's own port cannot be kept, the connection tracker scans the port range for one
  whose reply tuple is free. Starting every scan at the bottom of the range would make clients
  that collide all probe the same ports, one after the other; starting at a hash of the flow
  spreads them, as Linux does.
* The hash is a blake2b keyed with a secret, not ``hash()`` (salted per process, so neither
  reproducible nor under the caller's control): ports must not be predictable from outside (Linux
  hashes with a boot-time secret for the same reason), and a test with a fixed key gets the same
  ports every run. The caller draws the key from its seeded source.
"""
from __future__ import annotations

import hashlib
import struct

# What a port scan's start is hashed from: protocol, SNAT address, remote address and port, and
# the port the client wanted.
_SCAN_FLOW = struct.Struct("!B4s4sHH")


def scan_key(port_salt: int) -> bytes:
    """The hash key for ``scan_start``, from the caller's seeded salt."""
    return (port_salt % 2**64).to_bytes(8, "big")


def scan_start(key: bytes, proto: int, src_ip: bytes, remote_ip: bytes, remote_port: int,
               preferred: int, span: int) -> int:
    """The offset, in ``range(span)``, at which to start scanning a port range of ``span`` ports
    for this flow."""
    flow = _SCAN_FLOW.pack(proto, src_ip, remote_ip, remote_port, preferred)
    digest = hashlib.blake2b(flow, digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") % span
