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
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH, TCP_HEADER_LENGTH, IpProto

U16 = struct.Struct("!H")
TCP_FLAGS_OFFSET = 13
TCP_CHECKSUM_OFFSET = 16
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


def mss_option_offsets(packet: memoryview, tcp: int, end: int) -> list[int] | None:
    """Offsets of every MSS value in the option list, or None if the list is malformed."""
    options_end = tcp + (packet[tcp + 12] >> 4) * 4
    if options_end < tcp + TCP_HEADER_LENGTH or options_end > end:
        return None
    offsets = []
    position = tcp + TCP_HEADER_LENGTH
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
    tcp, end = _tcp_segment(packet)
    if tcp < 0:
        return MssAction.NOT_A_SYN
    offsets = mss_option_offsets(packet, tcp, end)
    if offsets is None:
        return MssAction.MALFORMED_OPTIONS
    if not offsets:
        return MssAction.NO_MSS_OPTION
    limit = mss_ipv4 if packet[0] >> 4 == 4 else mss_ipv6
    action = MssAction.WITHIN_LIMIT
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
        action = MssAction.CLAMPED
    return action


def clamp_mss_bytes(packet: bytes, mss_ipv4: int, mss_ipv6: int) -> tuple[bytes, MssAction]:
    """Bytes-to-bytes form of :func:`clamp_mss` for tests and tools."""
    buf = bytearray(packet)
    action = clamp_mss(memoryview(buf), mss_ipv4, mss_ipv6)
    return bytes(buf), action


def _swap(word: int) -> int:
    return (word >> 8) | ((word & 0xFF) << 8)
