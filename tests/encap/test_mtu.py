"""Overhead and MTU: the parts add up, and the tunnel MTU and MSS follow from them."""

import pytest

from encap.errors import EncapConfigError
from encap.mtu import IPV6_MINIMUM_MTU, Overhead, overhead, tcp_mss, tunnel_mtu

BOTH = frozenset({4, 6})


def test_parts_of_the_overhead():
    assert overhead(4, 8) == Overhead(20, 0, 8, 0)
    assert overhead(6, 8, udp=True, ethernet=True) == Overhead(40, 8, 8, 14)
    assert overhead(4, 8, udp=True, ethernet=True).total == 50


def test_mss_is_mtu_minus_ip_and_tcp_headers():
    result = tunnel_mtu(overhead(4, 4), 1500)
    assert (result.mtu, result.mss_ipv4, result.mss_ipv6) == (1476, 1436, 1416)
    assert (tcp_mss(1476, 4), tcp_mss(1476, 6)) == (1436, 1416)


def test_families_a_tunnel_does_not_carry_have_no_mss():
    assert tunnel_mtu(overhead(4, 0), 1500, frozenset({4})).mss_ipv6 is None
    assert tunnel_mtu(overhead(4, 0), 1500, frozenset({6})).mss_ipv4 is None


def test_ipv6_needs_1280():
    # 1300 - 24 = 1276 < 1280: the kernel would disable IPv6 on such a device.
    assert tunnel_mtu(overhead(4, 4), 1300, BOTH).mss_ipv6 is None
    assert tunnel_mtu(overhead(4, 4), 1304, BOTH).mss_ipv6 == IPV6_MINIMUM_MTU - 60


@pytest.mark.parametrize("call", [
    lambda: tunnel_mtu(overhead(4, 4), 80),
    lambda: overhead(5, 4),
    lambda: overhead(4, -1),
])
def test_impossible_requests_are_config_errors(call):
    with pytest.raises(EncapConfigError):
        call()
