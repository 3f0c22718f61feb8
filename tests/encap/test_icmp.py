"""ICMP errors the router sends, when it must keep quiet, and which WAN errors it relays."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6, in6_chksum
from scapy.utils import checksum

from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.icmp import (
    Icmp4TimeExceeded, Icmp4Type, Icmp4Unreachable, Icmp6ParameterProblem, Icmp6TimeExceeded,
    Icmp6Type, Icmp6Unreachable, icmp4_error, icmp6_error, parse_quoted_ipv4, relayed_error,
)

from tests.encap.strategies import ip_packets

ROUTER4 = bytes([10, 0, 0, 1])
ROUTER6 = bytes.fromhex("fd00" + "00" * 13 + "01")

# A 1500-byte UDP packet with DF from 10.1.1.1 to 10.2.1.1, of which only the
# IPv4 header and the UDP header are at hand (as in a WAN router's quote).
OFFENDING4 = bytes.fromhex(
    "45" "00" "05dc"          # version 4, IHL 5 | TOS 0 | total length 1500
    "1c46" "4000"             # identification | DF, offset 0
    "40" "11" "02c7"          # TTL 64 | UDP | header checksum
    "0a010101" "0a020101"     # 10.1.1.1 -> 10.2.1.1
    "d431" "0035" "05c8" "0000")   # UDP 54321 -> 53, length 1480, no checksum

# An IPv6 UDP packet fd01::1 -> fd02::1 with an empty UDP payload.
OFFENDING6 = bytes.fromhex(
    "60000000"                # version 6, traffic class 0, flow label 0
    "0008" "11" "40"          # payload length 8 | UDP | hop limit 64
    "fd01" + "00" * 13 + "01" +
    "fd02" + "00" * 13 + "01" +
    "d431" "0035" "0008" "0000")


def test_golden_fragmentation_needed():
    wire = icmp4_error(OFFENDING4, Icmp4Type.DEST_UNREACHABLE,
                       Icmp4Unreachable.FRAGMENTATION_NEEDED, ROUTER4, mtu=1400, identification=7)
    assert wire == bytes.fromhex(
        "45" "c0" "0038"      # IPv4, IHL 5 | TOS 0xc0, as Linux | 56 = 20 + 8 + 28 quoted
        "0007" "0000"         # identification 7 | no flags, offset 0
        "40" "01" "64fc"      # TTL 64 | ICMP | checksum: the words 45c0 0038 0007 0000 4001
                              # 0a00 0001 0a01 0101 sum to 9b03, whose complement is 64fc
        "0a000001"            # source: the router, 10.0.0.1
        "0a010101"            # destination: the offending packet's source
        "03" "04" "1d55"      # destination unreachable | fragmentation needed | checksum
        "0000" "0578"         # unused | next-hop MTU 1400 (RFC 1191 §4)
    ) + OFFENDING4            # the quote: all 28 bytes there are

    parsed = IP(wire)
    assert (parsed.version, parsed.ihl, parsed.tos, parsed.len, parsed.id, parsed.flags.value,
            parsed.frag, parsed.ttl, parsed.proto, parsed.src, parsed.dst) == \
        (4, 5, 0xC0, 56, 7, 0, 0, 64, 1, "10.0.0.1", "10.1.1.1")
    assert (parsed[ICMP].type, parsed[ICMP].code, parsed[ICMP].nexthopmtu) == (3, 4, 1400)
    assert (parsed[IPerror].src, parsed[IPerror].dst, parsed[IPerror].len) == \
        ("10.1.1.1", "10.2.1.1", 1500)
    assert scapy_recomputes_the_same_checksums(wire)


def test_golden_packet_too_big():
    wire = icmp6_error(OFFENDING6, Icmp6Type.PACKET_TOO_BIG, 0, ROUTER6, parameter=1280)
    assert wire == bytes.fromhex(
        "60000000"            # version 6, traffic class 0, flow label 0
        "0038" "3a" "40"      # payload length 56 = 8 + 48 quoted | ICMPv6 | hop limit 64
        "fd00" + "00" * 13 + "01" +     # source: the router, fd00::1
        "fd01" + "00" * 13 + "01" +     # destination: the offending packet's source
        "02" "00" "beca"      # packet too big | code 0 | checksum (with the pseudo-header)
        "00000500"            # MTU 1280
    ) + OFFENDING6

    parsed = IPv6(wire)
    assert (parsed.version, parsed.tc, parsed.fl, parsed.plen, parsed.nh, parsed.hlim,
            parsed.src, parsed.dst) == (6, 0, 0, 56, 58, 64, "fd00::1", "fd01::1")
    assert (parsed[ICMPv6PacketTooBig].type, parsed[ICMPv6PacketTooBig].code,
            parsed[ICMPv6PacketTooBig].mtu) == (2, 0, 1280)
    assert scapy_recomputes_the_same_checksums(wire)


def scapy_recomputes_the_same_checksums(wire: bytes) -> bool:
    """scapy, told to compute every checksum itself, builds exactly ``wire``."""
    if wire[0] >> 4 == 4:
        parsed = IP(wire)
        parsed.chksum = None
        parsed[ICMP].chksum = None
    else:
        parsed = IPv6(wire)
        parsed.payload.cksum = None
    return bytes(parsed) == wire


def checksums_valid(wire: bytes) -> bool:
    """Every checksum sums to zero by scapy's own checksum routines."""
    if wire[0] >> 4 == 4:
        return checksum(wire[:20]) == 0 and checksum(wire[20:]) == 0
    return in6_chksum(58, IPv6(wire), wire[40:]) == 0


