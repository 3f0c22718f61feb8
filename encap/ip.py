"""The inner IP packet a tunnel carries: just enough checking to hand it on safely.

The inner header checksum is left to the receiving stack, as the kernel's own
tunnels do; what a tunnel must check is that the bytes are the IP packet the
tunnel's protocol announced, and where that packet ends.
"""

from encap.errors import DecodeError, DropReason
from encap.ipv4 import TOTAL_LENGTH
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH


def inner_ip_packet(view: memoryview, version: int) -> memoryview:
    """Return ``view`` trimmed to the IP packet's own length.

    Raises ``DecodeError(INNER_MALFORMED)`` unless it starts with an IP header
    of ``version`` whose length fits the buffer.
    """
    if version == 4:
        if len(view) < IPV4_HEADER_LENGTH or view[0] >> 4 != 4 or view[0] & 0x0F < 5:
            raise DecodeError(DropReason.INNER_MALFORMED)
        (length,) = TOTAL_LENGTH.unpack_from(view, 2)
        if length < (view[0] & 0x0F) * 4 or length > len(view):
            raise DecodeError(DropReason.INNER_MALFORMED)
    else:
        if len(view) < IPV6_HEADER_LENGTH or view[0] >> 4 != 6:
            raise DecodeError(DropReason.INNER_MALFORMED)
        (payload_length,) = TOTAL_LENGTH.unpack_from(view, 4)
        length = IPV6_HEADER_LENGTH + payload_length
        if length > len(view):
            raise DecodeError(DropReason.INNER_MALFORMED)
    return view[:length] if length != len(view) else view


def ip_version(view: memoryview) -> int:
    """The version nibble, or 0 for an empty buffer."""
    return view[0] >> 4 if len(view) else 0
