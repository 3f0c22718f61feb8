"""IPv4 headers: the outer header a raw socket with IP_HDRINCL needs, and validation."""

import struct
from typing import NamedTuple

from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import IPV4_HEADER_LENGTH

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
# version/IHL, total length, flags/fragment offset and protocol in one read.
VALIDATED_FIELDS = struct.Struct("!BxHxxHxB")
TOTAL_LENGTH = struct.Struct("!H")
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


def validate_ipv4(view: memoryview) -> tuple[int, int, int, int]:
    """Check version, IHL, total length against the buffer and the header checksum.

    Returns ``(header_length, total_length, flags_and_offset, protocol)``;
    trailing bytes past the total length (Ethernet padding) are the caller's
    to ignore.
    """
    if len(view) < IPV4_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    first, total_length, flags_offset, protocol = VALIDATED_FIELDS.unpack_from(view)
    if first >> 4 != 4:
        raise DecodeError(DropReason.IP_BAD_VERSION)
    header_length = (first & 0x0F) * 4
    if header_length < IPV4_HEADER_LENGTH or header_length > len(view):
        raise DecodeError(DropReason.IP_BAD_HEADER_LENGTH)
    if total_length < header_length or total_length > len(view):
        raise DecodeError(DropReason.IP_BAD_TOTAL_LENGTH)
    # A valid header sums to 0xffff, i.e. 0 modulo 0xffff; the version byte is
    # never zero, so the all-zero case that would also give 0 cannot occur.
    if int.from_bytes(view[:header_length], "big") % 0xFFFF:
        raise DecodeError(DropReason.IP_BAD_CHECKSUM)
    return header_length, total_length, flags_offset, protocol


def parse_ipv4(view: memoryview, allow_fragments: bool = False) -> tuple[Ipv4Header, memoryview]:
    """Validate and parse; return the header and its payload (trimmed to total length)."""
    header_length, total_length, _, _ = validate_ipv4(view)
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
        # The words that never change, summed once (RFC 1071 sums are additive):
        # per packet only TOS, TTL, total length and identification are added.
        fixed = struct.pack("!HHBB4s4s", 0x4500, self.flags, 0, protocol, src, dst)
        self._fixed_sum = int.from_bytes(fixed, "big") % 0xFFFF

    def encap_into(self, buf, start: int, end: int) -> int:
        header_start = start - IPV4_HEADER_LENGTH
        identification = self.identification = (self.identification + 1) & 0xFFFF
        total_length = end - header_start
        ttl, tos = self.ttl, self.tos
        total = self._fixed_sum + tos + (ttl << 8) + total_length + identification
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        IPV4_HEADER.pack_into(
            buf, header_start, 0x45, tos, total_length, identification,
            self.flags, ttl, self.protocol, ~total & 0xFFFF, self.src, self.dst,
        )
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        header_length, total_length, flags_offset, protocol = validate_ipv4(view)
        if protocol != self.protocol:
            raise DecodeError(DropReason.WRONG_PROTOCOL)
        if flags_offset & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK):
            raise DecodeError(DropReason.IP_FRAGMENT)
        return view[header_length:total_length]
