"""The C datapath (native/datapath.c) seen from Python: the datapath executes, Python decides.

Frames of a known flow should never wake Python: a poll thread in C reads the ports, replays the
decision Python memoised for the flow (an action installed under the flow's key) and writes the
result, counting as the pure fast path (``vswitch.core.fast_path``) counts. Whatever the cache
cannot answer (no entry, an old generation, a packet that would change state the pipeline owns)
is queued as an upcall: Python takes it when ``upcall_fd`` is readable, runs the pipeline, installs
the entry it justifies and sends the frame itself.

This wrapper only carries values across: the shared arrays (FDB stamps, neighbour confirmations,
conntrack fields) stay Python ``array.array`` objects that C reads and writes in place, so the
wrapper keeps a reference to each for as long as the datapath may use it. Every call takes the
datapath's mutex in C; cffi releases the GIL around it.
"""
from __future__ import annotations

import struct
from array import array

from vswitch._native import ffi, lib

KEY_LEN = lib.VS_DP_KEY_LEN
MAX_FRAME = lib.VS_DP_MAX_FRAME
UPCALL = lib.VS_DP_UPCALL
CONSUMED = lib.VS_DP_CONSUMED
EINVAL = lib.VS_DP_EINVAL

FORWARD = lib.VS_DP_FORWARD
PER_CONNECTION = lib.VS_DP_PER_CONNECTION
CONNECTION = lib.VS_DP_CONNECTION
DECAP = lib.VS_DP_DECAP

CT_IN_TABLE = lib.VS_CT_IN_TABLE
CT_REPLIED = lib.VS_CT_REPLIED
CT_ASSURED = lib.VS_CT_ASSURED

NO_PORT = 0xFFFFFFFF

# vs_dp_shared: each array with the C element type it must have, and the capacity field its
# length goes to (None: a fixed-size array whose capacity another array gives).
_SHARED = {
    "fdb_seen": ("d", "fdb_capacity"), "fdb_inc": ("I", None),
    "nbr_since": ("d", "nbr_capacity"), "nbr_inc": ("I", None),
    "ct_expires": ("d", "ct_capacity"), "ct_seen": ("d", None), "ct_packets": ("Q", None),
    "ct_bytes": ("Q", None), "ct_state": ("B", None), "ct_flags": ("B", None),
    "ct_inc": ("I", None), "vxlan_ident": ("I", None),
}
_C_TYPES = {"d": "double[]", "I": "uint32_t[]", "Q": "uint64_t[]", "B": "uint8_t[]"}
_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_busy",
             "tx_offload_unsupported", "tx_port_gone", "tx_error", "upcall_lost")
_STATS = ("hits", "misses", "installs", "flushes", "entries", "capacity", "upcalls",
          "upcall_lost", "upcall_queued", "wakeups", "read_errors", "evictions", "swept")


def _typecode(values: object) -> str | None:
    """The element type of an array.array or a cast memoryview, else None."""
    if isinstance(values, array):
        return values.typecode
    if isinstance(values, memoryview):
        return values.format
    return None


def _exporter(values: object) -> object:
    """What C's pointer pins: the object under a memoryview cast (the shared arrays' ``mmap``),
    not the cast, when the cast covers all of it.

    A memoryview and its managed buffer are garbage-collected objects, and the collector may
    clear them in any order when a table they belong to is in a reference cycle; clearing the
    managed buffer releases its hold on the ``mmap``, which then unmaps while C still points
    into it (a crash at the daemon's exit). An ``mmap`` is never cleared by the collector, so a
    buffer exported straight from it keeps the memory mapped for as long as C holds it."""
    if isinstance(values, memoryview) and values.obj is not None:
        with memoryview(values.obj) as whole:
            if values.c_contiguous and whole.nbytes == values.nbytes:
                return values.obj
    return values


def _action_layout() -> tuple[struct.Struct, tuple[str, ...], tuple[object, ...]]:
    """vs_dp_action as a ``struct`` format, derived from the C declaration that cffi reads (the
    compiler's offsets, explicit padding), with its field names and their zero values."""
    codes = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q", "double": "d"}
    fmt, position, names, zeros = "=", 0, [], []
    for name, field in sorted(ffi.typeof("vs_dp_action").fields, key=lambda f: f[1].offset):
        if field.offset > position:
            fmt += f"{field.offset - position}x"
        if field.type.kind == "array":
            fmt += f"{field.type.length}s"
            zeros.append(b"")
        else:
            fmt += codes[field.type.cname]
            zeros.append(0)
        names.append(name)
        position = field.offset + ffi.sizeof(field.type)
    size = ffi.sizeof("vs_dp_action")
    if size > position:
        fmt += f"{size - position}x"
    return struct.Struct(fmt), tuple(names), tuple(zeros)


