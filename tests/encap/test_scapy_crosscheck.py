"""scapy as an independent implementation of the encap codecs, in both directions.

* scapy builds, encap decodes: the fields encap reads and the inner bytes it
  hands on are exactly what scapy was given.
* encap builds, scapy dissects: every header field reads back as configured,
  and every checksum encap wrote is the one scapy computes from scratch.
* MSS clamping of scapy-built SYNs: scapy reads the lowered MSS, and the TCP
  checksum is still the one scapy computes; anything else stays byte-identical.
"""

import itertools
import socket

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from encap.codec import Stack
from encap.errors import DecodeError, DropReason
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer, parse_ipv4
from encap.ipv6 import Ipv6Outer, parse_ipv6
from encap.mss import MssAction, clamp_mss, clamp_mss_bytes
from encap.udp import Udp
from encap.vxlan import Vxlan, vxlan_decap

OUTER4_SRC, OUTER4_DST = "192.0.2.1", "198.51.100.2"
OUTER6_SRC, OUTER6_DST = "2001:db8:1::1", "2001:db8:2::2"
INNER4_SRC, INNER4_DST = "10.1.0.1", "10.2.0.2"
INNER6_SRC, INNER6_DST = "fd00:1::1", "fd00:2::2"
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"

GRE_KEY = 0xDEADBEEF  # high bit set: the key is unsigned
GRE_SEQUENCE = 0x80000001
VNI = 0xABCDEF
VXLAN_SRC_PORT, VXLAN_PORT = 49152, 4789
MSS_LIMIT_V4, MSS_LIMIT_V6 = 1360, 1340  # different, so a family mix-up shows


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def inner_ipv4_syn():
    return (IP(src=INNER4_SRC, dst=INNER4_DST, ttl=33, id=0x1234)
            / TCP(sport=40000, dport=80, flags="S", seq=1000, options=[("MSS", 1460)]))


def inner_ipv6_echo():
    return (IPv6(src=INNER6_SRC, dst=INNER6_DST, hlim=33)
            / ICMPv6EchoRequest(id=7, seq=1, data=b"ping"))


def inner_ipv4_odd_length():
    """31 bytes: an odd length exercises the pad byte of every checksum over it."""
    return IP(src=INNER4_SRC, dst=INNER4_DST) / UDP(sport=5000, dport=5001) / Raw(b"odd")


INNERS = {
    "ipv4-tcp-syn": (inner_ipv4_syn, 0x0800),
    "ipv6-icmpv6-echo": (inner_ipv6_echo, 0x86DD),
    "ipv4-udp-odd-length": (inner_ipv4_odd_length, 0x0800),
}

# (checksum, key, sequence): all eight combinations of GRE's C, K and S bits.
GRE_FLAGS = list(itertools.product((False, True), repeat=3))


def gre_flags_id(flags) -> str:
    names = [name for name, on in zip(("csum", "key", "seq"), flags) if on]
    return "+".join(names) or "no-options"


def ethernet_frame():
    return (Ether(src=MAC_A, dst=MAC_B)
            / IP(src=INNER4_SRC, dst=INNER4_DST) / ICMP(id=3, seq=4) / Raw(b"vxlan"))


def assert_scapy_recomputes_checksum(wire: bytes, dissect, layer) -> None:
    """Deleting ``layer``'s checksum and letting scapy rebuild gives back ``wire``."""
    packet = dissect(wire)
    sent = packet[layer].chksum
    del packet[layer].chksum
    rebuilt = raw(packet)
    assert dissect(rebuilt)[layer].chksum == sent, f"{layer.__name__} checksum"
    assert rebuilt == wire


# --- scapy builds, encap decodes -------------------------------------------------------


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("flags", GRE_FLAGS, ids=gre_flags_id)
def test_scapy_gre_decodes_to_scapys_inner_packet_and_options(flags, inner_name):
    checksum, key, sequence = flags
    make_inner, _ = INNERS[inner_name]
    options = {}
    if key:
        options["key"] = GRE_KEY
    if sequence:
        options["sequence_number"] = GRE_SEQUENCE
    gre_layer = GRE(chksum_present=int(checksum), key_present=int(key),
                    seqnum_present=int(sequence), **options)
    packet = (IP(src=OUTER4_SRC, dst=OUTER4_DST, ttl=42, tos=0xB8, id=0x4242, flags="DF")
              / gre_layer / make_inner())
    wire, inner = raw(packet), raw(make_inner())

    header, payload = parse_ipv4(memoryview(wire))
    assert (header.ttl, header.tos, header.identification) == (42, 0xB8, 0x4242)
    assert header.protocol == 47
    assert (header.src, header.dst) == (v4(OUTER4_SRC), v4(OUTER4_DST))
    assert header.dont_fragment and header.total_length == len(wire)

    gre = Gre(key=GRE_KEY if key else None, checksum=checksum, sequence=sequence)
    assert gre.decap_bytes(bytes(payload)) == inner
    if sequence:
        assert gre.expected_sequence == GRE_SEQUENCE + 1
    stack = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47),
                  Gre(key=GRE_KEY if key else None, checksum=checksum, sequence=sequence))
    assert stack.decap_bytes(wire) == inner


