"""TCP segmentation and coalescing in software: what a NIC's TSO and the kernel's GRO do.

A TUN/TAP device with offloads hands over a TCP *super-packet*: one IP header, one
TCP header and up to 64 KB of payload, to be cut into segments of ``gso_size``
payload bytes each (Linux's GSO). Carrying it whole through the tunnel core and
cutting it only at the socket, after the outer header was written once, is what
makes a userspace tunnel cheap per byte: one decision, one outer header and one
system call for dozens of packets. The way back is the same in reverse: segments of
one TCP stream that arrive one after the other are joined into one super-packet
for the device, so that the kernel routes one packet instead of dozens.

``segment_tcp`` writes the segments one after the other at a fixed stride, the
layout a UDP socket's GSO (``UDP_SEGMENT``) and ``sendmmsg`` both take; ``coalesce``
joins what may be joined (TCP as Linux's ``tcp_gro_receive``, UDP as its
``udp_gro_receive``) and copies the rest as it is. ``finish_checksum`` completes a checksum the sender
left partial (``CHECKSUM_PARTIAL``). The module ``encap._gso`` (C, built by
``make`` where a compiler is found) does the same faster; this file is the
reference it is tested against, and the fallback where it is missing.

Device packets are input from outside: what does not parse raises ``DecodeError``.
"""

import struct

from encap.checksum import internet_checksum, ones_complement_sum, pseudo_header_sum
from encap.errors import DecodeError, DropReason
from encap.wire import TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET, EtherType, IpProto

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
MAX_COALESCED = 0xFFFF       # an IPv4 total length, an IPv6 payload length
MAX_UDP_SEGMENTS = 64        # the most datagrams Linux's UDP GRO and GSO take in one
MAX_TRAIN_SEGMENTS = 128     # the most datagrams join looks at in one train (GRO makes <= 64)
_IPV4_LENGTH_ID = struct.Struct("!HH")
_IPV4_CHECKSUM_AT = 10
_TCP_SEQUENCE = struct.Struct("!I")
_U16 = struct.Struct("!H")
# What two segments of one stream share, compared as bytes: IPv4 TOS, flags and
# fragment offset, TTL, protocol, addresses (not length, identification, checksum);
# IPv6 all but the payload length.
_IPV4_SHARED = ((1, 2), (6, 10), (12, 20))
_IPV6_SHARED = ((0, 4), (6, 40))


def _malformed() -> DecodeError:
    return DecodeError(DropReason.INNER_MALFORMED)


def _inner_layout(packet, inner_ip: int, transport: int) -> tuple[int, int]:
    """``(version, TCP header end)`` of the TCP packet at ``inner_ip``; DecodeError if
    it is not one whose headers fit."""
    length = len(packet)
    if not 0 <= inner_ip < transport <= length - 20:
        raise _malformed()
    version = packet[inner_ip] >> 4
    if version == 4:
        if transport != inner_ip + (packet[inner_ip] & 0x0F) * 4 or \
                packet[inner_ip + 9] != IpProto.TCP:
            raise _malformed()
    elif version == 6:
        if transport < inner_ip + 40:
            raise _malformed()
    else:
        raise _malformed()
    header_end = transport + (packet[transport + 12] >> 4) * 4
    if not transport + 20 <= header_end <= length:
        raise _malformed()
    return version, header_end


def _pseudo_sum(packet, inner_ip: int, version: int, length: int,
                protocol: int = IpProto.TCP) -> int:
    if version == 4:
        return pseudo_header_sum(packet[inner_ip + 12:inner_ip + 16],
                                 packet[inner_ip + 16:inner_ip + 20], protocol, length)
    return pseudo_header_sum(packet[inner_ip + 8:inner_ip + 24],
                             packet[inner_ip + 24:inner_ip + 40], protocol, length)


def _set_ipv4_length(buf, at: int, total_length: int, identification: int) -> None:
    """An IPv4 header's total length and identification, and its checksum made anew."""
    _IPV4_LENGTH_ID.pack_into(buf, at + 2, total_length, identification)
    buf[at + _IPV4_CHECKSUM_AT:at + _IPV4_CHECKSUM_AT + 2] = b"\0\0"
    header_end = at + (buf[at] & 0x0F) * 4
    _U16.pack_into(buf, at + _IPV4_CHECKSUM_AT, internet_checksum(buf[at:header_end]))


