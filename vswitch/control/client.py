"""vswitchctl's end of the control socket: finding the daemon, one request, printing the answer.

Deliberately synchronous and free of trio: vswitchctl sends one request, prints one answer, and
must start fast enough to be used in shell loops.
"""
from __future__ import annotations

import glob
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

DEFAULT_SOCKET_DIR = "/run/vswitch"
CONNECT_TIMEOUT = 10.0  # seconds to wait for an answer to a request that does not wait itself

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_NOT_FOUND = 127


class CtlError(Exception):
    """Something vswitchctl reports as ``vswitchctl: <message>`` with exit status 1."""


def discover_socket(explicit: str | None, environ: Mapping[str, str],
                    directory: str = DEFAULT_SOCKET_DIR) -> str:
    """--socket, else $VSWITCH_SOCKET, else the only control socket in the run directory."""
    if explicit:
        return explicit
    if environ.get("VSWITCH_SOCKET"):
        return environ["VSWITCH_SOCKET"]
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.sock")))
    if not found:
        raise CtlError(f"no vswitchd running (no control socket in {directory})")
    if len(found) > 1:
        raise CtlError("several vswitchd control sockets; choose one with --socket or "
                       "VSWITCH_SOCKET: " + ", ".join(found))
    return found[0]


def request(path: str, cmd: str, args: Mapping[str, Any] | None = None,
            timeout: float = CONNECT_TIMEOUT) -> Any:
    """Send one request and return its result; an ``ok: false`` answer raises CtlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise CtlError(f"no vswitchd running (no socket at {path})") from None
        except ConnectionRefusedError:
            raise CtlError(f"vswitchd is not answering on {path} (stale socket?)") from None
        except PermissionError:
            raise CtlError(f"permission denied on {path} (the control socket is root's)") from None
        except OSError as exc:
            raise CtlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        line = json.dumps({"cmd": cmd, "args": dict(args or {})}).encode() + b"\n"
        try:
            sock.sendall(line)
            buffer = bytearray()
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise CtlError("vswitchd closed the connection without answering")
                buffer += chunk
        except socket.timeout:
            raise CtlError(f"no answer from vswitchd within {timeout:g} s") from None
        except OSError as exc:
            raise CtlError(f"talking to vswitchd: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(buffer[: buffer.index(b"\n")])
    except json.JSONDecodeError as exc:
        raise CtlError(f"unreadable answer from vswitchd: {exc}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise CtlError(f"unexpected answer from vswitchd: {response!r}")
    if not response["ok"]:
        raise CtlError(str(response.get("error", "unknown error")))
    return response.get("result")


@dataclass(frozen=True)
class Session:
    """One vswitchctl invocation: where the daemon is (None for verbs that need none) and
    whether answers are printed as JSON or as text."""

    path: str | None
    as_json: bool

    def call(self, cmd: str, args: Mapping[str, Any] | None = None,
             timeout: float = CONNECT_TIMEOUT) -> Any:
        assert self.path is not None, "a verb that needs no daemon asked one"
        return request(self.path, cmd, args, timeout)

    def emit(self, result: Any, render: Callable[[Any], str]) -> None:
        if self.as_json:
            print(json.dumps(result, indent=2))
        else:
            print(render(result))


def key_values(words: Sequence[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict; the value may itself hold '=' (a selector does)."""
    result: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise CtlError(f"{what}: expected KEY=VALUE, got {word!r}")
        result[key] = value
    return result
