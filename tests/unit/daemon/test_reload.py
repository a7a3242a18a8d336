"""Reloading the configuration file (SIGHUP, ``vswitchctl reload``): the file's difference is
applied and programmed once, bad or restart-needing files change nothing, hangups coalesce."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from vswitch.config import load_topology, parse_topology
from vswitch.model import Pod
from vswitch.runtime.daemon import restart_differences
from vswitch.runtime.memory_port import NullKernel

from .support import Harness, RecordingSwitch, ask, programmed


def node_file(run_dir: Path, body: str, *, mtu: int = 1500, burst: int = 8) -> Path:
    """Write the node's configuration file: a fixed node section, then ``body`` (pods and
    services); returns its path. Rewriting it is how the tests change the desired state."""
    path = run_dir / "t1.toml"
    path.write_text(f"""
[node]
name = "t1"
pod_cidr = "10.244.1.0/24"
mtu = {mtu}

[dataplane]
offloads = false
burst = {burst}
accel = "pure"

[control]
socket = "{run_dir / 'ctl' / 't1.sock'}"
state_dir = "{run_dir}"
""" + body)
    return path


def pod_toml(name: str, ip: str, *, labels: str = "", ready: bool = True,
             containers: bool = False) -> str:
    text = f'\n[[pods]]\nname = "{name}"\nip = "{ip}"\n'
    if labels:
        text += f"labels = {{ {labels} }}\n"
    if not ready:
        text += "ready = false\n"
    if containers:
        text += 'containers = [ { name = "main", command = ["sleep", "inf"] } ]\n'
    return text


def service_toml(name: str, selector: str, *, affinity: str = "None") -> str:
    return (f'\n[[services]]\nname = "{name}"\nselector = {{ {selector} }}\n'
            f'session_affinity = "{affinity}"\nports = [ {{ port = 80, target_port = 8080 }} ]\n')


V1 = (pod_toml("a", "10.244.1.10", labels='app = "web"')
      + pod_toml("b", "10.244.1.11", containers=True)
      + pod_toml("c", "10.244.1.12")
      + service_toml("web", 'app = "web"') + service_toml("db", 'app = "db"'))


def file_harness(tmp_path: Path, body: str = V1, **kwargs) -> tuple[Harness, Path]:
    path = node_file(tmp_path, body, **kwargs)
    return Harness(load_topology(path), switch_factory=RecordingSwitch), path


def pod_names(pods) -> list[str]:
    return [pod.name for pod in pods]


async def test_reload_applies_the_files_difference_and_programs_once(tmp_path, caplog):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        # Changes made at runtime, which the file does not have: the reload undoes them.
        assert (await ask(socket_path, "pod_add", {"pod": {"name": "x"}}))["ok"]
        assert (await ask(socket_path, "pod_ready", {"name": "c", "ready": False}))["ok"]
        assert (await ask(socket_path, "service_add", {
            "toml": service_toml("extra", 'app = "x"')}))["ok"]
        ports_before = dict(context.port_ids)
        calls = len(harness.kernel.calls)
        count = len(programmed(harness))

        # a: labels only (in place); b: gone; c: back to ready (in place); d is new, and so
        # is e, which takes the address b gives up. web changes its affinity, db goes, api is new.
        node_file(tmp_path, pod_toml("a", "10.244.1.10", labels='app = "db"')
                  + pod_toml("c", "10.244.1.12")
                  + pod_toml("d", "10.244.1.20", containers=True)
                  + pod_toml("e", "10.244.1.11")
                  + service_toml("web", 'app = "web"', affinity="ClientIP")
                  + service_toml("api", 'app = "db"'))
        answer = await ask(socket_path, "reload")
        assert answer["ok"], answer
        result = answer["result"]
        assert result["summary"] == (
            "reload: 2 pods added, 2 removed, 2 updated in place, 1 service added, 2 removed, "
            "1 changed (removed as added at runtime, not in the file: x, default/extra)")
        assert result["pods"] == {"added": ["d", "e"], "removed": ["b", "x"], "replaced": [],
                                  "updated": ["a", "c"], "unchanged": []}
        assert result["services"] == {"added": ["default/api"],
                                      "removed": ["default/db", "default/extra"],
                                      "replaced": ["default/web"], "unchanged": []}
        # Removals first (e reuses b's address), then the new pods; a and c keep their
        # namespaces, ports and containers.
        assert harness.kernel.calls[calls:] == ["delete_pod b", "delete_pod x", "create_pod d",
                                                "create_pod e"]
        assert context.port_ids["a"] == ports_before["a"]
        assert context.port_ids["c"] == ports_before["c"]
        assert "b" not in context.port_ids and "x" not in context.port_ids
        assert harness.supervisor.running == {"d"}
        # The core was programmed once, with the file's pods and services in the file's order.
        assert len(programmed(harness)) == count + 1
        pods, services = programmed(harness)[-1]
        assert pod_names(pods) == ["a", "c", "d", "e"]
        assert dict(pods[0].labels) == {"app": "db"} and pods[1].ready is True
        assert [s.key for s in services] == ["default/web", "default/api"]
        assert services[0].session_affinity == "ClientIP"
        listed = (await ask(socket_path, "pods"))["result"]
        assert [p["name"] for p in listed] == ["a", "c", "d", "e"]

        # The same file again is no change at all, and nothing is touched.
        calls = len(harness.kernel.calls)
        again = (await ask(socket_path, "reload"))["result"]
        assert again["summary"] == "reload: no changes"
        assert again["pods"]["unchanged"] == ["a", "c", "d", "e"]
        assert harness.kernel.calls[calls:] == []

        # A pod whose address changes is created again (its namespace holds the address).
        node_file(tmp_path, pod_toml("a", "10.244.1.30", labels='app = "db"')
                  + pod_toml("c", "10.244.1.12") + pod_toml("d", "10.244.1.20", containers=True)
                  + pod_toml("e", "10.244.1.11")
                  + service_toml("web", 'app = "web"', affinity="ClientIP")
                  + service_toml("api", 'app = "db"'))
        replaced = (await ask(socket_path, "reload"))["result"]
        assert replaced["summary"] == "reload: 1 pod replaced"
        assert harness.kernel.calls[-2:] == ["delete_pod a", "create_pod a"]
        assert context.port_ids["a"] != ports_before["a"]
        assert pod_names(programmed(harness)[-1][0]) == ["a", "c", "d", "e"]
        nursery.cancel_scope.cancel()
    assert "removing pod x, which was added at runtime" in caplog.text


async def test_sighup_reloads_the_file(tmp_path, caplog, log_watch):
    caplog.set_level(logging.INFO, logger="vswitchd")
    harness, path = file_harness(tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, config_path=str(path))
            node_file(tmp_path, V1 + pod_toml("d", "10.244.1.20"))
            os.kill(os.getpid(), signal.SIGHUP)
            await log_watch.wait_for("reload: 1 pod added")
            assert "reload: 1 pod added" in caplog.text
            assert harness.kernel.calls[-1] == "create_pod d"
            assert pod_names(programmed(harness)[-1][0]) == ["a", "b", "c", "d"]
            nursery.cancel_scope.cancel()


def unaddressed(*names: str) -> str:
    """Pods and services without explicit addresses: the loader allocates them in file order."""
    pods = "".join(f'\n[[pods]]\nname = "{name}"\n' for name in names)
    services = "".join(service_toml(f"svc-{name}", f'app = "{name}"') for name in names)
    return pods + services


async def test_a_reload_does_not_renumber_pods_and_services_that_stay(tmp_path):
    harness, path = file_harness(tmp_path, unaddressed("a", "b", "c"))
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        before = {pod.name: pod for pod in context.current().pods}
        services_before = {s.key: s for s in context.current().services}
        assert str(before["b"].ip) == "10.244.1.11" and str(before["c"].ip) == "10.244.1.12"
        ports_before = dict(context.port_ids)
        calls = len(harness.kernel.calls)

        # Read on its own, the new file would give b .10 and c .11; they run, so they stay.
        node_file(tmp_path, unaddressed("b", "c"))
        answer = await ask(socket_path, "reload")
        assert answer["ok"], answer
        result = answer["result"]
        assert result["pods"] == {"added": [], "removed": ["a"], "replaced": [], "updated": [],
                                  "unchanged": ["b", "c"]}
        assert result["services"]["replaced"] == []
        assert result["services"]["unchanged"] == ["default/svc-b", "default/svc-c"]
        assert harness.kernel.calls[calls:] == ["delete_pod a"]
        assert (context.port_ids["b"], context.port_ids["c"]) == (ports_before["b"],
                                                                  ports_before["c"])
        after = context.current()
        assert {pod.name: pod for pod in after.pods} == {"b": before["b"], "c": before["c"]}
        assert [s.cluster_ip for s in after.services] == [
            services_before["default/svc-b"].cluster_ip,
            services_before["default/svc-c"].cluster_ip]

        # A new pod gets the address a gave up, not one of those that run.
        node_file(tmp_path, unaddressed("n", "b", "c"))
        result = (await ask(socket_path, "reload"))["result"]
        assert result["pods"]["added"] == ["n"] and result["pods"]["unchanged"] == ["b", "c"]
        assert str(context.current().pod("n").ip) == "10.244.1.10"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["sighup", "control"])
async def test_a_bad_file_changes_nothing_and_names_the_key(tmp_path, caplog, log_watch, how):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        calls, count = list(harness.kernel.calls), len(programmed(harness))
        # A valid new pod next to a broken one: all or nothing, so not even d is created.
        node_file(tmp_path, V1.replace('ip = "10.244.1.12"', 'ip = "10.9.9.9"')
                  + pod_toml("d", "10.244.1.20"))
        if how == "sighup":
            os.kill(os.getpid(), signal.SIGHUP)
            await log_watch.wait_for("reload failed")
        else:
            answer = await ask(socket_path, "reload")
            assert answer["ok"] is False
            assert answer["error"].startswith(f"reload failed: {path}: pods[2].ip: 10.9.9.9 is "
                                               "outside node.pod_cidr")
        assert f"reload failed: {path}: pods[2].ip: 10.9.9.9 is outside" in caplog.text
        assert "nothing was changed" in caplog.text
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        assert pod_names(context.current().pods) == ["a", "b", "c"]
        # The daemon keeps running and answers.
        assert (await ask(socket_path, "status"))["result"]["pods"] == 3

        path.write_text("[node\n")
        answer = await ask(socket_path, "reload")
        assert answer["error"].startswith(f"reload failed: {path}: invalid TOML")
        path.unlink()
        answer = await ask(socket_path, "reload")
        assert answer["error"].startswith(f"reload failed: {path}: cannot read the file")
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("change, named", [
    # The default segment is made of [node], so it changes with it.
    (dict(mtu=1400), "node.mtu: 1500 -> 1400, segments"),
    (dict(burst=16), "dataplane.burst: 8 -> 16"),
])
async def test_a_change_that_needs_a_restart_is_refused_as_a_whole(tmp_path, caplog, change,
                                                                   named):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, config_path=str(path))
        calls, count = list(harness.kernel.calls), len(programmed(harness))
        node_file(tmp_path, V1 + pod_toml("d", "10.244.1.20"), **change)
        answer = await ask(socket_path, "reload")
        assert answer["ok"] is False
        assert answer["error"] == (
            f"reload refused: {path} changes {named}, which cannot change while the node runs "
            "and need a restart (systemctl restart vswitchd); nothing was changed")
        assert answer["error"] in caplog.text
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        nursery.cancel_scope.cancel()


def test_restart_differences_name_sections_and_keys(tmp_path):
    base = node_file(tmp_path, V1).read_text()
    running = parse_topology(base)
    assert restart_differences(running, parse_topology(base + pod_toml("d", "10.244.1.20"))) == []
    routed = base + ('\n[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
                     '\n[[routes]]\ndst = "192.0.2.0/24"\nvia = "10.245.1.20"\n'
                     '\n[uplink]\naddress = "198.18.0.2/24"\ngateway = "198.18.0.1"\n')
    # Without a [cluster], its CIDR is the one covering every segment, so it grows with them.
    assert restart_differences(running, parse_topology(routed)) == [
        "segments", "routes", "uplink: added", "cluster.cidr: 10.244.1.0/24 -> 10.244.0.0/15"]
    host = base.replace("[dataplane]", '[host_port]\nenabled = false\n\n[dataplane]')
    assert restart_differences(running, parse_topology(host)) == [
        "host_port.enabled: True -> False"]


class GatedKernel(NullKernel):
    """Creating pod "slow" waits until the test opens the gate; records how many kernel calls
    ran at once, which must never be more than one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.slow_started = trio.Event()
        self.active = 0
        self.most_active = 0

    async def create_pod(self, pod: Pod) -> int:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            handle = await super().create_pod(pod)
            if pod.name == "slow":
                self.slow_started.set()
                await self.gate.wait()
            return handle
        finally:
            self.active -= 1


