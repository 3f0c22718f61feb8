"""Encapsulation overhead, the tunnel MTU it leaves, and the TCP MSS to clamp to.

An :class:`Overhead` is what an encapsulation adds, part by part: the outer IP
header, a UDP header when the tunnel rides on UDP, the tunnel's own header
(``codec.overhead``) and an Ethernet header when the tunnel carries frames.
With those, over a 1500-byte IPv4 underlay, the numbers match the Linux
kernel's own tunnels: gre 1476, gretap 1462, vxlan 1450, ipip 1480, sit 1480.
"""

from typing import NamedTuple

from encap.errors import EncapConfigError
from encap.wire import (ETHERNET_HEADER_LENGTH, IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH,
                        TCP_HEADER_LENGTH, UDP_HEADER_LENGTH)

IPV4_MINIMUM_MTU = 68      # RFC 791
IPV6_MINIMUM_MTU = 1280    # RFC 8200 §5: below this a link cannot carry IPv6
_OUTER_IP_LENGTH = {4: IPV4_HEADER_LENGTH, 6: IPV6_HEADER_LENGTH}


class Overhead(NamedTuple):
    outer_ip: int
    udp: int
    tunnel_header: int
    inner_ethernet: int

    @property
    def total(self) -> int:
        return self.outer_ip + self.udp + self.tunnel_header + self.inner_ethernet


class TunnelMtu(NamedTuple):
    overhead: Overhead
    mtu: int                # the tunnel device's MTU (an L3 MTU, also for TAP devices)
    mss_ipv4: int | None    # None: the tunnel does not carry this family
    mss_ipv6: int | None    # None also when the MTU is below IPv6's 1280


def overhead(outer_family: int, tunnel_header: int, *, udp: bool = False,
             ethernet: bool = False) -> Overhead:
    """The bytes a packet grows by on the wire: ``tunnel_header`` is the codec's own
    ``overhead``; ``udp`` for a tunnel over UDP, ``ethernet`` for one carrying frames."""
    if outer_family not in _OUTER_IP_LENGTH:
        raise EncapConfigError(f"outer family {outer_family} is neither 4 nor 6")
    if tunnel_header < 0:
        raise EncapConfigError(f"a tunnel header of {tunnel_header} bytes")
    return Overhead(_OUTER_IP_LENGTH[outer_family], UDP_HEADER_LENGTH if udp else 0,
                    tunnel_header, ETHERNET_HEADER_LENGTH if ethernet else 0)


def tcp_mss(mtu: int, family: int) -> int:
    """The MSS that fills ``mtu`` exactly: MTU minus the IP and TCP headers."""
    return mtu - TCP_HEADER_LENGTH - (IPV4_HEADER_LENGTH if family == 4 else IPV6_HEADER_LENGTH)


def tunnel_mtu(parts: Overhead, underlay_mtu: int = 1500,
               inner_families: frozenset[int] = frozenset({4, 6})) -> TunnelMtu:
    """The device MTU and clamp values for a tunnel of ``parts`` over ``underlay_mtu``."""
    mtu = underlay_mtu - parts.total
    if mtu < IPV4_MINIMUM_MTU:
        raise EncapConfigError(f"underlay MTU {underlay_mtu} leaves {mtu} bytes inside the "
                               f"tunnel: less than {IPV4_MINIMUM_MTU}")
    mss_ipv4 = tcp_mss(mtu, 4) if 4 in inner_families else None
    mss_ipv6 = tcp_mss(mtu, 6) if 6 in inner_families and mtu >= IPV6_MINIMUM_MTU else None
    return TunnelMtu(parts, mtu, mss_ipv4, mss_ipv6)
