"""The Prometheus endpoint shows the switch's own counters, served from the event loop."""
from __future__ import annotations

import trio
from prometheus_client.parser import text_string_to_metric_families

from vswitch.runtime.metrics import SwitchCollector, exposition, serve_metrics
from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes
from vswitch.wire.text import build_frame, parse_packet


def _samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _traffic(switch):
    frame = build_frame(parse_packet("icmp 10.244.1.10 > 10.244.1.11"),
                        mac_bytes("0a:58:0a:f4:01:0a"), mac_bytes("0a:58:0a:f4:01:0b"))
    switch.process_batch(2, [h.ZERO_VNET_HDR + frame], 0.0)
    switch.process_batch(2, [b"\x00\x01"], 0.0)  # a truncated frame: dropped with a reason


def test_counters_of_the_switch_become_metrics(switch):
    _traffic(switch)
    samples = _samples(exposition(SwitchCollector(switch.statistics, "unit")).decode())
    assert samples[("vswitch_port_rx_packets_total", (("node", "unit"), ("port", "a")))] == 2
    assert samples[("vswitch_port_tx_packets_total", (("node", "unit"), ("port", "b")))] == 1
    drop = ("vswitch_port_drops_total", (("direction", "rx"), ("node", "unit"), ("port", "a"),
                                         ("reason", "truncated-vnet")))
    assert samples[drop] == 1
    stage = ("vswitch_stage_events_total", (("counter", "flooded-unknown"), ("node", "unit"),
                                            ("stage", "l2-forward")))
    assert samples[stage] == 1
    assert samples[("vswitch_dispositions_total", (("disposition", "dropped"), ("node", "unit")))] == 1
    assert samples[("vswitch_fdb_entries", (("node", "unit"),))] == 1
    upcalls = ("vswitch_datapath_upcalls_total", (("node", "unit"),))
    if switch.datapath is not None:
        # Both frames went to the pipeline: no flow was cached yet.
        assert samples[upcalls] == 2
    else:
        assert upcalls not in samples


async def test_the_endpoint_answers_get_metrics_and_404_otherwise(switch):
    _traffic(switch)
    collector = SwitchCollector(switch.statistics, "unit")

    async def get(port: int, path: str) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        return answer

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, "127.0.0.1:0", collector)
        answer = await get(port, "/metrics")
        assert answer.startswith(b"HTTP/1.0 200 OK")
        body = answer.split(b"\r\n\r\n", 1)[1].decode()
        assert 'vswitch_port_rx_packets_total{node="unit",port="a"} 2.0' in body
        assert (await get(port, "/")).startswith(b"HTTP/1.0 404")
        nursery.cancel_scope.cancel()


def test_cluster_membership_becomes_metrics_when_the_node_has_a_store(switch):
    from vswitch.control.node import node_statistics

    class Cluster:
        @staticmethod
        def statistics():
            return {"connected": True, "revision": 41, "nodes": 2, "sessions": 3,
                    "failures": 1, "last_error": "connection refused"}

    class Node:
        cluster = Cluster()

    stats = node_statistics(switch, Node())
    assert stats["membership"]["revision"] == 41
    assert "membership" not in node_statistics(switch, None)
    samples = _samples(exposition(SwitchCollector(lambda: stats, "unit")).decode())
    assert samples[("vswitch_membership_connected", (("node", "unit"),))] == 1
    assert samples[("vswitch_membership_nodes", (("node", "unit"),))] == 2
    assert samples[("vswitch_membership_failures_total", (("node", "unit"),))] == 1


def test_cluster_dns_counters_become_metrics_when_the_node_serves_dns(switch):
    from vswitch.control.node import node_statistics
    from vswitch.runtime.dns_server import DnsCounters

    counters = DnsCounters()
    counters.queries["udp"] += 5
    counters.queries["tcp"] += 1
    counters.answers["NOERROR"] += 4
    counters.answers["NXDOMAIN"] += 2
    counters.forwarded, counters.forward_failures, counters.truncated = 3, 1, 2

    class Dns:
        @staticmethod
        def statistics():
            return {"enabled": True, **counters.as_dict()}

    class Node:
        dns = Dns()

    stats = node_statistics(switch, Node())
    assert stats["dns"]["queries"] == 6
    assert "dns" not in node_statistics(switch, None)
    samples = _samples(exposition(SwitchCollector(lambda: stats, "unit")).decode())
    node = ("node", "unit")
    assert samples[("vswitch_dns_queries_total", (node, ("transport", "udp")))] == 5
    assert samples[("vswitch_dns_queries_total", (node, ("transport", "tcp")))] == 1
    assert samples[("vswitch_dns_answers_total", (node, ("rcode", "NXDOMAIN")))] == 2
    assert samples[("vswitch_dns_forwarded_total", (node,))] == 3
    assert samples[("vswitch_dns_forward_failures_total", (node,))] == 1
    assert samples[("vswitch_dns_truncated_total", (node,))] == 2


def test_control_socket_counters_become_metrics(switch):
    from vswitch.control.node import node_statistics
    from vswitch.runtime.control import ControlCounters

    counters = ControlCounters(connections=7, active=2, refused=1, timeouts=3, bad_requests=4)
    stats = node_statistics(switch, None, counters)
    assert stats["control"]["timeouts"] == 3
    samples = _samples(exposition(SwitchCollector(lambda: stats, "unit")).decode())
    node = (("node", "unit"),)
    assert samples[("vswitch_control_connections_active", node)] == 2
    assert samples[("vswitch_control_connections_total", node)] == 7
    assert samples[("vswitch_control_refused_total", node)] == 1
    assert samples[("vswitch_control_bad_requests_total", node)] == 4
