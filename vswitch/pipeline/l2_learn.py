"""l2-learn: remember which port each source MAC lives behind.

A multicast source MAC is invalid on the wire and never learned. A port that already holds its limit
of MACs gets its frames with new MACs dropped (counted), rather than letting one port fill the FDB.
In a dry-run trace the stage reports what it would learn and changes nothing.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.tables.fdb import LearnResult
from vswitch.wire.addresses import is_multicast_mac, mac_text

NAME = "l2-learn"
NEXT = ("arp-responder", "l2-forward")


class Counter(enum.Enum):
    LEARNED = "new MAC addresses learned"
    MOVED = "MAC addresses that moved to another port"
    REFRESHED = "frames that refreshed a known MAC"
    MULTICAST_SOURCE = "source MAC is a multicast address"
    MAC_LIMIT = "port already holds its limit of learned MACs"


_COUNTER_OF = {LearnResult.NEW: Counter.LEARNED, LearnResult.MOVED: Counter.MOVED,
               LearnResult.REFRESHED: Counter.REFRESHED}


def process(pkt: Packet, env: Env):
    src = pkt.eth.src
    if is_multicast_mac(src):
        return env.drop(pkt, Counter.MULTICAST_SOURCE)
    port = pkt.port.id
    segment = pkt.port.segment
    if env.commit:
        result, entry = env.fdb.learn(segment, src, port, env.now)
        pkt.src_entry = entry
    else:
        result = env.fdb.would_learn(segment, src, port, env.now)
    if result is LearnResult.LIMIT:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"port {pkt.port.name} holds {env.fdb.count_on_port(port)} MACs "
                                 f"(limit {env.fdb.mac_limit})")
        return env.drop(pkt, Counter.MAC_LIMIT)
    env.count(_COUNTER_OF[result])
    if pkt.trace is not None:
        verb = {LearnResult.NEW: "learned", LearnResult.MOVED: "moved",
                LearnResult.REFRESHED: "refreshed"}[result]
        if not env.commit:
            verb = "would be " + verb
        pkt.trace.note(NAME, f"{mac_text(src)} {verb} on port {pkt.port.name}")
    return "arp-responder" if pkt.arp is not None else "l2-forward"
