"""IP-in-IP (RFC 2003) and IPv6-over-IPv4 (RFC 4213): no header, only the right payload."""

import pytest
from hypothesis import given

from encap.codec import Stack
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer, parse_ipv4
from encap.wire import IpProto

from tests.encap.strategies import ipv4_packets, ipv6_packets

SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])


def test_protocol_numbers():
    assert (IpInIp(4).protocol, IpInIp(6).protocol) == (IpProto.IPIP, IpProto.IPV6) == (4, 41)


@given(ipv4_packets())
def test_ipip_round_trip_through_an_outer_header(packet):
    tunnel = Stack(Ipv4Outer(SRC, DST, IpProto.IPIP), IpInIp(4))
    wire = tunnel.encap(packet)
    assert parse_ipv4(memoryview(wire))[0].protocol == 4 and wire[20:] == packet
    assert tunnel.decap_bytes(wire) == packet


@given(ipv6_packets())
def test_6in4_round_trip_through_an_outer_header(packet):
    tunnel = Stack(Ipv4Outer(SRC, DST, IpProto.IPV6), IpInIp(6))
    assert tunnel.decap_bytes(tunnel.encap(packet)) == packet


@given(ipv6_packets())
def test_ipip_refuses_ipv6_and_sit_refuses_ipv4(packet):
    with pytest.raises(DecodeError) as caught:
        IpInIp(4).decap(memoryview(packet))
    assert caught.value.reason == DropReason.INNER_MALFORMED
    with pytest.raises(DecodeError):
        IpInIp(4).encap(packet)


def test_inner_length_is_checked_and_trimmed():
    packet = Ipv4Outer(SRC, DST, 17).encap(b"data")
    assert IpInIp(4).decap_bytes(packet + b"trailer") == packet
    with pytest.raises(DecodeError):
        IpInIp(4).decap(memoryview(packet[:-1]))


def test_version_other_than_4_or_6_is_a_config_error():
    with pytest.raises(EncapConfigError):
        IpInIp(5)
