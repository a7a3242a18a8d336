"""``[overlay]``: this node's VXLAN tunnel endpoint, and the MTUs of the pods behind it.

An overlay rides on the uplink: the outer packets leave from the uplink address, so the section
needs ``[uplink]``. Every encapsulated frame carries 50 bytes of headers on the uplink (outer IPv4,
UDP, VXLAN and the inner Ethernet header), so the inner MTU is at most the uplink MTU − 50, and
that is its default. Its floor is 576, the smallest datagram every IPv4 host must accept (RFC
791), which is also the floor of every pod and segment MTU: an overlay that could not carry it
would break hosts that rely on it.

A pod's packets may cross the overlay, so with an overlay the node's segments (and thereby its
pods) default to the overlay MTU, and an MTU written larger than it is an error at that key.

The VTEP MAC defaults to ``mac_for_ip`` of the uplink address, as a static peer's defaults to that
of its address: every node derives every other node's VTEP MAC from its underlay address alone.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.node import NodeDraft
from vswitch.config.pods import PodDraft
from vswitch.config.reader import INVALID, MTU_MIN, Marker, Reader, key_path
from vswitch.config.segments import SegmentDraft

OVERLAY_KEYS = ("vni", "port", "mtu", "vtep_mac")

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")


def mac_problem(text: str) -> str | None:
    """Why ``text`` cannot be a VTEP MAC: it must be a unicast, non-zero ``xx:xx:...`` address."""
    if not _MAC.match(text.lower()):
        return f"{text!r} is not a MAC address like 0a:58:c0:00:02:02"
    first = int(text[:2], 16)
    if first & 1:
        return f"{text} is a multicast MAC address; a VTEP MAC must be unicast"
    if text.lower() == "00:00:00:00:00:00":
        return "00:00:00:00:00:00 is not a usable MAC address"
    return None


def take_mac(reader: Reader, table: Mapping[str, Any], base: str) -> str | None | Marker:
    """The ``vtep_mac`` key in lower case; None when absent."""
    text = reader.take(table, base, "vtep_mac", "a string", None)
    if isinstance(text, str):
        if problem := mac_problem(text):
            return reader.fail(key_path(base, "vtep_mac"), problem)
        return text.lower()
    return text


def read_overlay(reader: Reader, document: Mapping[str, Any],
                 uplink: model.Uplink | None | Marker) -> model.Overlay | None | Marker:
    if "overlay" not in document:
        return None
    table = reader.section(document, "overlay", required=False)
    if table is INVALID:
        return INVALID
    reader.check_keys(table, "overlay", OVERLAY_KEYS)
    if uplink is None:
        return reader.fail("overlay", "an overlay needs an [uplink] section: its packets leave "
                                      "from the uplink address")
    vni = reader.take_int(table, "overlay", "vni", model.DEFAULT_VNI, 1, model.VNI_MAX)
    port = reader.take_int(table, "overlay", "port", model.DEFAULT_VXLAN_PORT, 1, 65535)
    mtu = reader.take_mtu(table, "overlay", None)
    vtep_mac = take_mac(reader, table, "overlay")
    if not isinstance(uplink, model.Uplink):
        return INVALID
    largest = uplink.mtu - model.VXLAN_OVERHEAD
    if mtu is None:
        if largest < MTU_MIN:
            mtu = reader.fail("uplink.mtu", f"{uplink.mtu} leaves {largest} for the overlay "
                                            f"({model.VXLAN_OVERHEAD} bytes of VXLAN headers); "
                                            f"an overlay needs at least "
                                            f"{MTU_MIN + model.VXLAN_OVERHEAD}")
        else:
            mtu = largest
    elif isinstance(mtu, int) and mtu > largest:
        mtu = reader.fail("overlay.mtu", f"{mtu} does not fit the uplink: at most uplink.mtu "
                                         f"{uplink.mtu} - {model.VXLAN_OVERHEAD} = {largest} "
                                         "(outer IPv4, UDP, VXLAN and inner Ethernet headers)")
    if vtep_mac is None:
        vtep_mac = model.mac_for_ip(uplink.address.ip)
    if INVALID in (vni, port, mtu, vtep_mac):
        return INVALID
    assert isinstance(vni, int) and isinstance(port, int) and isinstance(mtu, int)
    assert isinstance(vtep_mac, str)
    return model.Overlay(vni=vni, port=port, mtu=mtu, vtep_mac=vtep_mac)


def fit_to_overlay(reader: Reader, overlay: model.Overlay | None | Marker, node: NodeDraft,
                   segments: Sequence[SegmentDraft],
                   pods: Sequence[PodDraft]) -> tuple[NodeDraft, list[SegmentDraft]]:
    """The node and segments with MTUs no larger than the overlay's; larger written ones fail.

    A segment without its own ``mtu`` inherits ``node.mtu`` if the file gives it, else the
    overlay's. ``node.mtu`` is the default segment's MTU; when absent, the uplink still defaults
    to 1500 (its default does not follow the overlay, which follows it).
    """
    if not isinstance(overlay, model.Overlay):
        return node, list(segments)
    limit = overlay.mtu
    why = f"larger than the overlay MTU {limit}; packets of this network may cross the overlay"
    if not node.mtu_given:
        node = dataclasses.replace(node, mtu=limit)
    elif isinstance(node.mtu, int) and node.mtu > limit:
        node = dataclasses.replace(node, mtu=reader.fail(
            "node.mtu", f"{node.mtu} is {why} (overlay.mtu defaults to uplink.mtu - "
                        f"{model.VXLAN_OVERHEAD}, uplink.mtu to node.mtu); leave node.mtu out "
                        "or raise uplink.mtu"))
    fitted = []
    for draft in segments:
        if draft.path == "node":
            draft = dataclasses.replace(draft, mtu=node.mtu)
        elif not draft.mtu_given:
            draft = dataclasses.replace(draft, mtu=node.mtu)
        elif isinstance(draft.mtu, int) and draft.mtu > limit:
            draft = dataclasses.replace(draft, mtu=reader.fail(
                key_path(draft.path, "mtu"), f"{draft.mtu} is {why}"))
        fitted.append(draft)
    for pod in pods:
        check_pod_mtu(reader, pod, overlay)
    return node, fitted


def check_pod_mtu(reader: Reader, pod: PodDraft, overlay: model.Overlay | None) -> None:
    if overlay is not None and isinstance(pod.mtu, int) and pod.mtu > overlay.mtu:
        reader.fail(key_path(pod.path, "mtu"), f"{pod.mtu} is larger than the overlay MTU "
                                               f"{overlay.mtu}; the pod's packets may cross "
                                               "the overlay")
