"""The label sets of tracked connections, each stored once however many connections carry it.

Why a module of its own: a connection's labels (its service, port, kind and backend, for
``vswitchctl conntrack`` filters and rows) are free-form dicts, and most of them are equal: the
connections of one service to one backend all carry the same. Kept per connection they were the
largest part of a tracked connection's memory; here the conntrack table keeps an id per slot.

Theory of operation
-------------------
* A set is two tuples, its keys (one tuple object for all the sets with the same keys) and its
  values, found through a dict per keys tuple from the values tuple to the id, with a reference
  count per id; ids of forgotten sets are reused.
* Nothing here calls ``hash()`` (salted per process): the dicts hash the tuples themselves, and
  which id a set gets depends only on the order of calls.
* String values are shared between sets through a table of them, rebuilt from the live sets
  whenever it has doubled, so that sets which differ in one value (the backend) share the others
  (the service).
* A set with a value that cannot be hashed is stored on its own, not shared.
"""
from __future__ import annotations

from typing import Any

_STRINGS_REBUILD_MIN = 1024
_NO_SETS: dict[tuple, int] = {}


class LabelSets:
    """Label sets stored once each: ``intern`` gives an id (and takes a reference), ``get`` the
    labels as a new dict, ``release`` drops a reference and forgets the set with its last one.

    A set is kept as two tuples, its keys (one tuple object for all the sets with the same keys)
    and its values, found through a dict per keys tuple from the values tuple to the id. String
    values are shared between sets (a table of them, rebuilt from the live sets whenever it has
    doubled), so that sets which differ in one value (the backend) share the others (the
    service). A set with a value that cannot be hashed is stored on its own, not shared."""

    def __init__(self) -> None:
        # keys tuple -> (that tuple, values tuple -> id)
        self._groups: dict[tuple, tuple[tuple, dict[tuple, int]]] = {}
        self._keys: list[Any] = []  # id -> keys tuple, or None for a free id
        self._values: list[Any] = []  # id -> values tuple
        self._group_of: list[Any] = []  # id -> its group, or None when not shared
        self._references: list[int] = []
        self._free: list[int] = []
        self._strings: dict[str, str] = {}
        self._strings_rebuild_at = _STRINGS_REBUILD_MIN

    def __len__(self) -> int:
        return len(self._keys) - len(self._free)

    def intern(self, labels: dict[str, Any]) -> int:
        keys = tuple(labels)
        values = tuple(labels.values())
        group = self._groups.get(keys)
        try:  # (an empty dict's get still hashes the key)
            found = (group[1] if group is not None else _NO_SETS).get(values)
        except TypeError:  # a value that cannot be hashed
            return self._store(keys, values, None)
        if found is not None:
            self._references[found] += 1
            return found
        if group is None:
            group = self._groups[keys] = (keys, {})
        strings = self._strings
        values = tuple(strings.setdefault(v, v) if type(v) is str else v for v in values)
        if len(strings) >= self._strings_rebuild_at:
            self._rebuild_strings()
        label_id = self._store(group[0], values, group)
        group[1][values] = label_id
        return label_id

    def sets(self) -> list[tuple[int, dict[str, Any]]]:
        """Every set in use, with its id: O(sets), not O(connections)."""
        return [(label_id, dict(zip(keys, self._values[label_id])))
                for label_id, keys in enumerate(self._keys) if keys is not None]

    def get(self, label_id: int) -> dict[str, Any]:
        return dict(zip(self._keys[label_id], self._values[label_id]))

    def release(self, label_id: int) -> None:
        references = self._references[label_id] - 1
        self._references[label_id] = references
        if references:
            return
        group = self._group_of[label_id]
        if group is not None:
            del group[1][self._values[label_id]]
            if not group[1]:
                del self._groups[group[0]]
        self._keys[label_id] = self._values[label_id] = self._group_of[label_id] = None
        self._free.append(label_id)

    def _store(self, keys: tuple, values: tuple, group: Any) -> int:
        if self._free:
            label_id = self._free.pop()
            self._keys[label_id], self._values[label_id] = keys, values
            self._group_of[label_id] = group
            self._references[label_id] = 1
            return label_id
        self._keys.append(keys)
        self._values.append(values)
        self._group_of.append(group)
        self._references.append(1)
        return len(self._keys) - 1

    def _rebuild_strings(self) -> None:
        """Keep only the strings live sets use."""
        self._strings = {v: v for values in self._values if values is not None
                         for v in values if type(v) is str}
        self._strings_rebuild_at = max(_STRINGS_REBUILD_MIN, 2 * len(self._strings))
