"""The endpoint of a tunnel over a raw IP socket: the outer IPv4 header is ours to write."""

from encap.errors import DecodeError
from encap.ipv4 import FLAG_DONT_FRAGMENT, Ipv4Outer, Ipv4Tunnel
from encap.mss import clamp_mss

from tunnelrouter.modes import TunnelConfig
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.endpoint import Endpoint, inner_ip

MAX_PACKET = 0xFFFF


class RawEndpoint(Endpoint):
    """A tunnel over a raw IP socket (gre, gretap, ipip, sit): the outer IPv4 header is
    written here, per packet, with its TTL, TOS and DF."""

    def __init__(self, config: TunnelConfig):
        super().__init__(config)
        self.header = self.mode.codec(config)
        self.outer = Ipv4Outer(config.local.packed, config.remote.packed, self.mode.protocol,
                               ttl=self.default_ttl, tos=self.tos_fixed,
                               dont_fragment=config.pmtu_discovery)
        self.codec = Ipv4Tunnel(self.outer, self.header)
        self.destination = ((str(config.remote), 0),)

    def encapsulate(self, batch: Batch, now: float, fragmentable: bool = False) -> None:
        """Each packet of ``batch`` (from the device) becomes a datagram to the peer;
        ``fragmentable``: with outer DF clear, whatever its size."""
        views, buffers, starts, ends = batch.views, batch.buffers, batch.starts, batch.ends
        packets, destinations, ancillary = batch.packets, batch.destinations, batch.ancillary
        gso_sizes = batch.gso_sizes
        limit = MAX_PACKET if fragmentable else self.frame_limit
        ethernet, outer, destination = self.ethernet, self.outer, self.destination
        encap_into, outer_fields, drops = self.codec.encap_into, self._outer_fields, \
            self.counters.drops
        mss = self.mss
        keep_df = self.discovery and not fragmentable
        for i in range(batch.count):
            start, end = starts[i], ends[i]
            packet = views[i][start:end]
            packets[i] = None
            # A super-packet is decided on, and encapsulated, as its first segment.
            segment_end = self._first_segment(batch, i, packet) if gso_sizes[i] else end
            if segment_end - start > limit or segment_end < 0:
                self._refuse(batch, i, packet, segment_end, now)
                continue
            inner = inner_ip(packet, True) if ethernet else packet
            if mss is not None and inner is not None:
                clamp_mss(inner, mss[0], mss[1])
            ttl, outer.tos, inner_fragmentable, _ = outer_fields(inner)
            if not ttl:
                self._time_exceeded(packet, now)
                continue
            outer.ttl = ttl
            # Outer DF as the inner IPv4 packet's (RFC 2003 §3.1): a packet that may be
            # fragmented is fragmented by a narrow WAN link rather than lost before the
            # path MTU is known; once it is, such packets are fragmented inside (_too_big).
            flags = FLAG_DONT_FRAGMENT if keep_df and not inner_fragmentable else 0
            if flags != outer.flags:  # the plain attribute: the property costs a call
                outer.dont_fragment = bool(flags)
            try:
                header_start = encap_into(buffers[i], start, segment_end)
            except DecodeError as error:
                drops[error.reason] += 1
                continue
            packets[i] = views[i][header_start:end]
            destinations[i] = destination
            ancillary[i] = None  # the outer header is ours: no marking for the socket
            if gso_sizes[i]:
                # Each segment gets the next identification: skip those it will use.
                segments = self._encapsulated_super_packet(batch, i, start - header_start)
                outer.identification = (outer.identification + segments - 1) & 0xFFFF

    def _send_outer_fragmented(self, packet: memoryview, now: float) -> None:
        self._send_one(packet, now, fragmentable=True)

    def _sender(self, batch: Batch, i: int) -> tuple:
        return self.destination

    def take_over(self, old: Endpoint) -> None:
        super().take_over(old)
        # The GRE receive window and send numbering go on, if both number their packets.
        header, previous = self.header, getattr(old, "header", None)
        if getattr(header, "sequence", False) and getattr(previous, "sequence", False):
            header.take_over_sequence(previous)

    def status(self, now: float) -> dict:
        return super().status(now) | self.mode.codec_status(self.header)
