"""Commands for network policies: ``policy add``, ``policy del`` and ``policy list``.

A policy is written as one ``[[network_policies]]`` table holds it (``pod_selector``,
``policy_types``, ``ingress``/``egress`` with ``from``/``to`` and ``ports``), either as JSON on
the command line or in a file (TOML with ``[[network_policies]]`` entries, or JSON: one object
or a list of them). The daemon reads it with the config loader's own code, so a mistake is
reported as ``SOURCE: KEYPATH: REASON`` and changes nothing. Adding and removing go through the
node's change machinery (``changes.change``): the policies are compiled again with the pods and
namespaces, new connections get the new verdicts at once, and connections they no longer allow
are cut (the answer's ``program.policies.cut_connections``).

``list`` shows each policy with the local pods it selects, its types and rules, and what it has
dropped and cut since the daemon started.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vswitch.control import changes
from vswitch.control.client import CtlError
from vswitch.control.command import Args, ControlError, Group, Verb, command, require
from vswitch.control.rendering import format_table

if TYPE_CHECKING:
    from vswitch.model import NetworkPolicy, Topology
    from vswitch.runtime.control import ControlContext

POLICY = Group("policy", "add, remove or list network policies")

_ADD_HELP = """\
The policy is a [[network_policies]] table, as JSON:
  vswitchctl policy add --json-policy '{"name": "web-allow", "namespace": "prod",
      "pod_selector": {"app": "web"},
      "ingress": [{"from": [{"pod_selector": {"role": "client"}}],
                   "ports": [{"protocol": "tcp", "port": 8080}]}]}'
or in a file (-f FILE, - for stdin): TOML with [[network_policies]] entries, or JSON (one policy
or a list). Every policy must be new in its namespace; nothing is added unless all are valid.
"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _ADD_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json-policy", metavar="JSON", help="the policy as a JSON object")
    source.add_argument("-f", "--file", metavar="FILE",
                        help="a TOML file with [[network_policies]], or a JSON file; - for stdin")


def _json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CtlError(f"{source}: not valid JSON: {exc}") from None


def _add_request(args: argparse.Namespace) -> dict[str, Any]:
    if args.json_policy is not None:
        return {"policies": [_json(args.json_policy, "--json-policy")],
                "source": "--json-policy"}
    fragment = changes.read_fragment(args.file)
    text, source = fragment["toml"], fragment["source"]
    if source.endswith(".json") or text.lstrip().startswith(("{", "[")):
        value = _json(text, source)
        return {"policies": value if isinstance(value, list) else [value], "source": source}
    return fragment


def _tables(args: Args) -> tuple[list[tuple[str, Any]], str]:
    """The policy tables of a request, each with its key path, and the request's source."""
    from vswitch.config.reader import load_document

    config = changes.config_loader()
    source = args.get("source", "policy add")
    if not isinstance(source, str):
        raise ControlError(f"argument 'source' must be a file name, not {source!r}")
    if "toml" in args:
        text = require(args, "toml", str, "the TOML text of the policies")
        document = load_document(text, source)
        others = [key for key in document if key != "network_policies"]
        if others:
            raise config.ConfigError(source, others[0],
                                     "only [[network_policies]] can be added by policy add")
        entries = document.get("network_policies", [])
        if not isinstance(entries, list):
            raise config.ConfigError(source, "network_policies",
                                     "expected an array of tables ([[network_policies]])")
        return [(f"network_policies[{i}]", table) for i, table in enumerate(entries)], source
    tables = require(args, "policies", list, "a list of policy objects")
    if len(tables) == 1:
        return [("policy", tables[0])], source
    return [(f"policy[{i}]", table) for i, table in enumerate(tables)], source


def _parse(args: Args, topology: Topology) -> tuple[NetworkPolicy, ...]:
    from vswitch.config.policies import parse_network_policy

    config = changes.config_loader()
    tables, source = _tables(args)
    if not tables:
        raise ControlError(f"{source}: no network policy to add")
    policies: list[NetworkPolicy] = []
    for path, table in tables:
        policy = parse_network_policy(table, topology, source, path)
        if any(p.key == policy.key for p in policies):
            raise config.ConfigError(source, f"{path}.name",
                                     f"network policy {policy.key} is given twice")
        policies.append(policy)
    return tuple(policies)


