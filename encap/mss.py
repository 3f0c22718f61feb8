"""TCP MSS clamping of SYN and SYN-ACK segments, IPv4 and IPv6, in place.

Behaves like nftables' ``tcp option maxseg size set``: the option is only
ever lowered, a SYN without one is left alone (no option is added), and the
TCP checksum is fixed incrementally (RFC 1624). An option list that does not
parse (a length that overruns, a short MSS option) leaves the whole packet
untouched and says so.
"""

import enum
import struct

from encap.checksum import checksum_update
from encap.errors import DecodeError
from encap.ipv4 import FRAGMENT_OFFSET_MASK, TOTAL_LENGTH
from encap.ipv6 import LATER_FRAGMENT, walk_extension_headers
from encap.wire import (ETHERNET_HEADER_LENGTH, IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH,
                        TCP_CHECKSUM_OFFSET, TCP_HEADER_LENGTH, EtherType, IpProto)

U16 = struct.Struct("!H")
# What decides whether a packet is a TCP SYN, in one read per family, for the
# usual shapes: IPv4 without options (version/IHL, total length, fragment word,
# protocol, then the TCP flags at 20 + 13) and IPv6 with TCP right after the
# fixed header (payload length, next header, TCP flags at 40 + 13).
IPV4_TCP_FIELDS = struct.Struct("!BxHxxHxB23xB")
FRAME_IPV4_TCP_FIELDS = struct.Struct("!12xHBxHxxHxB23xB")   # the same behind an EtherType
IPV6_TCP_FIELDS = struct.Struct("!4xHB46xB")
# From the TCP checksum to the value of an MSS option that comes first.
CHECKSUM_TO_FIRST_MSS = struct.Struct("!H4sH")
# Plain int: an IntEnum member lookup costs ~10x a global on the hot path (Python 3.11).
_PROTOCOL_TCP = int(IpProto.TCP)
TCP_FLAGS_OFFSET = 13
TCP_FLAG_SYN = 0x02
OPTION_END = 0
OPTION_NOP = 1
OPTION_MSS = 2
OPTION_MSS_LENGTH = 4


class MssAction(enum.IntEnum):
    NOT_A_SYN = enum.auto()          # not TCP, not a SYN, or not the first fragment
    NO_MSS_OPTION = enum.auto()
    WITHIN_LIMIT = enum.auto()
    CLAMPED = enum.auto()
    MALFORMED_OPTIONS = enum.auto()  # left untouched


# Globals for the per-packet answers: an Enum member lookup costs ~10x a global (Python 3.11).
_NOT_A_SYN, _WITHIN_LIMIT, _CLAMPED = MssAction.NOT_A_SYN, MssAction.WITHIN_LIMIT, MssAction.CLAMPED

# The option lists the common stacks put in a SYN, by length: a read of their
# kind and length bytes, and what those must be. A match settles the whole list
# as well formed with one MSS option, first, without walking it.
_KNOWN_OPTION_LISTS = {
    # Linux, Android: MSS, SACK permitted, timestamps, NOP, window scale.
    20: (struct.Struct("!BB2xBBBB8xBBB1x"), (2, 4, 4, 2, 8, 10, 1, 3, 3)),
    # Windows: MSS, NOP, window scale, NOP, NOP, SACK permitted.
    12: (struct.Struct("!BB2xBBB1xBBBB"), (2, 4, 1, 3, 3, 1, 1, 4, 2)),
    # macOS, iOS: MSS, NOP, window scale, NOP, NOP, timestamps, SACK permitted, EOL, EOL.
    24: (struct.Struct("!BB2xBBB1xBBBB8xBBBB"), (2, 4, 1, 3, 3, 1, 1, 8, 10, 4, 2, 0, 0)),
}


def _tcp_segment(packet: memoryview) -> tuple[int, int]:
    """``(tcp_offset, end)`` of the TCP header of a SYN, or ``(-1, 0)``."""
    size = len(packet)
    if size < IPV4_HEADER_LENGTH:
        return -1, 0
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        if packet[9] != IpProto.TCP or U16.unpack_from(packet, 6)[0] & FRAGMENT_OFFSET_MASK:
            return -1, 0
        end = min(TOTAL_LENGTH.unpack_from(packet, 2)[0], size)
        tcp = header_length
    elif version == 6:
        if size < IPV6_HEADER_LENGTH:
            return -1, 0
        end = min(IPV6_HEADER_LENGTH + U16.unpack_from(packet, 4)[0], size)
        next_header = packet[6]
        if next_header == IpProto.TCP:
            tcp = IPV6_HEADER_LENGTH
        else:
            try:
                next_header, tcp, fragment = walk_extension_headers(
                    packet, next_header, IPV6_HEADER_LENGTH, end)
            except DecodeError:
                return -1, 0
            # A first fragment holds the whole TCP header, as an IPv4 one does.
            if next_header != IpProto.TCP or fragment == LATER_FRAGMENT:
                return -1, 0
    else:
        return -1, 0
    if tcp + TCP_HEADER_LENGTH > end or not packet[tcp + TCP_FLAGS_OFFSET] & TCP_FLAG_SYN:
        return -1, 0
    return tcp, end


