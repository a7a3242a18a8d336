"""Typed access to a parsed TOML document, and the sink of every mistake found in it.

Theory of operation: a ``Reader`` lives for one parse. The section modules take it as their first
argument and read each value through its accessors, which check the TOML type (and for some the
range or syntax) and report a mistake with ``fail(path, reason)``: that appends the pair to
``errors`` and returns ``INVALID``, which the caller keeps in place of the value. A value that is
``INVALID`` has been reported already, so checks that depend on it are skipped instead of burying
its error under a cascade. After the whole document is read, an empty ``errors`` list is the only
way to a model object.

Key paths are written the way the user sees the file: ``node.pod_cidr``, ``pods[2].ip``,
``pods[0].containers[1].name``, ``pods[0].labels."app.kubernetes.io/name"`` (see ``key_path``).
Unknown keys are errors, never silently ignored, because a misspelt optional key would otherwise
quietly fall back to its default.
"""
from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
from datetime import date, datetime, time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence

from vswitch.config.addresses import address_problem
from vswitch.config.errors import ConfigError

MTU_MIN = 576  # the smallest datagram every IPv4 host must accept (RFC 791)
# A TAP frame carries the vnet header on top of the MTU; 9000 stays clear of 64 KiB reads.
MTU_MAX = 9000
PREFIX_MIN = 8
PREFIX_MAX = 30  # a /31 or /32 has no room for a gateway and a pod
# Sections planned for a later version; named apart from typos.
RESERVED_SECTIONS = ("networks",)

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


class Marker(enum.Enum):
    # A value that was reported as wrong; checks that depend on it are skipped.
    INVALID = "invalid"
    # Passed as a default: the key must be present.
    REQUIRED = "required"


INVALID = Marker.INVALID
REQUIRED = Marker.REQUIRED

_KINDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "a string": (str,),
        "a boolean": (bool,),
        "an integer": (int,),
        "a number": (int, float),
        "a table": (dict,),
        "an array": (list,),
        "an array of tables": (list,),  # the entries are checked one by one, with their index
    }
)


