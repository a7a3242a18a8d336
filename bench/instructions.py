"""Instructions per forwarded frame on the cached paths, counted by valgrind, not timed.

Timed figures on a shared 2-vCPU machine move by half between two runs of the same code; an
instruction count does not. Each workload builds a switch in-process (no TAPs), sends the first
packets of its flow through the pipeline so that the cache holds the decision, and then sends
bursts of 64 frames. The script runs every workload twice under ``valgrind --tool=callgrind``,
with no bursts and with ``--bursts`` bursts, and reports the difference per frame: start-up and
flow set-up cancel out. Run it on two trees (``PYTHONPATH=OTHER_TREE``) to compare a change.

    python3 bench/instructions.py                 # all workloads, 40 bursts each
    python3 bench/instructions.py --json out.json

Needs Debian's ``valgrind``. Each run of a workload takes some tens of seconds under valgrind.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BURST = 64
WORKLOADS = ("switched-udp", "clusterip-tcp-to-backend", "clusterip-tcp-to-client")


def _frame(text: str, src_mac: bytes, dst_mac: bytes) -> bytes:
    from vswitch.wire import headers as h
    from vswitch.wire.text import build_frame, parse_packet

    return h.ZERO_VNET_HDR + build_frame(parse_packet(text), src_mac, dst_mac)


def prepare(workload: str):
    """A switch whose flow cache holds ``workload``'s decision, the port and the burst to send."""
    from first_packet import build, service_ip
    from vswitch.wire.addresses import mac_bytes

    switch, _ = build(1, "native")
    client, web1, _web2 = switch.topology.pods
    gateway = mac_bytes(switch.topology.node.gateway_mac)
    cmac, wmac = mac_bytes(client.mac), mac_bytes(web1.mac)
    if workload == "switched-udp":
        switch.process_batch(2, [_frame(f"udp {web1.ip}:53 > {client.ip}:5000 len 8", wmac,
                                        cmac)], 0.0)
        burst = [_frame(f"udp {client.ip}:5000 > {web1.ip}:53 len 100", cmac, wmac)] * BURST
        switch.process_batch(1, burst, 0.1)
        return switch, 1, burst
    vip = service_ip(0)
    (syn,) = switch.process_batch(1, [_frame(f"tcp {client.ip}:40000 > {vip}:80 flags S",
                                             cmac, gateway)], 0.0)
    backend = switch.topology.pods[syn.port - 1]
    bmac = mac_bytes(backend.mac)
    switch.process_batch(syn.port, [_frame(f"tcp {backend.ip}:8080 > {client.ip}:40000 flags SA",
                                           bmac, cmac)], 0.1)
    to_backend = [_frame(f"tcp {client.ip}:40000 > {vip}:80 flags PA len 1400", cmac,
                         gateway)] * BURST
    to_client = [_frame(f"tcp {backend.ip}:8080 > {client.ip}:40000 flags A", bmac,
                        cmac)] * BURST
    switch.process_batch(1, to_backend, 0.2)
    switch.process_batch(syn.port, to_client, 0.2)
    if workload == "clusterip-tcp-to-backend":
        return switch, 1, to_backend
    return switch, syn.port, to_client


def child(workload: str, bursts: int) -> None:
    switch, port, burst = prepare(workload)
    hits = switch.statistics()["dispositions"]["cache-hit"]
    for _ in range(bursts):
        switch.process_batch(port, burst, 1.0)
    gained = switch.statistics()["dispositions"]["cache-hit"] - hits
    if gained != bursts * BURST:
        raise SystemExit(f"{workload}: {gained} of {bursts * BURST} frames hit the cache")


def count(workload: str, bursts: int) -> int:
    with tempfile.TemporaryDirectory(prefix="vsw-callgrind-") as tmp:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             os.path.realpath(sys.executable), __file__, "--child", workload,
             "--bursts", str(bursts)],
            capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{workload}: valgrind run failed:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=40, help="bursts of 64 frames per workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.bursts)
        return 0
    rows = []
    for workload in args.workloads.split(","):
        print(f"counting {workload} ...", file=sys.stderr)
        base, loaded = count(workload, 0), count(workload, args.bursts)
        rows.append({"workload": workload, "bursts": args.bursts, "frames": args.bursts * BURST,
                     "instructions_per_frame": round((loaded - base) / (args.bursts * BURST))})
    print(f"{'workload':<28} instructions per frame")
    for row in rows:
        print(f"{row['workload']:<28} {row['instructions_per_frame']:,}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
