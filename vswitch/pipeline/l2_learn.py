"""l2-learn: remember which port each source MAC lives behind.

A multicast source MAC is invalid on the wire and never learned. A port that already holds its limit
of MACs gets its frames with new MACs dropped (counted), rather than letting one port fill the FDB.
In a dry-run trace the stage reports what it would learn and changes nothing.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.tables.fdb import LearnResult
from vswitch.wire.addresses import mac_text

NAME = "l2-learn"
NEXT = ("arp-responder", "l2-forward")


class Counter(enum.Enum):
    LEARNED = "new MAC addresses learned"
    MOVED = "MAC addresses that moved to another port"
    REFRESHED = "frames that refreshed a known MAC"
    MULTICAST_SOURCE = "source MAC is a multicast address"
    MAC_LIMIT = "port already holds its limit of learned MACs"


def process(pkt: Packet, env: Env):
    src = pkt.eth.src
    if src[0] & 1:  # is_multicast_mac, without the call
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
    # Told by identity: a dict keyed by the enum would hash it with a Python-level call.
    if result is LearnResult.REFRESHED:
        env.count(Counter.REFRESHED)
    elif result is LearnResult.NEW:
        env.count(Counter.LEARNED)
    else:
        env.count(Counter.MOVED)
    if pkt.trace is not None:
        verb = {LearnResult.NEW: "learned", LearnResult.MOVED: "moved",
                LearnResult.REFRESHED: "refreshed"}[result]
        if not env.commit:
            verb = "would be " + verb
        pkt.trace.note(NAME, f"{mac_text(src)} {verb} on port {pkt.port.name}")
    return "arp-responder" if pkt.arp is not None else "l2-forward"
