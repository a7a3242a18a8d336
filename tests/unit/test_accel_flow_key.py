"""The flow-key extractor against both implementations and against the construct declarations
in vswitch.wire.headers, which define what a well-formed Ethernet + IPv4 frame is."""
from __future__ import annotations

import struct

import pytest
from construct import ConstructError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch import accel as accel_api
from vswitch.accel import native, pure
from vswitch.wire.headers import ETHERNET, IPV4, EtherType

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

DST = bytes.fromhex("0a580af40102")
SRC = bytes.fromhex("0a580af40103")
IP_SRC = bytes([10, 244, 1, 3])
IP_DST = bytes([10, 244, 1, 2])
KEY = DST + SRC + b"\x08\x00" + IP_SRC + IP_DST


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_api.load(request.param)


def frame(
    *,
    ethertype: int = 0x0800,
    version_ihl: int = 0x45,
    total_length: int | None = None,
    flags_fragment: int = 0x4000,
    payload: bytes = b"x" * 12,
    options: bytes = b"",
    padding: bytes = b"",
    dst: bytes = DST,
    src: bytes = SRC,
    ip_src: bytes = IP_SRC,
    ip_dst: bytes = IP_DST,
) -> bytes:
    header_len = 20 + len(options)
    if total_length is None:
        total_length = header_len + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", version_ihl, 0, total_length, 1, flags_fragment, 64, 17, 0, ip_src, ip_dst
    )
    return dst + src + struct.pack("!H", ethertype) + ip + options + payload + padding


def construct_flow_key(data: bytes, offset: int) -> bytes | None:
    """The flow key as the construct declarations define it."""
    try:
        eth = ETHERNET.parse(data[offset : offset + 14])
        ip = IPV4.parse(data[offset + 14 :])
    except ConstructError:
        return None
    available = len(data) - offset - 14
    if eth.ethertype != EtherType.IPV4 or ip.version != 4:
        return None
    header_len = ip.ihl * 4
    if ip.ihl < 5 or header_len > available:
        return None
    if not header_len <= ip.total_length <= available:
        return None
    if ip.mf or ip.fragment_offset:
        return None
    return eth.dst + eth.src + struct.pack("!H", eth.ethertype) + ip.src + ip.dst


def test_well_formed_frame(accel):
    assert accel.extract_flow_keys([frame()], 0) == [KEY]


def test_virtio_net_header_offset(accel):
    vnet = bytes([1, 1, 0, 0, 0x5A, 0x05, 34, 0, 16, 0])
    assert accel.extract_flow_keys([vnet + frame()], 10) == [KEY]
    assert accel.extract_flow_keys([frame()], 10) == [None]


def test_ethernet_padding_and_options_are_allowed(accel):
    assert accel.extract_flow_keys([frame(payload=b"", padding=bytes(26))], 0) == [KEY]
    assert accel.extract_flow_keys([frame(version_ihl=0x46, options=b"\x01" * 4)], 0) == [KEY]
    assert accel.extract_flow_keys([frame(flags_fragment=0)], 0) == [KEY]


@pytest.mark.parametrize(
    "bad",
    [
        frame(ethertype=0x8100),  # a VLAN tag: not handled by the fast path
        frame(ethertype=0x86DD),
        frame(ethertype=0x0806),
        frame(version_ihl=0x65),
        frame(version_ihl=0x44),
        frame(version_ihl=0x4F),  # a 60-byte header in a 46-byte packet
        frame(total_length=19),
        frame(total_length=33),  # one byte more than the frame holds
        frame(flags_fragment=0x2000),  # more fragments
        frame(flags_fragment=0x0001),  # a later fragment
        frame(flags_fragment=0x6000),
        frame()[:33],  # shorter than Ethernet + a minimal IPv4 header
        b"",
    ],
)
def test_malformed_or_foreign_frames_have_no_key(accel, bad):
    assert accel.extract_flow_keys([bad], 0) == [None]
    assert construct_flow_key(bad, 0) is None


def test_exactly_minimal_frame(accel):
    assert accel.extract_flow_keys([frame(payload=b"")], 0) == [KEY]
    assert len(frame(payload=b"")) == 34


def test_batches_mix_results_and_accept_bytes_like(accel):
    good, bad = frame(), frame(ethertype=0x8100)
    frames = [good, bytearray(bad), memoryview(good), bytearray(good), bad]
    assert accel.extract_flow_keys(frames, 0) == [KEY, None, KEY, KEY, None]
    assert accel.extract_flow_keys([], 0) == []


