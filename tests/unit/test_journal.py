"""The journal, the shared underlay's record and the locks, on plain files (no root needed)."""
from __future__ import annotations

import json
import os
import threading
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from vswitch.model import Control, Dataplane, HostPort, Node, Topology, Uplink, mac_for_ip
from vswitch.runtime.journal import (Journal, JournalError, NodeBusyError, NodeLock,
                                     UnderlayBusyError, UnderlayLock, UnderlayRecord, UnderlayUse,
                                     other_nodes_entries, read_journal, underlay_file_stem)
from vswitch.runtime.kernel import NodeNames


def test_the_journal_records_an_underlay_use_and_forgets_it(tmp_path):
    journal = Journal(str(tmp_path), "n1")
    use = UnderlayUse(netns="lab-underlay", tap="vsun1-abcd")
    journal.record_tap("vsun1-abcd")
    journal.record_underlay(use)
    journal.record_underlay(use)
    assert read_journal(str(tmp_path), "n1").underlays == (use,)
    data = json.loads((tmp_path / "n1.state").read_text())
    assert data["underlays"] == [{"netns": "lab-underlay", "tap": "vsun1-abcd"}]

    journal.erase_underlay(use)
    assert "underlays" not in json.loads((tmp_path / "n1.state").read_text())
    journal.erase_tap("vsun1-abcd")
    assert not (tmp_path / "n1.state").exists()


def test_an_underlay_use_in_the_root_namespace_round_trips(tmp_path):
    journal = Journal(str(tmp_path), "n1")
    journal.record_underlay(UnderlayUse(netns=None, tap="vsun1-abcd"))
    assert Journal(str(tmp_path), "n1").entries().underlays == (UnderlayUse(None, "vsun1-abcd"),)


@pytest.mark.parametrize("entry", [{"netns": "x"}, {"netns": 3, "tap": "t"}, "x"])
def test_a_malformed_underlay_entry_is_a_journal_error(tmp_path, entry):
    (tmp_path / "n1.state").write_text(json.dumps(
        {"version": 1, "node": "n1", "netns": [], "taps": [], "underlays": [entry]}))
    with pytest.raises(JournalError, match="n1.state: an underlay entry"):
        read_journal(str(tmp_path), "n1")


def test_a_journal_without_underlays_still_reads(tmp_path):
    (tmp_path / "n1.state").write_text(json.dumps(
        {"version": 1, "node": "n1", "netns": ["vsw-n1-a"], "taps": ["vsp-a"]}))
    entries = read_journal(str(tmp_path), "n1")
    assert (entries.netns, entries.taps, entries.underlays) == (("vsw-n1-a",), ("vsp-a",), ())


def test_underlay_files_are_named_after_the_namespace(tmp_path):
    assert underlay_file_stem("/run/vswitch", "lab") == "/run/vswitch/underlay.netns.lab"
    assert underlay_file_stem("/run/vswitch", None) == "/run/vswitch/underlay.root"
    assert underlay_file_stem("/s", "root") != underlay_file_stem("/s", None)


def test_the_underlay_record_round_trips_and_vanishes_when_empty(tmp_path):
    record = UnderlayRecord.load(str(tmp_path), "lab")
    assert not record and not os.path.exists(record.path)
    record.created_netns = True
    record.bridges.append("br0")
    record.addresses.append(("br1", "192.0.2.1/24"))
    record.save()
    again = UnderlayRecord.load(str(tmp_path), "lab")
    assert (again.created_netns, again.bridges, again.addresses) == (
        True, ["br0"], [("br1", "192.0.2.1/24")])
    again.created_netns = False
    again.bridges.clear()
    again.addresses.clear()
    again.save()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", ["{", json.dumps({"version": 1, "netns": "other",
                                                      "created_netns": True, "bridges": [],
                                                      "addresses": []}),
                                     json.dumps({"version": 1, "netns": "lab"})])
def test_a_bad_underlay_record_is_a_journal_error(tmp_path, content):
    (tmp_path / "underlay.netns.lab.state").write_text(content)
    with pytest.raises(JournalError, match="underlay.netns.lab.state: "):
        UnderlayRecord.load(str(tmp_path), "lab")


def test_the_underlay_lock_waits_its_turn(tmp_path):
    first = UnderlayLock(str(tmp_path), "lab")
    first.acquire()
    acquired = threading.Event()

    def second() -> None:
        with UnderlayLock(str(tmp_path), "lab"):
            acquired.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not acquired.wait(0.2)
    first.release()
    assert acquired.wait(5)
    thread.join()
    # Each holder unlinks the file on release: nothing is left between uses.
    assert os.listdir(tmp_path) == []