def load_document(text: str, source: str) -> dict[str, Any]:
    """The TOML text as Python values; a syntax error names the file only."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    # bool before int: a TOML boolean is a Python int as well.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is_kind(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "a boolean"
    return isinstance(value, _KINDS[kind])


def key_path(base: str, key: str) -> str:
    """The path of ``key`` inside the table at ``base``, quoted as TOML would need it."""
    if not _BARE_KEY.match(key):
        key = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{base}.{key}" if base else key


class Reader:
    """The error sink of one parse, with typed accessors; it holds nothing but the error list.

    An instance lives for a single document (or runtime change); the section modules read
    through it and ``errors`` decides at the end whether anything is built.
    """

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, reason: str) -> Marker:
        self.errors.append((path, reason))
        return INVALID

    def check_keys(self, table: Mapping[str, Any], base: str, allowed: Sequence[str]) -> None:
        for key in table:
            if key in allowed:
                continue
            if not base and key in RESERVED_SECTIONS:
                # Named apart from typos: these sections are planned, and a file written for a
                # later version must fail clearly rather than run without its services or routes.
                self.fail(key, f"section '{key}' is not supported by this version of vswitch yet")
                continue
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            self.fail(key_path(base, key),
                      f"unknown key; {suggestion}allowed here: {', '.join(allowed)}")

    def take(self, table: Mapping[str, Any], base: str, key: str, kind: str, default: Any) -> Any:
        """``table[key]`` if of the right TOML type; ``default`` if absent; INVALID otherwise."""
        path = key_path(base, key)
        if key not in table:
            if default is REQUIRED:
                return self.fail(path, "required key is missing")
            return default
        value = table[key]
        if not _is_kind(value, kind):
            return self.fail(path, f"expected {kind}, got {type_name(value)}")
        return value

    def section(self, document: Mapping[str, Any], name: str, required: bool) -> Any:
        return self.take(document, "", name, "a table", REQUIRED if required else {})

    def entries(self, document: Mapping[str, Any], base: str,
                key: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The tables of an array of tables, each with its path; an entry of another type fails.

        A generator, so that each entry's mistakes are reported in file order, between those the
        caller finds in the entries before and after it.
        """
        raw = self.take(document, base, key, "an array of tables", [])
        if raw is INVALID:
            return
        for index, entry in enumerate(raw):
            path = f"{key_path(base, key)}[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {type_name(entry)}")
                continue
            yield path, entry

    def take_int(
        self,
        table: Mapping[str, Any],
        base: str,
        key: str,
        default: Any,
        low: int,
        high: int | None = None,
    ) -> int | Marker:
        value = self.take(table, base, key, "an integer", default)
        if value is INVALID or key not in table:
            return value
        if value < low or (high is not None and value > high):
            allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
            return self.fail(key_path(base, key), f"must be {allowed}, got {value}")
        return value

    def take_mtu(self, table: Mapping[str, Any], base: str, default: Any) -> int | None | Marker:
        """The ``mtu`` key; ``default`` when absent (None, or the MTU it inherits)."""
        return self.take_int(table, base, "mtu", default, MTU_MIN, MTU_MAX)

    def take_choice(self, table: Mapping[str, Any], base: str, key: str, choices: Sequence[str],
                    default: str) -> str | Marker:
        value = self.take(table, base, key, "a string", default)
        if isinstance(value, str) and value not in choices:
            hint = next((c for c in choices if c.lower() == value.lower()), None)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            return self.fail(key_path(base, key),
                             f"must be one of {', '.join(map(repr, choices))}, "
                             f"got {value!r}{suggestion}")
        return value

    def take_address(
        self, table: Mapping[str, Any], base: str, key: str
    ) -> IPv4Address | None | Marker:
        text = self.take(table, base, key, "a string", None)
        if text is None or text is INVALID:
            return text
        try:
            return IPv4Address(text)
        except ValueError:
            return self.fail(key_path(base, key), f"{text!r} is not an IPv4 address")

    def take_addresses(self, table: Mapping[str, Any], base: str,
                       key: str) -> list[tuple[str, IPv4Address]] | Marker:
        """An array of IPv4 address strings, each with its own path, duplicates refused."""
        raw = self.take(table, base, key, "an array", [])
        if raw is INVALID:
            return INVALID
        path = key_path(base, key)
        result: list[tuple[str, IPv4Address]] = []
        seen: set[IPv4Address] = set()
        valid = True
        for index, item in enumerate(raw):
            item_path = f"{path}[{index}]"
            if not isinstance(item, str):
                self.fail(item_path, f"expected a string, got {type_name(item)}")
                valid = False
                continue
            try:
                address = IPv4Address(item)
            except ValueError:
                self.fail(item_path, f"{item!r} is not an IPv4 address")
                valid = False
                continue
            if address in seen:
                self.fail(item_path, f"{address} is listed twice")
                valid = False
                continue
            seen.add(address)
            result.append((item_path, address))
        return result if valid else INVALID

    def take_path(self, table: Mapping[str, Any], base: str, key: str, default: Any) -> Any:
        value = self.take(table, base, key, "a string", default)
        if value is INVALID or key not in table:
            return value
        path = key_path(base, key)
        if "\0" in value:
            return self.fail(path, "must not contain a NUL character")
        if not os.path.isabs(value):
            return self.fail(path, f"expected an absolute path, got {value!r}")
        return value

    def take_str_map(self, table: Mapping[str, Any], base: str,
                     key: str) -> dict[str, str] | Marker:
        """A table of strings to strings (labels, env); keys are checked by the caller."""
        raw = self.take(table, base, key, "a table", {})
        if raw is INVALID:
            return INVALID
        result: dict[str, str] = {}
        path = key_path(base, key)
        for name, value in raw.items():
            if not isinstance(value, str):
                self.fail(key_path(path, name), f"expected a string, got {type_name(value)}")
                continue
            result[name] = value
        return result

    def parse_cidr(
        self, text: str, path: str, low: int = PREFIX_MIN, high: int = PREFIX_MAX
    ) -> IPv4Network | Marker:
        if "/" not in text:
            return self.fail(path, f"expected an IPv4 network like 10.244.1.0/24, got {text!r}")
        try:
            interface = IPv4Interface(text)
        except ValueError:
            return self.fail(path, f"{text!r} is not an IPv4 network like 10.244.1.0/24")
        network = interface.network
        if not low <= network.prefixlen <= high:
            return self.fail(path, f"prefix length /{network.prefixlen} is outside /{low}../{high}")
        if interface.ip != network.network_address:
            return self.fail(path, f"{text!r} has host bits set; did you mean {network}?")
        return network

    def parse_interface(self, text: str, path: str) -> IPv4Interface | Marker:
        """An address with its network's prefix length, such as ``192.0.2.2/24``."""
        if "/" not in text:
            return self.fail(path, f"expected an address with its prefix length like "
                                   f"192.0.2.2/24, got {text!r}")
        try:
            interface = IPv4Interface(text)
        except ValueError:
            return self.fail(path, f"{text!r} is not an IPv4 address with a prefix length like "
                                   "192.0.2.2/24")
        network = interface.network
        if not PREFIX_MIN <= network.prefixlen <= PREFIX_MAX:
            return self.fail(path, f"prefix length /{network.prefixlen} is outside "
                                   f"/{PREFIX_MIN}../{PREFIX_MAX}")
        if problem := address_problem(interface.ip, network, str(network)):
            return self.fail(path, problem)
        return interface
