"""The compiled policies' verdicts against hand-written truth tables.

The model is the upstream network policy e2e suite's (test/e2e/network/netpol in
kubernetes/kubernetes): namespaces x, y and z labelled ``ns=<name>``, each with pods a, b and c
labelled ``pod=<name>``, every pod serving TCP and UDP on ports 80 and 81 with the named ports
``serve-80-tcp`` and so on. Each case is one of the suite's policies; a table reads "from the
row to the column": ``.`` connects, ``X`` is denied, ``-`` is a pod to itself (loopback, which
never reaches the switch, is not judged).
"""
from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address
from types import MappingProxyType

import pytest

from vswitch import model
from vswitch.config import parse_topology
from vswitch.policy import engine as engine_module
from vswitch.policy.engine import CompiledPolicies, Decision

TCP, UDP, ICMP = 6, 17, 1
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
GATEWAY = IPv4Address("10.244.1.1").packed
OUTSIDE = IPv4Address("192.0.2.7").packed


def address(pod: str) -> IPv4Address:
    ns, name = pod.split("/")
    return IPv4Address(f"10.244.1.{10 * (NAMESPACES.index(ns) + 1) + POD_NAMES.index(name) + 1}")


def model_toml() -> str:
    text = '[node]\nname = "n1"\npod_cidr = "10.244.1.0/24"\n'
    for ns in NAMESPACES:
        text += f'[[namespaces]]\nname = "{ns}"\nlabels = {{ ns = "{ns}" }}\n'
    ports = ", ".join(f'{{ name = "serve-{port}-{proto}", port = {port}, protocol = "{proto}" }}'
                      for port in (80, 81) for proto in ("tcp", "udp"))
    for pod in PODS:
        ns, name = pod.split("/")
        text += (f'[[pods]]\nname = "{name}"\nnamespace = "{ns}"\nip = "{address(pod)}"\n'
                 f'labels = {{ pod = "{name}" }}\n'
                 f'containers = [ {{ name = "serve", command = ["sleep", "inf"], '
                 f'ports = [ {ports} ] }} ]\n')
    return text


MODEL = model_toml()


def compiled(*policies: str, topology: model.Topology | None = None) -> CompiledPolicies:
    topology = topology or parse_topology(MODEL + "".join(policies))
    return CompiledPolicies.build(
        topology.network_policies, {ns.name: ns.labels for ns in topology.namespaces},
        topology.pods, [GATEWAY])


def probe(policies: CompiledPolicies, protocol: int, port: int) -> dict[tuple[str, str], bool]:
    return {(src, dst): policies.check(address(src).packed, address(dst).packed, protocol,
                                       port).allowed
            for src in PODS for dst in PODS if src != dst}


def table(text: str) -> dict[tuple[str, str], bool]:
    """A truth table written as a grid: a header of destinations, then one row per source."""
    header, *rows = [line.split() for line in text.strip().splitlines()]
    assert tuple(header) == PODS and [row[0] for row in rows] == list(PODS)
    return {(row[0], dst): cell == "." for row in rows for dst, cell in zip(PODS, row[1:])
            if cell != "-"}


def reachability(default: bool, *expectations: tuple[str, str, bool]
                 ) -> dict[tuple[str, str], bool]:
    """A truth table as upstream's ``Reachability`` builds it: ``default`` everywhere, then
    each (from, to, allowed) in order, where a side is "x/a", "x/*" or "*/a"."""
    cells = {(src, dst): default for src in PODS for dst in PODS if src != dst}
    for src_pattern, dst_pattern, allowed in expectations:
        for src, dst in cells:
            if re.fullmatch(src_pattern.replace("*", "."), src) and re.fullmatch(
                    dst_pattern.replace("*", "."), dst):
                cells[src, dst] = allowed
    return cells


