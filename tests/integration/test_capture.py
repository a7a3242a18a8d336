"""`vswitchctl capture` on a live port writes a pcap file with the frames the pod really sent and
received, and prints tcpdump-like lines without -w."""
from __future__ import annotations

import threading
import time

import pytest

from harness import PING_SCRIPT, Daemon
from vswitch.wire import headers as h
from vswitch.wire.pcap import read_pcap

pytestmark = pytest.mark.integration


def ip_of(daemon: Daemon, pod: str) -> str:
    return str(daemon.spec.pod_ips()[pod])


def ping(daemon: Daemon, pod: str, *targets: str) -> dict:
    return daemon.python_in(pod, PING_SCRIPT, "1", *targets)


def _ping_later(daemon: Daemon, source: str, target: str) -> threading.Thread:
    def run() -> None:
        time.sleep(1.0)  # let the capture arm first
        ping(daemon, source, target, target, target)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_capture_writes_a_pcap_of_a_pods_traffic(shared_daemon: Daemon, tmp_path) -> None:
    charlie = ip_of(shared_daemon, "charlie")
    bravo = ip_of(shared_daemon, "bravo")
    pcap = tmp_path / "bravo.pcap"
    pinger = _ping_later(shared_daemon, "bravo", charlie)
    # Three echoes and their replies, maybe after an ARP exchange: six frames hold two echoes.
    result = shared_daemon.ctl_run("capture", "bravo", "-c", "6", "--timeout", "20",
                                   "-w", str(pcap), timeout=40)
    pinger.join()
    assert result.returncode == 0, result.stderr
    header, records = read_pcap(pcap.read_bytes())
    assert header["linktype"] == 1 and len(records) == 6
    seen = set()
    for _, length, frame in records:
        assert length == len(frame)
        eth = h.ETHERNET.parse(frame[:14])
        if eth.ethertype == h.EtherType.IPV4:
            ip = h.IPV4.parse(frame[14:34])
            seen.add((".".join(map(str, ip.src)), ".".join(map(str, ip.dst)), frame[34]))
    # bravo's echo requests (type 8, received by the switch) and charlie's replies (type 0, sent).
    assert (bravo, charlie, 8) in seen and (charlie, bravo, 0) in seen


def test_capture_prints_summaries(shared_daemon: Daemon) -> None:
    charlie = ip_of(shared_daemon, "charlie")
    pinger = _ping_later(shared_daemon, "alpha", charlie)
    result = shared_daemon.ctl_run("capture", "alpha", "-c", "2", "--direction", "rx",
                                   "--timeout", "20", timeout=40)
    pinger.join()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(" rx " in line for line in lines)
    assert any(f"> {charlie}: ICMP echo request" in line or "ARP who-has" in line for line in lines)


def test_capture_on_an_unknown_port_is_an_error(shared_daemon: Daemon) -> None:
    result = shared_daemon.ctl_run("capture", "nosuchpod", "-c", "1", "--timeout", "1")
    assert result.returncode == 1 and "no port named 'nosuchpod'" in result.stderr