def udp4(size: int, src: str = "10.1.1.1", dst: str = "10.2.1.1", **fields) -> bytes:
    return bytes(IP(src=src, dst=dst, **fields) / UDP() / bytes(size - 28))


def udp6(size: int, src: str = "fd01::1", dst: str = "fd02::1") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP() / bytes(size - 48))


def test_time_exceeded_quotes_the_whole_of_a_small_packet():
    offending = udp4(100, ttl=1)
    wire = icmp4_error(offending + bytes(4), Icmp4Type.TIME_EXCEEDED,
                       Icmp4TimeExceeded.TTL_EXCEEDED, ROUTER4)
    assert wire[20:24] == bytes([11, 0]) + wire[22:24] and wire[24:28] == bytes(4)
    assert wire[28:] == offending          # trailing bytes past the total length left out
    assert checksums_valid(wire)


def test_an_ipv4_error_stops_at_576_bytes():
    wire = icmp4_error(udp4(1500), Icmp4Type.DEST_UNREACHABLE,
                       Icmp4Unreachable.HOST_UNREACHABLE, ROUTER4)
    assert len(wire) == 576 and wire[28:] == udp4(1500)[:548]
    assert IP(wire).len == 576 and checksums_valid(wire)


def test_an_ipv6_error_stops_at_1280_bytes():
    wire = icmp6_error(udp6(1500), Icmp6Type.DEST_UNREACHABLE,
                       Icmp6Unreachable.ADDRESS_UNREACHABLE, ROUTER6)
    assert len(wire) == 1280 and wire[48:] == udp6(1500)[:1232]
    assert IPv6(wire).plen == 1240 and IPv6(wire)[ICMPv6DestUnreach].code == 3
    assert checksums_valid(wire)


def icmp4(icmp_type: int, src: str = "10.1.1.1", dst: str = "10.2.1.1") -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(type=icmp_type) / bytes(8))


# RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7: no ICMPv4 error about these.
@pytest.mark.parametrize("offending", [
    udp4(100)[:19],
    udp6(100),
    b"\x44" + udp4(100)[1:],
    icmp4(3), icmp4(4), icmp4(5), icmp4(11), icmp4(12),
    udp4(100, frag=1),
    udp4(100, flags="MF", frag=185),
    udp4(100, src="0.0.0.0"), udp4(100, src="0.1.2.3"), udp4(100, src="127.0.0.1"),
    udp4(100, src="224.0.0.5"), udp4(100, src="239.1.1.1"), udp4(100, src="240.0.0.1"),
    udp4(100, src="255.255.255.255"),
    udp4(100, dst="224.0.0.1"), udp4(100, dst="239.255.255.250"),
    udp4(100, dst="255.255.255.255"),
], ids=["shorter than a header", "version 6", "IHL 4",
        "about dest unreachable", "about source quench", "about redirect",
        "about time exceeded", "about parameter problem",
        "later fragment", "later fragment with more to come",
        "source 0.0.0.0", "source 0/8", "source loopback", "source multicast",
        "source multicast, high", "source 240/4", "source limited broadcast",
        "destination multicast", "destination multicast, high", "destination limited broadcast"])
def test_no_ipv4_error_about(offending):
    assert icmp4_error(offending, Icmp4Type.DEST_UNREACHABLE,
                       Icmp4Unreachable.HOST_UNREACHABLE, ROUTER4) is None


@pytest.mark.parametrize("offending", [
    icmp4(8), icmp4(0), udp4(100, flags="MF"), icmp4(3)[:20], udp4(100, src="223.255.255.255"),
], ids=["about echo request", "about echo reply", "first fragment",
        "ICMP cut before its type", "highest unicast source"])
