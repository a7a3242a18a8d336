"""Policy rules compiled against the pods the node knows, for a verdict in a few lookups.

A rule admits a connection when its peer and its port both match. Compiling resolves what does
not depend on the connection once per change of policies, namespaces or pods:

* peers given by selectors become the set of the addresses of the pods they pick (a pod
  selector alone: pods of the policy's namespace; a namespace selector alone: every pod of the
  namespaces it picks; both: the pods the first picks in those namespaces). An address no known
  pod has never matches a selector, as in Kubernetes;
* ``ip_block`` peers become integer blocks with their exceptions; they match any address in the
  block, pods' included;
* ports become (protocol, low, high) ranges. A named port stays a name: it is resolved against
  the destination pod's named ports at check time (the destination is the selected pod for
  ingress, the peer for egress), and matches only a container port of the same protocol.

An empty peer list admits every peer and an empty port list every port *and every protocol*;
a rule with ports admits only TCP and UDP, so ICMP passes a selected pod only through a rule
without ports (Kubernetes' semantics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from vswitch.model import LabelSelector, Pod, PolicyPeer, PolicyPort, PolicyRule, RemotePod
from vswitch.model import namespace_labels as default_namespace_labels
from vswitch.policy.selectors import selector_matches

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17}
EVERY_POD = LabelSelector()
PORT_MAX = 65535


class KnownPods:
    """Every pod the node knows (its own and other nodes'), by namespace, and the namespaces'
    labels, so that a selector peer can be turned into the addresses it picks."""

    def __init__(self, pods: Iterable[Pod | RemotePod],
                 namespaces: Mapping[str, Mapping[str, str]]) -> None:
        self.by_namespace: dict[str, list[Pod | RemotePod]] = {}
        for pod in pods:
            self.by_namespace.setdefault(pod.namespace, []).append(pod)
        self.namespace_labels = namespaces

    def labels_of(self, namespace: str) -> Mapping[str, str]:
        """A namespace's labels; one the map lacks still carries its name label."""
        labels = self.namespace_labels.get(namespace)
        return labels if labels is not None else default_namespace_labels(namespace)

    def addresses(self, peer: PolicyPeer, policy_namespace: str) -> frozenset[bytes]:
        """The addresses of the pods a selector peer picks."""
        if peer.namespace_selector is None:
            namespaces = [policy_namespace]
        else:
            namespaces = [name for name in self.by_namespace
                          if selector_matches(peer.namespace_selector, self.labels_of(name))]
        pod_selector = peer.pod_selector if peer.pod_selector is not None else EVERY_POD
        return frozenset(pod.ip.packed for name in namespaces
                         for pod in self.by_namespace.get(name, ())
                         if selector_matches(pod_selector, pod.labels))


@dataclass(frozen=True, slots=True)
class AddressBlock:
    """An ``ip_block``: ``network``/``mask`` as integers, minus its exceptions."""

    network: int
    mask: int
    excepts: tuple[tuple[int, int], ...]

    def contains(self, address: int) -> bool:
        return (address & self.mask == self.network
                and not any(address & mask == network for network, mask in self.excepts))


@dataclass(frozen=True, slots=True)
class PortMatch:
    protocol: int  # IP protocol number
    low: int
    high: int
    name: str | None = None  # a named port: low/high unused, resolved per destination pod

    def admits(self, protocol: int, port: int,
               named_ports: Mapping[str, tuple[str, int]]) -> bool:
        if protocol != self.protocol:
            return False
        if self.name is None:
            return self.low <= port <= self.high
        binding = named_ports.get(self.name)
        return (binding is not None and PROTOCOL_NUMBERS.get(binding[0]) == protocol
                and binding[1] == port)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int  # its position among its policy's rules of the direction
    any_peer: bool
    peer_addresses: frozenset[bytes]
    blocks: tuple[AddressBlock, ...]
    ports: tuple[PortMatch, ...] | None  # None: every port of every protocol

    def admits(self, peer: bytes, protocol: int, port: int,
               named_ports: Mapping[str, tuple[str, int]]) -> bool:
        """Whether traffic with ``peer`` (the source for ingress, the destination for egress)
        to ``port`` passes; ``named_ports`` are the destination pod's."""
        if not (self.any_peer or peer in self.peer_addresses
                or (self.blocks and self._in_blocks(int.from_bytes(peer, "big")))):
            return False
        if self.ports is None:
            return True
        for match in self.ports:  # a loop, not any(): no generator on the first packet's path
            if match.admits(protocol, port, named_ports):
                return True
        return False

    def _in_blocks(self, address: int) -> bool:
        return any(block.contains(address) for block in self.blocks)


def compile_rule(index: int, rule: PolicyRule, policy_namespace: str,
                 known: KnownPods) -> CompiledRule:
    addresses: set[bytes] = set()
    blocks: list[AddressBlock] = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            block = peer.ip_block
            blocks.append(AddressBlock(
                int(block.cidr.network_address), int(block.cidr.netmask),
                tuple((int(n.network_address), int(n.netmask)) for n in block.except_)))
        else:
            addresses |= known.addresses(peer, policy_namespace)
    ports = tuple(compile_port(port) for port in rule.ports) if rule.ports else None
    return CompiledRule(index=index, any_peer=not rule.peers,
                        peer_addresses=frozenset(addresses), blocks=tuple(blocks), ports=ports)


def compile_port(port: PolicyPort) -> PortMatch:
    protocol = PROTOCOL_NUMBERS[port.protocol]
    if isinstance(port.port, str):
        return PortMatch(protocol, 0, 0, port.port)
    if port.port is None:
        return PortMatch(protocol, 0, PORT_MAX)
    return PortMatch(protocol, port.port,
                     port.end_port if port.end_port is not None else port.port)
