"""IPv4 headers: the outer header a raw socket with IP_HDRINCL needs, and validation."""

import struct
from typing import NamedTuple

from encap.checksum import checksum_ok
from encap.codec import Codec, Stack, header_for_inner
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.wire import IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH

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
    packet when it inherits them from the inner header; ``dont_fragment`` can
    be changed per packet too (the router copies an inner IPv4 packet's DF, and
    clears it to send a small-MTU IPv6 packet in outer fragments). The identification field counts up per packet
    (RFC 6864 allows any value with DF set).
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
        # The words that change only with DF, summed once for each value of the flags
        # (RFC 1071 sums are additive): per packet only TOS, TTL, total length and
        # identification are added.
        self._fixed_sum_by_flags = {
            flags: int.from_bytes(struct.pack("!HHBB4s4s", 0x4500, flags, 0, protocol, src, dst),
                                  "big") % 0xFFFF
            for flags in (0, FLAG_DONT_FRAGMENT)}
        self.dont_fragment = dont_fragment
        self.identification = 0

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags & FLAG_DONT_FRAGMENT)

    @dont_fragment.setter
    def dont_fragment(self, value: bool) -> None:
        self.flags = FLAG_DONT_FRAGMENT if value else 0
        self._fixed_sum = self._fixed_sum_by_flags[self.flags]

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


# What Ipv4Tunnel's fast decap reads of the inner packet: the first byte, the IPv4
# total length and the IPv6 payload length (whichever the version needs).
_INNER_IP_PREFIX = "BxHH"
# An Ethernet frame needs only its 14 bytes to be there.
_INNER_ETHERNET_PREFIX = "BxHH8x"
_ETHERNET = 0  # the "inner version" of a gretap payload


def _on_outer(name: str) -> property:
    """The outer header's attribute ``name``, read and set through the fused codec."""
    return property(lambda self: getattr(self.outer, name),
                    lambda self, value: setattr(self.outer, name, value))


