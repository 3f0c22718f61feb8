"""The datapath's rules, one packet at a time, against an in-memory device and socket.

Outer TTL/DSCP/ECN on encapsulation, the RFC 6040 decapsulation table, what
happens to a packet larger than the learnt path MTU (fragments, ICMP too big,
outer fragments for IPv6), TTL expiry, and errors the WAN reports about our
packets (path MTU learning, RFC 2003 §4 / RFC 4213 §3.4 relay, rate limit).
scapy builds the inner packets and reads what comes out.
"""

import socket
import sys

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import Ether

from encap.ecn import CE, ECT_0, ECT_1, NOT_ECT
from encap.gre import Gre
from encap.ipv4 import Ipv4Outer
from encap.wire import HEADROOM, IpProto
from tunnelrouter.config import parse_config
from tunnelrouter.datapath import ORIGIN_ICMP, ORIGIN_LOCAL, RawTunnel, VxlanTunnel

LOCAL, REMOTE = "10.0.0.1", "10.0.0.2"
GRE = {"mode": "gre", "local": LOCAL, "remote": REMOTE,
       "addresses": ["192.168.9.1/24", "fd09::1/64"]}
HOST_A, HOST_B = "192.168.1.10", "192.168.2.20"
HOST_A6, HOST_B6 = "fd01::10", "fd02::20"
NOW = 100.0


class FakeDevice:
    def __init__(self):
        self.written: list[bytes] = []

    def write(self, view) -> None:
        self.written.append(bytes(view))


class FakeSocket:
    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []
        self.ancillary: list[list] = []

    def sendto(self, data, destination) -> None:
        self.sent.append((bytes(data), destination))

    def sendmsg(self, buffers, ancillary, flags, destination) -> None:
        self.sent.append((b"".join(bytes(b) for b in buffers), destination))
        self.ancillary.append(ancillary)


def tunnel(kind=RawTunnel, **options):
    body = (GRE if kind is RawTunnel else {
        "mode": "vxlan", "local": LOCAL, "remotes": [REMOTE], "id": 42,
        "addresses": ["192.168.9.1/24"]}) | options
    config = parse_config({"tunnels": {"t0": body}}).tunnels["t0"]
    return kind(config, FakeDevice(), FakeSocket())


def from_device(datapath, packet: bytes, now: float = NOW) -> None:
    buf = bytearray(HEADROOM + 65536)
    buf[HEADROOM:HEADROOM + len(packet)] = packet
    datapath.from_device(buf, memoryview(buf), HEADROOM + len(packet), now)


def sent_outer(datapath) -> list[IP]:
    return [IP(data) for data, _ in datapath.sock.sent]


def inner4(size: int = 100, df: bool = True, tos: int = 0, ttl: int = 64) -> bytes:
    packet = IP(src=HOST_A, dst=HOST_B, tos=tos, ttl=ttl, flags="DF" if df else 0, id=7) / \
        UDP(sport=1, dport=2) / bytes(size - 28)
    return bytes(packet)


def inner6(size: int = 100, tc: int = 0, hlim: int = 64) -> bytes:
    return bytes(IPv6(src=HOST_A6, dst=HOST_B6, tc=tc, hlim=hlim) / UDP(sport=1, dport=2) /
                 bytes(size - 48))


# -- outer TTL and TOS ---------------------------------------------------------------------

@pytest.mark.parametrize("options, inner_tos, inner_ttl, outer_tos, outer_ttl", [
    ({}, 0xB8 | ECT_0, 30, ECT_0, 64),                          # defaults: DSCP 0, ECN copied
    ({}, 0xB8 | CE, 30, CE, 64),                                # RFC 6040 normal mode copies CE
    ({"dscp": "inherit"}, 0xB8 | ECT_1, 30, 0xB8 | ECT_1, 64),
    ({"dscp": 10}, 0xB8 | ECT_0, 30, 10 << 2 | ECT_0, 64),
    ({"dscp": 10, "ecn": "compatibility"}, 0xB8 | CE, 30, 10 << 2 | NOT_ECT, 64),
    ({"ttl": "inherit"}, 0, 30, 0, 30),
    ({"ttl": 200}, 0, 30, 0, 200),
])
def test_outer_ttl_dscp_and_ecn_follow_the_settings(options, inner_tos, inner_ttl, outer_tos,
                                                    outer_ttl):
    datapath = tunnel(**options)
    from_device(datapath, inner4(tos=inner_tos, ttl=inner_ttl))
    (outer,) = sent_outer(datapath)
    assert (outer.tos, outer.ttl) == (outer_tos, outer_ttl)