@pytest.mark.parametrize("flags", [f for f in GRE_FLAGS if f[1]], ids=gre_flags_id)
def test_scapy_gre_key_is_read_at_its_offset_so_another_key_is_refused(flags):
    checksum, _, sequence = flags
    packet = GRE(chksum_present=int(checksum), key_present=1, seqnum_present=int(sequence),
                 key=GRE_KEY, sequence_number=GRE_SEQUENCE) / inner_ipv4_syn()
    with pytest.raises(DecodeError) as caught:
        Gre(key=GRE_KEY - 1, checksum=checksum, sequence=sequence).decap_bytes(raw(packet))
    assert caught.value.reason == DropReason.GRE_WRONG_KEY


@pytest.mark.parametrize("configured", [True, False], ids=["csum-tunnel", "no-csum-tunnel"])
@pytest.mark.parametrize("inner_name", sorted(INNERS))
def test_scapy_gre_checksum_is_accepted_and_a_flipped_payload_bit_is_not(inner_name, configured):
    make_inner, _ = INNERS[inner_name]
    wire = bytearray(raw(GRE(chksum_present=1) / make_inner()))
    assert Gre(checksum=configured).decap_bytes(bytes(wire)) == raw(make_inner())
    wire[-1] ^= 0x01  # a checksum that is present is verified whatever the tunnel sends
    with pytest.raises(DecodeError) as caught:
        Gre(checksum=configured).decap_bytes(bytes(wire))
    assert caught.value.reason == DropReason.GRE_BAD_CHECKSUM


@pytest.mark.parametrize("fields, reason", [
    pytest.param({"recursion_control": 1}, None, id="bit7-ignored"),
    pytest.param({"flags": 0x1F}, None, id="bits8-12-ignored"),
    pytest.param({"recursion_control": 4}, DropReason.GRE_RESERVED_FLAGS, id="bit5-discarded"),
    pytest.param({"strict_route_source": 1}, DropReason.GRE_RESERVED_FLAGS, id="bit4-discarded"),
    pytest.param({"routing_present": 1}, DropReason.GRE_RESERVED_FLAGS, id="routing-discarded"),
    pytest.param({"version": 1}, DropReason.GRE_BAD_VERSION, id="version1-discarded"),
])
def test_scapy_gre_reserved_bits_follow_rfc2784(fields, reason):
    wire = raw(GRE(**fields) / inner_ipv4_syn())
    if reason is None:
        assert Gre().decap_bytes(wire) == raw(inner_ipv4_syn())
    else:
        with pytest.raises(DecodeError) as caught:
            Gre().decap_bytes(wire)
        assert caught.value.reason == reason


@pytest.mark.parametrize("key", [None, 7], ids=["no-key", "key"])
def test_scapy_gretap_decodes_to_the_ethernet_frame(key):
    options = {"key_present": 1, "key": key} if key is not None else {}
    packet = IP(src=OUTER4_SRC, dst=OUTER4_DST) / GRE(**options) / ethernet_frame()
    wire = raw(packet)
    assert IP(wire)[GRE].proto == 0x6558
    stack = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47), Gre(key=key, ethernet=True))
    assert stack.decap_bytes(wire) == raw(ethernet_frame())
    with pytest.raises(DecodeError) as caught:
        Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47), Gre(key=key)).decap_bytes(wire)
    assert caught.value.reason == DropReason.GRE_UNKNOWN_PROTOCOL


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_scapy_vxlan_decodes_to_vni_and_ethernet_frame(family):
    if family == "ipv4":
        outer, src, dst = IP(src=OUTER4_SRC, dst=OUTER4_DST), v4(OUTER4_SRC), v4(OUTER4_DST)
        outer_codec = Ipv4Outer(src, dst, 17)
    else:
        outer, src, dst = IPv6(src=OUTER6_SRC, dst=OUTER6_DST), v6(OUTER6_SRC), v6(OUTER6_DST)
        outer_codec = Ipv6Outer(src, dst, 17)
    packet = (outer / UDP(sport=VXLAN_SRC_PORT, dport=VXLAN_PORT)
              / VXLAN(flags=0x08, vni=VNI) / ethernet_frame())
    wire = raw(packet)
    assert packet.__class__(wire)[UDP].chksum != 0  # scapy did write a checksum to check

    datagram = outer_codec.decap(memoryview(wire))
    vni, frame = vxlan_decap(Udp(src, dst, VXLAN_SRC_PORT, VXLAN_PORT).decap(datagram))
    assert vni == VNI
    assert bytes(frame) == raw(ethernet_frame())
    stack = Stack(outer_codec, Udp(src, dst, VXLAN_SRC_PORT, VXLAN_PORT), Vxlan(VNI))
    assert stack.decap_bytes(wire) == raw(ethernet_frame())


