"""TCP super-packets through an endpoint: decided on and encapsulated once, as their first
segment, and cut by the socket into the segments a sender would have sent one by one.
What the cut gives is read back with scapy; a super-packet whose segments do not fit the
path is cut here and each segment takes the way a packet of its size takes."""

import pytest
from scapy.layers.inet import GRE, ICMP, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from encap.gso import coalesce, segment_tcp
from encap.wire import HEADROOM
from tunnelrouter.modes import Underlay
from tunnelrouter.tunnel.batch import Batch

from tests.encap.test_gso import checksums_valid, stream, tcp_packet
from tests.tunnelrouter.tunnel.harness import (MAC_A, MAC_B, REMOTE, Harness, frame, gre_datagram,
                                              ipip_datagram, wire_batch)

SCRATCH = 512 << 10
MSS = 1200


def super_packet_batch(packet: bytes, ethernet: bool, gso_size: int = MSS) -> Batch:
    """What a device read of a TSO super-packet leaves in a batch."""
    batch = Batch(2, HEADROOM + 70000, SCRATCH).fill_from_device([packet])
    link = 14 if ethernet else 0
    batch.gso_sizes[0] = gso_size
    batch.ip_offsets[0] = link
    batch.tcp_offsets[0] = link + (20 if packet[link] >> 4 == 4 else 40)
    return batch


def cut(harness: Harness, batch: Batch) -> list[bytes]:
    """The segments the socket sends for entry 0 (io/underlay.py's cut)."""
    arena = bytearray(SCRATCH)
    count, stride, last = segment_tcp(batch.packets[0], batch.ip_offsets[0],
                                      batch.tcp_offsets[0], batch.gso_sizes[0],
                                      harness.underlay is Underlay.RAW, arena,
                                      batch.remote_checksums[0])
    return [bytes(arena[k * stride:k * stride + (stride if k < count - 1 else last)])
            for k in range(count)]


INNER = {"gre": 4, "gretap": 4, "ipip": 4, "sit": 6, "vxlan": 6}


@pytest.mark.parametrize("mode", list(INNER))
def test_a_super_packet_is_one_datagram_until_the_socket_cuts_it_into_the_senders_segments(
        mode):
    harness = Harness(mode)
    ethernet = harness.config.kind.ethernet
    version = INNER[mode]
    payload = bytes(range(256)) * 17            # 4352 bytes: 3 segments of 1200 and 752
    packet = tcp_packet(version, payload, "PA")
    batch = super_packet_batch(frame(packet, MAC_A, MAC_B) if ethernet else packet, ethernet)
    harness.endpoint.encapsulate(batch, 100.0)
    assert batch.packets[0] is not None and harness.drops == {}
    segments = cut(harness, batch)
    assert len(segments) == 4
    link = 14 if ethernet else 0
    for k, segment in enumerate(segments):
        if harness.underlay is Underlay.RAW:
            outer = IP(segment)
            assert outer.len == len(segment) and outer.flags == "DF"
            rebuilt = IP(segment)
            del rebuilt.chksum
            assert IP(bytes(rebuilt)).chksum == outer.chksum
            inner = bytes(outer[GRE].payload if mode in ("gre", "gretap") else outer.payload)
        else:
            inner = bytes(VXLAN(segment).payload)
        if ethernet:
            assert Ether(inner).src == MAC_A and Ether(inner).dst == MAC_B
        inner = inner[link:]
        expected = payload[k * MSS:(k + 1) * MSS]
        assert bytes((IP(inner) if version == 4 else IPv6(inner))[TCP].payload) == expected
        assert checksums_valid(inner)
    assert harness.counters.drops_by_label() == {}


def test_each_segment_gets_its_own_outer_identification_and_the_next_packet_the_one_after():
    harness = Harness("ipip")
    batch = super_packet_batch(tcp_packet(4, bytes(5000)), False)
    harness.endpoint.encapsulate(batch, 100.0)
    identifications = [IP(segment).id for segment in cut(harness, batch)]
    [after] = harness.send(tcp_packet(4, b"next"))
    assert identifications == list(range(identifications[0], identifications[0] + 5))
    assert IP(after.data).id == identifications[-1] + 1


