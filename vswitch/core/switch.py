"""The switch: the sans-I/O core that the runtime feeds with frames and time.

Theory of operation
-------------------
* ``process_batch(port, frames, now)`` takes a burst read from one port and returns the frames to
  write, as ``Transmit`` values. It never reads a clock, a socket or a random source.
* For each frame the fast path is tried first: the flow key (one batch call into ``accel``) and a
  flow-cache lookup. On a miss the frame runs through the stage graph, and a cacheable decision is
  memoised. The pipeline is the source of truth; the cache only remembers its answers.
* Frames are forwarded as they were read, virtio-net header included, so 64 KB TSO segments and
  partial checksums pass between offload-capable ports untouched.
* Every received frame gets exactly one disposition (cache hit, forwarded, local, queued for ARP,
  dropped), so the dispositions add up to what the ports received.
* The tables the stages consult live here: the FDB, the FIB and neighbour table of the router, the
  connection table and the service table. ``programming`` (``core.programming``) re-programs
  services from the desired state; ``handle_timer`` ages every table and retries ARP. Each
  table's changes bump a generation, and their sum versions the flow cache (see ``fast_path``
  for what a hit does).
* A trace runs the same stages with notes switched on: either a dry run on a packet built from text
  (tables untouched, counters not counted), or the next N real packets of a port. Traces and
  captures are ``self.tracer`` (``core.tracing``); the frames a decision emits, with their tx
  counters, capture and virtio-net framing, are ``self.egress``'s (``core.egress``).
"""
from __future__ import annotations

import math
import random
from ipaddress import IPv4Network
from collections import Counter as _Tally
from types import ModuleType
from typing import Sequence, cast

from vswitch import accel as _accel
from vswitch.core.transmit import Transmit
from vswitch.core.counters import Disposition, PortCounters, StageCounters, counter_name
from vswitch.core import fast_path
from vswitch.core.conntrack_filter import entry_filter
from vswitch.core.egress import Egress
from vswitch.core.flow_cache import FlowCache
from vswitch.core.native_cache import CONSUMED, NativeFlowCache
from vswitch.core.port_spec import PortSpec
from vswitch.core.programming import TableProgramming, policy_namespaces
from vswitch.core.tracing import Tracer
from vswitch.core.actions import Drop, Forward, Hold, Reply
from vswitch.model import DEFAULT_CONNTRACK_MAX, Topology
from vswitch.pipeline import graph, ip4_conntrack, ip4_icmp_error, ip4_neighbor, routed_frames
from vswitch.pipeline.context import Env, NatContext, Packet, SegmentInfo
from vswitch.tables.conntrack import ConntrackTable
from vswitch.tables.fdb import Fdb
from vswitch.tables.fib import Fib, Route, RouteKind
from vswitch.tables.icmp_ratelimit import IcmpRateLimiter
from vswitch.tables.neighbors import NeighborTable
from vswitch.tables.overlay import OverlayTable, local_vtep, static_nodes
from vswitch.tables.services import ServiceTable
from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes


_M64 = (1 << 64) - 1
# The C datapath's transmit drop counters by the reason the pipeline's own counters use.
_NATIVE_TX_DROPS = (("tx-busy", "tx_busy"), ("offload-unsupported", "tx_offload_unsupported"),
                    ("port-gone", "tx_port_gone"), ("tx-error", "tx_error"))


