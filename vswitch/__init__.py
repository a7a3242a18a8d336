"""vswitch: a userspace virtual switch and router daemon for the Kubernetes network model."""

__version__ = "0.1.0"