def grid(cells: dict[tuple[str, str], bool], expected: dict[tuple[str, str], bool]) -> str:
    """The probed table, with each cell that differs from ``expected`` marked by ``!``."""
    lines = ["      " + " ".join(f"{dst:>4}" for dst in PODS)]
    for src in PODS:
        row = []
        for dst in PODS:
            if src == dst:
                row.append("   -")
                continue
            mark = "." if cells[src, dst] else "X"
            row.append(f"  {'!' if cells[src, dst] != expected[src, dst] else ' '}{mark}")
        lines.append(f"{src:>5} " + " ".join(row))
    return "\n".join(lines)


def assert_matches(policies: CompiledPolicies, protocol: int, port: int,
                   expected: dict[tuple[str, str], bool]) -> None:
    cells = probe(policies, protocol, port)
    assert cells == expected, (f"protocol {protocol} port {port}; '!' marks a wrong cell:\n"
                               + grid(cells, expected))


def assert_everywhere(policies: CompiledPolicies, expected: dict[tuple[str, str], bool]) -> None:
    for protocol in (TCP, UDP):
        for port in (80, 81):
            assert_matches(policies, protocol, port, expected)


ALL_CONNECT = reachability(True)

DENY_INGRESS_X = """
      x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a    -   X   X   .   .   .   .   .   .
x/b    X   -   X   .   .   .   .   .   .
x/c    X   X   -   .   .   .   .   .   .
y/a    X   X   X   -   .   .   .   .   .
y/b    X   X   X   .   -   .   .   .   .
y/c    X   X   X   .   .   -   .   .   .
z/a    X   X   X   .   .   .   -   .   .
z/b    X   X   X   .   .   .   .   -   .
z/c    X   X   X   .   .   .   .   .   -
"""


# -- the upstream suite's policies ----------------------------------------------------------------

def test_no_policy_connects_everything() -> None:
    policies = compiled()
    assert policies.empty
    assert_everywhere(policies, ALL_CONNECT)
    assert policies.check(address("x/a").packed, address("y/b").packed, ICMP, 0) == Decision(
        True, "no policy selects the pod")


def test_default_deny_ingress() -> None:
    policies = compiled('[[network_policies]]\nname = "deny-ingress"\nnamespace = "x"\n'
                        'pod_selector = {}\n')
    assert not policies.empty
    assert_everywhere(policies, table(DENY_INGRESS_X))


def test_default_deny_egress() -> None:
    policies = compiled('[[network_policies]]\nname = "deny-egress"\nnamespace = "x"\n'
                        'policy_types = ["Egress"]\n')
    assert_everywhere(policies, table("""
      x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a    -   X   X   X   X   X   X   X   X
x/b    X   -   X   X   X   X   X   X   X
x/c    X   X   -   X   X   X   X   X   X
y/a    .   .   .   -   .   .   .   .   .
y/b    .   .   .   .   -   .   .   .   .
y/c    .   .   .   .   .   -   .   .   .
z/a    .   .   .   .   .   .   -   .   .
z/b    .   .   .   .   .   .   .   -   .
z/c    .   .   .   .   .   .   .   .   -
"""))


def test_default_deny_all() -> None:
    policies = compiled('[[network_policies]]\nname = "deny-all"\nnamespace = "x"\n'
                        'policy_types = ["Ingress", "Egress"]\n')
    assert_everywhere(policies, reachability(True, ("x/*", "*/*", False), ("*/*", "x/*", False)))


def test_allow_from_a_namespace() -> None:
    # "should enforce policy to allow traffic only from a different namespace, based on
    # NamespaceSelector": into x/a only from pods of namespace y.
    policies = compiled("""
[[network_policies]]
name = "allow-ns-y"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "y" } } ] } ]
""")
    assert_everywhere(policies, table("""
      x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a    -   .   .   .   .   .   .   .   .
x/b    X   -   .   .   .   .   .   .   .
x/c    X   .   -   .   .   .   .   .   .
y/a    .   .   .   -   .   .   .   .   .
y/b    .   .   .   .   -   .   .   .   .
y/c    .   .   .   .   .   -   .   .   .
z/a    X   .   .   .   .   .   -   .   .
z/b    X   .   .   .   .   .   .   -   .
z/c    X   .   .   .   .   .   .   .   -
"""))


