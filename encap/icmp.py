"""ICMP errors the router sends itself, and which WAN errors it relays.

Two jobs. First, build a complete ICMPv4 or ICMPv6 error packet about an
offending packet (frag-needed, packet-too-big, time-exceeded, unreachable),
unless the RFCs forbid an error about that packet: errors about errors,
broadcasts and forged sources are how ICMP storms start. Second, when a
router inside the tunnel answers one of our *outer* packets with an ICMPv4
error, decide which error, if any, the inner packet's sender should get
(RFC 2003 §4, RFC 4213 §3.4); ``parse_quoted_ipv4`` reads the outer header
that error quotes.
"""

import enum
import struct

from encap.checksum import internet_checksum, pseudo_header_sum
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ipv4 import FRAGMENT_OFFSET_MASK, IPV4_HEADER
from encap.ipv6 import IPV6_HEADER, LATER_FRAGMENT, walk_extension_headers
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH, IpProto


class Icmp4Type(enum.IntEnum):
    """The ICMPv4 error types (RFC 792); queries such as echo are not errors."""

    DEST_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


class Icmp4Unreachable(enum.IntEnum):
    """Codes of ICMPv4 Destination Unreachable (RFC 792)."""

    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTOCOL_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAGMENTATION_NEEDED = 4
    SOURCE_ROUTE_FAILED = 5


class Icmp4TimeExceeded(enum.IntEnum):
    TTL_EXCEEDED = 0


class Icmp6Type(enum.IntEnum):
    DEST_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    REDIRECT = 137


class Icmp6Unreachable(enum.IntEnum):
    ADDRESS_UNREACHABLE = 3


class Icmp6TimeExceeded(enum.IntEnum):
    HOP_LIMIT_EXCEEDED = 0


class Icmp6ParameterProblem(enum.IntEnum):
    UNRECOGNIZED_OPTION = 2


# RFC 1122 §3.2.2: no error about these; errors about queries (echo, timestamp) are fine.
ICMP4_ERROR_TYPES = frozenset(Icmp4Type)
# RFC 4443 §2.1: types below 128 are errors, from 128 up informational.
ICMP6_FIRST_INFORMATIONAL_TYPE = 128

# The largest error message each family may send: RFC 1812 §4.3.2.3 (the
# IPv4 minimum reassembly size) and RFC 4443 §2.4 (c) (the IPv6 minimum MTU).
ICMP4_ERROR_MAX = 576
ICMP6_ERROR_MAX = 1280
ICMP_HEADER_LENGTH = 8

# Linux sends its ICMP errors with TOS 0xc0 (internetwork control precedence).
ICMP4_ERROR_TOS = 0xC0
ERROR_HOP_LIMIT = 64

ICMP_HEADER = struct.Struct("!BBHI")
QUOTED_IPV4 = struct.Struct("!B8xB2x4s4s")

_IPV6_UNSPECIFIED = bytes(16)
_IPV6_MULTICAST_PREFIX = 0xFF
# RFC 8200 §4.2: an option type whose two high bits are 10 asks for a
# Parameter Problem even when the packet was sent to a multicast address.
_OPTION_ACTION_ICMP_EVEN_MULTICAST = 0b10


def _quote(view: memoryview, end: int, header_length: int, room: int) -> memoryview:
    """What to quote of the offending packet: at most ``room`` bytes.

    ``end`` is where the packet's length field says it ends; bytes past it
    (link-layer padding, a reused buffer) are not the packet's to quote. A
    length field that is past the buffer (a truncated packet) or below the
    header (garbage) is no guide, and the whole buffer is quoted.
    """
    if header_length <= end < len(view):
        view = view[:end]
    return view[:room]


def _check_arguments(source: bytes, address_length: int, icmp_type: int, code: int,
                     word: int, word_bits: int) -> None:
    if len(source) != address_length:
        raise EncapConfigError(f"the error's source must be {address_length} packed bytes")
    if not (0 <= icmp_type <= 0xFF and 0 <= code <= 0xFF):
        raise EncapConfigError(f"ICMP type {icmp_type} or code {code} does not fit a byte")
    if not 0 <= word < 1 << word_bits:
        raise EncapConfigError(f"{word} does not fit the {word_bits}-bit field after the checksum")


def _ipv4_source_is_a_host(address: memoryview) -> bool:
    """RFC 1812 §4.3.2.7 / RFC 1122 §3.2.2: the source names one host.

    Not 0/8 (this network), 127/8 (loopback), 224/4 (multicast), 240/4
    (reserved) or 255.255.255.255 (limited broadcast, inside 240/4).
    """
    first = address[0]
    return first not in (0, 127) and first < 224


