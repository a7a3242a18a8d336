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

Theory of operation: ``build`` matches each policy against the local pods of its namespace only
and compiles just the policies that select one; each local pod's address then maps, per
direction, to the compiled policies selecting it (``Selection``). A verdict looks up the source's egress selection and the
destination's ingress selection and evaluates only their rules, so its cost does not grow with
policies that select neither pod. A pod no policy of a direction selects is unrestricted in
that direction; a selected pod admits the union of the rules of every policy selecting it, and
a connection needs the sender's egress and the receiver's ingress (networking.k8s.io/v1).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from vswitch.model import POLICY_EGRESS, POLICY_INGRESS, NetworkPolicy, Pod, RemotePod
from vswitch.policy.rules import CompiledRule, KnownPods, compile_rule
from vswitch.policy.selectors import selector_matches

INGRESS = "ingress"
EGRESS = "egress"
NO_NAMED_PORTS: Mapping[str, tuple[str, int]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # One sentence for traces: "allowed by ingress rule 0 of policy prod/web-allow",
    # "denied: egress of prod/client is selected by prod/deny-all, whose rules do not allow it",
    # "no policy selects the pod".
    explanation: str
    # The policy whose rule allowed it, or, for a denial, the policies selecting the denied pod
    # in the denied direction (each counts the drop). When rules of both sides allowed it: the
    # egress policy, then the ingress policy, and ``rule``/``direction`` are the ingress one's.
    policies: tuple[str, ...] = ()
    rule: int | None = None  # the index of the allowing rule within its direction's rules
    direction: str | None = None  # "ingress" | "egress": the side that denied, or that allowed


UNSELECTED = Decision(True, "no policy selects the pod")
NODE_TRAFFIC = Decision(True, "allowed: traffic from or to the node itself always passes")


@dataclass(frozen=True, slots=True)
class SelectingPolicy:
    """One policy selecting a pod in one direction: its compiled rules, and for each rule the
    decision that names it, made once so that an allowed verdict allocates nothing."""

    key: str
    rules: tuple[CompiledRule, ...]
    allowed: tuple[Decision, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """The compiled policies selecting one local pod in one direction, and the denial each of
    its connections gets that none of their rules admits."""

    policies: tuple[SelectingPolicy, ...]
    denial: Decision

    def admitting(self, peer: bytes, protocol: int, port: int,
                  named_ports: Mapping[str, tuple[str, int]]) -> Decision | None:
        """The decision naming the first rule admitting the connection, or None."""
        for policy in self.policies:
            for rule, decision in zip(policy.rules, policy.allowed):
                if rule.admits(peer, protocol, port, named_ports):
                    return decision
        return None


class CompiledPolicies:
    def __init__(self, ingress: Mapping[bytes, Selection], egress: Mapping[bytes, Selection],
                 named_ports: Mapping[bytes, Mapping[str, tuple[str, int]]],
                 node_addresses: frozenset[bytes], policy_count: int) -> None:
        self._ingress = ingress
        self._egress = egress
        self._named_ports = named_ports
        self._node_addresses = node_addresses
        self._policy_count = policy_count

    @classmethod
    def build(cls, policies: Iterable[NetworkPolicy], namespaces: Mapping[str, Mapping[str, str]],
              pods: Iterable[Pod | RemotePod], node_addresses: Iterable[bytes] = ()
              ) -> "CompiledPolicies":
        policies = tuple(policies)
        pods = tuple(pods)
        known = KnownPods(pods, namespaces)
        local_by_namespace: dict[str, list[Pod]] = {}
        for pod in pods:
            if isinstance(pod, Pod):
                local_by_namespace.setdefault(pod.namespace, []).append(pod)
        selected: dict[tuple[str, bytes], list[SelectingPolicy]] = {}
        pod_keys: dict[bytes, str] = {}
        for policy in policies:
            chosen = [pod for pod in local_by_namespace.get(policy.namespace, ())
                      if selector_matches(policy.pod_selector, pod.labels)]
            if not chosen:
                continue  # selects no pod of this node: nothing to compile
            for direction, kind, rules in ((INGRESS, POLICY_INGRESS, policy.ingress),
                                           (EGRESS, POLICY_EGRESS, policy.egress)):
                if kind not in policy.policy_types:
                    continue
                compiled = SelectingPolicy(
                    policy.key,
                    tuple(compile_rule(index, rule, policy.namespace, known)
                          for index, rule in enumerate(rules)),
                    tuple(Decision(True, f"allowed by {direction} rule {index} of policy "
                                         f"{policy.key}", (policy.key,), index, direction)
                          for index in range(len(rules))))
                for pod in chosen:
                    pod_keys[pod.ip.packed] = pod.key
                    selected.setdefault((direction, pod.ip.packed), []).append(compiled)
        by_direction: dict[str, dict[bytes, Selection]] = {INGRESS: {}, EGRESS: {}}
        for (direction, ip), chosen_by in selected.items():
            keys = tuple(policy.key for policy in chosen_by)
            denial = Decision(
                False, f"denied: {direction} of {pod_keys[ip]} is selected by "
                       f"{', '.join(keys)}, whose rules do not allow it",
                policies=keys, direction=direction)
            by_direction[direction][ip] = Selection(tuple(chosen_by), denial)
        named_ports = {pod.ip.packed: pod.named_ports() for pod in pods}
        return cls(by_direction[INGRESS], by_direction[EGRESS], named_ports,
                   frozenset(node_addresses), len(policies))

    @property
    def empty(self) -> bool:
        """No policy at all: the dataplane may skip every check."""
        return self._policy_count == 0

    def selects(self, ip: bytes) -> bool:
        return ip in self._ingress or ip in self._egress

    def check(self, src_ip: bytes, dst_ip: bytes, protocol: int, dst_port: int) -> Decision:
        if src_ip in self._node_addresses or dst_ip in self._node_addresses:
            return NODE_TRAFFIC
        egress = self._egress.get(src_ip)
        ingress = self._ingress.get(dst_ip)
        if egress is None and ingress is None:
            return UNSELECTED
        named_ports = self._named_ports.get(dst_ip, NO_NAMED_PORTS)
        egress_allowed = ingress_allowed = None
        if egress is not None:
            egress_allowed = egress.admitting(dst_ip, protocol, dst_port, named_ports)
            if egress_allowed is None:
                return egress.denial
        if ingress is not None:
            ingress_allowed = ingress.admitting(src_ip, protocol, dst_port, named_ports)
            if ingress_allowed is None:
                return ingress.denial
        if egress_allowed is None or ingress_allowed is None:
            allowed = egress_allowed or ingress_allowed
            assert allowed is not None  # one of the two sides is selected
            return allowed
        return Decision(True, f"{egress_allowed.explanation} and "
                              f"{ingress_allowed.explanation.removeprefix('allowed by ')}",
                        egress_allowed.policies + ingress_allowed.policies,
                        ingress_allowed.rule, INGRESS)
