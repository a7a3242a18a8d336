"""``[[pods]]``: the pods of the node, read as drafts and built once their addresses are known.

A pod is read in two steps. ``read_pod`` checks what the entry says by itself and returns a
``PodDraft``; the address of a pod without an ``ip`` is decided later, with every pod of its
segment in view (``allocation.allocate_pod_addresses``). ``build_pod`` then derives what follows
from name and address: the MAC, the namespace and the TAP's kernel name.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.containers import read_containers
from vswitch.config.namespaces import namespace_problem
from vswitch.config.names import DNS_LABEL_MAX, dns_label_problem, label_key_problem, label_value_problem
from vswitch.config.reader import REQUIRED, Marker, Reader, key_path
from vswitch.model import Container, Pod

POD_NAME_MAX = 40
POD_KEYS = ("name", "namespace", "ip", "segment", "mtu", "labels", "ready", "containers")
# The switch and the control socket call the host port "host" and the uplink "uplink"; a pod of
# either name would be indistinguishable from them in traces, counters and `vswitchctl trace`.
RESERVED_POD_NAMES = ("host", "uplink")


@dataclass(frozen=True)
class PodDraft:
    """A pod as written, before addresses are allocated and names derived."""

    path: str
    name: str | Marker
    ip: IPv4Address | None | Marker  # None: to be allocated
    labels: Mapping[str, str]
    ready: bool | Marker
    containers: tuple[Container, ...]
    segment: str | Marker = model.DEFAULT_SEGMENT
    mtu: int | None | Marker = None  # None: the segment's
    namespace: str | Marker = model.DEFAULT_NAMESPACE

    @property
    def key(self) -> str | None:
        """``Pod.key`` of the pod it becomes, or None while its name or namespace is invalid."""
        if isinstance(self.name, str) and isinstance(self.namespace, str):
            return model.pod_key(self.namespace, self.name)
        return None


def read_pods(reader: Reader, document: Mapping[str, Any],
              namespaces: tuple[model.Namespace, ...] = ()) -> list[PodDraft]:
    """The pods of the file; names are unique per namespace, as in Kubernetes."""
    drafts: list[PodDraft] = []
    first_use: dict[str, str] = {}
    for path, entry in reader.entries(document, "", "pods"):
        draft = read_pod(reader, entry, path, namespaces)
        if (key := draft.key) is not None:
            name_path = f"{path}.name"
            if key in first_use:
                where = ("" if draft.namespace == model.DEFAULT_NAMESPACE
                         else f" in namespace {draft.namespace!r}")
                reader.fail(
                    name_path,
                    f"duplicate pod name {draft.name!r}{where} (first used at {first_use[key]})",
                )
            else:
                first_use[key] = name_path
        drafts.append(draft)
    return drafts


def read_pod(reader: Reader, table: Mapping[str, Any], path: str,
             namespaces: tuple[model.Namespace, ...] = ()) -> PodDraft:
    """One ``[[pods]]`` entry; ``namespaces`` are the declared ones (none: any name goes)."""
    reader.check_keys(table, path, POD_KEYS)
    name = reader.take(table, path, "name", "a string", REQUIRED)
    if isinstance(name, str):
        if problem := dns_label_problem(name, POD_NAME_MAX):
            name = reader.fail(key_path(path, "name"), problem)
        elif name in RESERVED_POD_NAMES:
            name = reader.fail(
                key_path(path, "name"), f"{name!r} is reserved: it names the node's {name} port"
            )
    namespace = reader.take(table, path, "namespace", "a string", model.DEFAULT_NAMESPACE)
    if isinstance(namespace, str):
        problem = dns_label_problem(namespace, DNS_LABEL_MAX)
        if problem is None and namespaces:
            problem = namespace_problem(namespace, namespaces)
        if problem:
            namespace = reader.fail(key_path(path, "namespace"), problem)
    ip = reader.take_address(table, path, "ip")
    segment = reader.take(table, path, "segment", "a string", model.DEFAULT_SEGMENT)
    mtu = reader.take_mtu(table, path, None)

    labels = reader.take_str_map(table, path, "labels")
    if not isinstance(labels, dict):
        labels = {}
    labels_path = key_path(path, "labels")
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            reader.fail(key_path(labels_path, key), problem)

    ready = reader.take(table, path, "ready", "a boolean", True)
    containers = read_containers(reader, table, path)
    return PodDraft(
        path=path,
        name=name,
        ip=ip,
        labels=MappingProxyType(dict(labels)),
        ready=ready,
        containers=containers,
        segment=segment,
        mtu=mtu,
        namespace=namespace,
    )


def build_pod(node: str, draft: PodDraft, ip: IPv4Address | Marker) -> Pod:
    assert isinstance(draft.name, str) and isinstance(ip, IPv4Address)
    assert isinstance(draft.ready, bool) and isinstance(draft.segment, str)
    assert isinstance(draft.namespace, str)
    assert draft.mtu is None or isinstance(draft.mtu, int)
    return Pod(
        name=draft.name,
        ip=ip,
        mac=model.mac_for_ip(ip),
        netns=model.netns_name(node, draft.namespace, draft.name),
        tap=model.kernel_name("vsp", node, draft.namespace, draft.name),
        labels=draft.labels,
        containers=draft.containers,
        ready=draft.ready,
        segment=draft.segment,
        mtu=draft.mtu,
        namespace=draft.namespace,
    )


def check_kernel_names(reader: Reader, pods: Sequence[Pod], drafts: Sequence[PodDraft]) -> None:
    # The names carry a 16-bit hash; a collision is unlikely but would make two pods fight
    # over one device, so it is refused here rather than discovered by the kernel.
    seen: dict[str, str] = {}
    for pod, draft in zip(pods, drafts):
        if pod.tap in seen:
            reader.fail(
                key_path(draft.path, "name"),
                f"the derived TAP name {pod.tap!r} collides with {seen[pod.tap]}; rename one pod",
            )
        else:
            seen[pod.tap] = draft.path
