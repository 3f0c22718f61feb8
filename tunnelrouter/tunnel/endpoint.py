"""A tunnel endpoint: packets and ``now`` in, what to do with them out. No system calls.

One object per configured tunnel. ``encapsulate`` takes a batch read from the
tunnel's device and leaves in it the datagrams to send and where to. From the
wire, a ``Demux`` (``demux.py``: one per underlay socket, for the tunnels that
share it) hands each datagram of a batch to its endpoint, whose ``decapsulate``
leaves in the batch the packet for the device (or nothing). Whatever else a
packet calls for (an ICMP error to its sender, fragments, a changed path MTU, the
answer to a peer's keepalive) waits in ``outbox`` for the I/O side. Every packet
not passed on is counted under a ``DropReason``; nothing here logs, and nothing
here raises on what arrives.

This is what every endpoint shares; ``raw_endpoint.py`` and ``udp_endpoint.py``
are the two kinds, by what their datagrams travel in (``endpoint_for`` picks one).

The common case costs a length comparison, the MSS clamp and the outer TTL/TOS
rule; a packet larger than the learnt path MTU takes the slow path
(``_too_big``): fragments of a non-DF IPv4 packet, ICMP too-big otherwise.
"""

import struct

from encap.ecn import (DROP, ECN_MASK, UNUSED_COMBINATIONS, decapsulated_ecn, outer_ecn,
                       packet_ecn, set_packet_ecn)
from encap.errors import DecodeError, DropReason
from encap.fragment import fragment_ipv4
from encap.gso import gro_merged, segment_count, segment_tcp
from encap.icmp import Icmp4Type, Icmp4Unreachable, Icmp6Type, relayed_error
from encap.keepalive import ends_in_marker
from encap.ipv4 import FLAG_DONT_FRAGMENT
from encap.mss import clamp_mss, clamp_mss_in_frame
from encap.mtu import IPV4_MINIMUM_MTU, IPV6_MINIMUM_MTU
from encap.wire import ETHERNET_HEADER_LENGTH, HEADROOM

from tunnelrouter.modes import TunnelConfig
from tunnelrouter.modes.keepalive import Action
from tunnelrouter.tunnel.allowed import inner_source_check
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.icmp import IcmpReplies
from tunnelrouter.tunnel.liveness import Liveness
from tunnelrouter.tunnel.pmtu import PathMtu
from tunnelrouter.tunnel.ratelimit import PeerRateLimit
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

# The outer TTL of a datagram that names none: also the UDP socket's own default.
DEFAULT_TTL = 64
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_IPV6 = b"\x86\xdd"
# An IPv4 header's first byte, TOS, total length, flags byte and TTL; of IPv6, the first
# two bytes and the payload length.
_IPV4_OUTER_FIELDS = struct.Struct("!BBH2xBxB")


def inner_ip(packet: memoryview, ethernet: bool) -> memoryview | None:
    """The IP packet inside ``packet`` (a TUN packet, or a TAP frame carrying IP)."""
    if not ethernet:
        return packet
    ethertype = packet[12:14]
    if ethertype == _ETHERTYPE_IPV4 or ethertype == _ETHERTYPE_IPV6:
        return packet[ETHERNET_HEADER_LENGTH:]
    return None