def test_allow_from_a_pod_of_the_policy_namespace() -> None:
    # A pod selector alone picks pods of the policy's own namespace: x/b, not y/b or z/b.
    policies = compiled("""
[[network_policies]]
name = "allow-b"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { pod_selector = { pod = "b" } } ] } ]
""")
    assert_everywhere(policies, reachability(True, ("*/*", "x/a", False), ("x/b", "x/a", True)))


def test_allow_from_pod_and_namespace_together() -> None:
    # Both selectors in one peer: pods b of the namespaces that are not x (an AND).
    policies = compiled("""
[[network_policies]]
name = "allow-b-elsewhere"
namespace = "x"
pod_selector = { pod = "a" }
[[network_policies.ingress]]
[[network_policies.ingress.from]]
namespace_selector.match_expressions = [ { key = "ns", operator = "NotIn", values = ["x"] } ]
pod_selector.match_expressions = [ { key = "pod", operator = "In", values = ["b"] } ]
""")
    assert_everywhere(policies, table("""
      x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a    -   .   .   .   .   .   .   .   .
x/b    X   -   .   .   .   .   .   .   .
x/c    X   .   -   .   .   .   .   .   .
y/a    X   .   .   -   .   .   .   .   .
y/b    .   .   .   .   -   .   .   .   .
y/c    X   .   .   .   .   -   .   .   .
z/a    X   .   .   .   .   .   -   .   .
z/b    .   .   .   .   .   .   .   -   .
z/c    X   .   .   .   .   .   .   .   -
"""))


def test_allow_from_pod_or_namespace() -> None:
    # Two peers: pods b of x, or every pod of y (an OR).
    policies = compiled("""
[[network_policies]]
name = "allow-b-or-y"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { pod_selector = { pod = "b" } }, { namespace_selector = { ns = "y" } } ] } ]
""")
    assert_everywhere(policies, reachability(
        True, ("*/*", "x/a", False), ("x/b", "x/a", True), ("y/*", "x/a", True)))


def test_allow_from_namespaces_by_the_default_name_label() -> None:
    policies = compiled("""
[[network_policies]]
name = "allow-y-by-name"
namespace = "x"
pod_selector = { pod = "a" }
[[network_policies.ingress]]
from = [ { namespace_selector = { "kubernetes.io/metadata.name" = "y" } } ]
""")
    assert_everywhere(policies, reachability(True, ("*/*", "x/a", False), ("y/*", "x/a", True)))


def test_deny_ingress_from_other_namespaces() -> None:
    # "should deny ingress from pods on other namespaces": an empty pod selector alone.
    policies = compiled('[[network_policies]]\nname = "same-ns"\nnamespace = "x"\n'
                        'ingress = [ { from = [ { pod_selector = {} } ] } ]\n')
    assert_everywhere(policies, reachability(True, ("*/*", "x/*", False), ("x/*", "x/*", True)))


def test_ip_block_with_except_ingress() -> None:
    # Into x/a from the whole pod network except x/b's address: pods match by IP too.
    policies = compiled(f"""
[[network_policies]]
name = "block-but-b"
namespace = "x"
pod_selector = {{ pod = "a" }}
[[network_policies.ingress]]
from = [ {{ ip_block = {{ cidr = "10.244.1.0/24", except = ["{address("x/b")}/32"] }} }} ]
""")
    assert_everywhere(policies, reachability(True, ("x/b", "x/a", False)))
    assert policies.check(OUTSIDE, address("x/a").packed, TCP, 80).allowed is False


def test_egress_to_an_ip_block() -> None:
    # "should allow egress access to server in CIDR block": x/a reaches x/b's address only.
    policies = compiled(f"""
[[network_policies]]
name = "egress-to-b"
namespace = "x"
pod_selector = {{ pod = "a" }}
policy_types = ["Egress"]
egress = [ {{ to = [ {{ ip_block = {{ cidr = "{address("x/b")}/32" }} }} ] }} ]
""")
    assert_everywhere(policies, reachability(True, ("x/a", "*/*", False), ("x/a", "x/b", True)))


