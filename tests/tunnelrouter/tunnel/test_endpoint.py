"""The endpoint's rules, batch by batch: outer TTL/DSCP/ECN and DF on encapsulation, the
RFC 6040 decapsulation table, what happens to a packet larger than the learnt path MTU
(fragments, ICMP too big, outer fragments for IPv6), TTL expiry, errors the WAN reports
about our datagrams (path MTU learning, RFC 2003 §4 / RFC 4213 §3.4 relay, rate limit),
GRE sequence numbers, and what used to stop the router.

scapy builds the packets on the other side and reads what comes out.
"""

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP, defragment
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import GRE, Ether

from encap.ecn import CE, ECT_0, ECT_1, NOT_ECT
from encap.gre import NEW_EPOCH_RUN
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.tunnelrouter.tunnel.harness import (
    HOST_A, HOST_A6, HOST_B, MAC_A, MAC_B, MODES, NOW, REMOTE, TUNNEL_ADDRESS, TUNNEL_ADDRESS6,
    Harness, frame, gre_datagram, inner4, inner6, vxlan_datagram)

BROADCAST = "ff:ff:ff:ff:ff:ff"


def outer(sent) -> IP:
    return IP(sent.data)


def syn(mss: int) -> bytes:
    return bytes(IP(src=HOST_A, dst=HOST_B, flags="DF") /
                 TCP(sport=1000, dport=80, flags="S", options=[("MSS", mss)]))


def mss_of(packet: IP) -> int:
    return dict(packet[TCP].options)["MSS"]


def carried(mode: str, size: int = 100) -> bytes:
    """A packet (or frame) a tunnel of ``mode`` carries."""
    if mode == "sit":
        return inner6(size)
    return frame(inner4(size)) if mode in ("gretap", "vxlan") else inner4(size)


# -- outer TTL, TOS and DF ------------------------------------------------------------------

@pytest.mark.parametrize("keys, inner_tos, inner_ttl, outer_tos, outer_ttl", [
    ({}, 0xB8 | ECT_0, 30, ECT_0, 64),                          # defaults: DSCP 0, ECN copied
    ({}, 0xB8 | CE, 30, CE, 64),                                # RFC 6040 normal mode copies CE
    ({"dscp": "inherit"}, 0xB8 | ECT_1, 30, 0xB8 | ECT_1, 64),
    ({"dscp": 10}, 0xB8 | ECT_0, 30, 10 << 2 | ECT_0, 64),
    ({"dscp": 10, "ecn": "compatibility"}, 0xB8 | CE, 30, 10 << 2 | NOT_ECT, 64),
    ({"ttl": "inherit"}, 0, 30, 0, 30),
    ({"ttl": 200}, 0, 30, 0, 200),
])
def test_outer_ttl_dscp_and_ecn_follow_the_settings(keys, inner_tos, inner_ttl, outer_tos,
                                                    outer_ttl):
    (sent,) = Harness("gre", **keys).send(inner4(tos=inner_tos, ttl=inner_ttl))
    assert (outer(sent).tos, outer(sent).ttl) == (outer_tos, outer_ttl)
    assert sent.destinations == ((REMOTE, 0),) and sent.marking is None


@pytest.mark.parametrize("keys, packet, outer_df", [
    ({}, inner4(df=True), True),
    ({}, inner4(df=False), False),     # RFC 2003 §3.1: the WAN may fragment what the sender may
    ({}, inner6(), True),
    ({"pmtu-discovery": False}, inner4(df=True), False),
])
def test_outer_dont_fragment_follows_the_inner_packet_and_the_setting(keys, packet, outer_df):
    (sent,) = Harness("gre", **keys).send(packet)
    assert bool(outer(sent).flags.DF) == outer_df


def test_ipv6_traffic_class_and_hop_limit_are_inherited_like_ipv4_tos_and_ttl():
    (sent,) = Harness("gre", dscp="inherit", ttl="inherit").send(
        inner6(tc=0x2E << 2 | ECT_1, hlim=9))
    assert (outer(sent).tos, outer(sent).ttl) == (0x2E << 2 | ECT_1, 9)


