"""The systemd readiness protocol (sd_notify), without libsystemd.

A service of ``Type=notify`` tells systemd that it is ready by sending the datagram ``READY=1`` to
the Unix socket named in ``$NOTIFY_SOCKET``. The name is a file path, or an abstract socket address
written with a leading ``@`` that stands for the NUL byte. The protocol is one ``sendto`` per
message, so it is implemented here in a few lines instead of pulling in a binding.

Sending is synchronous: a datagram to a local socket never blocks for long, and the daemon sends few
messages (``READY=1`` once everything is up, ``STOPPING=1`` at shutdown, ``RELOADING=1`` around a
reload, and ``WATCHDOG=1`` every few seconds when the unit has ``WatchdogSec=``).

A process that hands the service to another one (``vswitch.runtime.standby``) sends
``MAINPID=<pid>`` and then waits on a barrier (``notify_barrier``, as ``sd_notify_barrier(3)``):
it sends ``BARRIER=1`` with the write end of a pipe, which systemd closes once it has processed
every earlier message, so that the hand-over is known before the sender exits.

The watchdog: with ``WatchdogSec=``, systemd sets ``WATCHDOG_USEC`` (the timeout, in
microseconds) and ``WATCHDOG_PID`` (the process it expects the pings from) and restarts the
service when no ``WATCHDOG=1`` arrives within the timeout. ``watchdog_timeout`` reads them; when
to ping is ``vswitch.runtime.watchdog``'s business.
"""
from __future__ import annotations

import array
import logging
import os
import select
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


BARRIER_TIMEOUT = 5.0  # sd_notify_barrier's usual timeout


def notify_barrier(timeout: float = BARRIER_TIMEOUT,
                   environ: Mapping[str, str] | None = None) -> bool:
    """Until systemd has processed every message sent before; False when not under systemd,
    on an error (logged) or when ``timeout`` passed first."""
    address = notify_address(os.environ if environ is None else environ)
    if address is None:
        return False
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [write_end]))], 0, address)
        os.close(write_end)
        write_end = -1
        # The pipe hangs up once systemd (which received its own copy of the write end) closed it.
        poller = select.poll()
        poller.register(read_end, select.POLLHUP)
        return bool(poller.poll(timeout * 1000))
    except OSError as exc:
        log.warning("could not wait for systemd to process the notifications: %s", exc)
        return False
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


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
