"""TCP MSS clamping: only ever lowers, fixes the checksum incrementally, never guesses."""

import struct
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from encap.checksum import checksum_ok, internet_checksum, pseudo_header_sum
from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer
from encap.mss import MssAction, _tcp_segment, clamp_mss, clamp_mss_bytes, clamp_mss_in_frame
from encap.wire import IpProto

from tests.encap.strategies import ip_packets, mutated

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10

MSS_1460 = bytes.fromhex("020405b4")
NOP, EOL = b"\x01", b"\x00"
SACK_OK = bytes.fromhex("0402")
WSCALE_7 = bytes.fromhex("030307")
TIMESTAMP = bytes.fromhex("080a" "00000001" "00000000")


def tcp_segment(src: bytes, dst: bytes, options: bytes, flags: int = SYN, payload: bytes = b"") -> bytes:
    """A TCP segment with a valid checksum; ``options`` are padded with EOL to 4 bytes."""
    options += EOL * (-len(options) % 4)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, offset << 4, flags, 64240, 0, 0) + options
    segment = bytearray(header + payload)
    initial = pseudo_header_sum(src, dst, IpProto.TCP, len(segment))
    segment[16:18] = internet_checksum(segment, initial).to_bytes(2, "big")
    return bytes(segment)


def syn_v4(options: bytes, flags: int = SYN) -> bytes:
    return Ipv4Outer(SRC4, DST4, IpProto.TCP).encap(tcp_segment(SRC4, DST4, options, flags))


def syn_v6(options: bytes, flags: int = SYN) -> bytes:
    return Ipv6Outer(SRC6, DST6, IpProto.TCP).encap(tcp_segment(SRC6, DST6, options, flags))


def tcp_checksum_ok(packet: bytes) -> bool:
    if packet[0] >> 4 == 4:
        segment, src, dst = packet[20:], SRC4, DST4
    else:
        segment, src, dst = packet[40:], SRC6, DST6
    return checksum_ok(segment, pseudo_header_sum(src, dst, IpProto.TCP, len(segment)))


def mss_of(packet: bytes) -> int:
    """The MSS as scapy, an independent option parser, reads it."""
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    return dict(parsed[TCP].options)["MSS"]


@pytest.mark.parametrize("build", [syn_v4, syn_v6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("flags", [SYN, SYN_ACK], ids=["syn", "syn-ack"])
def test_lowers_a_larger_mss_and_keeps_the_checksum_valid(build, flags):
    packet = build(MSS_1460 + SACK_OK + TIMESTAMP + NOP + WSCALE_7, flags)
    clamped, action = clamp_mss_bytes(packet, 1360, 1340)
    assert action == MssAction.CLAMPED
    assert mss_of(clamped) == (1360 if build is syn_v4 else 1340)
    assert tcp_checksum_ok(clamped)
    differing = [i for i in range(len(packet)) if packet[i] != clamped[i]]
    assert len(differing) <= 4     # two MSS bytes and two checksum bytes, nothing else


@pytest.mark.parametrize("options", [NOP + MSS_1460 + NOP + NOP + SACK_OK,
                                     WSCALE_7 + MSS_1460 + NOP])
def test_mss_at_an_odd_offset_is_fixed_byte_swapped(options):
    packet = syn_v4(options)
    assert (packet.index(MSS_1460, 40) - 20) % 2 == 1
    clamped, action = clamp_mss_bytes(packet, 1360, 1340)
    assert action == MssAction.CLAMPED and mss_of(clamped) == 1360 and tcp_checksum_ok(clamped)


def test_smaller_or_equal_mss_is_left_alone():
    for mss in (1360, 536):
        packet = syn_v4(bytes.fromhex("0204") + mss.to_bytes(2, "big"))
        assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.WITHIN_LIMIT)


def test_no_option_is_ever_added():
    packet = syn_v4(SACK_OK + NOP + WSCALE_7)
    assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.NO_MSS_OPTION)


def test_options_after_end_of_list_are_not_read():
    packet = syn_v4(EOL + MSS_1460)
    assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.NO_MSS_OPTION)


