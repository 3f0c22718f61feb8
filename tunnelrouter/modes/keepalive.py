"""Each mode's keepalive: the probe it sends, and what it makes of a packet that may be a
probe (its own coming back, or the peer's to answer). Sans-I/O, as the endpoints.

``inspect`` is asked only about decapsulated packets whose byte ``at`` is one of
``values`` (one comparison per packet on the hot path); it answers what to do:

- ``PASS``: an ordinary packet, for the device;
- ``ANSWERED``: the answer to one of our probes (the ``marker`` is its end);
- ``REFLECT``: the peer's probe, addressed back to it: send it as it is, outside the
  tunnel (what the peer's own kernel would have done);
- ``REPLY``: the peer's probe, answered with an inner packet sent back through the tunnel.
"""

from __future__ import annotations

import enum
import ipaddress

from encap import keepalive as probe
from encap.errors import DropReason
from encap.gre import FLAG_CHECKSUM, FLAG_KEY, FLAG_SEQUENCE
from encap.wire import IPV4_HEADER_LENGTH, IpProto


class Action(enum.Enum):
    PASS = "pass"
    ANSWERED = "answered"
    REFLECT = "reflect"
    REPLY = "reply"


_PASS = (Action.PASS, None)


class Keepalive:
    """A mode's keepalive for one tunnel (``local`` and ``remote``: underlay addresses)."""

    at: int = 0
    values: frozenset[int] = frozenset()
    # A drop reason the tunnel's codec gives our own probe coming back, if it does (GRE
    # protocol 0 is nothing to deliver): such a datagram is looked at as an answer first.
    answer_reason: DropReason | None = None

    def __init__(self, config):
        self.local = ipaddress.ip_address(config.local).packed
        remote = getattr(config, "remote", None)
        self.remote = ipaddress.ip_address(remote).packed if remote is not None else b""

    def probe(self, number: int, marker: bytes) -> bytes:
        raise NotImplementedError

    def inspect(self, packet) -> tuple[Action, object]:
        return _PASS

    def _reflectable(self, packet) -> bool:
        """An IPv4 packet from our address to the peer's, of our own protocol: the peer's
        probe, which its sender expects back as a plain datagram."""
        return (packet[0] == 0x45 and len(packet) > IPV4_HEADER_LENGTH
                and packet[12:16] == self.local and packet[16:20] == self.remote)


class GreKeepalive(Keepalive):
    """Cisco-style: GRE protocol 0 inside, reflected by the peer's routing."""

    at, values = 9, frozenset({IpProto.GRE})
    answer_reason = DropReason.GRE_UNKNOWN_PROTOCOL

    def __init__(self, config):
        super().__init__(config)
        self.flags = ((FLAG_CHECKSUM if config.checksum else 0)
                      | (FLAG_KEY if config.key is not None else 0)
                      | (FLAG_SEQUENCE if config.sequence else 0))
        self.key = config.key

    def probe(self, number: int, marker: bytes) -> bytes:
        return probe.gre_probe(self.local, self.remote, self.flags, self.key, marker)

    def inspect(self, packet):
        if self._reflectable(packet):
            return Action.REFLECT, None
        return _PASS


class IpipKeepalive(Keepalive):
    at, values = 9, frozenset({IpProto.IPIP, probe.EXPERIMENTAL_PROTOCOL})

    def probe(self, number: int, marker: bytes) -> bytes:
        return probe.ipip_probe(self.local, self.remote, marker)

    def inspect(self, packet):
        if packet[9] == probe.EXPERIMENTAL_PROTOCOL:
            return (Action.ANSWERED, packet) if probe.reflected_ipip_probe(packet) else _PASS
        if self._reflectable(packet):
            return Action.REFLECT, None
        return _PASS


class SitKeepalive(Keepalive):
    """An ICMPv6 echo between the two ends' link-local addresses, fe80::<IPv4>."""

    at, values = 6, frozenset({IpProto.ICMPV6})

    def __init__(self, config):
        super().__init__(config)
        self.ours, self.theirs = probe.link_local(self.local), probe.link_local(self.remote)

    def probe(self, number: int, marker: bytes) -> bytes:
        return probe.sit_probe(self.local, self.remote, number, marker)

    def inspect(self, packet):
        kind = probe.icmp6_echo_kind(packet)
        if not kind or packet[24:40] != self.ours or packet[8:24] != self.theirs:
            return _PASS
        if kind == probe.ICMP6_ECHO_REPLY:
            return Action.ANSWERED, packet
        return Action.REPLY, probe.icmp6_echo_reply(packet)


class EthernetKeepalive(Keepalive):
    """A frame of the local experimental EtherType, which a tunnelrouter peer answers."""

    at, values = 12, frozenset({probe.ETHERTYPE_PROBE >> 8})

    def probe(self, number: int, marker: bytes) -> bytes:
        return probe.ethernet_probe(probe.PROBE_REQUEST, marker)

    def inspect(self, frame):
        kind = probe.ethernet_probe_kind(frame)
        if kind == probe.PROBE_REPLY:
            return Action.ANSWERED, frame
        if kind == probe.PROBE_REQUEST:
            return Action.REPLY, probe.ethernet_probe(
                probe.PROBE_REPLY, bytes(frame[-probe.MARKER_LENGTH:]))
        return _PASS
