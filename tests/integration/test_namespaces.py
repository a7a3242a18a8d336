"""End to end: pods of one name in several namespaces, each with its own kernel objects, found
by namespace through the control socket, and a service that selects only its own namespace.

Every address targeted is inside the node's random pod CIDR, which exists only in namespaces this
test created and on the node's own host port.
"""
from __future__ import annotations

import pytest

from harness import PING_SCRIPT, PodSpec

pytestmark = pytest.mark.integration

WHO_AM_I = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.connect(('192.0.2.1', 9)); print(s.getsockname()[0])")

SERVICE = """
[[services]]
name = "web"
namespace = "prod"
ports = [ { port = 80, target_port = 8080 } ]
selector = { app = "web" }
"""


def test_pods_of_one_name_in_several_namespaces(make_daemon):
    pods = [PodSpec("web", namespace="prod", labels=(("app", "web"),)),
            PodSpec("web", namespace="dev", labels=(("app", "web"),)),
            PodSpec("client", labels=(("app", "web"),))]
    daemon = make_daemon(pods, start=False)
    daemon.update_spec(namespaces=(("prod", (("team", "blue"),)), ("dev", ())),
                       extra_toml=SERVICE)
    daemon.start()
    ips = daemon.spec.pod_ips()

    every = daemon.ctl("pods", "-A")
    assert sorted((p["namespace"], p["name"], p["ip"], p["netns"]) for p in every) == sorted(
        (spec.namespace or "default", spec.name, str(ips[spec.key]), daemon.spec.netns(spec.key))
        for spec in pods)
    assert [p["name"] for p in daemon.ctl("pods")] == ["client"]
    assert [(p["namespace"], p["name"]) for p in daemon.ctl("pods", "-n", "dev")] == [
        ("dev", "web")]

    # exec finds a pod by namespace, by NAMESPACE/NAME, or by a name only one namespace has.
    for argv, key in ((["-n", "prod", "web"], "prod/web"), (["dev/web"], "dev/web"),
                      (["client"], "client")):
        done = daemon.ctl_run("exec", *argv, "--", "python3", "-c", WHO_AM_I)
        assert (done.returncode, done.stdout.strip()) == (0, str(ips[key])), done.stderr
    ambiguous = daemon.ctl_run("exec", "web", "--", "true")
    assert ambiguous.returncode != 0
    assert "pod 'web' is in several namespaces (prod/web, dev/web)" in ambiguous.stderr

    # Namespaces scope names, not reachability: without policies every pod reaches every pod.
    reached = daemon.python_in("client", PING_SCRIPT, "1", str(ips["prod/web"]),
                               str(ips["dev/web"]))
    assert all(rtt is not None for rtt in reached.values()), reached

    # The prod service selects prod's pod only, though all three carry app=web.
    endpoints = [row for row in daemon.ctl("endpoints") if row["service"] == "prod/web"]
    assert [row["backend"] for row in endpoints] == [f"{ips['prod/web']}:8080"]
    assert [s["name"] for s in daemon.ctl("services", "-n", "prod")] == ["web"]
    assert daemon.ctl("services") == []
