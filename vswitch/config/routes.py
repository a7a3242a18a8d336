"""``[[routes]]``: static routes of the node's router, each to a network via a next hop.

A next hop must sit on a segment (that is how the router reaches it) and must not be a gateway
(that would route the packet back to the router itself). A route must not reach into a segment,
whose connected route carries its traffic; one that covers segments (``0.0.0.0/0``) is fine, as
the connected routes are more specific and win the longest-prefix match.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence

from vswitch.config.addresses import address_problem
from vswitch.config.reader import INVALID, REQUIRED, Reader, key_path
from vswitch.config.segments import SegmentDraft
from vswitch.model import StaticRoute

ROUTE_KEYS = ("dst", "via")


def read_routes(
    reader: Reader, document: Mapping[str, Any], segments: Sequence[SegmentDraft]
) -> list[StaticRoute]:
    routes: list[StaticRoute] = []
    first_use: dict[IPv4Network, str] = {}
    networks = [(s, s.cidr) for s in segments if isinstance(s.cidr, IPv4Network)]
    # Without every segment's CIDR the next hop's segment cannot be told; the CIDR's own
    # error explains the problem.
    all_known = len(networks) == len(segments)
    gateways = {s.gateway: s for s in segments if isinstance(s.gateway, IPv4Address)}
    for path, entry in reader.entries(document, "", "routes"):
        reader.check_keys(entry, path, ROUTE_KEYS)
        dst_path, via_path = key_path(path, "dst"), key_path(path, "via")
        dst = reader.take(entry, path, "dst", "a string", REQUIRED)
        if isinstance(dst, str):
            dst = reader.parse_cidr(dst, dst_path, 0, 32)
        if isinstance(dst, IPv4Network):
            inside = next((s for s, cidr in networks if dst.subnet_of(cidr)), None)
            if inside is not None:
                dst = reader.fail(
                    dst_path,
                    f"{dst} overlaps {inside.cidr_path} {inside.cidr}; a segment is reached "
                    "by its connected route",
                )
            elif dst in first_use:
                dst = reader.fail(dst_path, f"duplicate route to {dst} (first at {first_use[dst]})")
            else:
                first_use[dst] = dst_path

        via = reader.take(entry, path, "via", "a string", REQUIRED)
        segment: tuple[SegmentDraft, IPv4Network] | None = None
        if isinstance(via, str):
            try:
                via = IPv4Address(via)
            except ValueError:
                via = reader.fail(via_path, f"{via!r} is not an IPv4 address")
        if isinstance(via, IPv4Address):
            segment = next(((s, cidr) for s, cidr in networks if via in cidr), None)
            if segment is None:
                if all_known:
                    listed = ", ".join(f"{s.cidr_path} {cidr}" for s, cidr in networks)
                    via = reader.fail(
                        via_path,
                        f"{via} is on none of the node's segments ({listed}); "
                        "a next hop must be directly reachable",
                    )
                else:
                    via = INVALID
            elif via in gateways:
                via = reader.fail(
                    via_path,
                    f"{via} is {gateways[via].gateway_path}, the router itself; "
                    "the next hop must be another host",
                )
            elif problem := address_problem(via, segment[1], segment[0].cidr_path):
                via = reader.fail(via_path, problem)
        if (isinstance(dst, IPv4Network) and isinstance(via, IPv4Address)
                and segment is not None and isinstance(segment[0].name, str)):
            routes.append(StaticRoute(dst=dst, via=via, segment=segment[0].name))
    return routes
