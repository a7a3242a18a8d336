"""The per-connection fast path decides what the pipeline decides, for translated connections.

Two switches with the services topology get the same random traffic, one with the flow cache and
one without; every burst must produce the same frames on the same ports, and the connection tables
and FDBs must end equal. The traffic is connections through a ClusterIP (TCP handshakes, data,
FIN, RST), UDP to a service, masqueraded egress and its replies, and pings, with checksums handed
over complete or partial. Consecutive frames from one port go out as one burst, so new connections
start next to established ones. Clients are pod c and host .77 behind a trunk without port
security; the trunk also speaks for the pods now and then, so a backend's MAC moves there in the
middle of a burst. Between bursts the services are re-programmed: pods become unready (their
connections are flushed) and ready again, and the DNS service goes away and comes back; and
network policies selecting the backends come, change and go: connections are judged after DNAT,
denied ones dropped, and those a change no longer allows cut, cached or not.
"""
from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address

from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from vswitch.accel import pure
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import conntrack_rows, fdb_rows
from vswitch.model import mac_for_ip
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC
from vswitch.wire.text import build_frame, parse_packet

from .test_flow_cache_parity import same_counters, weighted
from .test_pipeline_policy import Allow, RulePolicies
from .test_pipeline_services import (A, A_IP, B, B_IP, C, C_IP, DNS_VIP, FAR, GW, NODE, UPLINK,
                                     VIP, VNET, _switch, _topology, mac, send)

TRUNK, T_IP = 5, "10.244.1.77"
REMOTE = "198.51.100.7"
CONNECTIONS = 3  # 1 is c's, 0 and 2 the trunk host's
BACKEND_PORTS = {A_IP: A, B_IP: B}

_SEND = st.tuples(
    st.just("send"),
    st.sampled_from([0, 0, 1, 2]),  # the connection
    st.one_of(st.sampled_from(["udp-c", "udp-s"]),
              st.sampled_from(["syn", "synack", "ack", "data-c", "data-s", "fin-c", "fin-s",
                               "rst-s"]),
              st.sampled_from(["egress", "egress-reply", "ping"])),
    st.integers(1, 3),  # copies
    st.booleans(),  # hand the L4 checksum over as partial (virtio NEEDS_CSUM), as offload does
    # For frames from the trunk: whether the trunk also speaks as a backend, after the first
    # copy, so the backend's MAC moves there in the middle of the burst.
    st.sampled_from([None, A_IP, B_IP]),
)
_MOVE = st.tuples(st.just("move"), st.sampled_from([A_IP, B_IP, C_IP]))  # the trunk speaks as it
_PROGRAM = st.tuples(st.just("program"), st.sampled_from([None, "a", "b"]),  # the unready pod
                     st.booleans())  # whether the DNS service is there
_POLICY = st.tuples(st.just("policy"), st.sampled_from([None, "from-c", "tcp-only", "deny"]))
_STEP = st.tuples(
    weighted((4, _SEND), (1, _MOVE), (1, _PROGRAM), (1, _POLICY)),
    # Seconds since the previous step; 0 keeps a frame in the burst of the one before it, when
    # both come from the same port.
    st.sampled_from([0.0, 0.0, 0.0, 0.5, 3.0, 40.0]),
)


def _partial(frame: bytes) -> bytes:
    """The frame as a pod with checksum offload sends it: NEEDS_CSUM, the pseudo-header sum in
    the L4 checksum field."""
    body = bytearray(frame[10:])
    proto = body[23]
    if proto not in (6, 17):
        return frame
    at = {6: 16, 17: 6}[proto]
    total = struct.unpack_from("!H", body, 16)[0]
    pseudo = pure.pseudo_header_sum(bytes(body[26:30]), bytes(body[30:34]), proto, total - 20)
    struct.pack_into("!H", body, 34 + at, pseudo)
    vnet = h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=0, hdr_len=0,
                                       gso_size=0, csum_start=34, csum_offset=at))
    return vnet + bytes(body)


def _with_trunk(switch):
    switch.add_port(PortSpec(TRUNK, "trunk", PortKind.MEMORY, mac_for_ip(IPv4Address(T_IP)),
                             IPv4Address(T_IP), True, port_security=False))
    send(switch, TRUNK, f"arp who-has {GW} tell {T_IP}", mac(T_IP), BROADCAST_MAC)
    return switch


