"""Fuzz targets: one per function of the native module, plus the datapath and the whole node.

A target takes one input (bytes, from atheris or from the tests) and derives the arguments of a
call from it with ``Input``. Where the native function has a pure twin, the target makes the
same call on both and asserts the same outcome: the same result, or the same error (type and
message); the native side gets buffers of exactly the input's length (``exact``), so a sanitizer
build sees any read past them. Every other exception is a finding.

| target | native functions | held to |
|---|---|---|
| ``checksum`` | ``vs_sum16``, ``vs_checksum`` | ``pure.sum16``, ``pure.checksum`` |
| ``checksum-update`` | ``vs_checksum_update16``, ``vs_checksum_update32`` | their twins |
| ``pseudo-header`` | ``vs_pseudo_header_sum``, ``vs_l4_checksum`` (and ``udp_checksum``) | theirs |
| ``nat-rewrite`` | ``vs_nat_rewrite`` | ``pure.nat_rewrite``: the same bytes afterwards |
| ``hash-key`` | ``vs_exact_hash`` | ``pure.hash_key`` |
| ``exact-table`` | ``vs_exact_*``: a program of inserts, lookups, deletes, batches | the replica |
| ``lpm4`` | ``vs_lpm4_*``: a program of adds, deletes, lookups, batches | the replica |
| ``flow-key`` | ``vs_flow_key``, ``vs_flow_keys_batch`` (any stride and length) | ``pure`` |
| ``vxlan-source-port`` | ``vs_vxlan_source_port`` | ``wire.vxlan.source_port`` |
| ``vxlan-wrap`` | ``vs_vxlan_wrap`` | ``FastPath._encapsulated`` where C wraps |
| ``vxlan-open`` | ``vs_vxlan_open`` | ``FastPath._opened`` |
| ``datapath`` | ``vs_dp_*``: any action on any frame; a port gone; sweeps, a flush | its contract |
| ``pipeline`` | ``vs_dp_process`` and the others, through a node's ``Switch`` | the pure node |

``datapath`` installs an action made of input bytes (every bit pattern is a valid
``vs_dp_action``) under the key of an input frame and replays the frame: the status and the
output length must be what the header promises, whatever the action says. ``pipeline`` feeds
frames to two nodes (``lab.node``), one on each accel: what they send, and every statistic but
the cache's own, must be equal, and each port's frames must be counted once.

``REACHES`` lists the C functions each target calls, and ``test_targets.py`` holds that list to
the header, so a new native function needs a target. Each target also lists seeds: inputs built
from valid frames and calls, laid out as its ``Input`` reads them, from which the fuzzer's
mutations start.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Callable

from vswitch import _native
from vswitch.accel import TableFullError, exact_slots_for, native, pure
from vswitch.accel.datapath import (CONNECTION, CONSUMED, CT_ASSURED, CT_IN_TABLE, CT_REPLIED,
                                    DECAP, EINVAL, FORWARD, MAX_FRAME, UPCALL, Datapath,
                                    pack_action, ACTION_SIZE)
from vswitch.core.fast_path import connection_key
from vswitch.wire import vxlan

from . import lab

ffi, lib = _native.ffi, _native.lib

# The C functions each target calls (through the wrappers or directly). The poll thread's
# (vs_dp_start, vs_dp_stop, vs_dp_upcall_fd, vs_dp_upcall_take) need ports with file
# descriptors and a thread: tests/unit/test_datapath_engine.py drives them over socket pairs.
REACHES = {
    "checksum": ("vs_sum16", "vs_checksum"),
    "checksum-update": ("vs_checksum_update16", "vs_checksum_update32"),
    "pseudo-header": ("vs_pseudo_header_sum", "vs_l4_checksum"),
    "nat-rewrite": ("vs_nat_rewrite",),
    "hash-key": ("vs_exact_hash",),
    "exact-table": ("vs_exact_slots_for", "vs_exact_create", "vs_exact_destroy",
                    "vs_exact_count", "vs_exact_slots", "vs_exact_insert", "vs_exact_lookup",
                    "vs_exact_delete", "vs_exact_clear", "vs_exact_lookup_batch",
                    "vs_exact_dump", "vs_exact_max_probe"),
    "lpm4": ("vs_lpm4_create", "vs_lpm4_destroy", "vs_lpm4_add", "vs_lpm4_delete",
             "vs_lpm4_lookup", "vs_lpm4_lookup_batch", "vs_lpm4_count", "vs_lpm4_groups",
             "vs_lpm4_clear"),
    "flow-key": ("vs_flow_key", "vs_flow_keys_batch"),
    "vxlan-source-port": ("vs_vxlan_source_port",),
    "vxlan-wrap": ("vs_vxlan_wrap",),
    "vxlan-open": ("vs_vxlan_open",),
    "datapath": ("vs_dp_create", "vs_dp_destroy", "vs_dp_set_shared", "vs_dp_set_params",
                 "vs_dp_set_generation", "vs_dp_port_add", "vs_dp_port_set_upcall_all",
                 "vs_dp_port_del", "vs_dp_port_counters", "vs_dp_install", "vs_dp_flush",
                 "vs_dp_sweep", "vs_dp_stats_get", "vs_dp_process"),
    "pipeline": ("vs_dp_process", "vs_flow_keys_batch", "vs_nat_rewrite", "vs_exact_lookup"),
}
THREADED = ("vs_dp_start", "vs_dp_stop", "vs_dp_upcall_fd", "vs_dp_upcall_take")


class Input:
    """Reads the arguments of a call from fuzz input; past its end every read gives zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def __bool__(self) -> bool:
        return self.at < len(self.data)

    def int(self, size: int) -> int:
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def choice(self, options):
        return options[self.int(1) % len(options)]

    def bytes(self, size: int) -> bytes:
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def sized(self, max_size: int = 0xFFFF) -> bytes:
        """Bytes after a 2-byte length."""
        return self.bytes(self.int(2) % (max_size + 1))

    def rest(self) -> bytes:
        chunk = self.data[self.at:]
        self.at = len(self.data)
        return chunk