def test_scapy_vxlan_without_the_i_flag_is_refused():
    wire = raw(VXLAN(flags=0x00, vni=VNI) / ethernet_frame())
    with pytest.raises(DecodeError) as caught:
        Vxlan(VNI).decap_bytes(wire)
    assert caught.value.reason == DropReason.VXLAN_NO_VNI_FLAG


def test_scapy_vxlan_with_another_vni_is_refused():
    wire = raw(VXLAN(flags=0x08, vni=VNI + 1) / ethernet_frame())
    with pytest.raises(DecodeError) as caught:
        Vxlan(VNI).decap_bytes(wire)
    assert caught.value.reason == DropReason.VXLAN_UNKNOWN_VNI


@pytest.mark.parametrize("inner_version, protocol, make_inner", [
    pytest.param(4, 4, inner_ipv4_syn, id="ipip"),
    pytest.param(6, 41, lambda: IPv6(src=INNER6_SRC, dst=INNER6_DST) / TCP(flags="S"), id="6in4"),
])
def test_scapy_ip_in_ip_decodes_to_the_inner_packet(inner_version, protocol, make_inner):
    packet = IP(src=OUTER4_SRC, dst=OUTER4_DST, ttl=9) / make_inner()
    wire = raw(packet)
    header, _ = parse_ipv4(memoryview(wire))
    assert header.protocol == protocol
    stack = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), protocol), IpInIp(inner_version))
    assert stack.decap_bytes(wire) == raw(make_inner())


@pytest.mark.parametrize("fields, header_length", [
    pytest.param({"ttl": 64, "tos": 0, "id": 1, "flags": "DF"}, 20, id="plain-df"),
    pytest.param({"ttl": 1, "tos": 0xFF, "id": 0xFFFF, "flags": 0}, 20, id="extremes-no-df"),
    pytest.param({"ttl": 200, "tos": 0x2E, "id": 0x8001, "flags": "DF",
                  "options": [IPOption_Router_Alert()]}, 24, id="with-ip-options"),
])
def test_scapy_outer_ipv4_fields_parse_as_given(fields, header_length):
    payload = GRE() / inner_ipv4_syn()
    wire = raw(IP(src=OUTER4_SRC, dst=OUTER4_DST, **fields) / payload)
    header, carried = parse_ipv4(memoryview(wire + b"\x00" * 6))  # Ethernet padding trimmed
    assert header.header_length == header_length
    assert header.total_length == len(wire)
    assert (header.ttl, header.tos) == (fields["ttl"], fields["tos"])
    assert header.identification == fields["id"]
    assert header.dont_fragment == (fields["flags"] == "DF")
    assert not header.more_fragments and header.fragment_offset == 0
    assert (header.protocol, header.src, header.dst) == (47, v4(OUTER4_SRC), v4(OUTER4_DST))
    assert bytes(carried) == raw(payload)
    decapped = Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47).decap(memoryview(wire + b"\x00" * 6))
    assert bytes(decapped) == raw(payload)


@pytest.mark.parametrize("fields, more, offset", [
    pytest.param({"flags": "MF"}, True, 0, id="first-fragment"),
    pytest.param({"frag": 185}, False, 185, id="last-fragment"),
])
def test_scapy_ipv4_fragments_are_refused_unless_allowed(fields, more, offset):
    wire = raw(IP(src=OUTER4_SRC, dst=OUTER4_DST, **fields) / GRE() / inner_ipv4_syn())
    for decode in (lambda: parse_ipv4(memoryview(wire)),
                   lambda: Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47).decap(memoryview(wire))):
        with pytest.raises(DecodeError) as caught:
            decode()
        assert caught.value.reason == DropReason.IP_FRAGMENT
    header, _ = parse_ipv4(memoryview(wire), allow_fragments=True)
    assert (header.more_fragments, header.fragment_offset) == (more, offset)


def test_scapy_ipv4_with_a_bad_header_checksum_is_refused():
    wire = raw(IP(src=OUTER4_SRC, dst=OUTER4_DST, chksum=0x1234) / GRE() / inner_ipv4_syn())
    with pytest.raises(DecodeError) as caught:
        parse_ipv4(memoryview(wire))
    assert caught.value.reason == DropReason.IP_BAD_CHECKSUM


