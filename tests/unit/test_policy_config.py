"""``[[network_policies]]`` in a topology file and ``policy add``: values, defaults, and every
mistake at its key path."""
from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from vswitch import model
from vswitch.config import ConfigError, parse_topology
from vswitch.config.policies import parse_network_policy, policy_table

from .config_support import NODE, errors_of, only_error

NAMESPACES = """
[[namespaces]]
name = "prod"
labels = { team = "shop" }
[[namespaces]]
name = "monitoring"
"""

EXAMPLE = NODE + NAMESPACES + """
[[network_policies]]
name = "web-allow"
namespace = "prod"
pod_selector = { app = "web" }

[[network_policies.ingress]]
from = [
  { namespace_selector = { team = "shop" }, pod_selector = { match_expressions = [
      { key = "role", operator = "In", values = ["frontend", "api"] } ] } },
  { ip_block = { cidr = "192.0.2.0/24", except = ["192.0.2.128/25"] } },
]
ports = [ { protocol = "TCP", port = 8080, end_port = 8090 }, { port = "metrics" } ]

[[network_policies.ingress]]
from = [ { namespace_selector = { match_labels = {}, match_expressions = [
    { key = "kubernetes.io/metadata.name", operator = "Exists" } ] } } ]

[[network_policies.egress]]
to = [ { pod_selector = { app = "db" } } ]
ports = [ { protocol = "udp" } ]
"""


def policies(text: str) -> tuple[model.NetworkPolicy, ...]:
    return parse_topology(NODE + NAMESPACES + text).network_policies


def policy_error(text: str) -> tuple[str, str]:
    return only_error(NODE + NAMESPACES + text)


def test_the_example_reads_into_the_model() -> None:
    (policy,) = parse_topology(EXAMPLE).network_policies
    assert (policy.name, policy.namespace, policy.key) == ("web-allow", "prod", "prod/web-allow")
    assert policy.pod_selector == model.LabelSelector({"app": "web"})
    assert policy.policy_types == ("Ingress", "Egress")
    first, second = policy.ingress
    from_pods, from_block = first.peers
    assert from_pods.namespace_selector == model.LabelSelector({"team": "shop"})
    assert from_pods.pod_selector == model.LabelSelector(
        {}, (model.LabelRequirement("role", "In", ("frontend", "api")),))
    assert from_pods.ip_block is None
    assert from_block == model.PolicyPeer(ip_block=model.IPBlock(
        IPv4Network("192.0.2.0/24"), (IPv4Network("192.0.2.128/25"),)))
    assert first.ports == (model.PolicyPort("tcp", 8080, 8090), model.PolicyPort("tcp", "metrics"))
    (everyone,) = second.peers
    assert everyone.pod_selector is None
    assert everyone.namespace_selector.match_expressions == (
        model.LabelRequirement("kubernetes.io/metadata.name", "Exists"),)
    assert second.ports == ()
    (egress,) = policy.egress
    assert egress == model.PolicyRule(
        peers=(model.PolicyPeer(pod_selector=model.LabelSelector({"app": "db"})),),
        ports=(model.PolicyPort("udp"),))


def test_defaults_of_a_deny_all_policy() -> None:
    (policy,) = policies('[[network_policies]]\nname = "deny"\n')
    assert policy == model.NetworkPolicy("deny", "default", model.LabelSelector(), ("Ingress",))


@pytest.mark.parametrize("body, types", [
    ("", ("Ingress",)),
    ("[[network_policies.ingress]]\n", ("Ingress",)),
    ("[[network_policies.egress]]\n", ("Ingress", "Egress")),
    ('policy_types = ["Egress"]\n', ("Egress",)),
    ('policy_types = ["Egress", "Ingress"]\n', ("Egress", "Ingress")),
    ('policy_types = []\n[[network_policies.egress]]\n', ("Ingress", "Egress")),
    # Kubernetes keeps rules of a direction the types leave out, and ignores them.
    ('policy_types = ["Ingress"]\n[[network_policies.egress]]\n', ("Ingress",)),
])
def test_policy_types_default_as_in_kubernetes(body: str, types: tuple[str, ...]) -> None:
    (policy,) = policies(f'[[network_policies]]\nname = "p"\n{body}')
    assert policy.policy_types == types


