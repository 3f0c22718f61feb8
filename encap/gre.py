"""GRE (RFC 2784) with the key and sequence number extensions (RFC 2890).

::

    |C| |K|S| Reserved0       | Ver |         Protocol Type         |
    |      Checksum (optional)      |       Reserved1 (optional)    |
    |                         Key (optional)                        |
    |                 Sequence Number (optional)                    |

The options are symmetric like ``ip tunnel ... key K csum seq``: a tunnel
that sends checksums or sequence numbers also requires them on receipt, and a
keyed tunnel accepts only its own key. A checksum that is present is always
verified, as the Linux kernel does.
"""

import struct

from encap.checksum import checksum_ok, internet_checksum
from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ip import inner_ip_packet
from encap.wire import ETHERNET_HEADER_LENGTH, EtherType

GRE_BASE = struct.Struct("!HH")
GRE_WORD = struct.Struct("!I")
GRE_CHECKSUM = struct.Struct("!H")
BASE_LENGTH = 4

FLAG_CHECKSUM = 0x8000
FLAG_KEY = 0x2000
FLAG_SEQUENCE = 0x1000
VERSION_MASK = 0x0007
# RFC 2784 §2.3: a receiver that does not implement RFC 1701 MUST discard a
# packet with any of bits 1-5 set; bits 2 and 3 became K and S in RFC 2890.
# That leaves 1 (Routing), 4 (strict source route) and 5 (top recursion bit).
# Bits 6-12 MUST be ignored on receipt.
DISCARD_FLAGS = 0x4000 | 0x0800 | 0x0400
# Plain ints: an IntEnum member lookup costs ~10x a global on the hot path (Python 3.11).
_PROTOCOL_IPV4 = int(EtherType.IPV4)
_PROTOCOL_IPV6 = int(EtherType.IPV6)
_PROTOCOL_ETHERNET = int(EtherType.TRANSPARENT_ETHERNET_BRIDGING)


def header_length(flags: int) -> int:
    """Length of a GRE header with these flags (RFC 2784/2890 options only)."""
    return _LENGTH_BY_TOP_NIBBLE[flags >> 12]


# Indexed by the C, R, K, S bits (the top nibble): a table beats three tests per packet.
_LENGTH_BY_TOP_NIBBLE = [BASE_LENGTH + 4 * ((n >> 3 & 1) + (n >> 1 & 1) + (n & 1)) for n in range(16)]


