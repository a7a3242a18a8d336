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
  (tables untouched, counters not counted), or the next N real packets of a port.
"""
from __future__ import annotations

import math
import random
from ipaddress import IPv4Address, IPv4Network
from collections import Counter as _Tally
from types import ModuleType
from typing import Sequence

from vswitch import accel as _accel
from vswitch.core.actions import Transmit
from vswitch.core.counters import Disposition, PortCounters, StageCounters, counter_name
from vswitch.core import fast_path
from vswitch.core.capture import Captures
from vswitch.core.flow_cache import FlowCache
from vswitch.core.ports import PortSpec
from vswitch.core.programming import TableProgramming
from vswitch.core.trace import Trace
from vswitch.core.verdict import Drop, Forward, Hold, Reply
from vswitch.model import DEFAULT_CONNTRACK_MAX, Topology, mac_for_ip
from vswitch.pipeline import graph, ip4_conntrack, ip4_icmp_error, ip4_neighbor, routed_frames
from vswitch.pipeline.context import Env, NatContext, Packet, SegmentInfo
from vswitch.tables.conntrack import ConntrackTable
from vswitch.tables.fdb import Fdb
from vswitch.tables.fib import Fib, Route, RouteKind
from vswitch.tables.icmp_ratelimit import IcmpRateLimiter
from vswitch.tables.neighbors import NeighborTable
from vswitch.tables.services import ServiceTable
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, ip_text, mac_bytes, mac_text
from vswitch.wire.text import build_frame, parse_packet

_PENDING_TRACE_LIMIT = 1000


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
            port_salt=random.Random(f"{rng_seed}/conntrack").getrandbits(64))
        node_address = uplink.address.ip.packed if uplink is not None else None
        self.services = ServiceTable(random.Random(rng_seed),
                                     [node_address] if node_address else [])
        self.nat = NatContext(
            self.conntrack, self.services,
            cluster_cidr=cluster.cidr if cluster else topology.node.pod_cidr,
            hairpin_address=cluster.hairpin_address.packed if cluster else None,
            uplink_segment=topology.uplink_segment_index(), node_address=node_address)
        self.neighbors = NeighborTable(accel=self.accel)
        self.icmp_limiter = IcmpRateLimiter()
        self.flow_cache = FlowCache(flow_cache_capacity)
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
        self._armed: dict[int, int] = {}  # port id -> packets still to trace
        self.captures = Captures()
        self._traces: dict[int, list[dict]] = {}
        self._fast = fast_path.FastPath(self.accel, self.conntrack, self.neighbors.timers)
        self._env = Env(fdb=self.fdb, fib=self.fib, neighbors=self.neighbors,
                        icmp_limiter=self.icmp_limiter, ports=self.ports, segments=self.segments,
                        segment_ports=self._segment_ports, accel=self.accel,
                        counters=self.counters, nat=self.nat)
        self.programming = TableProgramming(self.nat, topology.uplink, self._conntrack_filter)
        self.programming.program(topology.pods, topology.services, 0.0)

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

    def remove_port(self, port_id: int) -> None:
        spec = self.ports.pop(port_id)
        del self._by_name[spec.name]
        del self._key_prefix[port_id]
        self._armed.pop(port_id, None)
        self.captures.disarm(port_id)
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

    def process_batch(self, port_id: int, frames: Sequence[bytes], now: float) -> list[Transmit]:
        out: list[Transmit] = []
        port = self.ports.get(port_id)
        if port is None:
            self.unknown_port_frames += len(frames)
            return out
        counters = self._port_counters[port_id]
        offset = port.l2_offset
        env = self._env
        env.now = now
        armed = self._armed.get(port_id, 0)
        keys = self._extractor.extract(frames, offset) if not armed else [None] * len(frames)
        prefix = self._key_prefix[port_id]
        cache = self.flow_cache.entries
        generation = self._generation()
        aging = self.fdb.aging
        captures = self.captures.active
        for frame, key in zip(frames, keys):
            counters.rx_packets += 1
            counters.rx_bytes += len(frame) - offset
            if captures:
                self.captures.record(port_id, now, frame, offset, "rx")
            conn_key = None
            if key is not None:
                key = prefix + key
                entry = cache.get(key)
                if entry is not None and entry.generation == generation and entry.per_connection:
                    conn_key = fast_path.connection_key(key, frame, offset)
                    entry = cache.get(conn_key) if conn_key is not None else None
                if (entry is not None and entry.generation == generation
                        and not entry.per_connection and now - entry.dst.last_seen < aging):
                    data = self._fast.apply(entry, frame, offset, now)
                    if data is not None:
                        entry.src.last_seen = now
                        self.flow_cache.hits += 1
                        self.dispositions[Disposition.CACHE_HIT] += 1
                        self._send(out, port, entry.out_port, data)
                        continue
                self.flow_cache.misses += 1
            trace = None
            if armed:
                trace = Trace(port=port.name, summary=f"live packet, {len(frame) - offset} bytes")
                armed -= 1
                self._armed[port_id] = armed
            pkt = Packet(port, frame, offset, trace)
            self._slow_path(pkt, counters, out)
            self._run_released(out)
            # The slow path may have changed a table (a MAC moved, a neighbour answered, a NAT
            # pair appeared): later frames of this burst must compare against the new generation.
            # Only the slow path changes generations, so cache hits need not re-read it.
            generation = self._generation()
            if key is not None and self.flow_cache.capacity:
                for cache_key, cache_entry in fast_path.memoise(pkt, key, conn_key, generation):
                    self.flow_cache.install(cache_key, cache_entry)
            if trace is not None:
                self._keep_trace(port_id, trace)
        if port_id in self._armed and not self._armed[port_id]:
            del self._armed[port_id]
        return out

    def _slow_path(self, pkt: Packet, counters: PortCounters, out: list[Transmit],
                   released: bool = False) -> None:
        """Run the pipeline on one packet and carry out its actions. A ``released`` packet (a
        held fragment's second run) already has its disposition, QUEUED, from its first."""
        actions = graph.run(pkt, self._env)
        port = pkt.port
        disposition = Disposition.LOCAL
        for action in actions:
            if isinstance(action, Forward):
                if disposition is Disposition.LOCAL:
                    disposition = Disposition.FORWARDED
                self._forward(out, port, action, pkt.data)
            elif isinstance(action, Reply):
                self._send_generated(out, action.port, action.frame)
            elif isinstance(action, Hold):
                disposition = Disposition.QUEUED
            elif isinstance(action, Drop):
                disposition = Disposition.DROPPED
                counters.rx_drops[action.reason] += 1
        if not released:
            self.dispositions[disposition] += 1
        if pkt.trace is not None:
            pkt.trace.actions.extend(self._describe_actions(actions))

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

    def _forward(self, out: list[Transmit], in_port: PortSpec, action: Forward,
                 received: bytes) -> None:
        data = received if action.data is None else action.data
        framing = in_port if action.framing is None else action.framing
        for target in action.ports:
            self._send(out, framing, target, data)

    def _send(self, out: list[Transmit], in_port: PortSpec, target: int, data: bytes) -> None:
        """Forward a received buffer, converting the virtio-net framing only if the ports differ."""
        spec = self.ports.get(target)
        if spec is None:
            return
        if spec.vnet_hdr != in_port.vnet_hdr:
            converted = self._convert_framing(data, in_port, spec)
            if converted is None:
                self._port_counters[target].tx_drops["offload-unsupported"] += 1
                return
            data = converted
        counters = self._port_counters[target]
        counters.tx_packets += 1
        counters.tx_bytes += len(data) - spec.l2_offset
        if self.captures.active:
            self.captures.record(target, self._env.now, data, spec.l2_offset, "tx")
        out.append(Transmit(target, data))

    def _send_generated(self, out: list[Transmit], target: int, frame: bytes) -> None:
        spec = self.ports.get(target)
        if spec is None:
            return
        data = h.ZERO_VNET_HDR + frame if spec.vnet_hdr else frame
        counters = self._port_counters[target]
        counters.tx_packets += 1
        counters.tx_bytes += len(frame)
        if self.captures.active:
            self.captures.record(target, self._env.now, data, spec.l2_offset, "tx")
        out.append(Transmit(target, data))

    @staticmethod
    def _convert_framing(data: bytes, src: PortSpec, dst: PortSpec) -> bytes | None:
        if dst.vnet_hdr:
            return h.ZERO_VNET_HDR + data
        vnet = h.VIRTIO_NET_HDR.parse(data[: src.l2_offset])
        if vnet.gso_type != h.VNET_GSO_NONE or vnet.flags & h.VNET_F_NEEDS_CSUM:
            # Segmenting or completing checksums in software is not implemented: a port without
            # offloads cannot take this frame.
            return None
        return data[src.l2_offset:]

    # -- timers -----------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Transmit]:
        self.fdb.expire(now)
        self.conntrack.expire(now)
        expired = self.nat.fragments.expire(now)
        if expired:
            self._env.count(ip4_conntrack.Counter.FRAGMENT_HOLD_EXPIRED, expired)
        self.services.expire(now)
        env = self._env
        env.now = now
        out: list[Transmit] = []
        probes, failed = self.neighbors.handle_timer(now)
        for entry in probes:
            self.counters.add(ip4_neighbor.Counter.ARP_REQUESTS)
            for reply in routed_frames.broadcast_arp_request(env, self.segments[entry.segment],
                                                             entry.ip):
                self._send_generated(out, reply.port, reply.frame)
        for entry, held in failed:
            for item in held:
                self.counters.add(ip4_neighbor.Counter.RESOLUTION_FAILED)
                if item.in_port.id not in self.ports:
                    continue
                frame = ip4_icmp_error.build_error(
                    env, in_port=item.in_port, eth_src=item.eth_src, original=item.quote,
                    icmp_type=h.IcmpType.DEST_UNREACHABLE, code=1, rest=bytes(4))
                if frame is not None:
                    self._send_generated(out, item.in_port.id, frame)
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

    # -- traces -----------------------------------------------------------------------------

    def trace(self, port_name: str, packet: str, now: float) -> dict:
        """A dry run of the pipeline on a packet described in text, as if ``port_name`` sent it."""
        port = self.port_by_name(port_name)
        spec = parse_packet(packet)
        frame = build_frame(spec, port.mac_bytes, self._guess_dst_mac(port, spec.dst), self.accel)
        data = h.ZERO_VNET_HDR + frame if port.vnet_hdr else frame
        trace = Trace(port=port.name, summary=packet, dry_run=True)
        self._env.now = now
        env = self._env.dry_run_copy(StageCounters(graph.STAGE_COUNTERS))
        pkt = Packet(port, data, port.l2_offset, trace)
        if spec.dst_mac is None and spec.kind != "arp":
            trace.note("trace", f"destination MAC {mac_text(frame[:6])} chosen for "
                                f"{spec.dst} (set it with dst-mac)")
        actions = graph.run(pkt, env)
        trace.actions.extend(self._describe_actions(actions))
        return trace.as_dict()

    def _guess_dst_mac(self, port: PortSpec, addr: IPv4Address) -> bytes:
        """The MAC a real sender on the port's segment would have resolved for ``addr``."""
        segment = self.segments[port.segment]
        if addr not in segment.cidr or addr.packed == segment.gateway_ip:
            return segment.gateway_mac
        if addr == segment.cidr.broadcast_address:
            return BROADCAST_MAC
        return mac_bytes(mac_for_ip(addr))

    def _describe_actions(self, actions) -> list[str]:
        words = []
        for action in actions:
            if isinstance(action, Forward):
                words.append("output " + ", ".join(self._port_label(p) for p in action.ports))
            elif isinstance(action, Reply):
                words.append(f"reply out of {self._port_label(action.port)}")
            elif isinstance(action, Drop):
                words.append(f"drop ({action.stage}: {action.reason})")
            elif isinstance(action, Hold):
                words.append("hold until the next hop answers ARP")
        if not actions:
            words.append("consumed by the switch")
        return words

    def _port_label(self, port_id: int) -> str:
        spec = self.ports.get(port_id)
        return spec.name if spec is not None else f"#{port_id}"

    def arm_trace(self, port_name: str, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        port = self.port_by_name(port_name)
        self._armed[port.id] = count
        self._traces[port.id] = []

    def take_traces(self, port_name: str) -> list[dict]:
        port = self.port_by_name(port_name)
        taken = self._traces.get(port.id, [])
        self._traces[port.id] = []
        return taken

    def disarm_trace(self, port_name: str) -> None:
        port = self.port_by_name(port_name)
        self._armed.pop(port.id, None)
        self._traces.pop(port.id, None)

    def arm_capture(self, port_name: str, count: int, direction: str = "both",
                    snaplen: int = 65535) -> None:
        self.captures.arm(self.port_by_name(port_name).id, count, direction, snaplen)

    def take_capture(self, port_name: str) -> list[dict]:
        return self.captures.take(self.port_by_name(port_name).id)

    def disarm_capture(self, port_name: str) -> None:
        self.captures.disarm(self.port_by_name(port_name).id)

    def _keep_trace(self, port_id: int, trace: Trace) -> None:
        kept = self._traces.setdefault(port_id, [])
        if len(kept) < _PENDING_TRACE_LIMIT:
            kept.append(trace.as_dict())

    # -- observability ----------------------------------------------------------------------

    def statistics(self) -> dict:
        cache = self.flow_cache.statistics()
        return {
            "ports": {spec.name: {"id": pid, **self._port_counters[pid].snapshot()}
                      for pid, spec in self.ports.items()},
            "stages": self.counters.snapshot(),
            "dispositions": {counter_name(d): self.dispositions.get(d, 0) for d in Disposition},
            "flow_cache": {"entries": cache.entries, "capacity": cache.capacity, "hits": cache.hits,
                           "misses": cache.misses, "installs": cache.installs,
                           "flushes": cache.flushes, "generation": self._generation()},
            "fdb": {"entries": len(self.fdb), "generation": self.fdb.generation},
            "fib": {"routes": len(self.fib), "generation": self.fib.generation},
            "neighbors": {"entries": len(self.neighbors), "generation": self.neighbors.generation,
                          "queue_overflow_drops": self.neighbors.overflow_drops},
            "icmp_rate_limited": self.icmp_limiter.limited,
            "fragments_held": self.nat.fragments.statistics(),
            "conntrack": self.conntrack.statistics(),
            "services": {"programmed": len(self.services), "generation": self.services.generation,
                         "affinity_entries": self.services.affinity_count()},
            "unknown_port_frames": self.unknown_port_frames,
            "descriptions": {"stages": self.counters.descriptions(),
                             "dispositions": {counter_name(d): d.value for d in Disposition}},
        }

    def ports_info(self) -> list[dict]:
        rows = []
        for pid, spec in sorted(self.ports.items()):
            c = self._port_counters[pid]
            rows.append({
                "id": pid, "name": spec.name, "kind": spec.kind.value, "device": spec.device,
                "mac": spec.mac, "ip": str(spec.ip), "mtu": spec.mtu, "vnet_hdr": spec.vnet_hdr,
                "port_security": spec.port_security, "macs_learned": self.fdb.count_on_port(pid),
                "segment": self.segments[spec.segment].name,
                "rx_packets": c.rx_packets, "rx_bytes": c.rx_bytes,
                "tx_packets": c.tx_packets, "tx_bytes": c.tx_bytes,
                "rx_dropped": sum(c.rx_drops.values()), "tx_dropped": sum(c.tx_drops.values()),
            })
        return rows

    def fdb_info(self, now: float) -> list[dict]:
        rows = []
        for entry in sorted(self.fdb.entries(), key=lambda e: (e.segment, e.port, e.mac)):
            age = now - entry.last_seen
            rows.append({"mac": mac_text(entry.mac), "segment": self.segments[entry.segment].name,
                         "port": self._port_label(entry.port),
                         "port_id": entry.port, "age_s": round(age, 3),
                         "expires_in_s": round(self.fdb.aging - age, 3),
                         "ip": self._ip_of_mac(entry.mac)})
        return rows

    def _ip_of_mac(self, mac: bytes) -> str | None:
        for spec in self.ports.values():
            if spec.mac_bytes == mac:
                return str(spec.ip)
        return None


    # -- services and connection tracking ---------------------------------------------------------

    # The runtime's names for table programming, which lives in ``self.programming``; they go
    # once the daemon and the control socket call ``programming`` themselves.
    def program(self, pods, services, now: float) -> dict:
        return self.programming.program(pods, services, now)

    def conntrack_flush(self, filters: dict[str, str] | None = None) -> int:
        return self.programming.conntrack_flush(filters)

    def services_info(self) -> list[dict]:
        return self.services.services_info()

    def endpoints_info(self) -> list[dict]:
        return self.services.endpoints_info()

    def affinity_info(self, now: float) -> list[dict]:
        return self.services.affinity_info(now)

    def _conntrack_filter(self, filters: dict[str, str]):
        known = {"proto", "src", "dst", "sport", "dport", "service", "state", "kind"}
        unknown = set(filters) - known
        if unknown:
            raise ValueError(f"unknown conntrack filter {', '.join(sorted(unknown))}; "
                             f"use {', '.join(sorted(known))}")
        names = {1: "icmp", 6: "tcp", 17: "udp"}

        def matches(entry) -> bool:
            o = entry.original
            values = {"proto": names.get(o.proto, str(o.proto)), "src": ip_text(o.src),
                      "dst": ip_text(o.dst), "sport": str(o.sport), "dport": str(o.dport),
                      "service": str(entry.labels.get("service", "")),
                      "state": entry.tcp_state.name if o.proto == 6 else
                      ("REPLIED" if entry.replied else "UNREPLIED"),
                      "kind": str(entry.labels.get("kind", ""))}
            for key, wanted in filters.items():
                value = values[key]
                if key == "service" and "/" not in wanted:
                    value = value.split("/", 1)[-1]
                if value.lower() != str(wanted).lower():
                    return False
            return True

        return matches

    def conntrack_info(self, now: float, filters: dict[str, str] | None = None) -> list[dict]:
        matches = self._conntrack_filter(filters or {})
        # Entries past their deadline (a refused connection ends at once) wait for the timer to
        # remove them; lookups no longer find them, so neither does a listing.
        rows = [e.as_dict(now) for e in self.conntrack.entries() if e.alive(now) and matches(e)]
        return rows

    def routes_info(self) -> list[dict]:
        return [{"prefix": str(r.prefix), "kind": r.kind.value,
                 "segment": self.segments[r.segment].name,
                 "via": str(r.via) if r.via is not None else None, "origin": r.origin}
                for r in self.fib.routes()]

    def neighbors_info(self, now: float) -> list[dict]:
        rows = []
        for entry in sorted(self.neighbors.entries(), key=lambda e: (e.segment, e.ip)):
            rows.append({"segment": self.segments[entry.segment].name, "ip": ip_text(entry.ip),
                         "mac": mac_text(entry.mac) if entry.mac is not None else None,
                         "state": entry.state.value,
                         "age_s": round(now - entry.confirmed, 3), "queued": len(entry.queue)})
        return rows
