"""ip4-service: a new connection to a service frontend is given a backend and translated.

Frontends are cluster IPs, external IPs and the node address's node ports (``ServiceTable``).
For a new connection (a TCP SYN, or the first UDP datagram or echo request):

* the backend comes from ``ServiceTable.choose``: ClientIP affinity first, then random or Maglev,
  among ready backends, only local ones under a Local traffic policy;
* the connection is DNATed to it. The backend sees the client's own address, except when a
  translation back would otherwise be impossible: a backend reaching its own service (hairpin) is
  SNATed to the hairpin address, and a NodePort or external-IP connection from outside under
  ``externalTrafficPolicy: Cluster`` is SNATed to the node address, as kube-proxy does (to the
  node's pod gateway when the backend is another node's pod: that address the overlay routes back
  here, where the node address would come back masqueraded by the backend's node);
* no ready backend at all: refused at once, TCP with a RST and UDP with ICMP port unreachable, so
  the client is not left waiting for a timeout. No *local* backend under a Local policy: dropped and
  counted, as Kubernetes does;
* a mid-stream TCP segment (the ACK class: no SYN, FIN or RST) for a frontend without a tracked
  connection is picked up, as Linux's ``nf_conntrack_tcp_loose`` does: its connection was
  forgotten (a restart whose snapshot missed it, an expired entry), so it gets a backend as a new
  connection would and an ESTABLISHED entry (``ConntrackTable.pick_up``). With
  ``load_balancer = "maglev"`` the choice is a pure function of the tuple, so the connection
  reaches the backend it had (unless the backends changed; under ClientIP affinity Maglev hashes
  the client's address alone, so that all of a client's connections agree); with "random" it
  usually reaches another, whose RST tells the client at once, where a drop would leave it
  hanging. SNAT keeps the client's port when it is free, so a NodePort connection usually keeps
  its port too. Any other TCP packet without a tracked connection is invalid: dropped and
  counted.
"""
from __future__ import annotations

import enum
import struct

from vswitch.core.port_spec import PortKind
from vswitch.core.actions import Reply
from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.conntrack import ConntrackTable, Direction, Entry, TcpState
from vswitch.tables.services import FrontendKind, NoBackend
from vswitch.wire import builders, headers as h, views
from vswitch.wire.addresses import ip_text

NAME = "ip4-service"
NEXT = ("ip4-local", "ip4-lookup", "ip4-icmp-error")

# Plain ints: an enum member costs a class attribute lookup per use on the packet path.
_TCP = int(h.IpProto.TCP)
_ICMP = int(h.IpProto.ICMP)
_FLOW_KEY = struct.Struct("!B4sH4sH")
_NO_ADDRESS = bytes(4)


class Counter(enum.Enum):
    NEW_CONNECTIONS = "new connections to a service, translated to a backend"
    HAIRPIN = "connections of a backend to its own service, SNATed to the hairpin address"
    NODE_SNAT = "NodePort/external-IP connections SNATed to the node address (policy Cluster)"
    REFUSED_TCP = "TCP connections to a service without ready endpoints, refused with RST"
    REFUSED_UDP = "UDP datagrams to a service without ready endpoints, answered port unreachable"
    NO_LOCAL_ENDPOINT = "Local traffic policy and no endpoint on this node: dropped"
    INVALID = ("TCP packets other than SYN or mid-stream ACK for a service without a tracked"
               " connection: dropped")
    PICKED_UP = ("mid-stream TCP segments for a service without a tracked connection: picked up"
                 " as ESTABLISHED connections")
    TABLE_FULL = "new connections refused because the connection table is full of live entries"
    NO_PORT = "no free source port for the SNAT this connection needs"


def _rst_for(pkt: Packet, env: Env) -> bytes:
    packet = tracked_flows.current_packet(pkt)
    ihl = pkt.ip.ihl * 4
    tcp = views.Tcp(packet, ihl)
    payload = pkt.ip.total_length - ihl - tcp.data_offset * 4
    seq_len = payload + (1 if tcp.flags & h.TcpFlag.SYN else 0) + (1 if tcp.flags & h.TcpFlag.FIN else 0)
    segment = builders.tcp(src=pkt.ip.dst, dst=pkt.ip.src, src_port=tcp.dst_port,
                           dst_port=tcp.src_port, flags=h.TcpFlag.RST | h.TcpFlag.ACK, seq=0,
                           ack=(tcp.seq + seq_len) & 0xFFFFFFFF, window=0, accel=env.accel)
    ip = builders.ipv4(src=pkt.ip.dst, dst=pkt.ip.src, protocol=h.IpProto.TCP, payload=segment,
                       ttl=64, accel=env.accel)
    return builders.ethernet(pkt.eth.src, env.segment_of(pkt).gateway_mac, h.EtherType.IPV4, ip)


def _refuse(pkt: Packet, env: Env, flow):
    if flow.proto == _TCP:
        drop = env.drop_action(pkt, Counter.REFUSED_TCP)
        if pkt.trace is not None:
            pkt.trace.note(NAME, "no ready endpoint: refuse with TCP RST")
        return (drop, Reply(pkt.port.id, _rst_for(pkt, env)))
    pkt.pending_drop = env.drop_action(pkt, Counter.REFUSED_UDP)
    pkt.icmp_error = (h.IcmpType.DEST_UNREACHABLE, 3, bytes(4))
    return "ip4-icmp-error"


def _next(pkt: Packet, env: Env) -> str:
    return tracked_flows.after_translation(pkt, env)


