"""``vswitch-lab DIR``: a cluster of several nodes on one host, started and stopped as one.

Every ``*.toml`` in DIR is one node's topology (``config/cluster/`` holds a three-node example).
The command checks all of them first and changes nothing if one is wrong; then it starts the
cluster store the files name (an etcd on a loopback port, with a data directory that lives as long
as the lab), then one ``vswitchd`` per file, each waiting for the one before to be ready, so that
shared objects (the underlay namespace and bridge) are created once. Their log lines go to stderr
prefixed with the node's name. When every node is ready it prints how to look at the cluster and
waits; Ctrl-C (or SIGTERM) stops the daemons, each removing what it created, then etcd.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from vswitch.lab.etcd_server import EtcdError, EtcdServer, etcd_problem

READY_MARKER = "vswitchd ready"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
DAEMON = (sys.executable, "-c", "import sys; from vswitch.cli import vswitchd_main as m; "
          "sys.exit(m())")


class LabError(RuntimeError):
    pass


class Node:
    """One ``vswitchd`` of the lab, its output relayed line by line with its name in front."""

    def __init__(self, name: str, path: Path, socket: str):
        self.name = name
        self.path = path
        self.socket = socket
        self.ready = threading.Event()
        self.process: subprocess.Popen | None = None
        self._relay: threading.Thread | None = None

    def start(self, log_level: str) -> None:
        self.process = subprocess.Popen(
            [*DAEMON, "--config", str(self.path), "--log-level", log_level],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self._relay = threading.Thread(target=self._relay_output, daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if READY_MARKER in line:
                self.ready.set()
            sys.stderr.write(f"[{self.name}] {line}")
        sys.stderr.flush()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.process is None or self.process.poll() is not None:
                raise LabError(f"node {self.name} ({self.path}) exited before it was ready")
            if time.monotonic() > deadline:
                raise LabError(f"node {self.name} was not ready within {timeout:g} s")

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            # SIGINT: stop and remove the node's pods (SIGTERM would keep them for a restart).
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._relay is not None:
            self._relay.join(5)


def load_nodes(directory: Path) -> tuple[list[Node], list[str]]:
    """The lab's nodes and the etcd endpoints their files name; raises LabError on a bad set."""
    from vswitch.config import ConfigError, load_topology
    from vswitch.model import STORE_ETCD

    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise LabError(f"{directory}: no *.toml topology files")
    nodes, endpoints, problems = [], set(), []
    names: dict[str, Path] = {}
    for path in paths:
        try:
            topology = load_topology(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        name = topology.node.name
        if name in names:
            problems.append(f"{path}: node.name: {name!r} is node {names[name]}'s name too")
        names[name] = path
        cluster = topology.cluster
        if cluster is not None and cluster.store == STORE_ETCD:
            endpoints.update(cluster.etcd_endpoints)
        nodes.append(Node(name, path, topology.control.socket))
    if len(endpoints) > 1:
        problems.append(f"{directory}: the files name different etcd endpoints: "
                        f"{', '.join(sorted(endpoints))}; a lab runs one")
    if problems:
        raise LabError("\n".join(problems))
    return nodes, sorted(endpoints)


def local_etcd(endpoint: str) -> EtcdServer:
    """The etcd the lab starts for ``endpoint``, which must be http on a loopback address."""
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise LabError(f"etcd endpoint {endpoint}: the lab starts etcd itself, on "
                       f"http://127.0.0.1:PORT only")
    problem = etcd_problem()
    if problem:
        raise LabError(problem)
    return EtcdServer(client_port=parts.port, name="vswitch-lab")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vswitch-lab", description="Start a cluster of vswitchd nodes on this host (one "
        "per *.toml file of DIR, and the etcd they name); Ctrl-C stops them all.")
    parser.add_argument("directory", metavar="DIR", type=Path,
                        help="a directory of node topologies, e.g. config/cluster")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def _stop_on_sigterm() -> None:
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        nodes, endpoints = load_nodes(args.directory)
    except LabError as exc:
        print(f"vswitch-lab: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("vswitch-lab: must run as root (vswitchd creates namespaces and TAPs)",
              file=sys.stderr)
        return 1
    _stop_on_sigterm()
    etcd = None
    started: list[Node] = []
    try:
        if endpoints:
            etcd = local_etcd(endpoints[0])
            etcd.start()
            print(f"vswitch-lab: etcd at {etcd.endpoint} (data in {etcd.directory})",
                  file=sys.stderr)
        for node in nodes:
            node.start(args.log_level)
            started.append(node)
            node.wait_ready(READY_TIMEOUT)
        print(f"vswitch-lab: {len(nodes)} nodes ready. Try:")
        for node in nodes:
            print(f"  vswitchctl --socket {node.socket} nodes")
        print("Ctrl-C stops the lab.", flush=True)
        while all(node.process.poll() is None for node in started):
            time.sleep(0.5)
        dead = [node.name for node in started if node.process.poll() is not None]
        print(f"vswitch-lab: node {', '.join(dead)} exited; stopping the lab", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vswitch-lab: stopping", file=sys.stderr)
        return 0
    except (LabError, EtcdError) as exc:
        print(f"vswitch-lab: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for node in reversed(started):
            node.stop()
        if etcd is not None:
            etcd.close()


if __name__ == "__main__":
    sys.exit(main())