def test_an_ipv4_error_about(offending):
    wire = icmp4_error(offending, Icmp4Type.DEST_UNREACHABLE,
                       Icmp4Unreachable.HOST_UNREACHABLE, ROUTER4)
    assert wire is not None and checksums_valid(wire)


def icmp6(icmp_type: int, dst: str = "fd02::1", chain: bytes = b"") -> bytes:
    """An ICMPv6 message behind the extension headers ``chain`` (hop-by-hop, 8 bytes each)."""
    next_header = 0 if chain else 58
    payload = chain + bytes([icmp_type, 0, 0, 0]) + bytes(4)
    header = bytes(IPv6(src="fd01::1", dst=dst, nh=next_header, plen=len(payload)))
    return header + payload


HOP_BY_HOP_TO_ICMP6 = bytes([58, 0, 1, 4, 0, 0, 0, 0])     # next ICMPv6, PadN


def with_hop_by_hop_option(option_type: int) -> bytes:
    """A UDP packet to ff02::1 behind a hop-by-hop header holding one option of ``option_type``."""
    payload = bytes([17, 0, option_type, 4, 0, 0, 0, 0]) + bytes(8)
    return bytes(IPv6(src="fd01::1", dst="ff02::1", nh=0, plen=len(payload))) + payload


# RFC 4443 §2.4 (e): no ICMPv6 error about these.
@pytest.mark.parametrize("offending, icmp_type, code, parameter", [
    (udp6(100)[:39], Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (udp4(100), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (icmp6(1), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (icmp6(3), Icmp6Type.PACKET_TOO_BIG, 0, 1280),
    (icmp6(127), Icmp6Type.TIME_EXCEEDED, 0, 0),
    (icmp6(137), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (icmp6(2, chain=HOP_BY_HOP_TO_ICMP6), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (icmp6(128, chain=HOP_BY_HOP_TO_ICMP6)[:44], Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (udp6(100, dst="ff02::1"), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (udp6(100, dst="ff0e::1"), Icmp6Type.TIME_EXCEEDED, 0, 0),
    (udp6(100, dst="ff02::1"), Icmp6Type.PARAMETER_PROBLEM, 0, 6),
    (udp6(100, dst="ff02::1"), Icmp6Type.PARAMETER_PROBLEM,
     Icmp6ParameterProblem.UNRECOGNIZED_OPTION, 40),      # points at UDP, not an 10xxxxxx option
    (with_hop_by_hop_option(0xC0), Icmp6Type.PARAMETER_PROBLEM,
     Icmp6ParameterProblem.UNRECOGNIZED_OPTION, 42),      # 11xxxxxx: not to multicast
    (udp6(100, src="::"), Icmp6Type.DEST_UNREACHABLE, 3, 0),
    (udp6(100, src="ff02::1"), Icmp6Type.DEST_UNREACHABLE, 3, 0),
], ids=["shorter than a header", "version 4", "about dest unreachable", "about time exceeded",
        "about the highest error type", "about a redirect", "about an error behind hop-by-hop",
        "extension header cut short", "multicast destination", "multicast destination, global",
        "multicast destination, erroneous field", "multicast destination, other option",
        "multicast destination, 11xxxxxx option",
        "unspecified source", "multicast source"])
def test_no_ipv6_error_about(offending, icmp_type, code, parameter):
    assert icmp6_error(offending, icmp_type, code, ROUTER6, parameter=parameter) is None


@pytest.mark.parametrize("offending, icmp_type, code, parameter", [
    (icmp6(128), Icmp6Type.DEST_UNREACHABLE, Icmp6Unreachable.ADDRESS_UNREACHABLE, 0),
    (icmp6(1)[:40], Icmp6Type.DEST_UNREACHABLE, Icmp6Unreachable.ADDRESS_UNREACHABLE, 0),
    (udp6(100, dst="ff02::1"), Icmp6Type.PACKET_TOO_BIG, 0, 1280),
    (with_hop_by_hop_option(0x80), Icmp6Type.PARAMETER_PROBLEM,
     Icmp6ParameterProblem.UNRECOGNIZED_OPTION, 42),
    (udp6(100), Icmp6Type.TIME_EXCEEDED, Icmp6TimeExceeded.HOP_LIMIT_EXCEEDED, 0),
], ids=["about echo request", "ICMPv6 cut before its type", "packet too big to multicast",
        "unrecognized 10xxxxxx option to multicast", "time exceeded"])
def test_an_ipv6_error_about(offending, icmp_type, code, parameter):
    wire = icmp6_error(offending, icmp_type, code, ROUTER6, parameter=parameter)
    assert wire is not None and checksums_valid(wire)
    assert (wire[40], wire[41], int.from_bytes(wire[44:48], "big")) == (icmp_type, code, parameter)


@pytest.mark.parametrize("build, kwargs", [
    (icmp4_error, dict(source=ROUTER6)), (icmp4_error, dict(source=ROUTER4, mtu=0x10000)),
    (icmp4_error, dict(source=ROUTER4, icmp_type=256)),
    (icmp6_error, dict(source=ROUTER4)), (icmp6_error, dict(source=ROUTER6, parameter=-1)),
    (icmp6_error, dict(source=ROUTER6, code=300)),
], ids=["v4 source of 16 bytes", "MTU past 16 bits", "type past a byte", "v6 source of 4 bytes",
        "negative parameter", "code past a byte"])
def test_impossible_arguments_are_the_callers_mistake(build, kwargs):
    arguments = dict(offending=OFFENDING4, icmp_type=3, code=1) | kwargs
    with pytest.raises(EncapConfigError):
        build(**arguments)


@given(st.one_of(st.binary(max_size=1600), ip_packets,
                 st.tuples(ip_packets, st.integers(0, 60), st.integers(0, 255)).map(
                     lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])))
def test_any_offending_bytes_give_none_or_a_valid_error(offending):
    for wire, parse in ((icmp4_error(offending, 3, 1, ROUTER4), IP),
                        (icmp6_error(offending, 1, 3, ROUTER6), IPv6)):
        if wire is not None:
            assert checksums_valid(wire) and len(wire) <= (576 if parse is IP else 1280)
            parse(wire)


# RFC 2003 §4 (inner IPv4) and RFC 4213 §3.4 (inner IPv6): (received type, code) ->
# what the inner packet's source is sent, for each inner family.
RELAY_TABLE = [
    ((3, 0), (3, 1), (1, 3)),     # net unreachable: host / address unreachable
    ((3, 1), (3, 1), (1, 3)),     # host unreachable
    ((3, 2), (3, 1), (1, 3)),     # protocol unreachable: our protocol, meaningless inside
    ((3, 3), None, None),         # port unreachable: MUST NOT be relayed
    ((3, 4), (3, 4), (2, 0)),     # fragmentation needed: MUST be relayed
    ((3, 5), None, None),         # source route failed: MUST NOT be relayed
    ((3, 13), None, None),        # administratively prohibited
    ((4, 0), None, None),         # source quench: SHOULD NOT
    ((5, 1), None, None),         # redirect: MUST NOT
    ((11, 0), (3, 1), (1, 3)),    # TTL exceeded in the tunnel: MUST be host unreachable
    ((11, 1), None, None),        # reassembly time exceeded: our outer packets carry DF
    ((12, 0), None, None),        # parameter problem
    ((8, 0), None, None),         # echo request: no error at all
]


@pytest.mark.parametrize("received, to_ipv4, to_ipv6", RELAY_TABLE,
                         ids=[f"type {t} code {c}" for (t, c), _, _ in RELAY_TABLE])
def test_relayed_error(received, to_ipv4, to_ipv6):
    assert relayed_error(*received, 4) == to_ipv4
    assert relayed_error(*received, 6) == to_ipv6


def test_relayed_error_knows_two_families():
    with pytest.raises(EncapConfigError):
        relayed_error(3, 4, 41)


def test_parse_quoted_ipv4_reads_a_truncated_quote():
    quoted = bytes(IP(src="10.99.0.1", dst="10.99.0.2", proto=47, options=b"\x01\x01\x01\x00")
                   / bytes(1400))[:32]
    protocol, source, destination, rest = parse_quoted_ipv4(memoryview(quoted))
    assert (protocol, source, destination) == (47, bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2]))
    assert bytes(rest) == bytes(8)


@pytest.mark.parametrize("quoted, reason", [
    (OFFENDING4[:19], DropReason.TRUNCATED),
    (b"\x65" + OFFENDING4[1:], DropReason.IP_BAD_VERSION),
    (b"\x44" + OFFENDING4[1:], DropReason.IP_BAD_HEADER_LENGTH),
    (b"\x48" + OFFENDING4[1:], DropReason.IP_BAD_HEADER_LENGTH),
], ids=["truncated", "version 6", "IHL 4", "header past the quote"])
def test_parse_quoted_ipv4_refuses(quoted, reason):
    with pytest.raises(DecodeError) as caught:
        parse_quoted_ipv4(memoryview(quoted))
    assert caught.value.reason == reason


@given(st.binary(max_size=80))
def test_parse_quoted_ipv4_gives_a_header_or_a_decode_error(quoted):
    try:
        protocol, source, destination, rest = parse_quoted_ipv4(memoryview(quoted))
    except DecodeError:
        return
    assert quoted[9] == protocol and len(source) == len(destination) == 4
    assert len(rest) == len(quoted) - (quoted[0] & 15) * 4