class Switch:
    def __init__(self, topology: Topology, accel: ModuleType | None = None,
                 flow_cache_capacity: int = 65536, rng_seed: int = 0):
        self.topology = topology
        self.accel = accel if accel is not None else _accel.load(topology.dataplane.accel)
        self.accel_name: str = self.accel.NAME
        self.segments = [
            SegmentInfo(i, seg.name, seg.cidr, seg.gateway.packed, mac_bytes(seg.gateway_mac),
                        seg.mtu)
            for i, seg in enumerate(topology.router_segments())
        ]
        self.fdb = Fdb(topology.dataplane.fdb_aging, topology.dataplane.mac_limit, self.accel)
        self.fib = Fib(self.accel)
        for seg in self.segments:
            self.fib.add(Route(seg.cidr, RouteKind.CONNECTED, seg.index,
                               origin=f"segment {seg.name}"))
        uplink = topology.uplink
        if uplink is not None:
            self.fib.add(Route(IPv4Network("0.0.0.0/0"), RouteKind.STATIC,
                               topology.uplink_segment_index(), uplink.gateway, origin="uplink"))
        for index, static in enumerate(topology.routes):
            self.fib.add(Route(static.dst, RouteKind.STATIC, topology.segment_index(static.segment),
                               static.via, origin=f"routes[{index}]"))
        cluster = topology.cluster
        # The seed makes a run reproducible; the daemon passes a random one. Each table that needs
        # randomness gets its own stream derived from it, so that one table's use of it never
        # shifts another's.
        self.conntrack = ConntrackTable(
            cluster.conntrack_max if cluster else DEFAULT_CONNTRACK_MAX,
            port_salt=random.Random(f"{rng_seed}/conntrack").getrandbits(64), accel=self.accel)
        node_address = uplink.address.ip.packed if uplink is not None else None
        self.services = ServiceTable(random.Random(rng_seed),
                                     [node_address] if node_address else [])
        self.nat = NatContext(
            self.conntrack, self.services,
            cluster_cidr=cluster.cidr if cluster else topology.node.pod_cidr,
            hairpin_address=cluster.hairpin_address.packed if cluster else None,
            uplink_segment=topology.uplink_segment_index(), node_address=node_address,
            overlay_snat_address=topology.node.gateway.packed if topology.overlay else None)
        self.overlay = OverlayTable(self.fib, local_vtep(topology),
                                    topology.uplink_segment_index(),
                                    [seg.cidr for seg in self.segments])
        self.overlay.set_nodes(static_nodes(topology))
        self.neighbors = NeighborTable(accel=self.accel)
        self.icmp_limiter = IcmpRateLimiter()
        # With the native accel the C datapath holds the cache and executes its hits
        # (``native_cache``); the pure accel keeps it in a dict for ``fast_path``, its twin.
        datapath_class = getattr(self.accel, "Datapath", None)
        self.datapath = (datapath_class(max(flow_cache_capacity, 1), seed=rng_seed & _M64)
                         if datapath_class is not None else None)
        self.flow_cache: FlowCache | NativeFlowCache = FlowCache(flow_cache_capacity)
        self._extractor = self.accel.FlowKeyExtractor()
        self.ports: dict[int, PortSpec] = {}
        self._by_name: dict[str, PortSpec] = {}
        self._port_counters: dict[int, PortCounters] = {}
        self._key_prefix: dict[int, bytes] = {}
        self._segment_ports: dict[int, tuple[int, ...]] = {}
        self.counters = StageCounters(graph.STAGE_COUNTERS)
        self.dispositions: _Tally = _Tally()
        self.unknown_port_frames = 0
        # Bumped by port changes; with the tables' own generations it versions cached decisions.
        self._config_generation = 0
        self._fast = fast_path.FastPath(self.accel, self.conntrack, self.neighbors.timers,
                                        self._extractor, self.overlay.vtep)
        if self.datapath is not None:
            self.flow_cache = NativeFlowCache(self.datapath, flow_cache_capacity, self.fdb,
                                              self.neighbors, self.conntrack, self.overlay)
        self._env = Env(fdb=self.fdb, fib=self.fib, neighbors=self.neighbors,
                        icmp_limiter=self.icmp_limiter, ports=self.ports, segments=self.segments,
                        segment_ports=self._segment_ports, accel=self.accel,
                        counters=self.counters, nat=self.nat, overlay=self.overlay)
        self.tracer = Tracer(self._env, self.port_by_name)
        self.egress = Egress(self._env, self._port_counters, self.tracer.captures)
        node_addresses = [seg.gateway_ip for seg in self.segments]
        if topology.host_port.enabled:
            node_addresses.append(topology.host_port.address.ip.packed)
        self.programming = TableProgramming(self.nat, topology.uplink, entry_filter,
                                            node_addresses)
        self.programming.program(topology.pods, topology.services, 0.0)
        self.programming.program_policies(topology.network_policies,
                                          policy_namespaces(topology, topology.pods),
                                          topology.pods, 0.0)

    # -- ports ------------------------------------------------------------------------------

    def add_port(self, spec: PortSpec) -> None:
        if spec.id in self.ports:
            raise ValueError(f"port id {spec.id} is already in use by {self.ports[spec.id].name}")
        if spec.name in self._by_name:
            raise ValueError(f"port name {spec.name!r} is already in use")
        self.ports[spec.id] = spec
        self._by_name[spec.name] = spec
        self._port_counters[spec.id] = PortCounters()
        self._key_prefix[spec.id] = spec.id.to_bytes(4, "big")
        self._index_segments()
        self._config_generation += 1
        if self.datapath is not None:
            self.datapath.port_add(spec.id, -1, spec.l2_offset)

    def remove_port(self, port_id: int) -> None:
        spec = self.ports.pop(port_id)
        del self._by_name[spec.name]
        del self._key_prefix[port_id]
        if self.datapath is not None:
            self.datapath.port_del(port_id)
            assert isinstance(self.flow_cache, NativeFlowCache)
            self.flow_cache.forget_port(port_id)
        self.tracer.forget_port(port_id)
        self.fdb.flush_port(port_id)
        self._index_segments()
        self._config_generation += 1
        # Counters of a removed port go with it: a re-added pod starts from zero.
        del self._port_counters[port_id]

    def _index_segments(self) -> None:
        if any(not 0 <= spec.segment < len(self.segments) for spec in self.ports.values()):
            raise ValueError("a port names a segment this topology does not have")
        self._segment_ports.clear()
        for pid, spec in self.ports.items():
            self._segment_ports[spec.segment] = self._segment_ports.get(spec.segment, ()) + (pid,)

    def attach_port_fd(self, port_id: int, fd: int) -> None:
        """Hand a port's file descriptor to the C datapath's poll thread, which reads it from
        now on (until ``remove_port``); only with the native accel."""
        assert self.datapath is not None, "only the native datapath reads ports itself"
        spec = self.ports[port_id]
        self.datapath.port_del(port_id)
        self.datapath.port_add(port_id, fd, spec.l2_offset, port_id in self.tracer.armed)

    def port_by_name(self, name: str) -> PortSpec:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise ValueError(f"no port named {name!r} (ports: {known})") from None

    # -- the packet path --------------------------------------------------------------------

    def _generation(self) -> int:
        # Each part only ever grows, so the sum changes whenever any of them does.
        return (self.fdb.generation + self.fib.generation + self.neighbors.generation
                + self.nat.generation + self.programming.generation + self._config_generation)

    def process_batch(self, port_id: int, frames: Sequence[bytes], now: float, *,
                      upcalled: bool = False) -> list[Transmit]:
        """Frames received on ``port_id``, through the cache and, where it declines, the
        pipeline. ``upcalled``: the C datapath's poll thread has tried the cache already."""
        out: list[Transmit] = []
        port = self.ports.get(port_id)
        if port is None:
            self.unknown_port_frames += len(frames)
            return out
        if self.datapath is not None:
            self._process_native(port, frames, now, upcalled, out)
            return out
        counters = self._port_counters[port_id]
        offset = port.l2_offset
        env = self._env
        env.now = now
        tracer = self.tracer
        armed = tracer.armed.get(port_id, 0)
        keys = self._extractor.extract(frames, offset) if not armed else [None] * len(frames)
        prefix = self._key_prefix[port_id]
        flow_cache = self.flow_cache
        assert isinstance(flow_cache, FlowCache), "the C datapath's cache takes the other loop"
        cache = flow_cache.entries
        generation = self._generation()
        aging = self.fdb.aging
        captures = tracer.captures.active
        send = self.egress.send
        for frame, key in zip(frames, keys):
            counters.rx_packets += 1
            counters.rx_bytes += len(frame) - offset
            if captures:
                tracer.captures.record(port_id, now, frame, offset, "rx")
            conn_key = None
            if key is not None:
                key = prefix + key
                entry, conn_key = fast_path.lookup(cache, key, frame, offset, generation)
                received = frame
                if entry is not None and entry.decap is not None:
                    received, entry = self._fast.through_tunnel(entry, frame, offset, cache,
                                                                generation)
                if entry is not None and now - entry.dst.last_seen < aging:
                    data = self._fast.apply(entry, received, offset, now)
                    if data is not None:
                        entry.src.last_seen = now
                        flow_cache.hits += 1  # the CACHE_HIT disposition's count
                        send(out, port, entry.out_port, data)
                        continue
                flow_cache.misses += 1
            traced = armed > 0
            armed -= traced
            pkt = self._run_pipeline(port, frame, counters, out, traced)
            # The slow path may have changed a table (a MAC moved, a neighbour answered, a NAT
            # pair appeared): later frames of this burst must compare against the new generation.
            # Only the slow path changes generations, so cache hits need not re-read it.
            generation = self._generation()
            if key is not None and self.flow_cache.capacity:
                self._memoise(pkt, key, conn_key, generation)
            if pkt.trace is not None:
                tracer.keep(port_id, pkt.trace)
        return out

    def _process_native(self, port: PortSpec, frames: Sequence[bytes], now: float,
                        upcalled: bool, out: list[Transmit]) -> None:
        """The loop of ``process_batch`` when the C datapath holds the cache: C replays what it
        can (``vs_dp_process``, counting those frames itself) and the rest goes through the
        pipeline, whose decisions are compiled into C. A capture or an armed trace takes every
        frame through the pipeline, so that it sees them all."""
        cache = self.flow_cache
        assert isinstance(cache, NativeFlowCache)
        env = self._env
        env.now = now
        port_id = port.id
        counters = self._port_counters[port_id]
        offset = port.l2_offset
        tracer = self.tracer
        armed = tracer.armed.get(port_id, 0)
        captures = tracer.captures.active
        cache.set_generation(self._generation())
        use_cache = not (upcalled or armed or captures)
        memoising = not armed and cache.capacity > 0
        replay = self.datapath.process
        prefix = self._key_prefix[port_id]
        keys = None  # the burst's flow keys, taken in one call at its first miss
        for index, frame in enumerate(frames):
            if use_cache:
                length, out_port, data = replay(port_id, frame, now)
                if length >= 0:
                    out.append(Transmit(out_port, data))
                    continue
                if length == CONSUMED:
                    continue
            counters.rx_packets += 1
            counters.rx_bytes += len(frame) - offset
            if captures:
                tracer.captures.record(port_id, now, frame, offset, "rx")
            traced = armed > 0
            armed -= traced
            pkt = self._run_pipeline(port, frame, counters, out, traced)
            generation = self._generation()
            cache.set_generation(generation)
            if memoising:
                if keys is None:
                    keys = self._extractor.extract(frames, offset)
                key = keys[index]
                if key is not None:
                    self._memoise(pkt, prefix + key, None, generation)
            if pkt.trace is not None:
                tracer.keep(port_id, pkt.trace)

    def _run_pipeline(self, port: PortSpec, frame: bytes, counters: PortCounters,
                      out: list[Transmit], traced: bool) -> Packet:
        """One received frame through the pipeline (with a trace of it when ``traced``), then
        the held fragments it released."""
        offset = port.l2_offset
        trace = self.tracer.start(port, len(frame) - offset) if traced else None
        pkt = Packet(port, frame, offset, trace)
        self._slow_path(pkt, counters, out)
        self._run_released(out)
        return pkt

    def _memoise(self, pkt: Packet, key: bytes, conn_key: bytes | None, generation: int) -> None:
        if pkt.decapsulated_from is not None:
            memoised = self._fast.memoise_decapsulated(pkt, key, generation)
        else:
            memoised = fast_path.memoise(pkt, key, conn_key, generation)
        for cache_key, cache_entry in memoised:
            self.flow_cache.install(cache_key, cache_entry)

    def _slow_path(self, pkt: Packet, counters: PortCounters, out: list[Transmit],
                   released: bool = False) -> None:
        """Run the pipeline on one packet and carry out its actions. A ``released`` packet (a
        held fragment's second run) already has its disposition, QUEUED, from its first."""
        actions = graph.run(pkt, self._env)
        port = pkt.port
        disposition = Disposition.LOCAL
        for action in actions:
            # Actions are final classes: their class tells them apart without isinstance calls.
            kind = action.__class__
            if kind is Forward:
                if disposition is Disposition.LOCAL:
                    disposition = Disposition.FORWARDED
                self.egress.forward(out, port, cast(Forward, action), pkt.data)
            elif kind is Reply:
                reply = cast(Reply, action)
                self.egress.send_generated(out, reply.port, reply.frame)
            elif kind is Hold:
                disposition = Disposition.QUEUED
            elif kind is Drop:
                disposition = Disposition.DROPPED
                counters.rx_drops[cast(Drop, action).reason] += 1
        if not released:
            self.dispositions[disposition] += 1
        if pkt.trace is not None:
            pkt.trace.actions.extend(self.tracer.describe_actions(actions))

    def _run_released(self, out: list[Transmit]) -> None:
        """Later fragments held until their first fragment passed (the fragment table's output
        after a packet): their turn, in arrival order, as if just received on their port."""
        fragments = self.nat.fragments
        released = fragments.take_released()
        while released:
            for port_id, frame in released:
                port = self.ports.get(port_id)
                if port is not None:
                    self._slow_path(Packet(port, frame, port.l2_offset, None),
                                    self._port_counters[port_id], out, released=True)
            released = fragments.take_released()

    # -- timers -----------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Transmit]:
        self.fdb.expire(now)
        self.conntrack.expire(now)
        expired = self.nat.fragments.expire(now)
        if expired:
            self._env.count(ip4_conntrack.Counter.FRAGMENT_HOLD_EXPIRED, expired)
        self.services.expire(now)
        # The sweep asks for no deadline of its own: the runtime's timer runs at least every
        # second, and a sweep a second late costs nothing.
        self.flow_cache.expire(now)
        env = self._env
        env.now = now
        out: list[Transmit] = []
        probes, failed = self.neighbors.handle_timer(now)
        for entry in probes:
            self.counters.add(ip4_neighbor.Counter.ARP_REQUESTS)
            for reply in routed_frames.broadcast_arp_request(env, self.segments[entry.segment],
                                                             entry.ip):
                self.egress.send_generated(out, reply.port, reply.frame)
        for _entry, held in failed:
            for item in held:
                self.counters.add(ip4_neighbor.Counter.RESOLUTION_FAILED)
                if item.in_port.id not in self.ports:
                    continue
                frame = ip4_icmp_error.build_error(
                    env, in_port=item.in_port, eth_src=item.eth_src, original=item.quote,
                    icmp_type=h.IcmpType.DEST_UNREACHABLE, code=1, rest=bytes(4))
                if frame is not None:
                    self.egress.send_generated(out, item.in_port.id, frame)
        return out

    def next_deadline(self) -> float:
        deadlines = [d for d in (self.fdb.next_expiry(), self.neighbors.next_deadline(),
                                 self.conntrack.next_deadline(), self.services.next_deadline(),
                                 self.nat.fragments.next_deadline())
                     if d is not None]
        return min(deadlines, default=math.inf)

    def note_tx_drop(self, port_id: int, reason: str) -> None:
        counters = self._port_counters.get(port_id)
        if counters is None:
            self.unknown_port_frames += 1
            return
        # The frame was counted as sent when the core emitted it; the runtime could not write it.
        counters.tx_packets -= 1
        counters.tx_drops[reason] += 1

    # -- observability ----------------------------------------------------------------------

    def _port_snapshot(self, port_id: int) -> dict:
        """A port's counters: the pipeline's, plus the C datapath's for the frames it handled."""
        snapshot = self._port_counters[port_id].snapshot()
        # Frames lost on their way from the C datapath to the pipeline (none without it), kept
        # apart from rx_drops, which are the pipeline's own drops by reason.
        snapshot["upcall_lost"] = 0
        if self.datapath is None:
            return snapshot
        native = self.datapath.port_counters(port_id)
        for name in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            snapshot[name] += native[name]
        tx_drops = snapshot["tx_drops"]
        for reason, name in _NATIVE_TX_DROPS:
            if native[name]:
                tx_drops[reason] = tx_drops.get(reason, 0) + native[name]
        snapshot["tx_drops"] = dict(sorted(tx_drops.items()))
        snapshot["upcall_lost"] = native["upcall_lost"]
        return snapshot

    def sync_datapath(self) -> None:
        """Tell the C datapath what changed outside a batch (a timer, a command): the tables'
        generation, and which ports a trace or a capture wants every frame of. The runtime calls
        this after anything that may have changed the tables while the poll thread runs."""
        cache = self.flow_cache
        if not isinstance(cache, NativeFlowCache):
            return
        cache.set_generation(self._generation())
        cache.set_upcall_all(bool(self.tracer.captures.active), set(self.tracer.armed))

    def _datapath_statistics(self) -> dict:
        """The C datapath's own counters, when it runs: what it handed to the pipeline and what
        it lost (a full upcall queue drops frames: that must show)."""
        if self.datapath is None:
            return {}
        s = self.datapath.stats()
        return {"datapath": {key: s[key] for key in ("upcalls", "upcall_lost", "upcall_queued",
                                                     "wakeups", "read_errors")}}

    def statistics(self) -> dict:
        cache = self.flow_cache.statistics()
        return {
            "ports": {spec.name: {"id": pid, **self._port_snapshot(pid)}
                      for pid, spec in self.ports.items()},
            "stages": self.counters.snapshot(),
            "dispositions": {counter_name(d): (self.flow_cache.hits if d is Disposition.CACHE_HIT
                                               else self.dispositions.get(d, 0))
                             for d in Disposition},
            "flow_cache": {"entries": cache.entries, "capacity": cache.capacity, "hits": cache.hits,
                           "misses": cache.misses, "installs": cache.installs,
                           "flushes": cache.flushes, "evictions": cache.evictions,
                           "swept": cache.swept, "generation": self._generation()},
            "fdb": {"entries": len(self.fdb), "generation": self.fdb.generation},
            "fib": {"routes": len(self.fib), "generation": self.fib.generation},
            "neighbors": {"entries": len(self.neighbors), "generation": self.neighbors.generation,
                          "queue_overflow_drops": self.neighbors.overflow_drops},
            "icmp_rate_limited": self.icmp_limiter.limited,
            "fragments_held": self.nat.fragments.statistics(),
            "conntrack": self.conntrack.statistics(),
            "services": {"programmed": len(self.services), "generation": self.services.generation,
                         "affinity_entries": self.services.affinity_count()},
            "overlay": {"nodes": len(self.overlay), "refused": dict(self.overlay.refused)},
            "policies": self.nat.policies.statistics(),
            "unknown_port_frames": self.unknown_port_frames,
            **self._datapath_statistics(),
            "descriptions": {"stages": self.counters.descriptions(),
                             "dispositions": {counter_name(d): d.value for d in Disposition}},
        }

    # -- services and connection tracking ---------------------------------------------------------