@pytest.mark.parametrize("options, packet, outer_df", [
    ({}, inner4(df=True), True),
    ({}, inner4(df=False), False),     # RFC 2003 §3.1: the WAN may fragment what the sender may
    ({}, inner6(), True),
    ({"pmtu-discovery": False}, inner4(df=True), False),
])
def test_outer_dont_fragment_follows_the_inner_packet_and_the_setting(options, packet, outer_df):
    datapath = tunnel(**options)
    from_device(datapath, packet)
    (outer,) = sent_outer(datapath)
    assert bool(outer.flags.DF) == outer_df


def test_a_send_that_only_collected_an_earlier_error_is_tried_again():
    datapath = tunnel()
    sendto = datapath.sock.sendto
    failures = iter([OSError(90, "Message too long")])

    def send_after_icmp(data, destination):
        error = next(failures, None)
        if error is not None:
            raise error
        sendto(data, destination)
    datapath.sock.sendto = send_after_icmp
    from_device(datapath, inner4())
    assert len(datapath.sock.sent) == 1 and not datapath.counters.drops_by_label()


def test_ipv6_traffic_class_is_the_inner_tos():
    datapath = tunnel(dscp="inherit", ttl="inherit")
    from_device(datapath, inner6(tc=0x2E << 2 | ECT_1, hlim=9))
    (outer,) = sent_outer(datapath)
    assert (outer.tos, outer.ttl) == (0x2E << 2 | ECT_1, 9)


def test_an_inner_packet_without_hops_left_is_answered_with_time_exceeded():
    datapath = tunnel()
    from_device(datapath, inner4(ttl=0))
    assert not datapath.sock.sent and datapath.counters.drops_by_label()["ttl_expired"] == 1
    (reply,) = [IP(p) for p in datapath.device.written]
    assert (reply.src, reply.dst, reply[ICMP].type, reply[ICMP].code) == \
        ("192.168.9.1", HOST_A, 11, 0)
    from_device(datapath, inner6(hlim=0))
    assert IPv6(datapath.device.written[-1]).haslayer(ICMPv6TimeExceeded)


# -- RFC 6040 decapsulation ------------------------------------------------------------------

# RFC 6040 §4.2, Figure 4: rows are the arriving inner ECN, columns the outer.
FIGURE_4 = {
    NOT_ECT: {NOT_ECT: NOT_ECT, ECT_0: NOT_ECT, ECT_1: NOT_ECT, CE: None},
    ECT_0: {NOT_ECT: ECT_0, ECT_0: ECT_0, ECT_1: ECT_1, CE: CE},
    ECT_1: {NOT_ECT: ECT_1, ECT_0: ECT_1, ECT_1: ECT_1, CE: CE},
    CE: {NOT_ECT: CE, ECT_0: CE, ECT_1: CE, CE: CE},
}


@pytest.mark.parametrize("inner_ecn, outer_ecn, expected",
                         [(i, o, e) for i, row in FIGURE_4.items() for o, e in row.items()])
@pytest.mark.parametrize("version", [4, 6])
def test_decapsulation_applies_every_cell_of_rfc_6040_figure_4(inner_ecn, outer_ecn, expected,
                                                               version):
    datapath = tunnel()
    packet = inner4(tos=0x28 | inner_ecn) if version == 4 else inner6(tc=0x28 | inner_ecn)
    outer = Ipv4Outer(socket.inet_aton(REMOTE), socket.inet_aton(LOCAL), IpProto.GRE,
                      tos=0xB8 | outer_ecn)
    datagram = outer.encap(Gre().encap(packet))
    datapath.from_wire(memoryview(bytearray(datagram)))
    if expected is None:
        assert not datapath.device.written
        assert datapath.counters.drops_by_label() == {"ecn_ce_on_not_ect": 1}
        return
    (delivered,) = datapath.device.written
    parsed = IP(delivered) if version == 4 else IPv6(delivered)
    tos = parsed.tos if version == 4 else parsed.tc
    assert tos == 0x28 | expected  # the inner DSCP is the inner's own (the pipe model)
    if version == 4:  # the header checksum was mended with the ECN bits
        rebuilt = IP(delivered)
        del rebuilt.chksum
        assert IP(bytes(rebuilt)).chksum == parsed.chksum


# -- larger than the path ------------------------------------------------------------------

def learnt(path_mtu: int, **options):
    datapath = tunnel(**options)
    assert datapath.learn_path_mtu(REMOTE, path_mtu, NOW)
    return datapath


