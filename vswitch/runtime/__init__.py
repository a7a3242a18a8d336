"""The trio shell around the core: kernel objects, TAP ports, pod processes, the daemon.

Only this package performs I/O. Submodules are imported explicitly (``vswitch.runtime.kernel``
needs pyroute2, which tests of the core should not have to load).
"""