EXTENSION_CHAINS = {
    "none": [],
    "hop-by-hop": [IPv6ExtHdrHopByHop],
    "hop-by-hop-16-bytes": [lambda: IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 10)])],
    "destination-options": [IPv6ExtHdrDestOpt],
    "routing": [lambda: IPv6ExtHdrRouting(addresses=["2001:db8:3::3"], segleft=0)],
    "atomic-fragment": [lambda: IPv6ExtHdrFragment(offset=0, m=0, id=0x1234)],
    # AH counts 4-octet units (RFC 4302); scapy leaves nh and length to the caller.
    "authentication-header": [lambda: AH(nh=47, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12)],
    "authentication-header-then-destopt": [
        lambda: AH(nh=60, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12), IPv6ExtHdrDestOpt],
    "all-four-then-destopt": [IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting,
                              lambda: IPv6ExtHdrFragment(id=9), IPv6ExtHdrDestOpt],
}


@pytest.mark.parametrize("chain", sorted(EXTENSION_CHAINS))
def test_scapy_outer_ipv6_extension_headers_are_walked_to_gre(chain):
    outer = IPv6(src=OUTER6_SRC, dst=OUTER6_DST, hlim=7, tc=0xB8, fl=0xABCDE)
    for make in EXTENSION_CHAINS[chain]:
        outer = outer / make()
    gre_part = GRE(key_present=1, key=GRE_KEY) / inner_ipv4_syn()
    wire = raw(outer / gre_part)
    upper_offset = len(wire) - len(raw(gre_part))

    header, upper = parse_ipv6(memoryview(wire))
    assert header.upper_protocol == 47
    assert header.upper_offset == upper_offset
    assert header.next_header == IPv6(wire).nh
    assert not header.is_fragment
    assert (header.hop_limit, header.traffic_class, header.flow_label) == (7, 0xB8, 0xABCDE)
    assert (header.src, header.dst) == (v6(OUTER6_SRC), v6(OUTER6_DST))
    assert header.payload_length == len(wire) - 40
    assert bytes(upper) == raw(gre_part)
    stack = Stack(Ipv6Outer(v6(OUTER6_SRC), v6(OUTER6_DST), 47), Gre(key=GRE_KEY))
    assert stack.decap_bytes(wire) == raw(inner_ipv4_syn())


@pytest.mark.parametrize("fragment", [
    pytest.param({"m": 1, "offset": 0}, id="first-fragment"),
    pytest.param({"m": 0, "offset": 5}, id="last-fragment"),
])
def test_scapy_ipv6_fragments_are_refused_unless_allowed(fragment):
    wire = raw(IPv6(src=OUTER6_SRC, dst=OUTER6_DST) / IPv6ExtHdrHopByHop()
               / IPv6ExtHdrFragment(id=1, **fragment) / GRE() / inner_ipv4_syn())
    with pytest.raises(DecodeError) as caught:
        parse_ipv6(memoryview(wire))
    assert caught.value.reason == DropReason.IP_FRAGMENT
    with pytest.raises(DecodeError):
        Ipv6Outer(v6(OUTER6_SRC), v6(OUTER6_DST), 47).decap(memoryview(wire))
    header, _ = parse_ipv6(memoryview(wire), allow_fragments=True)
    assert header.is_fragment and header.upper_protocol == 47 and header.upper_offset == 40 + 8 + 8


@pytest.mark.parametrize("payload", [b"even", b"odd", b""], ids=["even", "odd", "empty"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_scapy_udp_checksum_is_verified_by_udp_decap(family, payload):
    if family == "ipv4":
        outer, src, dst = IP(src=OUTER4_SRC, dst=OUTER4_DST), v4(OUTER4_SRC), v4(OUTER4_DST)
    else:
        outer, src, dst = IPv6(src=OUTER6_SRC, dst=OUTER6_DST), v6(OUTER6_SRC), v6(OUTER6_DST)
    packet = outer / UDP(sport=1111, dport=2222) / Raw(payload)
    datagram = bytearray(raw(packet[UDP]))
    assert Udp(src, dst, 1111, 2222).decap_bytes(bytes(datagram)) == payload
    # Swapping the addresses leaves the pseudo-header sum alone (decap's comment).
    assert Udp(dst, src, 2222, 1111).decap_bytes(bytes(datagram)) == payload
    datagram[1] ^= 0x01  # the source port: covered by the checksum
    with pytest.raises(DecodeError) as caught:
        Udp(src, dst, 1111, 2222).decap_bytes(bytes(datagram))
    assert caught.value.reason == DropReason.UDP_BAD_CHECKSUM


def test_scapy_udp_without_checksum_is_accepted_over_ipv4():
    datagram = raw((IP(src=OUTER4_SRC, dst=OUTER4_DST) / UDP(sport=1, dport=2, chksum=0)
                    / Raw(b"x"))[UDP])
    assert datagram[6:8] == b"\x00\x00"
    assert Udp(v4(OUTER4_SRC), v4(OUTER4_DST), 1, 2).decap_bytes(datagram) == b"x"


# --- encap builds, scapy dissects ------------------------------------------------------


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("flags", GRE_FLAGS, ids=gre_flags_id)
def test_encap_gre_reads_back_in_scapy_field_by_field(flags, inner_name):
    checksum, key, sequence = flags
    make_inner, protocol = INNERS[inner_name]
    inner = raw(make_inner())
    stack = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47, ttl=17, tos=0x28),
                  Gre(key=GRE_KEY if key else None, checksum=checksum, sequence=sequence))
    for number in range(2):  # the second packet shows the id and sequence counting up
        wire = stack.encap(inner)
        assert len(wire) == 20 + 4 + 4 * sum(flags) + len(inner)
        packet = IP(wire)
        assert (packet.version, packet.ihl, packet.tos, packet.len) == (4, 5, 0x28, len(wire))
        assert (packet.id, int(packet.flags), packet.frag) == (number + 1, 2, 0)  # 2 is DF
        assert (packet.ttl, packet.proto) == (17, 47)
        assert (packet.src, packet.dst) == (OUTER4_SRC, OUTER4_DST)
        gre = packet[GRE]
        assert (gre.chksum_present, gre.key_present, gre.seqnum_present) == tuple(map(int, flags))
        assert (gre.routing_present, gre.strict_route_source, gre.recursion_control,
                gre.flags, gre.version) == (0, 0, 0, 0, 0)
        assert gre.proto == protocol
        assert gre.key == (GRE_KEY if key else None)
        assert gre.sequence_number == (number if sequence else None)
        if checksum:
            assert gre.offset == 0  # Reserved1
        assert raw(gre.payload) == inner
        assert_scapy_recomputes_checksum(wire, IP, IP)
        if checksum:
            assert_scapy_recomputes_checksum(wire, IP, GRE)


