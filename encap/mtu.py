"""Encapsulation overhead, the tunnel MTU it leaves, and the TCP MSS to clamp to.

The numbers match the Linux kernel's own tunnels over a 1500-byte underlay:
gre 1476, gretap 1462, vxlan 1450, ipip 1480, sit 1480.
"""

import enum
from typing import NamedTuple

from encap.errors import EncapConfigError
from encap.gre import BASE_LENGTH as GRE_BASE_LENGTH
from encap.vxlan import HEADER_LENGTH as VXLAN_HEADER_LENGTH
from encap.wire import (ETHERNET_HEADER_LENGTH, IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH,
                        TCP_HEADER_LENGTH, UDP_HEADER_LENGTH)

IPV4_MINIMUM_MTU = 68      # RFC 791
IPV6_MINIMUM_MTU = 1280    # RFC 8200 §5: below this a link cannot carry IPv6


class Mode(enum.StrEnum):
    GRE = "gre"
    GRETAP = "gretap"
    VXLAN = "vxlan"
    IPIP = "ipip"
    SIT = "sit"

    @property
    def is_ethernet(self) -> bool:
        """The device is a TAP and the tunnel carries whole Ethernet frames."""
        return self in (Mode.GRETAP, Mode.VXLAN)

    @property
    def inner_families(self) -> frozenset[int]:
        """The IP versions the tunnel carries."""
        return {Mode.IPIP: frozenset({4}), Mode.SIT: frozenset({6})}.get(self, frozenset({4, 6}))


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


def overhead(mode: Mode, outer_family: int = 4, *, key: bool = False, sequence: bool = False,
             checksum: bool = False) -> Overhead:
    """The bytes a packet grows by on the wire, part by part."""
    mode = Mode(mode)
    if outer_family not in (4, 6):
        raise EncapConfigError(f"outer family {outer_family} is neither 4 nor 6")
    if mode == Mode.SIT and outer_family != 4:
        raise EncapConfigError("sit is IPv6 over IPv4: its outer family is 4")
    if (key or sequence or checksum) and mode not in (Mode.GRE, Mode.GRETAP):
        raise EncapConfigError(f"key, sequence and checksum are GRE options; {mode} has none")
    outer_ip = IPV4_HEADER_LENGTH if outer_family == 4 else IPV6_HEADER_LENGTH
    if mode == Mode.VXLAN:
        return Overhead(outer_ip, UDP_HEADER_LENGTH, VXLAN_HEADER_LENGTH, ETHERNET_HEADER_LENGTH)
    if mode in (Mode.GRE, Mode.GRETAP):
        gre = GRE_BASE_LENGTH + 4 * (key + sequence + checksum)
        inner_ethernet = ETHERNET_HEADER_LENGTH if mode == Mode.GRETAP else 0
        return Overhead(outer_ip, 0, gre, inner_ethernet)
    return Overhead(outer_ip, 0, 0, 0)


def tcp_mss(mtu: int, family: int) -> int:
    """The MSS that fills ``mtu`` exactly: MTU minus the IP and TCP headers."""
    return mtu - TCP_HEADER_LENGTH - (IPV4_HEADER_LENGTH if family == 4 else IPV6_HEADER_LENGTH)


def tunnel_mtu(mode: Mode, underlay_mtu: int = 1500, outer_family: int = 4, *, key: bool = False,
               sequence: bool = False, checksum: bool = False) -> TunnelMtu:
    """The device MTU and clamp values for a tunnel over an underlay of ``underlay_mtu``."""
    mode = Mode(mode)
    parts = overhead(mode, outer_family, key=key, sequence=sequence, checksum=checksum)
    mtu = underlay_mtu - parts.total
    if mtu < IPV4_MINIMUM_MTU:
        raise EncapConfigError(
            f"underlay MTU {underlay_mtu} leaves {mtu} bytes inside {mode}: less than {IPV4_MINIMUM_MTU}")
    families = mode.inner_families
    mss_ipv4 = tcp_mss(mtu, 4) if 4 in families else None
    mss_ipv6 = tcp_mss(mtu, 6) if 6 in families and mtu >= IPV6_MINIMUM_MTU else None
    return TunnelMtu(parts, mtu, mss_ipv4, mss_ipv6)
