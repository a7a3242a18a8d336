"""Rate limits for the ICMP errors the router generates, after Linux's ``icmp_ratelimit``.

Linux keeps a token bucket per destination (one token per ``icmp_ratelimit`` = 1 s, bursts of
6) and a global one (``icmp_msgs_per_sec`` = 1000, burst 50). Fragmentation Needed is exempt from
the per-destination bucket, as in Linux: path-MTU discovery must not stall because a sender opened
many connections at once. Time is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IcmpRateLimits:
    per_destination_interval: float = 1.0
    per_destination_burst: int = 6
    global_per_second: float = 1000.0
    global_burst: int = 50
    max_destinations: int = 4096


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class IcmpRateLimiter:
    def __init__(self, limits: IcmpRateLimits = IcmpRateLimits()):
        self.limits = limits
        self._global = _Bucket(float(limits.global_burst), 0.0)
        self._peers: dict[bytes, _Bucket] = {}
        self.limited = 0

    @staticmethod
    def _take(bucket: _Bucket, now: float, rate: float, burst: int) -> bool:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def allow(self, destination: bytes, now: float, exempt_per_destination: bool = False) -> bool:
        limits = self.limits
        if not exempt_per_destination:
            peer = self._peers.get(destination)
            if peer is None:
                if len(self._peers) >= limits.max_destinations:
                    self._peers.clear()
                peer = self._peers[destination] = _Bucket(float(limits.per_destination_burst), now)
            if not self._take(peer, now, 1.0 / limits.per_destination_interval,
                              limits.per_destination_burst):
                self.limited += 1
                return False
        if not self._take(self._global, now, limits.global_per_second, limits.global_burst):
            self.limited += 1
            return False
        return True
