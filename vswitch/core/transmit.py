"""What the core asks the runtime to do, as plain values. The core never performs I/O itself."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transmit:
    """Write ``data`` to port ``port``: exactly the bytes for the port's file descriptor.

    For a port opened with a virtio-net header, ``data`` starts with that header; the core adds or
    keeps it, the runtime writes the buffer as it is.
    """

    port: int
    data: bytes