def _summary(policy: NetworkPolicy) -> dict[str, Any]:
    return {"policy": policy.key, "types": list(policy.policy_types),
            "ingress_rules": len(policy.ingress), "egress_rules": len(policy.egress)}


def render_policy_change(result: Any) -> str:
    """What was added or removed, then the policies in force and the connections cut."""
    if not isinstance(result, Mapping):
        return str(result)
    lines = [f"added {row.get('policy')} ({','.join(row.get('types') or [])}; "
             f"{row.get('ingress_rules')} ingress, {row.get('egress_rules')} egress rules)"
             for row in result.get("added") or [] if isinstance(row, Mapping)]
    if result.get("removed"):
        lines.append(f"removed {result['removed']}")
    program = result.get("program")
    enforced = program.get("policies") if isinstance(program, Mapping) else None
    if isinstance(enforced, Mapping):
        count, cut = enforced.get("policies"), enforced.get("cut_connections")
        lines.append(f"{count} {'policy' if count == 1 else 'policies'} in force; "
                     f"{cut} {'connection' if cut == 1 else 'connections'} they no longer "
                     "allow cut")
    return "\n".join(lines)


@command("policy_add", render_policy_change,
         Verb("add", "add network policies (JSON or a file; see policy add --help)",
              _add_arguments, _add_request, group=POLICY))
async def policy_add(ctx: ControlContext, args: Args) -> dict:
    async def add(node: Any, policies: tuple[NetworkPolicy, ...]) -> dict:
        for policy in policies:
            node.put_policy(policy)
        return {"added": [_summary(p) for p in policies]}

    return await changes.change(ctx, lambda topology: _parse(args, topology), add)


def find(ctx: ControlContext, name: str) -> NetworkPolicy:
    """A policy by NAMESPACE/NAME, or by NAME alone when only one namespace has it."""
    policies = ctx.current().network_policies
    found = [p for p in policies if p.key == name or ("/" not in name and p.name == name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ControlError(f"{name!r} is ambiguous: {', '.join(p.key for p in found)}; "
                           "give NAMESPACE/NAME")
    known = ", ".join(p.key for p in policies) or "none"
    raise ControlError(f"no network policy {name!r}; network policies: {known}")


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="NAMESPACE/NAME, or NAME when it is unambiguous")


@command("policy_del", render_policy_change,
         Verb("del", "remove a network policy", _name_argument,
              lambda args: {"name": args.name}, group=POLICY))
async def policy_del(ctx: ControlContext, args: Args) -> dict:
    name = require(args, "name", str, "a network policy name (NAMESPACE/NAME or NAME)")

    async def remove(node: Any, found: NetworkPolicy) -> dict:
        return {"removed": node.remove_policy(found.key).key}

    return await changes.change(ctx, lambda topology: find(ctx, name), remove)


def render_policies(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    rows = [{**row, "types": ",".join(row.get("types") or []) or "-",
             "rules": f"{row.get('ingress_rules')} in, {row.get('egress_rules')} out"}
            for row in result]
    return format_table(rows, [("policy", "POLICY"), ("pods", "PODS"), ("types", "TYPES"),
                               ("rules", "RULES"), ("drops", "DROPS"), ("cuts", "CUTS")])


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="only this namespace's policies")


@command("policy_list", render_policies,
         Verb("list", "network policies: selected pods, types, rules, drops and cuts",
              _list_arguments, lambda args: {"namespace": args.namespace}, group=POLICY))
async def policy_list(ctx: ControlContext, args: Args) -> list[dict]:
    from vswitch.policy.selectors import selector_matches

    namespace = args.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise ControlError(f"argument 'namespace' must be a namespace name, not {namespace!r}")
    topology = ctx.current()
    counters = ctx.switch.statistics().get("policies", {})
    drops = counters.get("drops_by_policy", {})
    cuts = counters.get("cuts_by_policy", {})
    rows = []
    for policy in topology.network_policies:
        if namespace is not None and policy.namespace != namespace:
            continue
        pods = sum(1 for pod in topology.pods if pod.namespace == policy.namespace
                   and selector_matches(policy.pod_selector, pod.labels))
        rows.append({**_summary(policy), "namespace": policy.namespace, "name": policy.name,
                     "pods": pods, "drops": drops.get(policy.key, 0),
                     "cuts": cuts.get(policy.key, 0)})
    return rows


COMMANDS = (policy_add, policy_del, policy_list)
