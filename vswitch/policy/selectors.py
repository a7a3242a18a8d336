"""Label selectors as Kubernetes evaluates them (``metav1.LabelSelector``).

A selector is the AND of its ``match_labels`` (each key present with that value) and its
``match_expressions``; an empty selector matches every set of labels. Expressions:

* ``In``: the key is present and its value is one of ``values``;
* ``NotIn``: the key is absent, or its value is none of ``values`` (absent keys match, as in
  Kubernetes, so ``env NotIn (prod)`` selects pods without an ``env`` label);
* ``Exists`` / ``DoesNotExist``: the key is present / absent, whatever its value.
"""
from __future__ import annotations

from typing import Mapping

from vswitch.model import LabelRequirement, LabelSelector


def requirement_matches(requirement: LabelRequirement, labels: Mapping[str, str]) -> bool:
    operator = requirement.operator
    if operator == "In":
        return requirement.key in labels and labels[requirement.key] in requirement.values
    if operator == "NotIn":
        return requirement.key not in labels or labels[requirement.key] not in requirement.values
    if operator == "Exists":
        return requirement.key in labels
    if operator == "DoesNotExist":
        return requirement.key not in labels
    raise ValueError(f"unknown label selector operator {operator!r}")


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    return (all(labels.get(key) == value for key, value in selector.match_labels.items())
            and all(requirement_matches(r, labels) for r in selector.match_expressions))
