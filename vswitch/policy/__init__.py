"""NetworkPolicy (networking.k8s.io/v1): selectors, rules, and the compiled form the dataplane
asks for a connection's verdict. Pure: no I/O, no clock.

* ``selectors``: label selectors (match_labels, match_expressions) as Kubernetes matches them;
* ``rules``: one rule compiled against the known pods (peer addresses, ip blocks, port ranges,
  named ports);
* ``engine``: ``CompiledPolicies``, the per-pod index of the policies selecting each local pod,
  and the ``Decision`` on a connection's first packet.
"""
