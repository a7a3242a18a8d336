"""The control protocol: framing, error answers, and that nothing a client sends stops the server."""
from __future__ import annotations

import json
import os
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network


import pytest
import trio
import trio.testing

from vswitch.core import presentation
from vswitch.model import (Control, Dataplane, HostPort, Node, Pod, Segment, Topology,
                           mac_for_ip)
from vswitch.runtime.control import (MAX_LINE, ControlCommands, ControlContext, ControlSocketBusy,
                                     prepare_socket_path, serve_control)
from vswitch.runtime.memory_port import NullSupervisor


def make_topology(socket_path: str, *, blue: bool = False) -> Topology:
    """One pod "a" on the default segment; with ``blue``, a second segment and pod "b" on it."""
    ip = IPv4Address("10.244.1.10")
    pods = [Pod(name="a", ip=ip, mac=mac_for_ip(ip), netns="vsw-c-a", tap="vt-a")]
    segments: tuple[Segment, ...] = ()
    if blue:
        ip_b = IPv4Address("10.245.1.10")
        pods.append(Pod(name="b", ip=ip_b, mac=mac_for_ip(ip_b), netns="vsw-c-b", tap="vt-b",
                        segment="blue", mtu=1280))
        segments = (
            Segment("default", IPv4Network("10.244.1.0/24"), IPv4Address("10.244.1.1"),
                    "0a:58:0a:f4:01:01", 1500),
            Segment("blue", IPv4Network("10.245.1.0/24"), IPv4Address("10.245.1.1"),
                    "0a:58:0a:f5:01:01", 1400),
        )
    return Topology(
        source="c.toml",
        node=Node(name="c", pod_cidr=IPv4Network("10.244.1.0/24"),
                  gateway=IPv4Address("10.244.1.1"), gateway_mac="0a:58:0a:f4:01:01"),
        pods=tuple(pods),
        segments=segments,
        host_port=HostPort(enabled=False, name="vsw-host", mac="0a:58:0a:f4:01:fe",
                           address=IPv4Interface("10.244.1.254/24")),
        dataplane=Dataplane(offloads=False),
        control=Control(socket=socket_path),
    )


class TraceSwitch:
    """Just enough switch for the commands; traces arrive when the test says so."""

    accel_name = "pure"

    def __init__(self) -> None:
        self.armed: dict[str, int] = {}
        self.pending: dict[str, list[dict]] = {}
        self.disarmed: list[str] = []
        self.fail_stats = False
        self.neighbor_times: list[float] = []
        self.tracer = self  # the commands reach traces through switch.tracer

    def dry_run(self, port_name: str, packet: str, now: float) -> dict:
        if not packet.startswith("udp"):
            raise ValueError(f"unknown packet kind {packet.split()[0]!r}")
        return {"text": f"trace of {packet} on {port_name}"}

    def arm(self, port_name: str, count: int) -> None:
        self.armed[port_name] = count

    def take(self, port_name: str) -> list[dict]:
        taken, self.pending[port_name] = self.pending.get(port_name, []), []
        return taken

    def disarm(self, port_name: str) -> None:
        self.disarmed.append(port_name)

    def statistics(self) -> dict:
        if self.fail_stats:
            raise RuntimeError("counter table corrupted")
        return {"ports": {}, "stages": {}, "dispositions": {}}

    def port_rows(self) -> list[dict]:
        return []

    def fdb_rows(self, now: float) -> list[dict]:
        return []

    def route_rows(self) -> list[dict]:
        return [{"prefix": "10.244.1.0/24", "kind": "connected", "segment": "default",
                 "via": None, "origin": "node.pod_cidr"}]

    def neighbor_rows(self, now: float) -> list[dict]:
        self.neighbor_times.append(now)
        return [{"segment": "default", "ip": IPv4Address("10.244.1.10"), "mac": "0a:58:0a:f4:01:0a",
                 "state": "reachable", "age_s": 0.5, "queued": 0}]