def test_extractor_reuses_its_buffers_without_leftovers(accel):
    extractor = accel.FlowKeyExtractor()
    other = frame(ip_src=bytes([1, 2, 3, 4]))
    assert extractor.extract([other] * 300, 0) == [other[:14] + bytes([1, 2, 3, 4]) + IP_DST] * 300
    assert extractor.extract([frame(version_ihl=0x55), frame()], 0) == [None, KEY]
    assert extractor.extract([frame()[:20]], 0) == [None]


def test_negative_offset_is_rejected(accel):
    with pytest.raises(ValueError):
        accel.extract_flow_keys([frame()], -1)


def test_offset_beyond_the_frame(accel):
    assert accel.extract_flow_keys([frame()], 1000) == [None]


@st.composite
def frames(draw):
    """Mostly well-formed frames with one field at a time pushed to an edge, then perhaps cut."""
    options_len = draw(st.sampled_from([0, 0, 0, 4, 40]))
    payload = draw(st.binary(max_size=60))
    ihl_default = 5 + options_len // 4
    f = frame(
        dst=draw(st.binary(min_size=6, max_size=6)),
        src=draw(st.binary(min_size=6, max_size=6)),
        ethertype=draw(st.sampled_from([0x0800] * 6 + [0x8100, 0x86DD, 0x0806, 0x0008])),
        version_ihl=draw(
            st.one_of(st.just(0x40 | ihl_default), st.just(0x40 | ihl_default),
                      st.integers(0, 255), st.integers(0x40, 0x4F))
        ),
        total_length=draw(
            st.one_of(st.none(), st.none(), st.integers(0, 0xFFFF), st.integers(0, 130))
        ),
        flags_fragment=draw(st.sampled_from([0, 0x4000, 0x4000, 0x2000, 0x0001, 0x1FFF, 0x8000])),
        payload=payload,
        options=draw(st.binary(min_size=options_len, max_size=options_len)),
        padding=draw(st.sampled_from([b"", b"", bytes(10)])),
        ip_src=draw(st.binary(min_size=4, max_size=4)),
        ip_dst=draw(st.binary(min_size=4, max_size=4)),
    )
    if draw(st.booleans()):
        # Cuts just short of the end or of the minimal headers are where bounds checks go wrong.
        f = f[: draw(st.one_of(st.integers(0, len(f)), st.sampled_from([len(f) - 1, 34, 33])))]
    return f


vnet_prefix = st.sampled_from([0, 10]).flatmap(
    lambda n: st.tuples(st.just(n), st.binary(min_size=n, max_size=n))
)


@PROPERTY
@given(batch=st.lists(frames(), max_size=12), vnet=vnet_prefix)
def test_extractor_matches_construct(accel, batch, vnet):
    offset, prefix = vnet
    data = [prefix + f for f in batch]
    assert accel.extract_flow_keys(data, offset) == [construct_flow_key(f, offset) for f in data]


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(st.one_of(frames(), st.binary(max_size=80)), max_size=12),
       offset=st.sampled_from([0, 10, 3]))
def test_extractor_twins_agree(batch, offset):
    assert native.extract_flow_keys(batch, offset) == pure.extract_flow_keys(batch, offset)


def test_some_generated_frames_are_valid():
    # Guards the strategy itself: the properties above mean little if every frame were rejected.
    found = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(f=frames())
    def collect(f):
        found.append(pure.extract_flow_keys([f], 0)[0] is not None)

    collect()
    assert any(found) and not all(found)


def test_c_extractor_refuses_a_window_too_small_to_check():
    # Bounds rule of the C side: it reads only the `readable` bytes it was given, and says so
    # when they cannot cover the checks, rather than reading on into the rest of the frame.
    lib, ffi = native.lib, native.ffi
    f = frame()
    key = ffi.new("uint8_t[]", 22)
    assert lib.vs_flow_key(f, len(f), len(f), 0, key) == lib.VS_FK_OK
    assert ffi.buffer(key)[:] == KEY
    assert lib.vs_flow_key(f, 33, len(f), 0, key) == lib.VS_FK_WINDOW
    assert lib.vs_flow_key(f, len(f) + 1, len(f), 0, key) == lib.VS_FK_WINDOW
    assert lib.vs_flow_key(f, 20, 20, 0, key) == lib.VS_FK_SHORT
    assert lib.vs_flow_key(f, 34, 34, 1, key) == lib.VS_FK_SHORT
