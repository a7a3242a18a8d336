"""NetworkPolicy through the real pipeline with crafted frames: switched, routed and through a
ClusterIP; allowed connections are tracked and their replies pass, denied ones are dropped
silently and counted per policy, a policy change cuts what it no longer allows, and the flow
cache never replays a denied flow.

The verdicts come from ``RulePolicies``, a stand-in with the contract of
``vswitch.policy.engine.CompiledPolicies`` whose rules are explicit tuples: what is tested here
is what the dataplane does with a verdict, not how policies are evaluated."""
from __future__ import annotations

from dataclasses import dataclass

from vswitch.core.presentation import conntrack_rows
from vswitch.policy.engine import Decision

from .test_pipeline_services import (A, A_IP, B, B_IP, C, C_IP, FAR, GW, NODE, ONLY_A_VIP,
                                     UPLINK, _switch, connect, ip, mac, packet_of, ports_of, send)

from ipaddress import IPv4Address

POLICY = "prod/web"


@dataclass(frozen=True)
class Allow:
    """Connections from ``src`` (None: anyone) to ``dst`` on ``proto``/``port`` (None: any)."""

    src: str | None
    dst: str
    proto: int = 6
    port: int | None = None

    def matches(self, src: bytes, dst: bytes, proto: int, port: int) -> bool:
        return ((self.src is None or IPv4Address(self.src).packed == src)
                and IPv4Address(self.dst).packed == dst and proto == self.proto
                and (self.port is None or self.port == port))


class RulePolicies:
    """Pods at ``selected`` are selected by POLICY for ingress; ``allows`` are its rules."""

    def __init__(self, selected: tuple[str, ...], *allows: Allow):
        self.selected = frozenset(IPv4Address(a).packed for a in selected)
        self.allows = allows
        self.checks = 0

    @property
    def empty(self) -> bool:
        return False

    def selects(self, addr: bytes) -> bool:
        return addr in self.selected

    def check(self, src: bytes, dst: bytes, protocol: int, dst_port: int) -> Decision:
        self.checks += 1
        if dst not in self.selected:
            return Decision(True, "no policy selects the pod")
        for index, rule in enumerate(self.allows):
            if rule.matches(src, dst, protocol, dst_port):
                return Decision(True, f"allowed by ingress rule {index} of policy {POLICY}",
                                (POLICY,), index, "ingress")
        return Decision(False, f"denied: ingress of the pod is selected by {POLICY}, whose rules "
                               f"do not allow it", (POLICY,), None, "ingress")


def enforce(switch, policies, now=0.0):
    return switch.programming.enforce(policies, now)


def stage(switch, name="ip4-policy"):
    return switch.statistics()["stages"][name]


def syn(switch, port, src, dst, dport=8080, sport=40000, now=0.0, flags="S", dst_mac=None):
    return send(switch, port, f"tcp {src}:{sport} > {dst}:{dport} flags {flags}", mac(src),
                dst_mac or mac(dst), now)


# -- switched --------------------------------------------------------------------------------

