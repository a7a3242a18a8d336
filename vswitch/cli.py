"""Command-line entry points: ``vswitchd`` (the daemon) and ``vswitchctl`` (talks to it).

``python3 -m vswitch.cli vswitchd ...`` and ``python3 -m vswitch.cli vswitchctl ...`` run the same
code as the installed scripts, for checkouts that are not installed.

vswitchctl's commands (flags, requests, renderers) are defined in ``vswitch.control``; here they
become an argparse parser. vswitchctl is deliberately synchronous and free of trio: it sends one
request, prints one answer, and must start fast enough to be used in shell loops.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

from vswitch.control import VERBS
from vswitch.control.client import (DEFAULT_SOCKET_DIR, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK,
                                    CtlError, Session, discover_socket)
from vswitch.control.command import Command, Verb

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# ---------------------------------------------------------------------------------------------
# vswitchd


def _vswitchd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vswitchd", description="Userspace virtual switch daemon for one node's pods.",
        epilog="Signals: SIGTERM stops the daemon and keeps the pods (namespaces, TAPs, "
               "containers) for the next start, which re-attaches them; SIGINT (Ctrl-C) stops it "
               "and removes everything; SIGHUP reloads the file. `vswitchctl clean --config FILE` "
               "removes what a stopped daemon kept.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", metavar="FILE", help="run with this topology")
    mode.add_argument("--check", metavar="FILE", help="validate a topology and exit")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="default: info")
    parser.add_argument("--no-standby", action="store_true",
                        help="do not keep a hot standby process, which takes the node over "
                             "within a fraction of a second if the daemon dies (costs the "
                             "memory of a second, idle, Python process)")
    # Internal: the command line of the standby a daemon starts (vswitch.runtime.standby's
    # STANDBY_FLAG; that module imports trio, which vswitchctl, sharing this module, must not).
    parser.add_argument("--standby", action="store_true", help=argparse.SUPPRESS)
    return parser


def _leaf_exceptions(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaf_exceptions(inner)
    else:
        yield exc


def _metrics_address_taken(topology) -> str | None:
    """Why the metrics listener cannot bind, or None: checked before anything is created.

    Every other name and path of a node derives from its node name, so several daemons on one host
    do not collide by default; the metrics address is the one a person writes into each file, and
    copying a file keeps it. Binding the way trio's listener does (SO_REUSEADDR) makes a
    TIME_WAIT leftover of a restart pass and a live listener fail.
    """
    import errno
    import socket

    address = topology.control.metrics
    if not address:
        return None
    host, _, port = address.rpartition(":")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"control.metrics: {address} is already in use (another daemon's metrics "
                    "endpoint? give each node its own port)")
        return None  # anything else is the listener's to report, with its own message
    finally:
        probe.close()
    return None


def _configure_logging(name: str) -> logging.Logger:
    level = getattr(logging, name.upper())
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)
    # --log-level debug is for vswitch's own decisions; pyroute2 at debug logs every netlink
    # message in full, which buries them.
    for noisy in ("pyroute2", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return logging.getLogger("vswitchd")


def vswitchd_main(argv: Sequence[str] | None = None) -> int:
    parser = _vswitchd_parser()
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    takeover_lock = None
    if args.standby:
        if args.config is None:
            parser.error("--standby runs with --config")
        from vswitch.runtime.standby import wait_as_standby

        # Blocks until the daemon that started this process dies (None: it stopped).
        takeover_lock = wait_as_standby(_configure_logging(args.log_level))
        if takeover_lock is None:
            return EXIT_OK
    from vswitch.config import ConfigError, load_topology

    path = args.check or args.config
    try:
        topology = load_topology(path)
    except ConfigError as exc:
        print(f"vswitchd: config error: {exc}", file=sys.stderr)
        if takeover_lock is not None:
            logging.getLogger("vswitchd").error("standby: %s does not validate; not taking "
                                                "the node over", path)
        return EXIT_CONFIG
    if args.check:
        parts = [f"{len(topology.pods)} pods"]
        segments, routes = len(topology.all_segments()), len(topology.routes)
        if segments > 1 or routes:
            parts += [f"{segments} segment{'s' * (segments != 1)}",
                      f"{routes} static route{'s' * (routes != 1)}"]
        if topology.services:
            count = len(topology.services)
            parts.append(f"{count} service{'s' * (count != 1)}")
        if topology.uplink is not None:
            parts.append(f"uplink {topology.uplink.address}")
        if topology.overlay is not None:
            peers = len(topology.peers)
            parts.append(f"overlay VNI {topology.overlay.vni}, "
                         f"{peers} static peer{'s' * (peers != 1)}")
        if topology.cluster is not None and topology.cluster.store != "static":
            parts.append(f"cluster store {topology.cluster.store}")
        print(f"{path}: ok ({', '.join(parts)})")
        return EXIT_OK

    if os.geteuid() != 0:
        print("vswitchd: must run as root: it creates network namespaces and TAP devices "
              "(CAP_NET_ADMIN, CAP_SYS_ADMIN)", file=sys.stderr)
        return EXIT_FAILURE
    log = _configure_logging(args.log_level)
    from vswitch.runtime import standby
    from vswitch.runtime.journal import NodeLock

    state_dir, node = topology.control.state_dir, topology.node.name
    if takeover_lock is not None:
        if takeover_lock.path != NodeLock(state_dir, node).path:
            log.error("standby: %s now describes node %s in %s, not the node it stood by for "
                      "(lock %s); not taking over", path, node, state_dir, takeover_lock.path)
            return EXIT_CONFIG
        standby.become_main_process()
    elif standby.hand_over_to_running(state_dir, node, log):
        return EXIT_OK
    if problem := _metrics_address_taken(topology):
        print(f"vswitchd: {path}: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    # A daemon the watchdog finds wedged is ended with SIGABRT, and a crash in native code with
    # SIGSEGV: either way the log gets every thread's Python stack, to show where it stood.
    if sys.__stderr__ is not None:
        faulthandler.enable(sys.__stderr__)
    import trio

    from vswitch.membership.etcd import StoreError
    from vswitch.membership.subnets import PoolExhausted
    from vswitch.runtime.control import ControlSocketBusy
    from vswitch.runtime.daemon import run_daemon
    from vswitch.runtime.journal import JournalError, NodeBusyError
    from vswitch.runtime.kernel import KernelError

    # Failures a person can act on from the message alone; anything else gets a traceback.
    operational = (ControlSocketBusy, NodeBusyError, JournalError, KernelError)

    startup_lease = 0
    if topology.node.pod_cidr_auto:
        # The file was validated with a stand-in subnet; the node runs with the one it leases.
        from vswitch.runtime.cluster import lease_pod_cidr

        try:
            subnet, startup_lease = trio.run(lease_pod_cidr, topology, log)
            topology = load_topology(path, pod_cidr=subnet)
        except KeyboardInterrupt:
            return 130
        except (PoolExhausted, StoreError, ConfigError) as exc:
            where = "" if isinstance(exc, ConfigError) else f"{path}: node.pod_cidr: "
            print(f"vswitchd: {where}{exc}", file=sys.stderr)
            return EXIT_FAILURE

    supervisor = (None if args.no_standby else
                  standby.StandbySupervisor(standby.standby_command(argv), state_dir, node, log))
    try:
        trio.run(lambda: run_daemon(topology, config_path=os.path.abspath(path),
                                    startup_lease=startup_lease, standby=supervisor,
                                    takeover_lock=takeover_lock))
    except KeyboardInterrupt:
        # Only reachable before the daemon installed its signal handling.
        return 130
    except BaseException as exc:
        leaves = list(_leaf_exceptions(exc))
        if leaves and all(isinstance(leaf, operational) for leaf in leaves):
            for leaf in leaves:
                print(f"vswitchd: {leaf}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(exc, SystemExit):
            raise
        log.critical("vswitchd failed", exc_info=exc)
        return EXIT_FAILURE
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vswitchctl


def _vswitchctl_parser() -> argparse.ArgumentParser:
    """One subcommand per verb of ``vswitch.control``; a verb with a group sits under it."""
    # --json and --socket are accepted before and after the command: each subparser has them too,
    # with SUPPRESS defaults so that a value given before the command is not reset after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="control socket (default: $VSWITCH_SOCKET, else the only one in "
                             f"{DEFAULT_SOCKET_DIR})")

    parser = argparse.ArgumentParser(prog="vswitchctl", parents=[common],
                                     description="Query and operate a running vswitchd.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for verb, command in VERBS:
        parent = commands
        if verb.group is not None:
            if verb.group.word not in groups:
                group = commands.add_parser(verb.group.word, parents=[common],
                                            help=verb.group.help)
                groups[verb.group.word] = group.add_subparsers(
                    dest=f"{verb.group.word}_command", required=True, metavar="ACTION")
            parent = groups[verb.group.word]
        verb_parser = parent.add_parser(verb.word, parents=[common], help=verb.help)
        verb.arguments(verb_parser)
        verb_parser.set_defaults(verb=verb, target=command)
    return parser


def vswitchctl_main(argv: Sequence[str] | None = None,
                    environ: Mapping[str, str] | None = None,
                    socket_dir: str = DEFAULT_SOCKET_DIR) -> int:
    args = _vswitchctl_parser().parse_args(argv)
    verb: Verb = args.verb
    as_json = getattr(args, "json", False)
    environ = os.environ if environ is None else environ
    try:
        path = (discover_socket(getattr(args, "socket", None), environ, socket_dir)
                if verb.needs_daemon else None)
        session = Session(path, as_json)
        if verb.run is not None:
            return verb.run(session, args)
        command: Command = args.target
        session.emit(session.call(command.name, verb.request(args), command.timeout),
                     command.render)
        return EXIT_OK
    except CtlError as exc:
        print(f"vswitchctl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # Output piped into `head`: the reader is gone, and so is the point of printing.
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    programs = {"vswitchd": vswitchd_main, "vswitchctl": vswitchctl_main}
    if not argv or argv[0] not in programs:
        print("usage: python3 -m vswitch.cli {vswitchd|vswitchctl} ...", file=sys.stderr)
        return EXIT_CONFIG
    return programs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
