"""Outer IPv4: what the header says, and what validation refuses."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.checksum import internet_checksum
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ipv4 import Ipv4Outer, parse_ipv4
from encap.wire import IpProto

from tests.encap.strategies import addresses_v4, payloads

SRC, DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])


def test_golden_outer_header():
    outer = Ipv4Outer(SRC, DST, IpProto.GRE, ttl=64, tos=0xB8)
    wire = outer.encap(b"\xaa" * 8)
    # 45 | tos b8 | total 28 | id 1 | DF | ttl 40 | proto 2f | checksum | src | dst
    expected = bytearray.fromhex("45b8001c00014000402f0000c0000201c6336407")
    expected[10:12] = internet_checksum(expected).to_bytes(2, "big")
    assert wire[:20] == bytes(expected)
    assert wire[20:] == b"\xaa" * 8


def test_identification_counts_up_and_wraps():
    outer = Ipv4Outer(SRC, DST, IpProto.IPIP)
    outer.identification = 0xFFFE
    ids = [parse_ipv4(memoryview(outer.encap(b"")))[0].identification for _ in range(3)]
    assert ids == [0xFFFF, 0, 1]


def test_dont_fragment_is_optional():
    header, _ = parse_ipv4(memoryview(Ipv4Outer(SRC, DST, 4, dont_fragment=False).encap(b"x")))
    assert not header.dont_fragment


def test_dont_fragment_can_change_per_packet():
    outer = Ipv4Outer(SRC, DST, 4)
    outer.dont_fragment = False
    cleared, _ = parse_ipv4(memoryview(outer.encap(b"x")))   # the checksum is verified too
    outer.dont_fragment = True
    restored, _ = parse_ipv4(memoryview(outer.encap(b"x")))
    assert (cleared.dont_fragment, restored.dont_fragment) == (False, True)


@given(addresses_v4, addresses_v4, st.integers(0, 255), st.integers(1, 255), st.integers(0, 255),
       st.booleans(), payloads)
def test_round_trip(src, dst, protocol, ttl, tos, df, payload):
    outer = Ipv4Outer(src, dst, protocol, ttl=ttl, tos=tos, dont_fragment=df)
    wire = outer.encap(payload)
    header, inner = parse_ipv4(memoryview(wire))
    assert (header.src, header.dst, header.protocol, header.ttl, header.tos, header.dont_fragment) \
        == (src, dst, protocol, ttl, tos, df)
    assert header.total_length == len(wire) == 20 + len(payload)
    assert bytes(inner) == payload
    assert outer.decap_bytes(wire) == payload


GOOD = Ipv4Outer(SRC, DST, IpProto.GRE).encap(b"payload!")


def corrupt(offset: int, value: int, fix_checksum: bool = True) -> bytes:
    wire = bytearray(GOOD)
    wire[offset] = value
    if fix_checksum:
        wire[10:12] = b"\0\0"
        wire[10:12] = internet_checksum(wire[:(wire[0] & 15) * 4]).to_bytes(2, "big")
    return bytes(wire)


@pytest.mark.parametrize("wire, reason", [
    (GOOD[:19], DropReason.TRUNCATED),
    (corrupt(0, 0x65), DropReason.IP_BAD_VERSION),
    (corrupt(0, 0x44), DropReason.IP_BAD_HEADER_LENGTH),
    (corrupt(0, 0x4F), DropReason.IP_BAD_HEADER_LENGTH),
    (corrupt(3, 0xFF), DropReason.IP_BAD_TOTAL_LENGTH),
    (corrupt(3, 19), DropReason.IP_BAD_TOTAL_LENGTH),
    (corrupt(8, 1, fix_checksum=False), DropReason.IP_BAD_CHECKSUM),
    (corrupt(6, 0x60), DropReason.IP_FRAGMENT),              # DF + MF
    (corrupt(7, 0x01), DropReason.IP_FRAGMENT),              # offset 8
    (corrupt(9, IpProto.UDP), DropReason.WRONG_PROTOCOL),
], ids=["truncated", "version 6", "ihl 4", "ihl past buffer", "total past buffer",
        "total below header", "bad checksum", "more fragments", "fragment offset",
        "other protocol"])
def test_decap_refuses(wire, reason):
    with pytest.raises(DecodeError) as caught:
        Ipv4Outer(SRC, DST, IpProto.GRE).decap(memoryview(wire))
    assert caught.value.reason == reason


def test_trailing_padding_is_trimmed():
    assert Ipv4Outer(SRC, DST, IpProto.GRE).decap_bytes(GOOD + bytes(6)) == b"payload!"


def test_fragments_parse_when_asked():
    header, _ = parse_ipv4(memoryview(corrupt(6, 0x20)), allow_fragments=True)
    assert header.more_fragments and header.fragment_offset == 0


def test_options_are_skipped():
    wire = bytearray(b"\x46" + GOOD[1:20] + b"\x01\x01\x01\x00" + GOOD[20:])
    wire[2:4] = len(wire).to_bytes(2, "big")
    wire[10:12] = b"\0\0"
    wire[10:12] = internet_checksum(wire[:24]).to_bytes(2, "big")
    header, payload = parse_ipv4(memoryview(wire))
    assert header.header_length == 24 and bytes(payload) == b"payload!"


@pytest.mark.parametrize("kwargs", [dict(ttl=0), dict(ttl=256), dict(tos=256), dict(src=b"\0" * 16)])
def test_bad_configuration_is_a_config_error(kwargs):
    args = dict(src=SRC, dst=DST, protocol=47) | kwargs
    with pytest.raises(EncapConfigError):
        Ipv4Outer(**args)
