"""Network policies on a running daemon: ``policy add|del|list`` on the control socket, their
effect on traffic between pods, mistakes reported at their key path, and reload from the file."""
from __future__ import annotations

import trio

from vswitch.config import load_topology

from .support import Harness, ask, make_topology, udp_frame
from .test_reload import node_file, pod_toml

DENY_INGRESS = {"name": "deny-in", "pod_selector": {}, "policy_types": ["Ingress"]}


async def delivered(harness: Harness, src: str, dst: str) -> bool:
    """Whether a datagram from pod ``src`` reaches pod ``dst`` (within a short wait)."""
    pods = {pod.name: pod for pod in harness.switch.topology.pods}
    harness.ports.ports[src].inject(udp_frame(pods[src], pods[dst]))
    with trio.move_on_after(0.3):
        await harness.ports.ports[dst].receive()
        return True
    return False


async def test_policy_add_list_and_del_change_what_passes(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert await delivered(harness, "a", "b")

        answer = await ask(path, "policy_add", {"policies": [DENY_INGRESS],
                                                "source": "--json-policy"})
        assert answer["ok"], answer
        assert answer["result"]["added"] == [{"policy": "default/deny-in", "types": ["Ingress"],
                                              "ingress_rules": 0, "egress_rules": 0}]
        assert answer["result"]["program"]["policies"]["policies"] == 1
        assert not await delivered(harness, "a", "b")

        listed = await ask(path, "policy_list")
        assert listed["ok"], listed
        (row,) = listed["result"]
        assert (row["policy"], row["pods"], row["types"], row["drops"], row["cuts"]) == (
            "default/deny-in", 2, ["Ingress"], 1, 0)
        stats = await ask(path, "stats")
        assert stats["result"]["policies"]["drops_by_policy"] == {"default/deny-in": 1}

        removed = await ask(path, "policy_del", {"name": "deny-in"})
        assert removed["ok"], removed
        assert removed["result"]["removed"] == "default/deny-in"
        assert await delivered(harness, "a", "b")
        assert (await ask(path, "policy_list"))["result"] == []
        nursery.cancel_scope.cancel()


async def test_policy_add_from_toml_allows_what_its_rules_name(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    toml = """
[[network_policies]]
name = "deny-in"
pod_selector = {}
policy_types = ["Ingress"]

[[network_policies]]
name = "udp-7"
pod_selector = {}
ingress = [ { ports = [ { protocol = "udp", port = 7 } ] } ]
"""
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "policy_add", {"toml": toml, "source": "p.toml"})
        assert answer["ok"], answer
        assert [p["policy"] for p in answer["result"]["added"]] == ["default/deny-in",
                                                                   "default/udp-7"]
        assert await delivered(harness, "a", "b")  # udp_frame goes to port 7
        nursery.cancel_scope.cancel()


async def test_policy_mistakes_change_nothing_and_name_their_key_path(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        bad = {**DENY_INGRESS, "ingress": [{"ports": [{"protocol": "sctp", "port": 7}]}]}
        answer = await ask(path, "policy_add", {"policies": [bad], "source": "--json-policy"})
        assert not answer["ok"]
        assert answer["error"].startswith("--json-policy: policy.ingress[0].ports[0].protocol:")
        twice = await ask(path, "policy_add", {"policies": [DENY_INGRESS, DENY_INGRESS],
                                               "source": "p.json"})
        assert not twice["ok"] and "p.json: policy[1].name:" in twice["error"]
        toml = await ask(path, "policy_add", {"toml": "[[pods]]\nname = 'x'\n",
                                              "source": "p.toml"})
        assert not toml["ok"] and toml["error"].startswith("p.toml: pods:")
        missing = await ask(path, "policy_del", {"name": "nope"})
        assert not missing["ok"] and "no network policy 'nope'" in missing["error"]
        assert (await ask(path, "policy_list"))["result"] == []
        assert await delivered(harness, "a", "b")
        nursery.cancel_scope.cancel()


async def test_reload_takes_the_files_policies(tmp_path):
    body = pod_toml("a", "10.244.1.10") + pod_toml("b", "10.244.1.11")
    file = node_file(tmp_path, body)
    harness = Harness(load_topology(file))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, config_path=str(file))
        assert await delivered(harness, "a", "b")
        node_file(tmp_path, body + """
[[network_policies]]
name = "deny-in"
pod_selector = {}
policy_types = ["Ingress"]
""")
        answer = await ask(path, "reload")
        assert answer["ok"], answer
        assert answer["result"]["network_policies"]["added"] == ["default/deny-in"]
        assert "1 network policy added" in answer["result"]["summary"]
        assert not await delivered(harness, "a", "b")
        node_file(tmp_path, body)
        answer = await ask(path, "reload")
        assert answer["result"]["network_policies"]["removed"] == ["default/deny-in"]
        assert await delivered(harness, "a", "b")
        nursery.cancel_scope.cancel()


def test_policy_answers_render_for_a_terminal():
    from vswitch.control.policies import render_policies, render_policy_change

    table = render_policies([{"policy": "x/deny", "pods": 3, "types": ["Ingress"],
                              "ingress_rules": 0, "egress_rules": 1, "drops": 12, "cuts": 1}])
    assert table.splitlines()[0].split() == ["POLICY", "PODS", "TYPES", "RULES", "DROPS", "CUTS"]
    assert "x/deny" in table and "0 in, 1 out" in table
    assert render_policies([]) == "(none)"
    change = render_policy_change({
        "added": [{"policy": "x/deny", "types": ["Ingress"], "ingress_rules": 0,
                   "egress_rules": 0}],
        "program": {"policies": {"policies": 1, "generation": 2, "cut_connections": 3}}})
    assert change.splitlines() == ["added x/deny (Ingress; 0 ingress, 0 egress rules)",
                                   "1 policy in force; 3 connections they no longer allow cut"]


async def test_apply_adds_and_replaces_policies_and_programs_once(tmp_path):
    from vswitch.config.policies import parse_network_policy

    harness = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        ctx = await harness.start(nursery)
        node = ctx.node
        deny = parse_network_policy(DENY_INGRESS, node.topology)
        async with node.lock:
            result = await node.apply((), (), policies=(deny,))
        assert result["network_policies"] == {"added": ["default/deny-in"], "replaced": [],
                                              "unchanged": []}
        assert result["program"]["policies"]["policies"] == 1
        assert not await delivered(harness, "a", "b")
        allow = parse_network_policy({**DENY_INGRESS, "ingress": [{}]}, node.topology,
                                     replace=True)
        async with node.lock:
            result = await node.apply((), (), policies=(allow,))
        assert result["network_policies"]["replaced"] == ["default/deny-in"]
        assert await delivered(harness, "a", "b")
        nursery.cancel_scope.cancel()
