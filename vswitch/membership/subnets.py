"""``pod_cidr = "auto"``: take a free pod subnet from the cluster pool, safely under concurrency.

Each subnet of the pool has its own key, ``/vswitch/<cluster>/subnets/<network>-<prefixlen>``,
whose value is the name of the node that holds it and which lives under that node's lease (so a
node that is gone for good frees its subnet when its lease expires). A node takes a subnet with a
transaction that creates the key only if it does not exist (``create_revision == 0``): of two nodes
that race for the same subnet, exactly one wins and the other moves on to the next.

Stickiness: a node first looks for a subnet that still names it (a restart within the lease TTL)
and takes it back under its new lease. Otherwise it tries the subnets starting at a position
derived from its name, so the same node usually lands on the same subnet again after a longer
absence, and nodes starting together rarely contend for the same first choice.
"""
from __future__ import annotations

import hashlib
from ipaddress import IPv4Network

from .etcd import EtcdClient
from .members import Claim


class PoolExhausted(Exception):
    """Every subnet of the pool is held by some node."""


def subnets_prefix(cluster: str) -> str:
    return f"/vswitch/{cluster}/subnets/"


def subnet_key(cluster: str, subnet: IPv4Network) -> str:
    return f"{subnets_prefix(cluster)}{subnet.network_address}-{subnet.prefixlen}"


def candidate_order(pool: IPv4Network, prefixlen: int, node: str) -> list[IPv4Network]:
    """Every subnet of the pool, in the order ``node`` tries them (from a name-derived start)."""
    subnets = list(pool.subnets(new_prefix=prefixlen))
    start = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") % len(subnets)
    return subnets[start:] + subnets[:start]


async def claim_subnet(client: EtcdClient, key: str, node: str, lease: int) -> bool:
    """Hold ``key`` for ``node`` under ``lease``: create it, or re-attach it if it names us."""
    owner = node.encode()
    if await client.put_if_absent(key, owner, lease=lease):
        return True
    return await client.put_if_value(key, owner, owner, lease=lease)


async def allocate_pod_cidr(
    client: EtcdClient, cluster: str, node: str, pool: IPv4Network, prefixlen: int, lease: int
) -> IPv4Network:
    """A subnet of ``pool`` now held by ``node`` under ``lease``; PoolExhausted if none is free."""
    held = await client.list_prefix(subnets_prefix(cluster))
    taken = set()
    for kv in held.kvs:
        taken.add(kv.key)
        if kv.value == node.encode():
            network, _, length = kv.key.rpartition("/")[2].partition("-")
            subnet = IPv4Network(f"{network}/{length}")
            if subnet.subnet_of(pool) and subnet.prefixlen == prefixlen:
                if await claim_subnet(client, kv.key, node, lease):
                    return subnet
    for subnet in candidate_order(pool, prefixlen, node):
        key = subnet_key(cluster, subnet)
        if key not in taken and await client.put_if_absent(key, node.encode(), lease=lease):
            return subnet
    raise PoolExhausted(f"no free /{prefixlen} left in {pool} for node {node!r}")


def subnet_claim(cluster: str, node: str, subnet: IPv4Network) -> Claim:
    """The claim that keeps ``subnet`` ours when :class:`Membership` moves to a new lease."""
    key = subnet_key(cluster, subnet)

    async def claim(client: EtcdClient, lease: int) -> bool:
        return await claim_subnet(client, key, node, lease)

    return claim