_ACTION, _ACTION_FIELDS, _ACTION_ZEROS = _action_layout()
ACTION_SIZE = _ACTION.size
_ACTION_INDEX = {name: i for i, name in enumerate(_ACTION_FIELDS)}
_ARRAY_SIZES = {name: len(getattr(ffi.new("vs_dp_action *"), name))
                for name, zero in zip(_ACTION_FIELDS, _ACTION_ZEROS) if zero == b""}


def pack_action(fields: dict) -> bytes:
    """A vs_dp_action's bytes from its fields by name; fields not named are zero. Byte arrays
    must have their exact size (a short one would be silently padded by ``struct``)."""
    values = list(_ACTION_ZEROS)
    for name, value in fields.items():
        index = _ACTION_INDEX.get(name)
        if index is None:
            raise ValueError(f"vs_dp_action has no field {name!r}")
        if isinstance(value, (bytes, bytearray)) and len(value) != _ARRAY_SIZES[name]:
            raise ValueError(f"{name} holds {_ARRAY_SIZES[name]} bytes")
        values[index] = value
    return _ACTION.pack(*values)


class DatapathError(Exception):
    """A call the C datapath refused (unknown port, bad argument)."""


def _checked(status: int, what: str) -> None:
    if status < 0:
        raise DatapathError(f"{what}: refused by the datapath (status {status})")