def test_a_learnt_path_mtu_lowers_the_effective_mtu_and_the_mss():
    datapath = learnt(1400)
    assert (datapath.effective_mtu, datapath.mss) == (1376, (1336, 1316))
    assert datapath.status(NOW)["path_mtu"] == {REMOTE: {"mtu": 1400, "expires_in": 600.0}}
    assert not datapath.learn_path_mtu(REMOTE, 1450, NOW), "a report never raises the path MTU"
    assert datapath.expire_path_mtu(NOW + 600)
    assert (datapath.effective_mtu, datapath.mss) == (1476, (1436, 1416))


def test_a_dont_fragment_packet_too_big_for_the_path_gets_fragmentation_needed():
    datapath = learnt(1400)
    from_device(datapath, inner4(1476))
    assert not datapath.sock.sent
    (reply,) = [IP(p) for p in datapath.device.written]
    assert (reply.src, reply.dst) == ("192.168.9.1", HOST_A)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1376)
    assert datapath.counters.drops_by_label() == {"too_big": 1}
    assert datapath.counters.icmp_sent == 1


def test_a_packet_that_may_be_fragmented_is_sent_in_inner_fragments():
    datapath = learnt(1400)
    original = inner4(1476, df=False)
    from_device(datapath, original)
    outers = sent_outer(datapath)
    assert len(outers) == 2 and all(len(bytes(o)) <= 1400 for o in outers)
    fragments = [IP(Gre().decap_bytes(bytes(o[IP].payload))) for o in outers]
    assert all(f.flags.MF or f.frag for f in fragments)
    (whole,) = defragment(fragments)
    assert bytes(whole[UDP]) == bytes(IP(original)[UDP])
    assert datapath.counters.fragments_sent == 2 and datapath.counters.tx_packets == 2


def test_ipv6_too_big_for_the_path_gets_packet_too_big():
    datapath = learnt(1400)
    from_device(datapath, inner6(1476))
    (reply,) = [IPv6(p) for p in datapath.device.written]
    assert (reply.src, reply.dst, reply[ICMPv6PacketTooBig].mtu) == ("fd09::1", HOST_A6, 1376)


def test_ipv6_over_a_path_below_1280_goes_in_outer_fragments():
    datapath = learnt(1280)   # gre leaves 1256, less than IPv6's minimum MTU
    from_device(datapath, inner6(1280))
    (outer,) = sent_outer(datapath)
    assert not outer.flags.DF and not datapath.device.written   # RFC 4213 §3.2
    from_device(datapath, inner6(100))
    assert sent_outer(datapath)[-1].flags.DF, "only the packets that need it lose DF"
    from_device(datapath, inner6(1400))
    (reply,) = [IPv6(p) for p in datapath.device.written]
    assert reply[ICMPv6PacketTooBig].mtu == 1280, "IPv6 is never told less than 1280"
    from_device(datapath, inner4(1276))
    assert IP(datapath.device.written[-1])[ICMP].nexthopmtu == 1256, "IPv4 is told the truth"


def test_icmp_to_senders_is_rate_limited():
    datapath = learnt(1400, **{"icmp-rate-limit": 2})
    for _ in range(3):
        from_device(datapath, inner4(1476))
    assert (datapath.counters.icmp_sent, datapath.counters.icmp_rate_limited) == (2, 1)
    from_device(datapath, inner4(1476), now=NOW + 1)
    assert datapath.counters.icmp_sent == 3


def test_a_tap_device_gets_its_icmp_in_an_ethernet_frame_back_to_the_sender():
    datapath = tunnel(mode="gretap", key=1, addresses=["192.168.9.1/24"])
    datapath.learn_path_mtu(REMOTE, 1400, NOW)
    frame = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(inner4(1462)))
    from_device(datapath, frame)
    (reply,) = [Ether(p) for p in datapath.device.written]
    assert (reply.dst, reply.src) == ("02:00:00:00:00:0a", "02:00:00:00:00:0b")
    assert reply[ICMP].nexthopmtu == 1400 - 42   # outer IPv4, GRE with key, inner Ethernet


# -- errors the WAN reports ------------------------------------------------------------------

def quoted_outer(datapath, packet: bytes, length: int = 548) -> memoryview:
    """What a WAN router quotes of our datagram: its first ``length`` bytes."""
    from_device(datapath, packet)
    data, _ = datapath.sock.sent.pop()
    return memoryview(data[:length])


