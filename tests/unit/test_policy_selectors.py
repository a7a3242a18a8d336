"""Label selectors as Kubernetes evaluates them: match_labels AND match_expressions."""
from __future__ import annotations

from types import MappingProxyType

import pytest

from vswitch.model import LabelRequirement, LabelSelector
from vswitch.policy.selectors import requirement_matches, selector_matches

WEB_PROD = {"app": "web", "env": "prod"}
WEB_DEV = {"app": "web", "env": "dev"}
DB = {"app": "db"}
UNLABELLED: dict[str, str] = {}


def selector(labels: dict[str, str] | None = None,
             *expressions: tuple[str, str, tuple[str, ...]]) -> LabelSelector:
    return LabelSelector(MappingProxyType(labels or {}),
                         tuple(LabelRequirement(k, op, values) for k, op, values in expressions))


def test_an_empty_selector_matches_everything() -> None:
    for labels in (WEB_PROD, DB, UNLABELLED):
        assert selector_matches(LabelSelector(), labels)


def test_match_labels_needs_every_pair() -> None:
    web = selector({"app": "web"})
    assert selector_matches(web, WEB_PROD) and selector_matches(web, WEB_DEV)
    assert not selector_matches(web, DB) and not selector_matches(web, UNLABELLED)
    web_prod = selector({"app": "web", "env": "prod"})
    assert selector_matches(web_prod, WEB_PROD) and not selector_matches(web_prod, WEB_DEV)


def test_an_empty_label_value_is_a_value() -> None:
    empty = selector({"tier": ""})
    assert selector_matches(empty, {"tier": ""})
    assert not selector_matches(empty, UNLABELLED)
    assert not selector_matches(empty, {"tier": "x"})


@pytest.mark.parametrize("operator, values, expected", [
    # labels:          WEB_PROD, WEB_DEV, DB, UNLABELLED  (key "env")
    ("In", ("prod",), (True, False, False, False)),
    ("In", ("prod", "dev"), (True, True, False, False)),
    # NotIn matches pods without the key, as in Kubernetes.
    ("NotIn", ("prod",), (False, True, True, True)),
    ("NotIn", ("prod", "dev"), (False, False, True, True)),
    ("Exists", (), (True, True, False, False)),
    ("DoesNotExist", (), (False, False, True, True)),
])
def test_expressions(operator: str, values: tuple[str, ...],
                     expected: tuple[bool, ...]) -> None:
    requirement = LabelRequirement("env", operator, values)
    got = tuple(requirement_matches(requirement, labels)
                for labels in (WEB_PROD, WEB_DEV, DB, UNLABELLED))
    assert got == expected
    assert got == tuple(selector_matches(selector(None, ("env", operator, values)), labels)
                        for labels in (WEB_PROD, WEB_DEV, DB, UNLABELLED))


def test_labels_and_expressions_are_anded() -> None:
    web_not_prod = selector({"app": "web"}, ("env", "NotIn", ("prod",)))
    assert [selector_matches(web_not_prod, labels) for labels in (WEB_PROD, WEB_DEV, DB)] == [
        False, True, False]
    two_expressions = selector(None, ("app", "In", ("web", "db")), ("env", "DoesNotExist", ()))
    assert [selector_matches(two_expressions, labels) for labels in (WEB_PROD, DB, UNLABELLED)] == [
        False, True, False]


def test_an_unknown_operator_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Gt"):
        requirement_matches(LabelRequirement("env", "Gt", ("1",)), WEB_PROD)
