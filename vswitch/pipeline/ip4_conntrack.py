"""ip4-conntrack: every routed packet is looked up in the connection table first.

A packet of a known connection is translated as its entry says (DNAT of a service, SNAT of a
hairpin, NodePort or masquerade, or the reverse for replies) and its TCP state advanced. A TCP
packet the state machine calls invalid is dropped and counted, never forwarded untranslated: an
untranslated reply is what makes a client answer with RST ("connection reset by peer"). An ICMP
error about a tracked connection is translated inside and out. A SYN on the tuple of a closed
connection (TIME_WAIT, CLOSE) removes the old entry and goes on as a new connection, as in the
kernel, so it gets a fresh endpoint choice. A later fragment that may belong to a translated
connection and arrives before its first fragment is held until the first has passed (see
``tables.fragments``). A mid-stream TCP segment of no tracked connection from a service backend
is dropped and counted when it may be the reply of a translated connection the table does not
know: addressed to one of the node's SNAT addresses (nothing else listens there), or while the
table is incomplete after a restart (``ConntrackTable.incomplete_until``). Forwarded untranslated,
it would reach the client from an address the client never called, and the client's RST would
end the backend's side of a connection that the client's next segment would have picked up.
Anything else goes on to the service stage, which decides whether it opens a new translated
connection.
"""
from __future__ import annotations

import enum

from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.conntrack import Verdict
from vswitch.tables.tcp_states import SYN
from vswitch.wire import headers as h

NAME = "ip4-conntrack"
NEXT = ("ip4-service", "ip4-local", "ip4-lookup")

_TCP = int(h.IpProto.TCP)


class Counter(enum.Enum):
    TRACKED = "packets of a tracked connection, translated"
    RELATED = "ICMP errors about a tracked connection, translated inside and out"
    INVALID = "TCP packets invalid for their connection's state: dropped"
    REOPENED = "SYNs on the tuple of a closed connection: old entry removed, looked at as new"
    UNTRACKED = "packets of no tracked connection"
    FRAGMENT_HELD = "later fragments that came before their first: held until it passes"
    FRAGMENT_HOLD_FULL = "later fragments that came before their first, not held: no room"
    FRAGMENT_HOLD_EXPIRED = "held fragments whose first fragment never came: dropped"
    FRAGMENT_OF_DROPPED = "later fragments of a datagram whose first fragment was dropped"
    UNKNOWN_BACKEND_REPLY = ("mid-stream TCP from a service backend that may answer a translated"
                             " connection the table does not know: dropped, not sent untranslated")


def process(pkt: Packet, env: Env):
    found = tracked_flows.find(pkt, env)
    if found is None:
        fragment = tracked_flows.untracked_fragment(pkt, env)
        if fragment is not tracked_flows.FragmentAction.PASS:
            return tracked_flows.hold_or_drop(pkt, env, fragment, NAME, Counter.FRAGMENT_HELD,
                                              Counter.FRAGMENT_HOLD_FULL,
                                              Counter.FRAGMENT_OF_DROPPED)
        if _unknown_backend_reply(pkt, env):
            if pkt.trace is not None:
                pkt.trace.note(NAME, f"{pkt.flow.describe()}: mid-stream from a service backend, "
                                     f"of no known connection: dropped, never untranslated")
            tracked_flows.dropped_first_fragment(pkt, env)
            return env.drop(pkt, Counter.UNKNOWN_BACKEND_REPLY)
        env.count(Counter.UNTRACKED)
        pkt.new_connection = True
        return "ip4-service"
    entry, direction, related = found
    if related:
        tracked_flows.apply_related(pkt, env, entry, direction)
        env.count(Counter.RELATED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"ICMP error about [{entry.original.describe()}]: "
                                 f"translated inside and out")
        return tracked_flows.after_translation(pkt, env)
    flow = pkt.flow
    state = entry.tcp_state.name
    verdict = tracked_flows.advance(pkt, env, entry, direction)
    if verdict is Verdict.INVALID:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{flow.describe()} is invalid in state {state}")
        tracked_flows.dropped_first_fragment(pkt, env)
        return env.drop(pkt, Counter.INVALID)
    if verdict is Verdict.REOPEN:
        env.count(Counter.REOPENED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{flow.describe()} opens a new connection on the tuple of "
                                 f"[{entry.original.describe()}] ({state}): the old entry is "
                                 f"removed and the packet is looked at as new")
        pkt.new_connection = True
        return "ip4-service"
    tracked_flows.apply(pkt, env, entry, direction)
    env.count(Counter.TRACKED)
    if pkt.trace is not None:
        state = entry.tcp_state.name if flow.proto == 6 else (
            "replied" if entry.replied else "unreplied")
        pkt.trace.note(NAME, f"{flow.describe()}: {direction.name.lower()} direction of "
                             f"[{entry.original.describe()}] ({state}); leaves as "
                             f"{tracked_flows.flow_of(pkt).describe()}")
    return tracked_flows.after_translation(pkt, env)


def _unknown_backend_reply(pkt: Packet, env: Env) -> bool:
    """Whether an untracked packet is a mid-stream TCP segment from a service backend that may
    belong to a translated connection (see the module's docstring)."""
    flow = pkt.flow
    if flow is None or flow.proto != _TCP or pkt.tcp_flags & SYN:
        return False
    if not env.services.is_backend(_TCP, flow.src, flow.sport):
        return False
    nat = env.nat
    return (flow.dst in (nat.node_address, nat.hairpin_address, nat.overlay_snat_address)
            or env.now < env.conntrack.incomplete_until)