def u(size: int, value: int) -> bytes:
    """``value`` as ``Input.int(size)`` reads it, for seeds."""
    return value.to_bytes(size, "little")


def sized(data: bytes) -> bytes:
    return u(2, len(data)) + data


def exact(data: bytes) -> memoryview:
    """A writable view of a C buffer of exactly ``len(data)`` bytes holding ``data``; it reads
    and slices as ``bytes`` and ``bytearray`` do."""
    buf = ffi.new("uint8_t[]", max(len(data), 1))
    ffi.memmove(buf, data, len(data))
    return memoryview(ffi.buffer(buf, len(data)))


def outcome(call: Callable, *args, **kwargs) -> tuple:
    """What a call of a twin gives: ("ok", result) or ("error", type, message) for the errors
    the API documents. Any other exception propagates: that is a finding."""
    try:
        return ("ok", call(*args, **kwargs))
    except (ValueError, TableFullError) as exc:
        return ("error", type(exc).__name__, str(exc))


def same(name: str, *args, **kwargs) -> tuple:
    """``name`` of the native module and of the pure twin on the same arguments: the native
    call gets ``exact`` copies of bytes arguments."""
    native_args = [exact(a) if isinstance(a, bytes) else a for a in args]
    got = outcome(getattr(native, name), *native_args, **kwargs)
    want = outcome(getattr(pure, name), *args, **kwargs)
    assert got == want, (name, got, want)
    return got


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


TARGETS: dict[str, Target] = {}


def target(name: str, seeds: Callable[[], list[bytes]]):
    def register(run: Callable[[bytes], None]) -> Callable[[bytes], None]:
        TARGETS[name] = Target(name, run, seeds)
        return run
    return register


def _ip_packets() -> list[bytes]:
    """IPv4 packets (no Ethernet) of the lab's valid frames, for the checksum and NAT seeds."""
    switch = lab.node("pure")
    return [frame[10 + 14:] for port, frame in lab.corpus(switch)
            if frame[10 + 12:10 + 14] == b"\x08\x00"]


# ---- checksums ---------------------------------------------------------------------------------

@target("checksum", lambda: [u(4, 0) + p for p in _ip_packets()] + [u(4, 0xFFFFFFFF) + b"\xff"])
def checksum(data: bytes) -> None:
    inp = Input(data)
    initial = inp.int(4) if inp.int(1) % 8 else inp.int(5)  # now and then out of range
    block = inp.rest()
    same("sum16", block, initial)
    same("checksum", block)