def test_egress_except_clause() -> None:
    # "should enforce except clause while egress access to server in CIDR block".
    policies = compiled(f"""
[[network_policies]]
name = "egress-but-b"
namespace = "x"
pod_selector = {{ pod = "a" }}
policy_types = ["Egress"]
[[network_policies.egress]]
to = [ {{ ip_block = {{ cidr = "10.244.1.0/24", except = ["{address("x/b")}/32"] }} }} ]
""")
    assert_everywhere(policies, reachability(True, ("x/a", "x/b", False)))
    assert not policies.check(address("x/a").packed, OUTSIDE, TCP, 80).allowed


def test_an_address_in_a_cidr_and_an_except_is_allowed_by_another_policy() -> None:
    # "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed".
    b = address("x/b")
    policies = compiled(f"""
[[network_policies]]
name = "egress-but-b"
namespace = "x"
pod_selector = {{ pod = "a" }}
policy_types = ["Egress"]
egress = [ {{ to = [ {{ ip_block = {{ cidr = "10.244.1.0/24", except = ["{b}/32"] }} }} ] }} ]
[[network_policies]]
name = "egress-to-b"
namespace = "x"
pod_selector = {{ pod = "a" }}
policy_types = ["Egress"]
egress = [ {{ to = [ {{ ip_block = {{ cidr = "{b}/32" }} }} ] }} ]
""")
    assert_everywhere(policies, ALL_CONNECT)
    assert not policies.check(address("x/a").packed, OUTSIDE, TCP, 80).allowed


def test_ports() -> None:
    # "should enforce policy based on Ports": into x/a from y on TCP 81 only.
    policies = compiled("""
[[network_policies]]
name = "port-81"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "y" } } ], ports = [ { port = 81 } ] } ]
""")
    closed = reachability(True, ("*/*", "x/a", False))
    assert_matches(policies, TCP, 81, reachability(
        True, ("*/*", "x/a", False), ("y/*", "x/a", True)))
    assert_matches(policies, TCP, 80, closed)
    assert_matches(policies, UDP, 81, closed)


def test_named_ports() -> None:
    # "should allow ingress access on one named port": the name is the destination pod's, and
    # its container port's protocol must be the policy port's.
    policies = compiled("""
[[network_policies]]
name = "named"
namespace = "x"
pod_selector = { pod = "a" }
[[network_policies.ingress]]
ports = [ { port = "serve-81-tcp" }, { port = "serve-80-udp", protocol = "udp" },
          { port = "serve-80-tcp", protocol = "udp" } ]
""")
    closed = reachability(True, ("*/*", "x/a", False))
    assert_matches(policies, TCP, 81, ALL_CONNECT)
    assert_matches(policies, UDP, 80, ALL_CONNECT)
    assert_matches(policies, TCP, 80, closed)  # serve-80-tcp is named with the wrong protocol
    assert_matches(policies, UDP, 81, closed)


def test_egress_on_a_named_port_resolves_against_the_destination() -> None:
    # "should allow egress access on one named port": each destination's own serve-80-tcp.
    policies = compiled("""
[[network_policies]]
name = "egress-named"
namespace = "x"
pod_selector = { pod = "a" }
policy_types = ["Egress"]
egress = [ { ports = [ { port = "serve-80-tcp" } ] } ]
""")
    assert_matches(policies, TCP, 80, ALL_CONNECT)
    assert_matches(policies, TCP, 81, reachability(True, ("x/a", "*/*", False)))
    # An address no known pod has has no named ports.
    assert not policies.check(address("x/a").packed, OUTSIDE, TCP, 80).allowed


