"""``vswitchctl dns [NAME] [--type TYPE] [-n NAMESPACE]``: what a pod of the namespace gets for a
name from cluster DNS, and the server's state and counters.

The daemon applies the namespace's search list as a pod's stub resolver does with ``ndots:5``
(``vswitch.dns.stub``) and asks its own server for each name in turn, forwarding as a pod's
query would be forwarded, until one has an answer; every name tried is shown with its rcode.
Without a NAME it shows only the server: where it listens, why it is off, what it counted.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Mapping

import dns.rcode
import dns.rdatatype

from vswitch.control.command import Args, ControlError, Verb, command
from vswitch.control.rendering import format_pairs
from vswitch.dns.stub import candidates
from vswitch.model import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext

# Forwarding may take its whole timeout for each of the names a search list yields.
DNS_COMMAND_TIMEOUT = 15.0


def _dns_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a name as a pod would write it (web, "
                                                "web.prod, 10.0.96.10.in-addr.arpa.)")
    parser.add_argument("--type", default="A", metavar="TYPE",
                        help="record type: A (default), SRV, PTR, AAAA, TXT, SOA, ANY")
    parser.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE,
                        help="the namespace of the asking pod (its search list)")


def _dns_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"type": args.type.upper(), "namespace": args.namespace}
    if args.name:
        request["name"] = args.name
    return request


def render_dns(result: Mapping[str, Any]) -> str:
    server = result.get("server") or {}
    if not server.get("enabled"):
        return str(server.get("reason") or "cluster DNS is off")
    if "tried" not in result:
        return format_pairs(server)
    # The names tried, as dig prints comments, then the records of the one that answered.
    lines = [f";; {entry['name']} {entry['rcode']}" for entry in result["tried"]]
    answer = result.get("answer") or {}
    for section in ("answers", "additional"):
        lines += answer.get(section) or []
    if not answer.get("answers"):
        lines.append(f"no {result.get('type')} record: {answer.get('rcode')}")
    return "\n".join(lines)


def _rrsets(section: list[Any]) -> list[str]:
    return [line for rrset in section for line in rrset.to_text().splitlines()]


@command("dns", render_dns,
         Verb("dns", "what a pod's resolver gets for a name from cluster DNS; the server's "
                     "state and counters", _dns_arguments, request=_dns_request),
         timeout=DNS_COMMAND_TIMEOUT)
async def dns_query(ctx: ControlContext, args: Args) -> dict[str, Any]:
    server = getattr(ctx.node, "dns", None)
    if server is None:
        return {"server": {"enabled": False,
                           "reason": "cluster DNS is not served by this daemon"}}
    statistics = server.statistics()
    name = args.get("name")
    if name is None:
        return {"server": statistics}
    if not isinstance(name, str) or not name:
        raise ControlError(f"argument 'name' must be a DNS name, not {name!r}")
    rdtype = args.get("type", "A")
    namespace = args.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise ControlError(f"argument 'namespace' must be a namespace name, not {namespace!r}")
    try:
        dns.rdatatype.from_text(str(rdtype))
    except dns.rdatatype.UnknownRdatatype:
        raise ControlError(f"unknown record type {rdtype!r}; e.g. A, SRV, PTR, AAAA") from None
    if not statistics["enabled"]:
        return {"server": statistics}
    tried: list[dict[str, Any]] = []
    answer: dict[str, Any] | None = None
    for candidate in candidates(name, namespace, server.cluster.domain):
        try:
            response = await server.resolve(candidate, rdtype)
        except ValueError as exc:  # a name dnspython refuses (a label over 63 bytes, say)
            raise ControlError(f"{candidate!r} is not a valid DNS name: {exc}") from None
        entry = {"name": candidate, "rcode": dns.rcode.to_text(response.rcode()),
                 "answers": _rrsets(response.answer),
                 "authority": _rrsets(response.authority),
                 "additional": _rrsets(response.additional)}
        tried.append(entry)
        if entry["answers"]:
            answer = entry
            break
        if answer is None and entry["rcode"] == "NOERROR":
            answer = entry  # NODATA: kept unless a later name has an answer
    return {"query": name, "type": rdtype, "namespace": namespace,
            "answer": answer or tried[-1], "tried": tried, "server": server.statistics()}


COMMANDS = (dns_query,)