class Ipv4Tunnel(Codec):
    """``Stack(outer, tunnel)`` fused: one ``pack_into`` per encap, one ``unpack_from`` per decap.

    Build it from the two codecs a Stack would hold::

        Ipv4Tunnel(Ipv4Outer(src, dst, IpProto.GRE, ttl=64, tos=0), Gre(key=42, sequence=True))
        Ipv4Tunnel(Ipv4Outer(src, dst, IpProto.IPIP), IpInIp(4))   # IpProto.IPV6 with IpInIp(6)

    It writes the same bytes as the Stack, accepts the same datagrams and refuses
    the rest with the same ``DropReason``, and keeps its state in those codecs:
    ``outer.identification``, the GRE sequence numbers, and ``outer.ttl``,
    ``outer.tos`` (which ``ttl`` and ``tos`` here also set) and
    ``outer.dont_fragment``, read per packet.

    Decap takes the fast path for the datagram a peer of this tunnel sends: no
    IPv4 options, no bytes past the total length, exactly this tunnel's GRE
    flags, everything valid. Anything else goes to the Stack, which makes the
    same checks one header at a time and says why it drops, so the error
    reasons cannot drift apart.
    """

    def __init__(self, outer: Ipv4Outer, tunnel: Gre | IpInIp):
        self.outer, self.tunnel = outer, tunnel
        self.overhead = outer.overhead + tunnel.overhead
        self._checked_decap = Stack(outer, tunnel).decap
        self._protocol = outer.protocol
        addresses = outer.src + outer.dst
        # Addresses and the tunnel header up to its sequence number, by inner version.
        self._tails = [None if fixed is None else addresses + fixed
                       for fixed in tunnel.header_by_version]
        self._minimum_inner = tunnel.minimum_inner
        gre = isinstance(tunnel, Gre)
        self._sequenced = gre and tunnel.sequence
        self._checksummed = gre and tunnel.checksum
        tail_length = len(addresses) + tunnel.overhead - (4 if self._sequenced else 0)
        self._write = struct.Struct(f"!BBHHHBBH{tail_length}s" + ("I" if self._sequenced else ""))
        # The read: the outer header as the 16-bit words its checksum sums (the
        # addresses as one 64-bit word: 2**16 is 1 modulo 0xffff, so it sums the
        # same), then the GRE base header and key as bytes (empty when absent), the
        # sequence number (an int, or empty bytes when absent) and the start of the
        # inner packet: one shape of tuple for every tunnel.
        if gre:
            options = "4s" + ("4x" if tunnel.checksum else "") + (
                "0s" if tunnel.key is None else "4s") + ("I" if tunnel.sequence else "0s")
            self._key = b"" if tunnel.key is None else tunnel.key.to_bytes(4, "big")
            headers = tunnel.header_by_version
            if tunnel.ethernet:
                self._inner_version_by_base = {headers[0][:4]: _ETHERNET}
            else:
                self._inner_version_by_base = {headers[4][:4]: 4, headers[6][:4]: 6}
        else:
            options, self._key = "0s0s0s", b""
            self._inner_version_by_base = {b"": tunnel.inner_version}
        inner = _INNER_ETHERNET_PREFIX if gre and tunnel.ethernet else _INNER_IP_PREFIX
        self._read = struct.Struct(f"!HHHHHHQ{options}{inner}")
        self._payload_start = IPV4_HEADER_LENGTH + tunnel.overhead

    ttl = _on_outer("ttl")
    tos = _on_outer("tos")

    def encap_into(self, buf, start: int, end: int) -> int:
        tail = header_for_inner(self._tails, self._minimum_inner, buf, start, end)
        outer = self.outer
        header_start = start - self.overhead
        identification = outer.identification = (outer.identification + 1) & 0xFFFF
        total_length = end - header_start
        ttl, tos = outer.ttl, outer.tos
        total = outer._fixed_sum + tos + (ttl << 8) + total_length + identification
        total = (total & 0xFFFF) + (total >> 16)
        checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        if self._sequenced:
            gre = self.tunnel
            sequence = gre.next_sequence
            gre.next_sequence = (sequence + 1) & 0xFFFFFFFF
            self._write.pack_into(buf, header_start, 0x45, tos, total_length, identification,
                                  outer.flags, ttl, self._protocol, checksum, tail,
                                  sequence)
        else:
            self._write.pack_into(buf, header_start, 0x45, tos, total_length, identification,
                                  outer.flags, ttl, self._protocol, checksum, tail)
        if self._checksummed:
            Gre.write_checksum(buf, header_start + IPV4_HEADER_LENGTH, end)
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        try:
            (first_word, total_length, identification, fragment, ttl_protocol, checksum,
             addresses, base, key, sequence, inner_first, inner_v4_length,
             inner_v6_payload_length) = self._read.unpack_from(view)
        except struct.error:
            return self._checked_decap(view)
        inner_version = self._inner_version_by_base.get(base)
        if (first_word >> 8 != 0x45 or total_length != len(view)
                or fragment & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK)
                or ttl_protocol & 0xFF != self._protocol or inner_version is None
                or key != self._key
                or (first_word + total_length + identification + fragment + ttl_protocol
                    + checksum + addresses) % 0xFFFF
                or self._checksummed and not checksum_ok(view[IPV4_HEADER_LENGTH:])):
            return self._checked_decap(view)
        start = self._payload_start
        if inner_version == 4:
            # Version 4 with a header length of at least 5 words, and room for that header.
            if not 0x45 <= inner_first <= 0x4F or inner_v4_length < (inner_first & 0x0F) * 4:
                return self._checked_decap(view)
            end = start + inner_v4_length
        elif inner_version == 6:
            if inner_first >> 4 != 6:
                return self._checked_decap(view)
            end = start + IPV6_HEADER_LENGTH + inner_v6_payload_length
        else:
            end = total_length
        if end > total_length:
            return self._checked_decap(view)
        if self._sequenced:
            # Last: every other check has passed, so the Stack's verdict would be this
            # one too, and the receiver's state moves only for a datagram taken here.
            self.tunnel.accept_sequence(sequence)
        return view[start:end]
