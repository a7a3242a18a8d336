"""What a pod's stub resolver does with a name: the resolv.conf it is given and the names it
then asks for, in order.

Every pod's resolv.conf names the cluster DNS address, the search list of its namespace
(``<ns>.svc.<domain> svc.<domain> <domain>``) and ``ndots:5``, as the kubelet writes it. With
that, glibc and most stub resolvers try a name with fewer than five dots with each search domain
appended first and as written last; a name with five dots or more, as written first; a name
ending in a dot only as written. ``vswitchctl dns`` follows the same order, so that it shows
what a pod of the namespace would get.
"""
from __future__ import annotations

from ipaddress import IPv4Address

NDOTS = 5


def search_list(namespace: str, domain: str) -> tuple[str, ...]:
    return (f"{namespace}.svc.{domain}", f"svc.{domain}", domain)


def resolv_conf_text(nameserver: IPv4Address, namespace: str, domain: str) -> str:
    return (f"# written by vswitchd: cluster DNS for pods of namespace {namespace}\n"
            f"nameserver {nameserver}\n"
            f"search {' '.join(search_list(namespace, domain))}\n"
            f"options ndots:{NDOTS}\n")


def candidates(name: str, namespace: str, domain: str) -> list[str]:
    """The absolute names a stub resolver asks for ``name``, in order."""
    if name.endswith("."):
        return [name]
    expanded = [f"{name}.{suffix}." for suffix in search_list(namespace, domain)]
    if name.count(".") >= NDOTS:
        return [f"{name}.", *expanded]
    return [*expanded, f"{name}."]