def test_switched_connection_allowed_is_tracked_and_its_reply_passes(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    (tx,) = syn(switch, A, A_IP, B_IP)
    assert tx.port == B
    (row,) = conntrack_rows(switch, 0.0)
    assert row["description"] == f"tcp {A_IP}:40000 > {B_IP}:8080"
    # B's reply is not judged (B's egress to A would not be "allowed" by any rule): it passes
    # as the reply of a tracked connection.
    (reply,) = syn(switch, B, B_IP, A_IP, dport=40000, sport=8080, flags="SA", now=0.1)
    assert reply.port == A
    assert stage(switch)["allowed"] == 1 and stage(switch).get("denied", 0) == 0


def test_switched_connection_denied_is_dropped_silently_and_counted_per_policy(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    assert syn(switch, C, C_IP, B_IP) == []  # no RST, no ICMP: nothing at all goes back
    assert send(switch, C, f"udp {C_IP}:5000 > {B_IP}:53 len 8", mac(C_IP), mac(B_IP)) == []
    assert syn(switch, A, A_IP, B_IP, dport=22) == []
    assert conntrack_rows(switch, 0.0) == []
    assert stage(switch)["denied"] == 3
    policies = switch.statistics()["policies"]
    assert policies["drops_by_policy"] == {POLICY: 3} and policies["drops"] == 3


def test_a_flood_to_an_unknown_mac_is_judged_before_it_leaves(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    unknown = bytes.fromhex("0a580af40163")
    assert syn(switch, C, C_IP, B_IP, dst_mac=unknown) == []
    flooded = syn(switch, A, A_IP, B_IP, dst_mac=unknown)
    assert {tx.port for tx in flooded} == {B, C}  # the segment's other ports
    assert stage(switch)["denied"] == 1 and stage(switch)["allowed"] == 1


def test_pods_no_policy_selects_pay_nothing_and_stay_cached(accel_name):
    switch = _switch(accel_name)
    policies = RulePolicies((B_IP,))
    enforce(switch, policies)
    for n in range(3):
        (tx,) = send(switch, A, f"udp {A_IP}:5000 > {C_IP}:53 len 8", mac(A_IP), mac(C_IP),
                     n * 0.1)
        assert tx.port == C
    assert policies.checks == 0 and conntrack_rows(switch, 1.0) == []
    assert switch.statistics()["dispositions"]["cache-hit"] == 2


def test_without_policies_nothing_is_judged_or_tracked(accel_name):
    switch = _switch(accel_name)
    (tx,) = syn(switch, C, C_IP, B_IP)
    assert tx.port == B and conntrack_rows(switch, 0.0) == []
    assert switch.statistics()["policies"]["active"] is False
    assert not any(stage(switch).values())


# -- routed ----------------------------------------------------------------------------------

def test_routed_connection_from_outside_is_judged_and_its_reply_passes(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((A_IP,), Allow(FAR, A_IP, 6, 8080)))
    (tx,) = syn(switch, UPLINK, FAR, A_IP, dst_mac=mac(NODE))
    assert tx.port == A
    (reply,) = syn(switch, A, A_IP, FAR, dport=40000, sport=8080, flags="SA", now=0.1,
                   dst_mac=mac(GW))
    assert reply.port == UPLINK
    assert syn(switch, UPLINK, FAR, A_IP, dport=22, dst_mac=mac(NODE)) == []
    assert stage(switch)["allowed"] == 1 and stage(switch)["denied"] == 1


def test_masqueraded_egress_of_a_selected_pod_keeps_its_translation(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((A_IP,)))  # ingress only: A's egress is unrestricted
    (tx,) = syn(switch, A, A_IP, "198.51.100.7", dport=443, dst_mac=mac(GW))
    assert tx.port == UPLINK
    _, header, _ = packet_of(tx)
    assert header.src == ip(NODE)
    (row,) = conntrack_rows(switch, 0.0)
    assert "masquerade" in str(row)


# -- through a ClusterIP ---------------------------------------------------------------------

def test_service_connection_is_judged_against_its_backend(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((A_IP,), Allow(C_IP, A_IP, 6, 8080)))
    (tx,) = connect(switch, C, C_IP, ONLY_A_VIP)  # port 80 of the service, 8080 of the pod
    assert tx.port == A
    _, header, packet = packet_of(tx)
    assert header.dst == ip(A_IP) and ports_of(packet) == (40000, 8080)
    # The backend's reply is switched back to the client and translated; it is never judged.
    (reply,) = syn(switch, A, A_IP, C_IP, dport=40000, sport=8080, flags="SA", now=0.1)
    _, header, _ = packet_of(reply)
    assert reply.port == C and header.src == ip(ONLY_A_VIP)


def test_denied_service_connection_leaves_no_translation_behind(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((A_IP,), Allow(B_IP, A_IP, 6, 8080)))
    assert connect(switch, C, C_IP, ONLY_A_VIP) == []
    assert conntrack_rows(switch, 0.0) == []
    assert stage(switch)["denied"] == 1
    assert switch.statistics()["policies"]["drops_by_policy"] == {POLICY: 1}


# -- policy changes and the cache -----------------------------------------------------------

def _established(switch, now=0.0):
    (tx,) = syn(switch, A, A_IP, B_IP, now=now)
    syn(switch, B, B_IP, A_IP, dport=40000, sport=8080, flags="SA", now=now + 0.01)
    syn(switch, A, A_IP, B_IP, flags="A", now=now + 0.02)
    return tx


def test_allowed_connection_is_replayed_by_the_cache(accel_name):
    switch = _switch(accel_name)
    policies = RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080))
    enforce(switch, policies)
    _established(switch)
    hits = switch.statistics()["dispositions"]["cache-hit"]
    for n in range(3):
        (tx,) = syn(switch, A, A_IP, B_IP, flags="A", now=0.1 + n * 0.01)
        assert tx.port == B
    assert switch.statistics()["dispositions"]["cache-hit"] == hits + 3
    assert policies.checks == 1


def test_policy_change_cuts_the_connections_it_no_longer_allows(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    _established(switch)
    syn(switch, C, C_IP, A_IP, flags="S")  # A is selected by nothing: untracked, never cut
    result = enforce(switch, RulePolicies((B_IP,), Allow(C_IP, B_IP, 6, 8080)), now=1.0)
    assert result["cut_connections"] == 1
    assert conntrack_rows(switch, 1.0) == []
    stats = switch.statistics()["policies"]
    assert stats["cuts"] == 1 and stats["cuts_by_policy"] == {POLICY: 1}
    # The cached decision is not replayed: the client's next segment is judged again and dropped.
    assert syn(switch, A, A_IP, B_IP, flags="A", now=1.1) == []
    assert syn(switch, A, A_IP, B_IP, flags="PA", now=1.2) == []


def test_policy_change_keeps_what_it_still_allows(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    _established(switch)
    result = enforce(switch, RulePolicies((B_IP,), Allow(None, B_IP, 6, 8080)), now=1.0)
    assert result["cut_connections"] == 0
    (tx,) = syn(switch, A, A_IP, B_IP, flags="A", now=1.1)
    assert tx.port == B


def test_a_new_policy_applies_to_flows_the_cache_remembered(accel_name):
    switch = _switch(accel_name)
    for n in range(2):
        (tx,) = send(switch, C, f"udp {C_IP}:5000 > {B_IP}:53 len 8", mac(C_IP), mac(B_IP),
                     n * 0.1)
        assert tx.port == B
    enforce(switch, RulePolicies((B_IP,)), now=1.0)
    assert send(switch, C, f"udp {C_IP}:5000 > {B_IP}:53 len 8", mac(C_IP), mac(B_IP), 1.1) == []


def test_removing_every_policy_lets_traffic_pass_untracked_again(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,)))
    assert syn(switch, C, C_IP, B_IP) == []
    enforce(switch, None, now=1.0)
    (tx,) = syn(switch, C, C_IP, B_IP, now=1.1)
    assert tx.port == B and conntrack_rows(switch, 1.1) == []


def test_mid_stream_segments_of_an_allowed_connection_pass_untracked(accel_name):
    """A connection that began before any policy selected its pod has no entry: its segments are
    judged as they travel, pass when allowed, and are never cached."""
    switch = _switch(accel_name)
    syn(switch, A, A_IP, B_IP, flags="S")
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)), now=1.0)
    for n in range(2):
        (tx,) = syn(switch, A, A_IP, B_IP, flags="A", now=1.1 + n)
        assert tx.port == B
    assert stage(switch)["allowed-untracked"] == 2
    assert conntrack_rows(switch, 3.0) == []


