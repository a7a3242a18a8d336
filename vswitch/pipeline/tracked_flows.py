"""The connection a packet belongs to, and applying a conntrack entry's translation to it.

Shared by the stages that track and translate connections: ip4-conntrack, ip4-service,
ip4-masquerade and l2-conntrack. The received buffer is never modified: a translation produces
``pkt.ip_packet`` (the IPv4 packet as it will leave), and ``pkt.ip`` is re-read from it, so later
stages route the translated packet while ICMP errors still quote what the sender sent.
"""
from __future__ import annotations

import enum
import struct
from ipaddress import IPv4Address

from vswitch.core.actions import Hold
from vswitch.pipeline.context import Env, Packet
from vswitch.pipeline.nat_rewrite import translate, translate_icmp_error
from vswitch.tables.conntrack import Direction, Entry, FlowTuple, Verdict
from vswitch.tables.fragments import FirstFragment
from vswitch.wire import headers as h, views

# Plain ints: an enum member costs a class attribute lookup per use on the packet path.
_TCP, _UDP, _ICMP = int(h.IpProto.TCP), int(h.IpProto.UDP), int(h.IpProto.ICMP)
_ECHO_TYPES = (int(h.IcmpType.ECHO_REQUEST), int(h.IcmpType.ECHO_REPLY))
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_TCP_PORTS_FLAGS = struct.Struct("!HH8xH")  # ports, then data offset and flags
_ECHO_TYPE_OF = {Direction.ORIGINAL: h.IcmpType.ECHO_REQUEST, Direction.REPLY: h.IcmpType.ECHO_REPLY}
RELATED_ICMP_TYPES = (h.IcmpType.DEST_UNREACHABLE, h.IcmpType.TIME_EXCEEDED, 12)


def current_packet(pkt: Packet) -> bytes:
    if pkt.ip_packet is not None:
        return pkt.ip_packet
    return pkt.data[pkt.l3_offset: pkt.l3_offset + pkt.ip.total_length]


def _echo_type(pkt: Packet) -> int:
    return current_packet(pkt)[pkt.ip.ihl * 4]


def _tuple_in(data: bytes, start: int, end: int,
              ip: views.Ipv4) -> tuple[FlowTuple | None, int | None]:
    """The flow tuple of the IPv4 packet ``data[start:end]``, whose header ``ip`` has read, and
    its TCP flags; or (None, None) when the packet has no trackable L4 header (another protocol,
    a non-first fragment, a truncated header, an ICMP message other than echo). Read in place:
    nothing is copied."""
    if ip.fragment_offset:
        return None, None
    l4 = start + ip.ihl * 4
    available = end - l4
    proto = ip.protocol
    if proto == _TCP:
        if available >= h.TCP_HEADER_LEN:
            sport, dport, offset_flags = _TCP_PORTS_FLAGS.unpack_from(data, l4)
            return FlowTuple(_TCP, ip.src, sport, ip.dst, dport), offset_flags & 0x01FF
    elif proto == _UDP:
        if available >= h.UDP_HEADER_LEN:
            sport, dport = _PORTS.unpack_from(data, l4)
            return FlowTuple(_UDP, ip.src, sport, ip.dst, dport), None
    elif proto == _ICMP and available >= h.ICMP_HEADER_LEN and data[l4] in _ECHO_TYPES:
        (identifier,) = _U16.unpack_from(data, l4 + 4)
        return FlowTuple(_ICMP, ip.src, identifier, ip.dst, identifier), None
    return None, None


def _tuple_of(packet: bytes) -> tuple[FlowTuple | None, int | None]:
    """``_tuple_in`` of a whole IPv4 packet (or of a quote, cut anywhere after its ports)."""
    return _tuple_in(packet, 0, len(packet), views.Ipv4(packet))


def flow_of(pkt: Packet) -> FlowTuple | None:
    """The packet's flow tuple (cached on the packet), setting ``pkt.tcp_flags`` for TCP."""
    if pkt.flow is None and not pkt.flow_checked:
        if pkt.ip_packet is not None:
            packet = pkt.ip_packet
            pkt.flow, pkt.tcp_flags = _tuple_in(packet, 0, len(packet), pkt.ip)
        else:
            l3 = pkt.l3_offset
            end = min(len(pkt.data), l3 + pkt.ip.total_length)
            pkt.flow, pkt.tcp_flags = _tuple_in(pkt.data, l3, end, pkt.ip)
        pkt.flow_checked = True
    return pkt.flow