def test_an_inner_packet_without_hops_left_is_answered_with_time_exceeded():
    tunnel = Harness("gre")
    assert tunnel.send(inner4(ttl=0)) == []
    assert tunnel.drops == {"ttl_expired": 1}
    (reply,) = [IP(p) for p in tunnel.replies]
    assert (reply.src, reply.dst, reply[ICMP].type, reply[ICMP].code) == \
        (TUNNEL_ADDRESS, HOST_A, 11, 0)
    assert tunnel.send(inner6(hlim=0)) == []
    assert IPv6(tunnel.replies[-1]).haslayer(ICMPv6TimeExceeded)


@pytest.mark.parametrize("mode, packet", [
    ("ipip", inner6()), ("sit", inner4()), ("gre", b"\x50" + bytes(39)),
    ("gretap", bytes(13)), ("vxlan", bytes(13)),
])
def test_a_packet_the_tunnel_does_not_carry_is_counted_and_dropped(mode, packet):
    tunnel = Harness(mode)
    assert tunnel.send(packet) == [] and tunnel.replies == []
    assert tunnel.drops == {"inner_malformed": 1}


# -- RFC 6040 decapsulation ------------------------------------------------------------------

# RFC 6040 §4.2, Figure 4: rows are the arriving inner ECN, columns the outer.
FIGURE_4 = {
    NOT_ECT: {NOT_ECT: NOT_ECT, ECT_0: NOT_ECT, ECT_1: NOT_ECT, CE: None},
    ECT_0: {NOT_ECT: ECT_0, ECT_0: ECT_0, ECT_1: ECT_1, CE: CE},
    ECT_1: {NOT_ECT: ECT_1, ECT_0: ECT_1, ECT_1: ECT_1, CE: CE},
    CE: {NOT_ECT: CE, ECT_0: CE, ECT_1: CE, CE: CE},
}
# The cells Figure 4 marks "(!!!)": no compliant ingress sends them.
CURRENTLY_UNUSED = {(NOT_ECT, ECT_0), (NOT_ECT, ECT_1), (NOT_ECT, CE), (CE, ECT_1)}


@pytest.mark.parametrize("inner_ecn, outer_ecn, expected",
                         [(i, o, e) for i, row in FIGURE_4.items() for o, e in row.items()])
@pytest.mark.parametrize("version", [4, 6])
def test_decapsulation_applies_every_cell_of_rfc_6040_figure_4(inner_ecn, outer_ecn, expected,
                                                               version):
    tunnel = Harness("gre")
    packet = inner4(tos=0x28 | inner_ecn) if version == 4 else inner6(tc=0x28 | inner_ecn)
    delivered = tunnel.receive(gre_datagram(packet, tos=0xB8 | outer_ecn))
    assert tunnel.counters.ecn_unused_combinations == \
        ((inner_ecn, outer_ecn) in CURRENTLY_UNUSED)
    if expected is None:
        assert delivered == [] and tunnel.drops == {"ecn_ce_on_not_ect": 1}
        return
    (packet,) = delivered
    parsed = IP(packet) if version == 4 else IPv6(packet)
    tos = parsed.tos if version == 4 else parsed.tc
    assert tos == 0x28 | expected  # the inner DSCP is the inner's own (the pipe model)
    if version == 4:  # the header checksum was mended with the ECN bits
        rebuilt = IP(packet)
        del rebuilt.chksum
        assert IP(bytes(rebuilt)).chksum == parsed.chksum


# -- larger than the path ------------------------------------------------------------------

