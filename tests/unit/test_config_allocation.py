"""The topology loader's allocation: pod IPs in file order, and what stays keeping its addresses on a reload."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from vswitch.config import (
    allocation_order,
    parse_fragment,
    parse_topology,
)

from .config_support import (
    NODE,
    PORT,
    RUNNING,
    UPLINK,
    only_error,
    pod_ips,
    pods_toml,
    service,
)

# -- allocation -----------------------------------------------------------------------------


def test_allocation_is_in_file_order_from_network_plus_ten() -> None:
    text = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    assert pod_ips(text) == {"a": "10.244.1.10", "b": "10.244.1.11", "c": "10.244.1.12"}


def test_allocation_skips_explicit_addresses_even_of_later_pods() -> None:
    text = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"\nip = "10.244.1.11"', 'name = "d"')
    assert pod_ips(text) == {"a": "10.244.1.10", "b": "10.244.1.12", "c": "10.244.1.11", "d": "10.244.1.13"}


def test_allocation_skips_gateway_and_host_port() -> None:
    text = (
        NODE.replace('"10.244.1.0/24"', '"10.244.1.0/24"\ngateway = "10.244.1.10"')
        + '[host_port]\naddress = "10.244.1.11"\n'
        + pods_toml('name = "a"', 'name = "b"')
    )
    assert pod_ips(text) == {"a": "10.244.1.12", "b": "10.244.1.13"}


def test_allocation_reserves_the_host_port_address_while_it_is_disabled() -> None:
    text = NODE + '[host_port]\nenabled = false\naddress = "10.244.1.10"\n' + pods_toml('name = "a"')
    assert pod_ips(text) == {"a": "10.244.1.11"}


def test_allocation_wraps_around_to_the_low_addresses() -> None:
    # A /28 has usable .1-.14; gateway .1 and host port .14 leave .10-.13, then .2-.9.
    node = NODE.replace("10.244.1.0/24", "10.244.1.0/28")
    text = node + pods_toml(*(f'name = "p{i}"' for i in range(6)))
    assert list(pod_ips(text).values()) == [
        "10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.1.2", "10.244.1.3",
    ]


def test_allocation_in_a_network_smaller_than_the_offset_starts_low() -> None:
    assert [str(a) for a in allocation_order(IPv4Network("10.0.0.0/29"))] == [
        f"10.0.0.{i}" for i in range(1, 7)
    ]


def test_allocation_order_covers_every_usable_address_once() -> None:
    order = list(allocation_order(IPv4Network("10.9.0.0/26")))
    assert order[0] == IPv4Address("10.9.0.10")
    assert sorted(order) == list(IPv4Network("10.9.0.0/26").hosts())


def test_exhausted_pool_is_an_error_at_that_pod() -> None:
    # A /29 has usable .1-.6; gateway .1, host port .6 and an explicit .3 leave .2, .4 and .5.
    node = NODE.replace("10.244.1.0/24", "10.244.1.0/29")
    text = node + pods_toml('name = "a"', 'name = "b"\nip = "10.244.1.3"', 'name = "c"', 'name = "d"', 'name = "e"')
    path, reason = only_error(text)
    assert path == "pods[4]"
    assert "no free address" in reason and "10.244.1.0/29" in reason


def test_allocation_is_deterministic() -> None:
    text = NODE + pods_toml(*(f'name = "p{i}"' for i in range(20)))
    assert parse_topology(text) == parse_topology(text)


# -- reloading: what stays keeps its addresses -------------------------------------------------


def reloaded(before: str, after: str) -> tuple:
    """``after`` parsed alone (as at start-up) and with ``before`` as the running topology."""
    return parse_topology(after), parse_topology(after, previous=parse_topology(before))


def ips(topology) -> dict[str, str]:
    return {pod.name: str(pod.ip) for pod in topology.pods}


def test_removing_the_first_pod_keeps_the_others_addresses_only_with_previous() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    fresh, kept = reloaded(before, NODE + pods_toml('name = "b"', 'name = "c"'))
    assert ips(parse_topology(before)) == {"a": "10.244.1.10", "b": "10.244.1.11", "c": "10.244.1.12"}
    assert ips(fresh) == {"b": "10.244.1.10", "c": "10.244.1.11"}
    assert ips(kept) == {"b": "10.244.1.11", "c": "10.244.1.12"}
    assert kept.pods == parse_topology(before).pods[1:]  # same MACs and kernel names as well


def test_a_new_pod_listed_first_does_not_take_the_address_of_one_that_stays() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    fresh, kept = reloaded(before, NODE + pods_toml('name = "n"', 'name = "c"'))
    assert ips(fresh) == {"n": "10.244.1.10", "c": "10.244.1.11"}
    # n gets the first free address, which a gave up; c stays where it runs.
    assert ips(kept) == {"n": "10.244.1.10", "c": "10.244.1.12"}


def test_an_explicit_address_wins_over_a_kept_one_and_the_running_pod_moves() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    after = NODE + pods_toml('name = "b"', 'name = "c"', 'name = "d"\nip = "10.244.1.11"')
    _, kept = reloaded(before, after)
    assert ips(kept) == {"b": "10.244.1.10", "c": "10.244.1.12", "d": "10.244.1.11"}


def test_a_kept_address_that_became_reserved_or_changed_segment_is_reallocated() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    # The host port now sits on b's address, and c moves to another segment.
    after = (NODE + '[host_port]\naddress = "10.244.1.11"\n'
             + '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
             + pods_toml('name = "a"', 'name = "b"', 'name = "c"\nsegment = "blue"'))
    _, kept = reloaded(before, after)
    assert ips(kept) == {"a": "10.244.1.10", "b": "10.244.1.12", "c": "10.245.1.10"}


def test_reloading_the_same_file_with_previous_changes_nothing() -> None:
    text = (NODE + UPLINK + pods_toml(*(f'name = "p{i}"' for i in range(5)))
            + service('name = "a"', 'type = "NodePort"', PORT) + service('name = "b"', PORT))
    assert parse_topology(text, previous=parse_topology(text)) == parse_topology(text)


def node_port_service(name: str, *extra: str) -> str:
    return service(f'name = "{name}"', 'type = "NodePort"', *extra,
                   'ports = [ { name = "http", port = 80 } ]')


def addresses(topology) -> dict[str, tuple[str, int]]:
    return {s.name: (str(s.cluster_ip), s.ports[0].node_port) for s in topology.services}


def test_services_that_stay_keep_their_cluster_ips_and_node_ports() -> None:
    # Cluster IPs start at .11: .10 is the cluster DNS address.
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b", "c"))
    after = NODE + UPLINK + node_port_service("b") + node_port_service("c")
    fresh, kept = reloaded(before, after)
    assert addresses(parse_topology(before)) == {
        "a": ("10.96.0.11", 30000), "b": ("10.96.0.12", 30001), "c": ("10.96.0.13", 30002)}
    assert addresses(fresh) == {"b": ("10.96.0.11", 30000), "c": ("10.96.0.12", 30001)}
    assert addresses(kept) == {"b": ("10.96.0.12", 30001), "c": ("10.96.0.13", 30002)}
    assert kept.services == parse_topology(before).services[1:]


def test_a_new_service_listed_first_does_not_take_what_a_staying_one_has() -> None:
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b"))
    after = NODE + UPLINK + node_port_service("n") + node_port_service("b")
    _, kept = reloaded(before, after)
    assert addresses(kept) == {"n": ("10.96.0.11", 30000), "b": ("10.96.0.12", 30001)}


def test_explicit_cluster_ip_and_node_port_win_and_the_running_service_moves() -> None:
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b", "c"))
    after = (NODE + UPLINK + node_port_service("b") + node_port_service("c")
             + service('name = "d"', 'type = "NodePort"', 'cluster_ip = "10.96.0.12"',
                       'ports = [ { port = 81, node_port = 30002 } ]'))
    _, kept = reloaded(before, after)
    # d takes b's cluster IP and c's node port; each of them moves only what it lost.
    assert addresses(kept) == {"b": ("10.96.0.11", 30001), "c": ("10.96.0.13", 30000),
                               "d": ("10.96.0.12", 30002)}


def test_a_node_port_follows_its_port_name_and_protocol_not_its_number() -> None:
    before = NODE + UPLINK + service(
        'name = "s"', 'type = "NodePort"',
        'ports = [ { name = "http", port = 80 }, { name = "dns", port = 53, protocol = "udp" } ]')
    after = NODE + UPLINK + service(
        'name = "s"', 'type = "NodePort"',
        'ports = [ { name = "web", port = 443 }, { name = "http", port = 8080 }, '
        '{ name = "dns", port = 53, protocol = "udp" } ]')
    fresh, kept = reloaded(before, after)
    assert [(p.name, p.node_port) for p in parse_topology(before).services[0].ports] == [
        ("http", 30000), ("dns", 30000)]
    assert [(p.name, p.node_port) for p in fresh.services[0].ports] == [
        ("web", 30000), ("http", 30001), ("dns", 30000)]
    assert [(p.name, p.node_port) for p in kept.services[0].ports] == [
        ("web", 30001), ("http", 30000), ("dns", 30000)]


def test_a_service_that_stops_being_a_node_port_gives_its_node_ports_up() -> None:
    before = NODE + UPLINK + node_port_service("a") + node_port_service("b")
    after = NODE + UPLINK + service('name = "a"', PORT) + node_port_service("n")
    _, kept = reloaded(before, after)
    assert [p.node_port for p in kept.services[0].ports] == [None]
    assert addresses(kept) == {"a": ("10.96.0.11", None), "n": ("10.96.0.12", 30000)}


def test_an_applied_pod_whose_address_another_entry_asks_for_moves() -> None:
    # The same rule as on a reload: the explicit address wins, the re-applied pod is reallocated.
    text = '[[pods]]\nname = "web-1"\n[[pods]]\nname = "x"\nip = "10.244.1.10"\n'
    web1, x = parse_fragment(text, "f.toml", RUNNING).pods
    assert RUNNING.pod("web-1").ip == IPv4Address("10.244.1.10")
    assert (web1.ip, x.ip) == (IPv4Address("10.244.1.12"), IPv4Address("10.244.1.10"))


def test_the_cluster_dns_address_is_skipped_and_refused() -> None:
    from vswitch.config.allocation import allocate_cluster_ips
    from vswitch.config.reader import Reader
    from vswitch.config.services import ServiceDraft

    def draft(index: int, cluster_ip: IPv4Address | None) -> ServiceDraft:
        return ServiceDraft(path=f"services[{index}]", name=f"s{index}", namespace="default",
                            cluster_ip=cluster_ip, headless=False, type="ClusterIP", ports=(),
                            selector=None, endpoints=(), session_affinity="None",
                            affinity_timeout=1, external_traffic_policy="Cluster",
                            internal_traffic_policy="Cluster", external_ips=(),
                            load_balancer="random")

    cidr = IPv4Network("10.96.0.0/24")
    reader = Reader()
    drafts = [draft(0, None), draft(1, IPv4Address("10.96.0.53")), draft(2, None)]
    dns_ip = IPv4Address("10.96.0.53")
    result = allocate_cluster_ips(reader, drafts, cidr, (), {}, dns_ip=dns_ip)
    assert result[0] == IPv4Address("10.96.0.10") and result[2] == IPv4Address("10.96.0.11")
    assert reader.errors == [("services[1].cluster_ip",
                              "10.96.0.53 is cluster.dns_ip, the address of the cluster DNS "
                              "service; choose another one or leave cluster_ip out")]
    # Without DNS the tenth address is an ordinary cluster IP; with it at the tenth, it is skipped.
    assert allocate_cluster_ips(Reader(), drafts[:1], cidr, (), {}, dns_ip=None) == [
        IPv4Address("10.96.0.10")]
    assert allocate_cluster_ips(Reader(), drafts[:1], cidr, (), {},
                                dns_ip=IPv4Address("10.96.0.10")) == [IPv4Address("10.96.0.11")]
