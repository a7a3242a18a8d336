"""The stage graph, declared in one place.

A stage's ``process(pkt, env)`` returns either the name of the next stage or a tuple of actions
(``core.actions``: forward, reply, hold, drop). Stages never call each other; ``run`` follows
the names. Every stage declares the stages it may hand over to in ``NEXT``, and ``run`` refuses
a hand-over that was not declared, so the graph printed by ``describe`` is the graph that runs.

This module is the one place that wires stages: a stage module imports helper modules, never
another stage. What several stages share lives in helper modules of the pipeline package, which
have no ``NAME`` and count nothing of their own:
``context`` (packet and environment), ``routed_frames`` (frames the router sends),
``tracked_flows`` and ``nat_rewrite`` (connections and their translation), ``ttl``.
"""
from __future__ import annotations

import enum
from types import ModuleType

from vswitch.core.actions import Action
from vswitch.pipeline import (arp_responder, eth_input, ip4_conntrack, ip4_icmp_error, ip4_input,
                               ip4_local, ip4_lookup, ip4_masquerade, ip4_neighbor, ip4_policy,
                               ip4_rewrite, ip4_service, l2_conntrack, l2_forward, l2_learn,
                               port_security, vxlan_decap, vxlan_encap)
from vswitch.pipeline.context import Env, Packet

ENTRY = eth_input.NAME
STAGES: dict[str, ModuleType] = {
    m.NAME: m for m in (eth_input, port_security, l2_learn, arp_responder, l2_forward,
                        l2_conntrack, ip4_input, vxlan_decap, ip4_conntrack, ip4_service, ip4_local,
                        ip4_lookup, ip4_policy, ip4_masquerade, ip4_rewrite, vxlan_encap,
                        ip4_neighbor, ip4_icmp_error)
}
STAGE_COUNTERS: dict[str, type[enum.Enum]] = {name: m.Counter for name, m in STAGES.items()}

for _name, _module in STAGES.items():
    for _next in _module.NEXT:
        assert _next in STAGES, f"stage {_name} declares unknown next stage {_next}"

# What ``run`` follows: each stage's process function and the stages it declared, resolved once,
# so that a hand-over costs one dict lookup that also enforces the declaration.
# A step is [process function, {declared next name: its step}, stage name].
_STEPS: dict[str, list] = {name: [m.process, {}, name] for name, m in STAGES.items()}
for _name, _module in STAGES.items():
    _STEPS[_name][1].update({n: _STEPS[n] for n in _module.NEXT})


class PipelineError(RuntimeError):
    """A stage handed over to a stage it did not declare: a programming error, not bad input."""


def run(pkt: Packet, env: Env) -> tuple[Action, ...]:
    process, following, name = _STEPS[ENTRY]
    while True:
        result = process(pkt, env)
        if isinstance(result, tuple):
            return result
        step = following.get(result)
        if step is None:
            raise PipelineError(f"stage {name} handed over to undeclared stage {result!r}")
        process, following, name = step


def describe() -> list[dict]:
    return [{"stage": name, "next": list(m.NEXT), "doc": (m.__doc__ or "").strip().splitlines()[0]}
            for name, m in STAGES.items()]