@pytest.mark.parametrize("keys", [{"sequence": True}, {"checksum": True}])
def test_gre_with_a_header_that_changes_per_packet_takes_segments_not_super_packets(keys):
    assert Harness("gre", **keys).endpoint.super_packets is False
    assert Harness("gre", key=5).endpoint.super_packets is True


def test_segments_wider_than_the_path_are_cut_here_and_each_sender_is_told_the_mtu():
    harness = Harness("ipip")
    harness.learn_path_mtu(1000)
    batch = super_packet_batch(tcp_packet(4, bytes(3 * MSS)), False)
    harness.endpoint.encapsulate(batch, 100.0)
    harness.drain()
    assert batch.packets[0] is None
    assert harness.drops == {"too_big": 3}
    replies = [IP(reply) for reply in harness.replies]
    assert [(reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) for reply in replies] \
        == [(3, 4, 980)] * 3


def test_ipv6_segments_of_1280_on_a_narrower_path_go_in_outer_fragments():
    harness = Harness("sit")
    harness.learn_path_mtu(1000)
    batch = super_packet_batch(tcp_packet(6, bytes(3000)), False, gso_size=1280 - 60 - 12)
    harness.endpoint.encapsulate(batch, 100.0)
    sent = harness.drain()
    assert batch.packets[0] is None
    # The two full segments with DF clear (the WAN fragments them); the last one fits.
    assert [(IP(datagram.data).flags == 0, len(IP(datagram.data).payload)) for datagram in sent] \
        == [(True, 1280), (True, 1280), (False, 3000 - 2 * 1208 + 72)]
    assert all(checksums_valid(bytes(IP(datagram.data).payload)) for datagram in sent)


@pytest.mark.parametrize("tcp_offset", [0, 90, 5000])
def test_a_super_packet_whose_tcp_header_is_not_where_the_device_said_is_dropped_and_counted(
        tcp_offset):
    harness = Harness("ipip")
    batch = super_packet_batch(tcp_packet(4, bytes(100)), False)
    batch.tcp_offsets[0] = tcp_offset
    harness.endpoint.encapsulate(batch, 100.0)
    assert batch.packets[0] is None and harness.drops == {"inner_malformed": 1}


def test_a_super_packet_the_scratch_space_could_not_hold_is_dropped_not_cut():
    harness = Harness("ipip")
    batch = super_packet_batch(tcp_packet(4, bytes(60000)), False, gso_size=1)
    harness.endpoint.encapsulate(batch, 100.0)
    assert batch.packets[0] is None and harness.drops == {"inner_malformed": 1}


# -- what the kernel's GRO joined before a raw socket read it ---------------------------------

def gro_joined(version: int, parts: int, size: int = 1400) -> bytes:
    """``parts`` segments of one stream joined as Linux's GRO leaves them: one IP header of
    the whole length, the pseudo-header sum in the TCP checksum field."""
    segments = stream(version, [size] * parts)
    arena = bytearray(sum(map(len, segments)) + 64)
    [(start, end, gso_size, _, joined)] = coalesce(segments, parts, 0, False, arena, 0)
    assert (gso_size, joined) == (size, parts)
    return bytes(arena[start:end])


@pytest.mark.parametrize("mode, version", [("gre", 4), ("ipip", 4), ("sit", 6), ("gre", 6)])
def test_a_datagram_the_kernels_gro_joined_goes_to_the_device_as_a_super_packet(mode, version):
    tunnel = Harness(mode)
    joined = gro_joined(version, 5)
    datagram = gre_datagram(joined) if mode == "gre" else ipip_datagram(joined)
    batch = wire_batch([datagram], REMOTE, Underlay.RAW)
    assert tunnel.endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)
    transport = 20 if version == 4 else 40
    segment = tunnel.endpoint.frame_limit - transport - 32    # the tunnel's largest, 32: options
    assert batch.packets[0] == joined
    assert (batch.gso_sizes[0], batch.joined[0]) == (segment, -(-5 * 1400 // segment))


def test_a_long_packet_the_gro_did_not_make_goes_on_as_it_came():
    tunnel = Harness("gre")
    whole = tcp_packet(4, bytes(3000))          # a full checksum: a peer's reassembled fragments
    batch = wire_batch([gre_datagram(whole)], REMOTE, Underlay.RAW)
    assert tunnel.endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)
    assert batch.packets[0] == whole and batch.gso_sizes[0] == 0
