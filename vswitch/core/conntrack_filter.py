"""The filter language of ``vswitchctl conntrack [flush] --filter KEY=VALUE``.

A filter is a mapping of keys to wanted values; an entry matches when every key does. Values are
compared as text, case-insensitively, against the entry's original direction: ``proto`` (icmp,
tcp, udp or the number), ``src``, ``dst``, ``sport``, ``dport``, ``state`` (the TCP state, or
REPLIED/UNREPLIED for other protocols), ``service`` (NAMESPACE/NAME, or NAME alone to match it in
any namespace) and ``kind`` (the label the NAT stage gave the entry). The same predicate serves the
listing and the flush, so what ``conntrack --filter`` shows is what ``conntrack flush --filter``
removes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from vswitch.wire.addresses import ip_text

FILTER_KEYS = frozenset({"proto", "src", "dst", "sport", "dport", "service", "state", "kind"})
_PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}


def entry_filter(filters: Mapping[str, str]) -> Callable[[Any], bool]:
    """A predicate over connection-table entries; ValueError names any unknown key."""
    unknown = set(filters) - FILTER_KEYS
    if unknown:
        raise ValueError(f"unknown conntrack filter {', '.join(sorted(unknown))}; "
                         f"use {', '.join(sorted(FILTER_KEYS))}")
    wanted_values = dict(filters)

    def matches(entry: Any) -> bool:
        o = entry.original
        values = {"proto": _PROTOCOL_NAMES.get(o.proto, str(o.proto)), "src": ip_text(o.src),
                  "dst": ip_text(o.dst), "sport": str(o.sport), "dport": str(o.dport),
                  "service": str(entry.labels.get("service", "")),
                  "state": entry.tcp_state.name if o.proto == 6 else
                  ("REPLIED" if entry.replied else "UNREPLIED"),
                  "kind": str(entry.labels.get("kind", ""))}
        for key, wanted in wanted_values.items():
            value = values[key]
            if key == "service" and "/" not in wanted:
                value = value.split("/", 1)[-1]
            if value.lower() != str(wanted).lower():
                return False
        return True

    return matches