def test_a_learnt_path_mtu_lowers_the_effective_mtu_and_the_mss_until_it_expires():
    tunnel = Harness("gre")
    assert mss_of(outer(tunnel.send(syn(1460))[0])[GRE].payload) == 1436
    tunnel.learn_path_mtu(1400)
    assert (tunnel.endpoint.effective_mtu, tunnel.endpoint.mss) == (1376, (1336, 1316))
    assert tunnel.mtu_changes == 1, "the routes must follow"
    assert tunnel.endpoint.status(NOW)["path_mtu"] == {REMOTE: {"mtu": 1400, "expires_in": 600.0}}
    assert mss_of(outer(tunnel.send(syn(1460))[0])[GRE].payload) == 1336
    tunnel.learn_path_mtu(1450)
    assert tunnel.endpoint.effective_mtu == 1376, "a report never raises the path MTU"
    tunnel.tick(NOW + 599)
    assert tunnel.endpoint.effective_mtu == 1376 and tunnel.mtu_changes == 1
    tunnel.tick(NOW + 600)
    assert (tunnel.endpoint.effective_mtu, tunnel.endpoint.mss) == (1476, (1436, 1416))
    assert tunnel.mtu_changes == 2 and tunnel.endpoint.status(NOW + 600)["path_mtu"] == {}


def test_a_dont_fragment_packet_too_big_for_the_path_gets_fragmentation_needed():
    tunnel = Harness("gre")
    tunnel.learn_path_mtu(1400)
    assert tunnel.send(inner4(1377)) == []
    (reply,) = [IP(p) for p in tunnel.replies]
    assert (reply.src, reply.dst) == (TUNNEL_ADDRESS, HOST_A)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1376)
    assert tunnel.drops == {"too_big": 1} and tunnel.counters.icmp_sent == 1
    (sent,) = tunnel.send(inner4(1376))
    assert len(sent.data) == 1400


def test_a_packet_that_may_be_fragmented_is_sent_in_inner_fragments():
    tunnel = Harness("gre")
    tunnel.learn_path_mtu(1400)
    original = inner4(1476, df=False)
    sent = tunnel.send(original)
    assert len(sent) == 2 and all(len(s.data) <= 1400 for s in sent)
    fragments = [outer(s)[GRE].payload for s in sent]
    assert all(f.flags.MF or f.frag for f in fragments)
    (whole,) = defragment([IP(bytes(f)) for f in fragments])
    assert bytes(whole[UDP]) == bytes(IP(original)[UDP])
    assert tunnel.counters.fragments_sent == 2 and not tunnel.drops and not tunnel.replies


@pytest.mark.parametrize("mode, packet, reason", [
    ("sit", inner4(3000, df=False), "inner_malformed"),   # sit does not carry IPv4
    ("gre", inner4(3000, df=False, ttl=0), "ttl_expired"),
])
def test_a_fragmentable_packet_the_tunnel_refuses_is_one_drop_and_no_fragment(mode, packet,
                                                                             reason):
    tunnel = Harness(mode)
    assert tunnel.send(packet) == []
    assert tunnel.drops == {reason: 1} and tunnel.counters.fragments_sent == 0


def test_ipv6_too_big_for_the_path_gets_packet_too_big():
    tunnel = Harness("gre")
    tunnel.learn_path_mtu(1400)
    assert tunnel.send(inner6(1476)) == []
    (reply,) = [IPv6(p) for p in tunnel.replies]
    assert (reply.src, reply.dst, reply[ICMPv6PacketTooBig].mtu) == \
        (TUNNEL_ADDRESS6, HOST_A6, 1376)


def test_ipv6_over_a_path_below_1280_goes_in_outer_fragments():
    tunnel = Harness("gre")
    tunnel.learn_path_mtu(1280)   # gre leaves 1256, less than IPv6's minimum MTU
    (sent,) = tunnel.send(inner6(1280))
    assert not outer(sent).flags.DF and not tunnel.replies   # RFC 4213 §3.2
    assert bytes(outer(sent)[GRE].payload) == inner6(1280)
    (sent,) = tunnel.send(inner6(100))
    assert outer(sent).flags.DF, "only the packets that need it lose DF"
    assert tunnel.send(inner6(1400)) == []
    (reply,) = [IPv6(p) for p in tunnel.replies]
    assert reply[ICMPv6PacketTooBig].mtu == 1280, "IPv6 is never told less than 1280"
    assert tunnel.send(inner4(1276)) == []
    assert IP(tunnel.replies[-1])[ICMP].nexthopmtu == 1256, "IPv4 is told the truth"


