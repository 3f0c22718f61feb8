"""The endpoint of a tunnel over a UDP socket (VXLAN): the kernel writes the outer headers."""

from encap.errors import DecodeError, DropReason
from encap.gso import finish_checksum
from encap.mss import clamp_mss
from encap.vxlan import remote_checksum, remote_checksum_field
from encap.wire import TCP_CHECKSUM_OFFSET

from tunnelrouter.modes import TunnelConfig
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.endpoint import DEFAULT_TTL, Endpoint, inner_ip, ip_length
from tunnelrouter.tunnel.fdb import Fdb

FDB_SHOWN = 100    # status lists at most this many FDB entries (and counts them all)


class UdpEndpoint(Endpoint):
    """A tunnel over a UDP socket (VXLAN): the kernel writes the outer IP and UDP headers.

    TTL and TOS go with each datagram as a marking the socket turns into ancillary
    data (``ttl << 8 | tos``; None for the socket's own TTL 64 and TOS 0); the DF
    bit is the socket's; the arriving TOS comes back per datagram for RFC 6040.
    With several remotes and Ethernet inside, a forwarding database picks the
    remote, and broadcast and unknown unicast go to all of them.

    Remote checksum offload, where configured: the segments of a super-packet go with
    their TCP checksums left for the peer to finish (``remote-checksum-tx``), and a
    datagram whose checksum the peer left is finished here before anything reads it
    (``remote-checksum-rx``; one the socket joined stays partial: the device finishes it).
    """

    def __init__(self, config: TunnelConfig):
        super().__init__(config)
        self.codec = self.mode.codec(config)
        port = config.port
        # Source address -> where to send: one lookup checks the peer and gives the
        # destinations to learn, the same tuple every time.
        self.destinations = {str(peer): ((str(peer), port),) for peer in config.peers}
        self.flood = tuple(destination for (destination,) in self.destinations.values())
        static = {bytes.fromhex(entry.mac.replace(":", "")): ((str(entry.remote), port),)
                  for entry in config.fdb}
        self.fdb = Fdb(config.ageing, config.mac_learning, config.max_fdb, static)
        self._learnt_mac, self._learnt_from, self._learnt_until = b"", None, 0.0
        self.heard_from: dict[str, float] = {}   # remote -> the last datagram accepted
        self.remote_checksum_tx = config.remote_checksum_tx
        self.remote_checksum_rx = config.remote_checksum_rx

    def encapsulate(self, batch: Batch, now: float, fragmentable: bool = False) -> None:
        """As RawEndpoint's; never ``fragmentable``: DF is the socket's (RFC 7348 §4.3)."""
        views, buffers, starts, ends = batch.views, batch.buffers, batch.starts, batch.ends
        packets, destinations, ancillary = batch.packets, batch.destinations, batch.ancillary
        limit, flood, lookup, default_ttl = self.frame_limit, self.flood, self.fdb.lookup, \
            self.default_ttl
        encap_into, outer_fields, drops = self.codec.encap_into, self._outer_fields, \
            self.counters.drops
        mss, gso_sizes = self.mss, batch.gso_sizes
        for i in range(batch.count):
            start, end = starts[i], ends[i]
            frame = views[i][start:end]
            packets[i] = None
            segment_end = self._first_segment(batch, i, frame) if gso_sizes[i] else end
            if segment_end - start > limit or segment_end < 0:
                self._refuse(batch, i, frame, segment_end, now)
                continue
            inner = inner_ip(frame, True)
            ttl, tos, _, length = outer_fields(inner)  # DF is the socket's: RFC 7348 §4.3
            if inner is not None and length > len(inner):
                # An IP packet shorter than it says, which its receiver would drop: sent, an
                # ICMP error about it would be taken as about a datagram of the length it
                # says (the quote is all a UDP socket gives back).
                drops[DropReason.INNER_MALFORMED] += 1
                continue
            if mss is not None and inner is not None:
                clamp_mss(inner, mss[0], mss[1])
            if not ttl:
                ttl = default_ttl  # bridged frames are not routed: their TTL is not ours
            try:
                header_start = encap_into(buffers[i], start, segment_end)
            except DecodeError as error:
                drops[error.reason] += 1
                continue
            packets[i] = views[i][header_start:end]
            destinations[i] = flood if frame[0] & 1 else (lookup(bytes(frame[0:6]), now) or flood)
            ancillary[i] = None if ttl == DEFAULT_TTL and tos == 0 else ttl << 8 | tos
            if gso_sizes[i]:
                left = self.remote_checksum_tx and self._leave_checksums(
                    buffers[i], header_start, batch.tcp_offsets[i])
                self._encapsulated_super_packet(batch, i, start - header_start, left)

    def _leave_checksums(self, buffer, header_start: int, tcp: int) -> bool:
        """Say in the VXLAN header at ``buffer[header_start:]`` that the TCP checksum ``tcp``
        bytes into its frame is left to the peer; False if the header cannot say it."""
        field = remote_checksum_field(tcp, TCP_CHECKSUM_OFFSET)
        if field is None:
            return False
        self.codec.mark_remote_checksum(buffer, header_start, field)
        return True

    def decapsulate(self, batch: Batch, i: int, datagram: memoryview, now: float) -> bool:
        """As any endpoint, from one of the remotes only; the FDB learns from what is
        accepted."""
        destination = self.destinations.get(batch.addresses[i])
        if destination is None:
            self._drop(batch, i, DropReason.NOT_A_PEER)
            return False
        if not super().decapsulate(batch, i, datagram, now):
            return False
        frame, fdb = batch.packets[i], self.fdb
        if fdb.learning and not frame[6] & 1:
            # Frames come in runs from one sender: the MAC learnt last needs no lookup
            # for a second (the FDB refreshes an entry about once a second anyway).
            mac = frame[6:12]
            if mac != self._learnt_mac or destination is not self._learnt_from or \
                    now >= self._learnt_until:
                mac = mac.tobytes()
                if fdb.learn(mac, destination, now):
                    self._learnt_mac, self._learnt_from, self._learnt_until = \
                        mac, destination, now + 1.0
                else:
                    self.counters.fdb_full += 1
        return True

    def _finish_checksum(self, datagram: memoryview, frame: memoryview) -> DropReason | None:
        left = remote_checksum(datagram)
        if left is None:
            return None
        # The sum ends where the IP packet does, not at the frame's padding.
        inner = inner_ip(frame, True)
        length = ip_length(inner) if inner is not None else 0
        if 0 < length < len(inner):
            frame = frame[:len(frame) - len(inner) + length]
        try:
            finish_checksum(frame, *left)
        except DecodeError as error:
            return error.reason
        return None

    def take_over(self, old: Endpoint) -> None:
        super().take_over(old)
        if isinstance(old, UdpEndpoint):
            self.fdb.take_over(old.fdb, self.destinations)
            self.heard_from = {peer: heard for peer, heard in old.heard_from.items()
                               if peer in self.destinations}

    def heard(self, peer: str, now: float) -> None:
        self.heard_at = self.heard_from[peer] = now

    def _keepalive(self, batch: Batch, i: int, packet: memoryview, now: float) -> bool:
        self.heard_from[batch.addresses[i]] = now
        return super()._keepalive(batch, i, packet, now)

    def _sender(self, batch: Batch, i: int) -> tuple:
        return self.destinations[batch.addresses[i]]

    def _peers_heard(self):
        return ((peer, self.heard_from.get(peer)) for peer in self.peers)

    def tick(self, now: float) -> None:
        super().tick(now)
        self.fdb.expire(now)

    def status(self, now: float) -> dict:
        directions = [way for way, on in (("tx", self.remote_checksum_tx),
                                          ("rx", self.remote_checksum_rx)) if on]
        return super().status(now) | {"vni": self.config.id, "remote_checksum": directions,
                                      "fdb_entries": len(self.fdb),
                                      "fdb": self.fdb.as_list(now, FDB_SHOWN)}