def segment_count(payload: int, gso_size: int) -> int:
    """How many segments ``payload`` bytes make at ``gso_size`` bytes each (at least one)."""
    return max(1, -(-payload // gso_size))


def segment_tcp(datagram, inner_ip: int, transport: int, gso_size: int, outer_ipv4: bool,
                arena, remote_checksum: bool = False) -> tuple[int, int, int]:
    """Cut ``datagram`` into segments of ``gso_size`` payload bytes, written into ``arena``
    one after the other at a stride of (headers + ``gso_size``) bytes.

    ``datagram`` is a prefix (the tunnel's outer headers, an inner Ethernet header),
    then an IPv4 or IPv6 TCP packet at ``inner_ip`` whose TCP header is at
    ``transport``. Every segment gets the prefix, with the outer IPv4 header at its
    start (``outer_ipv4``) given the segment's length, the next identification and its
    checksum; the inner IP header with its own length (IPv4: the next identification
    and checksum); the TCP header with its sequence number, CWR on the first segment
    only, FIN and PSH on the last only, and a full checksum; or, if the receiver finishes
    it (``remote_checksum``), the segment's pseudo-header sum in its place.

    Returns ``(count, stride, last_length)``; the last segment may be shorter.
    """
    version, header_end = _inner_layout(datagram, inner_ip, transport)
    if gso_size < 1 or (outer_ipv4 and (inner_ip < 20 or datagram[0] >> 4 != 4)):
        raise _malformed()
    payload = len(datagram) - header_end
    count = segment_count(payload, gso_size)
    stride = header_end + gso_size
    last_length = header_end + payload - (count - 1) * gso_size
    if len(arena) < (count - 1) * stride + last_length:
        raise ValueError(f"the arena holds {len(arena)} bytes; {count} segments need more")
    flags = datagram[transport + 13]
    sequence = _TCP_SEQUENCE.unpack_from(datagram, transport + 4)[0]
    inner_id = _IPV4_LENGTH_ID.unpack_from(datagram, inner_ip + 2)[1] if version == 4 else 0
    outer_id = _IPV4_LENGTH_ID.unpack_from(datagram, 2)[1] if outer_ipv4 else 0
    for k in range(count):
        at = k * stride
        length = stride if k < count - 1 else last_length
        arena[at:at + header_end] = datagram[:header_end]
        arena[at + header_end:at + length] = datagram[header_end + k * gso_size:
                                                      header_end + k * gso_size + length
                                                      - header_end]
        if outer_ipv4:
            _set_ipv4_length(arena, at, length, (outer_id + k) & 0xFFFF)
        if version == 4:
            _set_ipv4_length(arena, at + inner_ip, length - inner_ip, (inner_id + k) & 0xFFFF)
        else:
            _U16.pack_into(arena, at + inner_ip + 4, length - inner_ip - 40)
        _TCP_SEQUENCE.pack_into(arena, at + transport + 4, (sequence + k * gso_size) & 0xFFFFFFFF)
        segment_flags = flags
        if k > 0:
            segment_flags &= ~TCP_CWR
        if k < count - 1:
            segment_flags &= ~(TCP_FIN | TCP_PSH)
        arena[at + transport + 13] = segment_flags
        checksum_at = at + transport + TCP_CHECKSUM_OFFSET
        pseudo = _pseudo_sum(arena, at + inner_ip, version, length - transport)
        if remote_checksum:
            _U16.pack_into(arena, checksum_at, pseudo)
            continue
        arena[checksum_at:checksum_at + 2] = b"\0\0"
        _U16.pack_into(arena, checksum_at, internet_checksum(arena[at + transport:at + length],
                                                             pseudo))
    return count, stride, last_length


def finish_checksum(packet, checksum_start: int, checksum_offset: int) -> None:
    """Complete a checksum left partial: the field at ``checksum_start + checksum_offset``
    holds the pseudo-header sum, and the checksum covers ``packet[checksum_start:]``."""
    field = checksum_start + checksum_offset
    if not 0 <= checksum_start <= field <= len(packet) - 2:
        raise _malformed()
    checksum = internet_checksum(packet[checksum_start:])
    if checksum == 0 and checksum_offset == 6:
        checksum = 0xFFFF   # UDP sends a computed zero as all ones (RFC 768)
    _U16.pack_into(packet, field, checksum)


# -- coalescing ---------------------------------------------------------------------------

class _Segment:
    """What joining needs of one TCP segment or UDP datagram."""

    __slots__ = ("version", "protocol", "transport", "header_end", "sequence", "flags")


def _joinable(packet, l2: int, ethernet: bool, remote_checksum: bool) -> _Segment | None:
    """The layout of ``packet`` if it may be joined to others: a TCP data segment (ACK,
    maybe PSH) or a UDP datagram with data, no IPv4 options or fragments, no IPv6
    extension headers, exact lengths and a valid checksum (an IPv4 UDP datagram may
    have none; with ``remote_checksum``, the pseudo-header sum a sender left for the
    receiver to finish will do); behind an Ethernet header (``ethernet``), the EtherType
    of its version."""
    length = len(packet)
    if length < l2 + 28:
        return None
    version = packet[l2] >> 4
    if version == 4:
        protocol = packet[l2 + 9]
        if packet[l2] != 0x45 or packet[l2 + 6] & 0x3F or packet[l2 + 7] or \
                _U16.unpack_from(packet, l2 + 2)[0] != length - l2 or \
                ethernet and _U16.unpack_from(packet, l2 - 2)[0] != EtherType.IPV4:
            return None
        transport = l2 + 20
    elif version == 6:
        protocol = packet[l2 + 6]
        if length < l2 + 48 or _U16.unpack_from(packet, l2 + 4)[0] != length - l2 - 40 or \
                ethernet and _U16.unpack_from(packet, l2 - 2)[0] != EtherType.IPV6:
            return None
        transport = l2 + 40
    else:
        return None
    segment = _Segment()
    if protocol == IpProto.TCP:
        if length < transport + 20:
            return None
        header_end = transport + (packet[transport + 12] >> 4) * 4
        flags = packet[transport + 13]
        if header_end < transport + 20 or header_end >= length or flags & ~TCP_PSH != TCP_ACK:
            return None
        segment.sequence = _TCP_SEQUENCE.unpack_from(packet, transport + 4)[0]
    elif protocol == IpProto.UDP:
        header_end, flags = transport + 8, 0
        if header_end >= length or _U16.unpack_from(packet, transport + 4)[0] != length - transport:
            return None
        segment.sequence = 0
    else:
        return None
    # An IPv4 UDP datagram may come without a checksum (0): the joined one gets one. IPv6
    # UDP must have one (RFC 8200 §8.1), and every other must be right.
    field = _U16.unpack_from(packet, transport + (
        TCP_CHECKSUM_OFFSET if protocol == IpProto.TCP else UDP_CHECKSUM_OFFSET))[0]
    unchecked = protocol == IpProto.UDP and version == 4 and field == 0
    pseudo = _pseudo_sum(packet, l2, version, length - transport, protocol)
    left_to_us = remote_checksum and _same_sum(field, pseudo)
    if not unchecked and not left_to_us and \
            ones_complement_sum(packet[transport:], pseudo) != 0xFFFF:
        return None
    segment.version, segment.protocol, segment.transport, segment.header_end, segment.flags = \
        version, protocol, transport, header_end, flags
    return segment


def _same_sum(a: int, b: int) -> bool:
    """Whether two one's-complement sums are equal (0 and 0xFFFF are both zero)."""
    return a == b or {a, b} == {0, 0xFFFF}


def _same_stream(first, first_segment: _Segment, packet, segment: _Segment, l2: int) -> bool:
    """Whether ``packet`` has every header field of ``first`` that a super-packet keeps."""
    if segment.version != first_segment.version or \
            segment.protocol != first_segment.protocol or \
            segment.header_end != first_segment.header_end or \
            first[:l2] != packet[:l2]:
        return False
    for start, end in (_IPV4_SHARED if segment.version == 4 else _IPV6_SHARED):
        if first[l2 + start:l2 + end] != packet[l2 + start:l2 + end]:
            return False
    transport = segment.transport
    if first[transport:transport + 4] != packet[transport:transport + 4]:
        return False   # the ports
    if segment.protocol == IpProto.UDP:
        return True
    # Then acknowledgement, data offset and window; then the options: all equal.
    return first[transport + 8:transport + 13] == packet[transport + 8:transport + 13] and \
        first[transport + 14:transport + 16] == packet[transport + 14:transport + 16] and \
        first[transport + 20:segment.header_end] == packet[transport + 20:segment.header_end]


def _join_run(packets, count: int, l2: int, ethernet: bool, arena, start: int,
              remote_checksum: bool = False) -> tuple[int, int, int, int]:
    """Copy ``packets[0]`` to ``arena[start:]`` and join to it what follows of its stream
    among ``packets[:count]``, as far as the arena holds: ``(end, gso_size, transport,
    joined)``, as :func:`coalesce` describes them."""
    first = packets[0]
    end = start + len(first)
    arena[start:end] = first
    first_segment = _joinable(first, l2, ethernet, remote_checksum)
    if first_segment is None:
        return end, 0, 0, 1
    tcp = first_segment.protocol == IpProto.TCP
    size = len(first) - first_segment.header_end
    next_sequence = (first_segment.sequence + size) & 0xFFFFFFFF
    flags = first_segment.flags
    joined = 1
    while joined < count and not flags & TCP_PSH and (tcp or joined < MAX_UDP_SEGMENTS):
        packet = packets[joined]
        segment = _joinable(packet, l2, ethernet, remote_checksum)
        added = len(packet) - first_segment.header_end if segment is not None else 0
        if segment is None or (tcp and segment.sequence != next_sequence) or \
                added > size or end + added - start - l2 > MAX_COALESCED + (
                    40 if first_segment.version == 6 else 0) or end + added > len(arena) or \
                not _same_stream(first, first_segment, packet, segment, l2):
            break
        arena[end:end + added] = packet[segment.header_end:]
        end += added
        next_sequence = (next_sequence + added) & 0xFFFFFFFF
        flags |= segment.flags
        joined += 1
        if added < size:
            break  # a short one ends the super-packet, as it ends a burst
    if joined == 1:
        return end, 0, 0, 1
    transport = start + first_segment.transport
    if first_segment.version == 4:
        _set_ipv4_length(arena, start + l2, end - start - l2,
                         _IPV4_LENGTH_ID.unpack_from(arena, start + l2 + 2)[1])
    else:
        _U16.pack_into(arena, start + l2 + 4, end - start - l2 - 40)
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, folded, not inverted.
    pseudo = _pseudo_sum(arena, start + l2, first_segment.version, end - transport,
                         first_segment.protocol)
    if tcp:
        arena[transport + 13] = flags
        _U16.pack_into(arena, transport + TCP_CHECKSUM_OFFSET, pseudo)
    else:
        _U16.pack_into(arena, transport + 4, end - transport)
        _U16.pack_into(arena, transport + UDP_CHECKSUM_OFFSET, pseudo)
    return end, size, first_segment.transport, joined


def gro_merged(packet, l2: int) -> int:
    """Where the TCP header of ``packet`` (behind ``l2`` bytes of link header) starts if it
    is a TCP super-packet as Linux's GRO leaves one for whoever reads it whole (a raw
    socket, after GRE, IP-in-IP or 6in4 GRO on the receiving NIC): exact IP lengths, no IPv4
    options or fragment, no IPv6 extension header, TCP, and in the checksum field the
    pseudo-header sum of the whole (``tcp_gro_complete``), to be finished as a partial
    checksum; 0 if it is not one."""
    length = len(packet)
    if length < l2 + 40:
        return 0
    version = packet[l2] >> 4
    if version == 4:
        if packet[l2] != 0x45 or packet[l2 + 9] != IpProto.TCP or packet[l2 + 6] & 0x3F or \
                packet[l2 + 7] or _U16.unpack_from(packet, l2 + 2)[0] != length - l2:
            return 0
        transport = l2 + 20
    elif version == 6:
        if length < l2 + 60 or packet[l2 + 6] != IpProto.TCP or \
                _U16.unpack_from(packet, l2 + 4)[0] != length - l2 - 40:
            return 0
        transport = l2 + 40
    else:
        return 0
    checksum = _U16.unpack_from(packet, transport + TCP_CHECKSUM_OFFSET)[0]
    return transport if checksum == _pseudo_sum(bytes(packet[:transport]), l2, version,
                                                 length - transport) else 0


def coalesce(packets, count: int, l2: int, ethernet: bool, arena,
             headroom: int) -> list[tuple[int, int, int, int, int]]:
    """Copy ``packets[:count]`` into ``arena``, joining consecutive segments of one TCP
    stream, and consecutive datagrams of one UDP flow, into super-packets, with
    ``headroom`` bytes left free before each.

    ``l2`` is the length of the link header in front of each IP packet (14 on TAP),
    which is Ethernet's (ending in the EtherType) if ``ethernet``.
    Returns one ``(start, end, gso_size, transport, joined)`` per packet written: a
    super-packet has the gso_size of its parts (every one but the last that size),
    the length of the whole in its IP (and UDP) header, and in its checksum field the
    pseudo-header sum to complete (``CHECKSUM_PARTIAL`` at ``transport``), and says how
    many packets it joined; anything else is copied as it was, with gso_size 0.
    TCP is joined as Linux's ``tcp_gro_receive`` joins it (consecutive sequence
    numbers, the same flags but PSH, which ends a super-packet, the same options); UDP
    as ``udp_gro_receive`` does, at most 64 datagrams.
    """
    if ethernet and l2 < 14:
        raise ValueError("an Ethernet link header is 14 bytes at least")
    runs: list[tuple[int, int, int, int, int]] = []
    at = i = 0
    while i < count:
        start = at + headroom
        if start + len(packets[i]) > len(arena):
            raise ValueError("the arena is too small for the packets")
        at, gso_size, transport, joined = _join_run(packets[i:count], count - i, l2, ethernet,
                                                    arena, start)
        runs.append((start, at, gso_size, transport, joined))
        i += joined
    return runs


def join(train, at: int, end: int, step: int, l2: int, ethernet: bool, out,
         remote_checksum: bool = False) -> tuple[int, int, int, int]:
    """:func:`coalesce`'s first run for datagrams that lie one after the other in ``train``
    (what a UDP socket's GRO hands over): from ``train[at:end]``, every ``step`` bytes one
    (the last may be shorter), into ``out[0:]``. Returns ``(end, gso_size, transport,
    joined)``: ``joined`` datagrams were taken, ``out[:end]`` is what they make. With
    ``remote_checksum``, a packet whose checksum field holds the pseudo-header sum (its
    sender left the checksum to the receiver) is joined too: the joined one's checksum
    is left partial anyway."""
    if not 0 <= at <= end <= len(train) or step <= 0 or l2 < 0 or ethernet and l2 < 14:
        raise ValueError("at, end, step or l2 out of range")
    datagrams = [train[k:min(k + step, end)] for k in range(at, end, step)][:MAX_TRAIN_SEGMENTS] \
        or [train[at:at]]
    if len(datagrams[0]) > len(out):
        raise ValueError("out is too small for a datagram of the train")
    return _join_run(datagrams, len(datagrams), l2, ethernet, out, 0, remote_checksum)


# -- the accelerator ----------------------------------------------------------------------

PYTHON = (segment_tcp, finish_checksum, coalesce, join)   # the reference, kept for the tests

try:
    from encap import _gso
except ImportError:   # built without a C compiler: the reference serves
    _gso = None

ACCELERATED = _gso is not None

if _gso is not None:
    def segment_tcp(datagram, inner_ip, transport, gso_size, outer_ipv4, arena,  # noqa: F811
                    remote_checksum=False):
        result = _gso.segment_tcp(datagram, inner_ip, transport, gso_size, outer_ipv4, arena,
                                  remote_checksum)
        if result is None:
            raise _malformed()
        return result

    def finish_checksum(packet, checksum_start, checksum_offset):  # noqa: F811
        if not _gso.finish_checksum(packet, checksum_start, checksum_offset):
            raise _malformed()

    coalesce = _gso.coalesce  # noqa: F811
    join = _gso.join  # noqa: F811
