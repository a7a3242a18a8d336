"""The benchmark's peer datapaths: what else joins two pods through TAPs in userspace.

``c-tap-loop``
    ``tap_loop.c``, compiled with gcc into a temporary directory for the run: two TAPs with the
    virtio-net header and checksum/TSO offloads (as vswitchd opens its pod ports), every frame
    read on one written to the other by one thread around ``poll()``. No parsing, no lookup: the
    floor any userspace switch over TAPs stands on, and the reference the issue's latency and
    throughput targets are set against.
``vde``
    ``vde_switch`` (Debian's ``vde2``) with a TAP on each of two ports (``--tap``), learning
    switch, one process; no virtio-net header, so one MTU-sized frame per read and write.
``ovs``
    Open vSwitch's userspace datapath: a private ``ovsdb-server`` and ``ovs-vswitchd`` (their
    database, sockets and logs in a temporary directory, nothing in the system's run directory)
    with userspace TSO enabled before the daemon starts, a ``netdev`` bridge (NORMAL action: a
    learning switch) and two internal ports, which that datapath makes as TAPs with the
    virtio-net header. The daemon is stopped with ``exit --cleanup``, which removes its
    datapath device ``ovs-netdev``; that name is fixed, so the variant is skipped when another
    userspace datapath of Open vSwitch already runs on the host.

Each builder makes the pods' namespaces, starts the datapath, waits for its TAPs to exist and
moves them into the namespaces; addressing them is ``bench.py``'s, as for the bridge's veths. The
TAPs are not persistent: they belong to the processes that opened them and disappear with them.
Processes are started through ``bench.py``'s ``start`` (so that its cleanup can end them by pid)
and stopped with SIGTERM when the stack closes, before the namespaces are removed. A variant
whose program is not installed is skipped, with the reason, instead of failing the run; nothing
is installed from here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyroute2 import IPRoute

from vswitch.lab.namespaces import create_netns

C_TAP_LOOP = "c-tap-loop"
VDE = "vde"
OVS = "ovs"
VARIANTS = (C_TAP_LOOP, VDE, OVS)
TAP_LOOP_SOURCE = Path(__file__).resolve().parent / "tap_loop.c"
# What each variant needs on PATH, and the Debian package that brings it.
REQUIRED = {C_TAP_LOOP: (("gcc", "gcc"),),
            VDE: (("vde_switch", "vde2"),),
            OVS: (("ovs-vswitchd", "openvswitch-switch"), ("ovsdb-server", "openvswitch-common"),
                  ("ovsdb-tool", "openvswitch-common"), ("ovs-vsctl", "openvswitch-common"),
                  ("ovs-appctl", "openvswitch-common"))}
OVS_DATAPATH_DEVICE = "ovs-netdev"  # the netdev datapath's own TAP, one name per host
START_TIMEOUT = 10.0

# ``start(argv, **popen_kwargs)`` starts a process the benchmark ends by pid if all else fails.
Start = Callable[..., subprocess.Popen]


class PeerError(RuntimeError):
    """A peer datapath could not be built; the message says which step and shows its output."""


@dataclass(frozen=True)
class Joined:
    """Two namespaces, each holding the (still unaddressed) port the datapath joins them by."""

    ns_a: str
    ns_b: str
    port_a: str
    port_b: str


def missing(variant: str) -> str | None:
    """Why ``variant`` cannot run on this machine, or None when everything it needs is there."""
    for program, package in REQUIRED.get(variant, ()):
        if shutil.which(program) is None:
            return f"{program} not found (Debian: apt-get install {package})"
    if variant == OVS and _link_exists(OVS_DATAPATH_DEVICE):
        return (f"{OVS_DATAPATH_DEVICE} exists: another Open vSwitch userspace datapath runs on "
                f"this host, and a second one would take over its device")
    return None


def build(stack: contextlib.ExitStack, start: Start, variant: str, suffix: str) -> Joined:
    """Namespaces ``a`` and ``b`` joined by ``variant``; all of it removed when ``stack`` closes."""
    letter = {C_TAP_LOOP: "l", VDE: "v", OVS: "o"}[variant]
    ns_a = create_netns(stack, f"vbench-{suffix}-{letter}a")
    ns_b = create_netns(stack, f"vbench-{suffix}-{letter}b")
    taps = (f"vb{letter}0-{suffix}", f"vb{letter}1-{suffix}")
    workdir = Path(tempfile.mkdtemp(prefix=f"vswbench-{variant}-"))
    stack.callback(shutil.rmtree, workdir, True)
    if variant == C_TAP_LOOP:
        _start_tap_loop(stack, start, workdir, taps)
    elif variant == VDE:
        _start_vde(stack, start, workdir, taps)
    else:
        _start_ovs(stack, start, workdir, taps, f"vb{letter}br-{suffix}")
    for tap, ns in zip(taps, (ns_a, ns_b)):
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=tap)[0], net_ns_fd=ns)
    return Joined(ns_a, ns_b, taps[0], taps[1])


def _start_tap_loop(stack: contextlib.ExitStack, start: Start, workdir: Path,
                    taps: tuple[str, str]) -> None:
    binary = workdir / "tap_loop"
    compiled = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(TAP_LOOP_SOURCE)],
                              capture_output=True, text=True, timeout=120)
    if compiled.returncode != 0:
        raise PeerError(f"gcc could not compile {TAP_LOOP_SOURCE}:\n{compiled.stderr}")
    loop = _start(stack, start, [str(binary), *taps], workdir / "tap_loop.log",
                  stdout=subprocess.PIPE)
    assert loop.stdout is not None
    if loop.stdout.readline().strip() != b"ready":
        loop.wait(START_TIMEOUT)
        raise PeerError(f"tap_loop did not open {', '.join(taps)}:\n"
                        f"{(workdir / 'tap_loop.log').read_text(errors='replace')}")


def _start_vde(stack: contextlib.ExitStack, start: Start, workdir: Path,
               taps: tuple[str, str]) -> None:
    """One vde_switch with its control socket in ``workdir`` and a TAP on each of two ports."""
    socket_dir = workdir / "switch"
    log = workdir / "vde_switch.log"
    # In the foreground vde_switch reads management commands from stdin and stops at its end; an
    # open pipe that is never written keeps it running.
    switch = _start(stack, start, ["vde_switch", "--sock", str(socket_dir),
                                   *(arg for tap in taps for arg in ("--tap", tap))],
                    log, stdin=subprocess.PIPE)
    _wait_for(lambda: all(map(_link_exists, taps)), switch, f"TAPs {', '.join(taps)}", log)


def _start_ovs(stack: contextlib.ExitStack, start: Start, workdir: Path, taps: tuple[str, str],
               bridge: str) -> None:
    """ovsdb-server and ovs-vswitchd of their own, a netdev bridge, ``taps`` as internal ports."""
    env = {**os.environ, **{name: str(workdir) for name in
                            ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR")}}
    database, db_socket = workdir / "conf.db", workdir / "db.sock"
    vswitchd_control = workdir / "ovs-vswitchd.ctl"
    vsctl = ["ovs-vsctl", f"--db=unix:{db_socket}", "--timeout=10"]
    _run(["ovsdb-tool", "create", str(database)], env)
    db_log = workdir / "ovsdb-server.log"
    ovsdb = _start(stack, start, ["ovsdb-server", str(database), f"--remote=punix:{db_socket}",
                                  f"--unixctl={workdir / 'ovsdb-server.ctl'}"], db_log, env=env)
    _wait_for(db_socket.exists, ovsdb, f"ovsdb-server socket {db_socket}", db_log)
    # Read once at start-up: TSO must be on before ovs-vswitchd first reads its configuration.
    _run([*vsctl, "--no-wait", "init", "--", "set", "Open_vSwitch", ".",
          "other_config:userspace-tso-enable=true"], env)
    # Callbacks run last-registered first: the daemon's own cleanup, then its process is
    # stopped, then whatever of its devices is left in this namespace is deleted.
    for device in (bridge, OVS_DATAPATH_DEVICE):
        stack.callback(_delete_link, device)
    log = workdir / "ovs-vswitchd.log"
    vswitchd = _start(stack, start, ["ovs-vswitchd", f"unix:{db_socket}",
                                     f"--unixctl={vswitchd_control}"], log, env=env)
    stack.callback(_run_quietly, ["ovs-appctl", "--timeout=10", "-t", str(vswitchd_control),
                                  "exit", "--cleanup"],
                   env)
    ports = [arg for tap in taps
             for arg in ("--", "add-port", bridge, tap, "--", "set", "interface", tap,
                         "type=internal")]
    _run([*vsctl, "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
          *ports], env)
    _wait_for(lambda: all(map(_link_exists, taps)), vswitchd, f"TAPs {', '.join(taps)}", log)


def _run(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise PeerError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")


def _run_quietly(argv: list[str], env: dict[str, str]) -> None:
    """For cleanup: a daemon that is already gone has nothing to clean up."""
    subprocess.run(argv, capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


def _start(stack: contextlib.ExitStack, start: Start, argv: list[str], log_path: Path,
           **popen_kwargs) -> subprocess.Popen:
    """Start ``argv`` with stderr (and stdout unless given) to ``log_path``; stopped with the
    stack."""
    log = open(log_path, "wb")
    stack.callback(log.close)
    popen_kwargs.setdefault("stdout", log)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = start(argv, stderr=log, **popen_kwargs)
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen, what: str,
              log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise PeerError(f"no {what} after {START_TIMEOUT:.0f} s; "
                            f"{' '.join(map(str, proc.args))} said:\n"
                            f"{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


def _link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))
