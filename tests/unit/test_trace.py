"""Traces come from the real stage code: a dry run changes nothing, a live trace sees real packets."""
from __future__ import annotations

import pytest

from vswitch.core.presentation import fdb_rows
from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes
from vswitch.wire.text import PacketSyntaxError, build_frame, parse_packet

A, B = 2, 3
A_MAC, B_MAC = mac_bytes("0a:58:0a:f4:01:0a"), mac_bytes("0a:58:0a:f4:01:0b")


def _send(switch, port, text, src, dst, now=0.0):
    return switch.process_batch(port, [h.ZERO_VNET_HDR + build_frame(parse_packet(text), src, dst)], now)


def test_dry_run_trace_explains_a_unicast_decision_and_changes_nothing(switch):
    _send(switch, B, "icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)
    before = switch.statistics()
    fdb_before = fdb_rows(switch, 1.0)
    result = switch.tracer.dry_run("a", "icmp 10.244.1.10 > 10.244.1.11", 1.0)
    assert [s["stage"] for s in result["stages"]][-4:] == ["eth-input", "port-security",
                                                         "l2-learn", "l2-forward"]
    assert result["actions"] == ["output b"]
    assert "would be learned" in result["text"]
    assert "found in the FDB on port b" in result["text"]
    after = switch.statistics()
    assert after["stages"] == before["stages"] and after["dispositions"] == before["dispositions"]
    assert fdb_rows(switch, 1.0) == fdb_before


def test_trace_names_the_reason_of_a_drop(switch):
    result = switch.tracer.dry_run("a", "icmp 10.244.1.11 > 10.244.1.10", 0.0)
    assert result["actions"] == ["drop (port-security: spoofed-ip)"]
    assert "IPv4 source 10.244.1.11 is not 10.244.1.10" in result["text"]


def test_trace_of_arp_and_ping_to_the_gateway(switch):
    arp = switch.tracer.dry_run("a", "arp who-has 10.244.1.1 tell 10.244.1.10", 0.0)
    assert arp["actions"] == ["reply out of a"]
    ping = switch.tracer.dry_run("a", "icmp 10.244.1.10 > 10.244.1.1", 0.0)
    assert ping["actions"] == ["reply out of a"]
    assert "echo request to 10.244.1.1: reply to 10.244.1.10" in ping["text"]


def test_trace_of_unknown_destination_floods(switch):
    result = switch.tracer.dry_run("c", "udp 10.244.1.50:5000 > 10.244.1.11:53", 0.0)
    assert result["actions"] == ["output a, b, host"]


@pytest.mark.parametrize("bad", ["", "icmp 10.244.1.10", "tcp 10.244.1.10 > 10.244.1.11",
                                 "icmp 10.244.1.10 > 300.1.1.1", "gre 1.1.1.1 > 2.2.2.2",
                                 "icmp 10.244.1.10 > 10.244.1.11 ttl 900", "udp 1.1.1.1:1 > 2.2.2.2:2 flags S",
                                 "udp 1.1.1.1:1 > 2.2.2.2:2 frag 13", "udp 1.1.1.1:1 > 2.2.2.2:2 ipid 70000"])
def test_bad_packet_text_is_a_clear_error(switch, bad):
    with pytest.raises(PacketSyntaxError):
        switch.tracer.dry_run("a", bad, 0.0)


def test_fragment_options_build_the_fragment_they_name():
    from vswitch.accel import pure
    from vswitch.wire import headers as h
    from vswitch.wire.text import build_frame, parse_packet

    frame = build_frame(parse_packet("udp 10.0.0.1:1 > 10.0.0.2:2 len 40 ipid 513 mf frag 1480 df"),
                        bytes(6), bytes(6))
    ip = h.IPV4.parse(frame[14:34])
    assert (ip.identification, ip.mf, ip.df, ip.fragment_offset) == (513, True, True, 185)
    assert pure.checksum(frame[14:34]) == 0


def test_unknown_port_is_a_clear_error(switch):
    with pytest.raises(ValueError, match="no port named 'zz'"):
        switch.tracer.dry_run("zz", "icmp 10.244.1.10 > 10.244.1.11", 0.0)


def test_live_trace_follows_the_next_packets_of_a_port(switch):
    _send(switch, B, "icmp 10.244.1.11 > 10.244.1.10", B_MAC, A_MAC)
    _send(switch, A, "icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)  # installs a cache entry
    switch.tracer.arm("a", 2)
    for _ in range(3):
        _send(switch, A, "icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC, 1.0)
    traces = switch.tracer.take("a")
    assert len(traces) == 2
    assert all(t["actions"] == ["output b"] and not t["dry_run"] for t in traces)
    assert switch.tracer.take("a") == []
    # The third packet, past the armed count, went back to the fast path.
    assert switch.statistics()["dispositions"]["cache-hit"] == 1
