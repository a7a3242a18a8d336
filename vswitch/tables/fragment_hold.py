"""Later fragments that arrive before their datagram's first fragment, held until it comes.

Only the first fragment of a datagram carries the ports, so only it can find (or open) the
translated connection; later fragments follow its translation (``NatContext.fragments``). When the
network reorders a datagram and a later fragment of a connection that needs translation arrives
first, forwarding it untranslated would leak the wrong addresses and dropping it would lose the
datagram; the kernel's conntrack reassembles before it looks. vswitch does not reassemble: it
holds such fragments here, keyed like ``NatContext.fragments`` by (protocol, source, destination,
IP id), and releases them once the first fragment has been seen, to be run through the pipeline
again. Held frames are bounded in number per datagram and in total, and are dropped (counted)
when their first fragment does not come within ``timeout`` seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FragmentKey = tuple[int, bytes, bytes, int]

HOLD_TIMEOUT = 5.0        # seconds a later fragment waits for its first (Linux waits up to 30 s)
MAX_HELD_FRAMES = 256     # in all datagrams together
MAX_FRAMES_PER_DATAGRAM = 64  # a 64 KB datagram in 1 KB fragments


@dataclass
class _Waiting:
    expires: float
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (ingress port id, frame)


class FragmentHold:
    def __init__(self, timeout: float = HOLD_TIMEOUT, max_frames: int = MAX_HELD_FRAMES,
                 max_per_datagram: int = MAX_FRAMES_PER_DATAGRAM):
        self.timeout = timeout
        self.max_frames = max_frames
        self.max_per_datagram = max_per_datagram
        self._waiting: dict[FragmentKey, _Waiting] = {}
        self._frames = 0
        self.held = 0       # frames ever held
        self.released = 0   # frames handed back after their first fragment came
        self.expired = 0    # frames dropped because their first fragment never came
        self.refused = 0    # frames not held: the per-datagram or total bound was reached

    def __len__(self) -> int:
        return self._frames

    def __contains__(self, key: FragmentKey) -> bool:
        return key in self._waiting

    def hold(self, key: FragmentKey, port_id: int, frame: bytes, now: float) -> bool:
        """Keep ``frame`` until ``release(key)``; False (nothing kept) when a bound is reached.
        The deadline is set by the datagram's first held fragment and never extended."""
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = _Waiting(now + self.timeout)
        if self._frames >= self.max_frames or len(waiting.frames) >= self.max_per_datagram:
            self.refused += 1
            return False
        waiting.frames.append((port_id, bytes(frame)))
        self._waiting[key] = waiting
        self._frames += 1
        self.held += 1
        return True

    def release(self, key: FragmentKey) -> list[tuple[int, bytes]]:
        """The frames held for ``key`` in arrival order, forgotten here."""
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return []
        self._frames -= len(waiting.frames)
        self.released += len(waiting.frames)
        return waiting.frames

    def expire(self, now: float) -> int:
        """Drop the frames of datagrams whose first fragment did not come in time."""
        gone = [key for key, waiting in self._waiting.items() if waiting.expires <= now]
        dropped = 0
        for key in gone:
            dropped += len(self._waiting.pop(key).frames)
        self._frames -= dropped
        self.expired += dropped
        return dropped

    def next_deadline(self) -> float | None:
        return min((w.expires for w in self._waiting.values()), default=None)

    def statistics(self) -> dict[str, int]:
        return {"waiting_datagrams": len(self._waiting), "waiting_frames": self._frames,
                "held": self.held, "released": self.released, "expired": self.expired,
                "refused": self.refused}