def walk_mss_options(packet: memoryview, position: int, options_end: int) -> list[int] | None:
    """Offsets of every MSS value in the options from ``position``, or None if malformed."""
    offsets = []
    while position < options_end:
        kind = packet[position]
        if kind == OPTION_END:
            break
        if kind == OPTION_NOP:
            position += 1
            continue
        if position + 1 >= options_end:
            return None
        length = packet[position + 1]
        if length < 2 or position + length > options_end:
            return None
        if kind == OPTION_MSS:
            if length != OPTION_MSS_LENGTH:
                return None
            offsets.append(position + 2)
        position += length
    return offsets


def clamp_mss(packet: memoryview, mss_ipv4: int, mss_ipv6: int) -> MssAction:
    """Lower the MSS option of a TCP SYN in ``packet`` (writable) to the family's limit."""
    # Nearly every packet is not a SYN: settle those with one read. The shapes
    # the reads do not fit (short, IPv4 options, IPv6 extension headers) take
    # the general walk, which gives the same answer for these ones too.
    try:
        first, total_length, fragment, protocol, tcp_flags = IPV4_TCP_FIELDS.unpack_from(packet)
    except struct.error:
        first = 0
    if first == 0x45:
        if (protocol != _PROTOCOL_TCP or fragment & FRAGMENT_OFFSET_MASK
                or not tcp_flags & TCP_FLAG_SYN):
            return _NOT_A_SYN
        tcp, end, limit = IPV4_HEADER_LENGTH, min(total_length, len(packet)), mss_ipv4
    elif (first >> 4 == 6 and fragment >> 8 == _PROTOCOL_TCP   # read as IPv4, bytes 6-7 of
          and len(packet) >= IPV6_TCP_FIELDS.size):           # IPv6 are next header, hop limit
        payload_length, _, tcp_flags = IPV6_TCP_FIELDS.unpack_from(packet)
        if not tcp_flags & TCP_FLAG_SYN:
            return _NOT_A_SYN
        end = min(IPV6_HEADER_LENGTH + payload_length, len(packet))
        tcp, limit = IPV6_HEADER_LENGTH, mss_ipv6
    else:
        tcp, end = _tcp_segment(packet)
        if tcp < 0:
            return _NOT_A_SYN
        limit = mss_ipv4 if packet[0] >> 4 == 4 else mss_ipv6
    options_start = tcp + TCP_HEADER_LENGTH
    if options_start > end:
        return _NOT_A_SYN
    options_end = tcp + (packet[tcp + 12] >> 4) * 4
    if options_end < options_start or options_end > end:
        return MssAction.MALFORMED_OPTIONS
    known = _KNOWN_OPTION_LISTS.get(options_end - options_start)
    if known is not None and known[0].unpack_from(packet, options_start) == known[1]:
        # The one MSS value is 6 bytes after the checksum, at an even offset:
        # one read and one write carry both, and what lies between, unchanged.
        checksum_at = tcp + TCP_CHECKSUM_OFFSET
        checksum, between, mss = CHECKSUM_TO_FIRST_MSS.unpack_from(packet, checksum_at)
        if mss <= limit:
            return _WITHIN_LIMIT
        CHECKSUM_TO_FIRST_MSS.pack_into(packet, checksum_at, checksum_update(checksum, mss, limit),
                                        between, limit)
        return _CLAMPED
    offsets = walk_mss_options(packet, options_start, options_end)
    if offsets is None:
        return MssAction.MALFORMED_OPTIONS
    if not offsets:
        return MssAction.NO_MSS_OPTION
    action = _WITHIN_LIMIT
    for offset in offsets:
        (mss,) = U16.unpack_from(packet, offset)
        if mss <= limit:
            continue
        (checksum,) = U16.unpack_from(packet, tcp + TCP_CHECKSUM_OFFSET)
        if (offset - tcp) & 1:
            # The value straddles two checksum words: it counts byte-swapped.
            checksum = checksum_update(checksum, _swap(mss), _swap(limit))
        else:
            checksum = checksum_update(checksum, mss, limit)
        U16.pack_into(packet, offset, limit)
        U16.pack_into(packet, tcp + TCP_CHECKSUM_OFFSET, checksum)
        action = _CLAMPED
    return action


def clamp_mss_in_frame(frame: memoryview, mss_ipv4: int, mss_ipv6: int) -> MssAction:
    """:func:`clamp_mss` on the IP packet in an Ethernet frame (none: ``NOT_A_SYN``)."""
    try:
        ethertype, first, _, fragment, protocol, tcp_flags = FRAME_IPV4_TCP_FIELDS.unpack_from(
            frame)
    except struct.error:
        return _NOT_A_SYN
    if ethertype == EtherType.IPV4 and first == 0x45 and (
            protocol != _PROTOCOL_TCP or fragment & FRAGMENT_OFFSET_MASK
            or not tcp_flags & TCP_FLAG_SYN):
        return _NOT_A_SYN   # the common case, settled with one read
    if ethertype != EtherType.IPV4 and ethertype != EtherType.IPV6:
        return _NOT_A_SYN
    return clamp_mss(frame[ETHERNET_HEADER_LENGTH:], mss_ipv4, mss_ipv6)


def clamp_mss_bytes(packet: bytes, mss_ipv4: int, mss_ipv6: int) -> tuple[bytes, MssAction]:
    """Bytes-to-bytes form of :func:`clamp_mss` for tests and tools."""
    buf = bytearray(packet)
    action = clamp_mss(memoryview(buf), mss_ipv4, mss_ipv6)
    return bytes(buf), action


def _swap(word: int) -> int:
    return (word >> 8) | ((word & 0xFF) << 8)