def _ipv4_may_answer(view: memoryview) -> bool:
    """Whether RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7 allow an error about ``view``."""
    if len(view) < IPV4_HEADER_LENGTH or view[0] >> 4 != 4 or view[0] & 0x0F < 5:
        return False
    if (view[6] << 8 | view[7]) & FRAGMENT_OFFSET_MASK:
        return False
    if not _ipv4_source_is_a_host(view[12:16]) or view[16] >= 224:
        return False
    icmp_type_at = (view[0] & 0x0F) * 4
    return not (view[9] == IpProto.ICMP and icmp_type_at < len(view)
                and view[icmp_type_at] in ICMP4_ERROR_TYPES)


def icmp4_error(offending: memoryview | bytes, icmp_type: int, code: int, source: bytes, *,
                mtu: int = 0, identification: int = 0) -> bytes | None:
    """An IPv4 packet from ``source`` carrying an ICMP error about ``offending``.

    ``mtu`` is the next-hop MTU of a Fragmentation Needed error, which
    RFC 1191 §4 puts in the low 16 bits of the otherwise unused word. The
    quote is as much of ``offending`` as keeps the packet within 576 bytes
    (RFC 1812 §4.3.2.3); ``offending`` may be truncated. Returns None where
    no error may be sent (see ``_ipv4_may_answer``).
    """
    _check_arguments(source, 4, icmp_type, code, mtu, 16)
    view = memoryview(offending)
    if not _ipv4_may_answer(view):
        return None
    quote = _quote(view, view[2] << 8 | view[3], (view[0] & 0x0F) * 4,
                   ICMP4_ERROR_MAX - IPV4_HEADER_LENGTH - ICMP_HEADER_LENGTH)
    message = bytearray(ICMP_HEADER.pack(icmp_type, code, 0, mtu))
    message += quote
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    total_length = IPV4_HEADER_LENGTH + len(message)
    header = bytearray(IPV4_HEADER.pack(
        0x45, ICMP4_ERROR_TOS, total_length, identification & 0xFFFF, 0, ERROR_HOP_LIMIT,
        IpProto.ICMP, 0, source, bytes(view[12:16])))
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header + message)


def _may_be_icmp6_error(view: memoryview) -> bool:
    """Whether the packet is, or for all we can see may be, an ICMPv6 error or redirect.

    A packet whose extension headers are cut short may be anything, so it
    counts as one. A later fragment does not start with its upper-layer
    header, nor does a packet cut short before the ICMPv6 type show it:
    neither counts.
    """
    try:
        protocol, offset, fragment = walk_extension_headers(view, view[6], IPV6_HEADER_LENGTH,
                                                            len(view))
    except DecodeError:
        return True
    return (protocol == IpProto.ICMPV6 and fragment != LATER_FRAGMENT and offset < len(view)
            and (view[offset] < ICMP6_FIRST_INFORMATIONAL_TYPE
                 or view[offset] == Icmp6Type.REDIRECT))


def _ipv6_may_answer(view: memoryview, icmp_type: int, code: int, parameter: int) -> bool:
    """Whether RFC 4443 §2.4 (e) allows an ICMPv6 error about ``view``."""
    if len(view) < IPV6_HEADER_LENGTH or view[0] >> 4 != 6:
        return False
    source = view[8:24]
    if source[0] == _IPV6_MULTICAST_PREFIX or source == _IPV6_UNSPECIFIED:      # (e.6)
        return False
    if view[24] == _IPV6_MULTICAST_PREFIX and not (                             # (e.3)
            icmp_type == Icmp6Type.PACKET_TOO_BIG
            or (icmp_type == Icmp6Type.PARAMETER_PROBLEM
                and code == Icmp6ParameterProblem.UNRECOGNIZED_OPTION
                and parameter < len(view)
                and view[parameter] >> 6 == _OPTION_ACTION_ICMP_EVEN_MULTICAST)):
        return False
    return not _may_be_icmp6_error(view)                                        # (e.1), (e.2)


