"""IP directly in IP: IP-in-IP (RFC 2003, protocol 4) and IPv6-over-IPv4 (RFC 4213, protocol 41).

There is no header of its own: the outer IP header's protocol number says what
the payload is, so this codec's whole job is to make sure the payload is an IP
packet of that version, and to trim it to its own length.
"""

from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.ip import inner_ip_packet
from encap.wire import IpProto

_PROTOCOL_BY_VERSION = {4: IpProto.IPIP, 6: IpProto.IPV6}


class IpInIp(Codec):
    """``IpInIp(4)`` is RFC 2003 IP-in-IP; ``IpInIp(6)`` is RFC 4213 6in4 (``sit``)."""

    overhead = 0

    def __init__(self, inner_version: int):
        if inner_version not in _PROTOCOL_BY_VERSION:
            raise EncapConfigError(f"inner IP version {inner_version} is neither 4 nor 6")
        self.inner_version = inner_version
        self.protocol = _PROTOCOL_BY_VERSION[inner_version]
        # The shape a fused outer header (encap.ipv4.Ipv4Tunnel) reads, as Gre has it:
        # no header bytes of its own, for the one inner version it carries.
        self.minimum_inner = 1
        self.header_by_version = [None] * 16
        self.header_by_version[inner_version] = b""

    def encap_into(self, buf, start: int, end: int) -> int:
        if end <= start or buf[start] >> 4 != self.inner_version:
            raise DecodeError(DropReason.INNER_MALFORMED)
        return start

    def decap(self, view: memoryview) -> memoryview:
        return inner_ip_packet(view, self.inner_version)

