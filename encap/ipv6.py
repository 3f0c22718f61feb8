"""IPv6 headers: the outer header, validation, and the extension-header walk."""

import struct
from typing import NamedTuple

from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import IPV6_HEADER_LENGTH, IpProto

IPV6_HEADER = struct.Struct("!IHBB16s16s")
PAYLOAD_LENGTH = struct.Struct("!H")
FRAGMENT_OFFSET_FIELD = 2
FRAGMENT_OFFSET_MASK = 0xFFF8
FRAGMENT_MORE = 0x0001

# What the walk saw of fragmentation: only a later fragment lacks the upper header.
NOT_FRAGMENTED, FIRST_FRAGMENT, LATER_FRAGMENT = 0, 1, 2

# Extension headers whose length byte counts 8-octet units beyond the first 8.
_OPTION_LIKE = frozenset({IpProto.HOPOPT, IpProto.IPV6_ROUTE, IpProto.IPV6_OPTS, 135, 139, 140})


class Ipv6Header(NamedTuple):
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes
    upper_protocol: int
    upper_offset: int  # from the start of the IPv6 header
    is_fragment: bool


def walk_extension_headers(view: memoryview, next_header: int, offset: int,
                           end: int) -> tuple[int, int, int]:
    """Follow the chain from ``offset`` to the upper-layer header.

    Returns ``(protocol, offset, fragment)``, ``fragment`` one of
    ``NOT_FRAGMENTED`` (an atomic fragment counts as that), ``FIRST_FRAGMENT``
    (the upper header is there, its payload partial) or ``LATER_FRAGMENT``
    (the walk stops at the fragment header: what follows is a slice of the
    payload, not a header). ``IPV6_NONXT`` and ESP end the walk too.
    """
    fragment = NOT_FRAGMENTED
    while next_header in _OPTION_LIKE or next_header in (IpProto.IPV6_FRAG, IpProto.AH):
        if offset + 8 > end:
            raise DecodeError(DropReason.IP_BAD_EXTENSION_HEADER)
        if next_header == IpProto.IPV6_FRAG:
            (field,) = PAYLOAD_LENGTH.unpack_from(view, offset + FRAGMENT_OFFSET_FIELD)
            if field & FRAGMENT_OFFSET_MASK:
                return view[offset], offset + 8, LATER_FRAGMENT
            if field & FRAGMENT_MORE:
                fragment = FIRST_FRAGMENT
            length = 8
        elif next_header == IpProto.AH:
            length = (view[offset + 1] + 2) * 4
        else:
            length = (view[offset + 1] + 1) * 8
        next_header = view[offset]
        offset += length
        if offset > end:
            raise DecodeError(DropReason.IP_BAD_EXTENSION_HEADER)
    return next_header, offset, fragment


def validate_ipv6(view: memoryview) -> int:
    """Check version and payload length against the buffer; return the packet's end."""
    if len(view) < IPV6_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    if view[0] >> 4 != 6:
        raise DecodeError(DropReason.IP_BAD_VERSION)
    (payload_length,) = PAYLOAD_LENGTH.unpack_from(view, 4)
    end = IPV6_HEADER_LENGTH + payload_length
    # A zero payload length announces a jumbogram (RFC 2675): never on a tunnel.
    if end > len(view) or (payload_length == 0 and view[6] == IpProto.HOPOPT):
        raise DecodeError(DropReason.IP_BAD_TOTAL_LENGTH)
    return end


def parse_ipv6(view: memoryview, allow_fragments: bool = False) -> tuple[Ipv6Header, memoryview]:
    """Validate and parse; return the header and the upper-layer payload."""
    end = validate_ipv6(view)
    word, payload_length, next_header, hop_limit, src, dst = IPV6_HEADER.unpack_from(view)
    upper, offset, fragment = walk_extension_headers(view, next_header, IPV6_HEADER_LENGTH, end)
    if fragment and not allow_fragments:
        raise DecodeError(DropReason.IP_FRAGMENT)
    header = Ipv6Header((word >> 20) & 0xFF, word & 0xFFFFF, payload_length, next_header,
                        hop_limit, bytes(src), bytes(dst), upper, offset, fragment != NOT_FRAGMENTED)
    return header, view[offset:end]


class Ipv6Outer(Codec):
    """The outer IPv6 header of a tunnel (no extension headers are sent)."""

    overhead = IPV6_HEADER_LENGTH

    def __init__(self, src: bytes, dst: bytes, protocol: int, hop_limit: int = 64,
                 traffic_class: int = 0, flow_label: int = 0):
        if len(src) != 16 or len(dst) != 16:
            raise EncapConfigError("IPv6 addresses must be 16 packed bytes")
        if not 1 <= hop_limit <= 255:
            raise EncapConfigError(f"hop limit {hop_limit} is not in 1..255")
        if not 0 <= traffic_class <= 255:
            raise EncapConfigError(f"traffic class {traffic_class} is not in 0..255")
        if not 0 <= flow_label <= 0xFFFFF:
            raise EncapConfigError(f"flow label {flow_label} is not in 0..0xfffff")
        self.src, self.dst, self.protocol = src, dst, protocol
        self.hop_limit, self.traffic_class, self.flow_label = hop_limit, traffic_class, flow_label

    def encap_into(self, buf, start: int, end: int) -> int:
        header_start = start - IPV6_HEADER_LENGTH
        IPV6_HEADER.pack_into(
            buf, header_start, 0x60000000 | self.traffic_class << 20 | self.flow_label,
            end - start, self.protocol, self.hop_limit, self.src, self.dst,
        )
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        end = validate_ipv6(view)
        upper, offset, fragment = walk_extension_headers(view, view[6], IPV6_HEADER_LENGTH, end)
        if fragment:
            raise DecodeError(DropReason.IP_FRAGMENT)
        if upper != self.protocol:
            raise DecodeError(DropReason.WRONG_PROTOCOL)
        return view[offset:end]