@pytest.mark.parametrize("key", [None, GRE_KEY], ids=["no-key", "key"])
def test_encap_gretap_reads_back_in_scapy_as_ethernet(key):
    frame = raw(ethernet_frame())
    wire = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), 47),
                 Gre(key=key, checksum=True, ethernet=True)).encap(frame)
    packet = IP(wire)
    assert packet[GRE].proto == 0x6558
    assert packet[GRE].key == key
    ether = packet[GRE].payload
    assert isinstance(ether, Ether) and (ether.src, ether.dst) == (MAC_A, MAC_B)
    assert raw(ether) == frame
    assert_scapy_recomputes_checksum(wire, IP, GRE)


def test_encap_gre_over_ipv6_reads_back_in_scapy():
    inner = raw(inner_ipv6_echo())
    wire = Stack(Ipv6Outer(v6(OUTER6_SRC), v6(OUTER6_DST), 47, hop_limit=9, traffic_class=0xB8,
                           flow_label=0xABCDE),
                 Gre(key=GRE_KEY, checksum=True, sequence=True)).encap(inner)
    packet = IPv6(wire)
    assert (packet.version, packet.tc, packet.fl, packet.hlim) == (6, 0xB8, 0xABCDE, 9)
    assert (packet.plen, packet.nh) == (len(wire) - 40, 47)
    assert (packet.src, packet.dst) == (OUTER6_SRC, OUTER6_DST)
    assert (packet[GRE].proto, packet[GRE].key, packet[GRE].sequence_number) == (0x86DD, GRE_KEY, 0)
    assert raw(packet[GRE].payload) == inner
    assert_scapy_recomputes_checksum(wire, IPv6, GRE)


@pytest.mark.parametrize("family, checksum, expect_checksum", [
    pytest.param("ipv4", True, True, id="ipv4-checksum"),
    pytest.param("ipv4", False, False, id="ipv4-zero-checksum"),
    pytest.param("ipv6", True, True, id="ipv6-checksum"),
    pytest.param("ipv6", False, True, id="ipv6-checksum-is-mandatory"),
])
def test_encap_vxlan_reads_back_in_scapy(family, checksum, expect_checksum):
    if family == "ipv4":
        src, dst, outer_codec, dissect = v4(OUTER4_SRC), v4(OUTER4_DST), Ipv4Outer, IP
    else:
        src, dst, outer_codec, dissect = v6(OUTER6_SRC), v6(OUTER6_DST), Ipv6Outer, IPv6
    frame = raw(ethernet_frame())
    wire = Stack(outer_codec(src, dst, 17),
                 Udp(src, dst, VXLAN_SRC_PORT, VXLAN_PORT, checksum=checksum),
                 Vxlan(VNI)).encap(frame)
    packet = dissect(wire)
    udp = packet[UDP]
    assert (udp.sport, udp.dport, udp.len) == (VXLAN_SRC_PORT, VXLAN_PORT, 8 + 8 + len(frame))
    vxlan = packet[VXLAN]
    assert (vxlan.flags, vxlan.vni, vxlan.reserved1, vxlan.reserved2) == (0x08, VNI, 0, 0)
    assert raw(vxlan.payload) == frame and isinstance(vxlan.payload, Ether)
    if expect_checksum:
        assert udp.chksum != 0
        assert_scapy_recomputes_checksum(wire, dissect, UDP)
    else:
        assert udp.chksum == 0
    if family == "ipv4":
        assert_scapy_recomputes_checksum(wire, IP, IP)


