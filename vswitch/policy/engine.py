"""The compiled policies of a node and the verdict on a new connection.

Contract (the dataplane relies on exactly this):

* ``CompiledPolicies.build(policies, namespaces, pods, node_addresses)`` compiles once per change
  of policies, namespaces or pods. ``pods`` are this node's ``Pod``s (enforced: their egress and
  ingress) and other nodes' ``RemotePod``s (known peers only: matched by pod/namespace selectors,
  never enforced here; their own node enforces them). ``namespaces`` maps a namespace name to its
  labels (``Topology.namespace_labels``). ``node_addresses`` are the node's own addresses (host
  port, gateways, uplink address): traffic from or to them is always allowed, as Kubernetes
  specifies for the node a pod runs on.
* ``check(src_ip, dst_ip, protocol, dst_port)`` (4-byte addresses, IP protocol number) is the
  verdict on a connection's first packet, after DNAT (``dst`` is the backend): the egress of
  ``src`` if it is a local pod, and the ingress of ``dst`` if it is a local pod. It costs what the
  policies selecting those two pods cost, never what the others cost.
* ``selects(ip)``: whether any policy selects the local pod at ``ip`` in any direction; traffic
  of pods no policy selects never needs a verdict (the dataplane skips tracking it).
* ``Decision`` says why, for traces and per-policy counters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from vswitch.model import NetworkPolicy, Pod, RemotePod


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # One sentence for traces: "allowed by ingress rule 0 of policy prod/web-allow",
    # "denied: egress of prod/client is selected by prod/deny-all, whose rules do not allow it",
    # "no policy selects the pod".
    explanation: str
    # The policy whose rule allowed it, or, for a denial, the policies selecting the denied pod
    # in the denied direction (each counts the drop).
    policies: tuple[str, ...] = ()
    rule: int | None = None  # the index of the allowing rule within its direction's rules
    direction: str | None = None  # "ingress" | "egress": the side that denied, or that allowed


class CompiledPolicies:
    @classmethod
    def build(cls, policies: Iterable[NetworkPolicy], namespaces: Mapping[str, Mapping[str, str]],
              pods: Iterable[Pod | RemotePod], node_addresses: Iterable[bytes] = ()
              ) -> "CompiledPolicies":
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        """No policy at all: the dataplane may skip every check."""
        raise NotImplementedError

    def selects(self, ip: bytes) -> bool:
        raise NotImplementedError

    def check(self, src_ip: bytes, dst_ip: bytes, protocol: int, dst_port: int) -> Decision:
        raise NotImplementedError
