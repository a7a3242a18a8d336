"""Commands about the node's kernel objects: ``exec`` (run a program in a pod's network
namespace, which it asks the daemon for with ``netns``) and ``clean`` (remove what a crashed
daemon left behind, without a daemon).

Both do their work in vswitchctl's own process: ``exec`` enters the namespace and becomes the
program, and ``clean`` reads the node's journal of kernel objects itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from vswitch.control import lookup
from vswitch.control.client import (DEFAULT_SOCKET_DIR, EXIT_CONFIG, EXIT_FAILURE,
                                    EXIT_NOT_FOUND, EXIT_OK, CtlError, Session)
from vswitch.control.command import Args, Verb, command, require
from vswitch.control.rendering import format_pairs

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext


def _exec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace",
                        help="the pod's namespace (default: the one namespace that has POD)")
    parser.add_argument("pod", help="NAME, or NAMESPACE/NAME")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def _run_exec(session: Session, args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CtlError("exec needs a command: vswitchctl exec POD -- CMD [ARG...]")
    request = {"pod": args.pod}
    if args.namespace is not None:
        request["namespace"] = args.namespace
    answer = session.call("netns", request)
    netns_path = answer["netns_path"]
    from vswitch.runtime.netns import enter_netns
    from vswitch.runtime.resolv_conf import private_resolv_conf

    try:
        enter_netns(netns_path)
    except OSError as exc:
        raise CtlError(f"cannot enter {netns_path}: {exc.strerror or exc}") from None
    # The pod's resolv.conf (cluster DNS), in a mount namespace of this process alone.
    if answer.get("resolv_conf"):
        try:
            private_resolv_conf(answer["resolv_conf"])()
        except OSError as exc:
            print(f"vswitchctl: exec: the pod's resolv.conf is not shown: {exc}",
                  file=sys.stderr)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"vswitchctl: exec: {argv[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"vswitchctl: exec: {argv[0]}: permission denied", file=sys.stderr)
        return 126
    return EXIT_FAILURE  # not reached: execvp returns only by raising


@command("netns", format_pairs,
         Verb("exec", "run a command in a pod's network namespace", _exec_arguments,
              run=_run_exec))
async def netns(ctx: ControlContext, args: Args) -> dict:
    namespace = args.get("namespace")
    if namespace is not None:
        namespace = require(args, "namespace", str, "a namespace name")
    pod = lookup.pod(ctx, require(args, "pod", str, "a pod name"), namespace)
    dns = getattr(ctx.node, "dns", None)
    return {"pod": pod.name, "namespace": pod.namespace, "netns": pod.netns,
            "netns_path": ctx.netns_path(pod.netns),
            "resolv_conf": dns.resolv_conf(pod.namespace) if dns is not None else None}


def _clean_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="the node's topology")
    source.add_argument("--node", metavar="NAME", help="the node name")
    parser.add_argument("--state-dir", metavar="DIR", help="default: the topology's, else "
                                                           f"{DEFAULT_SOCKET_DIR}")


def _run_clean(session: Session, args: argparse.Namespace) -> int:
    from vswitch.runtime.kernel import clean_node

    topology: Any = None
    if args.config:
        from vswitch.config import ConfigError, load_topology

        try:
            topology = load_topology(args.config)
        except ConfigError as exc:
            print(f"vswitchctl: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        node = topology.node.name
        state_dir = args.state_dir or topology.control.state_dir
    else:
        node = args.node
        state_dir = args.state_dir or DEFAULT_SOCKET_DIR
    from vswitch.runtime.journal import JournalError, NodeBusyError

    try:
        removed = clean_node(node, state_dir, topology)
    except (NodeBusyError, JournalError) as exc:
        raise CtlError(f"clean: {exc}") from None
    except PermissionError as exc:
        raise CtlError(f"clean: {exc} (clean needs root)") from None
    if session.as_json:
        print(json.dumps(removed, indent=2))
    elif removed:
        print("\n".join(f"removed {item}" for item in removed))
    else:
        print(f"nothing to clean for node {node}")
    return EXIT_OK


# Needs no daemon: it is what to run when the daemon is gone.
CLEAN = Verb("clean", "remove a node's leftover namespaces and TAPs (no daemon needed)",
             _clean_arguments, run=_run_clean, needs_daemon=False)

COMMANDS = (netns,)
