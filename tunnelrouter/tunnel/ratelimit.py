"""What one peer may send into a tunnel: ``rate-limit``, a token bucket of packets and one of
bytes per configured peer. No system calls and no clock: ``now`` is handed in.

Only packets that would otherwise be delivered are charged (the receive path asks last,
after every check of the datagram and of its inner source): garbage, spoofed sources and
other peers' traffic cost a peer nothing, and a packet refused for want of tokens takes
none. Its bytes are the inner packet's (the frame's, on Ethernet tunnels), as ``rx_bytes``
counts them. One bucket per configured peer, made with the tunnel: what arrives makes none.
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnelrouter.modes.base import RateLimit

_UNLIMITED = float("inf")


class PeerRateLimit:
    """``admit(peer, size, now, packets=1)``: whether ``peer`` may deliver a packet of ``size``
    bytes now (or that many packets of ``size`` bytes in all: what a socket joined from one
    train is admitted or refused whole), its tokens taken if so. A bucket holds ``burst``
    seconds of its rate and starts full; a rate not given is unlimited."""

    __slots__ = ("packet_rate", "byte_rate", "packet_burst", "byte_burst", "buckets", "admit")

    def __init__(self, limit: RateLimit, peers: Iterable[str]):
        self.packet_rate = _UNLIMITED if limit.packets is None else float(limit.packets)
        self.byte_rate = _UNLIMITED if limit.bytes_ is None else float(limit.bytes_)
        self.packet_burst = self.packet_rate * limit.burst
        self.byte_burst = self.byte_rate * limit.burst
        # Per peer: [packets, bytes, as of when] (a list: quicker than attributes).
        self.buckets = {peer: [self.packet_burst, self.byte_burst, 0.0] for peer in peers}
        self.admit = self._admitter()

    def _admitter(self):
        """The check, per packet on the receive path: its values in the closure's cells."""
        buckets, packet_rate, byte_rate, packet_burst, byte_burst = \
            self.buckets, self.packet_rate, self.byte_rate, self.packet_burst, self.byte_burst

        def admit(peer: str, size: int, now: float, packets: int = 1) -> bool:
            bucket = buckets.get(peer)
            if bucket is None:
                return True   # not a peer of the tunnel: refused before it gets here
            if now != bucket[2]:
                # Refilled once per batch: a batch's datagrams share one ``now``.
                elapsed = now - bucket[2]
                if elapsed > 0:
                    bucket[0] = min(packet_burst, bucket[0] + elapsed * packet_rate)
                    bucket[1] = min(byte_burst, bucket[1] + elapsed * byte_rate)
                bucket[2] = now
            if bucket[0] >= packets and bucket[1] >= size:
                bucket[0] -= packets
                bucket[1] -= size
                return True
            return False
        return admit

    def take_over(self, old: PeerRateLimit) -> None:
        """A reload changed the tunnel: peers it still has keep what they had used up (no
        fresh burst for a reload), up to the new burst."""
        for peer, bucket in self.buckets.items():
            previous = old.buckets.get(peer)
            if previous is not None:
                bucket[:] = [min(self.packet_burst, previous[0]),
                             min(self.byte_burst, previous[1]), previous[2]]
