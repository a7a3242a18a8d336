"""TAP devices as non-blocking file descriptors: open, re-attach, read a burst, write a frame.

A TAP delivers exactly one Ethernet frame per ``read`` and takes one per ``write``, so it is read
in bursts of whole frames rather than as a byte stream. The node's TAPs are persistent
(``TUNSETPERSIST``): a device outlives the daemon's fd, so a pod's eth0 keeps its addresses,
routes and sockets while the daemon restarts, and has no carrier while nobody holds it (frames
the pod sends meanwhile are dropped, as on an unplugged cable, and TCP retransmits them).
``attach_tap`` opens such a device again by name, in whatever network namespace the calling
thread is in; something must delete a persistent device explicitly (``Kernel`` does, on removal).
Python opens fds close-on-exec, so pods never inherit one.

With offloads on, every frame in either direction starts with a 10-byte ``struct virtio_net_hdr``
and the pods' kernels may hand over TCP segments of up to 64 KB with partial checksums. That is
the main lever for bulk throughput: the per-frame cost is paid once per segment, not per packet.

An uplink that carries VXLAN can also be opened for UDP-tunnel GSO (Linux 6.17 and later): its
header is then the 24-byte ``struct virtio_net_hdr_v1_hash_tunnel`` (``wire.tunnel_offload``),
and encapsulated super-frames cross it whole in both directions, the kernel cutting them into
MTU-sized VXLAN packets where they leave. An older kernel refuses the offload flags with EINVAL,
which ``open_tap`` reports as ``UdpTunnelGsoUnsupported`` rather than opening a TAP that would
silently take super-frames it cannot handle.
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import struct

from vswitch.core.port_spec import VNET_HDR_LEN
from vswitch.model import IFNAMSIZ
from vswitch.wire.tunnel_offload import VNET_TUNNEL_HDR_LEN

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_PERSIST = 0x0800
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
# The kernel may give and take UDP-tunnel GSO frames (virtio-net header of 24 bytes or more) ...
TUN_F_UDP_TUNNEL_GSO = 0x080
# ... including those whose outer UDP checksum is to be completed per segment.
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100
_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
_TUNNEL_OFFLOADS = _OFFLOADS | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM

# Large enough for the largest frame either header size brings: an IPv4 packet of 64 KB (a GSO
# segment, or a tunnel super-frame's outer packet) behind an Ethernet header with one VLAN tag and
# the 24-byte tunnel header. A smaller buffer would truncate a super-frame without an error.
DEFAULT_READ_SIZE = VNET_TUNNEL_HDR_LEN + 14 + 4 + 0xFFFF

# Errors that mean "nothing to read" or "no room right now": normal under load, never raised.
_WOULD_BLOCK = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
_NO_ROOM = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class UdpTunnelGsoUnsupported(OSError):
    """The running kernel does not offer UDP-tunnel GSO on TAPs."""


class NotPersistent(OSError):
    """``attach_tap`` found no persistent TAP of that name (it would have created a new one)."""


def open_tap(name: str, vnet_hdr: bool, udp_tunnel_gso: bool = False, tso: bool = True,
             hdr_len: int = VNET_HDR_LEN, persist: bool = False) -> int:
    """Create the TAP ``name`` and return its non-blocking, close-on-exec fd.

    Without ``persist`` the device exists exactly as long as the fd (or a dup of it) is open; with
    it, until it is deleted. ``vnet_hdr`` turns on the virtio-net header and the checksum and TSO
    offloads, which only make sense together: the header is how the kernel tells us a frame is a
    large segment or has a partial checksum. ``tso`` False keeps the checksum offload but has the
    kernel segment TCP itself: for ports whose frames may have to cross the VXLAN overlay while
    the uplink does not carry super-frames.

    ``udp_tunnel_gso`` (which needs ``vnet_hdr``) makes the header 24 bytes and adds the
    UDP-tunnel GSO offloads, with and without the outer UDP checksum; a kernel without them
    raises ``UdpTunnelGsoUnsupported`` naming the device. ``hdr_len`` VNET_TUNNEL_HDR_LEN without
    ``udp_tunnel_gso`` gives a pod the header size of a node whose uplink takes tunnel GSO (its
    tunnel fields stay zero), so that frames pass between the two without conversion.
    """
    fd = _open_tun(name, vnet_hdr, udp_tunnel_gso)
    try:
        _configure(fd, name, vnet_hdr, udp_tunnel_gso, tso, hdr_len)
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach_tap(name: str, vnet_hdr: bool, udp_tunnel_gso: bool = False, tso: bool = True,
               hdr_len: int = VNET_HDR_LEN) -> int:
    """Open the existing persistent TAP ``name`` of the calling thread's network namespace again,
    with the framing and offloads ``open_tap`` would give it; its non-blocking fd.

    ``TUNSETIFF`` creates a device when there is none of that name, so a device without
    ``IFF_PERSIST`` afterwards is one this call made: it is closed (which deletes it) and
    ``NotPersistent`` raised. EBUSY means another fd still holds the device.
    """
    fd = _open_tun(name, vnet_hdr, udp_tunnel_gso)
    try:
        answer = fcntl.ioctl(fd, TUNGETIFF, bytes(40))  # a struct ifreq
        _, flags = struct.unpack("16sH", answer[:18])
        if not flags & IFF_PERSIST:
            raise NotPersistent(errno.ENODEV, f"TAP {name}: no persistent device of that name")
        _configure(fd, name, vnet_hdr, udp_tunnel_gso, tso, hdr_len)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_tun(name: str, vnet_hdr: bool, udp_tunnel_gso: bool) -> int:
    """An fd of /dev/net/tun bound to the TAP ``name`` (created if missing)."""
    if not name or len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1..{IFNAMSIZ} characters")
    if udp_tunnel_gso and not vnet_hdr:
        raise ValueError("UDP-tunnel GSO needs the virtio-net header (vnet_hdr)")
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _configure(fd: int, name: str, vnet_hdr: bool, udp_tunnel_gso: bool, tso: bool,
               hdr_len: int) -> None:
    """The header size and offloads of ``open_tap``'s docstring, set on a bound fd."""
    if udp_tunnel_gso:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_TUNNEL_HDR_LEN))
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, _TUNNEL_OFFLOADS)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise UdpTunnelGsoUnsupported(
                exc.errno, f"TAP {name}: the kernel refuses UDP-tunnel GSO "
                f"(TUN_F_UDP_TUNNEL_GSO, Linux 6.17 or later): {exc.strerror}") from exc
    elif vnet_hdr:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_len))
        fcntl.ioctl(fd, TUNSETOFFLOAD, _OFFLOADS if tso else TUN_F_CSUM)


