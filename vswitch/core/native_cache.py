"""The flow cache when the C datapath executes it: cached decisions compiled to C actions.

Theory of operation
-------------------
* The pipeline's decisions are memoised as ``CacheEntry`` objects either way (``fast_path.memoise``);
  with the native accel they are not kept in a dict but compiled into ``vs_dp_action`` records and
  installed in the C datapath's table, which ``vs_dp_process`` (and the poll thread, which runs the
  same function) replays. ``fast_path.FastPath`` is its pure twin: the same checks, the same bytes.
* A compiled action names the state it rests on by slot and incarnation, never by copy: the FDB
  entries it refreshes and checks, the neighbour whose confirmation it needs, the connection whose
  clock and counters it moves (see ``tables.shared_slots``). An entry without a slot (a table that
  ran out of them) is simply not installed: its packets keep going through the pipeline.
* Hits, misses, installs, flushes, evictions and sweeps are counted in C; ``statistics`` reads
  them there, so the figures include the poll thread's packets.
* The table is bounded as ``FlowCache`` bounds it (the same slots, free list and eviction
  clock, in C): ``expire`` sweeps it on the same schedule, from the switch's timer, while the
  poll thread keeps replaying (the sweep holds the datapath's mutex for one pass over the
  slots, ~0.1 ms at 65,536).
"""
from __future__ import annotations

from typing import Any

from vswitch.core.flow_cache import CacheEntry, FlowCacheStatistics, SweepSchedule
from vswitch.tables.conntrack import ConntrackTable
from vswitch.tables.fdb import Fdb, FdbEntry
from vswitch.tables.neighbors import Neighbor, NeighborTable
from vswitch.tables.overlay import LocalVtep, OverlayTable

NO_PORT = 0xFFFFFFFF
CONSUMED = -2  # VS_DP_CONSUMED: a hit whose output the target port cannot take