def test_ranged_ports() -> None:
    # end_port: TCP 80..81 from y into x/a, inclusive at both ends.
    policies = compiled("""
[[network_policies]]
name = "range"
namespace = "x"
pod_selector = { pod = "a" }
[[network_policies.ingress]]
from = [ { namespace_selector = { ns = "y" } } ]
ports = [ { port = 80, end_port = 81 } ]
""")
    open_from_y = reachability(True, ("*/*", "x/a", False), ("y/*", "x/a", True))
    assert_matches(policies, TCP, 80, open_from_y)
    assert_matches(policies, TCP, 81, open_from_y)
    assert_matches(policies, TCP, 82, reachability(True, ("*/*", "x/a", False)))
    assert_matches(policies, TCP, 79, reachability(True, ("*/*", "x/a", False)))
    assert_matches(policies, UDP, 80, reachability(True, ("*/*", "x/a", False)))


def test_any_port_of_one_protocol() -> None:
    # "should enforce ingress policy allowing any port traffic to a server on a specific
    # protocol", and "should not allow access by TCP when a policy specifies only UDP".
    policies = compiled('[[network_policies]]\nname = "udp-only"\nnamespace = "x"\n'
                        'pod_selector = { pod = "a" }\n'
                        'ingress = [ { ports = [ { protocol = "udp" } ] } ]\n')
    assert_matches(policies, UDP, 80, ALL_CONNECT)
    assert_matches(policies, UDP, 12345, ALL_CONNECT)
    assert_matches(policies, TCP, 80, reachability(True, ("*/*", "x/a", False)))


def test_multiple_policies_admit_the_union_of_their_rules() -> None:
    # "should enforce multiple, stacked policies with overlapping podSelectors".
    policies = compiled("""
[[network_policies]]
name = "port-80-from-y"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "y" } } ], ports = [ { port = 80 } ] } ]
[[network_policies]]
name = "port-81-from-z"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "z" } } ], ports = [ { port = 81 } ] } ]
""")
    assert_matches(policies, TCP, 80, reachability(
        True, ("*/*", "x/a", False), ("y/*", "x/a", True)))
    assert_matches(policies, TCP, 81, reachability(
        True, ("*/*", "x/a", False), ("z/*", "x/a", True)))


def test_an_allow_all_policy_takes_precedence_over_a_deny_all() -> None:
    # "should enforce multiple ingress/egress policies with allow-all policy taking precedence".
    deny = '[[network_policies]]\nname = "deny"\nnamespace = "x"\n' \
           'policy_types = ["Ingress", "Egress"]\n'
    allow = '[[network_policies]]\nname = "allow"\nnamespace = "x"\n' \
            'ingress = [ {} ]\negress = [ {} ]\n'
    assert_everywhere(compiled(deny, allow), ALL_CONNECT)
    assert_everywhere(compiled(allow, deny), ALL_CONNECT)


def test_the_client_side_denies_even_when_the_server_allows() -> None:
    # "should support denying of egress traffic on the client side (even if the server
    # explicitly allows this traffic)".
    policies = compiled("""
[[network_policies]]
name = "deny-egress-a"
namespace = "x"
pod_selector = { pod = "a" }
policy_types = ["Egress"]
egress = [ { to = [ { namespace_selector = { ns = "y" } } ] } ]
[[network_policies]]
name = "allow-everyone"
namespace = "z"
ingress = [ {} ]
""")
    assert_everywhere(policies, reachability(True, ("x/a", "*/*", False), ("x/a", "y/*", True)))


def test_ingress_and_egress_are_controlled_independently() -> None:
    # "should work with Ingress, Egress specified together" and "...controlled independently".
    policies = compiled("""
[[network_policies]]
name = "both"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "y" } } ] } ]
egress = [ { to = [ { namespace_selector = { ns = "z" } } ] } ]
""")
    assert_everywhere(policies, reachability(
        True, ("*/*", "x/a", False), ("y/*", "x/a", True),
        ("x/a", "*/*", False), ("x/a", "z/*", True)))