def test_segments_without_syn_are_left_alone():
    packet = syn_v4(MSS_1460, flags=ACK)
    assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.NOT_A_SYN)


@pytest.mark.parametrize("options", [
    bytes.fromhex("08ff") + MSS_1460,           # an option whose length runs past the header
    bytes.fromhex("020305b4"),                  # MSS with length 3
    bytes.fromhex("0201"),                      # length below 2
    MSS_1460 + bytes.fromhex("0800"),           # a bad option after a good MSS
    NOP * 3 + b"\x08",                          # kind byte with no room for its length
])
def test_malformed_option_lists_leave_the_packet_untouched(options):
    packet = syn_v4(options)
    assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.MALFORMED_OPTIONS)


def test_data_offset_past_the_packet_is_malformed():
    packet = bytearray(syn_v4(MSS_1460))
    packet[32] = 0xF0
    assert clamp_mss_bytes(bytes(packet), 1360, 1340)[1] == MssAction.MALFORMED_OPTIONS


def test_every_mss_option_is_clamped():
    # Linux honours the last MSS option, nftables rewrites the first: lower them all.
    clamped, action = clamp_mss_bytes(syn_v4(MSS_1460 + MSS_1460), 1360, 1340)
    assert action == MssAction.CLAMPED and clamped.count(bytes.fromhex("02040550")) == 2
    assert tcp_checksum_ok(clamped)


def test_ipv6_extension_headers_are_walked_to_tcp():
    tcp = tcp_segment(SRC6, DST6, MSS_1460)
    hop_by_hop = bytes([IpProto.TCP, 0, 1, 4, 0, 0, 0, 0])
    packet = bytearray(Ipv6Outer(SRC6, DST6, IpProto.HOPOPT).encap(hop_by_hop + tcp))
    clamped, action = clamp_mss_bytes(bytes(packet), 1360, 1340)
    assert action == MssAction.CLAMPED
    assert checksum_ok(clamped[48:], pseudo_header_sum(SRC6, DST6, IpProto.TCP, len(tcp)))


def test_non_first_fragments_and_other_protocols_are_not_touched():
    fragment = bytearray(syn_v4(MSS_1460))
    fragment[6:8] = b"\x00\x10"
    udp = Ipv4Outer(SRC4, DST4, IpProto.UDP).encap(bytes(40))
    for packet in (bytes(fragment), udp, b"", b"\x45", bytes(40)):
        assert clamp_mss_bytes(packet, 1360, 1340) == (packet, MssAction.NOT_A_SYN)


def test_works_in_place_on_a_slice_of_a_larger_buffer():
    packet = syn_v4(MSS_1460)
    buf = bytearray(64) + bytearray(packet) + bytearray(16)
    view = memoryview(buf)[64:64 + len(packet)]
    assert clamp_mss(view, 1360, 1340) == MssAction.CLAMPED
    assert buf[:64] == bytes(64) and buf[-16:] == bytes(16) and mss_of(bytes(view)) == 1360


@given(st.integers(0, 0xFFFF), st.integers(1, 0xFFFF), st.sampled_from([syn_v4, syn_v6]),
       st.lists(st.sampled_from([NOP, SACK_OK, WSCALE_7, TIMESTAMP]), max_size=3))
def test_only_ever_lowers_and_always_keeps_a_valid_checksum(mss, limit, build, extra):
    packet = build(b"".join(extra) + bytes.fromhex("0204") + mss.to_bytes(2, "big"))
    clamped, action = clamp_mss_bytes(packet, limit, limit)
    assert mss_of(clamped) == min(mss, limit)
    assert action == (MssAction.CLAMPED if mss > limit else MssAction.WITHIN_LIMIT)
    assert tcp_checksum_ok(clamped)


TCP_SEGMENTS = st.builds(
    lambda v6, options, flags, payload: (syn_v6 if v6 else syn_v4)(options, flags) + payload,
    st.booleans(), st.sampled_from([b"", MSS_1460, MSS_1460 + SACK_OK + TIMESTAMP + NOP + WSCALE_7,
                                    NOP + MSS_1460]),
    st.sampled_from([SYN, SYN_ACK, ACK]), st.binary(max_size=40))