def test_encap_udp_checksum_that_sums_to_zero_is_sent_as_ffff_as_scapy_does():
    src, dst = v4(OUTER4_SRC), v4(OUTER4_DST)
    stack = Stack(Ipv4Outer(src, dst, 17), Udp(src, dst, 1234, 5678))
    probe = stack.encap(b"\x00\x00payload")
    computed = int.from_bytes(probe[26:28], "big")
    # Putting the checksum itself in the first payload word makes the sum all ones:
    # the computed checksum is then 0, which UDP must send as 0xffff.
    wire = stack.encap(computed.to_bytes(2, "big") + b"payload")
    assert wire[26:28] == b"\xff\xff"
    assert_scapy_recomputes_checksum(wire, IP, UDP)


@pytest.mark.parametrize("inner_version, protocol, make_inner, layer", [
    pytest.param(4, 4, inner_ipv4_syn, IP, id="ipip"),
    pytest.param(6, 41, inner_ipv6_echo, IPv6, id="6in4"),
])
@pytest.mark.parametrize("dont_fragment", [True, False], ids=["df", "no-df"])
def test_encap_ip_in_ip_reads_back_in_scapy(inner_version, protocol, make_inner, layer,
                                            dont_fragment):
    inner = raw(make_inner())
    wire = Stack(Ipv4Outer(v4(OUTER4_SRC), v4(OUTER4_DST), protocol, ttl=255, tos=0x10,
                           dont_fragment=dont_fragment),
                 IpInIp(inner_version)).encap(inner)
    packet = IP(wire)
    assert (packet.proto, packet.ttl, packet.tos) == (protocol, 255, 0x10)
    assert packet.len == 20 + len(inner)
    assert int(packet.flags) == (2 if dont_fragment else 0)
    assert isinstance(packet.payload, layer) and raw(packet.payload) == inner
    assert_scapy_recomputes_checksum(wire, IP, IP)


# --- MSS clamping of scapy-built SYNs --------------------------------------------------

