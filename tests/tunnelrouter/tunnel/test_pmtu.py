"""Path MTU soft state: learnt from reports, floored, never raised by a report, expired.

GRE over IPv4 in these numbers: a 1476-byte device, 24 bytes of overhead (a path of
1500); VXLAN over IPv6: a 1430-byte device, 70 bytes (IPv6, UDP, VXLAN, Ethernet).
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelrouter.tunnel.pmtu import PathMtu
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.tunnelrouter.tunnel.harness import NOW, OTHER, REMOTE, Harness, frame, inner6

V6_LOCAL, V6_REMOTE = "fd00::1", "fd00::2"


def gre_path() -> PathMtu:
    return PathMtu(device_mtu=1476, overhead=24, timeout=600, underlay_family=4)


def test_a_report_lowers_the_effective_mtu_by_the_overhead():
    pmtu = gre_path()
    assert pmtu.lower(REMOTE, 1400, NOW)
    assert pmtu.effective == 1376
    assert pmtu.status(NOW + 100) == {REMOTE: {"mtu": 1400, "expires_in": 500.0}}


def test_a_report_below_552_on_an_ipv4_underlay_counts_as_552():
    pmtu = gre_path()
    assert pmtu.lower(REMOTE, 100, NOW)
    assert pmtu.learnt[REMOTE][0] == 552 and pmtu.effective == 528
    assert not pmtu.lower(REMOTE, 300, NOW), "nothing lower than the floor"


def test_a_report_below_1280_on_an_ipv6_underlay_counts_as_1280():
    pmtu = PathMtu(device_mtu=1430, overhead=70, timeout=600, underlay_family=6)
    assert pmtu.lower(V6_REMOTE, 600, NOW)
    assert pmtu.learnt[V6_REMOTE][0] == 1280 and pmtu.effective == 1210


def test_a_report_never_raises_the_path_mtu():
    pmtu = gre_path()
    pmtu.lower(REMOTE, 1400, NOW)
    assert not pmtu.lower(REMOTE, 1450, NOW + 10)
    assert not pmtu.lower(REMOTE, 1400, NOW + 10), "the same value is no news"
    assert pmtu.learnt[REMOTE] == (1400, NOW + 600) and pmtu.effective == 1376
    assert pmtu.lower(REMOTE, 1300, NOW + 20)
    assert pmtu.learnt[REMOTE] == (1300, NOW + 620)


def test_a_report_of_the_whole_path_or_more_is_not_learnt():
    pmtu = gre_path()
    assert not pmtu.lower(REMOTE, 1500, NOW) and not pmtu.lower(REMOTE, 9000, NOW)
    assert pmtu.learnt == {} and pmtu.effective == 1476


def test_the_narrowest_path_of_several_peers_rules_and_each_expires_alone():
    pmtu = gre_path()
    assert pmtu.lower(REMOTE, 1400, NOW)
    assert not pmtu.lower(OTHER, 1450, NOW + 100), "learnt, but the effective MTU stays"
    assert pmtu.effective == 1376 and set(pmtu.learnt) == {REMOTE, OTHER}
    assert not pmtu.expire(NOW + 599.9)
    assert pmtu.expire(NOW + 600)
    assert pmtu.effective == 1426 and set(pmtu.learnt) == {OTHER}
    assert pmtu.expire(NOW + 700)
    assert pmtu.effective == 1476 and pmtu.learnt == {}
    assert not pmtu.expire(NOW + 800)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([REMOTE, OTHER]), st.integers(0, 70000),
                          st.floats(0, 2000), st.booleans()), max_size=30))
def test_reports_and_expiry_keep_the_effective_mtu_between_the_floor_and_the_device(events):
    pmtu = gre_path()
    now = 0.0
    for peer, path_mtu, later, expire in events:
        now += later
        before = pmtu.effective
        if expire:
            pmtu.expire(now)
            assert pmtu.effective >= before, "expiry never lowers"
        else:
            changed = pmtu.lower(peer, path_mtu, now)
            assert pmtu.effective <= before, "a report never raises"
            assert changed == (pmtu.effective != before)
        assert 552 - 24 <= pmtu.effective <= 1476
        assert pmtu.effective == min([1476] + [mtu - 24 for mtu, _ in pmtu.learnt.values()])


# -- through an endpoint ----------------------------------------------------------------------

def test_a_vxlan_tunnel_over_ipv6_learns_from_packet_too_big_down_to_1280():
    tunnel = Harness("vxlan", local=V6_LOCAL, remotes=[V6_REMOTE])
    assert tunnel.endpoint.effective_mtu == 1430
    (sent,) = tunnel.send(frame(inner6(1430)))
    tunnel.error(sent.data, origin=ErrorOrigin.ICMP6, icmp_type=2, code=0, info=1400,
                 peer=V6_REMOTE)
    assert tunnel.endpoint.effective_mtu == 1330
    tunnel.learn_path_mtu(900, peer=V6_REMOTE)
    assert tunnel.endpoint.effective_mtu == 1210
    assert tunnel.endpoint.status(NOW)["path_mtu"] == {
        V6_REMOTE: {"mtu": 1280, "expires_in": 600.0}}


def test_a_tunnel_without_path_mtu_discovery_learns_nothing():
    tunnel = Harness("gre", **{"pmtu-discovery": False})
    tunnel.learn_path_mtu(1000)
    assert tunnel.endpoint.effective_mtu == 1476 and tunnel.mtu_changes == 0
    assert tunnel.endpoint.status(NOW)["path_mtu"] == {}


def test_the_pmtu_timeout_setting_is_how_long_a_path_mtu_is_kept():
    tunnel = Harness("gre", **{"pmtu-timeout": 30})
    tunnel.learn_path_mtu(1000)
    tunnel.tick(NOW + 29)
    assert tunnel.endpoint.effective_mtu == 976
    tunnel.tick(NOW + 30)
    assert tunnel.endpoint.effective_mtu == 1476 and tunnel.mtu_changes == 2