def test_icmp_to_senders_is_rate_limited():
    tunnel = Harness("gre", **{"icmp-rate-limit": 2})
    tunnel.learn_path_mtu(1400)
    for _ in range(3):
        tunnel.send(inner4(1476))
    assert (tunnel.counters.icmp_sent, tunnel.counters.icmp_rate_limited) == (2, 1)
    assert len(tunnel.replies) == 2 and tunnel.drops == {"too_big": 3}
    tunnel.send(inner4(1476), now=NOW + 1)
    assert tunnel.counters.icmp_sent == 3


def test_a_tap_device_gets_its_icmp_in_an_ethernet_frame_back_to_the_sender():
    tunnel = Harness("gretap", key=1)
    tunnel.learn_path_mtu(1400)
    assert tunnel.send(frame(inner4(1462), src=MAC_A, dst=MAC_B)) == []
    (reply,) = [Ether(p) for p in tunnel.replies]
    assert (reply.dst, reply.src, reply.type) == (MAC_A, MAC_B, 0x0800)
    assert reply[ICMP].nexthopmtu == 1400 - 42   # outer IPv4, GRE with key, inner Ethernet


# -- errors the WAN reports ------------------------------------------------------------------

def test_fragmentation_needed_from_the_wan_lowers_the_path_and_is_relayed():
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1476))
    (relayed,) = [IP(p) for p in tunnel.error(sent.data, info=1400)]
    assert tunnel.endpoint.effective_mtu == 1376 and tunnel.mtu_changes == 1
    assert (relayed.src, relayed.dst) == (TUNNEL_ADDRESS, HOST_A)
    assert (relayed[ICMP].type, relayed[ICMP].code, relayed[ICMP].nexthopmtu) == (3, 4, 1376)
    assert tunnel.counters.wan_errors == 1


@pytest.mark.parametrize("reported, why", [
    (0, "RFC 1191 routers that do not know say 0"),
    (67, "below IPv4's minimum MTU"),
    (1024, "the quoted datagram (1024 bytes) fitted: not about this path"),
    (1200, "the quoted datagram (1024 bytes) fitted: not about this path"),
])
def test_a_too_big_report_that_cannot_be_true_is_ignored(reported, why):
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1000))
    assert tunnel.error(sent.data, info=reported) == [], why
    assert tunnel.endpoint.effective_mtu == 1476 and tunnel.endpoint.pmtu.learnt == {}


def test_a_too_big_report_just_below_the_quoted_datagram_is_believed():
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1000))
    tunnel.error(sent.data, info=1023)
    assert tunnel.endpoint.effective_mtu == 999


def test_fragmentation_needed_is_relayed_with_the_path_less_the_overhead_even_unlearnt():
    # Without path MTU discovery nothing is learnt, yet RFC 2003 §4.1 says the sender
    # MUST hear of it, with the MTU the tunnel leaves inside that path.
    tunnel = Harness("gre", **{"pmtu-discovery": False})
    (sent,) = tunnel.send(inner4(1476))
    (relayed,) = [IP(p) for p in tunnel.error(sent.data, info=1400)]
    assert relayed[ICMP].nexthopmtu == 1376 and tunnel.endpoint.effective_mtu == 1476


def test_a_report_below_the_floor_is_relayed_as_the_floor_the_tunnel_itself_uses():
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1476))
    (relayed,) = [IP(p) for p in tunnel.error(sent.data, info=400)]
    assert tunnel.endpoint.effective_mtu == 552 - 24
    assert relayed[ICMP].nexthopmtu == tunnel.endpoint.effective_mtu


def test_a_sender_that_allowed_fragments_is_not_told_to_stop():
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1476, df=False))
    # (The outer copied the inner's clear DF, so only a forged or confused report says this.)
    assert tunnel.error(sent.data, info=1400) == []
    assert tunnel.endpoint.effective_mtu == 1376


def test_a_local_emsgsize_lowers_the_path_too():
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(1476))
    assert tunnel.error(sent.data, origin=ErrorOrigin.LOCAL, icmp_type=0, code=0,
                        info=1400) == []
    assert tunnel.endpoint.effective_mtu == 1376