def udp_tunnel_gso_supported() -> bool:
    """Whether this kernel opens TAPs for UDP-tunnel GSO, tried on a TAP that exists only for
    the duration of the call (in the caller's network namespace; needs CAP_NET_ADMIN)."""
    try:
        fd = open_tap(f"vswprobe{secrets.token_hex(3)}", vnet_hdr=True, udp_tunnel_gso=True)
    except UdpTunnelGsoUnsupported:
        return False
    os.close(fd)
    return True


def read_burst(fd: int, max_frames: int, bufsize: int = DEFAULT_READ_SIZE) -> list[bytes]:
    """Read up to ``max_frames`` frames without blocking; an empty list when none is waiting.

    Errors other than "would block" propagate: they mean the device is gone or broken, and the
    caller decides how loudly to say so.
    """
    frames: list[bytes] = []
    read = os.read
    while len(frames) < max_frames:
        try:
            frame = read(fd, bufsize)
        except OSError as exc:
            if exc.errno in _WOULD_BLOCK:
                break
            raise
        if not frame:
            break
        frames.append(frame)
    return frames


def write_frame(fd: int, data: bytes) -> bool:
    """Write one frame without blocking; False if the device has no room for it right now.

    A full queue is the normal shape of overload and is counted as a drop by the caller, so it is
    not an exception. Other errors (EIO for a device that is down, EINVAL for a malformed frame)
    propagate.
    """
    try:
        os.write(fd, data)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            return False
        raise
    return True