def process(pkt: Packet, env: Env):
    flow = tracked_flows.flow_of(pkt)
    if flow is None or flow.proto == _ICMP:
        return _next(pkt, env)
    services = env.services
    match = services.match(flow.proto, flow.dst, flow.dport)
    if match is None:
        return _next(pkt, env)
    service = match.service
    trace = pkt.trace
    if trace is not None:
        trace.note(NAME, f"{ip_text(flow.dst)}:{flow.dport}/{'tcp' if flow.proto == 6 else 'udp'} "
                         f"is {match.kind.value} of service {service.key} port "
                         f"{match.port.name or match.port.port}; {len(match.backends)} ready "
                         f"backend(s): {', '.join(b.name for b in match.backends) or 'none'}")
    picked_up = flow.proto == _TCP and not ConntrackTable.new_tcp_allowed(pkt.tcp_flags)
    if picked_up and not ConntrackTable.loose_pickup_allowed(pkt.tcp_flags):
        return env.drop(pkt, Counter.INVALID)
    from_outside = pkt.port.kind is PortKind.UPLINK
    why = services.why_none(match, from_outside)
    if why is NoBackend.NO_ENDPOINTS:
        return _refuse(pkt, env, flow)
    if why is NoBackend.NO_LOCAL_ENDPOINTS:
        return env.drop(pkt, Counter.NO_LOCAL_ENDPOINT)
    # A dry run takes the same choice without committing it: the trace follows the backend this
    # packet would really get. Only Maglev reads the flow's hash. Under ClientIP affinity it is
    # the hash of the client's address alone: every connection of a client then gets from Maglev
    # the backend affinity holds it to, so that a connection picked up after its entries were
    # lost (a crash) reaches that backend whichever of the client's connections comes first.
    if services.uses_flow_hash(match):
        key = (_FLOW_KEY.pack(flow.proto, flow.src, 0, _NO_ADDRESS, 0) if match.affinity
               else _FLOW_KEY.pack(flow.proto, flow.src, flow.sport, flow.dst, flow.dport))
        flow_hash = env.accel.hash_key(key, 0)
    else:
        flow_hash = 0
    backend = services.choose(match, client_ip=flow.src, flow_hash=flow_hash, now=env.now,
                              from_outside=from_outside, commit=env.commit)
    snat = None
    nat = env.nat
    if backend.ip == flow.src and nat.hairpin_address is not None:
        snat_ip, counter = nat.hairpin_address, Counter.HAIRPIN
    elif (from_outside and match.kind is not FrontendKind.CLUSTER_IP
          and service.external_traffic_policy.lower() == "cluster" and nat.node_address):
        snat_ip, counter = nat.node_address, Counter.NODE_SNAT
        if not backend.local and nat.overlay_snat_address is not None:
            snat_ip = nat.overlay_snat_address
    else:
        snat_ip, counter = None, None
    if snat_ip is not None:
        port = env.conntrack.allocate_port(flow.proto, snat_ip, backend.ip, backend.port,
                                           preferred=flow.sport, now=env.now)
        if port is None:
            return env.drop(pkt, Counter.NO_PORT)
        snat = (snat_ip, port)
    if not env.commit:
        if trace is not None:
            if env.services.pinned(match, flow.src, env.now, from_outside) is backend:
                trace.note(NAME, f"ClientIP affinity holds {ip_text(flow.src)} to {backend.name}: "
                                 f"would DNAT there")
            else:
                trace.note(NAME, f"would DNAT to a backend chosen by {service.load_balancer}"
                                 f"{' with ClientIP affinity' if service.session_affinity == 'ClientIP' else ''}"
                                 f"; this trace follows {backend.name}")
        entry = _dry_entry(env, flow, backend, snat)
        tracked_flows.apply(pkt, env, entry, Direction.ORIGINAL)
        return _next(pkt, env)
    conntrack = nat.conntrack
    labels = {"service": match.service_key, "port": match.port.name, "kind": match.kind_value,
              "backend": backend.name}
    if picked_up:
        entry = conntrack.pick_up(flow, env.now, dnat=(backend.ip, backend.port), snat=snat,
                                  labels=labels, length=pkt.ip.total_length)
    else:
        entry = conntrack.create(flow, env.now, dnat=(backend.ip, backend.port), snat=snat,
                                 labels=labels)
    if entry is None:
        return env.drop(pkt, Counter.TABLE_FULL)
    if picked_up:
        env.count(Counter.PICKED_UP)
    else:
        conntrack.update(entry, Direction.ORIGINAL, env.now, pkt.tcp_flags, pkt.ip.total_length)
        env.count(Counter.NEW_CONNECTIONS)
    if counter is not None:
        env.count(counter)
    tracked_flows.apply(pkt, env, entry, Direction.ORIGINAL)
    if trace is not None:
        extra = f", SNAT to {ip_text(snat[0])}:{snat[1]}" if snat else ""
        how = "mid-stream segment: connection picked up" if picked_up else "new connection"
        trace.note(NAME, f"{how}: DNAT to {backend.name}"
                         f"{' (pod ' + backend.pod + ')' if backend.pod else ''}{extra}")
    return _next(pkt, env)


def _dry_entry(env: Env, flow, backend, snat) -> Entry:
    """An entry for a dry-run trace only: built like a real one, never stored."""
    reply = ConntrackTable.reply_tuple(flow, (backend.ip, backend.port), snat)
    return Entry(flow, reply, (backend.ip, backend.port), snat, env.now, env.now, TcpState.NONE, {})