class Datapath:
    def __init__(self, flow_capacity: int = 65536, upcall_capacity: int = 4096, seed: int = 0):
        dp = lib.vs_dp_create(flow_capacity, upcall_capacity, seed)
        if dp == ffi.NULL:
            raise MemoryError("the datapath could not be created")
        self._dp = ffi.gc(dp, lib.vs_dp_destroy)
        self._shared = ffi.new("vs_dp_shared *")
        self._shared_arrays: dict[str, array] = {}
        # The pinned views C points into: while one is alive its array cannot be resized.
        self._shared_views: dict[str, object] = {}
        self._params = ffi.new("vs_dp_params *")
        self._action = ffi.new("vs_dp_action *")
        self._key = ffi.new("uint8_t[]", KEY_LEN)
        self._out = ffi.new("uint8_t[]", MAX_FRAME)
        self._out_port = ffi.new("uint32_t *")
        self._counters = ffi.new("vs_dp_counters *")
        self._stats = ffi.new("vs_dp_stats *")

    # ---- state handed over ------------------------------------------------------------------

    def set_shared(self, **arrays: array) -> None:
        """Hand C the arrays it reads and writes in place (names as in vs_dp_shared). Arrays not
        named keep what an earlier call gave; each must stay the same object while in use."""
        for name, values in arrays.items():
            if name not in _SHARED:
                raise ValueError(f"unknown shared array {name!r}")
            typecode, capacity_field = _SHARED[name]
            if _typecode(values) != typecode:
                raise ValueError(f"{name} must be an array.array or memoryview of type "
                                 f"{typecode!r}")
            view = ffi.from_buffer(_C_TYPES[typecode], _exporter(values), require_writable=True)
            self._shared_views[name] = view
            setattr(self._shared, name, view)
            if capacity_field is not None:
                setattr(self._shared, capacity_field, len(values))
        self._shared_arrays.update(arrays)
        self._check_shared_lengths()
        lib.vs_dp_set_shared(self._dp, self._shared)

    def _check_shared_lengths(self) -> None:
        held = self._shared_arrays
        groups = (("fdb_seen", "fdb_inc"), ("nbr_since", "nbr_inc"),
                  ("ct_expires", "ct_seen", "ct_state", "ct_flags", "ct_inc"))
        for group in groups:
            lengths = {len(held[name]) for name in group if name in held}
            if len(lengths) > 1:
                raise ValueError(f"{', '.join(group)} must have the same length")
        if "ct_expires" in held:
            for name in ("ct_packets", "ct_bytes"):
                if name in held and len(held[name]) < 2 * len(held["ct_expires"]):
                    raise ValueError(f"{name} needs two elements per conntrack entry")
        if len(held.get("vxlan_ident", (0,))) < 1:
            raise ValueError("vxlan_ident needs one element")

    def set_params(self, **fields: float | int) -> None:
        """Set fields of vs_dp_params (the others keep their values)."""
        for name, value in fields.items():
            setattr(self._params, name, value)
        lib.vs_dp_set_params(self._dp, self._params)

    def set_generation(self, generation: int) -> None:
        self._params.generation = generation
        lib.vs_dp_set_generation(self._dp, generation)

    # ---- ports --------------------------------------------------------------------------------

    def port_add(self, port_id: int, fd: int, l2_offset: int, upcall_all: bool = False) -> None:
        """A port (fd -1: only ``process`` sees it). The fd is made non-blocking; the caller
        keeps owning it and closes it only after ``port_del``."""
        _checked(lib.vs_dp_port_add(self._dp, port_id, fd, l2_offset, upcall_all),
                 f"port {port_id}")

    def port_del(self, port_id: int) -> None:
        """Once this returns, the poll thread no longer touches the port's fd."""
        _checked(lib.vs_dp_port_del(self._dp, port_id), f"port {port_id}")

    def port_set_upcall_all(self, port_id: int, upcall_all: bool) -> None:
        _checked(lib.vs_dp_port_set_upcall_all(self._dp, port_id, upcall_all),
                 f"port {port_id}")

    def port_counters(self, port_id: int) -> dict[str, int]:
        _checked(lib.vs_dp_port_counters(self._dp, port_id, self._counters), f"port {port_id}")
        return {name: getattr(self._counters, name) for name in _COUNTERS}

    # ---- flows --------------------------------------------------------------------------------

    pack_action = staticmethod(pack_action)

    def install(self, key: bytes, **action_fields: int | bytes) -> bool:
        """Install an action (fields named as in vs_dp_action, the others zero) under ``key``,
        zero-padded to KEY_LEN. False when the table was full and the entry took the place of
        one it evicted (the first idle one its clock reached)."""
        return self.install_packed(key, pack_action(action_fields))

    def install_packed(self, key: bytes, action: bytes) -> bool:
        """``install`` for an action packed by ``pack_action``: one copy, no field by field
        assignment (the pipeline installs one or two actions per first packet)."""
        if len(key) > KEY_LEN:
            raise ValueError(f"a datapath key has at most {KEY_LEN} bytes")
        ffi.memmove(self._key, key.ljust(KEY_LEN, b"\0"), KEY_LEN)
        ffi.memmove(self._action, action, ACTION_SIZE)
        return lib.vs_dp_install(self._dp, self._key, self._action) == 1

    def flush(self) -> None:
        lib.vs_dp_flush(self._dp)

    def sweep(self) -> int:
        """Remove the entries not looked up since the last sweep, mark the others idle: the
        number removed."""
        return lib.vs_dp_sweep(self._dp)

    def stats(self) -> dict[str, int]:
        lib.vs_dp_stats_get(self._dp, self._stats)
        return {name: getattr(self._stats, name) for name in _STATS}

    def process(self, in_port: int, frame: bytes, now: float
                ) -> tuple[int, int, bytes | None]:
        """One frame through the cache: (length or status, out port, the output or None)."""
        n = lib.vs_dp_process(self._dp, in_port, ffi.from_buffer("uint8_t[]", frame),
                              len(frame), now, self._out, MAX_FRAME, self._out_port)
        data = bytes(ffi.buffer(self._out, n)) if n >= 0 else None
        return n, self._out_port[0], data

    # ---- the poll thread and upcalls -------------------------------------------------------

    def start(self) -> None:
        _checked(lib.vs_dp_start(self._dp), "start")

    def stop(self) -> None:
        lib.vs_dp_stop(self._dp)

    @property
    def upcall_fd(self) -> int:
        """Readable exactly while upcalls wait."""
        return lib.vs_dp_upcall_fd(self._dp)

    def take_upcalls(self, max_frames: int) -> list[tuple[int, bytes]]:
        """Up to ``max_frames`` waiting upcalls as (port, frame): the ports in turn, up to 8
        frames of one port per turn, each port's oldest first."""
        taken = []
        port = self._out_port
        for _ in range(max_frames):
            n = lib.vs_dp_upcall_take(self._dp, port, self._out, MAX_FRAME)
            if n < 0:
                break
            taken.append((port[0], bytes(ffi.buffer(self._out, n))))
        return taken