def quoted_flow(pkt: Packet) -> FlowTuple | None:
    """For an ICMP error, the flow of the packet it quotes; None for anything else."""
    packet = current_packet(pkt)
    ihl = pkt.ip.ihl * 4
    body = packet[ihl:]
    if pkt.ip.protocol != h.IpProto.ICMP or len(body) < h.ICMP_HEADER_LEN:
        return None
    if body[0] not in RELATED_ICMP_TYPES:
        return None
    quoted = body[h.ICMP_HEADER_LEN:]
    if len(quoted) < h.IPV4_MIN_HEADER_LEN or (quoted[0] >> 4) != 4:
        return None
    inner_ihl = (quoted[0] & 0x0F) * 4
    if len(quoted) < inner_ihl + 8:
        return None
    flow, _ = _tuple_of(quoted)
    return flow


class FragmentAction(enum.Enum):
    """What to do with a fragment that ``find`` did not place."""

    PASS = "go on untranslated"
    HOLD = "a later fragment before its first: hold it until the first passes"
    DROP = "a later fragment of a dropped first fragment: drop it"


def hold_or_drop(pkt: Packet, env: Env, action: FragmentAction, stage: str,
                 held: enum.Enum, no_room: enum.Enum, of_dropped: enum.Enum):
    """Carry out a HOLD or DROP from ``untracked_fragment`` for the calling ``stage``, which passes
    its own counters: park the frame in the fragment table (it runs again once its first
    fragment has passed), or drop it with its dropped first fragment."""
    if action is FragmentAction.DROP:
        return env.drop(pkt, of_dropped)
    ident = pkt.ip.identification
    if not env.commit:
        if pkt.trace is not None:
            pkt.trace.note(stage, f"a later fragment (id {ident}) before its first: "
                                  f"would be held until the first fragment passes")
        return (Hold(),)
    if not env.nat.fragments.hold(fragment_key(pkt), pkt.port.id, pkt.data, env.now):
        return env.drop(pkt, no_room)
    env.count(held)
    if pkt.trace is not None:
        pkt.trace.note(stage, f"a later fragment (id {ident}) before its first: "
                              f"held until the first fragment passes")
    return (Hold(),)


def fragment_key(pkt: Packet) -> tuple[int, bytes, bytes, int]:
    """What ties a datagram's fragments together: protocol, addresses and IP id, as received."""
    ip = pkt.ip
    return ip.protocol, ip.src, ip.dst, ip.identification


def find(pkt: Packet, env: Env) -> tuple[Entry, Direction, bool] | None:
    """The tracked connection of the packet, or, for an ICMP error, of the packet it quotes
    (then the last element, ``related``, is True). A later fragment of a datagram whose first
    fragment was translated belongs to that first fragment's connection."""
    flow = flow_of(pkt)
    if flow is not None:
        hit = env.conntrack.lookup(flow, env.now)
        if hit is None:
            return None
        if flow.proto == h.IpProto.ICMP and _echo_type(pkt) != _ECHO_TYPE_OF[hit[1]]:
            # Echo entries are keyed by identifier; the type tells a request that happens to
            # carry the identifier of a translated ping (someone pinging the node itself) from
            # that ping's reply, as the kernel's (type, code, id) tuple does.
            return None
        return hit[0], hit[1], False
    if pkt.ip.fragment_offset:
        followed = env.nat.fragments.outcome(fragment_key(pkt), env.now)
        if (followed is not None and followed.entry is not None
                and followed.entry.alive(env.now)):
            return followed.entry, followed.direction, False
        return None
    quoted = quoted_flow(pkt)
    if quoted is not None:
        hit = env.conntrack.lookup(quoted.reversed(), env.now)
        if hit is not None:
            return hit[0], hit[1], True
    return None


def _may_need_translation(pkt: Packet, env: Env) -> bool:
    """Whether a fragment could belong to a translated connection, judged on addresses alone
    (a later fragment has no ports). Saying yes wrongly costs a short wait, never a loss: the
    fragment is held only until its first fragment has passed."""
    ip, nat = pkt.ip, env.nat
    if ip.dst in (nat.node_address, nat.hairpin_address, nat.overlay_snat_address):
        return True
    if (ip.src, ip.dst) in nat.reply_pairs or env.services.is_frontend_address(ip.protocol, ip.dst):
        return True
    cidr = nat.cluster_cidr
    return (cidr is not None and nat.node_address is not None
            and IPv4Address(ip.src) in cidr and IPv4Address(ip.dst) not in cidr)