async def test_hangups_during_a_reload_make_one_more_reload_afterwards(tmp_path, log_watch):
    harness, path = file_harness(tmp_path)
    harness.kernel = kernel = GatedKernel()
    socket_path = harness.topology.control.socket
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            context = await harness.start(nursery, config_path=str(path))
            count = len(programmed(harness))
            node_file(tmp_path, V1 + pod_toml("slow", "10.244.1.20"))
            os.kill(os.getpid(), signal.SIGHUP)
            await kernel.slow_started.wait()
            assert "create_pod slow" in kernel.calls

            # The file changes again while the first reload is stuck; three more hangups, each
            # seen by the daemon before the next, ask for the new version.
            node_file(tmp_path, V1 + pod_toml("slow", "10.244.1.20")
                      + pod_toml("late", "10.244.1.21"))
            for seen in range(2, 5):
                os.kill(os.getpid(), signal.SIGHUP)
                await log_watch.wait_for("received SIGHUP", times=seen)
            # A runtime change meanwhile waits for the lock instead of interleaving.
            pending = trio.Event()

            async def add_pod() -> None:
                await ask(socket_path, "pod_add", {"pod": {"name": "y", "ip": "10.244.1.40"}})
                pending.set()

            nursery.start_soon(add_pod)
            await trio.testing.wait_all_tasks_blocked()
            assert not pending.is_set()
            assert "create_pod late" not in kernel.calls and len(programmed(harness)) == count

            kernel.gate.set()
            await log_watch.wait_for("reload: 1 pod added", times=2)
            await pending.wait()
            assert "create_pod late" in kernel.calls
            # No third reload comes: once every task waits, none holds the node's lock.
            await trio.testing.wait_all_tasks_blocked()
            assert not context.node.lock.locked()
            creates = [c for c in kernel.calls if c.startswith("create_pod")]
            assert creates[-3:].count("create_pod late") == 1 and "create_pod y" in creates
            assert creates.count("create_pod slow") == 1
            # Two reloads and the pod_add, each programmed once.
            assert len(programmed(harness)) == count + 3
            assert kernel.most_active == 1
            nursery.cancel_scope.cancel()
