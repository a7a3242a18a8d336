"""The switch's counters for Prometheus, served by the daemon's own event loop.

prometheus_client's bundled HTTP server answers from a thread of its own, which would read the
core's tables while the packet path changes them; here a collector turns one
``Switch.statistics()`` snapshot into metric families, and a small trio server answers
``GET /metrics`` in the same thread that owns the switch. Every counter in ``vswitchctl stats`` has
a metric, so a dashboard and a person at a terminal see the same numbers.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("vswitchd.metrics")

MAX_REQUEST = 8192


class SwitchCollector:
    """A prometheus_client collector over the switch's statistics snapshot."""

    def __init__(self, statistics: Callable[[], dict], node: str):
        self._statistics = statistics
        self._node = node

    def describe(self) -> list:
        return []  # families depend on the snapshot; registering must not call collect()

    def collect(self) -> Iterator[Metric]:
        stats = self._statistics()
        node = self._node
        ports = stats["ports"]
        for name, help_text, key in (
                ("vswitch_port_rx_packets", "frames received by the port", "rx_packets"),
                ("vswitch_port_rx_bytes", "bytes received, without virtio-net headers", "rx_bytes"),
                ("vswitch_port_tx_packets", "frames sent out of the port", "tx_packets"),
                ("vswitch_port_tx_bytes", "bytes sent, without virtio-net headers", "tx_bytes")):
            family = CounterMetricFamily(name, help_text, labels=["node", "port"])
            for port, row in ports.items():
                family.add_metric([node, port], row[key])
            yield family
        drops = CounterMetricFamily("vswitch_port_drops", "frames dropped, by port, direction and "
                                    "reason", labels=["node", "port", "direction", "reason"])
        for port, row in ports.items():
            for direction in ("rx", "tx"):
                for reason, count in row[f"{direction}_drops"].items():
                    drops.add_metric([node, port, direction, reason], count)
        yield drops
        stages = CounterMetricFamily("vswitch_stage_events", "per-stage counters of the pipeline",
                                     labels=["node", "stage", "counter"])
        for stage, counters in stats["stages"].items():
            for counter, count in counters.items():
                stages.add_metric([node, stage, counter], count)
        yield stages
        dispositions = CounterMetricFamily("vswitch_dispositions", "where received frames ended",
                                           labels=["node", "disposition"])
        for disposition, count in stats["dispositions"].items():
            dispositions.add_metric([node, disposition], count)
        yield dispositions
        cache = stats["flow_cache"]
        yield _gauge("vswitch_flow_cache_entries", "flow cache entries", node, cache["entries"])
        yield _counter("vswitch_flow_cache_hits", "flow cache hits", node, cache["hits"])
        yield _counter("vswitch_flow_cache_misses", "flow cache misses", node, cache["misses"])
        yield _counter("vswitch_flow_cache_evictions",
                       "flow cache entries evicted to make room for another", node,
                       cache["evictions"])
        yield _counter("vswitch_flow_cache_swept",
                       "flow cache entries removed, not looked up since the sweep before", node,
                       cache["swept"])
        yield _gauge("vswitch_fdb_entries", "learned MAC addresses", node, stats["fdb"]["entries"])
        yield _gauge("vswitch_neighbors", "next hops in the neighbour table", node,
                     stats["neighbors"]["entries"])
        yield _gauge("vswitch_routes", "routes in the FIB", node, stats["fib"]["routes"])
        conntrack = stats["conntrack"]
        yield _gauge("vswitch_conntrack_entries", "tracked connections", node, conntrack["entries"])
        yield _gauge("vswitch_conntrack_max", "connection table size", node, conntrack["max"])
        for key in ("created", "expired", "evictions", "drops_full", "invalid", "reopened",
                    "aborted", "flushed", "clashes"):
            if key in conntrack:
                yield _counter(f"vswitch_conntrack_{key}", f"connection table: {key}", node,
                               conntrack[key])
        yield _gauge("vswitch_services", "programmed services", node,
                     stats["services"]["programmed"])
        yield _counter("vswitch_icmp_errors_rate_limited", "ICMP errors not sent: rate limit",
                       node, stats["icmp_rate_limited"])
        policies = stats.get("policies")
        if policies is not None:
            yield from _policy_families(policies, node)
        datapath = stats.get("datapath")
        if datapath is not None:
            for key, help_text in (
                    ("upcalls", "frames the C datapath handed to the pipeline"),
                    ("upcall_lost", "frames dropped because the upcall queue was full"),
                    ("wakeups", "wake-ups of the C datapath's poll thread"),
                    ("read_errors", "failed reads of the C datapath's poll thread")):
                yield _counter(f"vswitch_datapath_{key}", help_text, node, datapath[key])
            yield _gauge("vswitch_datapath_upcall_queued", "frames waiting for the pipeline",
                         node, datapath["upcall_queued"])
        control = stats.get("control")
        if control is not None:
            yield _gauge("vswitch_control_connections_active", "open control connections", node,
                         control["active"])
            for key, help_text in (
                    ("connections", "control connections accepted"),
                    ("refused", "control connections refused: too many at once"),
                    ("timeouts", "control connections closed: no request or answer in time"),
                    ("bad_requests", "control requests that were not valid"),
                    ("aborted", "control connections the client left mid-answer")):
                yield _counter(f"vswitch_control_{key}", help_text, node, control[key])
        dns = stats.get("dns")
        if dns is not None:
            yield from _dns_families(dns, node)
        membership = stats.get("membership")
        if membership is not None:
            yield _gauge("vswitch_membership_connected", "1 while the cluster store answers",
                         node, 1 if membership["connected"] else 0)
            yield _gauge("vswitch_membership_nodes", "other nodes in the store's view", node,
                         membership["nodes"])
            yield _gauge("vswitch_membership_revision", "store revision the view is synced to",
                         node, membership["revision"])
            yield _counter("vswitch_membership_failures", "sessions with the store that failed",
                           node, membership["failures"])


