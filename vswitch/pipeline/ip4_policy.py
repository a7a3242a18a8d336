"""ip4-policy: the NetworkPolicy verdict on a new connection of a pod some policy selects.

Theory of operation
-------------------
* Only new connections come here, and only when a policy selects one of their two ends
  (``PolicyTable.involves``): switched ones from l2-conntrack (no connection found; an unknown
  destination MAC's flood is judged the same way), routed ones from ip4-lookup (ip4-conntrack found none; by then ip4-service has translated a service
  connection, so it is judged against its backend, as Kubernetes specifies). Traffic of pods no
  policy selects, and every packet of a node without policies, never comes here.
* The verdict is the sender's egress and the receiver's ingress (``CompiledPolicies.check``),
  on ``judged_tuple``. Traffic from and to the node's own addresses is always allowed there.
* Allowed: the connection is tracked, so that its later packets and its replies pass without a
  verdict, and the flow cache (Python or C) replays it per connection like any other tracked
  connection. A policy-checked connection is an ordinary entry without translation; a service
  connection keeps the entry ip4-service made; one that ip4-masquerade is about to translate is
  left to it (its entry tracks the connection).
* Denied: dropped silently (no RST, no ICMP), counted here and for each policy that selected the
  pod in the denied direction; an entry ip4-service made for it is removed.
* A TCP segment other than a SYN with no connection (one that began before a policy selected its
  pod, or that a policy change cut) is judged as it travels and passes untracked when allowed:
  such a connection survives only if its policies allow each of its two directions on its own,
  and a cut one stays cut (its client's segments are denied). Packets without ports (later
  fragments, ICMP other than echo requests, other protocols) are judged with port 0 and pass
  untracked the same way. Nothing that passes untracked is ever cached.
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Forward
from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.conntrack import ConntrackTable, Direction
from vswitch.tables.policies import judged_tuple
from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-policy"
NEXT = ("ip4-rewrite", "ip4-masquerade")

_TCP, _ICMP = int(h.IpProto.TCP), int(h.IpProto.ICMP)
_ECHO_REQUEST = int(h.IcmpType.ECHO_REQUEST)


class Counter(enum.Enum):
    ALLOWED = "new connections a network policy allowed, tracked"
    ALLOWED_UNTRACKED = "packets without a connection to track that a network policy allowed"
    DENIED = "new connections a network policy denied: dropped silently"
    TABLE_FULL = ("allowed connections that could not be tracked (the connection table is full"
                  " or holds their tuple): dropped")


def _judged(pkt: Packet, env: Env, flow) -> tuple[bytes, bytes, int, int]:
    created = pkt.ct
    if created is not None:
        return judged_tuple(created[0], env.nat.hairpin_address)
    ip = pkt.ip
    if flow is None:
        return ip.src, ip.dst, ip.protocol, 0
    return flow.src, flow.dst, flow.proto, 0 if flow.proto == _ICMP else flow.dport


def _untrackable(pkt: Packet, flow) -> bool:
    """A packet that cannot open a connection: no ports, a TCP segment other than a SYN, an ICMP
    message other than an echo request. (A service connection ip4-service made is new.)"""
    if flow is None:
        return True
    if pkt.ct is not None:
        return False
    if flow.proto == _TCP:
        return not ConntrackTable.new_tcp_allowed(pkt.tcp_flags)
    return (flow.proto == _ICMP
            and tracked_flows.current_packet(pkt)[pkt.ip.ihl * 4] != _ECHO_REQUEST)


def _onwards(pkt: Packet):
    """Where an allowed packet goes: out of the port l2-forward chose, or on to routing."""
    port = pkt.l2_out_port
    if port is not None:
        ports: tuple[int, ...] = (port,)
        if pkt.ct is not None and pkt.src_entry is not None and pkt.dst_entry is not None:
            pkt.conn_out_port = port
    elif pkt.l2_flood_ports:
        ports = pkt.l2_flood_ports
    else:
        return "ip4-masquerade" if pkt.masquerade else "ip4-rewrite"
    if pkt.ip_packet is None:
        return (Forward(ports),)
    return (Forward(ports, pkt.data[: pkt.l3_offset] + pkt.ip_packet),)


def _deny(pkt: Packet, env: Env, decision):
    trace = pkt.trace
    if trace is not None:
        trace.note(NAME, decision.explanation)
    if env.commit:
        env.nat.policies.count_drop(decision)
        created = pkt.ct
        if created is not None:
            env.conntrack.remove(created[0])
        tracked_flows.dropped_first_fragment(pkt, env)
    return env.drop(pkt, Counter.DENIED)


def process(pkt: Packet, env: Env):
    flow = tracked_flows.flow_of(pkt)
    policies = env.nat.policies
    src, dst, proto, dport = _judged(pkt, env, flow)
    decision = policies.check(src, dst, proto, dport)
    trace = pkt.trace
    if _untrackable(pkt, flow):
        if not decision.allowed:
            return _deny(pkt, env, decision)
        env.count(Counter.ALLOWED_UNTRACKED)
        pkt.policy_judged = True
        if trace is not None:
            trace.note(NAME, f"{decision.explanation}; no connection to track: passes untracked")
        return _onwards(pkt)
    if not decision.allowed:
        return _deny(pkt, env, decision)
    if trace is not None:
        trace.note(NAME, f"{ip_text(src)} -> {ip_text(dst)}:{dport}: {decision.explanation}")
    if pkt.ct is None and not pkt.masquerade and env.commit:
        entry = env.conntrack.create(flow, env.now, labels={"policy": decision.policies[0]}
                                     if decision.policies else None)
        if entry is None:
            tracked_flows.dropped_first_fragment(pkt, env)
            return env.drop(pkt, Counter.TABLE_FULL)
        env.conntrack.update(entry, Direction.ORIGINAL, env.now, pkt.tcp_flags,
                             pkt.ip.total_length)
        tracked_flows.apply(pkt, env, entry, Direction.ORIGINAL)
    env.count(Counter.ALLOWED)
    return _onwards(pkt)