@pytest.mark.parametrize("icmp_type, code, relayed", [
    (11, 0, (3, 1)),       # RFC 2003 §4.4: time exceeded in the tunnel -> host unreachable
    (3, 0, (3, 1)),        # §4.1: net and protocol unreachable -> host unreachable
    (3, 1, (3, 1)),
    (3, 2, (3, 1)),
    (3, 3, None),          # port unreachable is about the tunnel, not the inner packet
    (3, 5, None),          # source route failed: the same
    (4, 0, None),          # §4.2: no source quench
    (5, 0, None),          # §4.3: redirects are never relayed
    (12, 0, None),         # §4.5: parameter problems are not relayed
])
def test_other_wan_errors_are_relayed_as_rfc_2003_says(icmp_type, code, relayed):
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner4(200))
    replies = [IP(p) for p in tunnel.error(sent.data, icmp_type=icmp_type, code=code)]
    assert [(r[ICMP].type, r[ICMP].code, r.dst) for r in replies] == \
        ([relayed + (HOST_A,)] if relayed else [])
    assert tunnel.endpoint.effective_mtu == 1476


@pytest.mark.parametrize("icmp_type, code, info, expected", [
    (3, 4, 1400, ICMPv6PacketTooBig),
    (11, 0, 0, ICMPv6DestUnreach),        # RFC 4213 §3.4: the rest is address unreachable
])
def test_errors_about_ipv6_inner_packets_are_relayed_as_icmpv6(icmp_type, code, info, expected):
    tunnel = Harness("gre")
    (sent,) = tunnel.send(inner6(1476))
    (relayed,) = [IPv6(p) for p in tunnel.error(sent.data, icmp_type=icmp_type, code=code,
                                                 info=info)]
    assert (relayed.src, relayed.dst) == (TUNNEL_ADDRESS6, HOST_A6)
    assert relayed.haslayer(expected)
    if expected is ICMPv6PacketTooBig:
        assert relayed[ICMPv6PacketTooBig].mtu == 1376
    else:
        assert relayed[ICMPv6DestUnreach].code == 3


def test_an_error_about_a_vxlan_datagram_is_measured_by_its_inner_packet():
    # The UDP socket quotes the payload only: the length on the wire comes from the inner
    # IP header, plus the outer IPv4, UDP, VXLAN and Ethernet headers (50 bytes).
    tunnel = Harness("vxlan")
    (sent,) = tunnel.send(frame(inner4(1450), src=MAC_A, dst=MAC_B))
    assert tunnel.error(sent.data, info=1500) == [], "a 1500-byte datagram fitted 1500"
    assert tunnel.endpoint.effective_mtu == 1450
    (relayed,) = [Ether(p) for p in tunnel.error(sent.data, info=1400)]
    assert tunnel.endpoint.effective_mtu == 1350
    assert (relayed.dst, relayed.src, relayed[IP].dst) == (MAC_A, MAC_B, HOST_A)
    assert relayed[ICMP].nexthopmtu == 1350


# -- VXLAN -----------------------------------------------------------------------------------

@pytest.mark.parametrize("keys, inner_tos, inner_ttl, marking", [
    ({"ttl": 33, "dscp": "inherit"}, 0xB8 | ECT_0, 30, 33 << 8 | 0xB8 | ECT_0),
    ({}, 0xB8 | ECT_0, 30, 64 << 8 | ECT_0),     # the ECN field is copied (RFC 6040 normal)
    ({}, 0xB8, 30, None),                         # TTL 64, TOS 0: the socket's own defaults
    ({"ttl": "inherit"}, 0, 30, 30 << 8),
    ({"ttl": "inherit"}, 0, 0, None),             # a bridged frame's TTL 0 is not ours to end
])
def test_vxlan_sets_ttl_and_tos_per_datagram_as_a_marking(keys, inner_tos, inner_ttl, marking):
    tunnel = Harness("vxlan", **keys)
    (sent,) = tunnel.send(frame(inner4(tos=inner_tos, ttl=inner_ttl), dst=BROADCAST))
    assert sent.marking == marking and not tunnel.drops and not tunnel.replies