FULL_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                ("WScale", 7)]
# Layouts, with where the MSS value lands relative to the TCP header: 22 is the
# first option's value; a NOP in front moves it to an odd offset, across two
# checksum words.
MSS_LAYOUTS = {
    "mss-first-even": ([("MSS", 1460)], 22),
    "full-list-even": (FULL_OPTIONS, 22),
    "nop-then-mss-odd": ([("NOP", None), ("MSS", 1460), ("WScale", 7)], 23),
    "three-nops-then-mss-odd": ([("NOP", None)] * 3 + [("MSS", 1460)], 25),
    "mss-last-odd": ([("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None),
                      ("MSS", 1460), ("WScale", 7)], 35),  # 20 + 2 + 10 + 1 + kind, length
}

FAMILIES = ["ipv4", "ipv4-ip-options", "ipv6", "ipv6-hop-by-hop", "ipv6-destination-options"]


def ip_header(family: str):
    if family == "ipv4":
        return IP(src=INNER4_SRC, dst=INNER4_DST)
    if family == "ipv4-ip-options":
        return IP(src=INNER4_SRC, dst=INNER4_DST, options=[IPOption_Router_Alert()])
    ipv6 = IPv6(src=INNER6_SRC, dst=INNER6_DST)
    if family == "ipv6-hop-by-hop":
        return ipv6 / IPv6ExtHdrHopByHop()
    if family == "ipv6-destination-options":
        return ipv6 / IPv6ExtHdrDestOpt()
    return ipv6


def tcp_packet(family: str, options, flags: str = "S", payload: bytes = b""):
    segment = TCP(sport=40000, dport=443, flags=flags, seq=0x01020304,
                  ack=0x0A0B0C0D if "A" in flags else 0, window=64240, options=options)
    packet = ip_header(family) / segment
    return raw(packet / Raw(payload) if payload else packet)


def tcp_packet_with_raw_options(family: str, option_bytes: bytes, data_offset: int | None = None):
    """A SYN whose option area is ``option_bytes`` verbatim (scapy would tidy a list)."""
    assert len(option_bytes) % 4 == 0
    offset = data_offset if data_offset is not None else 5 + len(option_bytes) // 4
    segment = TCP(sport=40000, dport=443, flags="S", dataofs=offset) / Raw(option_bytes)
    return raw(ip_header(family) / segment)


def dissect(wire: bytes):
    return IP(wire) if wire[0] >> 4 == 4 else IPv6(wire)


def mss_values(wire: bytes) -> list[int]:
    return [value for name, value in dissect(wire)[TCP].options if name == "MSS"]


def limit_for(family: str) -> int:
    return MSS_LIMIT_V4 if family.startswith("ipv4") else MSS_LIMIT_V6


def tcp_offset(wire: bytes) -> int:
    return len(wire) - len(raw(dissect(wire)[TCP]))


def clamp(wire: bytes):
    return clamp_mss_bytes(wire, MSS_LIMIT_V4, MSS_LIMIT_V6)


@pytest.mark.parametrize("layout", sorted(MSS_LAYOUTS))
@pytest.mark.parametrize("flags", ["S", "SA"], ids=["syn", "syn-ack"])
@pytest.mark.parametrize("family", FAMILIES)
def test_mss_above_the_limit_is_lowered_and_the_tcp_checksum_stays_valid(family, flags, layout):
    options, value_offset = MSS_LAYOUTS[layout]
    wire = tcp_packet(family, options, flags)
    tcp = tcp_offset(wire)
    assert wire[tcp + value_offset:tcp + value_offset + 2] == (1460).to_bytes(2, "big")

    clamped, action = clamp(wire)

    assert action == MssAction.CLAMPED
    assert mss_values(clamped) == [limit_for(family)]
    value = tcp + value_offset
    assert clamped[value:value + 2] == limit_for(family).to_bytes(2, "big")
    changed = [i for i in range(len(wire)) if wire[i] != clamped[i]]
    assert set(changed) <= {tcp + value_offset, tcp + value_offset + 1, tcp + 16, tcp + 17}
    assert_scapy_recomputes_checksum(clamped, dissect, TCP)
    assert [name for name, _ in dissect(clamped)[TCP].options] == \
        [name for name, _ in dissect(wire)[TCP].options]


@pytest.mark.parametrize("original", [1361, 1460, 8960, 0xFFFF, 0x5DC0])
@pytest.mark.parametrize("layout", ["mss-first-even", "nop-then-mss-odd"])
def test_any_mss_above_the_limit_becomes_the_limit_at_odd_and_even_offsets(layout, original):
    options = [(name, original if name == "MSS" else value)
               for name, value in MSS_LAYOUTS[layout][0]]
    clamped, action = clamp(tcp_packet("ipv4", options))
    assert action == MssAction.CLAMPED
    assert mss_values(clamped) == [MSS_LIMIT_V4]
    assert_scapy_recomputes_checksum(clamped, IP, TCP)


@pytest.mark.parametrize("payload", [b"x", b"xy"], ids=["odd-length", "even-length"])
def test_syn_with_data_is_clamped_with_a_valid_checksum(payload):
    clamped, action = clamp(tcp_packet("ipv4", [("NOP", None), ("MSS", 1460)], payload=payload))
    assert action == MssAction.CLAMPED and mss_values(clamped) == [MSS_LIMIT_V4]
    assert_scapy_recomputes_checksum(clamped, IP, TCP)


def test_two_mss_options_are_both_lowered():
    wire = tcp_packet("ipv4", [("MSS", 1460), ("NOP", None), ("MSS", 9000)])
    clamped, action = clamp(wire)
    assert action == MssAction.CLAMPED
    assert mss_values(clamped) == [MSS_LIMIT_V4, MSS_LIMIT_V4]
    assert_scapy_recomputes_checksum(clamped, IP, TCP)


def test_clamp_mss_works_in_place_on_a_memoryview():
    buffer = bytearray(tcp_packet("ipv6-hop-by-hop", FULL_OPTIONS))
    assert clamp_mss(memoryview(buffer), MSS_LIMIT_V4, MSS_LIMIT_V6) == MssAction.CLAMPED
    assert mss_values(bytes(buffer)) == [MSS_LIMIT_V6]
    assert_scapy_recomputes_checksum(bytes(buffer), IPv6, TCP)


@pytest.mark.parametrize("family, mss", [
    pytest.param("ipv4", 1300, id="ipv4-below"),
    pytest.param("ipv4", MSS_LIMIT_V4, id="ipv4-at-limit"),
    pytest.param("ipv4", 1350, id="ipv4-between-the-two-limits"),
    pytest.param("ipv6", 1300, id="ipv6-below"),
    pytest.param("ipv6-hop-by-hop", MSS_LIMIT_V6, id="ipv6-at-limit"),
])
@pytest.mark.parametrize("layout", ["full-list-even", "nop-then-mss-odd"])
def test_mss_within_the_limit_is_left_byte_identical(family, mss, layout):
    options = [(name, mss if name == "MSS" else value) for name, value in MSS_LAYOUTS[layout][0]]
    wire = tcp_packet(family, options)
    assert clamp(wire) == (wire, MssAction.WITHIN_LIMIT)


def test_ipv6_uses_its_own_limit_below_the_ipv4_one():
    clamped, action = clamp(tcp_packet("ipv6", [("MSS", 1350)]))
    assert action == MssAction.CLAMPED and mss_values(clamped) == [MSS_LIMIT_V6]
    assert_scapy_recomputes_checksum(clamped, IPv6, TCP)


@pytest.mark.parametrize("options", [
    pytest.param([], id="no-options"),
    pytest.param([("SAckOK", b""), ("WScale", 7), ("Timestamp", (5, 0))], id="other-options"),
])
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "ipv6-hop-by-hop"])
def test_syn_without_mss_option_is_left_byte_identical(family, options):
    wire = tcp_packet(family, options)
    assert clamp(wire) == (wire, MssAction.NO_MSS_OPTION)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_mss_after_end_of_option_list_is_not_an_option(family):
    wire = tcp_packet_with_raw_options(family, b"\x00\x00\x00\x00\x02\x04\x05\xb4")
    assert clamp(wire) == (wire, MssAction.NO_MSS_OPTION)