def _dns_families(dns: dict, node: str) -> Iterator[Metric]:
    """The cluster DNS server: queries by transport, answers by rcode, forwarding, bad input."""
    queries = CounterMetricFamily("vswitch_dns_queries", "DNS queries received, by transport",
                                  labels=["node", "transport"])
    for transport in ("udp", "tcp"):
        queries.add_metric([node, transport], dns.get(f"{transport}_queries", 0))
    yield queries
    answers = CounterMetricFamily("vswitch_dns_answers", "DNS answers sent, by rcode",
                                  labels=["node", "rcode"])
    for rcode, count in sorted(dns.get("answers", {}).items()):
        answers.add_metric([node, rcode], count)
    yield answers
    for key, help_text in (
            ("forwarded", "queries for names outside the cluster domain, forwarded upstream"),
            ("forward_failures", "forwarded queries no upstream answered in time (SERVFAIL)"),
            ("malformed", "queries that could not be parsed (FORMERR or dropped)"),
            ("truncated", "UDP answers truncated to the client's size (TC set)")):
        yield _counter(f"vswitch_dns_{key}", help_text, node, dns.get(key, 0))


def _policy_families(policies: dict, node: str) -> Iterator[Metric]:
    """Network policy drops and cuts, in total and per policy (NAMESPACE/NAME)."""
    for key, help_text in (
            ("drops", "new connections a network policy denied: dropped silently"),
            ("cuts", "tracked connections a policy change no longer allowed: removed")):
        yield _counter(f"vswitch_policy_{key}", help_text, node, policies[key])
        family = CounterMetricFamily(f"vswitch_policy_{key}_by_policy",
                                     f"{help_text}, counted for each policy that denied them",
                                     labels=["node", "policy"])
        for policy, count in policies[f"{key}_by_policy"].items():
            family.add_metric([node, policy], count)
        yield family


def _gauge(name: str, help_text: str, node: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["node"])
    family.add_metric([node], value)
    return family


def _counter(name: str, help_text: str, node: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=["node"])
    family.add_metric([node], value)
    return family


def exposition(collector: SwitchCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def _answer(stream: trio.SocketStream, collector: SwitchCollector) -> None:
    request = b""
    with trio.move_on_after(5):
        while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
            chunk = await stream.receive_some(1024)
            if not chunk:
                break
            request += chunk
    line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(line) >= 2 and line[0] == "GET" and line[1].split("?")[0] == "/metrics":
        try:
            reply = _response("200 OK", CONTENT_TYPE_LATEST, exposition(collector))
        except Exception:  # a bug in a collector must cost one scrape, not the daemon
            log.exception("metrics: collecting failed")
            reply = _response("500 Internal Server Error", "text/plain", b"collecting failed\n")
    else:
        reply = _response("404 Not Found", "text/plain", b"try /metrics\n")
    try:
        await stream.send_all(reply)
    except trio.BrokenResourceError:
        pass  # the scraper went away; nothing to tell it
    finally:
        await stream.aclose()


async def serve_metrics(address: str, collector: SwitchCollector,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on HOST:PORT until cancelled; reports the bound port when ready."""
    host, _, port = address.rpartition(":")
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(lambda stream: _answer(stream, collector), listeners,
                                   handler_nursery=nursery)
