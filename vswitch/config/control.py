"""``[control]``: where the control socket, the state directory and the metrics listener live.

The socket path defaults to one derived from the node name, so that several nodes on one host
each get their own; a unix socket path is limited by ``sockaddr_un``.
"""
from __future__ import annotations

import os
from ipaddress import IPv4Address
from typing import Any, Mapping

from vswitch import model
from vswitch.config.reader import INVALID, Marker, Reader
from vswitch.model import Control

CONTROL_KEYS = ("socket", "state_dir", "metrics")
UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the terminating NUL


def listen_address_problem(text: str) -> str | None:
    """A metrics listen address is HOST:PORT with an IPv4 host (127.0.0.1 keeps it local)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return f"expected HOST:PORT such as 127.0.0.1:9469, got {text!r}"
    try:
        IPv4Address(host)
    except ValueError:
        return f"{host!r} is not an IPv4 address (expected HOST:PORT such as 127.0.0.1:9469)"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def read_control(reader: Reader, document: Mapping[str, Any],
                 node_name: str | Marker) -> Control | Marker:
    table = reader.section(document, "control", required=False)
    if table is INVALID:
        return INVALID
    reader.check_keys(table, "control", CONTROL_KEYS)
    socket = reader.take_path(table, "control", "socket", None)
    state_dir = reader.take_path(table, "control", "state_dir", model.DEFAULT_STATE_DIR)
    if socket is None:
        if not isinstance(node_name, str):
            return INVALID
        socket = f"{model.DEFAULT_SOCKET_DIR}/{node_name}.sock"
    if isinstance(socket, str) and len(os.fsencode(socket)) > UNIX_PATH_MAX:
        socket = reader.fail(
            "control.socket",
            f"is {len(os.fsencode(socket))} bytes long; a unix socket path has at most "
            f"{UNIX_PATH_MAX}",
        )
    metrics = reader.take(table, "control", "metrics", "a string", None)
    if isinstance(metrics, str) and (problem := listen_address_problem(metrics)):
        metrics = reader.fail("control.metrics", problem)
    if socket is INVALID or state_dir is INVALID or metrics is INVALID:
        return INVALID
    return Control(socket=socket, state_dir=state_dir, metrics=metrics)
