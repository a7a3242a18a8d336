"""vswitchctl against a fake daemon socket, and vswitchd's config checking.

The fake daemon is a thread that answers canned results, so these tests pin down what the command
line sends and how it renders answers, independently of the daemon.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vswitch import cli
from vswitch.control.rendering import format_table

PODS = [
    {"name": "web-1", "namespace": "default", "ip": "10.244.1.2", "segment": "default",
     "mtu": 1500, "mac": "0a:58:0a:f4:01:02", "netns": "vsw-lab1.default.web-1",
     "netns_path": "/run/netns/vsw-lab1.default.web-1", "port": 2, "device": "vt-web1-ab12",
     "ready": True, "labels": {"app": "web"},
     "containers": [{"name": "http", "pid": 4242, "state": "running"}]},
    {"name": "client", "namespace": "test", "ip": "10.245.1.50", "segment": "blue", "mtu": 1400,
     "mac": "0a:58:0a:f5:01:32", "netns": "vsw-lab1.test.client",
     "netns_path": "/run/netns/vsw-lab1.test.client", "port": 3, "device": "vt-client-cd34",
     "ready": False, "labels": {}, "containers": []},
]
ROUTES = [
    {"prefix": "10.244.1.0/24", "kind": "connected", "segment": "default", "via": None,
     "origin": "node.pod_cidr"},
    {"prefix": "10.245.1.0/24", "kind": "connected", "segment": "blue", "via": None,
     "origin": "segments[0]"},
    {"prefix": "192.0.2.0/24", "kind": "static", "segment": "blue", "via": "10.245.1.20",
     "origin": "routes[0]"},
]
NEIGHBORS = [
    {"segment": "blue", "ip": "10.245.1.10", "mac": "0a:58:0a:f5:01:0a", "state": "reachable",
     "age_s": 1.25, "queued": 0},
    {"segment": "blue", "ip": "10.245.1.20", "mac": None, "state": "incomplete", "age_s": 0.5,
     "queued": 3, "probes": 2},
]
STATUS = {"node": "lab1", "version": "0.1.0", "pid": 77, "config": "/etc/vswitch/vswitchd.toml",
          "accel": "native", "offloads": True, "pods": 2, "ports": 3, "uptime_s": 12.5}
STATS = {
    "ports": {"web-1": {"id": 2, "rx_packets": 10, "rx_bytes": 1000, "tx_packets": 7,
                        "tx_bytes": 700, "rx_drops": {"spoofed-source": 2},
                        "tx_drops": {"tx-busy": 3, "port-gone": 0}}},
    "stages": {"eth-input": {"frames": 10, "runt": 0}, "l2-forward": {"unicast": 0}},
    "dispositions": {"cache-hit": 4, "forwarded": 4, "dropped": 2},
    "flow_cache": {"entries": 1, "hits": 4},
    "descriptions": {"stages": {"eth-input": {"frames": "frames received"}}},
}


class FakeDaemon:
    """Answers one JSON line per request from ``answers`` (cmd -> response object)."""

    def __init__(self, path: str, answers: dict[str, dict]) -> None:
        self.path = path
        self.answers = answers
        self.requests: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed by stop()
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    request = json.loads(line)
                    self.requests.append(request)
                    answer = self.answers.get(request["cmd"],
                                              {"ok": False, "error": f"unknown command {request['cmd']!r}"})
                    stream.write(json.dumps(answer).encode() + b"\n")
                    stream.flush()

    def stop(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)


def ok(result: object) -> dict:
    return {"ok": True, "result": result}


@pytest.fixture
def daemon(tmp_path):
    fake = FakeDaemon(str(tmp_path / "lab1.sock"), {
        "status": ok(STATUS), "pods": ok(PODS), "stats": ok(STATS),
        "ports": ok([{"id": 1, "name": "host", "rx_packets": 5}, {"id": 2, "name": "web-1",
                                                                "rx_packets": 12345}]),
        "fdb": ok([]), "services": ok([]),
        "routes": ok(ROUTES),
        "neighbors": ok(NEIGHBORS),
        "trace": ok({"text": "port web-1: udp ...\n  eth-input: ok\n  output client"}),
        "netns": ok({"pod": "web-1", "netns": "vsw-lab1.default.web-1",
                     "netns_path": "/proc/self/ns/net"}),
    })
    try:
        yield fake
    finally:
        fake.stop()


def run_ctl(capsys, *argv: str, environ: dict | None = None, socket_dir: str = "/nonexistent"):
    code = cli.vswitchctl_main(list(argv), environ=environ or {}, socket_dir=socket_dir)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_is_a_readable_list(daemon, capsys):
    code, out, err = run_ctl(capsys, "--socket", daemon.path, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "node:     lab1"
    assert "offloads: yes" in lines
    assert daemon.requests == [{"cmd": "status", "args": {}}]


def test_pods_table_is_aligned(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "pods", "-A")
    assert code == 0
    assert daemon.requests[-1] == {"cmd": "pods", "args": {}}
    header, first, second = out.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "IP", "SEGMENT", "MAC", "NETNS", "PORT",
                              "DEVICE", "READY", "CONTAINERS"]
    assert first.index("default") == header.index("NAMESPACE") == second.index("test") == 0
    # Every column starts where its header starts (text) or ends where it ends (numbers).
    assert first.index("10.244.1.2") == header.index("IP") == second.index("10.245.1.50")
    assert first.index("default", 1) == header.index("SEGMENT") == second.index("blue")
    assert first.index("vsw-lab1.default.web-1") == header.index("NETNS")
    port_end = header.index("PORT") + len("PORT")
    assert first[port_end - 1] == "2" and second[port_end - 1] == "3"
    assert first.split()[-2:] == ["yes", "http:running"]
    assert second.split()[-2:] == ["no", "-"]


@pytest.mark.parametrize("argv", [["--json", "pods"], ["pods", "--json"]])
def test_json_before_or_after_the_command_prints_exactly_the_result(daemon, capsys, argv):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, *argv)
    assert code == 0
    assert json.loads(out) == PODS
    assert {"name", "ip", "mac", "netns"} <= set(json.loads(out)[0])


def test_pods_json_carries_segment_and_mtu(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "pods", "--json")
    assert code == 0
    assert [(p["segment"], p["mtu"]) for p in json.loads(out)] == [("default", 1500), ("blue", 1400)]


def test_routes_table(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "routes")
    assert code == 0
    assert out.splitlines() == [
        "PREFIX         KIND       SEGMENT  VIA          ORIGIN",
        "10.244.1.0/24  connected  default  -            node.pod_cidr",
        "10.245.1.0/24  connected  blue     -            segments[0]",
        "192.0.2.0/24   static     blue     10.245.1.20  routes[0]",
    ]
    assert daemon.requests == [{"cmd": "routes", "args": {}}]


def test_neighbors_table_shows_extra_fields_after_the_known_ones(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "neighbors")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == ["SEGMENT", "IP", "MAC", "STATE", "AGE_S", "QUEUED", "PROBES"]
    assert first.split() == ["blue", "10.245.1.10", "0a:58:0a:f5:01:0a", "reachable", "1.25", "0", "-"]
    assert second.split() == ["blue", "10.245.1.20", "-", "incomplete", "0.5", "3", "2"]
    assert daemon.requests == [{"cmd": "neighbors", "args": {}}]


@pytest.mark.parametrize(("command", "expected"), [("routes", ROUTES), ("neighbors", NEIGHBORS)])
def test_routes_and_neighbors_as_json(daemon, capsys, command, expected):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, command, "--json")
    assert code == 0 and json.loads(out) == expected


@pytest.mark.parametrize("command", ["routes", "neighbors"])
def test_empty_routes_and_neighbors_say_so(daemon, capsys, command):
    daemon.answers[command] = ok([])
    assert run_ctl(capsys, "--socket", daemon.path, command)[1] == "(none)\n"


def test_ports_table_right_aligns_numbers(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "ports")
    assert code == 0
    assert out.splitlines() == ["ID  NAME   RX_PACKETS",
                                " 1  host            5",
                                " 2  web-1       12345"]


def test_empty_fdb_says_so(daemon, capsys):
    assert run_ctl(capsys, "--socket", daemon.path, "fdb")[1] == "(none)\n"


def test_stats_show_traffic_drops_by_reason_stages_and_dispositions(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "stats")
    assert code == 0
    sections = out.split("\n\n")
    ports = sections[0].splitlines()
    assert ports[0] == "Ports"
    assert ports[1].split() == ["PORT", "ID", "RX_PACKETS", "RX_BYTES", "TX_PACKETS", "TX_BYTES",
                                "RX_DROPS", "TX_DROPS"]
    # Only reasons that happened are shown.
    assert ports[2].split() == ["web-1", "2", "10", "1000", "7", "700", "spoofed-source=2",
                                "tx-busy=3"]
    stages = sections[1].splitlines()
    assert stages[0] == "Stages" and stages[2].split() == ["eth-input", "frames", "10"]
    assert len(stages) == 3  # zero counters are left out
    assert sections[2].splitlines()[1:] == ["DISPOSITION  PACKETS", "cache-hit          4",
                                            "forwarded          4", "dropped            2"]
    assert "Flow cache" in sections[3] and "hits:    4" in sections[3]
    assert "frames received" not in out


def test_trace_of_a_packet_prints_its_text(daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "trace", "web-1", "udp 1 > 2")
    assert code == 0
    assert out == "port web-1: udp ...\n  eth-input: ok\n  output client\n"
    assert daemon.requests[-1] == {"cmd": "trace", "args": {"port": "web-1", "packet": "udp 1 > 2"}}


def test_trace_count_asks_for_real_packets_and_prints_each(daemon, capsys):
    daemon.answers["trace"] = ok([{"text": "first"}, {"text": "second"}])
    code, out, _ = run_ctl(capsys, "--socket", daemon.path, "trace", "web-1", "--count", "2",
                           "--timeout", "3")
    assert code == 0
    assert out == "first\n\nsecond\n"
    assert daemon.requests[-1]["args"] == {"port": "web-1", "count": 2, "timeout": 3.0}


def test_trace_count_without_packets_fails(daemon, capsys):
    daemon.answers["trace"] = ok([])
    code, _, err = run_ctl(capsys, "--socket", daemon.path, "trace", "web-1", "--count", "1")
    assert code == 1 and "no packets from web-1" in err


@pytest.mark.parametrize("argv", [["trace", "web-1"], ["trace", "web-1", "udp 1 > 2", "--count", "1"]])
def test_trace_needs_exactly_one_of_packet_and_count(daemon, capsys, argv):
    code, _, err = run_ctl(capsys, "--socket", daemon.path, *argv)
    assert code == 1 and "trace needs either a PACKET or --count N" in err
    assert daemon.requests == []


def test_daemon_errors_are_reported_with_exit_1(daemon, capsys):
    daemon.answers["trace"] = {"ok": False, "error": "bad packet: unknown packet kind 'gre'"}
    code, out, err = run_ctl(capsys, "--socket", daemon.path, "trace", "web-1", "gre")
    assert (code, out) == (1, "")
    assert err == "vswitchctl: bad packet: unknown packet kind 'gre'\n"


def test_socket_from_environment(daemon, capsys):
    code, out, _ = run_ctl(capsys, "status", environ={"VSWITCH_SOCKET": daemon.path})
    assert code == 0 and "lab1" in out


def test_socket_discovered_when_it_is_the_only_one(daemon, capsys):
    code, out, _ = run_ctl(capsys, "status", socket_dir=os.path.dirname(daemon.path))
    assert code == 0 and "lab1" in out


def test_several_sockets_are_listed_not_guessed(tmp_path, capsys):
    for name in ("a.sock", "b.sock"):
        (tmp_path / name).touch()
    code, _, err = run_ctl(capsys, "status", socket_dir=str(tmp_path))
    assert code == 1
    assert f"{tmp_path}/a.sock, {tmp_path}/b.sock" in err


def test_no_socket_means_no_daemon(tmp_path, capsys):
    code, _, err = run_ctl(capsys, "status", socket_dir=str(tmp_path))
    assert (code, err) == (1, f"vswitchctl: no vswitchd running (no control socket in {tmp_path})\n")


def test_stale_socket_is_reported(tmp_path, capsys):
    path = str(tmp_path / "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)
    code, _, err = run_ctl(capsys, "--socket", path, "status")
    assert code == 1 and "not answering" in err


def run_module(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vswitch.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


# setns needs CAP_SYS_ADMIN. CI runs as root, so there these tests always run: a skip there would
# hide a broken exec, hence the condition.
needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="setns needs CAP_SYS_ADMIN")


@needs_root
def test_exec_runs_the_command_in_the_pods_namespace(daemon):
    # The fake daemon names the test's own namespace, so entering it changes nothing on the host.
    done = run_module("vswitchctl", "--socket", daemon.path, "exec", "web-1", "--",
                      sys.executable, "-c", "print('inside')")
    assert (done.returncode, done.stdout) == (0, "inside\n"), done.stderr
    assert daemon.requests == [{"cmd": "netns", "args": {"pod": "web-1"}}]


@needs_root
def test_exec_of_a_missing_command_exits_127(daemon):
    done = run_module("vswitchctl", "--socket", daemon.path, "exec", "web-1", "--",
                      "vswitch-no-such-command")
    assert done.returncode == 127
    assert "vswitch-no-such-command: command not found" in done.stderr


@needs_root
def test_exec_names_the_namespace_it_was_given(daemon):
    done = run_module("vswitchctl", "--socket", daemon.path, "exec", "-n", "test", "client",
                      "--", sys.executable, "-c", "print('inside')")
    assert (done.returncode, done.stdout) == (0, "inside\n"), done.stderr
    assert daemon.requests == [{"cmd": "netns", "args": {"pod": "client", "namespace": "test"}}]


@pytest.mark.parametrize("flags, args", [
    ((), {"namespace": "default"}), (("-n", "prod"), {"namespace": "prod"}), (("-A",), {}),
    (("--all-namespaces",), {}), (("--namespace", "x"), {"namespace": "x"})])
@pytest.mark.parametrize("listing", ["pods", "services"])
def test_listings_ask_for_a_namespace_as_kubectl_does(daemon, capsys, listing, flags, args):
    code, _, _ = run_ctl(capsys, "--socket", daemon.path, listing, *flags)
    assert code == 0
    assert daemon.requests[-1] == {"cmd": listing, "args": args}


def test_exec_of_an_unknown_pod_fails_before_entering_anything(daemon, capsys):
    daemon.answers["netns"] = {"ok": False, "error": "no pod named 'zz'; pods: web-1, client"}
    code, _, err = run_ctl(capsys, "--socket", daemon.path, "exec", "zz", "--", "true")
    assert code == 1 and "no pod named 'zz'" in err


GOOD_CONFIG = """
[node]
name = "lab1"
pod_cidr = "10.244.1.0/24"

