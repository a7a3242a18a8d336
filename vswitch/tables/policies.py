"""The network policies the dataplane enforces, and what they dropped and cut, per policy.

Theory of operation
-------------------
* ``install`` takes a freshly compiled ``CompiledPolicies`` (``vswitch.policy.engine``). An empty
  one is kept as ``active = None``: the stages test that one attribute and a node without
  policies pays nothing else on any path.
* ``involves(src, dst)`` says whether a new connection between two addresses needs a verdict at
  all: only when a policy selects one of them. Pods no policy selects keep the untracked fast
  path they have without policies.
* A verdict is taken once per connection, on its first packet, after DNAT, on the tuple
  ``judged_tuple`` names; the stage that asks (ip4-policy) then tracks the connection, so that
  its replies never need a verdict. A connection whose verdict a policy change reverses is
  removed from the connection table (a *cut*), judged on the same tuple.
* ``generation`` grows at every install: cached decisions about pods whose policies changed
  must be taken again (the switch adds it to the flow cache's version).
* Drops and cuts are counted per policy key (NAMESPACE/NAME), each policy named by the decision
  counting once; counts of a policy that goes away are kept, so a rate never runs backwards.
"""
from __future__ import annotations

from typing import Any

from vswitch.policy.engine import CompiledPolicies, Decision
from vswitch.tables.conntrack_entry import Entry

_ICMP = 1


def judged_tuple(entry: Entry, hairpin_address: bytes | None) -> tuple[bytes, bytes, int, int]:
    """(source, destination, protocol, destination port) that a connection is judged on: the
    destination after DNAT (a service connection is judged against its backend); the source the
    backend sees when a service SNATs to the node (a NodePort from outside), but the client's own
    address for a hairpin or a masquerade, whose translation is no disguise from the policies of
    the client. ICMP has no port (0)."""
    original = entry.original
    src = original.src
    snat, dnat = entry.snat, entry.dnat
    if dnat is not None and snat is not None and snat[0] != hairpin_address:
        src = snat[0]
    dst, dport = (dnat[0], dnat[1]) if dnat is not None else (original.dst, original.dport)
    proto = original.proto
    return src, dst, proto, 0 if proto == _ICMP or dport is None else dport


class PolicyTable:
    def __init__(self) -> None:
        self.active: CompiledPolicies | None = None
        self.generation = 0
        self.drops: dict[str, int] = {}
        self.cuts: dict[str, int] = {}
        self.drops_total = 0
        self.cuts_total = 0

    def install(self, compiled: CompiledPolicies | None) -> None:
        self.active = None if compiled is None or compiled.empty else compiled
        self.generation += 1

    def involves(self, src: bytes, dst: bytes) -> bool:
        active = self.active
        return active is not None and (active.selects(src) or active.selects(dst))

    def check(self, src: bytes, dst: bytes, protocol: int, dst_port: int) -> Decision:
        assert self.active is not None, "a verdict is asked only while policies are active"
        return self.active.check(src, dst, protocol, dst_port)

    def count_drop(self, decision: Decision) -> None:
        self.drops_total += 1
        for key in decision.policies:
            self.drops[key] = self.drops.get(key, 0) + 1

    def count_cut(self, decision: Decision) -> None:
        self.cuts_total += 1
        for key in decision.policies:
            self.cuts[key] = self.cuts.get(key, 0) + 1

    def statistics(self) -> dict[str, Any]:
        return {"active": self.active is not None, "generation": self.generation,
                "drops": self.drops_total, "cuts": self.cuts_total,
                "drops_by_policy": dict(sorted(self.drops.items())),
                "cuts_by_policy": dict(sorted(self.cuts.items()))}