def _client(conn: int) -> tuple[int, str]:
    return (C, C_IP) if conn == 1 else (TRUNK, T_IP)


def _trunk_speaks_as(pod_ip: str) -> bytes:
    return VNET + build_frame(parse_packet(f"arp who-has {GW} tell {pod_ip}"), mac(pod_ip),
                              BROADCAST_MAC)


def _frames(step, backends: dict[int, str]) -> tuple[int, list[bytes]]:
    """The ingress port and frames of a "send" or "move" step; no frames for a server-side step
    of a connection that has no backend yet."""
    if step[0] == "move":
        return TRUNK, [_trunk_speaks_as(step[1])]
    _, conn, action, copies, partial, speaks_as = step
    client_port, client = _client(conn)
    cport = 40000 + conn
    backend = backends.get(conn)
    if action in ("syn", "ack", "data-c", "fin-c"):
        flags = {"syn": "S", "ack": "A", "data-c": "PA", "fin-c": "FA"}[action]
        text, port, src, dst = (f"tcp {client}:{cport} > {VIP}:80 flags {flags} len "
                                f"{20 if action == 'data-c' else 0}", client_port, client, GW)
    elif action in ("synack", "data-s", "fin-s", "rst-s", "udp-s"):
        if backend is None:
            return UPLINK, []
        if action == "udp-s":
            text = f"udp {backend}:5353 > {client}:{cport} len 8"
        else:
            flags = {"synack": "SA", "data-s": "PA", "fin-s": "FA", "rst-s": "R"}[action]
            text = f"tcp {backend}:8080 > {client}:{cport} flags {flags}"
        port, src, dst = BACKEND_PORTS[backend], backend, client
    elif action == "udp-c":
        text, port, src, dst = f"udp {client}:{cport} > {DNS_VIP}:53 len 8", client_port, client, GW
    elif action == "egress":
        text, port, src, dst = (f"udp {client}:{cport} > {REMOTE}:53 len 8", client_port, client,
                                GW)
    elif action == "egress-reply":
        text, port, src, dst = f"udp {REMOTE}:53 > {NODE}:{cport} len 8", UPLINK, FAR, NODE
    else:
        text, port, src, dst = (f"icmp {client} > {REMOTE} id {conn + 1}", client_port, client,
                                GW)
    frame = VNET + build_frame(parse_packet(text), mac(src), mac(dst))
    frames = [_partial(frame) if partial else frame] * copies
    if port == TRUNK and speaks_as is not None:
        frames.insert(1, _trunk_speaks_as(speaks_as))
    return port, frames


def _learn_backends(sent: list[tuple[int, bytes]], backends: dict[int, str]) -> None:
    """Which backend each connection's client packets reached: DNAT keeps the client's address
    and port, and the backend's address is the new destination."""
    for _, data in sent:
        frame = data[10:]
        if frame[12:14] != b"\x08\x00":
            continue
        header = h.IPV4.parse(frame[14:34])
        backend = str(IPv4Address(header.dst))
        if backend not in BACKEND_PORTS or header.protocol not in (6, 17):
            continue
        conn = struct.unpack_from("!H", frame, 14 + header.ihl * 4)[0] - 40000
        if 0 <= conn < CONNECTIONS and str(IPv4Address(header.src)) == _client(conn)[1]:
            backends[conn] = backend


def _policies(choice: str | None) -> RulePolicies | None:
    """A fresh stand-in for the compiled policies (each switch gets its own) selecting both
    backends: from pod c only, TCP only, or nothing at all allowed."""
    if choice is None:
        return None
    backends = (A_IP, B_IP)
    allows = {"from-c": [Allow(C_IP, b, p) for b in backends for p in (6, 17)],
              "tcp-only": [Allow(None, b, 6) for b in backends], "deny": []}[choice]
    return RulePolicies(backends, *allows)


def _desired_state(unready: str | None, with_dns: bool):
    topology = _topology()
    pods = tuple(dataclasses.replace(p, ready=False) if p.name == unready else p
                 for p in topology.pods)
    services = tuple(s for s in topology.services if with_dns or s.name != "dns")
    return pods, services


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=10, max_size=40))  # a connection's life takes a few steps
# Always tried: a datagram and its reply, then [datagram, the trunk as the backend, datagram].
@example(steps=[(("send", 0, "udp-c", 1, False, None), 0.0),
                (("send", 0, "udp-s", 1, False, None), 0.0),
                (("send", 0, "udp-c", 2, False, B_IP), 0.0),
                (("send", 0, "udp-c", 2, False, A_IP), 0.0)])
