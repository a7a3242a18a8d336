"""Reading a TOML topology into the frozen model, after validating all of it.

Theory of operation: the loader is the only gate between a hand-written file and the system. It
reads the whole document, checks every key against the schema and records each mistake as a
(key path, reason) pair instead of stopping at the first, so that one run shows the user everything
to fix. Only a document without a single mistake becomes a ``Topology``; nothing here touches the
network, the clock or any state outside the file, which is what lets the daemon validate a reload
before it changes anything.

Rules:

* Key paths are written the way the user sees the file: ``node.pod_cidr``, ``pods[2].ip``,
  ``pods[0].containers[1].name``, ``pods[0].labels."app.kubernetes.io/name"``.
* Unknown keys are errors, never silently ignored, because a misspelt optional key would otherwise
  quietly fall back to its default.
* Pods without an ``ip`` get one deterministically (see ``allocation_order``), so the same file
  always yields the same addresses, MACs and kernel names, and a restart after a crash finds exactly
  what an earlier run created.
* A reload passes the running topology along (``previous``): a pod, service or node port that
  stays and has no explicit address keeps the one it runs with, if still valid and free, and
  only the rest are allocated around it. Explicit addresses of the file win over kept ones.
* Checks that depend on another value (a gateway inside the pod CIDR, say) run only when that value
  is itself valid; its own error already explains the problem, and a cascade would bury it.

Where things are:

* ``errors``: ``ConfigError`` and its message format (``FILE: KEYPATH: REASON``);
* ``reader``: the ``Reader``, which gives typed access to the document and collects the mistakes;
* ``names``, ``addresses``: the checks of names, labels and host addresses that sections share;
* one module per section, each reading its values into a draft or a model object: ``node``
  (with ``[host_port]``), ``dataplane``, ``control``, ``segments``, ``routes``, ``pods`` (with
  ``containers``), ``cluster`` (with the cluster store and ``pod_cidr = "auto"``), ``uplink``,
  ``overlay`` (which also fits the segments' MTUs to it), ``peers``, ``services`` (with
  ``service_context``);
* ``allocation``: pod IPs, cluster IPs and node ports the file leaves open, kept across reloads;
* ``topology``: a whole file (``load_topology``, ``parse_topology``);
* ``fragments``: changes to a running node (``vswitchctl apply``, ``pod add``, ``service set``).
"""
from vswitch.config.allocation import allocation_order
from vswitch.config.cluster import CONNTRACK_MAX_MAX, CONNTRACK_MAX_MIN, runtime_cluster
from vswitch.config.errors import ConfigError
from vswitch.config.fragments import (
    FRAGMENT_KEYS,
    SERVICE_SETTABLE,
    Fragment,
    parse_fragment,
    parse_pod,
    service_table,
    update_service,
)
from vswitch.config.topology import load_topology, parse_topology

__all__ = [
    "CONNTRACK_MAX_MAX",
    "CONNTRACK_MAX_MIN",
    "FRAGMENT_KEYS",
    "SERVICE_SETTABLE",
    "ConfigError",
    "Fragment",
    "allocation_order",
    "load_topology",
    "parse_fragment",
    "parse_pod",
    "parse_topology",
    "runtime_cluster",
    "service_table",
    "update_service",
]
