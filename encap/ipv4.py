"""IPv4 headers: the outer header a raw socket with IP_HDRINCL needs, and validation."""

import struct
from typing import NamedTuple

from encap.checksum import checksum_ok, internet_checksum
from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import IPV4_HEADER_LENGTH

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
TOTAL_LENGTH = struct.Struct("!H")
CHECKSUM_OFFSET = 10
FLAG_DONT_FRAGMENT = 0x4000
FLAG_MORE_FRAGMENTS = 0x2000
FRAGMENT_OFFSET_MASK = 0x1FFF


class Ipv4Header(NamedTuple):
    tos: int
    total_length: int
    identification: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int  # in 8-byte units, as on the wire
    ttl: int
    protocol: int
    src: bytes
    dst: bytes
    header_length: int


def validate_ipv4(view: memoryview) -> tuple[int, int]:
    """Check version, IHL, total length against the buffer and the header checksum.

    Returns ``(header_length, total_length)``; trailing bytes past the total
    length (Ethernet padding) are the caller's to ignore.
    """
    if len(view) < IPV4_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    first = view[0]
    if first >> 4 != 4:
        raise DecodeError(DropReason.IP_BAD_VERSION)
    header_length = (first & 0x0F) * 4
    if header_length < IPV4_HEADER_LENGTH or header_length > len(view):
        raise DecodeError(DropReason.IP_BAD_HEADER_LENGTH)
    (total_length,) = TOTAL_LENGTH.unpack_from(view, 2)
    if total_length < header_length or total_length > len(view):
        raise DecodeError(DropReason.IP_BAD_TOTAL_LENGTH)
    if not checksum_ok(view[:header_length]):
        raise DecodeError(DropReason.IP_BAD_CHECKSUM)
    return header_length, total_length


def parse_ipv4(view: memoryview, allow_fragments: bool = False) -> tuple[Ipv4Header, memoryview]:
    """Validate and parse; return the header and its payload (trimmed to total length)."""
    header_length, total_length = validate_ipv4(view)
    _, tos, _, ident, flags_offset, ttl, protocol, _, src, dst = IPV4_HEADER.unpack_from(view)
    if flags_offset & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK) and not allow_fragments:
        raise DecodeError(DropReason.IP_FRAGMENT)
    header = Ipv4Header(
        tos, total_length, ident,
        bool(flags_offset & FLAG_DONT_FRAGMENT), bool(flags_offset & FLAG_MORE_FRAGMENTS),
        flags_offset & FRAGMENT_OFFSET_MASK, ttl, protocol, bytes(src), bytes(dst), header_length,
    )
    return header, view[header_length:total_length]


class Ipv4Outer(Codec):
    """The outer IPv4 header of a tunnel: fixed addresses and protocol.

    ``ttl`` and ``tos`` are plain attributes so the router can set them per
    packet when it inherits them from the inner header. The identification
    field counts up per packet (RFC 6864 allows any value with DF set).
    """

    overhead = IPV4_HEADER_LENGTH

    def __init__(self, src: bytes, dst: bytes, protocol: int, ttl: int = 64, tos: int = 0,
                 dont_fragment: bool = True):
        if len(src) != 4 or len(dst) != 4:
            raise EncapConfigError("IPv4 addresses must be 4 packed bytes")
        if not 1 <= ttl <= 255:
            raise EncapConfigError(f"ttl {ttl} is not in 1..255")
        if not 0 <= tos <= 255:
            raise EncapConfigError(f"tos {tos} is not in 0..255")
        self.src, self.dst, self.protocol = src, dst, protocol
        self.ttl, self.tos = ttl, tos
        self.flags = FLAG_DONT_FRAGMENT if dont_fragment else 0
        self.identification = 0

    def encap_into(self, buf, start: int, end: int) -> int:
        header_start = start - IPV4_HEADER_LENGTH
        self.identification = (self.identification + 1) & 0xFFFF
        IPV4_HEADER.pack_into(
            buf, header_start, 0x45, self.tos, end - header_start, self.identification,
            self.flags, self.ttl, self.protocol, 0, self.src, self.dst,
        )
        header = memoryview(buf)[header_start:start]
        TOTAL_LENGTH.pack_into(buf, header_start + CHECKSUM_OFFSET, internet_checksum(header))
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        header_length, total_length = validate_ipv4(view)
        if view[9] != self.protocol:
            raise DecodeError(DropReason.WRONG_PROTOCOL)
        (flags_offset,) = TOTAL_LENGTH.unpack_from(view, 6)
        if flags_offset & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK):
            raise DecodeError(DropReason.IP_FRAGMENT)
        return view[header_length:total_length]
