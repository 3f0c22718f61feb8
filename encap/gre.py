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
from encap.codec import Codec, header_for_inner
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
# A packet at most this far behind the window is a late or duplicate one, dropped; a run
# of NEW_EPOCH_RUN consecutive ones further behind means the sender numbers anew.
REORDER_WINDOW = 64
NEW_EPOCH_RUN = 4
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
        # Everything in front of the sequence number is fixed per inner version:
        # flags, protocol, a zero checksum (filled in after), Reserved1 and the key,
        # so one pack_into writes the header whatever the options.
        fixed = GRE_BASE.size + (4 if checksum else 0) + (4 if key is not None else 0)
        self._write = struct.Struct(f"!{fixed}s" + ("I" if sequence else ""))
        self.minimum_inner = ETHERNET_HEADER_LENGTH if ethernet else 1
        key_bytes = b"" if key is None else key.to_bytes(4, "big")

        def fixed_part(protocol: int) -> bytes:
            return GRE_BASE.pack(self.flags, protocol) + bytes(4 if checksum else 0) + key_bytes
        # Indexed by the inner version nibble; None where it is not ours to carry.
        if ethernet:
            self.header_by_version = [fixed_part(_PROTOCOL_ETHERNET)] * 16
        else:
            self.header_by_version = [None] * 16
            self.header_by_version[4] = fixed_part(_PROTOCOL_IPV4)
            self.header_by_version[6] = fixed_part(_PROTOCOL_IPV6)
        self.next_sequence = 0
        self.expected_sequence: int | None = None
        self._behind_run = 0          # consecutive packets far behind the window ...
        self._behind_next = 0         # ... and the number that would continue their run
        self.epochs = 0               # how often the receiver followed the sender to new numbers

    def take_over_sequence(self, other: "Gre") -> None:
        """Number on from where ``other`` (the same tunnel, reconfigured) left off, both ways."""
        self.next_sequence, self.expected_sequence = other.next_sequence, other.expected_sequence
        self._behind_run, self._behind_next = other._behind_run, other._behind_next
        self.epochs = other.epochs

    def encap_into(self, buf, start: int, end: int) -> int:
        fixed = header_for_inner(self.header_by_version, self.minimum_inner, buf, start, end)
        header_start = start - self.overhead
        if self.sequence:
            sequence = self.next_sequence
            self.next_sequence = (sequence + 1) & 0xFFFFFFFF
            self._write.pack_into(buf, header_start, fixed, sequence)
        else:
            self._write.pack_into(buf, header_start, fixed)
        if self.checksum:
            self.write_checksum(buf, header_start, end)
        return header_start

    @staticmethod
    def write_checksum(buf, header_start: int, end: int) -> None:
        """Fill in the checksum of the GRE header at ``header_start`` (its field is zero)."""
        checksum = internet_checksum(memoryview(buf)[header_start:end])
        GRE_CHECKSUM.pack_into(buf, header_start + BASE_LENGTH, checksum)

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
        if not flags & FLAG_SEQUENCE and self.sequence:
            raise DecodeError(DropReason.GRE_MISSING_SEQUENCE)
        payload = view[length:]
        if self.ethernet:
            if protocol != _PROTOCOL_ETHERNET:
                raise DecodeError(DropReason.GRE_UNKNOWN_PROTOCOL)
            if len(payload) < ETHERNET_HEADER_LENGTH:
                raise DecodeError(DropReason.INNER_MALFORMED)
        elif protocol == _PROTOCOL_IPV4:
            payload = inner_ip_packet(payload, 4)
        elif protocol == _PROTOCOL_IPV6:
            payload = inner_ip_packet(payload, 6)
        else:
            raise DecodeError(DropReason.GRE_UNKNOWN_PROTOCOL)
        if self.sequence:
            # Last: the receive window moves only for a packet that is otherwise good.
            self.accept_sequence(GRE_WORD.unpack_from(view, offset)[0])
        return payload

    def accept_sequence(self, sequence: int) -> None:
        """RFC 2890 §2.2 with serial-number arithmetic, as Linux ip_tunnel_rcv(): anything
        at or after the next expected number is in order; the gap (lost packets) is
        forgiven, a step back (reorder, duplicate) is not.

        Unlike Linux, a tunnel recovers when its peer restarts (and numbers from 0
        again) or when a forged number far ahead was once accepted: a run of
        ``NEW_EPOCH_RUN`` packets that follow one another, all more than
        ``REORDER_WINDOW`` behind (or numbered from 0: a peer that restarts early),
        is a new epoch of the sender, not a replay. Only packets that passed every
        other check reach this, so the run cannot be built from packets the tunnel
        would drop anyway.
        """
        expected = self.expected_sequence
        if expected is None or not (sequence - expected) & 0x80000000:
            self.expected_sequence = (sequence + 1) & 0xFFFFFFFF
            self._behind_run = 0
            return
        # A sender's first numbers are a restart even inside the window: a late copy of the
        # tunnel's first packets is rarer, and cheaper to lose, than a restarted peer.
        if (expected - sequence) & 0xFFFFFFFF > REORDER_WINDOW or sequence < NEW_EPOCH_RUN:
            if self._behind_run and (sequence - self._behind_next) & 0xFFFFFFFF < REORDER_WINDOW:
                self._behind_run += 1
            else:
                self._behind_run = 1
            self._behind_next = (sequence + 1) & 0xFFFFFFFF
            if self._behind_run >= NEW_EPOCH_RUN:
                self.expected_sequence = self._behind_next
                self._behind_run = 0
                self.epochs += 1
                return
        raise DecodeError(DropReason.GRE_OUT_OF_ORDER)


def gre_key(view: memoryview) -> int | None:
    """The key of a GRE header, or None if it has none (or is too short to say)."""
    if len(view) < BASE_LENGTH:
        return None
    flags = GRE_BASE.unpack_from(view)[0]
    offset = BASE_LENGTH + (4 if flags & FLAG_CHECKSUM else 0)
    if not flags & FLAG_KEY or len(view) < offset + 4:
        return None
    return GRE_WORD.unpack_from(view, offset)[0]