@pytest.fixture(autouse=True)
def rows_from_the_fake_switch(monkeypatch):
    """The commands read the switch's tables through vswitch.core.presentation; the fake switches
    here answer those reads themselves, so that a test sees what a command asked for."""
    for name in ("port_rows", "fdb_rows", "route_rows", "neighbor_rows", "conntrack_rows"):
        monkeypatch.setattr(presentation, name,
                            lambda switch, *args, _name=name: getattr(switch, _name)(*args))


class Client:
    """A raw connection, so tests can send anything, including garbage."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send_line(self, data: bytes) -> None:
        await self.stream.send_all(data + b"\n")

    async def read_line(self) -> dict:
        with trio.fail_after(5):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("server closed the connection")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def ask(self, request: object) -> dict:
        await self.send_line(json.dumps(request).encode())
        return await self.read_line()


@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "ctl" / "c.sock")


@pytest.fixture
def switch():
    return TraceSwitch()


@pytest.fixture
async def client(socket_path, switch, nursery):
    context = ControlContext(topology=make_topology(socket_path), switch=switch,
                             supervisor=NullSupervisor(), netns_path=lambda n: f"/run/netns/{n}",
                             port_ids={"a": 1})
    await nursery.start(serve_control, socket_path, ControlCommands(context))
    stream = await trio.open_unix_socket(socket_path)
    async with stream:
        yield Client(stream)


async def test_bad_json_is_answered_and_the_connection_stays_usable(client):
    await client.send_line(b"{not json")
    answer = await client.read_line()
    assert answer["ok"] is False and answer["error"].startswith("bad JSON")
    await client.send_line(b"\xff\xfe")
    assert (await client.read_line())["error"].startswith("bad JSON")
    assert (await client.ask({"cmd": "status"}))["ok"] is True


@pytest.mark.parametrize("request_, message", [
    ([1, 2], "must be a JSON object"),
    ("status", "must be a JSON object"),
    ({}, "no \"cmd\""),
    ({"cmd": 7}, "no \"cmd\""),
    ({"cmd": "status", "args": [1]}, "\"args\" must be a JSON object"),
    ({"cmd": "reboot"}, "unknown command 'reboot'; known: affinity, apply, capture, conntrack, "
                        "conntrack_flush, dns, endpoints, fdb, neighbors, netns, nodes, pod_add, "
                        "pod_del, pod_ready, pods, policy_add, policy_del, policy_list, ports, "
                        "reload, routes, service_add, service_del, service_set, services, stats, "
                        "status"),
    ({"cmd": "netns"}, "missing argument 'pod'"),
    ({"cmd": "netns", "args": {"pod": "zz"}}, "no pod named 'zz'; pods: a"),
    ({"cmd": "trace", "args": {"packet": "udp"}}, "missing argument 'port'"),
    ({"cmd": "trace", "args": {"port": "b", "packet": "udp"}}, "no port named 'b'; ports: a"),
    ({"cmd": "trace", "args": {"port": "a"}}, "trace needs 'packet' or 'count'"),
    ({"cmd": "trace", "args": {"port": "a", "packet": "udp", "count": 1}}, "not both"),
    ({"cmd": "trace", "args": {"port": "a", "packet": "gre x"}}, "bad packet: unknown packet kind"),
    ({"cmd": "trace", "args": {"port": "a", "count": 0}}, "'count' must be from 1 to 1000"),
    ({"cmd": "trace", "args": {"port": "a", "count": True}}, "'count' must be an integer"),
    ({"cmd": "trace", "args": {"port": "a", "count": "3"}}, "'count' must be an integer"),
    ({"cmd": "trace", "args": {"port": "a", "count": 1, "timeout": -1}}, "'timeout' must be"),
    ({"cmd": "trace", "args": {"port": "a", "count": 1, "timeout": 1e9}}, "'timeout' must be"),
])
async def test_bad_requests_get_a_clear_error(client, request_, message):
    answer = await client.ask(request_)
    assert answer["ok"] is False
    assert message in answer["error"]


async def test_several_requests_on_one_connection_are_answered_in_order(client):
    await client.send_line(b'{"cmd": "status"}\n\n{"cmd": "nope"}\n{"cmd": "pods"}')
    assert (await client.read_line())["result"]["node"] == "c"
    assert (await client.read_line())["ok"] is False
    pods = await client.read_line()
    assert [p["name"] for p in pods["result"]] == ["a"]


async def test_a_failing_command_is_an_error_answer_not_a_dead_server(client, switch, caplog):
    switch.fail_stats = True
    answer = await client.ask({"cmd": "stats"})
    assert answer == {"ok": False,
                      "error": "internal error in 'stats': RuntimeError: counter table corrupted"}
    assert "counter table corrupted" in caplog.text
    switch.fail_stats = False
    assert (await client.ask({"cmd": "stats"}))["ok"] is True


async def test_an_overlong_line_is_refused_and_the_connection_closed(client):
    await client.stream.send_all(b"x" * (MAX_LINE + 70000))
    answer = await client.read_line()
    assert answer["ok"] is False and "longer than" in answer["error"]
    with pytest.raises(EOFError):
        await client.read_line()


async def test_client_disconnect_mid_request_does_not_hurt_the_server(socket_path, client):
    stream = await trio.open_unix_socket(socket_path)
    await stream.send_all(b'{"cmd": "sta')
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert (await client.ask({"cmd": "status"}))["ok"] is True


async def test_trace_of_one_described_packet(client):
    answer = await client.ask({"cmd": "trace", "args": {"port": "a", "packet": "udp 1 > 2"}})
    assert answer == {"ok": True, "result": {"text": "trace of udp 1 > 2 on a"}}


async def test_trace_count_collects_real_packets_as_they_come(client, switch, nursery):
    async def packets_arrive():
        await trio.sleep(0.1)
        switch.pending["a"] = [{"text": "one"}]
        await trio.sleep(0.1)
        switch.pending["a"] = [{"text": "two"}, {"text": "three"}]

    nursery.start_soon(packets_arrive)
    answer = await client.ask({"cmd": "trace", "args": {"port": "a", "count": 2, "timeout": 5}})
    assert switch.armed == {"a": 2}
    assert answer["result"] == [{"text": "one"}, {"text": "two"}]
    assert switch.disarmed == []


async def test_trace_count_returns_what_it_has_at_the_timeout_and_disarms(client, switch):
    switch.pending["a"] = [{"text": "only"}]
    answer = await client.ask({"cmd": "trace", "args": {"port": "a", "count": 5, "timeout": 0.2}})
    assert answer["result"] == [{"text": "only"}]
    assert switch.disarmed == ["a"]


async def test_socket_is_private_and_removed_at_exit(socket_path, switch):
    context = ControlContext(topology=make_topology(socket_path), switch=switch,
                             supervisor=NullSupervisor(), netns_path=str, port_ids={})
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, socket_path, ControlCommands(context))
        assert os.stat(socket_path).st_mode & 0o777 == 0o600
        assert os.listdir(os.path.dirname(socket_path)) == ["c.sock"]  # no temporary name left
        nursery.cancel_scope.cancel()
    assert not os.path.exists(socket_path)


async def test_live_socket_is_not_taken_over(socket_path, client):
    with pytest.raises(ControlSocketBusy, match="another vswitchd answers"):
        prepare_socket_path(socket_path)
    assert (await client.ask({"cmd": "status"}))["ok"] is True


def test_stale_socket_is_removed_and_other_files_are_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    prepare_socket_path(path)
    assert not os.path.exists(path)

    with open(path, "w") as file:
        file.write("not a socket")
    with pytest.raises(ControlSocketBusy, match="not a socket"):
        prepare_socket_path(path)
    assert os.path.exists(path)


async def test_routes_are_the_switch_table(client):
    answer = await client.ask({"cmd": "routes"})
    assert answer == {"ok": True, "result": [
        {"prefix": "10.244.1.0/24", "kind": "connected", "segment": "default", "via": None,
         "origin": "node.pod_cidr"}]}


async def test_neighbors_are_read_at_the_current_time(client, switch):
    before = trio.current_time()
    answer = await client.ask({"cmd": "neighbors"})
    assert answer["ok"] is True
    # An address object in a row is rendered as text rather than failing the whole answer.
    assert answer["result"][0]["ip"] == "10.244.1.10"
    assert answer["result"][0]["state"] == "reachable"
    assert len(switch.neighbor_times) == 1
    assert before <= switch.neighbor_times[0] <= trio.current_time()


async def test_pods_and_status_show_segments_and_mtus(socket_path, switch):
    topology = make_topology(socket_path, blue=True)
    context = ControlContext(topology=topology, switch=switch, supervisor=NullSupervisor(),
                             netns_path=str, port_ids={"a": 1, "b": 2})
    commands = ControlCommands(context)
    pods = await commands.dispatch({"cmd": "pods"})
    assert [(p["name"], p["segment"], p["mtu"]) for p in pods] == [
        ("a", "default", 1500), ("b", "blue", 1280)]
    status = await commands.dispatch({"cmd": "status"})
    assert (status["segments"], status["static_routes"], status["accel"]) == (2, 0, "pure")


class ServiceSwitch(TraceSwitch):
    def __init__(self) -> None:
        super().__init__()
        self.filters: list[dict] = []

    def conntrack_rows(self, now: float, filters: dict) -> list[dict]:
        self.filters.append(filters)
        if "colour" in filters:
            raise ValueError("unknown conntrack filter colour; use dport, dst, proto")
        return []


async def test_runtime_changes_need_a_running_node(socket_path):
    context = ControlContext(topology=make_topology(socket_path), switch=ServiceSwitch(),
                             supervisor=NullSupervisor(), netns_path=str, port_ids={})
    commands = ControlCommands(context)
    for cmd, args in [("pod_add", {"pod": {"name": "x"}}), ("pod_del", {"name": "a"}),
                      ("service_del", {"name": "web"}), ("apply", {"toml": ""}),
                      ("reload", {})]:
        answer = await answer_of(commands, cmd, args)
        assert answer == {"ok": False, "error": "this daemon does not accept runtime changes"}


async def answer_of(commands, cmd, args):
    from vswitch.runtime.control import answer

    return await answer(commands, json.dumps({"cmd": cmd, "args": args}).encode())


@pytest.mark.parametrize("cmd, args, message", [
    ("conntrack", {"filters": {"colour": "red"}}, "unknown conntrack filter colour"),
    ("conntrack", {"filters": ["proto"]}, "'filters' must be an object of KEY: VALUE strings"),
    ("conntrack", {"filters": {"sport": 80}}, "'filters' must be an object of KEY: VALUE strings"),
    ("pod_add", {"pod": "x"}, "argument 'pod' must be a pod table"),
    ("pod_ready", {"name": "a"}, "missing argument 'ready'"),
    ("service_set", {"name": "web", "settings": "a=b"}, "'settings' must be an object"),
    ("apply", {}, "missing argument 'toml'"),
    ("apply", {"toml": "", "source": 3}, "argument 'source' must be a file name"),
])
async def test_bad_service_requests(socket_path, cmd, args, message):
    context = ControlContext(topology=make_topology(socket_path), switch=ServiceSwitch(),
                             supervisor=NullSupervisor(), netns_path=str, port_ids={},
                             node=object())
    answer = await answer_of(ControlCommands(context), cmd, args)
    assert answer["ok"] is False and message in answer["error"], answer


async def test_conntrack_filters_reach_the_core(socket_path):
    switch = ServiceSwitch()
    context = ControlContext(topology=make_topology(socket_path), switch=switch,
                             supervisor=NullSupervisor(), netns_path=str, port_ids={})
    answer = await answer_of(ControlCommands(context), "conntrack", {"filters": {"proto": "udp"}})
    assert answer == {"ok": True, "result": []}
    assert switch.filters == [{"proto": "udp"}]
