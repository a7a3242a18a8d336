"""``[[network_policies]]``: NetworkPolicy objects with the semantics of networking.k8s.io/v1.

The keys are Kubernetes' in snake case (``pod_selector``, ``policy_types``, ``ingress[].from``,
``egress[].to``, ``ip_block = {cidr, except}``, ``ports[].end_port``), and what Kubernetes
refuses is refused here too, at the key path it concerns:

* a peer gives ``pod_selector``, ``namespace_selector`` or both, or else ``ip_block`` alone;
  every ``except`` lies strictly inside the block's ``cidr``;
* a port's ``protocol`` is tcp or udp in any case (Kubernetes writes TCP); ``port`` is a number
  or an IANA port name resolved against the destination pod; ``end_port`` needs a numeric
  ``port`` and is not below it;
* a selector is a table of labels (shorthand for ``match_labels``), or the full form with only
  ``match_labels`` and/or ``match_expressions``; an expression's ``values`` are required for
  In/NotIn and must be empty for Exists/DoesNotExist;
* ``policy_types`` defaults as in Kubernetes: Ingress, plus Egress when there are egress rules.
  ``egress = []`` without ``policy_types`` is refused: Kubernetes would leave egress open, while
  whoever wrote it almost surely meant to deny it;
* names are unique per namespace, and the namespace must be declared.

A policy with a mistake is not built; the others are, so that every mistake of a file is
reported in one run. ``parse_network_policy`` reads one policy of a runtime change with the
same code, and ``policy_table`` writes one back in the same keys.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from vswitch import model
from vswitch.config.errors import ConfigError
from vswitch.config.namespaces import namespace_problem
from vswitch.config.names import (
    DNS_LABEL_MAX,
    dns_label_problem,
    label_key_problem,
    label_value_problem,
    port_name_problem,
)
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader, key_path, type_name

POLICY_KEYS = ("name", "namespace", "pod_selector", "policy_types", "ingress", "egress")
# Each direction's rules name their peers with the word Kubernetes uses for it.
PEERS_KEY = {"ingress": "from", "egress": "to"}
PEER_KEYS = ("pod_selector", "namespace_selector", "ip_block")
IP_BLOCK_KEYS = ("cidr", "except")
PORT_KEYS = ("protocol", "port", "end_port")
SELECTOR_KEYS = ("match_labels", "match_expressions")
EXPRESSION_KEYS = ("key", "operator", "values")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
VALUED_OPERATORS = ("In", "NotIn")
POLICY_TYPES = (model.POLICY_INGRESS, model.POLICY_EGRESS)
PROTOCOLS = ("tcp", "udp")


def read_network_policies(reader: Reader, document: Mapping[str, Any],
                          namespaces: tuple[model.Namespace, ...]
                          ) -> tuple[model.NetworkPolicy, ...]:
    """Every policy of the file; mistakes go to ``reader`` with their key paths."""
    policies: list[model.NetworkPolicy] = []
    first_use: dict[str, str] = {}
    for path, table in reader.entries(document, "", "network_policies"):
        policy = read_network_policy(reader, table, path, namespaces)
        if policy is None:
            continue
        if policy.key in first_use:
            reader.fail(key_path(path, "name"), f"duplicate network policy {policy.key} "
                                                f"(first at {first_use[policy.key]})")
            continue
        first_use[policy.key] = path
        policies.append(policy)
    return tuple(policies)


def parse_network_policy(table: Any, topology: model.Topology, source: str = "policy add",
                         path: str = "policy", replace: bool = False) -> model.NetworkPolicy:
    """One policy table (as ``[[network_policies]]`` holds it, or its JSON) checked against
    the running node. Without ``replace`` its name must be new in its namespace."""
    if not isinstance(table, dict):
        raise ConfigError(source, path, f"expected a table, got {type_name(table)}")
    reader = Reader()
    policy = read_network_policy(reader, table, path, topology.namespaces)
    if policy is not None and not replace and any(
            running.key == policy.key for running in topology.network_policies):
        reader.fail(key_path(path, "name"), f"network policy {policy.key} already exists")
    if reader.errors or policy is None:
        raise ConfigError.collected(source, reader.errors or [(path, "invalid policy")])
    return policy


def read_network_policy(reader: Reader, table: Mapping[str, Any], path: str,
                        namespaces: tuple[model.Namespace, ...]
                        ) -> model.NetworkPolicy | None:
    """One policy; None after reporting its mistakes. With no ``namespaces`` (a topology built
    by hand) any namespace name goes."""
    errors_before = len(reader.errors)
    reader.check_keys(table, path, POLICY_KEYS)
    name = reader.take(table, path, "name", "a string", REQUIRED)
    if isinstance(name, str) and (problem := dns_label_problem(name, DNS_LABEL_MAX)):
        reader.fail(key_path(path, "name"), problem)
    namespace = reader.take(table, path, "namespace", "a string", model.DEFAULT_NAMESPACE)
    if isinstance(namespace, str):
        problem = dns_label_problem(namespace, DNS_LABEL_MAX)
        if problem is None and namespaces:
            problem = namespace_problem(namespace, namespaces)
        if problem:
            reader.fail(key_path(path, "namespace"), problem)
    pod_selector = read_selector(reader, table, path, "pod_selector")
    ingress = read_rules(reader, table, path, "ingress")
    egress = read_rules(reader, table, path, "egress")
    policy_types = read_policy_types(reader, table, path)
    if len(reader.errors) != errors_before:
        return None
    assert isinstance(name, str) and isinstance(namespace, str)
    assert isinstance(ingress, tuple) and isinstance(egress, tuple)
    assert isinstance(policy_types, tuple)
    return model.NetworkPolicy(
        name=name, namespace=namespace,
        pod_selector=pod_selector if isinstance(pod_selector, model.LabelSelector)
        else model.LabelSelector(),
        policy_types=policy_types, ingress=ingress, egress=egress)


def read_policy_types(reader: Reader, table: Mapping[str, Any],
                      path: str) -> tuple[str, ...] | Marker:
    raw = reader.take(table, path, "policy_types", "an array", [])
    if raw is INVALID:
        return INVALID
    types_path = key_path(path, "policy_types")
    if not raw:
        # Kubernetes' default: Ingress always, Egress when the policy has egress rules.
        if isinstance(table.get("egress"), list) and not table["egress"]:
            return reader.fail(key_path(path, "egress"),
                               "an empty egress list leaves egress open unless policy_types "
                               "names Egress (Kubernetes adds Egress by default only for a "
                               "policy with egress rules); to deny all egress write "
                               "policy_types = [\"Ingress\", \"Egress\"] (or [\"Egress\"])")
        egress_rules = isinstance(table.get("egress"), list) and bool(table["egress"])
        return (model.POLICY_INGRESS,) + ((model.POLICY_EGRESS,) if egress_rules else ())
    found: list[str] = []
    for index, item in enumerate(raw):
        item_path = f"{types_path}[{index}]"
        if not isinstance(item, str):
            return reader.fail(item_path, f"expected a string, got {type_name(item)}")
        if item not in POLICY_TYPES:
            hint = next((t for t in POLICY_TYPES if t.lower() == item.lower()), None)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            return reader.fail(item_path, f"must be 'Ingress' or 'Egress', got "
                                          f"{item!r}{suggestion}")
        if item in found:
            return reader.fail(item_path, f"{item} is listed twice")
        found.append(item)
    return tuple(found)


def read_rules(reader: Reader, table: Mapping[str, Any], path: str,
               direction: str) -> tuple[model.PolicyRule, ...] | Marker:
    """The ``ingress`` or ``egress`` rules: peers under ``from``/``to``, and ``ports``."""
    errors_before = len(reader.errors)
    peers_key = PEERS_KEY[direction]
    rules: list[model.PolicyRule] = []
    for rule_path, rule in reader.entries(table, path, direction):
        reader.check_keys(rule, rule_path, (peers_key, "ports"))
        peers = [read_peer(reader, peer, peer_path)
                 for peer_path, peer in reader.entries(rule, rule_path, peers_key)]
        ports = [read_port(reader, port, port_path)
                 for port_path, port in reader.entries(rule, rule_path, "ports")]
        rules.append(model.PolicyRule(
            peers=tuple(p for p in peers if isinstance(p, model.PolicyPeer)),
            ports=tuple(p for p in ports if isinstance(p, model.PolicyPort))))
    return tuple(rules) if len(reader.errors) == errors_before else INVALID


def read_peer(reader: Reader, peer: Mapping[str, Any], path: str) -> model.PolicyPeer | Marker:
    errors_before = len(reader.errors)
    reader.check_keys(peer, path, PEER_KEYS)
    pod_selector = read_selector(reader, peer, path, "pod_selector")
    namespace_selector = read_selector(reader, peer, path, "namespace_selector")
    ip_block = read_ip_block(reader, peer, path)
    if "ip_block" in peer and ("pod_selector" in peer or "namespace_selector" in peer):
        reader.fail(key_path(path, "ip_block"), "cannot be combined with pod_selector or "
                                                "namespace_selector; give it a peer of its own")
    elif not any(key in peer for key in PEER_KEYS):
        reader.fail(path, "a peer needs pod_selector, namespace_selector (or both) or ip_block")
    if len(reader.errors) != errors_before:
        return INVALID
    assert not isinstance(pod_selector, Marker) and not isinstance(namespace_selector, Marker)
    assert not isinstance(ip_block, Marker)
    return model.PolicyPeer(pod_selector=pod_selector, namespace_selector=namespace_selector,
                            ip_block=ip_block)


def read_ip_block(reader: Reader, peer: Mapping[str, Any],
                  path: str) -> model.IPBlock | None | Marker:
    raw = reader.take(peer, path, "ip_block", "a table", None)
    if raw is None or raw is INVALID:
        return raw
    block_path = key_path(path, "ip_block")
    reader.check_keys(raw, block_path, IP_BLOCK_KEYS)
    text = reader.take(raw, block_path, "cidr", "a string", REQUIRED)
    cidr = (reader.parse_cidr(text, key_path(block_path, "cidr"), 0, 32)
            if isinstance(text, str) else INVALID)
    excepts = reader.take(raw, block_path, "except", "an array", [])
    if excepts is INVALID:
        return INVALID
    valid = cidr is not INVALID
    networks = []
    for index, item in enumerate(excepts):
        item_path = f"{key_path(block_path, 'except')}[{index}]"
        if not isinstance(item, str):
            reader.fail(item_path, f"expected a string, got {type_name(item)}")
            valid = False
            continue
        network = reader.parse_cidr(item, item_path, 0, 32)
        if isinstance(network, Marker):
            valid = False
        elif isinstance(cidr, Marker):
            continue  # the cidr's own error explains it
        elif not (network.subnet_of(cidr) and network.prefixlen > cidr.prefixlen):
            reader.fail(item_path, f"{network} does not lie inside cidr {cidr}; an exception "
                                   "must be a smaller block within it")
            valid = False
        else:
            networks.append(network)
    if not valid:
        return INVALID
    assert not isinstance(cidr, Marker)
    return model.IPBlock(cidr=cidr, except_=tuple(networks))


def read_port(reader: Reader, entry: Mapping[str, Any], path: str) -> model.PolicyPort | Marker:
    errors_before = len(reader.errors)
    reader.check_keys(entry, path, PORT_KEYS)
    protocol = reader.take(entry, path, "protocol", "a string", "tcp")
    if isinstance(protocol, str):
        if protocol.lower() in PROTOCOLS:
            protocol = protocol.lower()
        else:
            protocol = reader.fail(key_path(path, "protocol"),
                                   f"must be 'tcp' or 'udp' (in any case), got {protocol!r}")
    port: Any = entry.get("port")
    port_path = key_path(path, "port")
    if port is None:
        pass
    elif isinstance(port, bool) or not isinstance(port, (int, str)):
        port = reader.fail(port_path, f"expected a port number or a named container port, got "
                                      f"{type_name(port)}")
    elif isinstance(port, int) and not 1 <= port <= 65535:
        port = reader.fail(port_path, f"must be between 1 and 65535, got {port}")
    elif isinstance(port, str) and (problem := port_name_problem(port)):
        port = reader.fail(port_path, problem)
    end_port = reader.take_int(entry, path, "end_port", None, 1, 65535)
    if isinstance(end_port, int):
        end_path = key_path(path, "end_port")
        if port is None:
            reader.fail(end_path, "needs a numeric port: the range is port..end_port")
        elif isinstance(port, str):
            reader.fail(end_path, f"needs a numeric port; a range cannot start at the named "
                                  f"port {port!r}")
        elif isinstance(port, int) and end_port < port:
            reader.fail(end_path, f"must be at least port ({port}), got {end_port}")
    if len(reader.errors) != errors_before:
        return INVALID
    assert isinstance(protocol, str) and not isinstance(end_port, Marker)
    return model.PolicyPort(protocol=protocol, port=port, end_port=end_port)


def read_selector(reader: Reader, table: Mapping[str, Any], base: str,
                  key: str) -> model.LabelSelector | None | Marker:
    """A label selector: the full form (``match_labels``/``match_expressions``) or a table of
    labels as shorthand for ``match_labels``; None when ``key`` is absent."""
    raw = reader.take(table, base, key, "a table", None)
    if raw is None or raw is INVALID:
        return raw
    path = key_path(base, key)
    if not any(name in raw for name in SELECTOR_KEYS):
        labels = read_labels(reader, table, base, key)
        return (model.LabelSelector(MappingProxyType(labels)) if isinstance(labels, dict)
                else INVALID)
    errors_before = len(reader.errors)
    reader.check_keys(raw, path, SELECTOR_KEYS)
    labels = read_labels(reader, raw, path, "match_labels")
    expressions = [read_expression(reader, entry, entry_path)
                   for entry_path, entry in reader.entries(raw, path, "match_expressions")]
    if len(reader.errors) != errors_before:
        return INVALID
    assert isinstance(labels, dict)
    return model.LabelSelector(
        MappingProxyType(labels),
        tuple(e for e in expressions if isinstance(e, model.LabelRequirement)))


def read_labels(reader: Reader, table: Mapping[str, Any], base: str,
                key: str) -> dict[str, str] | Marker:
    errors_before = len(reader.errors)
    labels = reader.take_str_map(table, base, key)
    if isinstance(labels, dict):
        for name, value in labels.items():
            if problem := label_key_problem(name) or label_value_problem(value):
                reader.fail(key_path(key_path(base, key), name), problem)
    return labels if len(reader.errors) == errors_before else INVALID


def read_expression(reader: Reader, entry: Mapping[str, Any],
                    path: str) -> model.LabelRequirement | Marker:
    errors_before = len(reader.errors)
    reader.check_keys(entry, path, EXPRESSION_KEYS)
    key = reader.take(entry, path, "key", "a string", REQUIRED)
    if isinstance(key, str) and (problem := label_key_problem(key)):
        reader.fail(key_path(path, "key"), problem)
    operator = reader.take(entry, path, "operator", "a string", REQUIRED)
    if isinstance(operator, str) and operator not in OPERATORS:
        hint = next((o for o in OPERATORS if o.lower() == operator.lower()), None)
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        operator = reader.fail(key_path(path, "operator"), f"must be one of "
                               f"{', '.join(OPERATORS)}, got {operator!r}{suggestion}")
    values = reader.take(entry, path, "values", "an array", [])
    values_path = key_path(path, "values")
    if isinstance(values, list):
        for index, value in enumerate(values):
            item_path = f"{values_path}[{index}]"
            if not isinstance(value, str):
                reader.fail(item_path, f"expected a string, got {type_name(value)}")
            elif problem := label_value_problem(value):
                reader.fail(item_path, problem)
        if operator in VALUED_OPERATORS and not values:
            reader.fail(values_path, f"operator {operator} needs at least one value")
        elif isinstance(operator, str) and operator not in VALUED_OPERATORS and values:
            reader.fail(values_path, f"must be empty for operator {operator}")
    if len(reader.errors) != errors_before:
        return INVALID
    assert isinstance(key, str) and isinstance(operator, str) and isinstance(values, list)
    return model.LabelRequirement(key=key, operator=operator, values=tuple(values))


def policy_table(policy: model.NetworkPolicy) -> dict[str, Any]:
    """A policy written back as its ``[[network_policies]]`` table (JSON-ready), defaults
    made explicit; reading it again gives the same policy."""
    def selector(value: model.LabelSelector) -> dict[str, Any]:
        written: dict[str, Any] = {"match_labels": dict(value.match_labels)}
        if value.match_expressions:
            written["match_expressions"] = [
                {"key": e.key, "operator": e.operator, **({"values": list(e.values)}
                                                          if e.values else {})}
                for e in value.match_expressions]
        return written

    def peer(value: model.PolicyPeer) -> dict[str, Any]:
        written: dict[str, Any] = {}
        if value.pod_selector is not None:
            written["pod_selector"] = selector(value.pod_selector)
        if value.namespace_selector is not None:
            written["namespace_selector"] = selector(value.namespace_selector)
        if value.ip_block is not None:
            written["ip_block"] = {"cidr": str(value.ip_block.cidr),
                                   "except": [str(n) for n in value.ip_block.except_]}
        return written

    def port(value: model.PolicyPort) -> dict[str, Any]:
        written: dict[str, Any] = {"protocol": value.protocol}
        if value.port is not None:
            written["port"] = value.port
        if value.end_port is not None:
            written["end_port"] = value.end_port
        return written

    def rules(values: tuple[model.PolicyRule, ...], peers_key: str) -> list[dict[str, Any]]:
        return [{peers_key: [peer(p) for p in rule.peers], "ports": [port(p) for p in rule.ports]}
                for rule in values]

    return {
        "name": policy.name,
        "namespace": policy.namespace,
        "pod_selector": selector(policy.pod_selector),
        "policy_types": list(policy.policy_types),
        "ingress": rules(policy.ingress, PEERS_KEY["ingress"]),
        "egress": rules(policy.egress, PEERS_KEY["egress"]),
    }
