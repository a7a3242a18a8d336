"""Node membership in etcd: the store client (``etcd``), the node records (``records``), the view
of the other nodes (``members``), and pod subnet allocation for ``pod_cidr = "auto"``
(``subnets``).

This package is part of the trio shell (it does network I/O); it emits membership changes as plain
values and leaves routing to its caller.
"""