# -- trace -----------------------------------------------------------------------------------

def test_trace_names_the_policy_and_rule_or_says_none_selects(accel_name):
    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    allowed = switch.tracer.dry_run("a", f"tcp {A_IP}:40000 > {B_IP}:8080 flags S", 0.0)
    assert f"allowed by ingress rule 0 of policy {POLICY}" in allowed["text"]
    assert allowed["actions"] == ["output b"]
    denied = switch.tracer.dry_run("c", f"tcp {C_IP}:40000 > {B_IP}:8080 flags S", 0.0)
    assert f"selected by {POLICY}" in denied["text"] and denied["actions"][0].startswith("drop")
    plain = switch.tracer.dry_run("c", f"tcp {C_IP}:40000 > {A_IP}:8080 flags S", 0.0)
    assert "no policy selects the pod" in plain["text"]
    assert conntrack_rows(switch, 0.0) == [] and switch.statistics()["policies"]["drops"] == 0


# -- metrics ---------------------------------------------------------------------------------

def test_drops_and_cuts_per_policy_are_metrics(accel_name):
    from prometheus_client.parser import text_string_to_metric_families

    from vswitch.runtime.metrics import SwitchCollector, exposition

    switch = _switch(accel_name)
    enforce(switch, RulePolicies((B_IP,), Allow(A_IP, B_IP, 6, 8080)))
    syn(switch, C, C_IP, B_IP)
    _established(switch)
    enforce(switch, RulePolicies((B_IP,)), now=1.0)
    text = exposition(SwitchCollector(switch.statistics, "unit")).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("vswitch_policy_drops_total", (("node", "unit"),))] == 1
    assert samples[("vswitch_policy_cuts_by_policy_total",
                    (("node", "unit"), ("policy", POLICY)))] == 1


