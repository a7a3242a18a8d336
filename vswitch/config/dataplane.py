"""``[dataplane]``: how the switch forwards (offloads, FDB aging and limits, burst size, accel).

The model's defaults are the only copy, so the loader and the model cannot drift apart.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from vswitch.config.reader import INVALID, Marker, Reader, key_path
from vswitch.model import Dataplane

DATAPLANE_KEYS = ("offloads", "fdb_aging", "mac_limit", "burst", "accel")
BURST_MAX = 1024
ACCEL_CHOICES = ("native", "pure")


def read_dataplane(reader: Reader, document: Mapping[str, Any]) -> Dataplane | Marker:
    table = reader.section(document, "dataplane", required=False)
    if table is INVALID:
        return INVALID
    base = "dataplane"
    defaults = Dataplane()
    reader.check_keys(table, base, DATAPLANE_KEYS)
    offloads = reader.take(table, base, "offloads", "a boolean", defaults.offloads)
    aging = reader.take(table, base, "fdb_aging", "a number", defaults.fdb_aging)
    if aging is not INVALID and not (math.isfinite(aging) and aging > 0):
        aging = reader.fail(key_path(base, "fdb_aging"),
                            f"must be a finite number of seconds > 0, got {aging}")
    mac_limit = reader.take_int(table, base, "mac_limit", defaults.mac_limit, 1)
    burst = reader.take_int(table, base, "burst", defaults.burst, 1, BURST_MAX)
    accel = reader.take(table, base, "accel", "a string", defaults.accel)
    if isinstance(accel, str) and accel not in ACCEL_CHOICES:
        accel = reader.fail(
            key_path(base, "accel"),
            f"must be one of {', '.join(map(repr, ACCEL_CHOICES))}, got {accel!r}",
        )
    values = (offloads, aging, mac_limit, burst, accel)
    if INVALID in values:
        return INVALID
    assert isinstance(mac_limit, int) and isinstance(burst, int)
    return Dataplane(
        offloads=offloads, fdb_aging=float(aging), mac_limit=mac_limit, burst=burst, accel=accel
    )
