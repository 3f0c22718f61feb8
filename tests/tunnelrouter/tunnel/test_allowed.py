"""allowed-ips (tunnelrouter/tunnel/allowed.py): which inner sources pass, against
``ipaddress`` as the reference; what an Ethernet tunnel does with ARP, neighbour
discovery and frames that are not IP. scapy builds the packets."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA,
                                ICMPv6ND_Redirect, IPv6, IPv6ExtHdrHopByHop)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tunnelrouter.tunnel.allowed import InnerSources, inner_source_check

MAC = "02:00:00:00:00:0b"


def networks(*prefixes: str):
    return [ipaddress.ip_network(prefix) for prefix in prefixes]


def check(prefixes, packet: bytes, ethernet: bool = False):
    """The drop reason's label for ``packet`` (None: it passes)."""
    reason = InnerSources(networks(*prefixes), ethernet).check(memoryview(packet))
    return None if reason is None else reason.label


def ip4(src: str) -> bytes:
    return bytes(IP(src=src, dst="192.168.1.1") / UDP())


def ip6(src: str, dst: str = "fd01::1") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP())


def ether(payload, **fields) -> bytes:
    if isinstance(payload, bytes) and "type" not in fields:
        fields["type"] = 0x86DD if payload[0] >> 4 == 6 else 0x0800
    return bytes(Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff", **fields) / payload)


# -- IP packets (TUN tunnels) -------------------------------------------------------------

@pytest.mark.parametrize("prefixes, source, verdict", [
    (["10.2.0.0/16"], "10.2.255.255", None),
    (["10.2.0.0/16"], "10.3.0.0", "source_not_allowed"),
    (["10.2.0.0/16"], "10.1.255.255", "source_not_allowed"),
    (["10.2.0.0/16", "10.9.9.9/32"], "10.9.9.9", None),
    (["10.2.0.0/16", "10.9.9.9/32"], "10.9.9.8", "source_not_allowed"),
    (["fd02::/48"], "10.2.0.1", "source_not_allowed"),     # no IPv4 prefix: no IPv4 source
    (["0.0.0.0/0"], "255.255.255.255", None),
    (["fd02::/48"], "fd02::1", None),
    (["fd02::/48"], "fd03::1", "source_not_allowed"),
    (["10.0.0.0/8"], "fd02::1", "source_not_allowed"),
    (["::/0"], "::", None),
])
def test_a_packet_passes_when_its_source_lies_in_one_of_the_prefixes(prefixes, source, verdict):
    packet = ip6(source) if ":" in source else ip4(source)
    assert check(prefixes, packet) == verdict


def test_a_list_that_lets_every_family_of_the_tunnel_in_needs_no_check():
    assert inner_source_check(networks("0.0.0.0/0", "::/0"), False, {4, 6}) is None
    assert inner_source_check(networks("0.0.0.0/0"), False, {4}) is None
    assert inner_source_check(networks("0.0.0.0/0"), False, {4, 6}) is not None
    # A TAP tunnel's list still keeps out what is not IP.
    assert inner_source_check(networks("0.0.0.0/0", "::/0"), True, {4, 6}) is not None


prefixes4 = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1,
                     max_size=12).map(lambda items: [
                         ipaddress.ip_network((address, length), strict=False)
                         for address, length in items])
prefixes6 = st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)), min_size=1,
                     max_size=12).map(lambda items: [
                         ipaddress.ip_network((address, length), strict=False)
                         for address, length in items])


@given(prefixes4, st.integers(0, 2**32 - 1), st.booleans())
def test_an_ipv4_source_passes_exactly_when_ipaddress_says_a_prefix_holds_it(prefixes, number,
                                                                             ethernet):
    source = ipaddress.IPv4Address(number)
    packet = ip4(str(source))
    verdict = InnerSources(prefixes, ethernet).check(memoryview(ether(packet) if ethernet
                                                                else packet))
    assert (verdict is None) == any(source in prefix for prefix in prefixes)


@given(prefixes6, st.integers(0, 2**128 - 1))
def test_an_ipv6_source_passes_exactly_when_ipaddress_says_a_prefix_holds_it(prefixes, number):
    source = ipaddress.IPv6Address(number)
    verdict = InnerSources(prefixes, False).check(memoryview(ip6(str(source))))
    assert (verdict is None) == any(source in prefix for prefix in prefixes)


@given(prefixes4, st.data())
def test_a_packet_from_inside_an_allowed_prefix_always_passes(prefixes, data):
    prefix = data.draw(st.sampled_from(prefixes))
    number = data.draw(st.integers(int(prefix.network_address), int(prefix.broadcast_address)))
    packet = ip4(str(ipaddress.IPv4Address(number)))
    assert InnerSources(prefixes, False).check(memoryview(packet)) is None
    assert InnerSources(prefixes, True).check(memoryview(ether(packet))) is None


