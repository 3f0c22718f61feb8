"""The ICMP errors a tunnel writes back to inner senders: their source, their framing on a
TAP device, the messages no RFC allows, and the rate limit (RFC 1812 §4.3.2.8)."""

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.icmp import IcmpReplies, TokenBucket

from tests.tunnelrouter.tunnel.harness import (
    HOST_A, HOST_A6, LOCAL, MAC_A, MAC_B, NOW, TUNNEL_ADDRESS, TUNNEL_ADDRESS6, icmp_checksum_ok,
    inner4, inner6, tunnel_config)

FRAG_NEEDED = (3, 4)


def replies(mode: str = "gre", **keys) -> tuple[IcmpReplies, Counters]:
    counters = Counters()
    return IcmpReplies(tunnel_config(mode, **keys), counters), counters


# -- the token bucket ------------------------------------------------------------------------

def test_the_bucket_gives_rate_tokens_a_second_and_saves_up_no_more_than_rate():
    bucket = TokenBucket(2)
    assert [bucket.take(NOW) for _ in range(3)] == [True, True, False]
    assert bucket.take(NOW + 0.5) and not bucket.take(NOW + 0.5)
    assert [bucket.take(NOW + 1000) for _ in range(3)] == [True, True, False]


def test_a_rate_of_zero_sends_nothing():
    bucket = TokenBucket(0)
    assert not any(bucket.take(NOW + t) for t in range(10))


# -- the messages ----------------------------------------------------------------------------

def test_fragmentation_needed_comes_from_the_tunnel_address_and_quotes_the_packet():
    icmp, counters = replies()
    offending = inner4(1000)
    message = icmp.error(memoryview(offending), None, *FRAG_NEEDED, 1376, NOW)
    reply = IP(message)
    assert (reply.src, reply.dst, reply.tos) == (TUNNEL_ADDRESS, HOST_A, 0xC0)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1376)
    assert len(reply) == 576, "RFC 1812 §4.3.2.3: as much of the packet as fits in 576"
    assert bytes(reply[IPerror])[:20] == offending[:20]
    assert icmp_checksum_ok(message) and counters.icmp_sent == 1


def test_packet_too_big_comes_from_the_tunnel_ipv6_address():
    icmp, _ = replies()
    message = icmp.error(memoryview(inner6(1500)), None, 2, 0, 1376, NOW)
    reply = IPv6(message)
    assert (reply.src, reply.dst, reply[ICMPv6PacketTooBig].mtu) == \
        (TUNNEL_ADDRESS6, HOST_A6, 1376)
    assert len(reply) == 1280, "RFC 4443 §2.4 (c): within the IPv6 minimum MTU"
    assert icmp_checksum_ok(message)


def test_an_ipv4_tunnel_without_an_address_speaks_from_its_underlay_address():
    icmp, _ = replies("ipip", addresses=[])
    assert IP(icmp.error(memoryview(inner4()), None, 11, 0, 0, NOW)).src == LOCAL


def test_an_ipv6_packet_gets_no_error_from_a_tunnel_without_an_ipv6_address():
    icmp, counters = replies("gre", addresses=[f"{TUNNEL_ADDRESS}/24"])
    assert icmp.error(memoryview(inner6()), None, 2, 0, 1280, NOW) is None
    assert counters.icmp_sent == 0


def icmp_error_packet() -> bytes:
    return bytes(IP(src=HOST_A, dst="192.168.2.20", flags="DF") / ICMP(type=3, code=1) /
                 bytes(IP(src="192.168.2.20", dst=HOST_A) / UDP()) / bytes(800))


@pytest.mark.parametrize("offending, why", [
    (icmp_error_packet(), "RFC 1122 §3.2.2: no error about an ICMP error"),
    (bytes(IPv6(src=HOST_A6, dst="fd02::20") / ICMPv6DestUnreach() / bytes(800)),
     "RFC 4443 §2.4 (e.1): no error about an ICMPv6 error"),
    (inner4(src="0.0.0.0"), "RFC 1122 §3.2.2: nor about a packet from no one"),
    (inner4(dst="224.0.0.5"), "nor about one sent to a group"),
    (bytes(IP(src=HOST_A, dst="192.168.2.20", frag=10) / bytes(100)),
     "nor about a fragment other than the first"),
])
def test_no_error_about_a_packet_the_rfcs_protect(offending, why):
    icmp, counters = replies()
    assert icmp.error(memoryview(offending), None, *FRAG_NEEDED, 1376, NOW) is None, why
    assert counters.icmp_sent == 0


def test_an_error_about_an_echo_request_is_fine():
    icmp, _ = replies()
    echo = bytes(IP(src=HOST_A, dst="192.168.2.20", flags="DF") / ICMP(type=8) / bytes(1400))
    assert icmp.error(memoryview(echo), None, *FRAG_NEEDED, 1376, NOW) is not None


@pytest.mark.parametrize("packet, ethertype", [(inner4(), 0x0800), (inner6(), 0x86DD)])
def test_on_a_tap_device_the_error_is_framed_back_to_the_mac_it_came_from(packet, ethertype):
    icmp, _ = replies("gretap")
    header = bytes(Ether(src=MAC_A, dst=MAC_B, type=ethertype))
    reply = Ether(icmp.error(memoryview(packet), memoryview(header), 11 if ethertype == 0x0800
                             else 3, 0, 0, NOW))
    assert (reply.dst, reply.src, reply.type) == (MAC_A, MAC_B, ethertype)
    assert reply.payload.dst == (HOST_A if ethertype == 0x0800 else HOST_A6)


def test_the_rate_limit_holds_back_errors_and_counts_them():
    icmp, counters = replies(**{"icmp-rate-limit": 1})
    results = [icmp.error(memoryview(inner4()), None, 11, 0, 0, NOW) for _ in range(3)]
    assert [r is not None for r in results] == [True, False, False]
    assert (counters.icmp_sent, counters.icmp_rate_limited) == (1, 2)


def test_a_message_the_rfcs_forbid_does_not_use_up_the_rate_limit():
    icmp, counters = replies(**{"icmp-rate-limit": 1})
    assert icmp.error(memoryview(icmp_error_packet()), None, *FRAG_NEEDED, 1376, NOW) is None
    assert icmp.error(memoryview(inner4(1000)), None, *FRAG_NEEDED, 1376, NOW) is not None
    assert (counters.icmp_sent, counters.icmp_rate_limited) == (1, 0)