@pytest.mark.parametrize("flags", ["A", "PA", "F", "R", ""], ids=["ack", "psh-ack", "fin", "rst",
                                                                  "no-flags"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_segment_without_syn_is_left_byte_identical_even_with_mss(family, flags):
    wire = tcp_packet(family, [("MSS", 1460)], flags)
    assert clamp(wire) == (wire, MssAction.NOT_A_SYN)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_non_tcp_is_left_byte_identical(family):
    wire = raw(ip_header(family) / UDP(sport=1, dport=2) / Raw(b"\x02\x04\x05\xb4" * 8))
    assert clamp(wire) == (wire, MssAction.NOT_A_SYN)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_non_first_fragment_is_left_byte_identical(family):
    if family == "ipv4":
        header = IP(src=INNER4_SRC, dst=INNER4_DST, frag=3)
    else:
        header = IPv6(src=INNER6_SRC, dst=INNER6_DST) / IPv6ExtHdrFragment(offset=3, id=1)
    wire = raw(header / TCP(flags="S", options=[("MSS", 1460)]))
    assert clamp(wire) == (wire, MssAction.NOT_A_SYN)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_first_fragment_of_a_syn_is_clamped_in_both_families(family):
    """MssAction.NOT_A_SYN is documented as "... or not the first fragment", and
    nftables (the stated model) only skips non-first fragments: offset 0 holds
    the whole TCP header, and the incremental checksum fix is right for the
    reassembled segment too. IPv4 does this; IPv6 must agree."""
    if family == "ipv4":
        header = IP(src=INNER4_SRC, dst=INNER4_DST, flags="MF")
    else:
        header = IPv6(src=INNER6_SRC, dst=INNER6_DST) / IPv6ExtHdrFragment(m=1, offset=0, id=1)
    wire = raw(header / TCP(flags="S", options=[("NOP", None), ("MSS", 1460)]))
    clamped, action = clamp(wire)
    assert action == MssAction.CLAMPED
    assert mss_values(clamped) == [limit_for(family)]
    assert_scapy_recomputes_checksum(clamped, dissect, TCP)


def test_atomic_ipv6_fragment_header_does_not_stop_clamping():
    wire = raw(IPv6(src=INNER6_SRC, dst=INNER6_DST) / IPv6ExtHdrFragment(m=0, offset=0, id=1)
               / TCP(flags="S", options=[("MSS", 1460)]))
    clamped, action = clamp(wire)
    assert action == MssAction.CLAMPED and mss_values(clamped) == [MSS_LIMIT_V6]
    assert_scapy_recomputes_checksum(clamped, IPv6, TCP)


MALFORMED_OPTIONS = {
    # A valid MSS comes first: the whole list is checked before anything changes.
    "length-runs-past-header": b"\x02\x04\x05\xb4\x08\x0a\x00\x00",
    "mss-length-3": b"\x02\x03\x05\xb4\x01\x01\x01\x00",
    "mss-length-5": b"\x02\x05\x05\xb4\x00\x01\x01\x00",
    "option-length-1": b"\x02\x04\x05\xb4\x03\x01\x00\x00",
    "option-length-0": b"\x02\x04\x05\xb4\x04\x00\x00\x00",
    "kind-without-length-byte": b"\x02\x04\x05\xb4\x01\x01\x01\x03",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_OPTIONS))
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "ipv6-hop-by-hop"])
def test_malformed_options_leave_the_packet_byte_identical(family, name):
    wire = tcp_packet_with_raw_options(family, MALFORMED_OPTIONS[name])
    assert clamp(wire) == (wire, MssAction.MALFORMED_OPTIONS)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_data_offset_past_the_packet_end_is_malformed(family):
    wire = tcp_packet_with_raw_options(family, b"\x02\x04\x05\xb4", data_offset=15)
    assert clamp(wire) == (wire, MssAction.MALFORMED_OPTIONS)