class NativeFlowCache:
    def __init__(self, datapath: Any, capacity: int, fdb: Fdb, neighbors: NeighborTable,
                 conntrack: ConntrackTable, overlay: OverlayTable):
        self.datapath = datapath
        self.capacity = capacity
        self._fdb_inc = fdb.stamps.incarnation
        self._nbr_inc = neighbors.stamps.incarnation
        self._ct_inc = conntrack.slots.incarnation
        self._vtep: LocalVtep | None = overlay.vtep
        slots = conntrack.slots
        datapath.set_shared(
            fdb_seen=fdb.stamps.stamps, fdb_inc=fdb.stamps.incarnation,
            nbr_since=neighbors.stamps.stamps, nbr_inc=neighbors.stamps.incarnation,
            ct_expires=slots.expires, ct_seen=slots.seen, ct_packets=slots.packets,
            ct_bytes=slots.bytes, ct_state=slots.state, ct_flags=slots.flags,
            ct_inc=slots.incarnation, vxlan_ident=overlay.ident)
        timeouts = conntrack.timeouts
        datapath.set_params(
            fdb_aging=fdb.aging, reachable_time=neighbors.timers.reachable_time,
            ct_established=timeouts.established, ct_udp_unreplied=timeouts.udp_unreplied,
            ct_udp_replied=timeouts.udp_replied, ct_icmp=timeouts.icmp)
        self._generation = -1
        self._pack = type(datapath).pack_action
        self._upcall_all = False
        self._upcall_ports: set[int] = set()
        self.not_compiled = 0  # decisions that name state without a slot: never installed
        self._schedule = SweepSchedule()

    def set_generation(self, generation: int) -> None:
        if generation != self._generation:
            self._generation = generation
            self.datapath.set_generation(generation)

    def set_upcall_all(self, everything: bool, ports: set[int]) -> None:
        """Send every frame to the pipeline (a capture is armed) or every frame of ``ports``
        (traced)."""
        if everything != self._upcall_all:
            self._upcall_all = everything
            self.datapath.set_params(upcall_all=int(everything))
        for port in ports ^ self._upcall_ports:
            self.datapath.port_set_upcall_all(port, port in ports)
        self._upcall_ports = set(ports)

    def forget_port(self, port: int) -> None:
        self._upcall_ports.discard(port)

    def install(self, key: bytes, entry: CacheEntry) -> None:
        fields = self._compiled(entry)
        if fields is None:
            self.not_compiled += 1
            return
        self.datapath.install_packed(key, self._pack(fields))

    def clear(self) -> None:
        self.datapath.flush()

    def sweep(self) -> int:
        """``FlowCache.sweep``, of the C table."""
        return self.datapath.sweep()

    def expire(self, now: float) -> int:
        """``FlowCache.expire``: a sweep when one is due."""
        return self.sweep() if self._schedule.due(now) else 0

    @property
    def next_sweep(self) -> float | None:
        """When the next sweep is due (None until the timer first looked)."""
        return self._schedule.next_sweep

    @property
    def hits(self) -> int:
        return self.datapath.stats()["hits"]

    @property
    def misses(self) -> int:
        return self.datapath.stats()["misses"]

    def statistics(self) -> FlowCacheStatistics:
        s = self.datapath.stats()
        return FlowCacheStatistics(s["entries"], self.capacity, s["hits"], s["misses"],
                                   s["installs"], s["flushes"], s["evictions"], s["swept"])

    # -- compiling ---------------------------------------------------------------------------

    def _compiled(self, entry: CacheEntry) -> dict[str, Any] | None:
        if entry.per_connection:
            return {"generation": entry.generation, "out_port": NO_PORT, "kind": _PER_CONNECTION}
        if entry.decap is not None:
            vtep = self._vtep
            if vtep is None:
                return None
            return {"generation": entry.generation, "out_port": NO_PORT, "kind": _DECAP,
                    "decap_vtep_mac": vtep.vtep_mac, "encap_port": vtep.port,
                    "encap_vni": vtep.vni}
        fields: dict[str, Any] = {"generation": entry.generation, "out_port": entry.out_port,
                                  "kind": _FORWARD if entry.ct is None else _CONNECTION}
        if not (self._fdb(fields, "src", entry.src) and self._fdb(fields, "dst", entry.dst)):
            return None
        if entry.rewrite is not None:
            if not self._neighbor(fields, entry.neighbor):
                return None
            fields.update(rewrite_macs=1, rewrite=entry.rewrite, mtu=entry.mtu)
        if entry.ct is not None:
            slot = entry.ct.slot
            if slot < 0:
                return None
            target = entry.target
            fields.update(ct_slot=slot, ct_inc=self._ct_inc[slot],
                          direction=entry.direction.value, target_src=target.src,
                          target_dst=target.dst, target_sport=target.sport,
                          target_dport=target.dport)
        if entry.encap is not None:
            encap = entry.encap
            vtep = encap.vtep
            fields.update(encap=1, encap_inner_macs=encap.inner_macs, encap_src_ip=vtep.address,
                          encap_dst_ip=encap.dst_ip, encap_port=vtep.port, encap_vni=vtep.vni,
                          encap_hash_seed=vtep.source_port_seed)
        return fields

    def _fdb(self, fields: dict[str, Any], which: str, entry: FdbEntry | None) -> bool:
        if entry is None or entry.slot < 0:
            return False
        fields[f"{which}_slot"] = entry.slot
        fields[f"{which}_inc"] = self._fdb_inc[entry.slot]
        return True

    def _neighbor(self, fields: dict[str, Any], neighbor: Neighbor | None) -> bool:
        if neighbor is None or neighbor.slot < 0:
            return False
        fields["nbr_slot"] = neighbor.slot
        fields["nbr_inc"] = self._nbr_inc[neighbor.slot]
        return True


# enum vs_dp_kind (native/vswitch_native.h)
_FORWARD = 1
_PER_CONNECTION = 2
_CONNECTION = 3
_DECAP = 4
