"""VXLAN remote checksum offload through an endpoint (``remote-checksum-tx``/``-rx``): the
segments of a super-packet leave their TCP checksums to the peer and the header says
where; a datagram whose checksum the peer left is finished before anything reads it, or
refused where the tunnel did not agree. scapy judges every checksum."""

import pytest
from scapy.layers.inet import IP, UDP

from encap.checksum import pseudo_header_sum
from encap.gso import finish_checksum
from encap.vxlan import FLAG_REMOTE_CHECKSUM, Vxlan, remote_checksum, remote_checksum_field
from tunnelrouter.modes import Underlay

from tests.encap.test_gso import checksums_valid, tcp_packet
from tests.tunnelrouter.tunnel.harness import (MAC_A, MAC_B, REMOTE, VNI, Harness, frame,
                                              vxlan_datagram, wire_batch)
from tests.tunnelrouter.tunnel.test_super_packets import MSS, cut, super_packet_batch


def vxlan(tx: bool = False, rx: bool = False) -> Harness:
    return Harness("vxlan", **{"remote-checksum-tx": tx, "remote-checksum-rx": rx})


def flags(datagram: bytes) -> int:
    return int.from_bytes(datagram[:4], "big")


@pytest.mark.parametrize("version", [4, 6])
def test_a_super_packets_segments_leave_their_checksums_to_the_peer_and_say_where(version):
    harness = vxlan(tx=True)
    batch = super_packet_batch(frame(tcp_packet(version, bytes(range(256)) * 17, "PA"),
                                     MAC_A, MAC_B), True)
    harness.endpoint.encapsulate(batch, 100.0)
    assert batch.remote_checksums[0] and harness.drops == {}
    transport = 14 + (20 if version == 4 else 40)
    segments = cut(harness, batch)
    assert len(segments) == 4
    for segment in segments:
        assert remote_checksum(segment) == (transport, 16)
        inner = segment[8 + 14:]
        assert not checksums_valid(inner)
        # Finished as the peer does: the sum from the start it was told, over what came.
        finished = bytearray(segment)
        finish_checksum(memoryview(finished)[8:], transport, 16)
        assert checksums_valid(bytes(finished[22:]))


def test_without_remote_checksum_tx_every_segment_goes_whole():
    harness = vxlan(rx=True)
    batch = super_packet_batch(frame(tcp_packet(4, bytes(3000)), MAC_A, MAC_B), True)
    harness.endpoint.encapsulate(batch, 100.0)
    assert not batch.remote_checksums[0]
    for segment in cut(harness, batch):
        assert not flags(segment) & FLAG_REMOTE_CHECKSUM and checksums_valid(segment[22:])


def test_a_packet_the_device_handed_over_whole_goes_whole():
    harness = vxlan(tx=True)
    [sent] = harness.send(frame(tcp_packet(4, b"x" * 100), MAC_A, MAC_B))
    assert not flags(sent.data) & FLAG_REMOTE_CHECKSUM
    assert checksums_valid(sent.data[22:])


def left_to_the_receiver(version: int = 4, size: int = 500) -> bytes:
    """A VXLAN datagram whose inner TCP checksum its sender left for us (one segment cut
    with remote_checksum, the header saying where)."""
    sender = vxlan(tx=True)
    batch = super_packet_batch(frame(tcp_packet(version, bytes(size)), MAC_B, MAC_A), True,
                               gso_size=MSS)
    sender.endpoint.encapsulate(batch, 100.0)
    [segment] = cut(sender, batch)
    return segment


@pytest.mark.parametrize("version", [4, 6])
def test_a_checksum_the_peer_left_is_finished_before_the_device_gets_the_frame(version):
    harness = vxlan(rx=True)
    datagram = left_to_the_receiver(version)
    assert not checksums_valid(datagram[22:])
    [delivered] = harness.receive(datagram)
    assert delivered[14:] == tcp_packet(version, bytes(500)) and checksums_valid(delivered[14:])
    assert harness.drops == {}


def udp_left_to_the_receiver(padding: int = 0) -> tuple[bytes, bytes]:
    """A VXLAN datagram carrying a UDP datagram whose checksum its sender left (the O bit:
    UDP's), maybe with Ethernet padding after it; and the frame as it should arrive."""
    packet = bytes(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5000, dport=53) / b"query")
    whole = frame(packet, MAC_B, MAC_A)
    left = bytearray(whole) + b"\xaa" * padding   # not zeros: zeros add nothing to a sum
    pseudo = pseudo_header_sum(packet[12:16], packet[16:20], 17, len(packet) - 20)
    left[14 + 20 + 6:14 + 20 + 8] = pseudo.to_bytes(2, "big")
    header = bytearray(8)
    Vxlan(VNI, remote_checksum=True).mark_remote_checksum(
        header, 0, remote_checksum_field(14 + 20, 6))
    return bytes(header) + bytes(left), whole + b"\xaa" * padding


@pytest.mark.parametrize("padding", [0, 12])
def test_a_udp_checksum_the_peer_left_is_finished_to_the_end_of_its_ip_packet(padding):
    harness = vxlan(rx=True)
    datagram, expected = udp_left_to_the_receiver(padding)
    assert harness.receive(datagram) == [expected]
    assert harness.drops == {}


def test_a_joined_datagrams_checksum_stays_partial_for_the_device_to_finish():
    harness = vxlan(rx=True)
    datagram = left_to_the_receiver()
    batch = wire_batch([datagram], REMOTE, Underlay.UDP)
    batch.gso_sizes[0], batch.joined[0] = 250, 2     # as the socket joins a train
    assert harness.endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)
    assert bytes(batch.packets[0]) == datagram[8:]


def test_a_checksum_left_to_a_tunnel_that_did_not_agree_is_refused():
    harness = vxlan()
    assert harness.receive(left_to_the_receiver()) == []
    assert harness.drops == {"vxlan_remote_checksum_off": 1}


def test_a_checksum_said_to_lie_beyond_the_frame_is_a_malformed_datagram():
    harness = vxlan(rx=True)
    datagram = bytearray(vxlan_datagram(frame(tcp_packet(4, b"abc"), MAC_B, MAC_A)))
    datagram[0:4] = (flags(datagram) | FLAG_REMOTE_CHECKSUM).to_bytes(4, "big")
    datagram[7] = 0x7F                                # start 254: past the 57-byte frame
    assert harness.receive(bytes(datagram)) == []
    assert harness.drops == {"inner_malformed": 1}


def test_an_ip_packet_shorter_than_it_says_is_not_sent_and_a_padded_frame_is():
    harness = vxlan()
    packet = bytearray(bytes(IP(dst="10.9.9.9") / (b"x" * 10)))
    short = bytes(packet[:-4])                       # its length says 4 bytes more
    assert harness.send(frame(short, MAC_A, MAC_B)) == []
    assert harness.drops == {"inner_malformed": 1}
    padded = frame(bytes(packet), MAC_A, MAC_B) + bytes(20)   # Ethernet's minimum
    assert len(harness.send(padded)) == 1


@pytest.mark.parametrize("tx, rx, said", [(True, True, ["tx", "rx"]), (False, True, ["rx"]),
                                          (False, False, [])])
def test_the_status_says_which_ways_remote_checksum_offload_is_on(tx, rx, said):
    assert vxlan(tx, rx).endpoint.status(0.0)["remote_checksum"] == said
