#!/usr/bin/env python3
"""A million broken frames through the pipeline in one go: frames/s, dispositions, exceptions.

    python3 bench/fuzz.py [--frames 1000000] [--seed 0] [--accel native|pure] [--framing 10|24]
                          [--json bench/results/fuzz-<timestamp>.json]

The node is ``tests/fuzz/lab.py``'s: three pods, the host port and an uplink that carries the
outside world and a VXLAN overlay, with ClusterIP and NodePort services, every port framed with
a virtio-net header of ``--framing`` bytes. It first receives its corpus of valid frames (ARP,
switched, routed, translated, to and from the overlay, fragments, checksum offload and GSO), so
that tables, connections and the flow cache are populated; then ``--frames`` frames drawn by
``lab.random_case`` from the seed: mostly valid frames broken in one to three ways (bytes
flipped, cut, extended, spliced, random virtio-net headers), some valid ones, some random bytes
on a random port. Time advances 50 ms a frame and the timers run every 64 frames, so entries age
and expire along the way.

Each frame is its own ``process_batch`` call, so that an exception names the frame that raised
it: the first ``MAX_REPORTED`` are reported with the frame in hex, the port and the traceback's
last lines, and the run goes on. At the end the run checks the statistics invariant (each port
counted what it was given, and the dispositions add up to it) and reports the tables' sizes
against their limits. ``frames_per_s`` counts the time spent in the switch only; making the
frames is not part of it. ``cpu_s`` is the CPU time of the whole loop less the making of frames:
next to ``busy_s`` it shows how much of the machine the run had. The exit status is 1 when any
frame raised or the invariant broke.

The unit test ``tests/unit/test_fuzz_bench.py`` runs ``run_frames`` on 20,000 frames.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402  (bench/ is the script's directory: its helpers, not a package)
from tests.fuzz import lab  # noqa: E402
from vswitch.core.switch import Switch  # noqa: E402

MAX_REPORTED = 20
STEP_S = 0.05
TIMER_EVERY = 64
CHUNK = 4096


def _tables(switch: Switch) -> dict:
    """Table sizes next to their limits, at the end of a run."""
    s = switch.statistics()
    conntrack = s["conntrack"]
    return {
        "fdb": {"entries": s["fdb"]["entries"],
                "limit_per_port": switch.topology.dataplane.mac_limit},
        "neighbors": s["neighbors"],
        "conntrack": {k: conntrack[k] for k in ("entries", "max") if k in conntrack},
        "fragments_held": s["fragments_held"],
        "flow_cache": {k: s["flow_cache"][k] for k in ("entries", "capacity")},
    }


def run_frames(frames: int, seed: int = 0, accel_name: str = "native",
               vnet_len: int = lab.FRAMINGS[0], log=lambda message: None) -> dict:
    """The core of the benchmark: ``frames`` random and mutated frames through a fresh node."""
    switch = lab.node(accel_name, vnet_len)
    corpus = lab.corpus(switch)
    rng = random.Random(seed)
    received: Counter = Counter()
    exceptions: list[dict] = []
    raised = 0
    busy = 0.0
    now = 0.0
    made = 0.0
    clock = time.perf_counter

    def work():
        """The corpus, then the random cases, made a chunk at a time (a million frames at once
        would take a few hundred MB)."""
        nonlocal made
        yield from corpus
        left = frames
        while left:
            started = time.process_time()
            chunk = [lab.random_case(rng, corpus, vnet_len) for _ in range(min(left, CHUNK))]
            made += time.process_time() - started
            left -= len(chunk)
            yield from chunk

    cpu_started = time.process_time()
    for index, (port, frame) in enumerate(work()):
        now += STEP_S
        received[port] += 1
        try:
            t0 = clock()
            switch.process_batch(port, [frame], now)
            if index % TIMER_EVERY == 0:
                switch.handle_timer(now)
            busy += clock() - t0
        except Exception as exc:  # the finding this benchmark exists to report
            raised += 1
            if len(exceptions) < MAX_REPORTED:
                exceptions.append({
                    "index": index, "port": port, "frame": frame.hex(),
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc().splitlines()[-6:],
                })
                log(f"frame {index} on port {port} raised {type(exc).__name__}: {exc}")
        if index and index % 200_000 == 0:
            log(f"{index:,} frames, {index / busy:,.0f} frames/s")
    cpu = time.process_time() - cpu_started - made
    statistics = switch.statistics()
    ports = {spec["id"]: spec for spec in statistics["ports"].values()}
    counted = {port: ports[port]["rx_packets"] for port in lab.PORTS}
    dispositions = statistics["dispositions"]
    drops: Counter = Counter()
    for spec in statistics["ports"].values():
        drops.update(spec["rx_drops"])
    total = len(corpus) + frames
    return {
        "frames": total,
        "corpus_frames": len(corpus),
        "seed": seed,
        "accel": accel_name,
        "vnet_hdr_len": vnet_len,
        "busy_s": round(busy, 3),
        "cpu_s": round(cpu, 3),
        "making_frames_cpu_s": round(made, 3),
        "frames_per_s": round(total / busy) if busy else None,
        "exceptions": raised,
        "first_exceptions": exceptions,
        "received": {str(port): received[port] for port in lab.PORTS},
        "dispositions": dispositions,
        "invariant_holds": (counted == {port: received[port] for port in lab.PORTS}
                            and sum(dispositions.values()) == total),
        "drop_reasons": dict(drops.most_common()),
        "tables": _tables(switch),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000,
                        help="random and mutated frames after the corpus (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="reproduces a run (default 0)")
    parser.add_argument("--accel", choices=("native", "pure"), default="native")
    parser.add_argument("--framing", type=int, choices=lab.FRAMINGS, default=lab.FRAMINGS[0],
                        help="virtio-net header bytes on every port (default 10)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="results file (default bench/results/fuzz-<time>.json)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be positive")
    if args.json_path is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json_path = str(Path(__file__).parent / "results" / f"fuzz-{stamp}.json")
    return args


def run(args: argparse.Namespace, log) -> dict:
    log(f"{args.frames:,} frames, seed {args.seed}, {args.accel} accel, "
        f"{args.framing}-byte virtio-net headers")
    started = time.time()
    results = run_frames(args.frames, args.seed, args.accel, args.framing, log)
    return {
        "started": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        **results,
    }


def render(results: dict) -> str:
    lines = [
        f"frames           {results['frames']:>12,}  ({results['corpus_frames']} valid first)",
        f"frames/s         {results['frames_per_s']:>12,}  ({results['accel']} accel, "
        f"{results['busy_s']} s in the switch, {results['cpu_s']} s of CPU)",
        f"exceptions       {results['exceptions']:>12,}",
        f"invariant holds  {str(results['invariant_holds']):>12}",
        "",
        "disposition      frames",
    ]
    lines += [f"{name:<16} {count:>12,}" for name, count in results["dispositions"].items()]
    lines += ["", "drop reason (top 10)            frames"]
    lines += [f"{reason:<28} {count:>10,}"
              for reason, count in list(results["drop_reasons"].items())[:10]]
    for found in results["first_exceptions"]:
        lines += ["", f"frame {found['index']} on port {found['port']}: {found['error']}",
                  f"  {found['frame']}", *("  " + line for line in found["traceback"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = bench.script_main("fuzz", args, run, lambda results: print(render(results)))
    if status == 0:
        results = json.loads(Path(args.json_path).read_text())
        if results["exceptions"] or not results["invariant_holds"]:
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