def test_the_underlay_lock_gives_up_after_its_timeout(tmp_path):
    with UnderlayLock(str(tmp_path), None):
        started = time.monotonic()
        with pytest.raises(UnderlayBusyError, match=f"held by pid {os.getpid()} after 0 s"):
            UnderlayLock(str(tmp_path), None, timeout=0.1).acquire()
        assert time.monotonic() - started >= 0.1
    # A busy underlay is an operational failure, reported like a busy node.
    assert issubclass(UnderlayBusyError, NodeBusyError)


def test_the_node_lock_still_fails_at_once(tmp_path):
    with NodeLock(str(tmp_path), "n1"):
        with pytest.raises(NodeBusyError, match=f"node is in use by pid {os.getpid()}"):
            NodeLock(str(tmp_path), "n1").acquire()
    assert os.listdir(tmp_path) == []


def topology(tmp_path, uplink: Uplink | None) -> Topology:
    return Topology(
        source="t.toml",
        node=Node(name="n1", pod_cidr=IPv4Network("10.244.1.0/24"),
                  gateway=IPv4Address("10.244.1.1"), gateway_mac="0a:58:0a:f4:01:01"),
        pods=(), dataplane=Dataplane(),
        host_port=HostPort(enabled=True, name="vshn1-abcd", mac="0a:58:0a:f4:01:fe",
                           address=IPv4Interface("10.244.1.254/24")),
        control=Control(socket=str(tmp_path / "n1.sock"), state_dir=str(tmp_path)),
        uplink=uplink)


def uplink(netns: str | None, bridge: str | None) -> Uplink:
    return Uplink(address=IPv4Interface("192.0.2.2/24"), gateway=IPv4Address("192.0.2.1"),
                  netns=netns, name="vsun1-abcd", mac=mac_for_ip(IPv4Address("192.0.2.2")),
                  far_mac=mac_for_ip(IPv4Address("192.0.2.1")), bridge=bridge)


@pytest.mark.parametrize(("netns", "bridge", "underlays"), [
    (None, None, ()),
    ("lab", None, (UnderlayUse("lab", "vsun1-abcd"),)),
    ("lab", "br0", (UnderlayUse("lab", "vsun1-abcd"),)),
    (None, "br0", (UnderlayUse(None, "vsun1-abcd"),)),
])
def test_a_topology_names_its_underlay_for_cleanup(tmp_path, netns, bridge, underlays):
    names = NodeNames.of_topology(topology(tmp_path, uplink(netns, bridge)))
    assert names.underlays == underlays
    # Never the namespace itself: it may be the user's or other nodes'.
    assert "lab" not in names.netns and "vsun1-abcd" in names.taps
    assert (names | names).underlays == underlays


def test_other_nodes_journals_are_found_but_not_our_own_or_the_underlays(tmp_path):
    Journal(str(tmp_path), "a").record_netns("vsw-a-b-c")
    Journal(str(tmp_path), "a-b").record_netns("vsw-a-b-c")
    Journal(str(tmp_path), "a-b").record_tap("vsha-b-1234")
    record = UnderlayRecord.load(str(tmp_path), "lab")
    record.created_netns = True
    record.save()
    (tmp_path / "broken.state").write_text("{")
    found = other_nodes_entries(str(tmp_path), "a")
    assert set(found) == {"a-b"}
    assert found["a-b"].netns == ("vsw-a-b-c",) and found["a-b"].taps == ("vsha-b-1234",)
    assert other_nodes_entries(str(tmp_path / "missing"), "a") == {}


def test_a_pod_whose_namespace_another_node_journals_is_refused_untouched(tmp_path):
    """``vsw-a-b-c`` is pod ``c`` of node ``a-b`` and pod ``b-c`` of node ``a``."""
    from vswitch.model import Pod
    from vswitch.runtime.kernel import KernelError, NodeObjects

    Journal(str(tmp_path), "a-b").record_netns("vsw-a-b-c")
    objects = NodeObjects("a", str(tmp_path))
    assert objects.other_nodes_claims() == {"vsw-a-b-c": "a-b"}
    pod = Pod(name="b-c", ip=IPv4Address("10.244.1.10"), mac=mac_for_ip(IPv4Address("10.244.1.10")),
              netns="vsw-a-b-c", tap="vspb-c-abcd")
    with pytest.raises(KernelError, match="namespace vsw-a-b-c is node a-b's"):
        objects.create_pod(None, pod, None, 1500, False)  # type: ignore[arg-type]
    # Nothing journalled: a teardown of node a must not take node a-b's pod away.
    assert not objects.journal.entries()
