"""Outer IPv6: the fixed header, and the walk over extension headers."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ipv6 import Ipv6Outer, parse_ipv6
from encap.wire import IpProto

from tests.encap.strategies import addresses_v6, payloads

SRC = bytes.fromhex("20010db8000000000000000000000001")
DST = bytes.fromhex("20010db8000000000000000000000002")


def test_golden_outer_header():
    wire = Ipv6Outer(SRC, DST, IpProto.GRE, hop_limit=64, traffic_class=0xB8,
                     flow_label=0x12345).encap(b"\xaa" * 4)
    # version 6 | traffic class b8 | flow 12345 | length 4 | next 2f | hop limit 40
    assert wire[:8] == bytes.fromhex("6b812345" "0004" "2f" "40")
    assert wire[8:40] == SRC + DST and wire[40:] == b"\xaa" * 4


@given(addresses_v6, addresses_v6, st.integers(0, 255), st.integers(1, 255), st.integers(0, 255),
       st.integers(0, 0xFFFFF), payloads)
def test_round_trip(src, dst, protocol, hop_limit, traffic_class, flow_label, payload):
    # Protocols that look like extension headers would be walked: keep to upper layers.
    protocol = protocol if protocol not in (0, 43, 44, 51, 60, 135, 139, 140) else 47
    outer = Ipv6Outer(src, dst, protocol, hop_limit=hop_limit, traffic_class=traffic_class,
                      flow_label=flow_label)
    wire = outer.encap(payload)
    header, upper = parse_ipv6(memoryview(wire))
    assert (header.src, header.dst, header.upper_protocol, header.hop_limit, header.traffic_class,
            header.flow_label) == (src, dst, protocol, hop_limit, traffic_class, flow_label)
    assert bytes(upper) == payload and outer.decap_bytes(wire) == payload


def with_extensions(chain: list[tuple[int, bytes]], upper: int, payload: bytes) -> bytes:
    """An IPv6 packet whose extension headers are ``(type, body)`` in order."""
    types = [t for t, _ in chain] + [upper]
    body = b"".join(bytes([types[i + 1]]) + ext for i, (_, ext) in enumerate(chain)) + payload
    return struct.pack("!IHBB", 0x60000000, len(body), types[0], 64) + SRC + DST + body


HOP_BY_HOP = (IpProto.HOPOPT, b"\x00" + b"\x01\x04\x00\x00\x00\x00")   # len 0: 8 bytes, PadN
DEST_OPTS = (IpProto.IPV6_OPTS, b"\x01" + bytes(14))                   # len 1: 16 bytes
ROUTING = (IpProto.IPV6_ROUTE, b"\x00\x00\x00" + bytes(4))             # type 0, segments left 0
AH = (IpProto.AH, b"\x04" + bytes(22))                                 # (4 + 2) * 4 = 24 bytes
FIRST_FRAGMENT = (IpProto.IPV6_FRAG, b"\x00\x00\x01" + b"\0\0\0\x07")  # offset 0, M set
ATOMIC_FRAGMENT = (IpProto.IPV6_FRAG, b"\x00\x00\x00" + b"\0\0\0\x07")  # offset 0, M clear


@pytest.mark.parametrize("chain, offset", [
    ([HOP_BY_HOP], 48),
    ([HOP_BY_HOP, DEST_OPTS, ROUTING], 40 + 8 + 16 + 8),
    ([AH], 64),
    ([ATOMIC_FRAGMENT], 48),
])
def test_extension_headers_are_walked_to_the_upper_protocol(chain, offset):
    wire = with_extensions(chain, IpProto.GRE, b"GRE!")
    header, upper = parse_ipv6(memoryview(wire))
    assert (header.upper_protocol, header.upper_offset, bytes(upper)) == (IpProto.GRE, offset, b"GRE!")
    assert Ipv6Outer(SRC, DST, IpProto.GRE).decap_bytes(wire) == b"GRE!"


def test_fragments_are_refused_unless_asked():
    wire = with_extensions([FIRST_FRAGMENT], IpProto.GRE, b"GRE!")
    with pytest.raises(DecodeError) as caught:
        Ipv6Outer(SRC, DST, IpProto.GRE).decap(memoryview(wire))
    assert caught.value.reason == DropReason.IP_FRAGMENT
    assert parse_ipv6(memoryview(wire), allow_fragments=True)[0].is_fragment


def test_no_next_header_ends_the_walk():
    header, upper = parse_ipv6(memoryview(with_extensions([DEST_OPTS], IpProto.IPV6_NONXT, b"")))
    assert header.upper_protocol == IpProto.IPV6_NONXT and bytes(upper) == b""


GOOD = Ipv6Outer(SRC, DST, IpProto.GRE).encap(b"payload!")


@pytest.mark.parametrize("wire, reason", [
    (GOOD[:39], DropReason.TRUNCATED),
    (b"\x40" + GOOD[1:], DropReason.IP_BAD_VERSION),
    (GOOD[:4] + b"\x00\x09" + GOOD[6:], DropReason.IP_BAD_TOTAL_LENGTH),
    (GOOD[:4] + b"\x00\x00\x00" + GOOD[7:], DropReason.IP_BAD_TOTAL_LENGTH),   # jumbogram
    (with_extensions([DEST_OPTS], IpProto.GRE, b"")[:50], DropReason.IP_BAD_TOTAL_LENGTH),
    (with_extensions([(IpProto.IPV6_OPTS, b"\x09" + bytes(6))], IpProto.GRE, b"x" * 8),
     DropReason.IP_BAD_EXTENSION_HEADER),
    (GOOD[:6] + bytes([IpProto.UDP]) + GOOD[7:], DropReason.WRONG_PROTOCOL),
], ids=["truncated", "version 4", "length past buffer", "jumbogram", "cut extension",
        "extension past end", "other protocol"])
def test_decap_refuses(wire, reason):
    with pytest.raises(DecodeError) as caught:
        Ipv6Outer(SRC, DST, IpProto.GRE).decap(memoryview(wire))
    assert caught.value.reason == reason


@pytest.mark.parametrize("kwargs", [dict(hop_limit=0), dict(traffic_class=256),
                                    dict(flow_label=1 << 20), dict(dst=b"\0" * 4)])
def test_bad_configuration_is_a_config_error(kwargs):
    with pytest.raises(EncapConfigError):
        Ipv6Outer(**(dict(src=SRC, dst=DST, protocol=47) | kwargs))


def test_the_walk_stops_at_a_later_fragment():
    # After a non-first fragment header come payload bytes, not headers: a byte that
    # looks like a Hop-by-Hop length must not be followed.
    later = (IpProto.IPV6_FRAG, b"\x00\x00\x08" + b"\0\0\0\x07")       # offset 1 (8 bytes)
    wire = with_extensions([later], IpProto.HOPOPT, b"\x00\xff" + bytes(6))
    header, _ = parse_ipv6(memoryview(wire), allow_fragments=True)
    assert header.is_fragment and header.upper_protocol == IpProto.HOPOPT
    assert header.upper_offset == 48
