"""The switch's tables as rows for people and programs: what ``vswitchctl ports``, ``fdb``,
``routes``, ``neighbors``, ``services``, ``endpoints``, ``affinity`` and ``conntrack`` show.

Each function takes the switch (and ``now`` where a row holds an age or a deadline) and returns a
list of JSON-able dicts; their keys are the field names of the control socket and of ``--json``,
so they are pinned. Keeping them here leaves the switch with the packet path and its tables, and
the control commands with their arguments: a new column is a change in one function.

Like the rest of the core this reads no clock: the caller passes ``now``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from vswitch.core.conntrack_filter import entry_filter
from vswitch.wire.addresses import ip_text, mac_text

if TYPE_CHECKING:
    from vswitch.core.switch import Switch


def port_rows(switch: Switch) -> list[dict]:
    """Each port with its settings and traffic; drops are totals (``stats`` has the reasons)."""
    traffic = switch.statistics()["ports"]
    rows = []
    for pid, spec in sorted(switch.ports.items()):
        counters = traffic[spec.name]
        rows.append({
            "id": pid, "name": spec.name, "kind": spec.kind.value, "device": spec.device,
            "mac": spec.mac, "ip": str(spec.ip), "mtu": spec.mtu, "vnet_hdr": spec.vnet_hdr,
            "port_security": spec.port_security, "macs_learned": switch.fdb.count_on_port(pid),
            "segment": switch.segments[spec.segment].name,
            "rx_packets": counters["rx_packets"], "rx_bytes": counters["rx_bytes"],
            "tx_packets": counters["tx_packets"], "tx_bytes": counters["tx_bytes"],
            "rx_dropped": sum(counters["rx_drops"].values()),
            "tx_dropped": sum(counters["tx_drops"].values()),
        })
    return rows


def fdb_rows(switch: Switch, now: float) -> list[dict]:
    """Learned MAC addresses by segment and port, with their age and the pod IP behind them."""
    rows = []
    for entry in sorted(switch.fdb.entries(), key=lambda e: (e.segment, e.port, e.mac)):
        age = now - entry.last_seen
        rows.append({"mac": mac_text(entry.mac), "segment": switch.segments[entry.segment].name,
                     "port": _port_name(switch, entry.port),
                     "port_id": entry.port, "age_s": round(age, 3),
                     "expires_in_s": round(switch.fdb.aging - age, 3),
                     "ip": _ip_of_mac(switch, entry.mac)})
    return rows


def _port_name(switch: Switch, port_id: int) -> str:
    spec = switch.ports.get(port_id)
    return spec.name if spec is not None else f"#{port_id}"


def _ip_of_mac(switch: Switch, mac: bytes) -> str | None:
    for spec in switch.ports.values():
        if spec.mac_bytes == mac:
            return str(spec.ip)
    return None


def route_rows(switch: Switch) -> list[dict]:
    """The router's table: prefix, kind (connected/static), segment, via, origin."""
    return [{"prefix": str(r.prefix), "kind": r.kind.value,
             "segment": switch.segments[r.segment].name,
             "via": str(r.via) if r.via is not None else None, "origin": r.origin}
            for r in switch.fib.routes()]


def neighbor_rows(switch: Switch, now: float) -> list[dict]:
    """Resolved and pending next hops: segment, ip, mac, state, age_s, queued."""
    rows = []
    for entry in sorted(switch.neighbors.entries(), key=lambda e: (e.segment, e.ip)):
        rows.append({"segment": switch.segments[entry.segment].name, "ip": ip_text(entry.ip),
                     "mac": mac_text(entry.mac) if entry.mac is not None else None,
                     "state": entry.state.value,
                     "age_s": round(now - entry.confirmed, 3), "queued": len(entry.queue)})
    return rows


def service_rows(switch: Switch) -> list[dict]:
    return switch.services.services_info()


def endpoint_rows(switch: Switch) -> list[dict]:
    return switch.services.endpoints_info()


def affinity_rows(switch: Switch, now: float) -> list[dict]:
    return switch.services.affinity_info(now)


def conntrack_rows(switch: Switch, now: float,
                   filters: Mapping[str, str] | None = None) -> list[dict]:
    """Tracked connections that match ``filters`` (see ``conntrack_filter``); an unknown filter
    key raises ValueError."""
    matches = entry_filter(filters or {})
    # Entries past their deadline (a refused connection ends at once) wait for the timer to
    # remove them; lookups no longer find them, so neither does a listing.
    return [e.as_dict(now) for e in switch.conntrack.entries() if e.alive(now) and matches(e)]
