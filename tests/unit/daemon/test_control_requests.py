"""Requests on the control socket of a running daemon: status, runtime pod and service changes,
``apply``, the core's tables, and the metrics endpoint beside it."""
from __future__ import annotations

import dataclasses
import os
import socket
from ipaddress import IPv4Address

import trio

from vswitch.core.port_spec import PortKind
from vswitch.model import Pod, mac_for_ip

from .support import (Harness, RecordingSwitch, ask, mac_bytes, make_topology, programmed,
                      udp_frame)

WEB = """
[[services]]
name = "web"
selector = { app = "web" }
ports = [ { port = 80, target_port = 8080 } ]
"""


def recording(tmp_path, **topology) -> Harness:
    return Harness(make_topology(tmp_path, **topology), switch_factory=RecordingSwitch)


async def test_control_socket_answers_status_pods_and_stats(tmp_path):
    harness = Harness(make_topology(tmp_path, containers=True))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, config_path="/etc/vswitch/t1.toml")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o755

        status = await ask(path, "status")
        assert status["ok"], status
        result = status["result"]
        assert result["node"] == "t1"
        assert result["pid"] == os.getpid()
        assert result["config"] == "/etc/vswitch/t1.toml"
        assert (result["pods"], result["ports"], result["accel"]) == (2, 3, "pure")
        assert result["offloads"] is False
        assert result["uptime_s"] >= 0

        pods = await ask(path, "pods")
        assert [p["name"] for p in pods["result"]] == ["a", "b"]
        first = pods["result"][0]
        assert first["ip"] == "10.244.1.10" and first["mac"] == "0a:58:0a:f4:01:0a"
        assert first["netns_path"] == "/run/netns/vsw-t1-a"
        assert first["port"] == 2 and first["device"] == "vt-a"
        assert first["containers"][0]["state"] == "running"

        a, b = harness.topology.pods
        harness.ports.ports["a"].inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        stats = await ask(path, "stats")
        assert stats["result"]["ports"]["a"]["rx_packets"] == 1

        netns = await ask(path, "netns", {"pod": "b"})
        assert netns["result"]["netns_path"] == "/run/netns/vsw-t1-b"
        nursery.cancel_scope.cancel()


async def test_pod_add_creates_the_pod_and_programs_the_core(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "pod_add", {"pod": {
            "name": "c", "labels": {"app": "web"},
            "containers": [{"name": "main", "command": ["sleep", "inf"]}]}})
        assert answer["ok"], answer
        row = answer["result"]["pod"]
        # .10 and .11 are taken by a and b.
        assert (row["name"], row["ip"], row["port"]) == ("c", "10.244.1.12", 4)
        assert harness.kernel.calls[-1] == "create_pod c"
        spec = harness.switch.ports[4]
        assert (spec.name, spec.kind, spec.ip) == ("c", PortKind.POD, IPv4Address("10.244.1.12"))
        assert "c" in harness.supervisor.running
        pods, services = programmed(harness)[-1]
        assert [p.name for p in pods] == ["a", "b", "c"] and services == ()
        listed = await ask(path, "pods")
        assert [p["name"] for p in listed["result"]] == ["a", "b", "c"]
        # The new port forwards like the others.
        a = harness.topology.pods[0]
        c = Pod(name="c", ip=IPv4Address("10.244.1.12"), mac=mac_for_ip(IPv4Address("10.244.1.12")),
                netns="", tap="")
        harness.ports.ports["a"].inject(udp_frame(a, c))
        with trio.fail_after(5):
            assert (await harness.ports.ports["c"].receive())[:6] == mac_bytes(c.mac)
        nursery.cancel_scope.cancel()


