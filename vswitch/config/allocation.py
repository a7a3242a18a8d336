"""Addresses and ports the file leaves open: pod IPs, cluster IPs and node ports.

Theory of operation: allocation is deterministic, so the same file always yields the same
addresses, MACs and kernel names, and a restart after a crash finds exactly what an earlier run
created. Each pool is filled in three passes over the entries, in file order:

1. explicit values of the file are checked (inside the pool, not reserved, not used twice) and
   placed; the file always wins a clash;
2. kept values are placed: on a reload or a runtime change, an entry that stays and has no
   explicit value keeps the one it runs with (``previous``) while that is still valid and free.
   Kubernetes never renumbers a running pod or service, and a reload that did would delete and
   re-create pods merely because an earlier entry of the file went away;
3. the rest are allocated from the pool in its order (``allocation_order`` for addresses, the
   bottom of the range upwards for node ports), skipping everything placed so far.

Placing kept values before any allocation means no entry listed earlier in the file takes the
address of one that stays; placing them after the explicit ones means the running entry moves
when the file asks for its address. Each segment allocates its pods' addresses on its own.
"""
from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from vswitch import model
from vswitch.config.addresses import address_problem, segment_label
from vswitch.config.pods import PodDraft
from vswitch.config.reader import INVALID, Marker, Reader, key_path
from vswitch.config.segments import SegmentDraft
from vswitch.model import Pod

if TYPE_CHECKING:
    from vswitch.config.services import ServiceDraft, ServicePortDraft

ALLOCATION_OFFSET = 10  # the first address handed to a pod without an explicit ip: network + 10


def allocation_order(cidr: IPv4Network) -> Iterator[IPv4Address]:
    """Usable addresses of ``cidr`` in the order pods without an explicit ``ip`` receive them.

    The order starts at network + 10, leaving the low addresses for hand-picked infrastructure
    (the gateway sits at network + 1 by default), runs up to the last usable address and then
    wraps around to network + 1. The caller skips addresses that are already taken.
    """
    base = int(cidr.network_address)
    last = cidr.num_addresses - 2  # the offset of the last usable address; the broadcast follows
    start = ALLOCATION_OFFSET if ALLOCATION_OFFSET <= last else 1
    for offset in itertools.chain(range(start, last + 1), range(1, start)):
        yield IPv4Address(base + offset)


def allocate_pod_addresses(
    reader: Reader, drafts: Sequence[PodDraft], segments: Sequence[SegmentDraft],
    previous: Mapping[str, Pod] | None = None,
) -> list[IPv4Address | Marker]:
    """Resolve each pod's segment, check explicit addresses, allocate the rest.

    One entry per draft. Each segment allocates on its own, in file order, from its own CIDR.
    ``previous`` maps the names of pods that run already to their running version: such a
    pod without an explicit address keeps its running one while it is valid and free.
    """
    previous = previous or {}
    by_name = {s.name: s for s in segments if isinstance(s.name, str)}
    # A segment whose name is wrong cannot be found; its pods would only repeat that error.
    all_named = len(by_name) == len(segments)
    result: list[IPv4Address | Marker] = [INVALID] * len(drafts)
    members: dict[int, list[int]] = {id(s): [] for s in segments}
    for index, draft in enumerate(drafts):
        if not isinstance(draft.segment, str):
            continue
        segment = by_name.get(draft.segment)
        if segment is None:
            if all_named:
                reader.fail(
                    key_path(draft.path, "segment"),
                    f"unknown segment {draft.segment!r}; segments: {', '.join(by_name)}",
                )
            continue
        members[id(segment)].append(index)

    for segment in segments:
        cidr, name = segment.cidr, segment.name
        if not (isinstance(cidr, IPv4Network) and isinstance(name, str)
                and isinstance(segment.gateway, IPv4Address)):
            continue
        label = segment_label(name, cidr)
        taken = dict(segment.reserved)
        explicit: dict[IPv4Address, str] = {}
        for index in members[id(segment)]:
            draft = drafts[index]
            ip = draft.ip
            path = key_path(draft.path, "ip")
            if isinstance(ip, IPv4Address):
                if problem := address_problem(ip, cidr, label):
                    home = next((s for s in segments if isinstance(s.cidr, IPv4Network)
                                 and ip in s.cidr and s is not segment), None)
                    if home is not None and isinstance(home.name, str) and ip not in cidr:
                        problem += (f" (it is in segment {home.name}; set "
                                    f"{key_path(draft.path, 'segment')} = \"{home.name}\")")
                    ip = reader.fail(path, problem)
                elif ip in taken:
                    ip = reader.fail(path, f"{ip} is the address of {taken[ip]}")
                elif ip in explicit:
                    ip = reader.fail(path, f"{ip} is already used at {explicit[ip]}")
                else:
                    explicit[ip] = path
            result[index] = INVALID if ip is None else ip

        kept: dict[IPv4Address, int] = {}
        for index in members[id(segment)]:
            draft = drafts[index]
            old = previous.get(draft.key) if draft.key is not None else None
            if (draft.ip is None and old is not None and old.segment == name
                    and address_problem(old.ip, cidr) is None
                    and old.ip not in taken and old.ip not in explicit
                    and old.ip not in kept):
                kept[old.ip] = index
                result[index] = old.ip

        reserved = set(taken) | set(explicit) | set(kept)
        kept_indices = set(kept.values())
        candidates = (a for a in allocation_order(cidr) if a not in reserved)
        for index in members[id(segment)]:
            draft = drafts[index]
            if draft.ip is not None or index in kept_indices:
                continue
            address = next(candidates, None)
            if address is None:
                result[index] = reader.fail(
                    draft.path, f"no free address left in {label} for this pod"
                )
            else:
                result[index] = address
    return result