def test_fragmentation_needed_from_the_wan_lowers_the_path_and_is_relayed():
    datapath = tunnel()
    quoted = quoted_outer(datapath, inner4(1476))
    assert datapath.wan_error(ORIGIN_ICMP, 3, 4, 1400, REMOTE, quoted, NOW)
    assert datapath.effective_mtu == 1376
    (relayed,) = [IP(p) for p in datapath.device.written]
    assert (relayed.dst, relayed[ICMP].type, relayed[ICMP].code, relayed[ICMP].nexthopmtu) == \
        (HOST_A, 3, 4, 1376)


@pytest.mark.parametrize("reported, why", [
    (0, "RFC 1191 routers that do not know say 0"),
    (1200, "the quoted packet (1024 bytes) would have fitted: not about this path"),
])
def test_a_too_big_report_that_cannot_be_true_is_ignored(reported, why):
    datapath = tunnel()
    quoted = quoted_outer(datapath, inner4(1000))
    assert not datapath.wan_error(ORIGIN_ICMP, 3, 4, reported, REMOTE, quoted, NOW), why
    assert datapath.effective_mtu == 1476 and not datapath.device.written


def test_a_sender_that_allowed_fragments_is_not_told_to_stop():
    datapath = tunnel(**{"pmtu-discovery": True})
    quoted = quoted_outer(datapath, inner4(1476, df=False))
    # (The outer copied the inner's clear DF, so only a forged or confused report says this.)
    assert datapath.wan_error(ORIGIN_ICMP, 3, 4, 1400, REMOTE, quoted, NOW)
    assert datapath.effective_mtu == 1376 and not datapath.device.written


def test_a_local_emsgsize_lowers_the_path_too():
    datapath = tunnel()
    assert datapath.wan_error(ORIGIN_LOCAL, 0, 0, 1400, REMOTE, memoryview(bytes(20)), NOW)
    assert datapath.effective_mtu == 1376 and not datapath.device.written


@pytest.mark.parametrize("icmp_type, code, relayed", [
    (11, 0, (3, 1)),       # RFC 2003 §4.4: time exceeded in the tunnel -> host unreachable
    (3, 1, (3, 1)),
    (3, 3, None),          # port unreachable is about the tunnel, not the inner packet
    (5, 0, None),          # redirects are never relayed
])
def test_other_wan_errors_are_relayed_as_rfc_2003_says(icmp_type, code, relayed):
    datapath = tunnel()
    quoted = quoted_outer(datapath, inner4(200))
    assert not datapath.wan_error(ORIGIN_ICMP, icmp_type, code, 0, REMOTE, quoted, NOW)
    replies = [IP(p) for p in datapath.device.written]
    assert [(r[ICMP].type, r[ICMP].code) for r in replies] == ([relayed] if relayed else [])


def test_errors_about_ipv6_inner_packets_are_relayed_as_icmpv6():
    datapath = tunnel()
    quoted = quoted_outer(datapath, inner6(1476))
    datapath.wan_error(ORIGIN_ICMP, 3, 4, 1400, REMOTE, quoted, NOW)
    (relayed,) = [IPv6(p) for p in datapath.device.written]
    assert (relayed.dst, relayed[ICMPv6PacketTooBig].mtu) == (HOST_A6, 1376)


# -- VXLAN -----------------------------------------------------------------------------------

def test_vxlan_sets_ttl_and_tos_per_datagram_as_ancillary_data():
    datapath = tunnel(VxlanTunnel, ttl=33, dscp="inherit")
    frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(inner4(100, tos=0xB8 | ECT_0)))
    from_device(datapath, frame)
    (ancillary,) = datapath.sock.ancillary
    values = {kind: int.from_bytes(data, sys.byteorder) for _, kind, data in ancillary}
    assert values == {socket.IP_TTL: 33, socket.IP_TOS: 0xB8 | ECT_0}


def test_vxlan_sends_plainly_when_the_socket_defaults_are_right():
    datapath = tunnel(VxlanTunnel)
    from_device(datapath, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(inner4(100, tos=0xB8))))
    assert len(datapath.sock.sent) == 1 and datapath.sock.ancillary == []


def test_vxlan_drops_congestion_marks_an_inner_packet_cannot_carry():
    datapath = tunnel(VxlanTunnel)
    frame = bytearray(bytes(Ether() / IP(inner4(100, tos=NOT_ECT))))
    datapath.from_wire(memoryview(frame), REMOTE, CE, NOW)
    assert not datapath.device.written
    assert datapath.counters.drops_by_label() == {"ecn_ce_on_not_ect": 1}
    datapath.from_wire(memoryview(frame), REMOTE, ECT_0, NOW)
    assert len(datapath.device.written) == 1
