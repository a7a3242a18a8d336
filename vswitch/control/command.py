"""What a control command is: one value that holds both of its ends.

A ``Command`` is one request of the control protocol (``{"cmd": NAME, "args": {...}}``): its
handler, which runs in the daemon, and its renderer, which prints the answer in vswitchctl. Its
``Verb`` values are the vswitchctl commands that send it: their words, help, flags, and how the
parsed flags become the request's ``args``. A verb whose client side is more than "send one
request, print the answer" (a trace that fails when nothing came, a capture written as pcap)
gives its own ``run``.

Each module of this package defines the commands of one subject with the ``command`` decorator
and lists them in ``COMMANDS``; ``vswitch.control`` puts the modules together in the order
vswitchctl's help shows them. The daemon (``vswitch.runtime.control``) and vswitchctl
(``vswitch.cli``) only iterate that table.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from vswitch.control.client import CONNECT_TIMEOUT

if TYPE_CHECKING:
    from vswitch.control.client import Session
    from vswitch.runtime.control import ControlContext

Args = Mapping[str, Any]
Handler = Callable[["ControlContext", Args], Awaitable[Any]]
Renderer = Callable[[Any], str]


class ControlError(Exception):
    """A request the daemon cannot serve; the message goes back to the client as is."""


@dataclass(frozen=True)
class Group:
    """A vswitchctl word that only gathers verbs, as ``pod`` gathers ``pod add`` and ``pod del``."""

    word: str
    help: str


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A verb without flags of its own (``--json`` and ``--socket`` are everyone's)."""


def _no_request(args: argparse.Namespace) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Verb:
    """A vswitchctl command: ``vswitchctl [GROUP] WORD ...``."""

    word: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    # The request's args from the parsed command line; raises CtlError before anything is sent.
    request: Callable[[argparse.Namespace], dict[str, Any]] = _no_request
    # The whole client side, for verbs that do more than show one answer; returns the exit status.
    run: Callable[[Session, argparse.Namespace], int] | None = None
    group: Group | None = None
    needs_daemon: bool = True


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    render: Renderer
    verbs: tuple[Verb, ...] = ()
    timeout: float = CONNECT_TIMEOUT  # how long vswitchctl waits for the answer


def command(name: str, render: Renderer, *verbs: Verb,
            timeout: float = CONNECT_TIMEOUT) -> Callable[[Handler], Command]:
    """Make the decorated handler the daemon side of command ``name``."""

    def define(handler: Handler) -> Command:
        return Command(name, handler, render, verbs, timeout)

    return define


def namespace_arguments(parser: argparse.ArgumentParser) -> None:
    """``-n NAMESPACE`` / ``-A``, as kubectl has them: without either, the default namespace."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help='default: "default"')
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")


def namespace_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request's namespace filter; a request without one lists every namespace."""
    if args.all_namespaces:
        return {}
    return {"namespace": args.namespace or "default"}


def require(args: Args, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The argument ``name``, which must be of ``kind``; ``what`` describes it in the error."""
    if name not in args:
        raise ControlError(f"missing argument {name!r} ({what})")
    value = args[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a count of "true" is a client bug worth reporting.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        raise ControlError(f"argument {name!r} must be {what}, not {value!r}")
    return value