# -- Ethernet frames (TAP tunnels) --------------------------------------------------------

ALLOWED = ["10.2.0.0/16", "fd02::/48"]


@pytest.mark.parametrize("frame, verdict", [
    (ether(ip4("10.2.0.9")), None),
    (ether(ip4("10.1.0.9")), "source_not_allowed"),
    (ether(ip6("fd02::9")), None),
    (ether(ip6("fd01::9")), "source_not_allowed"),
    (ether(ip6("fd02::9") [:30], type=0x86DD), "inner_malformed"),
    # ARP: the sender's address is what a host learns, so it must be allowed ...
    (ether(ARP(op=1, psrc="10.2.0.9", pdst="10.2.0.1")), None),
    (ether(ARP(op=2, psrc="10.2.0.9", pdst="10.2.0.1")), None),
    # ... a reply or gratuitous ARP for another address is ARP spoofing ...
    (ether(ARP(op=2, psrc="10.1.0.1", pdst="10.1.0.1")), "source_not_allowed"),
    # ... and a probe (RFC 5227, sender 0.0.0.0) teaches nobody anything.
    (ether(ARP(op=1, psrc="0.0.0.0", pdst="10.2.0.9")), None),
    (ether(ARP(ptype=0x86DD, plen=16)), "ethertype_not_allowed"),
    # Neighbour discovery from link-local or unspecified sources, as ND needs ...
    (ether(IPv6(src="fe80::9", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt="fd02::1")),
     None),
    (ether(IPv6(src="::", dst="ff02::1:ff00:9", hlim=255) / ICMPv6ND_NS(tgt="fd02::9")), None),
    (ether(IPv6(src="fe80::9", dst="ff02::1", hlim=255) / ICMPv6ND_RA()), None),
    (ether(IPv6(src="fe80::9", dst="fe80::1", hlim=255) / ICMPv6ND_NA(tgt="fd02::9")), None),
    (ether(IPv6(src="fe80::9", dst="fe80::1", hlim=255) / ICMPv6ND_NA(tgt="fe80::9")), None),
    # ... but an advertisement for an address outside the list is ND spoofing, from any
    # source, behind extension headers too ...
    (ether(IPv6(src="fe80::9", dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="fd01::1")),
     "source_not_allowed"),
    (ether(IPv6(src="fd02::9", dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="fd01::1")),
     "source_not_allowed"),
    (ether(IPv6(src="fd02::9", dst="ff02::1", hlim=255) / IPv6ExtHdrHopByHop()
           / ICMPv6ND_NA(tgt="fd01::1")), "source_not_allowed"),
    # ... and other link-local traffic needs fe80::/10 in the list: redirects, anything
    # that is not ND (a hop limit other than 255 is not ND: hosts ignore it as such).
    (ether(IPv6(src="fe80::9", dst="fe80::1", hlim=255) / ICMPv6ND_Redirect(tgt="fd02::1",
                                                                           dst="fd01::1")),
     "source_not_allowed"),
    (ether(IPv6(src="fe80::9", dst="fe80::1", hlim=64) / ICMPv6ND_NS(tgt="fe80::1")),
     "source_not_allowed"),
    (ether(IPv6(src="fe80::9", dst="fe80::1") / ICMPv6EchoRequest()), "source_not_allowed"),
    (ether(IPv6(src="fd02::9", dst="fd01::1") / ICMPv6EchoRequest()), None),
    (ether(IPv6(src="fd01::9", dst="fd02::1") / ICMPv6EchoRequest()), "source_not_allowed"),
    # What cannot be checked is kept out: a VLAN tag would carry IP past the check.
    (ether(Dot1Q(vlan=5) / IP(src="10.1.0.9")), "ethertype_not_allowed"),
    (ether(b"\x42\x42\x03" + bytes(40), type=0x0026), "ethertype_not_allowed"),   # 802.3 + LLC
    (bytes(ether(ip4("10.2.0.9")))[:20], "inner_malformed"),
    (ether(b"", type=0x0800), "inner_malformed"),
])
def test_an_ethernet_tunnel_passes_ip_arp_and_neighbour_discovery_it_can_vouch_for(frame,
                                                                                   verdict):
    assert check(ALLOWED, frame, ethernet=True) == verdict


@given(st.binary(max_size=120))
def test_any_frame_gets_an_answer_and_never_an_exception(tail):
    for ethertype in (b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x81\x00"):
        check(ALLOWED, bytes(12) + ethertype + tail, ethernet=True)
