"""IPv4 fragmentation (RFC 791 §2.3 "Fragmentation", §3.2), for inner packets.

An inner IPv4 packet without DF that is larger than the tunnel MTU is split
before encapsulation (RFC 4459 §3, inner fragmentation): every fragment
travels as its own tunnel packet and the destination host reassembles them,
so the tunnel endpoints never reassemble anything.
"""

import struct

from encap.checksum import internet_checksum
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ipv4 import (
    FLAG_DONT_FRAGMENT, FLAG_MORE_FRAGMENTS, FRAGMENT_OFFSET_MASK, validate_ipv4,
)
from encap.wire import IPV4_HEADER_LENGTH

FRAGMENT_UNIT = 8
MAX_DATAGRAM = 0xFFFF

# Options whose type has this bit are copied into every fragment (RFC 791 §3.1).
OPTION_COPIED = 0x80
OPTION_END_OF_LIST = 0
OPTION_NO_OPERATION = 1

WORD = struct.Struct("!H")
TOTAL_LENGTH_OFFSET = 2
FLAGS_OFFSET_OFFSET = 6
CHECKSUM_OFFSET = 10


def copied_options(options: memoryview) -> bytes:
    """The options a later fragment carries: those with the copied flag, padded with EOL.

    Raises ``DecodeError(INNER_MALFORMED)`` where an option's length runs
    short of its own two bytes or past the header.
    """
    kept = bytearray()
    position = 0
    while position < len(options):
        kind = options[position]
        if kind == OPTION_END_OF_LIST:
            break
        if kind == OPTION_NO_OPERATION:
            position += 1
            continue
        if position + 1 >= len(options):
            raise DecodeError(DropReason.INNER_MALFORMED)
        length = options[position + 1]
        if length < 2 or position + length > len(options):
            raise DecodeError(DropReason.INNER_MALFORMED)
        if kind & OPTION_COPIED:
            kept += options[position:position + length]
        position += length
    kept += bytes(-len(kept) % 4)
    return bytes(kept)


def _fragment(header: bytes, data: memoryview, flags_offset: int) -> bytes:
    """One fragment: ``header`` (its options included) with its IHL, lengths and checksum set."""
    packet = bytearray(header)
    packet[0] = 0x40 | len(header) // 4
    WORD.pack_into(packet, TOTAL_LENGTH_OFFSET, len(header) + len(data))
    WORD.pack_into(packet, FLAGS_OFFSET_OFFSET, flags_offset)
    WORD.pack_into(packet, CHECKSUM_OFFSET, 0)
    WORD.pack_into(packet, CHECKSUM_OFFSET, internet_checksum(packet))
    return bytes(packet + data)


def fragment_ipv4(packet: memoryview | bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most ``mtu`` bytes each.

    Every fragment but the last carries a multiple of 8 data bytes and MF;
    the last keeps the packet's own MF, and offsets count from the packet's
    own, so a fragment can be fragmented again. The first fragment keeps all
    options, the others only the copied ones (RFC 791 §3.2). A packet that
    fits is returned whole. Raises ``DecodeError(INNER_MALFORMED)`` for
    anything but a valid IPv4 packet, and ``EncapConfigError`` when the
    packet has DF set or ``mtu`` leaves no room for 8 data bytes.
    """
    view = memoryview(packet)
    try:
        header_length, total_length, flags_offset, _ = validate_ipv4(view)
    except DecodeError:
        raise DecodeError(DropReason.INNER_MALFORMED) from None
    if total_length <= mtu:
        return [bytes(view[:total_length])]
    if flags_offset & FLAG_DONT_FRAGMENT:
        raise EncapConfigError("a packet with DF set must not be fragmented")
    first_room = (mtu - header_length) // FRAGMENT_UNIT * FRAGMENT_UNIT
    if first_room < FRAGMENT_UNIT:
        raise EncapConfigError(f"MTU {mtu} leaves no room for 8 data bytes after the header")
    later_header = bytes(view[:IPV4_HEADER_LENGTH]) + copied_options(
        view[IPV4_HEADER_LENGTH:header_length])
    later_room = (mtu - len(later_header)) // FRAGMENT_UNIT * FRAGMENT_UNIT
    data = view[header_length:total_length]
    base = (flags_offset & FRAGMENT_OFFSET_MASK) * FRAGMENT_UNIT
    if base + total_length > MAX_DATAGRAM:
        # RFC 791 §3.1: no datagram reassembles past 65535 bytes; the later
        # offsets would not even fit their 13 bits.
        raise DecodeError(DropReason.INNER_MALFORMED)
    # The reserved bit travels unchanged; MF is ours to set but on the last piece.
    kept_flags = flags_offset & ~(FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK)
    fragments = [_fragment(bytes(view[:header_length]), data[:first_room],
                           kept_flags | FLAG_MORE_FRAGMENTS | base // FRAGMENT_UNIT)]
    for start in range(first_room, len(data), later_room):
        last = start + later_room >= len(data)
        more = flags_offset & FLAG_MORE_FRAGMENTS if last else FLAG_MORE_FRAGMENTS
        fragments.append(_fragment(later_header, data[start:start + later_room],
                                   kept_flags | more | (base + start) // FRAGMENT_UNIT))
    return fragments
