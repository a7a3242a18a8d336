"""Labs on one host: several nodes started as one, and the surroundings tests and benchmarks put
a daemon in.

Nothing here is used by ``vswitchd`` itself. ``cluster`` is the ``vswitch-lab`` command, which
starts the etcd of ``etcd_server`` and one daemon per topology file, and stops them all.
``underlay`` makes the L2 network nodes share (a namespace holding a bridge); ``kernel_node``
makes a Kubernetes node exactly as flannel's VXLAN backend makes one, so that vswitch's overlay
can be checked against Linux on the wire and measured against the kernel's own path. Every object
carries a random suffix and is removed when its context manager closes, also when building it
failed halfway.
"""