# And: an allowed connection established and replayed, then cut by a policy change, while the
# trunk's connection is denied.
@example(steps=[(("policy", "from-c"), 0.0),
                (("send", 1, "syn", 1, False, None), 0.0),
                (("send", 1, "synack", 1, False, None), 0.5),
                (("send", 1, "ack", 1, False, None), 0.5),
                (("send", 1, "data-c", 3, False, None), 0.5),
                (("send", 0, "syn", 1, False, None), 0.0),
                (("send", 1, "data-s", 2, True, None), 0.5),
                (("policy", "deny"), 0.0),
                (("send", 1, "data-c", 2, False, None), 0.5),
                (("policy", None), 0.0),
                (("send", 1, "syn", 1, False, None), 3.0)])
def test_fast_path_equals_slow_path_for_translated_connections(steps):
    """The C datapath's cache and its pure twin's against the pipeline alone: the same bytes on
    the same ports, and the two caches the same counters, hits included."""
    cached, twin = run_against_the_pipeline(steps)
    assert same_counters(cached, twin)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=10, max_size=40))
def test_a_cache_that_evicts_and_sweeps_still_decides_what_the_pipeline_decides(steps):
    """Caches of 3 entries, swept at every step that takes time: entries come and go all the
    time, and each cache still replays only what the pipeline would do. (Their counters may
    differ: C installs a marker and an entry where the dict may hold them already, so the two
    evict different entries.)"""
    cached, twin = run_against_the_pipeline(steps, capacity=3, sweep_every_step=True)
    for switch in (cached, twin):
        cache = switch.flow_cache.statistics()
        assert cache.entries <= 3, cache
        event(f"evicted: {cache.evictions > 0}, swept: {cache.swept > 0}")


def run_against_the_pipeline(steps, capacity=65536, sweep_every_step=False):
    """The steps through a switch whose cache is the C datapath's, one whose cache is the pure
    twin (both of ``capacity`` entries) and one without a cache, which must all send the same
    bytes to the same ports and end with the same tables. ``sweep_every_step``: the caches are
    swept at every step that takes time, as if each were ``FLOW_IDLE`` seconds long."""
    cached = _with_trunk(_switch("native", capacity=capacity))
    twin = _with_trunk(_switch("pure", capacity=capacity))
    plain = _with_trunk(_switch("pure", capacity=0))
    backends: dict[int, str] = {}
    burst: list[bytes] = []
    burst_port = None
    now = 0.0

    def send_burst():
        if burst:
            got = [(t.port, t.data) for t in cached.process_batch(burst_port, burst, now)]
            want = [(t.port, t.data) for t in plain.process_batch(burst_port, burst, now)]
            assert got == want
            assert [(t.port, t.data) for t in twin.process_batch(burst_port, burst, now)] == want
            _learn_backends(want, backends)
            burst.clear()

    for step, delay in steps:
        if delay or step[0] in ("program", "policy"):
            send_burst()
            now += delay
            if delay and sweep_every_step:
                cached.flow_cache.sweep()
                twin.flow_cache.sweep()
            if delay >= 3.0:
                assert ([(t.port, t.data) for t in cached.handle_timer(now)]
                        == [(t.port, t.data) for t in plain.handle_timer(now)]
                        == [(t.port, t.data) for t in twin.handle_timer(now)])
        if step[0] == "program":
            pods, services = _desired_state(step[1], step[2])
            assert (cached.programming.program(pods, services, now)
                    == plain.programming.program(pods, services, now)
                    == twin.programming.program(pods, services, now))
            continue
        if step[0] == "policy":
            assert (cached.programming.enforce(_policies(step[1]), now)
                    == plain.programming.enforce(_policies(step[1]), now)
                    == twin.programming.enforce(_policies(step[1]), now))
            continue
        if step[0] == "send" and step[1] not in backends:
            send_burst()  # which backend the client's frames reach decides where replies come from
        port, frames = _frames(step, backends)
        if frames and port != burst_port:
            send_burst()
            burst_port = port
        burst.extend(frames)
    send_burst()
    assert conntrack_rows(cached, now) == conntrack_rows(plain, now)
    assert conntrack_rows(twin, now) == conntrack_rows(plain, now)
    assert fdb_rows(cached, now) == fdb_rows(plain, now) == fdb_rows(twin, now)
    return cached, twin
