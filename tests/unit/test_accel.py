"""The accel API: loading, and the Internet checksum family, against both implementations.

Every test taking the ``accel`` fixture runs once with the native module and once with the pure
twin; the ``*_twins_agree`` properties feed both the same random input and demand identical output.
"""
from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch import accel as accel_api
from vswitch.accel import native, pure

# The accel fixture yields a stateless module, so sharing it across hypothesis examples is safe.
PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

ip4 = st.binary(min_size=4, max_size=4)


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_api.load(request.param)


def reference_sum16(data: bytes) -> int:
    """RFC 1071 written out the slow, obvious way, independent of both implementations."""
    total = 0
    for i in range(0, len(data), 2):
        hi = data[i]
        lo = data[i + 1] if i + 1 < len(data) else 0
        total += (hi << 8) | lo
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    return ~reference_sum16(data) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + bytes([0, proto]) + struct.pack("!H", length)


# ---- loading ----------------------------------------------------------------------------------


def test_load_returns_the_named_implementation(accel):
    assert accel.NAME in ("native", "pure")
    assert accel is accel_api.load(accel.NAME)


def test_load_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown accel implementation"):
        accel_api.load("fast")


def test_load_native_raises_when_the_c_module_is_missing(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the .so had never been built.
    monkeypatch.setitem(sys.modules, "vswitch._native", None)
    monkeypatch.delitem(sys.modules, "vswitch.accel.native")
    with pytest.raises(ImportError):
        accel_api.load("native")


# ---- checksum ---------------------------------------------------------------------------------


def test_checksum_rfc1071_example(accel):
    # RFC 1071, section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert accel.sum16(data) == 0xDDF2
    assert accel.checksum(data) == 0x220D


def test_checksum_of_a_real_ipv4_header(accel):
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert accel.checksum(header) == 0xB861
    with_checksum = header[:10] + b"\xb8\x61" + header[12:]
    assert accel.checksum(with_checksum) == 0


def test_checksum_of_empty_and_odd_input(accel):
    assert accel.checksum(b"") == 0xFFFF
    assert accel.sum16(b"\x12") == 0x1200
    assert accel.sum16(b"\x12\x34\x56") == 0x1234 + 0x5600


def test_checksum_accepts_bytes_like(accel):
    data = bytes(range(37))
    expected = reference_checksum(data)
    assert accel.checksum(bytearray(data)) == expected
    assert accel.checksum(memoryview(data)) == expected
    assert accel.checksum(memoryview(b"xx" + data)[2:]) == expected


def test_sum16_folds_the_initial_value(accel):
    assert accel.sum16(b"\xff\xff", 1) == 1
    assert accel.sum16(b"", 0x1FFFF) == 1
    with pytest.raises(ValueError):
        accel.sum16(b"", -1)


@pytest.mark.parametrize("size", [1500, 65535, 65536, 3 * 2**20 + 1])
def test_checksum_of_large_buffers(accel, size):
    data = bytes((i * 131 + (i >> 8)) & 0xFF for i in range(size))
    assert accel.checksum(data) == reference_checksum(data)


@PROPERTY
@given(data=st.binary(max_size=3000), initial=st.integers(0, 0xFFFFFFFF))
def test_sum16_matches_reference(accel, data, initial):
    expected = reference_sum16(data) + initial
    while expected >> 16:
        expected = (expected & 0xFFFF) + (expected >> 16)
    assert accel.sum16(data, initial) == expected
    assert accel.checksum(data) == reference_checksum(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_checksum_twins_agree(data, cut):
    for chunk in (data, data[:cut], data[cut:]):
        assert native.checksum(chunk) == pure.checksum(chunk)
        assert native.sum16(chunk, cut) == pure.sum16(chunk, cut)


# ---- incremental update (RFC 1624) --------------------------------------------------------------


def test_update16_rfc1624_example(accel):
    # RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 changes to m' = 0x3285; the result is 0x0000,
    # where eqn. 2 would have produced the wrong 0xFFFF.
    assert accel.checksum_update16(0xDD2F, 0x5555, 0x3285) == 0x0000


def test_update_when_the_data_becomes_all_zero(accel):
    # The only case where eqn. 3 and recomputation disagree: both are a one's-complement zero.
    data = b"\x00\x01"
    updated = accel.checksum_update16(accel.checksum(data), 0x0001, 0x0000)
    assert updated == 0x0000
    assert accel.checksum(b"\x00\x00") == 0xFFFF


@PROPERTY
@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
    index=st.integers(0, 39),
    new_word=st.integers(0, 0xFFFF),
)
def test_update16_equals_recomputation(accel, words, index, new_word):
    index %= len(words)
    data = struct.pack(f"!{len(words)}H", *words)
    old_csum = accel.checksum(data)
    changed = list(words)
    changed[index] = new_word
    new_data = struct.pack(f"!{len(changed)}H", *changed)
    updated = accel.checksum_update16(old_csum, words[index], new_word)
    if any(changed):
        assert updated == reference_checksum(new_data)
    else:
        assert updated in (0x0000, 0xFFFF)


@PROPERTY
@given(
    data=st.binary(min_size=4, max_size=80),
    position=st.integers(0, 38),
    new_value=st.integers(0, 0xFFFFFFFF),
)
def test_update32_equals_recomputation(accel, data, position, new_value):
    if len(data) % 2:
        data += b"\0"
    offset = (position * 2) % (len(data) - 2)
    offset -= offset % 2
    if offset + 4 > len(data):
        offset = len(data) - 4
    old_value = int.from_bytes(data[offset : offset + 4], "big")
    new_data = data[:offset] + new_value.to_bytes(4, "big") + data[offset + 4 :]
    updated = accel.checksum_update32(accel.checksum(data), old_value, new_value)
    if any(new_data):
        assert updated == reference_checksum(new_data)
    else:
        assert updated in (0x0000, 0xFFFF)


@settings(max_examples=300, deadline=None)
@given(csum=st.integers(0, 0xFFFF), old=st.integers(0, 0xFFFFFFFF), new=st.integers(0, 0xFFFFFFFF))
def test_update_twins_agree(csum, old, new):
    assert native.checksum_update32(csum, old, new) == pure.checksum_update32(csum, old, new)
    assert native.checksum_update16(csum, old & 0xFFFF, new >> 16) == pure.checksum_update16(
        csum, old & 0xFFFF, new >> 16
    )


def test_update_rejects_out_of_range_words(accel):
    with pytest.raises(ValueError):
        accel.checksum_update16(0x10000, 0, 0)
    with pytest.raises(ValueError):
        accel.checksum_update32(0, -1, 0)


# ---- pseudo-header and L4 checksums --------------------------------------------------------------


def test_pseudo_header_sum_known_value(accel):
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    expected = reference_sum16(pseudo_header(src, dst, 6, 40))
    assert expected == 0x0A00 + 0x0001 + 0x0A00 + 0x0002 + 6 + 40
    assert accel.pseudo_header_sum(src, dst, 6, 40) == expected


@PROPERTY
@given(src=ip4, dst=ip4, proto=st.sampled_from([6, 17]), segment=st.binary(min_size=8, max_size=300))
def test_l4_checksum_equals_checksum_over_pseudo_header_and_segment(accel, src, dst, proto, segment):
    expected = reference_checksum(pseudo_header(src, dst, proto, len(segment)) + segment)
    assert accel.l4_checksum(src, dst, proto, segment) == expected
    assert accel.pseudo_header_sum(src, dst, proto, len(segment)) == reference_sum16(
        pseudo_header(src, dst, proto, len(segment))
    )


@PROPERTY
@given(src=ip4, dst=ip4, payload=st.binary(max_size=200))
def test_partial_checksum_completes_to_the_full_one(accel, src, dst, payload):
    # What a virtio-net NEEDS_CSUM frame carries: the folded pseudo-header sum in the checksum
    # field. Checksumming from csum_start then gives the full checksum.
    header = struct.pack("!HHHH", 1234, 53, 8 + len(payload), 0)
    segment = header + payload
    full = accel.l4_checksum(src, dst, 17, segment)
    partial = accel.pseudo_header_sum(src, dst, 17, len(segment))
    completed = accel.checksum(segment[:6] + struct.pack("!H", partial) + segment[8:])
    assert completed == full
    with_full = segment[:6] + struct.pack("!H", full) + segment[8:]
    assert accel.l4_checksum(src, dst, 17, with_full) == 0


def test_pseudo_header_length_beyond_16_bits(accel):
    src = dst = bytes(4)
    assert accel.pseudo_header_sum(src, dst, 6, 0x10005) == 6 + 1 + 5


def test_l4_checksum_without_pseudo_header_is_plain_checksum(accel):
    icmp = bytes.fromhex("0800000012340001") + b"ping"
    assert accel.l4_checksum(bytes(4), bytes(4), None, icmp) == reference_checksum(icmp)


def test_udp_checksum_never_returns_zero(accel):
    src, dst = bytes([192, 168, 0, 1]), bytes([192, 168, 0, 2])
    segment = struct.pack("!HHHH", 1000, 2000, 12, 0) + b"data"
    computed = accel.udp_checksum(src, dst, segment)
    assert computed == accel.l4_checksum(src, dst, 17, segment) != 0
    # Over a segment that carries its own correct checksum the computed sum is 0, sent as 0xFFFF.
    carrying = segment[:6] + struct.pack("!H", computed) + segment[8:]
    assert accel.l4_checksum(src, dst, 17, carrying) == 0
    assert accel.udp_checksum(src, dst, carrying) == 0xFFFF


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.pseudo_header_sum(b"\x01\x02\x03", bytes(4), 6, 0),
        lambda a: a.pseudo_header_sum(bytes(4), bytes(5), 6, 0),
        lambda a: a.pseudo_header_sum(bytes(4), bytes(4), 256, 0),
        lambda a: a.pseudo_header_sum(bytes(4), bytes(4), 6, -1),
        lambda a: a.l4_checksum(bytes(4), bytes(4), -1, b""),
        lambda a: a.l4_checksum(bytes(3), bytes(4), None, b""),
    ],
)
def test_checksum_argument_errors(accel, call):
    with pytest.raises(ValueError):
        call(accel)
