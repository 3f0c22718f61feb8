"""Explicit Congestion Notification across the tunnel (RFC 6040).

The ECN field is the two low bits of the IPv4 TOS byte and of the IPv6
traffic class (RFC 3168 §5). The encapsulator chooses the outer field from
the inner one (§4.1); the decapsulator folds the outer field back into the
inner packet (§4.2, Figure 4), so that congestion marked inside the tunnel
reaches the receiver. ``decapsulated_ecn``, ``packet_ecn`` and
``set_packet_ecn`` run for every packet: one table index, no allocation.
"""

import enum

from encap.checksum import checksum_update
from encap.errors import DecodeError, DropReason
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH

NOT_ECT = 0
ECT_1 = 1
ECT_0 = 2
CE = 3
ECN_MASK = 0x03

# What decapsulated_ecn returns where Figure 4 says <drop>.
DROP = -1

_IPV4_CHECKSUM_OFFSET = 10
# The IPv6 ECN bits are bits 20-21 of the first word: bits 5-4 of byte 1.
_IPV6_ECN_SHIFT = 4


class EcnMode(enum.StrEnum):
    """The two ingress modes of RFC 6040 §4.1."""

    NORMAL = "normal"                  # copy the inner ECN field, CE included
    COMPATIBILITY = "compatibility"    # Not-ECT outside, for legacy decapsulators


def outer_ecn(inner_ecn: int, mode: EcnMode) -> int:
    """The outer ECN field for an inner one (RFC 6040 §4.1, Figure 3).

    Normal mode copies even CE: RFC 6040 §4.1 lifts RFC 3168's rule that
    the encapsulator reset CE, since a compliant egress never lets an outer
    CE reach a Not-ECT receiver.
    """
    return NOT_ECT if mode == EcnMode.COMPATIBILITY else inner_ecn


# RFC 6040 §4.2, Figure 4, row by row as printed: arriving inner header,
# then (arriving outer header: outgoing inner header).
_FIGURE_4 = {
    NOT_ECT: {NOT_ECT: NOT_ECT, ECT_0: NOT_ECT, ECT_1: NOT_ECT, CE: DROP},
    ECT_0: {NOT_ECT: ECT_0, ECT_0: ECT_0, ECT_1: ECT_1, CE: CE},
    ECT_1: {NOT_ECT: ECT_1, ECT_0: ECT_1, ECT_1: ECT_1, CE: CE},
    CE: {NOT_ECT: CE, ECT_0: CE, ECT_1: CE, CE: CE},
}
_DECAPSULATED = tuple(_FIGURE_4[inner][outer] for inner in range(4) for outer in range(4))

# The cells Figure 4 marks "(!!!)": no compliant ingress sends them, so the
# egress SHOULD log them (§4.2). The "(!)" cell, inner ECT(1) under outer
# ECT(0), is left out: the RFC calls it valid, merely of interest.
UNUSED_COMBINATIONS = frozenset({
    (NOT_ECT, ECT_0), (NOT_ECT, ECT_1), (NOT_ECT, CE), (CE, ECT_1),
})


def decapsulated_ecn(inner_ecn: int, outer_ecn: int) -> int:
    """The inner packet's new ECN field (RFC 6040 §4.2, Figure 4), or ``DROP``.

    ``DROP`` is the answer to CE outside a Not-ECT packet: the congestion
    cannot be signalled to a transport that does not understand ECN, and
    dropping is the signal it does understand.
    """
    return _DECAPSULATED[inner_ecn << 2 | outer_ecn]


def packet_ecn(packet: memoryview) -> int:
    """The ECN field of an IPv4 or IPv6 packet."""
    size = len(packet)
    version = packet[0] >> 4 if size else 0
    if version == 4 and size >= IPV4_HEADER_LENGTH:
        return packet[1] & ECN_MASK
    if version == 6 and size >= IPV6_HEADER_LENGTH:
        return packet[1] >> _IPV6_ECN_SHIFT & ECN_MASK
    raise DecodeError(DropReason.INNER_MALFORMED)


def set_packet_ecn(packet: memoryview, ecn: int) -> None:
    """Rewrite the ECN field of an IPv4 or IPv6 packet in place.

    IPv4 has a header checksum; it is updated for the one changed word
    (RFC 1624), not recomputed, so a header that arrived with a bad
    checksum keeps it bad and the receiver still drops it.
    """
    size = len(packet)
    version = packet[0] >> 4 if size else 0
    if version == 4 and size >= IPV4_HEADER_LENGTH:
        old_word = packet[0] << 8 | packet[1]
        new_word = old_word & ~ECN_MASK | ecn
        checksum = packet[_IPV4_CHECKSUM_OFFSET] << 8 | packet[_IPV4_CHECKSUM_OFFSET + 1]
        checksum = checksum_update(checksum, old_word, new_word)
        packet[1] = new_word & 0xFF
        packet[_IPV4_CHECKSUM_OFFSET] = checksum >> 8
        packet[_IPV4_CHECKSUM_OFFSET + 1] = checksum & 0xFF
    elif version == 6 and size >= IPV6_HEADER_LENGTH:
        packet[1] = packet[1] & ~(ECN_MASK << _IPV6_ECN_SHIFT) | ecn << _IPV6_ECN_SHIFT
    else:
        raise DecodeError(DropReason.INNER_MALFORMED)
