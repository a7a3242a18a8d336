"""``vswitchctl nodes``: the nodes of the cluster as this one knows them, itself included.

One row per node: this node (``self``), the static ``[[peers]]`` (``static``) and the cluster
store's records (``store``), with the store's lease time left and whether the overlay routes the
node now (``ready``), refuses it (``refused: REASON``) or routed it until it left (``withdrawn``).
The rows come from the node's cluster runtime (``vswitch.runtime.cluster``); the lease times are
asked of the store, briefly, so the answer may take up to a second.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vswitch.control.command import Args, ControlError, Verb, command
from vswitch.control.rendering import format_table

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext

COLUMNS = [("name", "NAME"), ("source", "SOURCE"), ("pod_cidr", "POD CIDR"),
           ("address", "ADDRESS"), ("vtep_mac", "VTEP MAC"), ("lease_remaining", "LEASE S"),
           ("state", "STATE")]


def render_nodes(result: Sequence[Mapping[str, Any]]) -> str:
    return format_table(result, COLUMNS) if result else "(none)"


@command("nodes", render_nodes,
         Verb("nodes", "the cluster's nodes: this one, static peers and the store's members"))
async def nodes(ctx: ControlContext, args: Args) -> list[dict]:
    cluster = getattr(ctx.node, "cluster", None)
    if cluster is None:
        raise ControlError("this daemon does not follow a cluster")
    return await cluster.rows()


COMMANDS = (nodes,)