def test_an_empty_egress_list_needs_explicit_policy_types() -> None:
    path, reason = policy_error('[[network_policies]]\nname = "p"\negress = []\n')
    assert path == "network_policies[0].egress"
    assert "policy_types" in reason and "Egress" in reason
    (policy,) = policies('[[network_policies]]\nname = "p"\negress = []\n'
                         'policy_types = ["Ingress", "Egress"]\n')
    assert policy.egress == () and policy.policy_types == ("Ingress", "Egress")


def test_the_protocol_is_read_in_any_case() -> None:
    (policy,) = policies('[[network_policies]]\nname = "p"\n[[network_policies.ingress]]\n'
                         'ports = [{protocol = "UDP", port = 53}, {protocol = "Tcp"}, {}]\n')
    assert [p.protocol for p in policy.ingress[0].ports] == ["udp", "tcp", "tcp"]


def test_a_selector_table_without_the_full_form_keys_is_match_labels() -> None:
    (short,) = policies('[[network_policies]]\nname = "p"\npod_selector = { app = "web" }\n')
    (full,) = policies('[[network_policies]]\nname = "p"\n'
                       'pod_selector = { match_labels = { app = "web" } }\n')
    assert short.pod_selector == full.pod_selector == model.LabelSelector({"app": "web"})


def test_names_are_unique_per_namespace() -> None:
    text = ('[[network_policies]]\nname = "p"\n[[network_policies]]\nname = "p"\n'
            'namespace = "prod"\n')
    assert [p.key for p in policies(text)] == ["default/p", "prod/p"]
    path, reason = policy_error(text + '[[network_policies]]\nname = "p"\nnamespace = "prod"\n')
    assert path == "network_policies[2].name"
    assert reason == "duplicate network policy prod/p (first at network_policies[1])"


