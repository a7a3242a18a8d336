"""A daemon's kernel side that SIGKILLs itself mid-run, leaving what a crash leaves: namespaces,
the journal, and container processes orphaned in a pod's namespace.

Usage: crashing_kernel.py TEST_KERNEL_PY NODE POD_CIDR STATE_DIR
TEST_KERNEL_PY is the path of tests/integration/test_kernel.py, whose build_topology and
container helpers describe the node. Never returns: it ends by SIGKILL.
"""
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
import trio

from vswitch.runtime.containers import ContainerSupervisor
from vswitch.runtime.kernel import Kernel
from vswitch.runtime.netns import pids_in_netns
# The test module imports its siblings (the harness), as it does under pytest.
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
spec = importlib.util.spec_from_file_location("test_kernel_topology", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)

topo = module.build_topology(sys.argv[2], ipaddress.IPv4Network(sys.argv[3]), sys.argv[4],
    containers={"p0": (module.container("sh", "sh", "-c", "sleep 300 & sleep 301"),)})

async def main():
    async with Kernel.open(topo) as kernel:
        for pod in topo.pods:
            await kernel.create_pod(pod)
        await kernel.create_host_port()
        async with trio.open_nursery() as nursery:
            await nursery.start(ContainerSupervisor(logging.getLogger("pods")).run, topo.pods[0])
            # Let sh start both children (the shell and two sleeps in the namespace).
            for _ in range(200):
                if len(pids_in_netns(topo.pods[0].netns)) >= 3:
                    break
                await trio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