@pytest.mark.parametrize("types, expected", [
    # No policy_types: Ingress, plus Egress because there are egress rules.
    ("", reachability(True, ("*/*", "x/a", False), ("x/a", "*/*", False), ("x/a", "y/*", True))),
    # Ingress only: the egress rules are ignored, egress stays open.
    ('policy_types = ["Ingress"]\n', reachability(True, ("*/*", "x/a", False))),
    # Egress only: ingress stays open.
    ('policy_types = ["Egress"]\n', reachability(True, ("x/a", "*/*", False),
                                                 ("x/a", "y/*", True))),
])
def test_policy_types(types: str, expected: dict[tuple[str, str], bool]) -> None:
    policies = compiled('[[network_policies]]\nname = "types"\nnamespace = "x"\n'
                        f'pod_selector = {{ pod = "a" }}\n{types}'
                        'egress = [ { to = [ { namespace_selector = { ns = "y" } } ] } ]\n')
    assert_everywhere(policies, expected)


def test_an_updated_policy_or_pod_changes_the_verdicts() -> None:
    # "should enforce updated policy" and "should deny ingress access to updated pod": the
    # policies are compiled again after each change.
    first = '[[network_policies]]\nname = "p"\nnamespace = "x"\npod_selector = { pod = "a" }\n' \
            'ingress = [ { from = [ { namespace_selector = { ns = "y" } } ] } ]\n'
    updated = first.replace('ns = "y"', 'ns = "z"')
    assert_matches(compiled(updated), TCP, 80, reachability(
        True, ("*/*", "x/a", False), ("z/*", "x/a", True)))
    topology = parse_topology(MODEL + first)
    relabelled = tuple(dataclasses.replace(pod, labels=MappingProxyType({"pod": "b"}))
                       if pod.key == "x/a" else pod for pod in topology.pods)
    # x/a no longer carries pod=a: the policy selects nothing, everything connects.
    assert_matches(compiled(topology=dataclasses.replace(topology, pods=relabelled)), TCP, 80,
                   ALL_CONNECT)


# -- beyond the port matrix ------------------------------------------------------------------------

def test_icmp_passes_only_rules_without_ports() -> None:
    with_ports = compiled('[[network_policies]]\nname = "web"\nnamespace = "x"\n'
                          'ingress = [ { ports = [ { port = 80 } ] } ]\n')
    a, y = address("x/a").packed, address("y/a").packed
    assert not with_ports.check(y, a, ICMP, 0).allowed
    assert with_ports.check(y, a, TCP, 80).allowed
    without_ports = compiled('[[network_policies]]\nname = "from-y"\nnamespace = "x"\n'
                             'ingress = [ { from = [ { namespace_selector = { ns = "y" } } ] } ]\n')
    assert without_ports.check(y, a, ICMP, 0).allowed
    assert not without_ports.check(address("z/a").packed, a, ICMP, 0).allowed


def test_the_node_always_passes() -> None:
    policies = compiled('[[network_policies]]\nname = "deny-all"\nnamespace = "x"\n'
                        'policy_types = ["Ingress", "Egress"]\n')
    a = address("x/a").packed
    assert policies.check(GATEWAY, a, TCP, 80).allowed
    assert policies.check(a, GATEWAY, UDP, 53).allowed
    assert not policies.check(OUTSIDE, a, TCP, 80).allowed


def test_remote_pods_are_peers_but_not_enforced_here() -> None:
    topology = parse_topology(MODEL + """
[[network_policies]]
name = "from-y"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { from = [ { namespace_selector = { ns = "y" } } ] } ]
[[network_policies]]
name = "deny-w"
namespace = "w"
""".replace('namespace = "w"', 'namespace = "y"'))
    remote_y = model.RemotePod("n2", "r", IPv4Address("10.244.2.5"),
                               MappingProxyType({"pod": "r"}), namespace="y")
    remote_w = model.RemotePod("n2", "s", IPv4Address("10.244.2.6"), namespace="w")
    policies = CompiledPolicies.build(
        topology.network_policies, {ns.name: ns.labels for ns in topology.namespaces},
        topology.pods + (remote_y, remote_w), [GATEWAY])
    a = address("x/a").packed
    assert policies.check(remote_y.ip.packed, a, TCP, 80).allowed
    # A namespace the map does not know still has its name label, not ns=y.
    assert not policies.check(remote_w.ip.packed, a, TCP, 80).allowed
    # deny-w selects y's pods: the remote one is not this node's to enforce.
    assert policies.check(remote_w.ip.packed, remote_y.ip.packed, TCP, 80).allowed
    assert not policies.selects(remote_y.ip.packed)
    assert policies.selects(address("y/b").packed) and policies.selects(a)
    assert not policies.selects(address("z/a").packed)