async def test_a_bad_pod_changes_nothing_and_names_the_key(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        calls = list(harness.kernel.calls)
        for pod, message in [
            ({"name": "c", "ip": "10.244.1.10"},
             "pod add: pod.ip: 10.244.1.10 is the address of pod a"),
            ({"name": "a"}, "pod add: pod.name: pod 'a' already exists"),
            ({"name": "c", "labels": {"-": "x"}},
             "pod add: pod.labels.-: label key '-' is invalid"),
        ]:
            answer = await ask(path, "pod_add", {"pod": pod})
            assert answer["ok"] is False and answer["error"].startswith(message), answer
        assert harness.kernel.calls == calls
        assert programmed(harness) == []
        assert len(harness.switch.ports) == 3
        nursery.cancel_scope.cancel()


async def test_pod_del_stops_it_and_removes_everything(tmp_path):
    harness = recording(tmp_path, containers=True)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        answer = await ask(path, "pod_del", {"name": "a"})
        assert answer["ok"], answer
        assert harness.kernel.calls[-1] == "delete_pod a"
        assert harness.supervisor.running == {"b"} and harness.supervisor.forgotten == ["a"]
        assert 2 not in harness.switch.ports and context.port_ids == {"host": 1, "b": 3}
        assert [p.name for p in programmed(harness)[-1][0]] == ["b"]
        # The removed port's reader is gone: a frame offered to it is not processed.
        assert harness.ports.ports["a"].write(b"x") is False
        missing = await ask(path, "pod_del", {"name": "a"})
        assert missing["error"] == "no pod named 'a'; pods: b"
        # A pod added afterwards gets a fresh port id, never a reused one.
        added = await ask(path, "pod_add", {"pod": {"name": "a"}})
        assert added["result"]["pod"]["port"] == 4
        nursery.cancel_scope.cancel()


async def test_pod_ready_and_unready_flip_the_flag_and_reprogram(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "pod_ready", {"name": "b", "ready": False})
        assert answer["result"]["ready"] is False
        assert [p.ready for p in programmed(harness)[-1][0]] == [True, False]
        pods = (await ask(path, "pods"))["result"]
        assert [p["ready"] for p in pods] == [True, False]
        await ask(path, "pod_ready", {"name": "b", "ready": True})
        assert [p.ready for p in programmed(harness)[-1][0]] == [True, True]
        bad = await ask(path, "pod_ready", {"name": "b", "ready": "no"})
        assert "'ready' must be true or false" in bad["error"]
        nursery.cancel_scope.cancel()


async def test_service_add_set_del(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        added = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert added["ok"], added
        assert added["result"]["added"][0]["cluster_ip"] == "10.96.0.11"  # .10: cluster DNS
        (web,) = programmed(harness)[-1][1]
        assert web.key == "default/web" and dict(web.selector) == {"app": "web"}

        again = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert again["error"].startswith(
            "web.toml: services[0].name: service default/web already exists")

        changed = await ask(path, "service_set", {"name": "web", "settings": {
            "session_affinity": "ClientIP", "affinity_timeout": "30"}})
        assert changed["ok"], changed
        (web,) = programmed(harness)[-1][1]
        assert (web.session_affinity, web.affinity_timeout) == ("ClientIP", 30)
        assert web.cluster_ip == IPv4Address("10.96.0.11")

        count = len(programmed(harness))
        bad = await ask(path, "service_set", {"name": "default/web", "settings": {
            "session_affinity": "None", "affinity_timeout": "0"}})
        assert bad["error"].startswith("service set: service.affinity_timeout: must be between 1")
        assert len(programmed(harness)) == count  # nothing changed, not even the valid half

        removed = await ask(path, "service_del", {"name": "default/web"})
        assert removed["result"]["removed"] == "default/web"
        assert programmed(harness)[-1][1] == ()
        gone = await ask(path, "service_del", {"name": "web"})
        assert gone["error"] == "no service 'web'; services: none"
        nursery.cancel_scope.cancel()


async def test_apply_adds_replaces_keeps_and_is_all_or_nothing(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        fragment = ('[[pods]]\nname = "a"\nip = "10.244.1.10"\nlabels = { app = "web" }\n'
                    '[[pods]]\nname = "b"\nip = "10.244.1.11"\n'
                    '[[pods]]\nname = "c"\n' + WEB)
        first = (await ask(path, "apply", {"toml": fragment, "source": "f.toml"}))["result"]
        # a and b were built by hand with other TAP names than the loader derives, so they are
        # replaced by the loader's version; c is new.
        assert first["pods"] == {"added": ["c"], "replaced": ["a", "b"], "unchanged": []}
        assert first["services"]["added"] == ["default/web"]
        calls = list(harness.kernel.calls)
        count = len(programmed(harness))
        worse = WEB.replace("port = 80", "port = 99999") + '[[pods]]\nname = "e"\n'
        refused = await ask(path, "apply", {"toml": worse, "source": "worse.toml"})
        assert refused["error"].startswith("worse.toml: services[0].ports[0].port: must be between")
        assert harness.kernel.calls == calls and len(programmed(harness)) == count

        result = (await ask(path, "apply", {"toml": fragment, "source": "f.toml"}))["result"]
        assert result["pods"] == {"added": [], "replaced": [], "unchanged": ["a", "b", "c"]}
        assert result["services"]["unchanged"] == ["default/web"]
        relabel = fragment.replace('labels = { app = "web" }', 'labels = { app = "db" }')
        result = (await ask(path, "apply", {"toml": relabel, "source": "f.toml"}))["result"]
        assert result["pods"]["replaced"] == ["a"]
        assert harness.kernel.calls[-2:] == ["delete_pod a", "create_pod a"]
        pods = {p.name: p for p in programmed(harness)[-1][0]}
        assert (dict(pods["a"].labels) == {"app": "db"}
                and pods["a"].ip == IPv4Address("10.244.1.10"))
        nursery.cancel_scope.cancel()


async def test_read_only_service_commands_reach_the_core(tmp_path):
    harness = recording(tmp_path)
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert (await ask(path, "services"))["result"] == [{"name": "web", "namespace": "default"}]
        nursery.cancel_scope.cancel()


async def test_real_core_programs_services_at_runtime(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        await ask(path, "pod_add", {"pod": {"name": "w", "labels": {"app": "web"}}})
        added = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert added["ok"], added
        services = (await ask(path, "services"))["result"]
        assert [(s["name"], s["cluster_ip"], s["endpoints"]) for s in services] == [
            ("web", "10.96.0.11", 1)]
        endpoints = (await ask(path, "endpoints"))["result"]
        assert [e["pod"] for e in endpoints] == ["w"]
        await ask(path, "pod_ready", {"name": "w", "ready": False})
        assert (await ask(path, "endpoints"))["result"] == []
        assert (await ask(path, "conntrack", {"filters": {"proto": "tcp"}}))["result"] == []
        assert (await ask(path, "conntrack_flush", {}))["result"] == {"flushed": 0}
        bad = await ask(path, "conntrack", {"filters": {"colour": "red"}})
        assert "unknown conntrack filter colour" in bad["error"]
        assert (await ask(path, "affinity"))["result"] == []
        nursery.cancel_scope.cancel()


async def test_metrics_endpoint_serves_the_running_switch(tmp_path):
    with socket.socket() as probe:  # a free port on loopback for the endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = make_topology(tmp_path)
    topology = dataclasses.replace(base, control=dataclasses.replace(
        base.control, metrics=f"127.0.0.1:{port}"))
    harness = Harness(topology)
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        a, b = harness.topology.pods
        harness.ports.ports["a"].inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        assert b'vswitch_port_rx_packets_total{node="t1",port="a"} 1.0' in answer
        nursery.cancel_scope.cancel()
