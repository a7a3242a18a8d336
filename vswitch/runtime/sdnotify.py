"""The systemd readiness protocol (sd_notify), without libsystemd.

A service of ``Type=notify`` tells systemd that it is ready by sending the datagram ``READY=1`` to
the Unix socket named in ``$NOTIFY_SOCKET``. The name is a file path, or an abstract socket address
written with a leading ``@`` that stands for the NUL byte. The protocol is one ``sendto`` per
message, so it is implemented here in a few lines instead of pulling in a binding.

Sending is synchronous: a datagram to a local socket never blocks for long, and the daemon sends few
messages (``READY=1`` once everything is up, ``STOPPING=1`` at shutdown, ``RELOADING=1`` around a
reload, and ``WATCHDOG=1`` every few seconds when the unit has ``WatchdogSec=``).

The watchdog: with ``WatchdogSec=``, systemd sets ``WATCHDOG_USEC`` (the timeout, in
microseconds) and ``WATCHDOG_PID`` (the process it expects the pings from) and restarts the
service when no ``WATCHDOG=1`` arrives within the timeout. ``watchdog_timeout`` reads them; when
to ping is ``vswitch.runtime.watchdog``'s business.
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


def watchdog_timeout(environ: Mapping[str, str], pid: int) -> float | None:
    """systemd's watchdog timeout in seconds for process ``pid``, or None when it asked for none.

    As ``sd_watchdog_enabled`` does: ``WATCHDOG_USEC`` must be a positive integer, and a
    ``WATCHDOG_PID`` naming another process (our parent's, inherited) means the pings are not
    ours to send. Without ``NOTIFY_SOCKET`` there is nobody to ping.
    """
    if notify_address(environ) is None:
        return None
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    expected_pid = environ.get("WATCHDOG_PID", "")
    try:
        if expected_pid and int(expected_pid) != pid:
            return None
        timeout = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r are not numbers; not pinging the watchdog",
                    usec, expected_pid)
        return None
    return timeout / 1e6 if timeout > 0 else None
