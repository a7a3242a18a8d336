"""Syntax checks of the names and labels a topology gives: each says why a name is wrong, or None.

The rules are Kubernetes' where Kubernetes has one (DNS-1123 labels for objects, its label key
and value syntax, IANA service names for ports), so that names and selectors written for a cluster
work here unchanged. The checks return a reason rather than failing themselves: the caller knows
the key path the name came from.
"""
from __future__ import annotations

import os
import re

from vswitch.model import IFNAMSIZ

DNS_LABEL_MAX = 63
NETNS_NAME_MAX = 255  # a file name under /run/netns
# Pod namespaces are "vsw-<node>.<namespace>.<pod>"; a far side named like one could be taken for a pod's
# leftover and removed by a cleanup.
POD_NETNS_PREFIX = "vsw-"

_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*\Z"
)
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_PORT_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\Z")


def dns_label_problem(name: str, limit: int) -> str | None:
    if not name:
        return "must not be empty"
    if len(name) > limit:
        return f"{name!r} is {len(name)} characters long; at most {limit} are allowed"
    if not _DNS_LABEL.match(name):
        return (
            f"{name!r} is not a DNS-1123 label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return (f"label key {key!r} has an invalid prefix; it must be a DNS subdomain like "
                "'example.com'")
    if not name or len(name) > DNS_LABEL_MAX or not _LABEL_NAME.match(name):
        return (
            f"label key {key!r} is invalid: the name part must be 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value and (len(value) > DNS_LABEL_MAX or not _LABEL_NAME.match(value)):
        return (
            f"label value {value!r} is invalid: it must be empty or 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def port_name_problem(name: str) -> str | None:
    """IANA service name syntax, which Kubernetes requires of named ports."""
    if not name or len(name) > 15:
        return f"port name {name!r} must be 1-15 characters long"
    if not _PORT_NAME.match(name) or "--" in name or not any(ch.isalpha() for ch in name):
        return (
            f"port name {name!r} is invalid: use lowercase letters, digits and single '-', "
            "with at least one letter"
        )
    return None


def netns_name_problem(name: str) -> str | None:
    """A named network namespace is a file under /run/netns, and must not look like a pod's."""
    if not name:
        return "must not be empty"
    if name in (".", "..") or "/" in name or "\0" in name:
        return f"{name!r} is not a usable namespace name (a file name under /run/netns)"
    if len(os.fsencode(name)) > NETNS_NAME_MAX:
        return f"is longer than {NETNS_NAME_MAX} bytes"
    if name.startswith(POD_NETNS_PREFIX):
        return (f"{name!r} starts with {POD_NETNS_PREFIX!r}, which vswitchd uses for pod "
                "namespaces; choose another name")
    return None


def interface_name_problem(name: str) -> str | None:
    """A Linux interface name, as the kernel's ``dev_valid_name`` accepts it."""
    if not name:
        return "must not be empty"
    if len(os.fsencode(name)) > IFNAMSIZ:
        return f"{name!r} is longer than {IFNAMSIZ} bytes (the kernel's IFNAMSIZ)"
    if name in (".", "..") or any(ch in name for ch in "/:\0") or any(ch.isspace() for ch in name):
        return (f"{name!r} is not a valid interface name: no '/', ':', NUL or whitespace, "
                "and not '.' or '..'")
    return None
