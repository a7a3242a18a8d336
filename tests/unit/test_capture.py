"""Packet capture in the core, the pcap file format, and the one-line frame summaries."""
from __future__ import annotations

import io
import struct

import pytest

from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.pcap import read_pcap, write_pcap
from vswitch.wire.summary import summarize
from vswitch.wire.text import build_frame, parse_packet

A, B = 2, 3
A_MAC, B_MAC = mac_bytes("0a:58:0a:f4:01:0a"), mac_bytes("0a:58:0a:f4:01:0b")


def _frame(text, src, dst):
    return build_frame(parse_packet(text), src, dst)


def test_capture_keeps_received_and_sent_frames_without_the_virtio_header(switch):
    switch.tracer.arm_capture("b", 2)
    ping = _frame("icmp 10.244.1.10 > 10.244.1.11", A_MAC, B_MAC)
    switch.process_batch(A, [h.ZERO_VNET_HDR + ping], 1.0)  # flooded: b sends it out
    reply = _frame("icmp 10.244.1.11 > 10.244.1.10 echo-reply", B_MAC, A_MAC)
    switch.process_batch(B, [h.ZERO_VNET_HDR + reply], 2.0)  # b receives it
    switch.process_batch(B, [h.ZERO_VNET_HDR + reply], 3.0)  # past the count: not kept
    records = switch.tracer.take_capture("b")
    assert [(r["direction"], r["time"], r["data"], r["length"]) for r in records] == [
        ("tx", 1.0, ping, len(ping)), ("rx", 2.0, reply, len(reply))]
    assert switch.tracer.take_capture("b") == []


@pytest.mark.parametrize("direction, expected", [("rx", ["rx"]), ("tx", ["tx"])])
def test_capture_direction_and_snaplen(switch, direction, expected):
    switch.tracer.arm_capture("b", 5, direction, snaplen=64)
    big = _frame("udp 10.244.1.10:1 > 10.244.1.11:2 len 500", A_MAC, B_MAC)
    switch.process_batch(A, [h.ZERO_VNET_HDR + big], 1.0)
    back = _frame("udp 10.244.1.11:2 > 10.244.1.10:1 len 500", B_MAC, A_MAC)
    switch.process_batch(B, [h.ZERO_VNET_HDR + back], 1.0)
    records = switch.tracer.take_capture("b")
    assert [r["direction"] for r in records] == expected
    assert all(len(r["data"]) == 64 and r["length"] == len(big) for r in records)


def test_capture_arguments_are_checked(switch):
    with pytest.raises(ValueError, match="direction"):
        switch.tracer.arm_capture("a", 1, "sideways")
    with pytest.raises(ValueError, match="count"):
        switch.tracer.arm_capture("a", 0)
    with pytest.raises(ValueError, match="no port named"):
        switch.tracer.arm_capture("zz", 1)


def test_pcap_round_trip_and_header_bytes():
    frame = _frame("arp who-has 10.244.1.1 tell 10.244.1.10", A_MAC, BROADCAST_MAC)
    out = io.BytesIO()
    assert write_pcap(out, [(1700000000.25, len(frame), frame), (1700000001.0, 9000, frame[:20])]) == 2
    data = out.getvalue()
    # The classic header: magic, version 2.4, zone 0, sigfigs 0, snaplen, Ethernet.
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    assert data[24:40] == struct.pack("<IIII", 1700000000, 250000, len(frame), len(frame))
    header, records = read_pcap(data)
    assert header["linktype"] == 1
    assert records == [(1700000000.25, len(frame), frame), (1700000001.0, 9000, frame[:20])]


@pytest.mark.parametrize("text, expected", [
    ("tcp 10.244.1.10:40000 > 10.96.0.10:80 flags S", "IP 10.244.1.10.40000 > 10.96.0.10.80: Flags [S]"),
    ("udp 10.244.1.10:5000 > 10.244.1.11:53 len 12", "IP 10.244.1.10.5000 > 10.244.1.11.53: UDP, length 12"),
    ("icmp 10.244.1.10 > 10.244.1.1", "IP 10.244.1.10 > 10.244.1.1: ICMP echo request"),
    ("arp who-has 10.244.1.1 tell 10.244.1.10", "ARP who-has 10.244.1.1 tell 10.244.1.10"),
])
def test_summaries_read_like_tcpdump(text, expected):
    assert expected in summarize(_frame(text, A_MAC, B_MAC))


def test_summary_of_garbage_does_not_raise():
    assert "malformed" in summarize(b"\x00" * 12 + b"\x08\x00" + b"\x45\x00")
