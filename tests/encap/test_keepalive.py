"""Keepalive probes as bytes: scapy reads what encap/keepalive.py builds, and the marker
reader takes any bytes without raising."""

import socket

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import GRE, Ether

from encap import keepalive

LOCAL, REMOTE = socket.inet_aton("192.0.2.1"), socket.inet_aton("198.51.100.2")
NONCE = b"12345678"


@given(st.integers(0, 0xFFFFFFFF))
def test_a_marker_gives_back_its_number_to_its_nonce_only(number):
    marker = keepalive.marker(NONCE, number)
    assert keepalive.probe_number(b"anything before" + marker, NONCE) == number
    assert keepalive.probe_number(marker, b"87654321") is None
    assert keepalive.ends_in_marker(b"x" + marker) and not keepalive.ends_in_marker(marker[1:])


@given(st.binary(max_size=64))
def test_any_bytes_are_a_marker_or_none(data):
    number = keepalive.probe_number(data, NONCE)
    assert number is None or 0 <= number <= 0xFFFFFFFF


def test_the_gre_probe_is_cisco_shaped_and_its_checksum_right():
    probe = IP(keepalive.gre_probe(LOCAL, REMOTE, 0xB000, 7, keepalive.marker(NONCE, 3)))
    assert (probe.src, probe.dst, probe.proto, probe.ttl) == ("198.51.100.2", "192.0.2.1",
                                                              47, 255)
    reply = probe[GRE]
    assert (reply.proto, reply.key, reply.sequence_number) == (0, 7, 0)
    sent = reply.chksum
    del reply.chksum
    assert GRE(bytes(reply)).chksum == sent
    sent_ip = probe.chksum
    del probe.chksum
    assert IP(bytes(probe)).chksum == sent_ip


def test_the_ipip_probe_carries_a_protocol_253_packet_back_to_us():
    probe = IP(keepalive.ipip_probe(LOCAL, REMOTE, keepalive.marker(NONCE, 1)))
    inner = probe.payload
    assert probe.proto == 4 and (inner.src, inner.dst, inner.proto) == (
        "192.0.2.1", "198.51.100.2", 253)
    assert keepalive.reflected_ipip_probe(bytes(inner))


def test_the_sit_probe_is_an_echo_that_scapy_answers_as_we_do():
    request = keepalive.sit_probe(LOCAL, REMOTE, 9, keepalive.marker(NONCE, 9))
    parsed = IPv6(request)
    assert (parsed.src, parsed.dst) == ("fe80::c000:201", "fe80::c633:6402")
    assert parsed[ICMPv6EchoRequest].seq == 9
    assert keepalive.icmp6_echo_kind(request) == keepalive.ICMP6_ECHO_REQUEST
    reply = keepalive.icmp6_echo_reply(request)
    theirs = IPv6(src=parsed.dst, dst=parsed.src, hlim=255) / ICMPv6EchoReply(
        id=parsed[ICMPv6EchoRequest].id, seq=9, data=parsed[ICMPv6EchoRequest].data)
    assert reply == bytes(theirs)
    assert keepalive.icmp6_echo_kind(reply) == keepalive.ICMP6_ECHO_REPLY


def test_the_ethernet_probe_and_its_answer():
    marker = keepalive.marker(NONCE, 4)
    frame = keepalive.ethernet_probe(keepalive.PROBE_REQUEST, marker)
    assert Ether(frame).type == 0x88B5 and not Ether(frame).dst.startswith("ff")
    assert keepalive.ethernet_probe_kind(frame) == keepalive.PROBE_REQUEST
    assert keepalive.ethernet_probe_kind(bytes(Ether(type=0x0800) / (b"x" * 40))) == 0
    assert keepalive.ethernet_probe_kind(frame[:20]) == 0