[[pods]]
name = "web-1"

[[pods]]
name = "client"
ip = "10.244.1.50"
"""


def test_vswitchd_check_accepts_a_good_config(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD_CONFIG)
    done = run_module("vswitchd", "--check", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}: ok (2 pods)\n", "")


def test_vswitchd_check_counts_segments_and_routes(tmp_path):
    path = tmp_path / "routed.toml"
    path.write_text(GOOD_CONFIG + '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
                    '[[routes]]\ndst = "192.0.2.0/24"\nvia = "10.245.1.20"\n')
    done = run_module("vswitchd", "--check", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"{path}: ok (2 pods, 2 segments, 1 static route)\n", "")


def test_vswitchd_check_rejects_overlapping_segments_with_the_key_path(tmp_path):
    path = tmp_path / "overlap.toml"
    path.write_text(GOOD_CONFIG + '[[segments]]\nname = "blue"\ncidr = "10.244.0.0/16"\n')
    done = run_module("vswitchd", "--check", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"vswitchd: config error: {path}: segments[0].cidr: 10.244.0.0/16 "
                           "overlaps node.pod_cidr 10.244.1.0/24; the CIDRs of a node's segments "
                           "must be disjoint\n")


def test_vswitchd_check_names_the_bad_key_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_CONFIG.replace('"10.244.1.50"', '"10.9.9.9"'))
    done = run_module("vswitchd", "--check", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"vswitchd: config error: {path}: pods[1].ip: ")


def test_vswitchd_with_a_bad_config_creates_nothing(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_CONFIG.replace('"lab1"', '"lab1"\nmtu = 12'))
    import vswitch.runtime.daemon as daemon_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("the daemon started with a bad config")

    monkeypatch.setattr(daemon_module, "run_daemon", must_not_run)
    assert cli.vswitchd_main(["--config", str(path)]) == 2
    assert "node.mtu" in capsys.readouterr().err


def test_vswitchd_checks_and_runs_the_cross_node_example(capsys, monkeypatch):
    """The overlay example validates, and the daemon runs it with its overlay and peers."""
    import vswitch.runtime.daemon as daemon_module
    from pathlib import Path

    example = str(Path(__file__).resolve().parents[2] / "config" / "overlay-static.toml")
    assert cli.vswitchd_main(["--check", example]) == 0
    assert "overlay VNI 1, 1 static peer" in capsys.readouterr().out
    ran = []

    async def run_daemon(topology, **kwargs):
        ran.append((topology.overlay.vni, [p.name for p in topology.peers]))

    monkeypatch.setattr(daemon_module, "run_daemon", run_daemon)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.vswitchd_main(["--config", example]) == 0
    assert ran == [(1, ["lab2"])]


BRIDGED_UPLINK = """
[uplink]
address = "192.0.2.2/24"
gateway = "192.0.2.1"
netns = "lab-underlay"
bridge = "lab-br0"
"""


def test_vswitchd_runs_an_uplink_on_a_shared_bridge(tmp_path, monkeypatch):
    """The underlay bridge is not forwarding across nodes: the daemon carries it out."""
    import vswitch.runtime.daemon as daemon_module

    path = tmp_path / "bridged.toml"
    path.write_text(GOOD_CONFIG + BRIDGED_UPLINK)
    ran = []

    async def run_daemon(topology, **kwargs):
        ran.append((topology.uplink.netns, topology.uplink.bridge))

    monkeypatch.setattr(daemon_module, "run_daemon", run_daemon)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.vswitchd_main(["--config", str(path)]) == 0
    assert ran == [("lab-underlay", "lab-br0")]


def test_vswitchd_refuses_a_metrics_address_another_daemon_listens_on(tmp_path, capsys,
                                                                      monkeypatch):
    """Checked before anything is created, so a second node with a copied file fails cleanly."""
    import vswitch.runtime.daemon as daemon_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("the daemon started although its metrics address is taken")

    monkeypatch.setattr(daemon_module, "run_daemon", must_not_run)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        path = tmp_path / "metrics.toml"
        path.write_text(GOOD_CONFIG.replace("[[pods]]", f'[control]\nmetrics = "{address}"\n\n'
                                                          "[[pods]]", 1))
        assert cli.vswitchd_main(["--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"vswitchd: {path}: control.metrics: {address} is already in use (another daemon's "
        "metrics endpoint? give each node its own port)\n")


def test_vswitchd_refuses_to_run_without_root(tmp_path, capsys, monkeypatch):
    path = tmp_path / "good.toml"
    path.write_text(GOOD_CONFIG)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.vswitchd_main(["--config", str(path)]) == 1
    assert "vswitchd: must run as root" in capsys.readouterr().err


def test_module_entry_point_names_the_programs():
    done = run_module()
    assert done.returncode == 2 and "vswitchd|vswitchctl" in done.stderr


def test_format_table_handles_missing_cells_and_nested_values():
    text = format_table([{"a": 1, "b": {"x": 1}}, {"a": 22, "c": None}])
    assert text.splitlines() == [" A  B    C", " 1  x=1  -", "22  -    -"]


def test_clean_needs_a_config_or_a_node(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.vswitchctl_main(["clean"])
    assert exit_info.value.code == 2
    assert "one of the arguments --config --node is required" in capsys.readouterr().err


@needs_root
def test_clean_of_a_node_that_left_nothing(tmp_path, capsys):
    node = "vstc" + os.urandom(3).hex()
    code, out, err = run_ctl(capsys, "clean", "--node", node, "--state-dir", str(tmp_path))
    assert (code, out, err) == (0, f"nothing to clean for node {node}\n", "")


# -- services, conntrack and runtime changes ----------------------------------------------------

SERVICES = [{
    "name": "web", "namespace": "default", "type": "NodePort", "cluster_ip": "10.96.0.20",
    "programmed": True,
    "ports": [{"name": "http", "protocol": "tcp", "port": 80, "target_port": 8080,
               "node_port": 30080, "endpoints": 2}],
    "external_ips": [], "affinity": {"mode": "ClientIP", "timeout": 10800},
    "policies": {"internal": "Cluster", "external": "Local"}, "load_balancer": "random",
    "endpoints": 2,
}]
CONNTRACK = [{
    "proto": "tcp", "description": "tcp 10.244.1.50:40000 > 10.96.0.20:80",
    "original": {}, "reply": {}, "dnat": {"ip": "10.244.1.10", "port": 8080}, "snat": None,
    "state": "ESTABLISHED", "replied": True, "assured": True, "age": 1.0, "idle": 0.5,
    "expires_in": 86399.5, "packets": {}, "bytes": {}, "labels": {"service": "default/web"},
}]
CHANGE = {"pod": {"name": "c", "ip": "10.244.1.12", "segment": "default", "port": 4},
          "program": {"generation": 3, "changed": True}}


@pytest.fixture
def services_daemon(tmp_path):
    fake = FakeDaemon(str(tmp_path / "lab1.sock"), {
        "services": ok(SERVICES), "endpoints": ok([{"service": "default/web", "port": "http",
                                                    "protocol": "tcp", "service_port": 80,
                                                    "backend": "10.244.1.10:8080",
                                                    "pod": "web-1", "local": True}]),
        "affinity": ok([]), "conntrack": ok(CONNTRACK), "conntrack_flush": ok({"flushed": 3}),
        "pod_add": ok(CHANGE), "pod_del": ok({"removed": "c", "program": {}}),
        "pod_ready": ok({"pod": "c", "ready": False, "program": {}}),
        "service_add": ok({"added": [], "program": {}}),
        "service_del": ok({"removed": "default/web", "program": {}}),
        "service_set": ok({"service": {}, "program": {}}),
        "apply": {"ok": False, "error": "f.toml: pods[0].ip: 10.9.9.9 is outside node.pod_cidr"},
    })
    try:
        yield fake
    finally:
        fake.stop()


def test_services_table(services_daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "services")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS", "AFFINITY",
                              "POLICY", "LB", "EXTERNAL-IPS"]
    assert row.startswith("default/web  NodePort  10.96.0.20  http:80/tcp->8080 (node 30080)")
    assert "ClientIP 10800s" in row and "ext=Local,int=Cluster" in row


def test_endpoints_affinity_and_conntrack_tables(services_daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "endpoints")
    assert out.splitlines()[0].split() == ["SERVICE", "PORT", "PROTOCOL", "SERVICE_PORT",
                                           "BACKEND", "POD", "LOCAL"]
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "affinity")
    assert out.strip() == "(none)"
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "conntrack",
                           "--filter", "proto=tcp", "--filter", "service=web")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["FLOW", "STATE", "DNAT", "SNAT", "SERVICE", "EXPIRES"]
    assert "ESTABLISHED" in row and "10.244.1.10:8080" in row and "default/web" in row
    assert services_daemon.requests[-1] == {
        "cmd": "conntrack", "args": {"filters": {"proto": "tcp", "service": "web"}}}


def test_conntrack_flush_sends_its_filters(services_daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "conntrack", "flush",
                           "--filter", "dst=10.96.0.20")
    assert (code, out.strip()) == (0, "flushed 3 entries")
    assert services_daemon.requests[-1] == {"cmd": "conntrack_flush",
                                            "args": {"filters": {"dst": "10.96.0.20"}}}


def test_bad_filter_is_refused_before_sending(services_daemon, capsys):
    code, _, err = run_ctl(capsys, "--socket", services_daemon.path, "conntrack", "--filter", "tcp")
    assert code == 1 and "--filter: expected KEY=VALUE, got 'tcp'" in err
    assert services_daemon.requests == []


def test_pod_add_sends_a_pod_table(services_daemon, capsys):
    code, out, err = run_ctl(
        capsys, "--socket", services_daemon.path, "pod", "add", "c", "--ip", "10.244.1.12",
        "--label", "app=web", "--unready", "--segment", "default", "--mtu", "1400",
        "--container", "http=python3 -m http.server '8080'", "--port", "http=8080")
    assert code == 0, err
    assert services_daemon.requests[-1] == {"cmd": "pod_add", "args": {"pod": {
        "name": "c", "ip": "10.244.1.12", "segment": "default", "mtu": 1400,
        "labels": {"app": "web"}, "ready": False,
        "containers": [{"name": "http", "command": ["python3", "-m", "http.server", "8080"],
                        "ports": [{"name": "http", "port": 8080}]}]}}}
    assert "pod: c 10.244.1.12 (segment default, port 4)" in out


@pytest.mark.parametrize("argv, request_", [
    (["pod", "del", "c"], {"cmd": "pod_del", "args": {"name": "c"}}),
    (["pod", "ready", "c"], {"cmd": "pod_ready", "args": {"name": "c", "ready": True}}),
    (["pod", "unready", "c"], {"cmd": "pod_ready", "args": {"name": "c", "ready": False}}),
    (["service", "del", "default/web"], {"cmd": "service_del", "args": {"name": "default/web"}}),
    (["service", "set", "web", "session_affinity=None", "selector=app=web,tier=x"],
     {"cmd": "service_set", "args": {"name": "web", "settings": {
         "session_affinity": "None", "selector": "app=web,tier=x"}}}),
])
def test_change_commands_send_their_requests(services_daemon, capsys, argv, request_):
    code, _, err = run_ctl(capsys, "--socket", services_daemon.path, *argv)
    assert code == 0, err
    assert services_daemon.requests[-1] == request_


def test_service_add_sends_the_file_and_its_name(services_daemon, capsys, tmp_path):
    fragment = tmp_path / "web.toml"
    fragment.write_text('[[services]]\nname = "web"\n')
    code, _, err = run_ctl(capsys, "--socket", services_daemon.path, "service", "add", str(fragment))
    assert code == 0, err
    assert services_daemon.requests[-1] == {"cmd": "service_add", "args": {
        "toml": '[[services]]\nname = "web"\n', "source": str(fragment)}}


def test_apply_errors_name_the_file_and_key(services_daemon, capsys, tmp_path):
    fragment = tmp_path / "f.toml"
    fragment.write_text('[[pods]]\nname = "x"\nip = "10.9.9.9"\n')
    code, _, err = run_ctl(capsys, "--socket", services_daemon.path, "apply", str(fragment))
    assert code == 1
    assert err.strip() == "vswitchctl: f.toml: pods[0].ip: 10.9.9.9 is outside node.pod_cidr"


def test_apply_of_a_missing_file_fails_before_sending(services_daemon, capsys, tmp_path):
    code, _, err = run_ctl(capsys, "--socket", services_daemon.path, "apply",
                           str(tmp_path / "nope.toml"))
    assert code == 1 and "cannot read" in err and services_daemon.requests == []


def test_change_json_is_the_daemons_answer(services_daemon, capsys):
    code, out, _ = run_ctl(capsys, "--socket", services_daemon.path, "--json", "pod", "add", "c")
    assert code == 0 and json.loads(out) == CHANGE


def test_vswitchd_check_counts_services_and_shows_the_uplink(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from vswitch.cli import vswitchd_main as m; sys.exit(m())",
         "--check", str(Path(__file__).resolve().parents[2] / "config" / "services.toml")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 pods, 2 services, uplink 192.0.2.2/24" in result.stdout


RELOAD = {"summary": "reload: 1 pod added, 1 removed, 2 services changed",
          "config": "/etc/vswitch/vswitchd.toml",
          "pods": {"added": ["d"], "removed": ["b"], "replaced": [], "updated": [],
                   "unchanged": ["a", "c"]},
          "services": {"added": [], "removed": [], "replaced": ["default/web", "default/db"],
                       "unchanged": []},
          "removed_runtime_additions": {"pods": [], "services": []},
          "program": {"generation": 4, "changed": True}}


def test_reload_prints_the_summary_and_what_changed(tmp_path, capsys):
    fake = FakeDaemon(str(tmp_path / "lab1.sock"), {"reload": ok(RELOAD)})
    try:
        code, out, err = run_ctl(capsys, "--socket", fake.path, "reload")
        assert code == 0, err
        assert out.splitlines() == [
            "reload: 1 pod added, 1 removed, 2 services changed",
            "pods added: d",
            "pods removed: b",
            "services replaced: default/web, default/db",
            "program: generation=4,changed=yes",
        ]
        assert fake.requests == [{"cmd": "reload", "args": {}}]
        code, out, _ = run_ctl(capsys, "--socket", fake.path, "reload", "--json")
        assert code == 0 and json.loads(out) == RELOAD
    finally:
        fake.stop()


def test_a_refused_reload_prints_the_error_and_exits_1(tmp_path, capsys):
    error = ("reload failed: /etc/vswitch/vswitchd.toml: pods[2].ip: 10.9.9.9 is outside "
             "node.pod_cidr")
    fake = FakeDaemon(str(tmp_path / "lab1.sock"), {"reload": {"ok": False, "error": error}})
    try:
        code, out, err = run_ctl(capsys, "--socket", fake.path, "reload")
        assert (code, out) == (1, "")
        assert err.strip() == f"vswitchctl: {error}"
    finally:
        fake.stop()