# -- with the compiled policies of the engine ------------------------------------------------

def test_compiled_egress_policy_judges_service_connections_after_dnat(accel_name):
    from types import MappingProxyType

    from vswitch.core.programming import policy_namespaces
    from vswitch.model import (LabelSelector, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule)

    from .test_pipeline_services import VIP, _topology

    topology = _topology()
    switch = _switch(accel_name, topology)
    web = LabelSelector(MappingProxyType({"app": "web"}))
    policy = NetworkPolicy(
        "c-to-web", pod_selector=LabelSelector(), policy_types=("Egress",),
        egress=(PolicyRule(peers=(PolicyPeer(pod_selector=web),),
                           ports=(PolicyPort("tcp", 8080),)),))
    result = switch.programming.program_policies(
        (policy,), policy_namespaces(topology, topology.pods), topology.pods, 0.0)
    assert result["policies"] == 1
    (tx,) = connect(switch, C, C_IP, VIP)  # port 80 of the service is 8080 of the backend
    assert tx.port in (A, B)
    backend = {A: A_IP, B: B_IP}[tx.port]
    (reply,) = syn(switch, tx.port, backend, C_IP, dport=40000, sport=8080, flags="SA", now=0.1)
    assert reply.port == C
    assert syn(switch, C, C_IP, "198.51.100.7", dport=443, sport=40001, dst_mac=mac(GW)) == []
    assert syn(switch, C, C_IP, A_IP, dport=22, sport=40002) == []
    assert switch.statistics()["policies"]["drops_by_policy"] == {"default/c-to-web": 2}
    # Unchanged inputs compile nothing and cut nothing.
    again = switch.programming.program_policies(
        (policy,), policy_namespaces(topology, topology.pods), topology.pods, 1.0)
    assert again["generation"] == result["generation"] and again["cut_connections"] == 0


def test_a_service_selects_backends_of_its_own_namespace_only(accel_name):
    """Policies judge service traffic against its backend: the backend must be one of the
    service's namespace, as Kubernetes' selectors are namespaced."""
    import dataclasses

    from .test_pipeline_services import VIP, _topology

    topology = _topology()
    a, b, c = topology.pods
    topology = dataclasses.replace(topology, pods=(a, dataclasses.replace(b, namespace="other"), c))
    switch = _switch(accel_name, topology)
    for sport in range(40000, 40010):
        (tx,) = connect(switch, C, C_IP, VIP, sport=sport)
        assert tx.port == A
