"""Networks for labs and benchmarks, built from kernel parts with pyroute2.

Nothing here is used by ``vswitchd``: these are the surroundings a test or a benchmark puts a
daemon in, and the kernel-only references it is compared with. ``underlay`` makes the L2 network
nodes share (a namespace holding a bridge); ``kernel_node`` makes a Kubernetes node exactly as
flannel's VXLAN backend makes one, so that vswitch's overlay can be checked against Linux on the
wire and measured against the kernel's own path. Every object carries a random suffix and is
removed when its context manager closes, also when building it failed halfway.
"""
