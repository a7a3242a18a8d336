"""The service that carries pods' queries to the daemon: ``kube-system/kube-dns``.

As in Kubernetes, pods reach cluster DNS through a ClusterIP service: its address is
``cluster.dns_ip``, its ports are 53/udp (``dns``) and 53/tcp (``dns-tcp``). Its one endpoint is
the node's host port address, where the daemon's own sockets listen, at the port they were bound
to (the same number for UDP and TCP); the service table translates, so queries and answers take
the same path through the switch as any other service's traffic. It is not in the configuration
file: the runtime adds it to what it programs once its sockets are bound.
"""
from __future__ import annotations

from ipaddress import IPv4Address

from vswitch.model import Service, ServicePort

DNS_SERVICE_NAME = "kube-dns"
DNS_SERVICE_NAMESPACE = "kube-system"
DNS_PORT = 53


def dns_service(dns_ip: IPv4Address, endpoint: IPv4Address, port: int) -> Service:
    return Service(
        name=DNS_SERVICE_NAME, namespace=DNS_SERVICE_NAMESPACE, cluster_ip=dns_ip,
        ports=(ServicePort("dns", "udp", DNS_PORT, port),
               ServicePort("dns-tcp", "tcp", DNS_PORT, port)),
        endpoints=(endpoint,))