def ip_length(packet: memoryview) -> int:
    """The length an IP header gives its packet (0 if there is no whole header to read)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[2] << 8 | packet[3]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return 40 + (packet[4] << 8 | packet[5])
    return 0


class Outbox:
    """What an endpoint asks of the I/O side besides its batch; drained after each call."""

    __slots__ = ("device_packets", "datagrams", "mtu_changed", "liveness_changed")

    def __init__(self) -> None:
        self.device_packets: list[bytes] = []   # ICMP errors for inner senders
        # Slow-path datagrams (fragments, outer-fragmented IPv6):
        # (datagram, destinations, marking, inner length).
        self.datagrams: list[tuple] = []
        self.mtu_changed = False                 # the routes' MTU must follow effective_mtu
        self.liveness_changed = False            # the peer went up or down: routes, carrier

    def __bool__(self) -> bool:
        return bool(self.device_packets or self.datagrams or self.mtu_changed
                    or self.liveness_changed)


class Endpoint:
    """What every tunnel shares: counters, MSS, outer TTL/TOS, path MTU, ICMP, ECN."""

    # Whether inner checksums a peer left to be finished are taken (VXLAN's remote
    # checksum offload): the socket then joins datagrams so left.
    remote_checksum_rx = False

    def __init__(self, config: TunnelConfig):
        mode = config.kind
        self.config = config
        self.name = config.name
        self.mode = mode
        self.ethernet = mode.ethernet
        # Whether a TCP super-packet may cross whole, its outer header written once and
        # copied to every segment: not when that header changes per packet.
        self.super_packets = mode.carries_super_packets(config)
        self.keys = mode.keys(config)
        self.peers = tuple(str(peer) for peer in config.peers)
        self.counters = Counters()
        self.outbox = Outbox()
        self.icmp = IcmpReplies(config, self.counters)
        # The outer TOS is (inner TOS & inherited bits) | fixed bits: DSCP is the
        # upper six bits, ECN the lower two (RFC 6040 normal mode copies them).
        inherit_dscp = config.dscp == "inherit"
        self.tos_inherited = (0xFC if inherit_dscp else 0) | outer_ecn(ECN_MASK, config.ecn)
        self.tos_fixed = 0 if inherit_dscp else config.dscp << 2
        self.inherit_ttl = config.ttl == "inherit"
        self.default_ttl = DEFAULT_TTL if self.inherit_ttl else config.ttl
        self.frame_overhead = ETHERNET_HEADER_LENGTH if self.ethernet else 0
        self._clamp_mss = clamp_mss_in_frame if self.ethernet else clamp_mss
        self.discovery = config.pmtu_discovery
        self.pmtu_overhead = config.derived_mtu().overhead.total
        self.pmtu = PathMtu(config.device_mtu, self.pmtu_overhead, config.pmtu_timeout,
                            config.local.version) if config.pmtu_discovery else None
        self._apply_mtu(config.device_mtu)
        self.keepalive = mode.keepalive(config)
        # A decapsulated packet is looked at as a possible probe only if this byte says so.
        self.keepalive_at, self.keepalive_values = self.keepalive.at, self.keepalive.values
        self.liveness = Liveness(None if config.keepalive == "off" else config.keepalive,
                                 config.keepalive_retries)
        # The last datagram accepted from a peer for the device (``heard``, once a run).
        self.heard_at: float | None = None
        # The receive policy (allowed-ips, rate-limit); None: let everything in.
        self.inner_source_check = None if config.allowed_ips is None else \
            inner_source_check(config.allowed_ips, self.ethernet, mode.inner_families)
        self.rate_limit = None if config.rate_limit is None else \
            PeerRateLimit(config.rate_limit, self.peers)

    def take_over(self, old: "Endpoint") -> None:
        """This endpoint replaces ``old`` for the same tunnel (a reload changed it in place):
        carry on with its counters, and what it learnt that still holds."""
        self.counters.take_over(old.counters)
        self.liveness.take_over(old.liveness)
        self.heard_at = old.heard_at
        if self.rate_limit is not None and old.rate_limit is not None:
            self.rate_limit.take_over(old.rate_limit)
        if self.pmtu is not None and old.pmtu is not None:
            self.pmtu.take_over(old.pmtu, self.peers)
            self._apply_mtu(self.pmtu.effective)

    # -- MTU ------------------------------------------------------------------------------

    def _apply_mtu(self, mtu: int) -> None:
        """The effective MTU rules the size check, and the MSS clamp when it is 'auto'."""
        self.effective_mtu = mtu
        self.frame_limit = mtu + self.frame_overhead
        self.mss = self.config.mss_limits(mtu)

    def _learn_path_mtu(self, peer: str, path_mtu: int, now: float) -> None:
        if self.pmtu is not None and self.pmtu.lower(peer, path_mtu, now):
            self._apply_mtu(self.pmtu.effective)
            self.outbox.mtu_changed = True

    def tick(self, now: float) -> None:
        """Housekeeping, about once a second: forget what has expired; probe the peer and
        judge whether it is there."""
        if self.pmtu is not None and self.pmtu.expire(now):
            self._apply_mtu(self.pmtu.effective)
            self.outbox.mtu_changed = True
        liveness = self.liveness
        due = liveness.probe(now)
        if due is not None:
            self._send_one(self.keepalive.probe(*due), now)
        if liveness.judge(self.heard_at, now):
            self.outbox.liveness_changed = True

    # -- keepalives -----------------------------------------------------------------------

    def _keepalive(self, batch: Batch, i: int, packet: memoryview, now: float) -> bool:
        """A packet that may be a probe (ours answered, or the peer's): True if it was one,
        and is not for the device."""
        action, detail = self.keepalive.inspect(packet)
        if action is Action.PASS:
            return False
        if action is Action.ANSWERED:
            if self.liveness.answered(detail, now):
                return True
            if not ends_in_marker(detail):
                return False      # protocol 253 or an echo reply of somebody else's
            self.counters.drops[DropReason.KEEPALIVE_NOT_OURS] += 1
            return True
        limit = self.rate_limit   # answering costs a datagram: the peer pays for it
        if limit is not None and not limit.admit(batch.addresses[i], len(packet), now):
            self.counters.drops[DropReason.RATE_LIMITED] += 1
            return True
        if action is Action.REFLECT:
            self.outbox.datagrams.append((bytes(packet), self._sender(batch, i), None, 0))
        else:
            self._send_one(detail, now, self._sender(batch, i))
        self.counters.peer_keepalives_answered += 1
        batch.answering.append(self)
        return True

    def _sender(self, batch: Batch, i: int) -> tuple:
        """Where datagram ``i`` came from, as the destinations to answer it."""
        raise NotImplementedError

    def liveness_status(self, now: float, wall: float) -> dict:
        """What the tunnel knows of its peers; times as Unix times (``wall`` is now)."""
        to_wall = wall - now
        return self.liveness.status(to_wall) | {"peers": {
            peer: {"latest_rx": None if heard is None else heard + to_wall}
            for peer, heard in self._peers_heard()}}

    def heard(self, peer: str, now: float) -> None:
        """A datagram from ``peer`` was accepted for the device (the Demux says so once a
        run of them)."""
        self.heard_at = now

    def _peers_heard(self):
        """Each peer and when its latest datagram was accepted (for the device, or an
        answer to a probe)."""
        heard = max((at for at in (self.heard_at, self.liveness.heard_at) if at is not None),
                    default=None)
        return ((peer, heard) for peer in self.peers)

    # -- per packet helpers ---------------------------------------------------------------

    def _outer_fields(self, inner: memoryview | None) -> tuple[int, int, bool, int]:
        """Outer TTL, TOS and whether the outer packet may be fragmented, for the inner IP
        packet (ttl, dscp and ecn settings; an IPv4 packet's own DF, RFC 2003 §3.1), and
        the length its header gives it (0: not an IP packet). TTL 0: drop."""
        try:
            first, tos, length, flags, ttl = _IPV4_OUTER_FIELDS.unpack_from(inner)
        except (struct.error, TypeError):   # shorter than an IPv4 header, or no IP at all
            first = 0
        if first >> 4 == 4:
            fragmentable = not flags & 0x40
        elif first >> 4 == 6 and len(inner) >= 40:
            ttl, tos, fragmentable = inner[7], ((first & 0x0F) << 4) | (tos >> 4), False
            length = 40 + (inner[4] << 8 | inner[5])
        else:
            return self.default_ttl, self.tos_fixed, False, 0
        return (ttl if self.inherit_ttl else self.default_ttl if ttl else 0), \
            (tos & self.tos_inherited) | self.tos_fixed, fragmentable, length

    def _decapsulate_ecn(self, packet: memoryview, outer: int) -> DropReason | None:
        """RFC 6040 §4.2 on an arriving packet whose outer header is ECN-capable: why to
        drop it (CE on a Not-ECT inner packet), or None."""
        inner = inner_ip(packet, self.ethernet)
        if inner is None:
            return None  # not IP: nothing to mark
        try:
            inner_ecn = packet_ecn(inner)
        except DecodeError as error:
            return error.reason
        ecn = decapsulated_ecn(inner_ecn, outer)
        if (inner_ecn, outer) in UNUSED_COMBINATIONS:
            self.counters.ecn_unused_combinations += 1
        if ecn == inner_ecn:
            return None
        if ecn == DROP:
            return DropReason.ECN_CE_ON_NOT_ECT
        set_packet_ecn(inner, ecn)
        return None

    def _icmp_error(self, packet: memoryview, icmp_type: int, code: int, parameter: int,
                    now: float) -> None:
        """Queue an ICMP error about ``packet`` (a TUN packet or TAP frame) for its sender."""
        inner = inner_ip(packet, self.ethernet) if len(packet) >= self.frame_overhead else None
        if inner is None:
            return
        header = packet[:ETHERNET_HEADER_LENGTH] if self.ethernet else None
        message = self.icmp.error(inner, header, icmp_type, code, parameter, now)
        if message is not None:
            self.outbox.device_packets.append(message)

    def _time_exceeded(self, packet: memoryview, now: float) -> None:
        """RFC 2003 §3.1 / RFC 1812 §5.3.1: a packet with no hops left is not sent on."""
        self.counters.drops[DropReason.TTL_EXPIRED] += 1
        inner = inner_ip(packet, self.ethernet)
        if inner[0] >> 4 == 4:
            self._icmp_error(packet, Icmp4Type.TIME_EXCEEDED, 0, 0, now)
        else:
            self._icmp_error(packet, Icmp6Type.TIME_EXCEEDED, 0, 0, now)

    # -- from the wire --------------------------------------------------------------------

    def decapsulate(self, batch: Batch, i: int, datagram: memoryview, now: float) -> bool:
        """Datagram ``i`` of ``batch`` (from the wire; for a raw socket, outer header
        included): True if ``batch.packets[i]`` is now a packet for the device."""
        try:
            packet = self.codec.decap(datagram)
        except DecodeError as error:
            if error.reason is not self.keepalive.answer_reason or \
                    not self.liveness.answered(datagram, now):
                self._drop(batch, i, error.reason)
            return False
        if self.remote_checksum_rx and not batch.gso_sizes[i]:
            refused = self._finish_checksum(datagram, packet)
            if refused is not None:
                self._drop(batch, i, refused)
                return False
        if packet[self.keepalive_at] in self.keepalive_values and \
                self._keepalive(batch, i, packet, now):
            return False
        if len(packet) > self.frame_limit and not batch.gso_sizes[i]:
            self._merged_by_gro(batch, i, packet)
        # Checked in the order the README's "Anti-spoofing and rate limits" gives; the rate
        # limit last, so that a peer is charged only for what is delivered.
        check = self.inner_source_check
        if check is not None:
            refused = check(packet)
            if refused is not None:
                self._drop(batch, i, refused)
                return False
        ecn = batch.tos[i] & ECN_MASK
        if ecn:
            refused = self._decapsulate_ecn(packet, ecn)
            if refused is not None:
                self._drop(batch, i, refused)
                return False
        limit = self.rate_limit
        if limit is not None and not limit.admit(batch.addresses[i], len(packet), now,
                                                 batch.parts(i)):
            self._drop(batch, i, DropReason.RATE_LIMITED)
            return False
        mss = self.mss
        if mss is not None:
            self._clamp_mss(packet, mss[0], mss[1])
        batch.packets[i] = packet
        return True

    def _finish_checksum(self, datagram: memoryview, packet: memoryview) -> DropReason | None:
        """Finish the inner checksum of ``packet`` if the tunnel header of ``datagram`` says
        its sender left it to us (only modes with remote checksum offload can); why not,
        if it cannot be."""
        return None

    def _merged_by_gro(self, batch: Batch, i: int, packet: memoryview) -> None:
        """A packet longer than the tunnel carries may be the receiving NIC's GRO at work:
        Linux joins GRE, IP-in-IP and 6in4 datagrams of one TCP stream before a raw socket
        reads them. Such a super-packet goes to the device as one, as if the socket had
        joined it (``joined``), cut at the tunnel's largest segment. Anything else that
        long (a peer's fragments, reassembled) goes on as it came."""
        transport = gro_merged(packet, self.frame_overhead)
        if transport:
            header_end = transport + (packet[transport + 12] >> 4) * 4
            size = self.frame_limit - header_end
            if 0 < size and header_end < len(packet):
                batch.gso_sizes[i] = size
                batch.joined[i] = segment_count(len(packet) - header_end, size)

    def _drop(self, batch: Batch, i: int, reason: DropReason) -> None:
        """Count datagram ``i`` of ``batch`` dropped: as many as were joined into it."""
        self.counters.drops[reason] += batch.parts(i)

    # -- super-packets ---------------------------------------------------------------------

    def _first_segment(self, batch: Batch, i: int, packet: memoryview) -> int:
        """The end (in its buffer) of the first segment of super-packet ``i``; -1 if its
        headers do not fit in it (counted)."""
        tcp = batch.tcp_offsets[i]
        if not batch.ip_offsets[i] < tcp <= len(packet) - 20:
            self.counters.drops[DropReason.INNER_MALFORMED] += 1
            return -1
        header_end = tcp + (packet[tcp + 12] >> 4) * 4
        gso_size = batch.gso_sizes[i]
        # Room to cut it (a sender's MSS is 48 bytes at least, so this always holds).
        fits = segment_count(len(packet) - header_end, gso_size) * (
            HEADROOM + header_end + gso_size) <= len(batch.scratch)
        if not tcp + 20 <= header_end <= len(packet) or not fits:
            self.counters.drops[DropReason.INNER_MALFORMED] += 1
            return -1
        return batch.starts[i] + min(len(packet), header_end + gso_size)

    def _encapsulated_super_packet(self, batch: Batch, i: int, moved: int,
                                   remote_checksum: bool = False) -> int:
        """Super-packet ``i`` got ``moved`` bytes of outer header (which says, if
        ``remote_checksum``, that the receiver finishes the TCP checksums): its offsets
        follow; the number of segments it will be cut into."""
        batch.ip_offsets[i] += moved
        batch.tcp_offsets[i] += moved
        batch.remote_checksums[i] = remote_checksum
        tcp = batch.tcp_offsets[i]
        packet = batch.packets[i]
        return segment_count(len(packet) - tcp - (packet[tcp + 12] >> 4) * 4, batch.gso_sizes[i])

    def _refuse(self, batch: Batch, i: int, packet: memoryview, segment_end: int,
                now: float) -> None:
        """Packet ``i`` does not go as it is: too big for the path (or, ``segment_end`` -1,
        a super-packet that does not parse, already counted)."""
        if segment_end < 0:
            return
        if batch.gso_sizes[i]:
            self._too_big_super_packet(batch, i, packet, now)
        else:
            self._too_big(packet, now)

    def _too_big_super_packet(self, batch: Batch, i: int, packet: memoryview, now: float) -> None:
        """Segments of a super-packet would not fit the path: cut it here and let each
        segment take the way a packet of its size takes (ICMP, or outer fragments)."""
        scratch = bytearray(len(packet) * 2 + 4096)
        try:
            count, stride, last = segment_tcp(packet, batch.ip_offsets[i], batch.tcp_offsets[i],
                                              batch.gso_sizes[i], False, scratch)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        view = memoryview(scratch)
        for k in range(count):
            segment = view[k * stride:k * stride + (stride if k < count - 1 else last)]
            if len(segment) > self.frame_limit:
                self._too_big(segment, now)
            else:
                self._send_one(segment, now)

    def _send_one(self, packet, now: float, destinations: tuple | None = None,
                  fragmentable: bool = False) -> bool:
        """Encapsulate one packet off the batch (a slow path) into the outbox, to
        ``destinations`` or where the tunnel sends it; False if the tunnel refused it
        (counted)."""
        batch = Batch(1, HEADROOM + len(packet))
        self.encapsulate(batch.fill_from_device([packet]), now, fragmentable)
        if batch.packets[0] is None:
            return False
        self.outbox.datagrams.append((bytes(batch.packets[0]),
                                      destinations or batch.destinations[0],
                                      batch.ancillary[0], len(packet)))
        return True

    # -- the slow paths -------------------------------------------------------------------

    def _too_big(self, packet: memoryview, now: float) -> None:
        """A packet larger than the effective MTU: fragment it if it allows, else tell its
        sender the MTU (RFC 1191, RFC 8201), or carry IPv6 in outer fragments when the
        path is too narrow to tell IPv6 anything (RFC 4213 §3.2)."""
        inner = inner_ip(packet, self.ethernet) if len(packet) >= self.frame_overhead else None
        version = inner[0] >> 4 if inner is not None and len(inner) else 0
        mtu = self.effective_mtu
        if version == 4 and len(inner) >= 20 and not inner[6] << 8 & FLAG_DONT_FRAGMENT:
            self._send_fragments(packet, inner, now)
            return
        if version == 6 and mtu < IPV6_MINIMUM_MTU and len(inner) <= IPV6_MINIMUM_MTU:
            self._send_outer_fragmented(packet, now)
            return
        self.counters.drops[DropReason.TOO_BIG] += 1
        if version == 4:
            self._icmp_error(packet, Icmp4Type.DEST_UNREACHABLE,
                             Icmp4Unreachable.FRAGMENTATION_NEEDED, mtu, now)
        elif version == 6:
            self._icmp_error(packet, Icmp6Type.PACKET_TOO_BIG, 0, max(mtu, IPV6_MINIMUM_MTU), now)

    def _send_fragments(self, packet: memoryview, inner: memoryview, now: float) -> None:
        """RFC 4459 §3: fragment the inner packet, so the far end never reassembles."""
        try:
            fragments = fragment_ipv4(inner, self.effective_mtu)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        prefix = bytes(packet[:ETHERNET_HEADER_LENGTH]) if self.ethernet else b""
        for fragment in fragments:
            if not self._send_one(prefix + fragment, now):
                return  # refused (and counted) once: the other fragments share its header
            self.counters.fragments_sent += 1

    def _send_outer_fragmented(self, packet: memoryview, now: float) -> None:
        """Send an IPv6 packet of at most 1280 bytes with outer DF clear, where the outer
        header is ours to write; a UDP tunnel cannot (RFC 7348 §4.3: a VTEP does not
        fragment, and DF belongs to the socket that its tunnels share)."""
        self.counters.drops[DropReason.TOO_BIG] += 1

    # -- errors the WAN reports about our packets -----------------------------------------

    def wan_error(self, error: WanError, now: float) -> None:
        """An error about a datagram we sent to ``error.peer`` (one of ours: the caller
        checked): learn the path MTU from it, and relay to the inner sender what
        RFC 2003 §4 / RFC 4213 §3.4 say to relay."""
        self.counters.wan_errors += 1
        origin = error.origin
        header = self.mode.tunnel_header_length(error.quote)
        payload = error.quote[header:] if header is not None else None
        too_big = origin == ErrorOrigin.LOCAL or (
            origin == ErrorOrigin.ICMP4 and error.icmp_type == Icmp4Type.DEST_UNREACHABLE and
            error.code == Icmp4Unreachable.FRAGMENTATION_NEEDED) or (
            origin == ErrorOrigin.ICMP6 and error.icmp_type == Icmp6Type.PACKET_TOO_BIG)
        if too_big:
            # A report must be usable (RFC 1191 routers that send 0 are ignored) and about
            # a packet that was indeed larger, which also rejects most blind forgeries.
            length = error.length or self._quoted_wire_length(payload)
            if error.info < IPV4_MINIMUM_MTU or (origin != ErrorOrigin.LOCAL and
                                                 length <= error.info):
                return
            self._learn_path_mtu(error.peer, error.info, now)
        if origin == ErrorOrigin.ICMP4 and payload is not None:
            self._relay(error, payload, now)

    def _quoted_wire_length(self, payload: memoryview | None) -> int:
        """The wire length of a quoted datagram, from its inner packet's own length."""
        if payload is None or len(payload) < self.frame_overhead:
            return 0
        inner = inner_ip(payload, self.ethernet)
        length = ip_length(inner) if inner is not None else 0
        return length + self.pmtu_overhead if length else 0

    def _relay(self, error: WanError, frame: memoryview, now: float) -> None:
        inner = inner_ip(frame, self.ethernet) if len(frame) > self.frame_overhead else None
        if inner is None or len(inner) == 0:
            return
        version = inner[0] >> 4
        if version not in self.mode.inner_families:
            return  # not a packet this tunnel carries: a forged or corrupted quote
        relayed = relayed_error(error.icmp_type, error.code, version)
        if relayed is None:
            return
        parameter = 0
        if relayed in ((Icmp4Type.DEST_UNREACHABLE, Icmp4Unreachable.FRAGMENTATION_NEEDED),
                       (Icmp6Type.PACKET_TOO_BIG, 0)):
            # What the tunnel itself makes of the report: raised to the floor, if below.
            reported = error.info if self.pmtu is None else max(error.info, self.pmtu.minimum)
            parameter = min(self.effective_mtu, reported - self.pmtu_overhead)
            if parameter < (IPV6_MINIMUM_MTU if version == 6 else IPV4_MINIMUM_MTU):
                return  # nothing true to tell (IPv6 now goes in outer fragments)
            if version == 4 and (len(inner) < 7 or not inner[6] & 0x40):
                return  # its sender allowed fragments: from now on the router makes them
        self._icmp_error(frame, relayed[0], relayed[1], parameter, now)

    # -- what the operator sees -----------------------------------------------------------

    def status(self, now: float) -> dict:
        config = self.config
        return {
            "name": self.name, "mode": config.mode, "local": str(config.local),
            "peers": list(self.peers), "mtu": config.device_mtu,
            "effective_mtu": self.effective_mtu,
            "path_mtu": self.pmtu.status(now) if self.pmtu is not None else {},
            "mss_clamp": "off" if self.mss is None else {
                f"ipv{family}": mss for family, mss in zip((4, 6), self.mss)
                if family in self.mode.inner_families},
            "counters": self.counters.as_dict(),
            "allowed_ips": None if config.allowed_ips is None else [
                str(prefix) for prefix in config.allowed_ips],
            "rate_limit": None if config.rate_limit is None else {
                "packets": config.rate_limit.packets, "bytes": config.rate_limit.bytes_,
                "burst": config.rate_limit.burst},
        }
