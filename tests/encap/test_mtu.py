"""Overhead and MTU: the same numbers the Linux kernel's tunnels pick over a 1500 underlay."""

import pytest

from encap.codec import Stack
from encap.errors import EncapConfigError
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer
from encap.mtu import Mode, overhead, tcp_mss, tunnel_mtu
from encap.udp import Udp
from encap.vxlan import Vxlan

V4, V6 = bytes(4), bytes(16)


@pytest.mark.parametrize("mode, mtu", [
    ("gre", 1476), ("gretap", 1462), ("vxlan", 1450), ("ipip", 1480), ("sit", 1480),
])
def test_linux_defaults_over_1500(mode, mtu):
    assert tunnel_mtu(mode, 1500).mtu == mtu


@pytest.mark.parametrize("mode, mtu", [("gre", 1456), ("gretap", 1442), ("vxlan", 1430),
                                       ("ipip", 1460)])
def test_ipv6_underlay_costs_twenty_more(mode, mtu):
    assert tunnel_mtu(mode, 1500, outer_family=6).mtu == mtu


def test_each_gre_option_costs_four_bytes():
    assert tunnel_mtu("gre", 1500, key=True, sequence=True, checksum=True).mtu == 1464
    assert tunnel_mtu("gretap", 1500, key=True).overhead.total == 42


def test_mss_is_mtu_minus_ip_and_tcp_headers():
    result = tunnel_mtu("gre", 1500)
    assert (result.mss_ipv4, result.mss_ipv6) == (1436, 1416) == (tcp_mss(1476, 4), tcp_mss(1476, 6))


def test_families_a_mode_does_not_carry_have_no_mss():
    assert tunnel_mtu("ipip").mss_ipv6 is None and tunnel_mtu("sit").mss_ipv4 is None


def test_ipv6_needs_1280():
    # 1300 - 24 = 1276 < 1280: the kernel would disable IPv6 on such a device.
    assert tunnel_mtu("gre", 1300).mss_ipv6 is None
    assert tunnel_mtu("gre", 1304).mss_ipv6 == 1220


@pytest.mark.parametrize("call", [
    lambda: tunnel_mtu("gre", 80),
    lambda: overhead("vxlan", key=True),
    lambda: overhead("ipip", checksum=True),
    lambda: overhead("sit", outer_family=6),
    lambda: overhead("gre", outer_family=5),
    lambda: overhead("geneve"),
])
def test_impossible_requests_are_config_errors(call):
    with pytest.raises((EncapConfigError, ValueError)):
        call()


@pytest.mark.parametrize("mode, stack", [
    (Mode.GRE, Stack(Ipv4Outer(V4, V4, 47), Gre(key=1, sequence=True))),
    (Mode.GRETAP, Stack(Ipv6Outer(V6, V6, 47), Gre(checksum=True, ethernet=True))),
    (Mode.VXLAN, Stack(Ipv4Outer(V4, V4, 17), Udp(V4, V4, 1, 4789), Vxlan(1))),
    (Mode.IPIP, Stack(Ipv4Outer(V4, V4, 4), IpInIp(4))),
    (Mode.SIT, Stack(Ipv4Outer(V4, V4, 41), IpInIp(6))),
])
def test_calculator_agrees_with_the_codecs(mode, stack):
    outer = stack.layers[0]
    family = 4 if isinstance(outer, Ipv4Outer) else 6
    gre = stack.layers[-1] if isinstance(stack.layers[-1], Gre) else None
    options = dict(key=gre.key is not None, sequence=gre.sequence, checksum=gre.checksum) if gre else {}
    parts = overhead(mode, family, **options)
    assert parts.total - parts.inner_ethernet == stack.overhead
