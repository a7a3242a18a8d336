"""``[[namespaces]]``: the namespaces of the cluster as this node sees them, with their labels.

Pods, services and network policies name a namespace; as in Kubernetes it must exist, so a name
the file does not declare is an error at the entry that uses it. ``default`` and ``kube-system``
always exist (declaring them only adds labels). Every namespace carries the label
``kubernetes.io/metadata.name`` with its own name, which Kubernetes sets and users select on.
"""
from __future__ import annotations

from typing import Any, Mapping

from vswitch import model
from vswitch.config.names import (DNS_LABEL_MAX, dns_label_problem, label_key_problem,
                                  label_value_problem)
from vswitch.config.reader import REQUIRED, Reader, key_path

NAMESPACE_KEYS = ("name", "labels")


def read_namespaces(reader: Reader, document: Mapping[str, Any], *,
                    builtin: bool = True) -> tuple[model.Namespace, ...]:
    """The declared namespaces, in file order, then (with ``builtin``) the built-in ones that
    were not declared."""
    found: dict[str, model.Namespace] = {}
    first_use: dict[str, str] = {}
    for path, table in reader.entries(document, "", "namespaces"):
        reader.check_keys(table, path, NAMESPACE_KEYS)
        name = reader.take(table, path, "name", "a string", REQUIRED)
        if isinstance(name, str) and (problem := dns_label_problem(name, DNS_LABEL_MAX)):
            name = reader.fail(key_path(path, "name"), problem)
        labels = reader.take_str_map(table, path, "labels")
        if isinstance(labels, dict):
            labels_path = key_path(path, "labels")
            for key, value in labels.items():
                if problem := label_key_problem(key) or label_value_problem(value):
                    reader.fail(key_path(labels_path, key), problem)
                elif key == model.NAMESPACE_NAME_LABEL and value != name:
                    reader.fail(key_path(labels_path, key),
                                "is set by the namespace's name and cannot be given another value")
        if not isinstance(name, str):
            continue
        if name in first_use:
            reader.fail(key_path(path, "name"),
                        f"duplicate namespace {name!r} (first declared at {first_use[name]})")
            continue
        first_use[name] = key_path(path, "name")
        found[name] = model.Namespace(
            name, model.namespace_labels(name, labels if isinstance(labels, dict) else {}))
    if builtin:
        for name in model.BUILTIN_NAMESPACES:
            found.setdefault(name, model.Namespace(name, model.namespace_labels(name)))
    return tuple(found.values())


def merge_namespaces(running: tuple[model.Namespace, ...],
                     declared: tuple[model.Namespace, ...]) -> tuple[model.Namespace, ...]:
    """``running`` with ``declared`` replacing their namesakes and the new ones appended; a
    topology built by hand without namespaces runs with the built-in ones."""
    merged = {namespace.name: namespace for namespace in running}
    for name in model.BUILTIN_NAMESPACES:
        merged.setdefault(name, model.Namespace(name, model.namespace_labels(name)))
    merged.update((namespace.name, namespace) for namespace in declared)
    return tuple(merged.values())


def namespace_problem(name: str, namespaces: tuple[model.Namespace, ...]) -> str | None:
    """Why ``name`` cannot be used as a namespace here (not declared), or None."""
    if any(namespace.name == name for namespace in namespaces):
        return None
    declared = ", ".join(namespace.name for namespace in namespaces)
    return f"namespace {name!r} is not declared in [[namespaces]] (namespaces: {declared})"