def with_length_field(packet: bytes, length: int) -> bytes:
    """``packet`` claiming another IPv4 total length or IPv6 payload length."""
    at = 2 if packet[0] >> 4 == 4 else 4
    return packet[:at] + length.to_bytes(2, "big") + packet[at + 2:]


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=80), mutated(TCP_SEGMENTS), mutated(ip_packets),
                 st.builds(with_length_field, TCP_SEGMENTS, st.integers(0, 80))))
def test_the_one_read_syn_test_agrees_with_the_general_walk(packet):
    # clamp_mss settles the usual shapes with one struct read; _tcp_segment is the
    # general header walk behind it, and must come to the same answer on anything.
    action = clamp_mss(memoryview(bytearray(packet)), 1360, 1340)
    tcp, _ = _tcp_segment(memoryview(packet))
    assert (action == MssAction.NOT_A_SYN) == (tcp < 0)


LINUX = MSS_1460 + SACK_OK + TIMESTAMP + NOP + WSCALE_7
WINDOWS = MSS_1460 + NOP + WSCALE_7 + NOP + NOP + SACK_OK
MACOS = MSS_1460 + NOP + WSCALE_7 + NOP + NOP + TIMESTAMP + SACK_OK + EOL + EOL


@st.composite
def changed_option_lists(draw):
    options = bytearray(draw(st.sampled_from([LINUX, WINDOWS, MACOS])))
    for _ in range(draw(st.integers(0, 2))):
        options[draw(st.integers(0, len(options) - 1))] = draw(
            st.one_of(st.integers(0, 10), st.integers(0, 255)))
    return bytes(options)


@settings(max_examples=300)
@given(changed_option_lists(), st.sampled_from([syn_v4, syn_v6]))
def test_known_option_lists_are_read_as_the_walk_reads_them(options, syn):
    # The common stacks' option lists are recognised by their kind and length bytes
    # with one read; changed in any byte, they must still give what the walk gives.
    packet = syn(options)
    recognised = clamp_mss_bytes(packet, 1360, 1340)
    with patch.dict("encap.mss._KNOWN_OPTION_LISTS", clear=True):
        assert clamp_mss_bytes(packet, 1360, 1340) == recognised


@pytest.mark.parametrize("options", [LINUX, WINDOWS, MACOS], ids=["linux", "windows", "macos"])
def test_known_option_lists_are_clamped(options):
    clamped, action = clamp_mss_bytes(syn_v4(options), 1360, 1340)
    assert action == MssAction.CLAMPED and mss_of(clamped) == 1360 and tcp_checksum_ok(clamped)


# -- in an Ethernet frame (TAP devices) -------------------------------------------------------

ETHERNET_IPV4, ETHERNET_IPV6, ETHERNET_ARP = (bytes(12) + bytes.fromhex(t) for t in
                                              ("0800", "86dd", "0806"))


@pytest.mark.parametrize("frame_header, packet", [
    (ETHERNET_IPV4, syn_v4(MSS_1460)), (ETHERNET_IPV6, syn_v6(MSS_1460)),
    (ETHERNET_IPV4, syn_v4(MSS_1460, ACK)), (ETHERNET_IPV4, syn_v4(NOP + MSS_1460 + NOP * 2)),
])
def test_in_a_frame_the_clamp_is_the_clamp_of_the_ip_packet(frame_header, packet):
    frame = bytearray(frame_header + packet)
    alone = bytearray(packet)
    assert clamp_mss_in_frame(memoryview(frame), 1360, 1340) == clamp_mss(memoryview(alone),
                                                                          1360, 1340)
    assert frame == frame_header + alone


@pytest.mark.parametrize("frame", [ETHERNET_ARP + syn_v4(MSS_1460), ETHERNET_IPV4[:10],
                                   ETHERNET_IPV4 + syn_v4(MSS_1460)[:30]])
def test_a_frame_without_a_whole_tcp_syn_in_it_is_left_alone(frame):
    buf = bytearray(frame)
    assert clamp_mss_in_frame(memoryview(buf), 1360, 1340) in (MssAction.NOT_A_SYN,
                                                               MssAction.MALFORMED_OPTIONS)
    assert buf == frame