@target("checksum-update", lambda: [bytes(20), b"\xff" * 20, bytes(range(20))])
def checksum_update(data: bytes) -> None:
    inp = Input(data)
    wide = inp.int(1) % 16 == 0  # now and then values out of range
    width16, width32 = (3, 5) if wide else (2, 4)
    same("checksum_update16", inp.int(width16), inp.int(width16), inp.int(width16))
    same("checksum_update32", inp.int(width16), inp.int(width32), inp.int(width32))


def _address(inp: Input) -> bytes:
    """4 bytes, or now and then a wrong length."""
    return inp.bytes(4) if inp.int(1) % 16 else inp.sized(8)


@target("pseudo-header", lambda: [
    b"\x01" + bytes([10, 244, 1, 10]) + b"\x01" + bytes([10, 96, 0, 10]) + bytes([proto])
    + u(4, len(p)) + p[20:] for p in _ip_packets() for proto in (6, 17, 1)])
def pseudo_header(data: bytes) -> None:
    inp = Input(data)
    src, dst = _address(inp), _address(inp)
    proto = inp.int(1)
    length = inp.int(4) if inp.int(1) % 16 else inp.int(5)
    segment = inp.rest()
    same("pseudo_header_sum", src, dst, proto, length)
    same("l4_checksum", src, dst, None if proto == 1 else proto, segment)
    same("udp_checksum", src, dst, segment)


# ---- NAT rewrite -------------------------------------------------------------------------------

def _nat_seeds() -> list[bytes]:
    seeds = []
    for p in _ip_packets():
        for flags in (0b1111, 0b0101, 0b1010, 0b11111):
            seeds.append(bytes([flags]) + bytes([10, 244, 1, 11]) + bytes([10, 244, 1, 10])
                         + u(3, 8080) + u(3, 40000) + p)
    return seeds


@target("nat-rewrite", _nat_seeds)
def nat_rewrite(data: bytes) -> None:
    inp = Input(data)
    flags = inp.int(1)
    src, dst = inp.bytes(4), inp.bytes(4)
    sport, dport = inp.int(3) % 0x10001, inp.int(3) % 0x10001  # 0x10000 is out of range
    kwargs = dict(src=src if flags & 1 else None, dst=dst if flags & 2 else None,
                  sport=sport if flags & 4 else None, dport=dport if flags & 8 else None,
                  partial=bool(flags & 16))
    packet = inp.rest()
    c_packet = exact(packet)
    py_packet = bytearray(packet)
    got = outcome(native.nat_rewrite, c_packet, **kwargs)
    want = outcome(pure.nat_rewrite, py_packet, **kwargs)
    assert got == want, (got, want)
    assert bytes(c_packet) == bytes(py_packet), (bytes(c_packet).hex(), py_packet.hex())


# ---- tables ------------------------------------------------------------------------------------

@target("hash-key", lambda: [u(8, 0) + bytes(22), u(8, 2**64 - 1) + bytes(range(40)), b""])
def hash_key(data: bytes) -> None:
    inp = Input(data)
    seed = inp.int(8) if inp.int(1) % 16 else inp.int(9)
    same("hash_key", inp.rest(), seed)


def _key(inp: Input, key_size: int) -> bytes:
    """A key of the table's size, from a small alphabet so that keys collide; now and then of
    a wrong size."""
    if inp.int(1) % 32 == 0:
        return inp.sized(2 * key_size + 1)
    first = inp.int(1) % 8
    return bytes([first]) + bytes(key_size - 1) if key_size > 1 else bytes([first])


def _exact_seeds() -> list[bytes]:
    insert = lambda k, v: b"\x00" + b"\x01" + bytes([k]) + u(8, v)  # noqa: E731
    program = b"".join(insert(k, k * 3) for k in range(8)) + b"\x01\x01\x03" + b"\x02\x01\x03"
    return [bytes([1, 8]) + u(8, 7) + program, bytes([0, 2]) + u(8, 0) + program * 2]