def test_vxlan_drops_congestion_marks_an_inner_packet_cannot_carry():
    tunnel = Harness("vxlan")
    datagram = vxlan_datagram(frame(inner4(tos=NOT_ECT)))
    assert tunnel.receive(datagram, tos=CE) == []
    assert tunnel.drops == {"ecn_ce_on_not_ect": 1}
    assert len(tunnel.receive(datagram, tos=ECT_0)) == 1


def test_vxlan_marks_congestion_on_an_inner_packet_that_can_carry_it():
    tunnel = Harness("vxlan")
    (delivered,) = tunnel.receive(vxlan_datagram(frame(inner4(tos=ECT_0))), tos=CE)
    assert Ether(delivered)[IP].tos == CE


# -- GRE sequence numbers ---------------------------------------------------------------------

def sequenced(*numbers: int, key: int | None = 7, **options) -> list[bytes]:
    return [gre_datagram(inner4(), key=key, sequence=n, **options) for n in numbers]


FORGERIES = {
    "unknown protocol": gre_datagram(inner4(), key=7, sequence=0x70000000, protocol=0x88B5),
    "not an IPv4 packet": gre_datagram(b"\x45" + bytes(10), key=7, sequence=0x70000000),
    "bad outer checksum": (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:])(
        gre_datagram(inner4(), key=7, sequence=0x70000000)),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_far_ahead_sequence_number_in_a_bad_datagram_does_not_move_the_window(forgery):
    tunnel = Harness("gre", key=7, sequence=True)
    assert len(tunnel.receive(*sequenced(0, 1, 2))) == 3
    assert tunnel.receive(FORGERIES[forgery]) == []
    assert sum(tunnel.drops.values()) == 1 and "gre_out_of_order" not in tunnel.drops
    assert len(tunnel.receive(*sequenced(3, 4, 5))) == 3, "later packets are still accepted"
    assert tunnel.endpoint.header.expected_sequence == 6
    assert tunnel.endpoint.status(NOW)["sequence_epochs"] == 0


def test_a_gre_peer_that_restarts_its_sequence_numbers_is_followed_after_a_short_run():
    tunnel = Harness("gre", key=7, sequence=True)
    assert len(tunnel.receive(*sequenced(*range(100)))) == 100
    accepted = [bool(tunnel.receive(datagram)) for datagram in sequenced(*range(10))]
    assert accepted == [False] * (NEW_EPOCH_RUN - 1) + [True] * (11 - NEW_EPOCH_RUN)
    assert tunnel.drops == {"gre_out_of_order": NEW_EPOCH_RUN - 1}
    assert tunnel.endpoint.status(NOW)["sequence_epochs"] == 1


def test_late_and_duplicate_gre_packets_are_dropped_and_never_start_a_new_epoch():
    tunnel = Harness("gre", key=7, sequence=True)
    tunnel.receive(*sequenced(*range(100)))
    assert tunnel.receive(*sequenced(*range(60, 100))) == []   # within the reorder window
    assert tunnel.drops == {"gre_out_of_order": 40}
    assert tunnel.endpoint.status(NOW)["sequence_epochs"] == 0
    assert len(tunnel.receive(*sequenced(100))) == 1


def test_a_forged_far_ahead_sequence_number_that_was_accepted_costs_only_a_short_run():
    tunnel = Harness("gre", key=7, sequence=True)
    tunnel.receive(*sequenced(0, 1, 2))
    assert len(tunnel.receive(*sequenced(0x70000000))) == 1   # it knew the key
    accepted = [bool(tunnel.receive(datagram)) for datagram in sequenced(*range(3, 10))]
    assert accepted == [False] * (NEW_EPOCH_RUN - 1) + [True] * (8 - NEW_EPOCH_RUN)


def with_outer_options(datagram: bytes) -> bytes:
    """The datagram with four bytes of IPv4 options (which the codec's fast path leaves to
    its header-by-header checks)."""
    packet = IP(datagram)
    packet.options = [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()]
    del packet.ihl, packet.len, packet.chksum
    return bytes(packet)


