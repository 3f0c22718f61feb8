"""The inner IP packet a tunnel carries: just enough checking to hand it on safely.

The inner header checksum is left to the receiving stack, as the kernel's own
tunnels do; what a tunnel must check is that the bytes are the IP packet the
tunnel's protocol announced, and where that packet ends.
"""

import struct

from encap.errors import DecodeError, DropReason
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH

# The first byte and the length field in one read: IPv4 total length, IPv6 payload length.
IPV4_FIRST_AND_LENGTH = struct.Struct("!BxH")
IPV6_FIRST_AND_LENGTH = struct.Struct("!BxxxH")


def inner_ip_packet(view: memoryview, version: int) -> memoryview:
    """Return ``view`` trimmed to the IP packet's own length.

    Raises ``DecodeError(INNER_MALFORMED)`` unless it starts with an IP header
    of ``version`` whose length fits the buffer.
    """
    size = len(view)
    if version == 4:
        if size < IPV4_HEADER_LENGTH:
            raise DecodeError(DropReason.INNER_MALFORMED)
        first, length = IPV4_FIRST_AND_LENGTH.unpack_from(view)
        if first >> 4 != 4 or first & 0x0F < 5 or length < (first & 0x0F) * 4 or length > size:
            raise DecodeError(DropReason.INNER_MALFORMED)
    else:
        if size < IPV6_HEADER_LENGTH:
            raise DecodeError(DropReason.INNER_MALFORMED)
        first, payload_length = IPV6_FIRST_AND_LENGTH.unpack_from(view)
        length = IPV6_HEADER_LENGTH + payload_length
        if first >> 4 != 6 or length > size:
            raise DecodeError(DropReason.INNER_MALFORMED)
    return view if length == size else view[:length]

