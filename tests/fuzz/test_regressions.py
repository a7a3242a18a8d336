"""Inputs the fuzzers found, each kept as a test of the behaviour that was fixed."""
from __future__ import annotations

import pytest

from vswitch.accel import native, pure


@pytest.mark.parametrize("impl", [native, pure], ids=["native", "pure"])
def test_nat_rewrite_checks_its_arguments_before_the_packet(impl):
    """Both twins name the same bad argument: a 2-byte address with an empty packet was the
    address for the native twin and the packet for the pure one."""
    with pytest.raises(ValueError, match="dst must be 4 bytes"):
        impl.nat_rewrite(bytearray(), src=bytes(4), dst=b"\n\xf4")
    with pytest.raises(ValueError, match="sport must be in"):
        impl.nat_rewrite(bytearray(b"\x41" + bytes(19)), sport=0x10000)