def untracked_fragment(pkt: Packet, env: Env) -> FragmentAction:
    """What to do with a fragment that ``find`` did not place (see ``tables.fragments``). A
    first fragment that may need translation is recorded as passing untranslated, which a
    translation later in the pipeline overrides, and releases whatever fragments of its datagram
    are held: the switch runs them through the pipeline once the current packet is done."""
    ip = pkt.ip
    if not (ip.mf or ip.fragment_offset) or not _may_need_translation(pkt, env):
        return FragmentAction.PASS
    key = fragment_key(pkt)
    fragments = env.nat.fragments
    known = fragments.outcome(key, env.now)
    if not ip.fragment_offset:
        if env.commit and known is None:
            fragments.record(key, FirstFragment.UNTRANSLATED, env.now)
        return FragmentAction.PASS
    if known is None:
        return FragmentAction.HOLD
    return FragmentAction.DROP if known.kind is FirstFragment.DROPPED else FragmentAction.PASS


def dropped_first_fragment(pkt: Packet, env: Env) -> None:
    """The caller drops this packet; if it is a first fragment, its later ones must follow."""
    ip = pkt.ip
    if env.commit and ip.mf and not ip.fragment_offset:
        env.nat.fragments.record(fragment_key(pkt), FirstFragment.DROPPED, env.now)


def advance(pkt: Packet, env: Env, entry: Entry, direction: Direction) -> Verdict:
    """Account the packet to its connection (TCP state, timeouts, counters). INVALID: drop it;
    REOPEN: the entry is gone and the packet opens a new connection. A dry run changes nothing
    and judges nothing but the reopening, which decides the path a trace shows; a later fragment
    has no flags to judge and follows its first fragment's verdict."""
    if pkt.ip.fragment_offset:
        return Verdict.ACCEPT
    if not env.commit:
        return (Verdict.REOPEN if env.conntrack.reopens(entry, direction, pkt.tcp_flags)
                else Verdict.ACCEPT)
    return env.conntrack.update(entry, direction, env.now, pkt.tcp_flags, pkt.ip.total_length)


def _partial(pkt: Packet) -> bool:
    return pkt.vnet is not None and bool(pkt.vnet.flags & h.VNET_F_NEEDS_CSUM)


def _target(entry: Entry, direction: Direction) -> FlowTuple:
    """The tuple a packet of ``direction`` must carry when it leaves."""
    return entry.reply.reversed() if direction is Direction.ORIGINAL else entry.original.reversed()


def apply(pkt: Packet, env: Env, entry: Entry, direction: Direction) -> None:
    ip = pkt.ip
    if ip.mf and not ip.fragment_offset and env.commit:
        env.nat.fragments.record(fragment_key(pkt), FirstFragment.TRANSLATED, env.now, entry,
                                 direction)
    # The target tuple (``_target``), read off the other direction's tuple without building it.
    seen = entry.reply if direction is Direction.ORIGINAL else entry.original
    packet = translate(current_packet(pkt), src=seen.dst, sport=seen.dport, dst=seen.src,
                       dport=seen.sport, partial=_partial(pkt), accel=env.accel)
    _adopt(pkt, packet, entry, direction)


def apply_related(pkt: Packet, env: Env, entry: Entry, direction: Direction) -> None:
    """Translate an ICMP error travelling in ``direction`` about a packet of this connection
    that travelled the other way (the quote)."""
    seen = entry.original if direction is Direction.ORIGINAL else entry.reply
    target = _target(entry, direction)
    ip = pkt.ip
    packet = translate_icmp_error(
        current_packet(pkt),
        outer_src=target.src if ip.src == seen.src else None,
        outer_dst=target.dst if ip.dst == seen.dst else None,
        inner_src=target.dst, inner_sport=target.dport,
        inner_dst=target.src, inner_dport=target.sport, accel=env.accel)
    _adopt(pkt, packet, entry, direction)


def _adopt(pkt: Packet, packet: bytearray, entry: Entry, direction: Direction) -> None:
    pkt.ip_packet = bytes(packet)
    pkt.ip = views.Ipv4(pkt.ip_packet)
    pkt.ct = (entry, direction)
    pkt.flow, pkt.flow_checked = None, False


def after_translation(pkt: Packet, env: Env) -> str:
    return "ip4-local" if pkt.ip.dst in env.local_ips else "ip4-lookup"
