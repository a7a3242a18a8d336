"""Cluster DNS without I/O: the zone the Kubernetes DNS specification describes, built from the
node's services and pods (``zone``), the answer to one query against it (``answers``), the
stub resolver's search list a pod applies (``stub``), the pods' resolv.conf (``resolv_conf``) and
the service that carries queries to the daemon (``service``).

The daemon's sockets, forwarding and counters live in ``vswitch.runtime.dns_server``; these
modules only turn bytes and desired state into decisions, so that every record type is tested
without a socket.
"""