@target("exact-table", _exact_seeds)
def exact_table(data: bytes) -> None:
    inp = Input(data)
    key_size = inp.choice([1, 2, 4, 8, 13, 36, 0, 256])
    capacity = 1 + inp.int(1) % 24
    seed = inp.int(8)
    created = (outcome(native.ExactTable, key_size, capacity, seed),
               outcome(pure.ExactTable, key_size, capacity, seed))
    if created[0][0] != "ok" or created[1][0] != "ok":
        assert created[0] == created[1], created
        return
    c_table, py_table = created[0][1], created[1][1]
    assert lib.vs_exact_slots_for(capacity) == exact_slots_for(capacity)
    while inp:
        op = inp.int(1) % 7
        if op == 0:
            key, value = _key(inp, key_size), inp.int(8) - 2**63
            call = ("insert", key, value)
        elif op in (1, 2):
            call = ("lookup" if op == 1 else "delete", _key(inp, key_size))
        elif op == 3:
            call = ("lookup_batch", [_key(inp, key_size) for _ in range(inp.int(1) % 9)])
        elif op == 4 and inp.int(1) % 4 == 0:
            call = ("clear",)
        else:
            call = ("items",)
        got = outcome(getattr(c_table, call[0]), *call[1:])
        want = outcome(getattr(py_table, call[0]), *call[1:])
        assert got == want, (call, got, want)
        assert len(c_table) == len(py_table) <= capacity
    assert c_table.items() == py_table.items()
    assert c_table.statistics() == py_table.statistics()


def _prefix(inp: Input) -> int:
    """An address inside a few /16s (so that routes overlap), or now and then any value."""
    if inp.int(1) % 8 == 0:
        return inp.int(5) if inp.int(1) % 8 == 0 else inp.int(4)
    return (0x0AF4 << 16 | inp.int(1) % 4 << 14) + inp.int(2)


def _length(inp: Input) -> int:
    """A prefix length, mostly 16 to 32 (and now and then 33, out of range): a shorter one
    rewrites up to 65,536 first-level entries, which the pure twin does one by one."""
    length = inp.int(1)
    return length % 34 if length >= 0xF0 else 16 + length % 18


def _lpm_seeds() -> list[bytes]:
    def add(prefix, length, value):
        return b"\x00" + b"\x01" + u(1, (prefix >> 14) & 3) + u(2, prefix & 0xFFFF) \
            + bytes([length]) + b"\x01" + u(4, value)
    routes = b"".join(add(0x0AF40000 + i * 256, length - 16, i)
                      for i, length in enumerate((16, 20, 24, 25, 32, 30, 17, 28)))
    lookups = b"".join(b"\x02\x01\x00" + u(2, i * 300) for i in range(6))
    return [b"\x10" + routes + lookups, b"\x03" + routes * 2 + b"\x01\x01\x00\x00\x01\x18"]


@target("lpm4", _lpm_seeds)
def lpm4(data: bytes) -> None:
    inp = Input(data)
    max_routes = 1 + inp.int(1) % 32
    c_table, py_table = native.Lpm4(max_routes), pure.Lpm4(max_routes)
    while inp:
        op = inp.int(1) % 6
        if op == 0:
            prefix, length = _prefix(inp), _length(inp)
            value = inp.int(4) & 0x7FFFFFFF if inp.int(1) % 16 else inp.int(4)
            call = ("add", prefix, length, value)
        elif op == 1:
            call = ("delete", _prefix(inp), _length(inp))
        elif op == 2:
            call = ("lookup", _prefix(inp))
        elif op == 3:
            call = ("lookup_batch", [_prefix(inp) for _ in range(inp.int(1) % 9)])
        elif op == 4 and inp.int(1) % 8 == 0:
            call = ("clear",)
        else:
            call = ("statistics",)
        got = outcome(getattr(c_table, call[0]), *call[1:])
        want = outcome(getattr(py_table, call[0]), *call[1:])
        assert got == want, (call, got, want)
        assert len(c_table) == len(py_table) <= max_routes
    assert c_table.statistics() == py_table.statistics()


# ---- flow keys ---------------------------------------------------------------------------------

def _frames_of(inp: Input, most: int = 16) -> list[bytes]:
    frames = []
    while inp and len(frames) < most:
        frames.append(inp.sized(2000))
    return frames


def _flow_key_seeds() -> list[bytes]:
    switch = lab.node("pure")
    frames = [frame for _, frame in lab.corpus(switch)]
    return [bytes([offset, 0, 0]) + b"".join(sized(f) for f in frames[i::5])
            for i in range(5) for offset in (1, 2)]


def _pure_key(frame: bytes, offset: int) -> bytes | None:
    (key,) = pure.extract_flow_keys([frame], offset)
    return key


