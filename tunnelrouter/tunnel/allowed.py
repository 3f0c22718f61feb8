"""Which inner sources a tunnel lets in from its peers: ``allowed-ips``, as WireGuard's
AllowedIPs. No system calls, no state: a packet in, a reason to drop it (or None) out.

An IP packet passes when its source address lies in one of the prefixes. A tunnel of
Ethernet frames passes, besides the IP frames that pass that test, what a link needs
and cannot spoof with:

- ARP whose sender address is allowed, or 0.0.0.0 (an RFC 5227 probe, which no host
  learns from). An ARP reply or gratuitous ARP for an address outside ``allowed-ips``
  would take that address's traffic to the far side (ARP spoofing): dropped.
- IPv6 neighbour discovery (router and neighbour solicitations and advertisements, hop
  limit 255) from a link-local or unspecified source, which ND needs and which reach no
  further than the link. A neighbour advertisement must name an allowed or link-local
  target, whatever its source: one for another address would take that address's
  traffic (ND spoofing). Redirects and all other link-local traffic need ``fe80::/10``
  in the list.
- Nothing else: a frame that is neither IPv4, IPv6 nor ARP (a VLAN tag, MPLS, STP, LLDP)
  cannot be checked, and would carry IP past the check, so it is dropped as
  ``ethertype_not_allowed``.

The prefixes of each family are merged into sorted ranges of numbers. The common case is
one range per family (one prefix, or ``0.0.0.0/0``): two comparisons after one read of
the source address; more ranges cost a binary search.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network

from encap.errors import DropReason

_NOT_ALLOWED = DropReason.SOURCE_NOT_ALLOWED
_NOT_CHECKABLE = DropReason.ETHERTYPE_NOT_ALLOWED
_MALFORMED = DropReason.INNER_MALFORMED
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6, _ETHERTYPE_ARP = 0x0800, 0x86DD, 0x0806
_ETHERTYPE = struct.Struct("!H")
_IPV4_SOURCE = struct.Struct("!I")    # at 12 in the IPv4 header
_VERSION_AND_IPV4_SOURCE = struct.Struct("!B11xI")
_ETHERTYPE_AND_IPV4_SOURCE = struct.Struct("!12xH12xI")
_ARP_IPV4 = struct.Struct("!HBB")     # protocol type, hardware and protocol address lengths
_ETHERNET, _IPV4_SOURCE_AT, _IPV6_SOURCE_AT, _IPV6_HEADER = 14, 12, 8, 40
_ARP_SENDER_AT = 14                   # the sender's IPv4 address, in the ARP message
_ICMPV6 = 58
# Extension headers an ND message may follow (never a fragment: RFC 6980).
_EXTENSION_HEADERS = frozenset({0, 43, 60})
_MOST_EXTENSION_HEADERS = 8
_ND_SOLICITS_AND_ADVERTISEMENTS = frozenset({133, 134, 135, 136})
_NEIGHBOR_ADVERTISEMENT = 136
_ND_TARGET_AT = 8                     # in a neighbour advertisement
_UNSPECIFIED6 = bytes(16)


class _Ranges:
    """The prefixes of one family as merged, sorted ``[first, last]`` ranges of addresses:
    IPv4 ones as numbers, IPv6 ones as their 16 bytes (which sort as their numbers do,
    and cost no conversion)."""

    __slots__ = ("first", "last", "starts", "ends")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network], as_bytes: bool):
        merged: list[list[int]] = []
        for network in sorted(networks, key=lambda n: int(n.network_address)):
            start, end = int(network.network_address), int(network.broadcast_address)
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        bounds = [(_bytes6(start), _bytes6(end)) if as_bytes else (start, end)
                  for start, end in merged]
        # An empty range when there is none: nothing of the family passes.
        self.first, self.last = bounds[0] if bounds else ((b"\xff", b"") if as_bytes else (1, 0))
        self.starts = [start for start, _ in bounds] if len(bounds) > 1 else None
        self.ends = [end for _, end in bounds]

    def holds(self, address) -> bool:
        if self.first <= address <= self.last:
            return True
        starts = self.starts
        if starts is None:
            return False
        position = bisect.bisect_right(starts, address) - 1
        return position >= 0 and address <= self.ends[position]


def _bytes6(number: int) -> bytes:
    return number.to_bytes(16, "big")


def _link_local(address: bytes) -> bool:
    return address[0] == 0xFE and address[1] & 0xC0 == 0x80


def inner_source_check(networks: Iterable[IPv4Network | IPv6Network], ethernet: bool,
                       families: Iterable[int]) -> Callable[[memoryview], DropReason | None] | None:
    """The check of ``allowed-ips`` for a tunnel carrying ``families`` (IP versions), or None
    when it lets every source in: a TUN tunnel whose list has ``0.0.0.0/0`` (``::/0``)
    for every family it carries. (A TAP tunnel's list still keeps non-IP frames out.)"""
    networks = list(networks)
    if not ethernet and all(any(n.version == family and n.prefixlen == 0 for n in networks)
                            for family in families):
        return None
    return InnerSources(networks, ethernet).check


class InnerSources:
    """``check(packet)``: None if the tunnel lets ``packet`` in (a TUN packet, which the
    codec has found to be a whole IP header of a family the tunnel carries, or a TAP
    frame of 14 bytes at least), else why not."""

    __slots__ = ("ipv4", "ipv6", "check")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network], ethernet: bool):
        networks = list(networks)
        self.ipv4 = _Ranges((n for n in networks if n.version == 4), as_bytes=False)
        self.ipv6 = _Ranges((n for n in networks if n.version == 6), as_bytes=True)
        self.check = self._frame_check() if ethernet else self._packet_check()

    def _packet_check(self):
        """The check of a TUN packet, per packet on the receive path: the common case's
        values in the closure's cells, which are quicker to read than attributes."""
        first4, last4, more4 = self.ipv4.first, self.ipv4.last, self.ipv4.holds
        first6, last6, more6 = self.ipv6.first, self.ipv6.last, self.ipv6.holds
        ranged4, ranged6 = self.ipv4.starts is not None, self.ipv6.starts is not None
        version_and_source4 = _VERSION_AND_IPV4_SOURCE.unpack_from

        def check(packet: memoryview) -> DropReason | None:
            # 16 bytes at least: the codec found a whole IPv4 or IPv6 header.
            first, source = version_and_source4(packet)
            if first >> 4 == 4:
                if first4 <= source <= last4 or ranged4 and more4(source):
                    return None
            else:
                source = packet[_IPV6_SOURCE_AT:_IPV6_SOURCE_AT + 16].tobytes()
                if first6 <= source <= last6 or ranged6 and more6(source):
                    return None
            return _NOT_ALLOWED
        return check

    def _frame_check(self):
        """The check of a TAP frame: an IPv4 frame as quickly as a TUN packet, the rest
        by :meth:`_frame`."""
        first4, last4, more4 = self.ipv4.first, self.ipv4.last, self.ipv4.holds
        ranged4, other_frame = self.ipv4.starts is not None, self._frame
        ethertype_and_source4 = _ETHERTYPE_AND_IPV4_SOURCE.unpack_from

        def check(frame: memoryview) -> DropReason | None:
            try:
                ethertype, source = ethertype_and_source4(frame)
            except struct.error:   # shorter than an IPv4 frame's source address
                return other_frame(frame)
            if ethertype != _ETHERTYPE_IPV4:
                return other_frame(frame)
            if first4 <= source <= last4 or ranged4 and more4(source):
                return None
            return _NOT_ALLOWED
        return check

    def _frame(self, frame: memoryview) -> DropReason | None:
        ethertype = _ETHERTYPE.unpack_from(frame, 12)[0]
        if ethertype == _ETHERTYPE_IPV4:
            if len(frame) < _ETHERNET + 20:
                return _MALFORMED
            if self.ipv4.holds(_IPV4_SOURCE.unpack_from(frame, _ETHERNET + _IPV4_SOURCE_AT)[0]):
                return None
            return _NOT_ALLOWED
        if ethertype == _ETHERTYPE_IPV6:
            if len(frame) < _ETHERNET + _IPV6_HEADER:
                return _MALFORMED
            at = _ETHERNET + _IPV6_SOURCE_AT
            source = frame[at:at + 16].tobytes()
            next_header = frame[_ETHERNET + 6]
            if next_header == _ICMPV6 or next_header in _EXTENSION_HEADERS:
                return self._ipv6_control(frame, source, next_header)
            return None if self.ipv6.holds(source) else _NOT_ALLOWED
        if ethertype == _ETHERTYPE_ARP:
            return self._arp(frame)
        return _NOT_CHECKABLE

    def _ipv6_control(self, frame: memoryview, source: bytes, next_header: int):
        """An IPv6 packet that may be neighbour discovery: the exceptions and the target
        check of the module's docstring."""
        at = _ETHERNET + _IPV6_HEADER
        for _ in range(_MOST_EXTENSION_HEADERS):
            if next_header not in _EXTENSION_HEADERS or len(frame) < at + 2:
                break
            next_header, at = frame[at], at + (frame[at + 1] + 1) * 8
        neighbour_discovery = next_header == _ICMPV6 and len(frame) > at and \
            frame[at] in _ND_SOLICITS_AND_ADVERTISEMENTS and frame[_ETHERNET + 7] == 255
        if not neighbour_discovery:
            return None if self.ipv6.holds(source) else _NOT_ALLOWED
        if frame[at] == _NEIGHBOR_ADVERTISEMENT:
            target_at = at + _ND_TARGET_AT
            if len(frame) < target_at + 16:
                return _MALFORMED
            target = frame[target_at:target_at + 16].tobytes()
            if not (_link_local(target) or self.ipv6.holds(target)):
                return _NOT_ALLOWED
        if _link_local(source) or source == _UNSPECIFIED6 or self.ipv6.holds(source):
            return None
        return _NOT_ALLOWED

    def _arp(self, frame: memoryview) -> DropReason | None:
        if len(frame) < _ETHERNET + 28:
            return _MALFORMED
        protocol, hardware_length, protocol_length = _ARP_IPV4.unpack_from(frame, _ETHERNET + 2)
        if protocol != _ETHERTYPE_IPV4 or hardware_length != 6 or protocol_length != 4:
            return _NOT_CHECKABLE
        sender = _IPV4_SOURCE.unpack_from(frame, _ETHERNET + _ARP_SENDER_AT)[0]
        return None if sender == 0 or self.ipv4.holds(sender) else _NOT_ALLOWED
