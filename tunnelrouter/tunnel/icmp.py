"""ICMP errors the router sends to inner senders: too big, time exceeded, relayed WAN errors.

They are to be written into the tunnel's own device, as if they had come out
of the tunnel, so the kernel routes them to the sender (or delivers them
locally, and lowers its own route's PMTU). On a TAP device the message is framed in
Ethernet back to the MAC the offending frame came from. A token bucket per
tunnel limits them (``icmp-rate-limit``), as RFC 1812 §4.3.2.8 asks.
"""

from encap.icmp import icmp4_error, icmp6_error

_ETHERTYPE = {4: b"\x08\x00", 6: b"\x86\xdd"}


class TokenBucket:
    """``rate`` tokens a second, at most ``rate`` saved up; one token per message."""

    def __init__(self, rate: int):
        self.rate = rate
        self.tokens = float(rate)
        self.updated = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.rate), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class IcmpReplies:
    """Builds ICMP errors for one tunnel; counts what it builds and holds back."""

    def __init__(self, tunnel, counters):
        self.counters = counters
        self.bucket = TokenBucket(tunnel.icmp_rate_limit)
        # The source is the tunnel's own address of the family; an IPv4 tunnel
        # without one speaks from its underlay address, as a kernel tunnel would.
        self.sources: dict[int, bytes] = {}
        for interface in tunnel.addresses:
            self.sources.setdefault(interface.version, interface.ip.packed)
        if tunnel.local.version == 4:
            self.sources.setdefault(4, tunnel.local.packed)

    def error(self, packet, frame_header, icmp_type: int, code: int, parameter: int,
              now: float) -> bytes | None:
        """An ICMP error about the inner IP ``packet`` (possibly truncated) to its source,
        as the packet (or frame) to write into the device.

        ``frame_header`` is the offending frame's Ethernet header on a TAP
        device, else None. None when there is nothing to send: no source address
        of the packet's family, the rate limit, or RFC 1122/4443 forbid an error
        about this packet.
        """
        version = packet[0] >> 4 if len(packet) else 0
        source = self.sources.get(version)
        if source is None:
            return None
        if version == 4:
            message = icmp4_error(packet, icmp_type, code, source, mtu=parameter)
        else:
            message = icmp6_error(packet, icmp_type, code, source, parameter=parameter)
        if message is None:
            return None  # no RFC allows it: not a message held back, and no token spent
        if not self.bucket.take(now):
            self.counters.icmp_rate_limited += 1
            return None
        if frame_header is not None:
            message = (bytes(frame_header[6:12]) + bytes(frame_header[0:6]) + _ETHERTYPE[version]
                       + message)
        self.counters.icmp_sent += 1
        return message

