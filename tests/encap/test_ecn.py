"""ECN across the tunnel, RFC 6040: what goes outside, and what comes back in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from encap.checksum import checksum_ok
from encap.ecn import (
    CE, DROP, ECT_0, ECT_1, NOT_ECT, UNUSED_COMBINATIONS, EcnMode, decapsulated_ecn, outer_ecn,
    packet_ecn, set_packet_ecn,
)
from encap.errors import DecodeError, DropReason

from tests.encap.strategies import ipv4_packets

NAMES = {NOT_ECT: "Not-ECT", ECT_0: "ECT(0)", ECT_1: "ECT(1)", CE: "CE", DROP: "<drop>"}
EVERY_ECN = [NOT_ECT, ECT_0, ECT_1, CE]


def test_codepoints_are_rfc_3168s():
    # RFC 3168 §5: ECT(1) is 01, ECT(0) is 10.
    assert (NOT_ECT, ECT_1, ECT_0, CE) == (0b00, 0b01, 0b10, 0b11)


# RFC 6040 §4.1, Figure 3: normal mode copies, compatibility mode sends Not-ECT.
@pytest.mark.parametrize("inner", EVERY_ECN, ids=NAMES.get)
@pytest.mark.parametrize("mode, expected", [
    (EcnMode.NORMAL, {NOT_ECT: NOT_ECT, ECT_0: ECT_0, ECT_1: ECT_1, CE: CE}),
    (EcnMode.COMPATIBILITY, dict.fromkeys(EVERY_ECN, NOT_ECT)),
], ids=["normal", "compatibility"])
def test_encapsulation(inner, mode, expected):
    assert outer_ecn(inner, mode) == expected[inner]


# RFC 6040 §4.2, Figure 4, one cell a case: (arriving inner, arriving outer, outgoing).
FIGURE_4 = [
    (NOT_ECT, NOT_ECT, NOT_ECT), (NOT_ECT, ECT_0, NOT_ECT), (NOT_ECT, ECT_1, NOT_ECT),
    (NOT_ECT, CE, DROP),
    (ECT_0, NOT_ECT, ECT_0), (ECT_0, ECT_0, ECT_0), (ECT_0, ECT_1, ECT_1), (ECT_0, CE, CE),
    (ECT_1, NOT_ECT, ECT_1), (ECT_1, ECT_0, ECT_1), (ECT_1, ECT_1, ECT_1), (ECT_1, CE, CE),
    (CE, NOT_ECT, CE), (CE, ECT_0, CE), (CE, ECT_1, CE), (CE, CE, CE),
]


@pytest.mark.parametrize("inner, outer, expected", FIGURE_4,
                         ids=[f"inner {NAMES[i]}, outer {NAMES[o]} -> {NAMES[e]}"
                              for i, o, e in FIGURE_4])
def test_decapsulation_figure_4(inner, outer, expected):
    assert decapsulated_ecn(inner, outer) == expected


def test_unused_combinations_are_the_cells_marked_with_three_bangs():
    # Figure 4's "(!!!)"; the "(!)" on inner ECT(1) under outer ECT(0) is not one.
    assert UNUSED_COMBINATIONS == {(NOT_ECT, ECT_0), (NOT_ECT, ECT_1), (NOT_ECT, CE), (CE, ECT_1)}
    assert (ECT_1, ECT_0) not in UNUSED_COMBINATIONS


def scapy_ipv4_checksum_ok(packet: bytes) -> bool:
    """scapy recomputes the header checksum; it must equal the one in ``packet``."""
    parsed = IP(packet)
    stored = parsed.chksum
    parsed.chksum = None
    return IP(bytes(parsed)).chksum == stored


@pytest.mark.parametrize("ecn", EVERY_ECN, ids=NAMES.get)
@pytest.mark.parametrize("dscp", [0, 46 << 2], ids=["best effort", "EF"])
def test_set_on_ipv4_keeps_a_checksum_scapy_accepts(ecn, dscp):
    original = bytes(IP(src="10.1.1.1", dst="10.2.1.1", tos=dscp | CE, ttl=9) / UDP() / b"data")
    packet = bytearray(original)
    set_packet_ecn(memoryview(packet), ecn)
    assert IP(bytes(packet)).tos == dscp | ecn
    assert packet_ecn(memoryview(packet)) == ecn
    assert scapy_ipv4_checksum_ok(bytes(packet))
    changed = {i for i in range(len(packet)) if packet[i] != original[i]}
    assert changed <= {1, 10, 11}      # TOS and the header checksum, nothing else


@pytest.mark.parametrize("ecn", EVERY_ECN, ids=NAMES.get)
@pytest.mark.parametrize("traffic_class", [0x00, 0xFF, 0xB8])
def test_set_on_ipv6_changes_only_the_two_ecn_bits(ecn, traffic_class):
    original = bytes(IPv6(src="fd01::1", dst="fd02::1", tc=traffic_class, fl=0xABCDE) / UDP())
    packet = bytearray(original)
    set_packet_ecn(memoryview(packet), ecn)
    assert IPv6(bytes(packet)).tc == traffic_class & 0xFC | ecn
    assert IPv6(bytes(packet)).fl == 0xABCDE
    assert packet_ecn(memoryview(packet)) == ecn
    flipped = {i: packet[i] ^ original[i] for i in range(len(packet)) if packet[i] != original[i]}
    assert set(flipped) <= {1} and flipped.get(1, 0) & ~0x30 == 0     # bits 5-4 of byte 1


@given(ipv4_packets(max_payload=64), st.sampled_from(EVERY_ECN))
def test_set_then_get_on_any_ipv4_header(packet, ecn):
    packet = bytearray(packet)
    set_packet_ecn(memoryview(packet), ecn)
    assert packet_ecn(memoryview(packet)) == ecn
    assert checksum_ok(packet[:20])


@pytest.mark.parametrize("packet", [b"", bytes([0x45]) * 19, bytes([0x60]) * 39, bytes([0x55]) * 60],
                         ids=["empty", "ipv4 short", "ipv6 short", "version 5"])
def test_a_packet_that_is_not_ip_is_malformed(packet):
    for operation in (packet_ecn, lambda view: set_packet_ecn(view, CE)):
        with pytest.raises(DecodeError) as caught:
            operation(memoryview(bytearray(packet)))
        assert caught.value.reason == DropReason.INNER_MALFORMED
