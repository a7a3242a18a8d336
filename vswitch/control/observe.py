"""Commands that watch packets: ``trace`` (one described packet, or the next real ones of a port)
and ``capture`` (the next frames a port receives and sends, as pcap or one line each).

Watching real traffic is arm, collect, disarm: the handler arms the core, then polls it between
batches until enough arrived or the time is up (``collect``). Polling keeps the core free of
callbacks into the shell; 50 ms is well below what a person at a terminal notices and costs nothing
between batches.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vswitch.control import lookup
from vswitch.control.client import (CONNECT_TIMEOUT, EXIT_FAILURE, EXIT_OK, CtlError,
                                    Session)
from vswitch.control.command import Args, ControlError, Verb, command, require
from vswitch.control.rendering import render_rows
from vswitch.wire.pcap import write_pcap
from vswitch.wire.summary import summarize

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext

POLL_INTERVAL = 0.05
MAX_TRACE_COUNT = 1000
MAX_CAPTURE = 1000  # frames per capture request: an answer of at most ~90 MB of base64
MAX_TIMEOUT = 300.0
DEFAULT_TIMEOUT = 10.0


async def collect(take: Callable[[], list[dict]], count: int, timeout: float) -> list[dict]:
    """What ``take`` returns, polled until there are ``count`` items or ``timeout`` is up."""
    import trio  # daemon side only: vswitchctl imports this module and must start fast

    items: list[dict] = []
    with trio.move_on_after(timeout):
        while True:
            items.extend(take())
            if len(items) >= count:
                break
            await trio.sleep(POLL_INTERVAL)
    return items


def _timeout(args: Args) -> float:
    timeout = args.get("timeout", DEFAULT_TIMEOUT)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT):
        raise ControlError(f"argument 'timeout' must be seconds in (0, {MAX_TIMEOUT:g}],"
                           f" not {timeout!r}")
    return timeout


# -- trace ----------------------------------------------------------------------------------------


def render_traces(result: Any) -> str:
    traces = result if isinstance(result, list) else [result]
    return "\n\n".join(str(trace.get("text", json.dumps(trace, indent=2)))
                       if isinstance(trace, Mapping) else str(trace) for trace in traces)


def _trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", help="the port (pod name, or 'host') the packet enters on")
    parser.add_argument("packet", nargs="?", help="packet description, e.g. 'udp 10.244.1.3:53'")
    parser.add_argument("--count", type=int, help="trace the next N real packets instead")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for --count packets (default 10)")


def _run_trace(session: Session, args: argparse.Namespace) -> int:
    if (args.packet is None) == (args.count is None):
        raise CtlError("trace needs either a PACKET or --count N")
    if args.packet is not None:
        result = session.call("trace", {"port": args.pod, "packet": args.packet})
    else:
        result = session.call("trace",
                              {"port": args.pod, "count": args.count, "timeout": args.timeout},
                              timeout=args.timeout + CONNECT_TIMEOUT)
        if not result and not session.as_json:
            print(f"no packets from {args.pod} within {args.timeout:g} s", file=sys.stderr)
            return EXIT_FAILURE
    session.emit(result, render_traces)
    return EXIT_OK


@command("trace", render_traces,
         Verb("trace", "trace a described packet, or the next real packets of a pod",
              _trace_arguments, run=_run_trace))
async def trace(ctx: ControlContext, args: Args) -> Any:
    switch = ctx.switch
    port = lookup.port_name(ctx, require(args, "port", str, "a port name"))
    if "packet" in args:
        if "count" in args:
            raise ControlError("give either 'packet' (trace one synthetic packet) or "
                               "'count' (trace real packets), not both")
        packet = require(args, "packet", str, "a packet description")
        try:
            return switch.tracer.dry_run(port, packet, ctx.now())
        except ValueError as exc:
            raise ControlError(f"bad packet: {exc}") from None
    if "count" not in args:
        raise ControlError("trace needs 'packet' or 'count'")
    count = require(args, "count", int, f"an integer from 1 to {MAX_TRACE_COUNT}")
    if not 1 <= count <= MAX_TRACE_COUNT:
        raise ControlError(f"argument 'count' must be from 1 to {MAX_TRACE_COUNT}, not {count}")
    timeout = _timeout(args)
    switch.tracer.arm(port, count)
    traces = await collect(lambda: switch.tracer.take(port), count, timeout)
    if len(traces) < count:
        # Stop collecting for a client that is no longer waiting.
        switch.tracer.disarm(port)
    return traces[:count]


# -- capture --------------------------------------------------------------------------------------


def _capture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", help="the port (pod name, 'host' or 'uplink')")
    parser.add_argument("-c", "--count", type=int, default=10,
                        help="frames to capture (default 10, at most 1000)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for them (default 10)")
    parser.add_argument("--direction", choices=("rx", "tx", "both"), default="both",
                        help="frames the port receives (rx), sends (tx) or both (default)")
    parser.add_argument("--snaplen", type=int, default=65535,
                        help="bytes kept of each frame (default 65535)")
    parser.add_argument("-w", "--write", metavar="FILE",
                        help="write a pcap file (tcpdump, Wireshark) instead of printing")


def _run_capture(session: Session, args: argparse.Namespace) -> int:
    payload = {"port": args.pod, "count": args.count, "timeout": args.timeout,
               "direction": args.direction, "snaplen": args.snaplen}
    records = session.call("capture", payload, timeout=args.timeout + CONNECT_TIMEOUT)
    frames = [(r["time"], r["length"], base64.b64decode(r["data"])) for r in records]
    if args.write:
        try:
            with open(args.write, "wb") as out:
                write_pcap(out, frames, args.snaplen)
        except OSError as exc:
            raise CtlError(f"cannot write {args.write}: {exc.strerror}") from None
        print(f"{len(frames)} frames from {args.pod} written to {args.write}", file=sys.stderr)
    elif session.as_json:
        session.emit(records, render_rows)
    else:
        for (when, length, data), record in zip(frames, records):
            stamp = datetime.datetime.fromtimestamp(when).strftime("%H:%M:%S.%f")
            print(f"{stamp} {record['direction']} {summarize(data, length)}")
    if not frames:
        print(f"no frames on {args.pod} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


@command("capture", render_rows,
         Verb("capture", "capture the next frames a port receives and sends", _capture_arguments,
              run=_run_capture))
async def capture(ctx: ControlContext, args: Args) -> list[dict]:
    """The next ``count`` frames a port receives and/or sends, base64 in the answer; the client
    writes the pcap file. Times are wall-clock seconds."""
    switch = ctx.switch
    port = lookup.port_name(ctx, require(args, "port", str, "a port name"))
    count = args.get("count", 10)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CAPTURE:
        raise ControlError(f"argument 'count' must be from 1 to {MAX_CAPTURE}, not {count!r}")
    timeout = _timeout(args)
    try:
        switch.tracer.arm_capture(port, count, args.get("direction", "both"), args.get("snaplen", 65535))
    except (TypeError, ValueError) as exc:
        raise ControlError(str(exc)) from None
    records = await collect(lambda: switch.tracer.take_capture(port), count, timeout)
    records.extend(switch.tracer.take_capture(port))
    switch.tracer.disarm_capture(port)
    # The core keeps trio's clock; a pcap file wants the wall clock.
    offset = time.time() - ctx.now()
    return [{"time": r["time"] + offset, "direction": r["direction"], "length": r["length"],
             "data": base64.b64encode(r["data"]).decode("ascii")} for r in records[:count]]


COMMANDS = (trace, capture)
