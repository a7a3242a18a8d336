"""``[[network_policies]]``: NetworkPolicy objects with the semantics of networking.k8s.io/v1."""
from __future__ import annotations

from typing import Any, Mapping

from vswitch import model
from vswitch.config.reader import Reader


def read_network_policies(reader: Reader, document: Mapping[str, Any],
                          namespaces: tuple[model.Namespace, ...]
                          ) -> tuple[model.NetworkPolicy, ...]:
    """Every policy of the file; mistakes go to ``reader`` with their key paths."""
    return ()
