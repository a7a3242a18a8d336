"""The systemd readiness protocol (sd_notify), without libsystemd.

A service of ``Type=notify`` tells systemd that it is ready by sending the datagram ``READY=1`` to
the Unix socket named in ``$NOTIFY_SOCKET``. The name is a file path, or an abstract socket address
written with a leading ``@`` that stands for the NUL byte. The protocol is one ``sendto`` per
message, so it is implemented here in a few lines instead of pulling in a binding.

Sending is synchronous: a datagram to a local socket never blocks for long, and the daemon sends only
a couple of messages in its life (``READY=1`` once everything is up, ``STOPPING=1`` at shutdown).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address systemd asked us to report to, or None when not started by systemd."""
    name = environ.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    # systemd also supports vsock addresses ("vsock:CID:PORT") for VMs; a daemon on a lab host
    # never gets one, and sending to a misread address would be worse than not sending at all.
    log.warning("NOTIFY_SOCKET=%r is not a Unix socket address; not notifying systemd", name)
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd. True if a message was sent.

    A failure is logged, not raised: the daemon works the same without systemd, and systemd itself
    reports a service that never became ready.
    """
    address = notify_address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", state.splitlines()[0], exc)
        return False
    return True