def allocate_cluster_ips(
    reader: Reader, drafts: Sequence[ServiceDraft], service_cidr: IPv4Network | None,
    kept: Sequence[model.Service], previous: Mapping[str, model.Service],
    dns_ip: IPv4Address | None,
) -> list[IPv4Address | None | Marker]:
    """Explicit cluster IPs must be unique; the others get network + 10 upwards, in order.

    A headless service gets None. Without ``service_cidr`` (``[cluster]`` is wrong, and its
    error says so) the addresses left open stay INVALID. ``dns_ip`` (``cluster.dns_ip``, None
    when cluster DNS is off) belongs to the cluster DNS service: no service may have it, and
    allocation skips it.
    """
    taken: dict[IPv4Address, str] = {s.cluster_ip: f"service {s.key}" for s in kept
                                     if s.cluster_ip is not None}
    if dns_ip is not None:
        taken[dns_ip] = "the cluster DNS service"
    result: list[IPv4Address | None | Marker] = []
    for draft in drafts:
        ip = draft.cluster_ip
        if isinstance(ip, IPv4Address):
            if ip == dns_ip:
                ip = reader.fail(key_path(draft.path, "cluster_ip"),
                                 f"{ip} is cluster.dns_ip, the address of the cluster DNS "
                                 "service; choose another one or leave cluster_ip out")
            elif ip in taken:
                ip = reader.fail(key_path(draft.path, "cluster_ip"), f"{ip} is already the cluster "
                                                                     f"IP of {taken[ip]}")
            else:
                taken[ip] = draft.path
        result.append(ip)
    open_indices = [index for index, draft in enumerate(drafts)
                    if result[index] is None and not draft.headless]
    if service_cidr is None:
        for index in open_indices:
            result[index] = INVALID
        return result
    for index in open_indices:
        old = previous.get(drafts[index].key or "")
        if (old is not None and old.cluster_ip is not None and old.cluster_ip not in taken
                and address_problem(old.cluster_ip, service_cidr) is None):
            result[index] = old.cluster_ip
            taken[old.cluster_ip] = drafts[index].path
    candidates = (a for a in allocation_order(service_cidr) if a not in taken)
    for index in open_indices:
        if result[index] is not None:
            continue
        address = next(candidates, None)
        if address is None:
            result[index] = reader.fail(drafts[index].path, f"no free cluster IP left in "
                                                            f"cluster.service_cidr {service_cidr}")
        else:
            result[index] = address
    return result


def previous_node_port(old: model.Service, port: ServicePortDraft) -> int | None:
    """The node port ``old`` gave the port ``port`` stands for, if it had one.

    A port is the same one when its name and protocol match, as Kubernetes matches them: the
    port number may change under a node port that clients outside know. A port whose name
    changed is still recognised by protocol and number.
    """
    by_name = next((p for p in old.ports if (p.name, p.protocol) == (port.name, port.protocol)),
                   None)
    if by_name is not None and by_name.node_port is not None:
        return by_name.node_port
    by_number = next((p for p in old.ports
                      if (p.protocol, p.port) == (port.protocol, port.number)), None)
    return by_number.node_port if by_number is not None else None


def allocate_node_ports(
    reader: Reader, drafts: Sequence[ServiceDraft], kept: Sequence[model.Service],
    previous: Mapping[str, model.Service],
) -> list[tuple[model.ServicePort, ...] | Marker]:
    """Each draft's ports with their node ports, unique per protocol across all services.

    Missing node ports of a NodePort service are allocated from the bottom of the range, in
    file order, after every explicit and every kept one is placed.
    """
    taken: dict[tuple[str, int], str] = {}
    for service in kept:
        for running in service.ports:
            if running.node_port is not None:
                taken[running.protocol, running.node_port] = f"service {service.key}"
    for draft in drafts:
        if isinstance(draft.ports, Marker):
            continue
        for port in draft.ports:
            if isinstance(port.node_port, int):
                binding = (port.protocol, port.node_port)
                if binding in taken:
                    reader.fail(key_path(port.path, "node_port"),
                                f"{port.protocol} node port {port.node_port} is already used "
                                f"by {taken[binding]}")
                else:
                    taken[binding] = port.path
    chosen: dict[str, int] = {}  # port path -> the running node port it keeps
    for draft in drafts:
        old = previous.get(draft.key or "")
        if old is None or draft.type != "NodePort" or isinstance(draft.ports, Marker):
            continue
        for port in draft.ports:
            reuse = previous_node_port(old, port) if port.node_port is None else None
            if reuse is not None and (port.protocol, reuse) not in taken:
                chosen[port.path] = reuse
                taken[port.protocol, reuse] = port.path
    low, high = model.NODE_PORT_RANGE
    result: list[tuple[model.ServicePort, ...] | Marker] = []
    for draft in drafts:
        if isinstance(draft.ports, Marker):
            result.append(INVALID)
            continue
        ports: list[model.ServicePort] = []
        for port in draft.ports:
            node_port = port.node_port
            if node_port is None and draft.type == "NodePort":
                node_port = chosen.get(port.path)
                if node_port is None:
                    node_port = next((n for n in range(low, high + 1)
                                      if (port.protocol, n) not in taken), None)
                    if node_port is None:
                        reader.fail(port.path, f"no free {port.protocol} node port left")
                        break
                    taken[port.protocol, node_port] = port.path
            ports.append(model.ServicePort(name=port.name, protocol=port.protocol,
                                           port=port.number, target_port=port.target_port,
                                           node_port=node_port))
        else:
            result.append(tuple(ports))
            continue
        result.append(INVALID)
    return result
