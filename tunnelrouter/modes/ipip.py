"""IP directly in IPv4 over a raw IP socket: ``ipip`` (RFC 2003, protocol 4) carries IPv4,
``sit`` (RFC 4213 6in4, protocol 41) carries IPv6: the IPv6 transition gateway.

No header of its own, so nothing but the addresses tells two tunnels apart: one
tunnel per mode and pair of addresses.
"""

from typing import Literal

from encap.errors import DropReason
from encap.ipip import IpInIp
from encap.wire import IpProto

from tunnelrouter.modes.base import Address, Mode, TunnelConfig, Underlay, register
from tunnelrouter.modes.keepalive import IpipKeepalive, SitKeepalive


class IpipConfig(TunnelConfig):
    mode: Literal["ipip", "sit"]
    remote: Address

    @property
    def peers(self):
        return (self.remote,)


class IpipMode(Mode):
    name = "ipip"
    config = IpipConfig
    keepalive = IpipKeepalive
    ethernet = False
    inner_families = frozenset({4})
    underlay = Underlay.RAW
    protocol = IpProto.IPIP
    distinguished_by = "remote"
    unknown_key = DropReason.NOT_A_PEER

    def codec(self, tunnel: IpipConfig) -> IpInIp:
        return IpInIp(next(iter(self.inner_families)))

    def keys(self, tunnel: IpipConfig):
        return (str(tunnel.remote),)

    @staticmethod
    def demux_key(datagram, offset, source):
        return source

    @staticmethod
    def tunnel_header_length(quote):
        return 0

    def conflict_hint(self) -> str:
        return f"one {self.name} tunnel per pair of addresses"


class SitMode(IpipMode):
    name = "sit"
    inner_families = frozenset({6})
    keepalive = SitKeepalive
    protocol = IpProto.IPV6


IPIP = register(IpipMode())
SIT = register(SitMode())