def icmp6_error(offending: memoryview | bytes, icmp_type: int, code: int, source: bytes, *,
                parameter: int = 0) -> bytes | None:
    """An IPv6 packet from ``source`` carrying an ICMPv6 error about ``offending``.

    ``parameter`` is the 32-bit word after the checksum: the MTU of a Packet
    Too Big, the pointer of a Parameter Problem, else 0 (RFC 4443 §3). The
    quote keeps the packet within 1280 bytes (RFC 4443 §2.4 (c)). Returns
    None where RFC 4443 §2.4 (e) forbids the error, or where the extension
    header chain is cut short so that (e.1) cannot be checked.
    """
    _check_arguments(source, 16, icmp_type, code, parameter, 32)
    view = memoryview(offending)
    if not _ipv6_may_answer(view, icmp_type, code, parameter):
        return None
    quote = _quote(view, IPV6_HEADER_LENGTH + (view[4] << 8 | view[5]), IPV6_HEADER_LENGTH,
                   ICMP6_ERROR_MAX - IPV6_HEADER_LENGTH - ICMP_HEADER_LENGTH)
    destination = bytes(view[8:24])
    message = bytearray(ICMP_HEADER.pack(icmp_type, code, 0, parameter))
    message += quote
    initial = pseudo_header_sum(source, destination, IpProto.ICMPV6, len(message))
    message[2:4] = internet_checksum(message, initial).to_bytes(2, "big")
    header = IPV6_HEADER.pack(0x60000000, len(message), IpProto.ICMPV6, ERROR_HOP_LIMIT,
                                    source, destination)
    return header + bytes(message)


# Which ICMPv4 errors about an outer packet the inner sender hears of, and how.
# RFC 2003 §4.1: after Net (0) or Protocol (2) Unreachable "SHOULD send a
# Destination Unreachable message with Code 0 or 1"; we send 1, Host
# Unreachable, which the RFC allows where the tunnel extends the
# destination's network, as ours does. Host Unreachable (1) SHOULD be
# relayed; Fragmentation Needed (4) MUST be (the caller fills in the MTU);
# Port Unreachable (3) and Source Route Failed (5) MUST NOT be. §4.4: Time
# Exceeded MUST be reported as Host Unreachable. §4.2, §4.3: no Source
# Quench, no Redirect. §4.5 makes relaying a Parameter Problem a MAY at
# most; we do not.
_FRAGMENTATION_NEEDED = (Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.FRAGMENTATION_NEEDED)
_REPORTED_AS_UNREACHABLE = (
    (Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.NET_UNREACHABLE),
    (Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.HOST_UNREACHABLE),
    (Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.PROTOCOL_UNREACHABLE),
    (Icmp4Type.TIME_EXCEEDED, Icmp4TimeExceeded.TTL_EXCEEDED),
)
_RELAYED_TO_IPV4 = dict.fromkeys(
    _REPORTED_AS_UNREACHABLE, (Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.HOST_UNREACHABLE),
) | {_FRAGMENTATION_NEEDED: _FRAGMENTATION_NEEDED}
# RFC 4213 §3.4 for IPv6 inside: a too-small path MTU becomes Packet Too Big;
# the rest becomes Address Unreachable, as Linux's ip6_err_gen_icmpv6_unreach
# sends it. (Linux sends Time Exceeded for Time Exceeded instead, so that
# traceroute6 shows the WAN hops; we keep RFC 2003 §4.4's reasoning: the
# inner hop limit did not run out, and a loop inside the tunnel makes the
# destination unreachable.)
_RELAYED_TO_IPV6 = dict.fromkeys(
    _REPORTED_AS_UNREACHABLE, (Icmp6Type.DEST_UNREACHABLE, Icmp6Unreachable.ADDRESS_UNREACHABLE),
) | {_FRAGMENTATION_NEEDED: (Icmp6Type.PACKET_TOO_BIG, 0)}
_RELAYED = {4: _RELAYED_TO_IPV4, 6: _RELAYED_TO_IPV6}


def relayed_error(icmp_type: int, code: int, inner_family: int) -> tuple[int, int] | None:
    """The ``(type, code)`` to send the inner packet's source, or None to relay nothing.

    ``icmp_type`` and ``code`` are those of an ICMPv4 error a WAN router
    sent about one of our outer packets; ``inner_family`` is 4 or 6.
    """
    table = _RELAYED.get(inner_family)
    if table is None:
        raise EncapConfigError(f"inner family {inner_family} is neither 4 nor 6")
    return table.get((icmp_type, code))


def parse_quoted_ipv4(quoted: memoryview) -> tuple[int, bytes, bytes, memoryview]:
    """Read the IPv4 header an ICMP error quotes: ``(protocol, source, destination, rest)``.

    The quote is usually cut short (RFC 792 asks for 8 bytes past the
    header), so its total length and checksum are not checked; the header
    itself must all be there. ``rest`` is whatever follows it.
    """
    if len(quoted) < IPV4_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    first, protocol, source, destination = QUOTED_IPV4.unpack_from(quoted)
    if first >> 4 != 4:
        raise DecodeError(DropReason.IP_BAD_VERSION)
    header_length = (first & 0x0F) * 4
    if header_length < IPV4_HEADER_LENGTH or header_length > len(quoted):
        raise DecodeError(DropReason.IP_BAD_HEADER_LENGTH)
    return protocol, source, destination, quoted[header_length:]