@target("flow-key", _flow_key_seeds)
def flow_key(data: bytes) -> None:
    inp = Input(data)
    offset = inp.choice([0, 10, 24, 0xFFFF, 14, 4, 40, 1000])
    stride = inp.int(2) % 200
    frames = _frames_of(inp)
    # The wrapper, twice with one extractor (its buffers grow and are reused), against pure.
    extractor = native.FlowKeyExtractor()
    for burst in (frames, frames[::-1], frames[:1]):
        want = outcome(pure.FlowKeyExtractor().extract, burst, offset)
        assert outcome(extractor.extract, [exact(f) for f in burst], offset) == want
    if offset > 0xFFFF or not frames:
        return
    key = ffi.new("uint8_t[]", lib.VS_FLOW_KEY_LEN)
    for frame in frames:
        # One frame, of which only the first ``readable`` bytes are given.
        expected = _pure_key(frame, offset)
        for readable in {len(frame), min(len(frame), offset + 34), len(frame) // 2}:
            status = lib.vs_flow_key(ffi.from_buffer("uint8_t[]", exact(frame[:readable])),
                                     readable, len(frame), offset, key)
            if status == lib.VS_FK_WINDOW:
                assert readable < len(frame)
                continue
            assert (status == lib.VS_FK_OK) == (expected is not None), (status, expected)
            if expected is not None:
                assert bytes(ffi.buffer(key)) == expected
    # The batch form over windows of any stride; a frame longer than its window counts its
    # missing bytes as zeros, which no check or key reads when the window is wide enough.
    n = len(frames)
    lens = array("Q", [len(f) for f in frames])
    windows = b"".join(f[:stride].ljust(stride, b"\0") for f in frames)
    keys = ffi.new("uint8_t[]", max(n, 1) * lib.VS_FLOW_KEY_LEN)
    statuses = ffi.new("uint8_t[]", max(n, 1))
    ok = lib.vs_flow_keys_batch(ffi.from_buffer("uint8_t[]", exact(windows)), stride,
                                ffi.from_buffer("uint64_t[]", lens), n, offset, keys, statuses)
    assert ok == sum(1 for i in range(n) if statuses[i] == lib.VS_FK_OK)
    for i, frame in enumerate(frames):
        if statuses[i] == lib.VS_FK_WINDOW:
            continue
        expected = _pure_key(frame[:stride].ljust(len(frame), b"\0"), offset)
        assert (statuses[i] == lib.VS_FK_OK) == (expected is not None), (i, statuses[i])
        got = bytes(ffi.buffer(keys + i * lib.VS_FLOW_KEY_LEN, lib.VS_FLOW_KEY_LEN))
        assert got == (expected or bytes(lib.VS_FLOW_KEY_LEN))


# ---- VXLAN -------------------------------------------------------------------------------------

def _vxlan_helpers():
    """The C and Python sides of wrap and open, as their unit tests call them."""
    from tests.unit import test_vxlan_native
    return test_vxlan_native


@target("vxlan-source-port", lambda: [u(8, 0) + bytes(13), u(8, 0x0123456789ABCDEF) + bytes(22)])
def vxlan_source_port(data: bytes) -> None:
    inp = Input(data)
    seed = inp.int(8)
    key = inp.rest()
    got = lib.vs_vxlan_source_port(ffi.from_buffer("uint8_t[]", exact(key)), len(key), seed)
    assert got == vxlan.source_port(key, seed=seed, accel=pure)


def _wrap_seeds() -> list[bytes]:
    t = _vxlan_helpers()
    seeds = []
    for proto in (6, 17, 1):
        ip = t.ipv4_packet(proto, 0, 63, b"", 0, 100)
        seeds.append(b"\x00" + u(2, 7) + b"\x00" + ip)
        seeds.append(b"\x01" + t.legacy_vnet(1, 0, 0, 0, 34, 6 if proto == 17 else 16)
                     + u(2, 1) + b"\x00" + ip)
        seeds.append(b"\x02" + t.legacy_vnet(1, 1, 66, 1398, 34, 16) + bytes(14) + u(2, 9)
                     + b"\x00" + t.ipv4_packet(6, 0, 63, b"", 0x4000, 3000))
    return seeds


@target("vxlan-wrap", _wrap_seeds)
def vxlan_wrap(data: bytes) -> None:
    t = _vxlan_helpers()
    inp = Input(data)
    vnet = inp.bytes(inp.choice([0, 10, 24, 12]))
    ident = inp.int(2)
    short = inp.int(1)
    ip = inp.rest()
    cap = None if short % 4 else len(vnet) + 64 + len(ip) - short // 4
    got = t.c_wrap(t.action(), vnet, ip, ident, cap)
    if got is not None:
        assert got == t.py_wrap(vnet, ip, ident)


def _open_seeds() -> list[bytes]:
    t = _vxlan_helpers()
    seeds = []
    for proto in (6, 17, 1):
        inner = t.inner_frame(proto, 100)
        seeds.append(b"\x00" + t.encapsulated(inner))
        seeds.append(b"\x00" + t.encapsulated(inner, udp_checksum=True))
        seeds.append(b"\x01" + t.encapsulated(inner, vnet=t.legacy_vnet(0, 0, 0, 0, 0, 0)))
        seeds.append(b"\x02" + t.encapsulated(
            inner, vnet=t.legacy_vnet(1, 0x21, 104, 1400, 84, 16) + bytes(10)
            + struct.pack("<HH", 34, 64)))
    return seeds


@target("vxlan-open", _open_seeds)
def vxlan_open(data: bytes) -> None:
    t = _vxlan_helpers()
    inp = Input(data)
    l2 = inp.choice([0, 10, 24, 12])
    frame = inp.rest()
    got = t.c_open(t.action(), frame, l2)
    if l2 in (0, 10, 24):
        assert got == t.py_open(frame, l2)
    else:
        assert got is None


# ---- the datapath ------------------------------------------------------------------------------

DP_SLOTS = 8
DP_NOW = 1000.0
DP_GENERATION = 5


def _datapath(l2s: tuple[int, int], upcall_all: bool) -> Datapath:
    """A datapath with in-memory ports 1 and 2 and shared arrays of DP_SLOTS entries, all of
    them in use: FDB and neighbours fresh, connections established and assured."""
    dp = Datapath(flow_capacity=16, upcall_capacity=4)
    dp.set_shared(
        fdb_seen=array("d", [DP_NOW - 1] * DP_SLOTS), fdb_inc=array("I", [1] * DP_SLOTS),
        nbr_since=array("d", [DP_NOW - 1] * DP_SLOTS), nbr_inc=array("I", [1] * DP_SLOTS),
        ct_expires=array("d", [DP_NOW + 100] * DP_SLOTS), ct_seen=array("d", [0.0] * DP_SLOTS),
        ct_packets=array("Q", [0] * 2 * DP_SLOTS), ct_bytes=array("Q", [0] * 2 * DP_SLOTS),
        ct_state=array("B", [3] * DP_SLOTS),
        ct_flags=array("B", [CT_IN_TABLE | CT_REPLIED | CT_ASSURED] * DP_SLOTS),
        ct_inc=array("I", [1] * DP_SLOTS), vxlan_ident=array("I", [0]))
    dp.set_params(fdb_aging=300.0, reachable_time=30.0, ct_established=432000.0,
                  ct_udp_unreplied=30.0, ct_udp_replied=120.0, ct_icmp=30.0)
    dp.set_generation(DP_GENERATION)
    dp.port_add(1, -1, l2s[0], upcall_all)
    dp.port_add(2, -1, l2s[1])
    return dp


def _datapath_seeds() -> list[bytes]:
    switch = lab.node("pure")
    common = dict(generation=DP_GENERATION, out_port=2, src_slot=0, src_inc=1, dst_slot=1,
                  dst_inc=1, mtu=1500, nbr_slot=2, nbr_inc=1, ct_slot=3, ct_inc=1,
                  rewrite=bytes(range(12)), target_src=bytes([10, 244, 1, 11]),
                  target_dst=bytes([10, 244, 1, 10]), target_sport=8080, target_dport=40000,
                  encap_inner_macs=bytes(range(12, 24)), encap_src_ip=bytes([192, 0, 2, 2]),
                  encap_dst_ip=bytes([192, 0, 2, 3]), encap_port=4789, encap_vni=1,
                  decap_vtep_mac=bytes.fromhex(switch.topology.overlay.vtep_mac.replace(":", "")))
    actions = [dict(kind=FORWARD), dict(kind=FORWARD, rewrite_macs=1),
               dict(kind=FORWARD, rewrite_macs=1, encap=1), dict(kind=CONNECTION),
               dict(kind=CONNECTION, rewrite_macs=1, direction=1), dict(kind=DECAP)]
    frames = [frame for _, frame in lab.corpus(switch)]
    return [bytes([0, flags]) + pack_action({**common, **action}) + frame
            for i, action in enumerate(actions) for flags in (0, 1)
            for frame in frames[i::6][:4]]


@target("datapath", _datapath_seeds)
def datapath(data: bytes) -> None:
    inp = Input(data)
    l2s = inp.choice([(10, 10), (10, 24), (24, 10), (0, 10), (10, 0), (24, 24), (0, 0)])
    flags = inp.int(1)
    action = inp.bytes(ACTION_SIZE).ljust(ACTION_SIZE, b"\0")
    frame = inp.rest()
    dp = _datapath(l2s, upcall_all=bool(flags & 8))
    (flow,) = pure.extract_flow_keys([frame], l2s[0])
    if flow is not None:
        key = (1).to_bytes(4, "big") + flow
        # As the cache installs them: under the flow key, and for a connection also under the
        # connection key, with the other entry a marker or another action of the input.
        dp.install_packed(key, action)
        conn_key = connection_key(key, frame, l2s[0])
        if flags & 1 and conn_key is not None:
            dp.install_packed(conn_key, action)
        if flags & 2:
            dp.install(key, generation=DP_GENERATION, kind=lib.VS_DP_PER_CONNECTION)
    elif flags & 4:
        dp.install_packed(bytes(36), action)
    replays = 0
    for now in (DP_NOW, DP_NOW + (flags >> 5) * 100.0):
        n, out_port, out = dp.process(1, frame, now)
        replays += 1
        assert n in (UPCALL, CONSUMED, EINVAL) or 0 <= n <= MAX_FRAME, n
        if n >= 0:
            assert out is not None and len(out) == n and out_port in (1, 2)
        stats = dp.stats()
        assert stats["hits"] + stats["misses"] <= replays
        assert dp.port_counters(1)["rx_packets"] <= stats["hits"]
        if flags & 16 and replays == 1:  # the output port goes away: a hit has nowhere to go
            dp.port_del(2)
    dp.port_set_upcall_all(1, True)
    assert dp.process(1, frame, DP_NOW)[0] in (UPCALL, EINVAL)
    dp.port_set_upcall_all(1, False)
    dp.sweep()  # what was looked up is marked idle, the rest goes
    dp.sweep()  # nothing was looked up since: everything goes
    assert dp.stats()["entries"] == 0
    assert dp.process(1, frame, DP_NOW)[0] in (UPCALL, EINVAL)
    dp.install_packed(bytes(36), action)
    dp.flush()
    assert dp.process(1, frame, DP_NOW)[0] in (UPCALL, EINVAL)


# ---- the whole node ----------------------------------------------------------------------------

def _pipeline_seeds() -> list[bytes]:
    seeds = []
    for framing in (0, 1):
        switch = lab.node("pure", lab.FRAMINGS[framing])
        cases = lab.corpus(switch)
        for start in range(0, len(cases), 6):
            seeds.append(bytes([framing]) + b"".join(bytes([lab.PORTS.index(port)]) + sized(f)
                                                     for port, f in cases[start:start + 6]))
    return seeds


def _comparable(statistics: dict) -> dict:
    """A node's statistics without those of its cache, which the two accels keep differently."""
    return {k: v for k, v in statistics.items() if k not in ("flow_cache", "datapath")}


@target("pipeline", _pipeline_seeds)
def pipeline(data: bytes) -> None:
    inp = Input(data)
    framing = inp.choice(lab.FRAMINGS)
    nodes = lab.node("native", framing), lab.node("pure", framing)
    received = dict.fromkeys(lab.PORTS, 0)
    now = 0.0
    while inp:
        port = inp.choice(lab.PORTS)
        frame = inp.sized(9100)
        now += 0.5
        received[port] += 1
        sent = [[(t.port, t.data) for t in n.process_batch(port, [frame], now)] for n in nodes]
        assert sent[0] == sent[1], (port, frame.hex())
        timers = [[(t.port, t.data) for t in n.handle_timer(now)] for n in nodes]
        assert timers[0] == timers[1]
    statistics = [n.statistics() for n in nodes]
    assert _comparable(statistics[0]) == _comparable(statistics[1])
    for name, port in statistics[0]["ports"].items():
        assert port["rx_packets"] == received[port["id"]], name
    assert sum(statistics[0]["dispositions"].values()) == sum(received.values())