class Gre(Codec):
    """A GRE tunnel end: options fixed at configuration, sequence state per instance.

    ``ethernet=True`` makes it a gretap end (protocol 0x6558, Ethernet
    payload); otherwise the payload is IPv4 (0x0800) or IPv6 (0x86DD), chosen
    per packet by the inner version nibble.
    """

    def __init__(self, key: int | None = None, checksum: bool = False, sequence: bool = False,
                 ethernet: bool = False):
        if key is not None and not 0 <= key <= 0xFFFFFFFF:
            raise EncapConfigError(f"GRE key {key} is not a 32-bit unsigned number")
        self.key, self.checksum, self.sequence, self.ethernet = key, checksum, sequence, ethernet
        self.flags = ((FLAG_CHECKSUM if checksum else 0) | (FLAG_KEY if key is not None else 0)
                      | (FLAG_SEQUENCE if sequence else 0))
        self.overhead = header_length(self.flags)
        self._key_offset = BASE_LENGTH + (4 if checksum else 0)
        self._sequence_offset = self._key_offset + (4 if key is not None else 0)
        self.next_sequence = 0
        self.expected_sequence: int | None = None

    def encap_into(self, buf, start: int, end: int) -> int:
        header_start = start - self.overhead
        if self.ethernet:
            if end - start < ETHERNET_HEADER_LENGTH:
                raise DecodeError(DropReason.INNER_MALFORMED)
            protocol = _PROTOCOL_ETHERNET
        else:
            version = buf[start] >> 4 if end > start else 0
            if version == 4:
                protocol = _PROTOCOL_IPV4
            elif version == 6:
                protocol = _PROTOCOL_IPV6
            else:
                raise DecodeError(DropReason.INNER_MALFORMED)
        GRE_BASE.pack_into(buf, header_start, self.flags, protocol)
        if self.key is not None:
            GRE_WORD.pack_into(buf, header_start + self._key_offset, self.key)
        if self.sequence:
            GRE_WORD.pack_into(buf, header_start + self._sequence_offset, self.next_sequence)
            self.next_sequence = (self.next_sequence + 1) & 0xFFFFFFFF
        if self.checksum:
            GRE_WORD.pack_into(buf, header_start + BASE_LENGTH, 0)
            checksum = internet_checksum(memoryview(buf)[header_start:end])
            GRE_CHECKSUM.pack_into(buf, header_start + BASE_LENGTH, checksum)
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        if len(view) < BASE_LENGTH:
            raise DecodeError(DropReason.TRUNCATED)
        flags, protocol = GRE_BASE.unpack_from(view)
        if flags & VERSION_MASK:
            raise DecodeError(DropReason.GRE_BAD_VERSION)
        if flags & DISCARD_FLAGS:
            raise DecodeError(DropReason.GRE_RESERVED_FLAGS)
        length = _LENGTH_BY_TOP_NIBBLE[flags >> 12]
        if len(view) < length:
            raise DecodeError(DropReason.TRUNCATED)
        offset = BASE_LENGTH
        if flags & FLAG_CHECKSUM:
            if not checksum_ok(view):
                raise DecodeError(DropReason.GRE_BAD_CHECKSUM)
            offset += 4
        elif self.checksum:
            raise DecodeError(DropReason.GRE_MISSING_CHECKSUM)
        if flags & FLAG_KEY:
            if GRE_WORD.unpack_from(view, offset)[0] != self.key:
                raise DecodeError(DropReason.GRE_WRONG_KEY)
            offset += 4
        elif self.key is not None:
            raise DecodeError(DropReason.GRE_WRONG_KEY)
        if flags & FLAG_SEQUENCE:
            if self.sequence:
                self._accept_sequence(GRE_WORD.unpack_from(view, offset)[0])
        elif self.sequence:
            raise DecodeError(DropReason.GRE_MISSING_SEQUENCE)
        payload = view[length:]
        if self.ethernet:
            if protocol != _PROTOCOL_ETHERNET:
                raise DecodeError(DropReason.GRE_UNKNOWN_PROTOCOL)
            if len(payload) < ETHERNET_HEADER_LENGTH:
                raise DecodeError(DropReason.INNER_MALFORMED)
            return payload
        if protocol == _PROTOCOL_IPV4:
            return inner_ip_packet(payload, 4)
        if protocol == _PROTOCOL_IPV6:
            return inner_ip_packet(payload, 6)
        raise DecodeError(DropReason.GRE_UNKNOWN_PROTOCOL)

    def _accept_sequence(self, sequence: int) -> None:
        # RFC 2890 §2.2 with serial-number arithmetic, as Linux ip_tunnel_rcv():
        # anything at or after the next expected number is in order; the gap
        # (lost packets) is forgiven, a step back (reorder, duplicate) is not.
        expected = self.expected_sequence
        if expected is not None and (sequence - expected) & 0x80000000:
            raise DecodeError(DropReason.GRE_OUT_OF_ORDER)
        self.expected_sequence = (sequence + 1) & 0xFFFFFFFF


def gre_key(view: memoryview) -> int | None:
    """The key of a GRE header, or None if it has none (or is too short to say)."""
    if len(view) < BASE_LENGTH:
        return None
    flags = GRE_BASE.unpack_from(view)[0]
    offset = BASE_LENGTH + (4 if flags & FLAG_CHECKSUM else 0)
    if not flags & FLAG_KEY or len(view) < offset + 4:
        return None
    return GRE_WORD.unpack_from(view, offset)[0]
