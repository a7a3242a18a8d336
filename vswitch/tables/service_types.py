"""The values the service table hands out: backends, frontend matches, why there is no backend,
and what a ``program`` call changed.

They are immutable. The table keeps the same ``ServiceMatch`` objects for a service port as long as
nothing about it changes, so that a ``program`` that changes nothing leaves callers' references
valid.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vswitch.model import Service, ServicePort

# (service key, protocol, port): what Kubernetes keeps unique among a service's ports.
PortKey = tuple[str, str, int]
# (IP protocol number, destination address, destination port).
FrontendKey = tuple[int, bytes, int]


@dataclass(frozen=True, slots=True)
class Backend:
    ip: bytes  # 4-byte IPv4
    port: int  # the resolved target port
    pod: str | None  # the pod's name, or None for an explicit (selector-less) endpoint
    local: bool  # on this node

    @property
    def name(self) -> str:
        """The backend's stable name ("10.244.1.10:8080"), which seeds its Maglev permutation."""
        ip = self.ip  # formatted in one operation: it labels every connection to the backend
        return "%d.%d.%d.%d:%d" % (ip[0], ip[1], ip[2], ip[3], self.port)


class NoBackend(enum.Enum):
    """Why a new connection has no backend, which decides what the caller does with it."""

    NO_ENDPOINTS = "no ready endpoint at all: the connection is refused"
    NO_LOCAL_ENDPOINTS = "Local traffic policy and no endpoint on this node: dropped"


class FrontendKind(enum.Enum):
    CLUSTER_IP = "cluster-ip"
    EXTERNAL_IP = "external-ip"
    NODE_PORT = "node-port"


@dataclass(frozen=True)
class ServiceMatch:
    service: Service
    port: ServicePort
    kind: FrontendKind
    backends: tuple[Backend, ...]  # the ready backends of this service port, sorted by (ip, port)
    # What every new connection through this frontend asks of the service's settings (which
    # compare case-insensitively), worked out once with the match rather than per connection.
    local_backends: tuple[Backend, ...] = field(init=False, repr=False, compare=False)
    local_always: bool = field(init=False, repr=False, compare=False)  # internal policy Local
    # The external traffic policy Local confines node-port and external-IP connections from
    # outside.
    local_from_outside: bool = field(init=False, repr=False, compare=False)
    affinity: bool = field(init=False, repr=False, compare=False)  # ClientIP affinity
    maglev: bool = field(init=False, repr=False, compare=False)  # the Maglev load balancer
    service_key: str = field(init=False, repr=False, compare=False)
    kind_value: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        service, cluster_ip = self.service, self.kind is FrontendKind.CLUSTER_IP
        # One update of the instance's dict: the class is frozen, and this is its construction.
        self.__dict__.update(
            local_backends=tuple(b for b in self.backends if b.local),
            local_always=cluster_ip and service.internal_traffic_policy.lower() == "local",
            local_from_outside=(not cluster_ip
                                and service.external_traffic_policy.lower() == "local"),
            affinity=service.session_affinity.lower() == "clientip",
            maglev=service.load_balancer.lower() == "maglev",
            service_key=service.key,
            kind_value=self.kind.value)

    @property
    def port_key(self) -> PortKey:
        return port_key(self.service, self.port)


@dataclass(frozen=True)
class ProgramResult:
    # Backends present before and gone now, and the reverse, with the service port they belong to
    # (the old ServicePort for removals, the new one for additions).
    removed: list[tuple[str, ServicePort, Backend]]
    added: list[tuple[str, ServicePort, Backend]]
    generation: int
    # Frontends that no longer exist and frontends that are new: connections made through a
    # vanished frontend are stale even when their backend survives.
    removed_frontends: list[FrontendKey]
    added_frontends: list[FrontendKey]
    # Desired state that could not be programmed as written, one sentence each: a frontend taken by
    # an earlier service, a duplicate service key or service port. The earlier one wins.
    conflicts: list[str]
    # Whether anything changed at all (``generation`` moved), settings included.
    changed: bool = False


def port_key(service: Service, port: ServicePort) -> PortKey:
    return (service.key, port.protocol.lower(), port.port)
