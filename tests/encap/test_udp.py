"""UDP headers for captures and raw paths: length and checksum with the pseudo-header."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.errors import DecodeError, DropReason
from encap.udp import Udp

from tests.encap.strategies import addresses_v4, addresses_v6, payloads

SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])


def test_golden_header_with_checksum():
    # RFC 768 over a pseudo-header, by hand: c000 + 0201 + c000 + 0202 + 0011 + 000a
    # (pseudo-header) = 1841e; + 3039 + 12b5 + 000a (ports, length) + 6869 ("hi") = 22f7f;
    # folded 2f81; complemented d07e.
    wire = Udp(SRC, DST, 12345, 4789).encap(b"hi")
    assert wire == bytes.fromhex("303912b5000ad07e") + b"hi"


@given(st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6)),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), payloads)
def test_round_trip(addresses, src_port, dst_port, payload):
    udp = Udp(*addresses, src_port, dst_port)
    assert udp.decap_bytes(udp.encap(payload)) == payload


def test_zero_checksum_is_accepted_over_ipv4():
    wire = Udp(SRC, DST, 1, 2, checksum=False).encap(b"x")
    assert wire[6:8] == b"\0\0" and Udp(SRC, DST, 1, 2).decap_bytes(wire) == b"x"


def test_ipv6_always_carries_a_checksum():
    assert Udp(bytes(16), bytes(15) + b"\x01", 1, 2, checksum=False).encap(b"x")[6:8] != b"\0\0"


@pytest.mark.parametrize("mangle, reason", [
    (lambda w: w[:7], DropReason.TRUNCATED),
    (lambda w: w[:4] + b"\x00\x07" + w[6:], DropReason.UDP_BAD_LENGTH),
    (lambda w: w[:4] + b"\x00\xff" + w[6:], DropReason.UDP_BAD_LENGTH),
    (lambda w: w[:-1] + b"?", DropReason.UDP_BAD_CHECKSUM),
])
def test_refused(mangle, reason):
    with pytest.raises(DecodeError) as caught:
        Udp(SRC, DST, 1, 2).decap(memoryview(mangle(Udp(SRC, DST, 1, 2).encap(b"hello"))))
    assert caught.value.reason == reason