def test_the_gre_receive_window_holds_for_datagrams_with_outer_ip_options_too():
    tunnel = Harness("gre", key=7, sequence=True)
    assert len(tunnel.receive(*map(with_outer_options, sequenced(*range(10))))) == 10
    assert tunnel.receive(*map(with_outer_options, sequenced(5))) == []
    assert tunnel.receive(*sequenced(5)) == []
    assert tunnel.drops == {"gre_out_of_order": 2}
    assert len(tunnel.receive(*sequenced(10))) == 1


def test_a_gre_tunnel_with_sequence_numbers_numbers_what_it_sends():
    tunnel = Harness("gre", key=7, sequence=True, checksum=True)
    sent = tunnel.send(inner4(), inner4(), inner4())
    grs = [outer(s)[GRE] for s in sent]
    assert [g.sequence_number for g in grs] == [0, 1, 2]
    assert {g.key for g in grs} == {7}
    for g in grs:  # scapy recomputes the checksum it dropped
        rebuilt = GRE(bytes(g))
        rebuilt.chksum = None
        assert GRE(bytes(rebuilt)).chksum == g.chksum


# -- what used to stop the router -----------------------------------------------------------

@pytest.mark.parametrize("version", [5, 0, 15])
@pytest.mark.parametrize("mode", MODES)
def test_an_icmp_error_quoting_an_inner_packet_of_ip_version_5_0_or_15_does_not_stop_the_router(
        mode, version):
    # The old datapath raised EncapConfigError from encap.icmp.relayed_error for such a quote.
    tunnel = Harness(mode)
    (sent,) = tunnel.send(carried(mode, 1200))
    inner_start = len(sent.data) - len(carried(mode, 1200)) + (14 if mode in ("gretap", "vxlan")
                                                                else 0)
    forged = bytearray(sent.data)
    forged[inner_start] = version << 4 | forged[inner_start] & 0x0F
    for icmp_type, code, info in ((3, 1, 0), (11, 0, 0), (3, 4, 1000)):
        assert tunnel.error(bytes(forged), icmp_type=icmp_type, code=code, info=info) == []
    assert tunnel.counters.wan_errors == 3 and tunnel.counters.icmp_sent == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_same_error_quoting_a_packet_the_tunnel_carries_is_relayed(mode):
    tunnel = Harness(mode)
    (sent,) = tunnel.send(carried(mode, 1200))
    (relayed,) = tunnel.error(sent.data, icmp_type=3, code=1)
    if mode in ("gretap", "vxlan"):
        relayed = bytes(Ether(relayed).payload)
    if mode == "sit":
        assert (IPv6(relayed).dst, IPv6(relayed)[ICMPv6DestUnreach].code) == (HOST_A6, 3)
    else:
        assert (IP(relayed).dst, IP(relayed)[ICMP].type, IP(relayed)[ICMP].code) == \
            (HOST_A, 3, 1)


# -- one batch, several tunnels ---------------------------------------------------------------

def test_a_raw_tunnel_sends_without_the_marking_a_vxlan_tunnel_left_in_a_shared_batch():
    batch = Batch(2)
    (vxlan_sent,) = Harness("vxlan", ttl=33).send(frame(inner4(), dst=BROADCAST), batch=batch)
    assert vxlan_sent.marking == 33 << 8
    (sent,) = Harness("gre").send(inner4(), batch=batch)
    assert sent.marking is None


def test_status_says_what_the_operator_needs():
    tunnel = Harness("gre", key=7, sequence=True)
    tunnel.send(inner4(), inner4(ttl=0))
    status = tunnel.endpoint.status(NOW)
    assert {key: status[key] for key in ("name", "mode", "local", "peers", "mtu",
                                         "effective_mtu", "path_mtu", "mss_clamp",
                                         "sequence_epochs")} == {
        "name": "t0", "mode": "gre", "local": "10.0.0.1", "peers": [REMOTE], "mtu": 1468,
        "effective_mtu": 1468, "path_mtu": {}, "mss_clamp": {"ipv4": 1428, "ipv6": 1408},
        "sequence_epochs": 0}
    assert status["counters"]["drops"] == {"ttl_expired": 1}
    assert status["counters"]["icmp_sent"] == 1