ERRORS = [
    # (the policy's body, the key path, a part of the reason)
    ('name = "Bad_Name"', "network_policies[0].name", "DNS-1123"),
    ('name = "p"\nnamespace = "staging"', "network_policies[0].namespace",
     "namespace 'staging' is not declared"),
    ('name = "p"\ncolour = "red"', "network_policies[0].colour", "unknown key"),
    ('name = "p"\npod_selector = "app=web"', "network_policies[0].pod_selector",
     "expected a table, got string"),
    ('name = "p"\npod_selector = { "app/" = "web" }', 'network_policies[0].pod_selector."app/"',
     "label key"),
    ('name = "p"\npod_selector = { app = "-web" }', "network_policies[0].pod_selector.app",
     "label value"),
    ('name = "p"\npod_selector = { match_labels = { app = "web" }, app = "db" }',
     "network_policies[0].pod_selector.app", "unknown key"),
    ('name = "p"\npolicy_types = ["ingress"]', "network_policies[0].policy_types[0]",
     "did you mean 'Ingress'?"),
    ('name = "p"\npolicy_types = ["Egress", "Egress"]', "network_policies[0].policy_types[1]",
     "listed twice"),
    ('name = "p"\npolicy_types = "Egress"', "network_policies[0].policy_types",
     "expected an array"),
    ('name = "p"\ningress = [{ to = [] }]', "network_policies[0].ingress[0].to",
     "allowed here: from, ports"),
    ('name = "p"\negress = [{ from = [] }]', "network_policies[0].egress[0].from",
     "allowed here: to, ports"),
    ('name = "p"\ningress = [{ from = [{}] }]', "network_policies[0].ingress[0].from[0]",
     "a peer needs pod_selector"),
    ('name = "p"\ningress = [{ from = ["x"] }]', "network_policies[0].ingress[0].from[0]",
     "expected a table, got string"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { cidr = "10.0.0.0/8" }, '
     'pod_selector = {} }] }]', "network_policies[0].ingress[0].from[0].ip_block",
     "cannot be combined"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { except = ["10.1.0.0/16"] } }] }]',
     "network_policies[0].ingress[0].from[0].ip_block.cidr", "required key is missing"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { cidr = "10.0.0.1/8" } }] }]',
     "network_policies[0].ingress[0].from[0].ip_block.cidr", "host bits set"),
    ('name = "p"\ningress = [{}, { from = [{ pod_selector = {} }, { ip_block = { cidr = '
     '"10.0.0.0/8", except = ["10.1.0.0/16", "11.0.0.0/16"] } }] }]',
     "network_policies[0].ingress[1].from[1].ip_block.except[1]",
     "11.0.0.0/16 does not lie inside cidr 10.0.0.0/8"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { cidr = "10.0.0.0/8", '
     'except = ["10.0.0.0/8"] } }] }]',
     "network_policies[0].ingress[0].from[0].ip_block.except[0]", "does not lie inside"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { cidr = "10.0.0.0/8", '
     'except = ["10.1.0.0"] } }] }]',
     "network_policies[0].ingress[0].from[0].ip_block.except[0]", "expected an IPv4 network"),
    ('name = "p"\ningress = [{ from = [{ ip_block = { cidr = "0.0.0.0/0", port = 1 } }] }]',
     "network_policies[0].ingress[0].from[0].ip_block.port", "unknown key"),
    ('name = "p"\negress = [{ ports = [{ protocol = "sctp" }] }]',
     "network_policies[0].egress[0].ports[0].protocol", "must be 'tcp' or 'udp'"),
    ('name = "p"\negress = [{ ports = [{ port = 0 }] }]',
     "network_policies[0].egress[0].ports[0].port", "between 1 and 65535"),
    ('name = "p"\negress = [{ ports = [{ port = 1.5 }] }]',
     "network_policies[0].egress[0].ports[0].port", "expected a port number or a named"),
    ('name = "p"\negress = [{ ports = [{ port = "HTTP" }] }]',
     "network_policies[0].egress[0].ports[0].port", "port name 'HTTP' is invalid"),
    ('name = "p"\negress = [{ ports = [{ end_port = 90 }] }]',
     "network_policies[0].egress[0].ports[0].end_port", "needs a numeric port"),
    ('name = "p"\negress = [{ ports = [{ port = "http", end_port = 90 }] }]',
     "network_policies[0].egress[0].ports[0].end_port", "named port 'http'"),
    ('name = "p"\negress = [{ ports = [{ port = 91, end_port = 90 }] }]',
     "network_policies[0].egress[0].ports[0].end_port", "must be at least port (91), got 90"),
    ('name = "p"\negress = [{ ports = [{ port = 80, end_port = 65536 }] }]',
     "network_policies[0].egress[0].ports[0].end_port", "between 1 and 65535"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", operator = "In" }] }',
     "network_policies[0].pod_selector.match_expressions[0].values",
     "operator In needs at least one value"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", operator = "NotIn", '
     'values = [] }] }', "network_policies[0].pod_selector.match_expressions[0].values",
     "operator NotIn needs at least one value"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", operator = "Exists", '
     'values = ["x"] }] }', "network_policies[0].pod_selector.match_expressions[0].values",
     "must be empty for operator Exists"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", '
     'operator = "DoesNotExist", values = ["x"] }] }',
     "network_policies[0].pod_selector.match_expressions[0].values",
     "must be empty for operator DoesNotExist"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", operator = "exists" }] }',
     "network_policies[0].pod_selector.match_expressions[0].operator",
     "did you mean 'Exists'?"),
    ('name = "p"\npod_selector = { match_expressions = [{ operator = "Exists" }] }',
     "network_policies[0].pod_selector.match_expressions[0].key", "required key is missing"),
    ('name = "p"\npod_selector = { match_expressions = [{ key = "a", operator = "In", '
     'values = ["ok", "-no"] }] }',
     "network_policies[0].pod_selector.match_expressions[0].values[1]", "label value"),
    ('name = "p"\negress = [{ to = [{ namespace_selector = { match_expressions = '
     '[{ key = "a", op = "In" }] } }] }]',
     "network_policies[0].egress[0].to[0].namespace_selector.match_expressions[0].op",
     "unknown key"),
]


@pytest.mark.parametrize("body, path, reason", ERRORS)
def test_each_mistake_is_reported_at_its_key_path(body: str, path: str, reason: str) -> None:
    errors = errors_of(NODE + NAMESPACES + "[[network_policies]]\n" + body + "\n")
    assert path in [p for p, _ in errors], errors
    assert any(p == path and reason in r for p, r in errors), errors


def test_every_mistake_of_a_file_is_reported_and_valid_policies_do_not_hide_them() -> None:
    text = ('[[network_policies]]\nname = "ok"\n'
            '[[network_policies]]\nname = "p"\nnamespace = "nope"\n'
            'ingress = [{ ports = [{ port = 0 }] }]\n'
            '[[network_policies]]\nname = "q"\npolicy_types = ["Sideways"]\n')
    assert [path for path, _ in errors_of(NODE + text)] == [
        "network_policies[1].namespace", "network_policies[1].ingress[0].ports[0].port",
        "network_policies[2].policy_types[0]"]


def test_the_message_format_names_file_path_and_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_topology(NODE + '[[network_policies]]\nname = "p"\n'
                       'ingress = [{ from = [{ ip_block = { cidr = "10.0.0.0/8", '
                       'except = ["11.0.0.0/8"] } }] }]\n', "lab.toml")
    assert str(caught.value) == (
        "lab.toml: network_policies[0].ingress[0].from[0].ip_block.except[0]: 11.0.0.0/8 does "
        "not lie inside cidr 10.0.0.0/8; an exception must be a smaller block within it")


# -- policy add: one policy as JSON against the running node --------------------------------------

def running() -> model.Topology:
    return parse_topology(EXAMPLE)


def test_a_runtime_policy_reads_like_a_file_entry() -> None:
    table = json.loads(json.dumps(policy_table(running().network_policies[0])))
    table["name"] = "copy"
    policy = parse_network_policy(table, running())
    assert policy.key == "prod/copy"
    assert policy.ingress == running().network_policies[0].ingress


def test_a_runtime_policy_reports_its_mistakes_under_policy() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_network_policy({"name": "p", "namespace": "staging",
                              "ingress": [{"from": [{"ip_block": {"cidr": "10.0.0.0/8",
                                                                  "except": ["12.0.0.0/8"]}}],
                                           "ports": [{"port": 70000}]}]}, running())
    assert caught.value.errors == [
        ("policy.namespace", "namespace 'staging' is not declared in [[namespaces]] "
                             "(namespaces: prod, monitoring, default, kube-system)"),
        ("policy.ingress[0].from[0].ip_block.except[0]", "12.0.0.0/8 does not lie inside cidr "
                                                         "10.0.0.0/8; an exception must be a "
                                                         "smaller block within it"),
        ("policy.ingress[0].ports[0].port", "must be between 1 and 65535, got 70000"),
    ]
    assert str(caught.value).startswith("policy add: policy.namespace: ")


def test_a_runtime_policy_must_be_a_table_with_a_new_name() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_network_policy(["web-allow"], running())
    assert caught.value.errors == [("policy", "expected a table, got array")]
    with pytest.raises(ConfigError) as caught:
        parse_network_policy({"name": "web-allow", "namespace": "prod"}, running())
    assert caught.value.errors == [("policy.name", "network policy prod/web-allow already exists")]
    replaced = parse_network_policy({"name": "web-allow", "namespace": "prod"}, running(),
                                    replace=True)
    assert replaced.ingress == () and replaced.policy_types == ("Ingress",)


def test_a_written_back_policy_reads_as_the_same_policy() -> None:
    for policy in running().network_policies + policies(
            '[[network_policies]]\nname = "deny"\npolicy_types = ["Ingress", "Egress"]\n'
            'egress = []\n'):
        table = json.loads(json.dumps(policy_table(policy)))
        assert parse_network_policy(table, running(), replace=True) == policy
