"""The service table: frontends, backends from selectors and explicit endpoints, named ports,
traffic policies, session affinity, random and Maglev choice, program diffs and scale."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from ipaddress import IPv4Address
from types import MappingProxyType

import pytest

from vswitch.model import Container, Pod, Service, ServicePort, mac_for_ip
from vswitch.tables.services import Backend, FrontendKind, NoBackend, ServiceTable

TCP, UDP = 6, 17
VIP = "10.96.0.10"
NODE = "192.0.2.2"
CLIENT = "10.244.1.200"


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def pod(name: str, address: str, labels: dict | None = None, ready: bool = True,
        ports: dict | None = None) -> Pod:
    containers = (Container("main", ("sleep", "inf"), ports=MappingProxyType(ports or {})),)
    return Pod(name, IPv4Address(address), mac_for_ip(IPv4Address(address)), f"vsw-t-{name}",
               f"tap-{name}", MappingProxyType(labels or {}), containers, ready)


def service(name: str = "web", cluster_ip: str | None = VIP, ports=None, selector=None,
            **kwargs) -> Service:
    if ports is None:
        ports = (ServicePort("http", "tcp", 80, 8080),)
    return Service(name=name, cluster_ip=IPv4Address(cluster_ip) if cluster_ip else None,
                   ports=tuple(ports),
                   selector=MappingProxyType(selector) if selector is not None else None,
                   **kwargs)


def web_pods(n: int = 3, **kwargs) -> list[Pod]:
    return [pod(f"web-{i}", f"10.244.1.{10 + i}", {"app": "web"}, **kwargs) for i in range(n)]


def table(seed: int = 1) -> ServiceTable:
    return ServiceTable(random.Random(seed), node_addresses=[ip(NODE)])


def backend_ips(match) -> list[str]:
    return [str(IPv4Address(b.ip)) for b in match.backends]


# -- backends ---------------------------------------------------------------------------------

def test_selector_takes_ready_pods_with_every_label():
    pods = [pod("a", "10.244.1.10", {"app": "web", "tier": "fe"}),
            pod("b", "10.244.1.11", {"app": "web"}, ready=False),
            pod("c", "10.244.1.12", {"app": "db"}),
            pod("d", "10.244.1.13", {"app": "web"}),
            pod("e", "10.244.1.14", {"tier": "fe"})]
    services = [service("web", VIP, selector={"app": "web"}),
                service("fe", "10.96.0.11", selector={"app": "web", "tier": "fe"})]
    t = table()
    t.program(services, pods)
    web = t.match(TCP, ip(VIP), 80)
    assert backend_ips(web) == ["10.244.1.10", "10.244.1.13"]
    assert [b.pod for b in web.backends] == ["a", "d"]
    assert all(b.local and b.port == 8080 for b in web.backends)
    assert backend_ips(t.match(TCP, ip("10.96.0.11"), 80)) == ["10.244.1.10"]


def test_backends_are_sorted_whatever_the_pod_order():
    pods = web_pods(5)
    a, b = table(), table()
    a.program([service(selector={"app": "web"})], pods)
    b.program([service(selector={"app": "web"})], list(reversed(pods)))
    assert a.match(TCP, ip(VIP), 80).backends == b.match(TCP, ip(VIP), 80).backends
    assert backend_ips(a.match(TCP, ip(VIP), 80)) == [f"10.244.1.{10 + i}" for i in range(5)]


def test_named_target_port_resolves_per_pod():
    pods = [pod("a", "10.244.1.10", {"app": "web"}, ports={"http": ("tcp", 8080)}),
            pod("b", "10.244.1.11", {"app": "web"}, ports={"http": ("tcp", 9090)}),
            pod("c", "10.244.1.12", {"app": "web"}, ports={"metrics": ("tcp", 9100)}),
            pod("d", "10.244.1.13", {"app": "web"}, ports={"http": ("udp", 8080)})]
    t = table()
    t.program([service(ports=[ServicePort("http", "tcp", 80, "http")],
                       selector={"app": "web"})], pods)
    match = t.match(TCP, ip(VIP), 80)
    # c lacks the name and d has it for UDP: neither is a backend of this TCP port.
    assert [(b.pod, b.port) for b in match.backends] == [("a", 8080), ("b", 9090)]


def test_named_port_of_a_later_container_is_found():
    containers = (Container("sidecar", ("true",), ports=MappingProxyType({"m": ("tcp", 9100)})),
                  Container("main", ("true",), ports=MappingProxyType({"http": ("tcp", 8080)})))
    p = dataclasses.replace(pod("a", "10.244.1.10", {"app": "web"}), containers=containers)
    t = table()
    t.program([service(ports=[ServicePort("http", "tcp", 80, "http")],
                       selector={"app": "web"})], [p])
    assert t.match(TCP, ip(VIP), 80).backends == (Backend(ip("10.244.1.10"), 8080, "a", True),)


def test_explicit_endpoints_without_selector():
    pods = [pod("a", "10.244.1.10", ports={"http": ("tcp", 8081)})]
    svc = service(endpoints=(IPv4Address("192.168.5.5"), IPv4Address("10.244.1.10"),
                             IPv4Address("192.168.5.5")))
    t = table()
    t.program([svc], pods)
    assert t.match(TCP, ip(VIP), 80).backends == (
        Backend(ip("10.244.1.10"), 8080, None, True),
        Backend(ip("192.168.5.5"), 8080, None, False))
    # A named port can only be resolved for an endpoint that is one of this node's pods.
    named = dataclasses.replace(svc, ports=(ServicePort("http", "tcp", 80, "http"),))
    t.program([named], pods)
    assert t.match(TCP, ip(VIP), 80).backends == (Backend(ip("10.244.1.10"), 8081, None, True),)


def test_headless_service_is_accepted_and_not_programmed():
    t = table()
    result = t.program([service("db", cluster_ip=None, selector={"app": "web"})], web_pods())
    assert len(t) == 0
    assert result.added == [] and result.conflicts == []
    assert t.endpoints_info() == []
    [row] = t.services_info()
    assert row["programmed"] is False and row["cluster_ip"] is None and row["endpoints"] == 0


def test_multiport_and_tcp_udp_on_the_same_port_number():
    ports = [ServicePort("dns-tcp", "tcp", 53, 5353), ServicePort("dns-udp", "udp", 53, 5354),
             ServicePort("http", "tcp", 80, 8080)]
    t = table()
    t.program([service(ports=ports, selector={"app": "web"})], web_pods(2))
    tcp53, udp53, http = (t.match(TCP, ip(VIP), 53), t.match(UDP, ip(VIP), 53),
                          t.match(TCP, ip(VIP), 80))
    assert {b.port for b in tcp53.backends} == {5353} and tcp53.port.name == "dns-tcp"
    assert {b.port for b in udp53.backends} == {5354} and udp53.port.name == "dns-udp"
    assert {b.port for b in http.backends} == {8080}
    assert t.match(UDP, ip(VIP), 80) is None
    assert t.match(TCP, ip(VIP), 443) is None
    assert t.match(TCP, ip("10.96.0.99"), 80) is None


def test_node_ports_and_external_ips_are_frontends():
    ports = [ServicePort("http", "tcp", 80, 8080, node_port=30080),
             ServicePort("dns", "udp", 53, 53, node_port=30053)]
    svc = service(ports=ports, selector={"app": "web"}, type="NodePort",
                  external_ips=(IPv4Address("203.0.113.7"),))
    t = ServiceTable(random.Random(1), node_addresses=[ip(NODE), ip("198.51.100.2")])
    t.program([svc], web_pods())
    assert t.match(TCP, ip(VIP), 80).kind is FrontendKind.CLUSTER_IP
    assert t.match(TCP, ip("203.0.113.7"), 80).kind is FrontendKind.EXTERNAL_IP
    for node in (NODE, "198.51.100.2"):
        match = t.match(TCP, ip(node), 30080)
        assert match.kind is FrontendKind.NODE_PORT and match.port.name == "http"
        assert t.match(UDP, ip(node), 30053).port.name == "dns"
    assert t.match(UDP, ip(NODE), 30080) is None
    assert t.match(TCP, ip(NODE), 80) is None
    assert len(t) == 2 * (1 + 1 + 2)
    # The same ports on a ClusterIP service do not listen on the node.
    t.program([dataclasses.replace(svc, type="ClusterIP")], web_pods())
    assert t.match(TCP, ip(NODE), 30080) is None
    assert t.match(TCP, ip("203.0.113.7"), 80) is not None


def test_node_addresses_can_change():
    svc = service(ports=[ServicePort("http", "tcp", 80, 8080, node_port=30080)],
                  selector={"app": "web"}, type="NodePort")
    t = ServiceTable(random.Random(1))
    t.program([svc], web_pods())
    assert t.match(TCP, ip(NODE), 30080) is None
    t.set_node_addresses([ip(NODE)])
    result = t.program([svc], web_pods())
    assert result.added_frontends == [(TCP, ip(NODE), 30080)]
    assert result.added == [] and result.removed == []
    assert t.match(TCP, ip(NODE), 30080).kind is FrontendKind.NODE_PORT


def test_a_frontend_taken_twice_keeps_the_first_and_reports_it():
    first = service("first", selector={"app": "web"})
    second = service("second", selector={"app": "db"})
    t = table()
    result = t.program([first, second, first], web_pods())
    assert t.match(TCP, ip(VIP), 80).service.name == "first"
    assert len(result.conflicts) == 2
    assert "already the frontend of default/first" in result.conflicts[0]
    assert "defined twice" in result.conflicts[1]


# -- traffic policy ---------------------------------------------------------------------------

def mixed_endpoints(**kwargs) -> tuple[ServiceTable, Service, list[Pod]]:
    """One local and one remote explicit endpoint, on every kind of frontend."""
    svc = service(ports=[ServicePort("http", "tcp", 80, 8080, node_port=30080)], type="NodePort",
                  endpoints=(IPv4Address("10.244.1.10"), IPv4Address("10.244.2.10")),
                  external_ips=(IPv4Address("203.0.113.7"),), **kwargs)
    pods = [pod("a", "10.244.1.10")]
    t = table()
    t.program([svc], pods)
    return t, svc, pods


def choices(t: ServiceTable, match, *, from_outside: bool, n: int = 60,
            client: str = CLIENT) -> set[str]:
    found = set()
    for i in range(n):
        backend = t.choose(match, client_ip=ip(client), flow_hash=i * 7919, now=0.0,
                           from_outside=from_outside)
        found.add(str(IPv4Address(backend.ip)) if backend else None)
    return found


BOTH = {"10.244.1.10", "10.244.2.10"}
LOCAL = {"10.244.1.10"}


def test_cluster_policies_use_every_backend():
    t, _, _ = mixed_endpoints()
    for address, port in ((VIP, 80), (NODE, 30080), ("203.0.113.7", 80)):
        match = t.match(TCP, ip(address), port)
        assert choices(t, match, from_outside=True) == BOTH
        assert choices(t, match, from_outside=False) == BOTH
        assert t.why_none(match, True) is None


def test_internal_traffic_policy_local_confines_the_cluster_ip():
    t, _, _ = mixed_endpoints(internal_traffic_policy="Local")
    assert choices(t, t.match(TCP, ip(VIP), 80), from_outside=False) == LOCAL
    # It says nothing about node ports and external IPs.
    assert choices(t, t.match(TCP, ip(NODE), 30080), from_outside=True) == BOTH


def test_external_traffic_policy_local_confines_outside_traffic_only():
    t, _, _ = mixed_endpoints(external_traffic_policy="Local")
    for address, port in ((NODE, 30080), ("203.0.113.7", 80)):
        match = t.match(TCP, ip(address), port)
        assert choices(t, match, from_outside=True) == LOCAL
        assert choices(t, match, from_outside=False) == BOTH
    assert choices(t, t.match(TCP, ip(VIP), 80), from_outside=False) == BOTH


def test_why_none_tells_refuse_from_drop():
    svc = service(ports=[ServicePort("http", "tcp", 80, 8080, node_port=30080)], type="NodePort",
                  endpoints=(IPv4Address("10.244.2.10"),), external_traffic_policy="Local",
                  internal_traffic_policy="Local")
    t = table()
    t.program([svc], [])
    cluster, node = t.match(TCP, ip(VIP), 80), t.match(TCP, ip(NODE), 30080)
    assert t.choose(cluster, client_ip=ip(CLIENT), flow_hash=1, now=0.0, from_outside=False) is None
    assert t.why_none(cluster, False) is NoBackend.NO_LOCAL_ENDPOINTS
    assert t.choose(node, client_ip=ip(CLIENT), flow_hash=1, now=0.0, from_outside=True) is None
    assert t.why_none(node, True) is NoBackend.NO_LOCAL_ENDPOINTS
    assert t.why_none(node, False) is None

    t.program([service(selector={"app": "web"})], web_pods(ready=False))
    empty = t.match(TCP, ip(VIP), 80)
    assert empty.backends == ()
    assert t.choose(empty, client_ip=ip(CLIENT), flow_hash=1, now=0.0, from_outside=False) is None
    assert t.why_none(empty, False) is NoBackend.NO_ENDPOINTS


# -- choice and affinity ----------------------------------------------------------------------

def test_random_choice_spreads_and_is_reproducible_with_a_seed():
    runs = []
    for _ in range(2):
        t = table(seed=42)
        t.program([service(selector={"app": "web"})], web_pods(3))
        match = t.match(TCP, ip(VIP), 80)
        runs.append([t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=0.0,
                              from_outside=False).pod for _ in range(300)])
    assert runs[0] == runs[1]
    counts = Counter(runs[0])
    assert set(counts) == {"web-0", "web-1", "web-2"}
    assert min(counts.values()) > 60


def affinity_service(timeout: int = 10800, **kwargs) -> Service:
    return service(selector={"app": "web"}, session_affinity="ClientIP", affinity_timeout=timeout,
                   **kwargs)


def test_client_ip_affinity_keeps_a_client_on_one_backend():
    t = table()
    t.program([affinity_service()], web_pods(5))
    match = t.match(TCP, ip(VIP), 80)
    for client in range(20):
        client_ip = ip(f"10.244.3.{client + 1}")
        answers = {t.choose(match, client_ip=client_ip, flow_hash=i, now=float(i),
                            from_outside=False) for i in range(15)}
        assert len(answers) == 1
    # Different clients still spread over the backends.
    assert len({row["backend"] for row in t.affinity_info(15.0)}) > 1
    assert len(t.affinity_info(15.0)) == 20


def test_affinity_is_shared_by_the_frontends_of_a_service_port():
    svc = affinity_service(ports=[ServicePort("http", "tcp", 80, 8080, node_port=30080)],
                           type="NodePort")
    t = table()
    t.program([svc], web_pods(5))
    first = t.choose(t.match(TCP, ip(VIP), 80), client_ip=ip(CLIENT), flow_hash=1, now=0.0,
                     from_outside=False)
    for i in range(15):
        assert t.choose(t.match(TCP, ip(NODE), 30080), client_ip=ip(CLIENT), flow_hash=i,
                        now=1.0, from_outside=True) == first


def test_affinity_times_out_after_inactivity_and_is_refreshed_by_use():
    t = table()
    t.program([affinity_service(timeout=10)], web_pods(5))
    match = t.match(TCP, ip(VIP), 80)
    pinned = t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=0.0, from_outside=False)
    assert t.next_deadline() == 10.0
    assert t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=9.0,
                    from_outside=False) == pinned
    assert t.next_deadline() == 19.0
    assert t.expire(18.9) == 0
    assert [row["expires_in"] for row in t.affinity_info(18.0)] == [1.0]
    assert t.affinity_info(19.0) == []
    assert t.expire(19.0) == 1
    assert t.next_deadline() is None and t.affinity_count() == 0


def test_an_expired_entry_is_not_used_even_before_expire_runs():
    t = table()
    t.program([affinity_service(timeout=10)], web_pods(5))
    match = t.match(TCP, ip(VIP), 80)
    previous = t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=0.0, from_outside=False)
    # Each choice comes after the previous pin expired, so each is made afresh: with 5 backends,
    # 40 fresh choices cannot all repeat the one before.
    moved = 0
    now = 0.0
    for _ in range(40):
        now += 11.0
        backend = t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=now, from_outside=False)
        moved += backend != previous
        previous = backend
        [row] = t.affinity_info(now)
        assert row["expires_in"] == 10.0 and row["backend"] == backend.name
    assert moved > 10
    assert t.next_deadline() == now + 10


def test_switching_affinity_off_spreads_again():
    t = table(seed=3)
    pods = web_pods(4)
    t.program([affinity_service()], pods)
    match = t.match(TCP, ip(VIP), 80)
    assert len({t.choose(match, client_ip=ip(CLIENT), flow_hash=i, now=0.0,
                         from_outside=False) for i in range(50)}) == 1
    generation = t.generation
    result = t.program([service(selector={"app": "web"})], pods)
    assert result.generation == generation + 1
    assert result.removed == [] and result.added == []
    assert t.affinity_info(1.0) == [] and t.next_deadline() is None
    match = t.match(TCP, ip(VIP), 80)
    spread = Counter(t.choose(match, client_ip=ip(CLIENT), flow_hash=i, now=1.0,
                              from_outside=False).pod for i in range(200))
    assert set(spread) == {p.name for p in pods}
    # Switching it back on starts afresh.
    t.program([affinity_service()], pods)
    assert t.affinity_info(2.0) == []


def test_affinity_entry_is_dropped_when_its_backend_goes_away():
    t = table()
    pods = web_pods(3)
    t.program([affinity_service()], pods)
    match = t.match(TCP, ip(VIP), 80)
    pinned = t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=0.0, from_outside=False)
    survivors = [p if p.name != pinned.pod else dataclasses.replace(p, ready=False) for p in pods]
    t.program([affinity_service()], survivors)
    assert t.affinity_info(1.0) == []
    match = t.match(TCP, ip(VIP), 80)
    moved = {t.choose(match, client_ip=ip(CLIENT), flow_hash=i, now=1.0, from_outside=False)
             for i in range(15)}
    assert len(moved) == 1 and pinned not in moved
    # The pod coming back does not take the client away from its new backend.
    t.program([affinity_service()], pods)
    match = t.match(TCP, ip(VIP), 80)
    assert t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=2.0,
                    from_outside=False) in moved


def test_affinity_to_a_backend_the_policy_excludes_is_replaced():
    t, svc, _ = mixed_endpoints(session_affinity="ClientIP", external_traffic_policy="Local")
    cluster, node = t.match(TCP, ip(VIP), 80), t.match(TCP, ip(NODE), 30080)
    # Pin the client to the remote endpoint through the cluster IP (any backend allowed there).
    for i in range(200):
        client_ip = ip(f"10.244.3.{i % 250 + 1}")
        backend = t.choose(cluster, client_ip=client_ip, flow_hash=i, now=0.0, from_outside=False)
        if not backend.local:
            break
    else:
        pytest.fail("no client was ever given the remote endpoint")
    local = t.choose(node, client_ip=client_ip, flow_hash=0, now=1.0, from_outside=True)
    assert local.local
    assert t.choose(cluster, client_ip=client_ip, flow_hash=0, now=2.0,
                    from_outside=False) == local


def test_shortening_the_timeout_applies_to_existing_entries():
    t = table()
    pods = web_pods(2)
    t.program([affinity_service(timeout=1000)], pods)
    match = t.match(TCP, ip(VIP), 80)
    t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=5.0, from_outside=False)
    t.program([affinity_service(timeout=10)], pods)
    assert t.next_deadline() == 15.0
    assert t.expire(15.0) == 1


def test_a_stale_match_records_no_affinity():
    t = table()
    t.program([affinity_service()], web_pods(2))
    match = t.match(TCP, ip(VIP), 80)
    t.program([], web_pods(2))
    assert t.choose(match, client_ip=ip(CLIENT), flow_hash=0, now=0.0,
                    from_outside=False) is not None
    assert t.affinity_count() == 0 and t.next_deadline() is None


def test_the_expiry_heap_stays_bounded_under_refreshes():
    t = table()
    t.program([affinity_service(timeout=10)], web_pods(3))
    match = t.match(TCP, ip(VIP), 80)
    for i in range(5000):
        t.choose(match, client_ip=ip(f"10.244.3.{i % 5 + 1}"), flow_hash=0, now=i * 0.001,
                 from_outside=False)
    assert len(t._deadlines._heap) <= 2 * 5 + 64
    assert t.next_deadline() == pytest.approx(4.995 + 10)


def test_maglev_choice_follows_the_flow_hash_and_survives_churn():
    pods = web_pods(10)
    svc = service(selector={"app": "web"}, load_balancer="maglev")
    t = table()
    t.program([svc], pods)
    match = t.match(TCP, ip(VIP), 80)
    before = {h: t.choose(match, client_ip=ip(CLIENT), flow_hash=h, now=0.0, from_outside=False)
              for h in range(2000)}
    assert before == {h: t.choose(match, client_ip=ip("10.244.3.3"), flow_hash=h, now=0.0,
                                  from_outside=False) for h in range(2000)}
    assert len(set(before.values())) == 10
    # Another table with another seed picks the same backends: the choice ignores the rng.
    other = table(seed=99)
    other.program([svc], list(reversed(pods)))
    other_match = other.match(TCP, ip(VIP), 80)
    assert all(other.choose(other_match, client_ip=ip(CLIENT), flow_hash=h, now=0.0,
                            from_outside=False) == b for h, b in before.items())
    # One pod going unready moves (nearly) only the flows that were on it.
    gone = pods[4]
    t.program([svc], [dataclasses.replace(p, ready=False) if p is gone else p for p in pods])
    match = t.match(TCP, ip(VIP), 80)
    after = {h: t.choose(match, client_ip=ip(CLIENT), flow_hash=h, now=0.0, from_outside=False)
             for h in range(2000)}
    assert all(b.pod != gone.name for b in after.values())
    disturbed = sum(1 for h in before if before[h].pod != gone.name and after[h] != before[h])
    assert disturbed < 2000 * 2 / 10


# -- program diffs and generation -------------------------------------------------------------

def diff(result) -> tuple[set, set]:
    return ({(k, p.name, b.pod, b.port) for k, p, b in result.removed},
            {(k, p.name, b.pod, b.port) for k, p, b in result.added})


def test_program_reports_added_and_removed_backends():
    t = table()
    svc = service(selector={"app": "web"})
    pods = web_pods(3)
    result = t.program([svc], pods)
    assert diff(result) == (set(), {("default/web", "http", f"web-{i}", 8080) for i in range(3)})
    assert result.added_frontends == [(TCP, ip(VIP), 80)]
    assert result.generation == t.generation == 1

    unready = [dataclasses.replace(pods[1], ready=False) if p is pods[1] else p for p in pods]
    result = t.program([svc], unready)
    assert diff(result) == ({("default/web", "http", "web-1", 8080)}, set())
    assert result.generation == 2 and result.removed_frontends == []

    result = t.program([svc], pods)
    assert diff(result) == (set(), {("default/web", "http", "web-1", 8080)})

    result = t.program([svc], [pods[0], pods[2]])  # web-1 deleted
    assert diff(result) == ({("default/web", "http", "web-1", 8080)}, set())

    retargeted = dataclasses.replace(svc, ports=(ServicePort("http", "tcp", 80, 9090),))
    result = t.program([retargeted], [pods[0], pods[2]])
    assert diff(result) == ({("default/web", "http", p, 8080) for p in ("web-0", "web-2")},
                            {("default/web", "http", p, 9090) for p in ("web-0", "web-2")})
    assert result.removed_frontends == [] and result.added_frontends == []

    result = t.program([], [pods[0], pods[2]])
    assert diff(result) == ({("default/web", "http", p, 9090) for p in ("web-0", "web-2")}, set())
    assert result.removed_frontends == [(TCP, ip(VIP), 80)]
    assert t.match(TCP, ip(VIP), 80) is None
    assert result.generation == 6


def test_moving_a_service_to_another_cluster_ip_reports_the_old_frontend():
    t = table()
    svc = service(selector={"app": "web"})
    t.program([svc], web_pods(1))
    result = t.program([dataclasses.replace(svc, cluster_ip=IPv4Address("10.96.0.20"))],
                       web_pods(1))
    assert result.removed_frontends == [(TCP, ip(VIP), 80)]
    assert result.added_frontends == [(TCP, ip("10.96.0.20"), 80)]
    assert result.removed == [] and result.added == []
    assert t.match(TCP, ip("10.96.0.20"), 80).service.cluster_ip == IPv4Address("10.96.0.20")


def test_generation_bumps_only_on_change():
    t = table()
    svc = service(selector={"app": "web"})
    pods = web_pods(3)
    t.program([svc], pods)
    generation = t.generation
    match = t.match(TCP, ip(VIP), 80)
    # Equal but freshly built values are no change either.
    for services, pod_list in (([svc], pods), ([service(selector={"app": "web"})], web_pods(3)),
                               ([svc], pods + [pod("x", "10.244.1.99", {"app": "db"})]),
                               ([svc], pods + [pod("y", "10.244.1.98", {"app": "web"},
                                                   ready=False)])):
        result = t.program(services, pod_list)
        assert not result.changed and result.generation == generation
        assert t.match(TCP, ip(VIP), 80) is match
    # A setting that moves no backend is still a change: cached decisions depend on it.
    for changed in (dataclasses.replace(svc, load_balancer="maglev"),
                    dataclasses.replace(svc, internal_traffic_policy="Local"),
                    dataclasses.replace(svc, affinity_timeout=5)):
        t.program([svc], pods)
        generation = t.generation
        result = t.program([changed], pods)
        assert result.changed and result.generation == generation + 1
        assert not (result.added or result.removed or result.added_frontends
                    or result.removed_frontends)
        assert t.match(TCP, ip(VIP), 80).service == changed
    # A headless service coming and going touches no frontend but is visible in services_info.
    generation = t.generation
    assert t.program([svc, service("h", cluster_ip=None)], pods).generation == generation + 1


# -- introspection ----------------------------------------------------------------------------

def test_info_rows():
    svc = service(ports=[ServicePort("http", "tcp", 80, 8080, node_port=30080),
                         ServicePort("dns", "udp", 53, 5353)],
                  selector={"app": "web"}, type="NodePort", session_affinity="ClientIP",
                  affinity_timeout=60, external_ips=(IPv4Address("203.0.113.7"),),
                  external_traffic_policy="Local", load_balancer="maglev")
    t = table()
    t.program([svc], web_pods(2))
    [row] = t.services_info()
    assert row == {
        "name": "web", "namespace": "default", "type": "NodePort", "cluster_ip": VIP,
        "programmed": True,
        "ports": [{"name": "http", "protocol": "tcp", "port": 80, "target_port": 8080,
                   "node_port": 30080, "endpoints": 2},
                  {"name": "dns", "protocol": "udp", "port": 53, "target_port": 5353,
                   "node_port": None, "endpoints": 2}],
        "external_ips": ["203.0.113.7"],
        "affinity": {"mode": "ClientIP", "timeout": 60},
        "policies": {"internal": "Cluster", "external": "Local"},
        "load_balancer": "maglev", "endpoints": 2}
    assert t.endpoints_info()[0] == {"service": "default/web", "port": "http", "protocol": "tcp",
                                     "service_port": 80, "backend": "10.244.1.10:8080",
                                     "pod": "web-0", "local": True}
    assert len(t.endpoints_info()) == 4
    t.choose(t.match(UDP, ip(VIP), 53), client_ip=ip(CLIENT), flow_hash=5, now=0.0,
             from_outside=False)
    [entry] = t.affinity_info(10.0)
    assert entry["service"] == "default/web" and entry["protocol"] == "udp"
    assert entry["client"] == CLIENT and entry["expires_in"] == 50.0
    assert entry["backend"].endswith(":5353")


# -- scale ------------------------------------------------------------------------------------

def many_services(n: int) -> tuple[list[Service], list[Pod]]:
    services = [service(f"svc-{i}", str(IPv4Address("10.96.0.0") + i + 1),
                        ports=[ServicePort("http", "tcp", 80, 8080)],
                        selector={"app": f"app-{i % 500}"}) for i in range(n)]
    pods = [pod(f"p-{i}", str(IPv4Address("10.244.0.0") + i + 2), {"app": f"app-{i % 500}"})
            for i in range(1000)]
    return services, pods


def test_ten_thousand_services_program_and_one_pod_changes_only_its_own():
    """Programming 10,000 services, then one pod going unready, changes exactly what it must.
    How long it takes is bench/first_packet.py's to say (its "program s" column), not a test's."""
    services, pods = many_services(10_000)
    t = table()
    result = t.program(services, pods)
    assert len(t) == 10_000 and len(result.added) == 20_000
    churned = list(pods)
    churned[7] = dataclasses.replace(churned[7], ready=False)
    result = t.program(services, churned)
    assert len(result.removed) == 20 and not result.added  # app-7 backs 20 services


def test_match_cost_does_not_grow_with_the_number_of_services():
    """A match is one lookup in the frontend index, with 10 services as with 10,000 (counted,
    not timed: timings belong to bench/first_packet.py)."""

    class CountingIndex(dict):
        lookups = 0

        def get(self, key, default=None):
            CountingIndex.lookups += 1
            return super().get(key, default)

    for n in (10, 10_000):
        services, pods = many_services(n)
        t = table()
        t.program(services, pods)
        t._frontends = CountingIndex(t._frontends)
        keys = [(TCP, s.cluster_ip.packed, 80) for s in services][:1000]
        CountingIndex.lookups = 0
        assert all(t.match(*key) is not None for key in keys)
        assert t.match(TCP, bytes(4), 80) is None
        assert CountingIndex.lookups == len(keys) + 1, n


@pytest.mark.parametrize("load_balancer", ["random", "maglev"])
def test_an_uncommitted_choice_is_the_real_one_and_changes_nothing(load_balancer):
    """A dry-run trace asks ``choose`` without committing: it must answer what the next real
    choice will be, and leave the generator, affinity and Maglev tables as they were."""
    t = table()
    t.program([affinity_service(load_balancer=load_balancer)], web_pods(5))
    match = t.match(TCP, ip(VIP), 80)
    for flow_hash in range(20):
        client = ip(f"10.244.3.{flow_hash + 1}")
        preview = t.choose(match, client_ip=client, flow_hash=flow_hash, now=1.0,
                           from_outside=False, commit=False)
        assert t.affinity_count() == flow_hash and not t._maglev
        assert t.choose(match, client_ip=client, flow_hash=flow_hash, now=1.0,
                        from_outside=False) == preview
        t._maglev.clear()
    pinned = t.pinned(match, ip("10.244.3.1"), 2.0, False)
    assert t.choose(match, client_ip=ip("10.244.3.1"), flow_hash=99, now=2.0, from_outside=False,
                    commit=False) == pinned is not None
    assert t.next_deadline() == pytest.approx(1.0 + 10800)  # not refreshed by the preview