def test_decisions_name_the_policy_and_rule() -> None:
    policies = compiled("""
[[network_policies]]
name = "web"
namespace = "x"
pod_selector = { pod = "a" }
ingress = [ { ports = [ { port = 81 } ] }, { from = [ { namespace_selector = { ns = "y" } } ] } ]
[[network_policies]]
name = "deny-all"
namespace = "x"
[[network_policies]]
name = "client"
namespace = "y"
pod_selector = { pod = "b" }
egress = [ { to = [ { namespace_selector = { ns = "z" } } ] }, {} ]
""")
    a, yb, za = address("x/a").packed, address("y/b").packed, address("z/a").packed
    assert policies.check(za, a, TCP, 81) == Decision(
        True, "allowed by ingress rule 0 of policy x/web", ("x/web",), 0, "ingress")
    assert policies.check(yb, a, TCP, 80) == Decision(
        True, "allowed by egress rule 1 of policy y/client and ingress rule 1 of policy x/web",
        ("y/client", "x/web"), 1, "ingress")
    assert policies.check(yb, za, UDP, 53) == Decision(
        True, "allowed by egress rule 0 of policy y/client", ("y/client",), 0, "egress")
    assert policies.check(za, a, TCP, 80) == Decision(
        False, "denied: ingress of x/a is selected by x/web, x/deny-all, whose rules do not "
               "allow it", ("x/web", "x/deny-all"), None, "ingress")
    assert policies.check(za, address("x/b").packed, TCP, 80) == Decision(
        False, "denied: ingress of x/b is selected by x/deny-all, whose rules do not allow it",
        ("x/deny-all",), None, "ingress")


def test_a_pod_in_the_default_namespace_is_named_by_its_name() -> None:
    topology = parse_topology('[node]\nname = "n1"\npod_cidr = "10.244.1.0/24"\n'
                              '[[pods]]\nname = "web"\nip = "10.244.1.5"\n'
                              '[[network_policies]]\nname = "deny"\npolicy_types = ["Egress"]\n')
    policies = CompiledPolicies.build(topology.network_policies,
                                      {ns.name: ns.labels for ns in topology.namespaces},
                                      topology.pods)
    decision = policies.check(IPv4Address("10.244.1.5").packed, OUTSIDE, TCP, 443)
    assert decision == Decision(False, "denied: egress of web is selected by default/deny, whose "
                                       "rules do not allow it", ("default/deny",), None, "egress")


def test_policies_selecting_no_local_pod_are_not_compiled_or_consulted(monkeypatch) -> None:
    """The verdict's cost: only the policies selecting the two pods are compiled and looked at,
    however many others there are."""
    compiled_for: list[str] = []
    compile_rule = engine_module.compile_rule

    def counting(index, rule, namespace, known):
        compiled_for.append(namespace)
        return compile_rule(index, rule, namespace, known)

    monkeypatch.setattr(engine_module, "compile_rule", counting)
    unrelated = "".join(
        f'[[network_policies]]\nname = "other-{i}"\nnamespace = "{ns}"\n'
        f'pod_selector = {{ app = "nothing-{i}" }}\ningress = [ {{}} ]\n'
        for i, ns in zip(range(300), NAMESPACES * 100))
    policies = compiled(unrelated + '[[network_policies]]\nname = "mine"\nnamespace = "x"\n'
                                    'pod_selector = { pod = "a" }\ningress = [ {}, {} ]\n')
    assert compiled_for == ["x", "x"]
    assert policies.check(address("y/a").packed, address("x/a").packed, TCP, 80).policies == (
        "x/mine",)
    assert not policies.selects(address("x/b").packed)
