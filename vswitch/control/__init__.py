"""The control commands, each defined once: its vswitchctl words and flags, the request they
send, its handler in the daemon and the renderer of its answer (see ``command``).

One module per subject; this table puts them together. The daemon serves ``COMMANDS`` by name
(``vswitch.runtime.control``); vswitchctl builds its parser from ``VERBS``, in this order, which
is the order its help lists them (``vswitch.cli``).
"""
from __future__ import annotations

from vswitch.control import changes, dns, namespaces, node, nodes, observe, policies, services
from vswitch.control.command import Command, Verb

COMMANDS: tuple[Command, ...] = (*node.COMMANDS, *nodes.COMMANDS, *observe.COMMANDS,
                                 *services.COMMANDS, *changes.COMMANDS, *policies.COMMANDS,
                                 *namespaces.COMMANDS, *dns.COMMANDS)

# Each vswitchctl command with the control command it sends, None for those that need no daemon.
VERBS: tuple[tuple[Verb, Command | None], ...] = (
    *((verb, cmd) for cmd in COMMANDS for verb in cmd.verbs),
    (namespaces.CLEAN, None),
)
