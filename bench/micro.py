"""Micro-benchmarks of vswitch.accel: the native module against its pure-Python twin, in one run.

    python3 bench/micro.py [--json bench/results/micro.json] [--seconds 0.3]

Each figure is the best of three timed rounds, and each round repeats the operation until it has
run for at least ``--seconds``; the best round is the one least disturbed by the rest of the
machine. Batch operations use bursts of 256, the size of a full TAP drain. Not part of the test
suite: numbers depend on the machine, and the tests check behaviour, not speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from vswitch import accel as accel_api

BURST = 256
LPM_ROUTES = 100_000
EXACT_ENTRIES = 50_000


@dataclass(frozen=True)
class Result:
    name: str
    unit: str
    native: float
    pure: float

    @property
    def ratio(self) -> float:
        return self.native / self.pure if self.pure else float("inf")


def rate(operation: Callable[[], object], items_per_call: float, seconds: float) -> float:
    """Items per second for the best of three rounds of repeated calls."""
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds:
            operation()
            calls += 1
            elapsed = time.perf_counter() - start
        best = max(best, calls * items_per_call / elapsed)
    return best


def checksum_rate(impl: ModuleType, size: int, seconds: float) -> float:
    data = random.Random(size).randbytes(size)
    return rate(lambda: impl.checksum(data), size / 1e9, seconds)


def mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


def lpm_routes(rng: random.Random) -> dict[tuple[int, int], int]:
    """A routing table shaped like a real one: mostly /24s, some aggregates and host routes."""
    lengths = [24] * 6 + [16, 20, 22, 23, 28, 32]
    routes: dict[tuple[int, int], int] = {}
    while len(routes) < LPM_ROUTES:
        length = rng.choice(lengths)
        routes[(rng.getrandbits(32) & mask(length), length)] = len(routes)
    return routes


def lpm_rate(impl: ModuleType, routes, addrs, seconds: float) -> tuple[float, object]:
    table = impl.Lpm4(max_routes=len(routes))
    for (prefix, length), value in routes.items():
        table.add(prefix, length, value)
    return rate(lambda: table.lookup_batch(addrs), len(addrs), seconds), table.statistics()


def exact_rate(impl: ModuleType, keys: list[bytes], probes: list[bytes], seconds: float) -> float:
    table = impl.ExactTable(8, len(keys), seed=1)
    for i, key in enumerate(keys):
        table.insert(key, i)
    return rate(lambda: table.lookup_batch(probes), len(probes), seconds)


def flow_frames(rng: random.Random, size: int) -> list[bytes]:
    frames = []
    for _ in range(BURST):
        payload = rng.randbytes(size - 14 - 20)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, 6, 0,
                         rng.randbytes(4), rng.randbytes(4))
        frames.append(bytes(10) + rng.randbytes(12) + b"\x08\x00" + ip + payload)
    return frames


def flow_rate(impl: ModuleType, frames: list[bytes], seconds: float) -> float:
    extractor = impl.FlowKeyExtractor()
    return rate(lambda: extractor.extract(frames, 10), len(frames), seconds)


def nat_packet(rng: random.Random, size: int) -> bytes:
    """A UDP datagram of ``size`` bytes with valid checksums, as a client pod sends it."""
    src, dst = bytes([10, 244, 1, 50]), bytes([10, 96, 0, 10])
    payload = rng.randbytes(size - 28)
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    pure = accel_api.load("pure")
    udp = udp[:6] + struct.pack("!H", pure.udp_checksum(src, dst, udp)) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    return header[:10] + struct.pack("!H", pure.checksum(header)) + header[12:] + udp


def nat_rate(impl: ModuleType, packet: bytes, seconds: float) -> float:
    """DNAT to a backend and back, as the per-connection fast path does for each packet."""
    backend, vip = bytes([10, 244, 1, 10]), bytes([10, 96, 0, 10])

    def both_ways() -> None:
        buf = bytearray(packet)
        impl.nat_rewrite(buf, dst=backend, dport=8080)
        impl.nat_rewrite(buf, dst=vip, dport=53)

    return rate(both_ways, 2, seconds)


def run(seconds: float) -> tuple[list[Result], dict]:
    native, pure = accel_api.load("native"), accel_api.load("pure")
    rng = random.Random(2024)
    results = []
    for size, label in ((1500, "1500 B"), (65536, "64 KB")):
        results.append(Result(f"checksum {label}", "GB/s",
                              checksum_rate(native, size, seconds), checksum_rate(pure, size, seconds)))

    routes = lpm_routes(rng)
    sampled = rng.sample(sorted(routes), BURST // 2)
    covered = [p | (rng.getrandbits(32 - n) if n < 32 else 0) for p, n in sampled]
    addrs = covered + [rng.getrandbits(32) for _ in range(BURST - len(covered))]
    lpm_native, stats = lpm_rate(native, routes, addrs, seconds)
    lpm_pure, _ = lpm_rate(pure, routes, addrs, seconds)
    results.append(Result(f"LPM lookup, {LPM_ROUTES:,} routes, batch {BURST}", "lookups/s",
                          lpm_native, lpm_pure))

    keys = [rng.randbytes(6) + b"\x00\x01" for _ in range(EXACT_ENTRIES)]
    probes = rng.sample(keys, BURST * 3 // 4) + [rng.randbytes(8) for _ in range(BURST // 4)]
    results.append(Result(f"exact lookup, {EXACT_ENTRIES:,} x 8 B keys, batch {BURST}", "lookups/s",
                          exact_rate(native, keys, probes, seconds),
                          exact_rate(pure, keys, probes, seconds)))

    for size in (64, 1500):
        frames = flow_frames(rng, size)
        results.append(Result(f"flow keys, {size} B frames, batch {BURST}", "frames/s",
                              flow_rate(native, frames, seconds), flow_rate(pure, frames, seconds)))

    packet = nat_packet(rng, 64)
    results.append(Result("NAT rewrite (DNAT), 64 B UDP datagram", "packets/s",
                          nat_rate(native, packet, seconds), nat_rate(pure, packet, seconds)))

    extra = {
        "lpm_groups": stats.groups,
        "lpm_trie_bytes": (1 << 16) * 4 + stats.groups * 1024,
    }
    return results, extra


def human(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {suffix}"
    return f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--seconds", type=float, default=0.3, help="minimum time per timed round")
    args = parser.parse_args(argv)

    results, extra = run(args.seconds)
    width = max(len(r.name) for r in results)
    print(f"{'benchmark':<{width}}  {'unit':<10} {'native':>10} {'pure':>10} {'ratio':>8}")
    for r in results:
        print(f"{r.name:<{width}}  {r.unit:<10} {human(r.native):>10} {human(r.pure):>10} {r.ratio:>7.1f}x")
    print(f"LPM trie for {LPM_ROUTES:,} routes: {extra['lpm_groups']:,} groups, "
          f"{extra['lpm_trie_bytes'] / 2**20:.1f} MiB (C layout)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "seconds_per_round": args.seconds,
            "results": [asdict(r) | {"ratio": r.ratio} for r in results],
            **extra,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
