"""Batches: where a device read and a socket read leave their packets, and that the core
works on them in place (outer headers written into the headroom, payloads never copied)."""

import pytest

from encap.wire import HEADROOM
from tunnelrouter.tunnel.batch import BATCH_SIZE, BUFFER_SIZE, Batch

from tests.tunnelrouter.tunnel.harness import (
    LOCAL, OTHER, REMOTE, Harness, frame, gre_datagram, inner4, inner6)


def test_a_new_batch_holds_a_wakeup_of_the_largest_packets():
    batch = Batch()
    assert batch.capacity == BATCH_SIZE == len(batch.buffers) and batch.count == 0
    # A 64 KB super-packet in an Ethernet frame fits behind the headroom.
    assert BUFFER_SIZE - HEADROOM >= 65536 + 14
    assert all(len(buffer) == BUFFER_SIZE for buffer in batch.buffers)


def test_a_device_read_leaves_each_packet_after_the_headroom():
    packets = [b"\x45" + bytes(99), b"\x60" + bytes(39)]
    batch = Batch(4, 256).fill_from_device(packets)
    assert batch.count == 2
    for i, packet in enumerate(packets):
        assert (batch.starts[i], batch.ends[i]) == (HEADROOM, HEADROOM + len(packet))
        assert bytes(batch.buffers[i][HEADROOM:batch.ends[i]]) == packet
        assert (batch.addresses[i], batch.tos[i]) == (None, 0)


def test_the_device_views_are_the_buffers_after_the_headroom():
    batch = Batch(2, 256)
    batch.device_views[1][:3] = b"abc"
    assert bytes(batch.buffers[1][HEADROOM:HEADROOM + 3]) == b"abc"
    assert len(batch.device_views[1]) == 256 - HEADROOM


def test_a_socket_read_leaves_each_datagram_at_the_start_with_its_source_and_tos():
    datagrams = [bytes(range(40)), bytes(8)]
    batch = Batch(4, 256).fill_from_wire(datagrams, [REMOTE, OTHER], [20, 0], [0xB8, 3])
    assert batch.count == 2
    assert [bytes(batch.buffers[i][:batch.ends[i]]) for i in range(2)] == datagrams
    assert batch.starts[:2] == [20, 0] and batch.ends[:2] == [40, 8]
    assert batch.addresses[:2] == [REMOTE, OTHER] and batch.tos[:2] == [0xB8, 3]


def test_a_refilled_batch_forgets_what_the_last_fill_said():
    batch = Batch(4, 256).fill_from_wire([bytes(40), bytes(40)], [REMOTE, OTHER], [20, 20],
                                         [3, 3])
    batch.fill_from_device([bytes(10)])
    assert batch.count == 1
    assert (batch.starts[0], batch.ends[0], batch.addresses[0], batch.tos[0]) == \
        (HEADROOM, HEADROOM + 10, None, 0)


def test_a_batch_takes_no_more_packets_than_it_holds():
    with pytest.raises(ValueError, match="holds 2"):
        Batch(2, 256).fill_from_device([b"\x45"] * 3)


ALL_OPTIONS = {
    "gre": {"key": 1, "sequence": True, "checksum": True},
    "gretap": {"key": 1, "sequence": True, "checksum": True},
    "ipip": {}, "sit": {}, "vxlan": {},
}
# What the core writes in front of the packet: the outer IPv4 header (raw modes) and the
# tunnel header; the kernel writes a UDP tunnel's outer IP and UDP headers.
WRITTEN_IN_FRONT = {"gre": 20 + 16, "gretap": 20 + 16, "ipip": 20, "sit": 20, "vxlan": 8}


@pytest.mark.parametrize("mode", ALL_OPTIONS)
def test_encapsulation_writes_the_headers_into_the_headroom_and_copies_nothing(mode):
    tunnel = Harness(mode, **ALL_OPTIONS[mode])
    packet = inner6() if mode == "sit" else frame(inner4()) if mode in ("gretap", "vxlan") \
        else inner4()
    batch = Batch(1, 512).fill_from_device([packet])
    tunnel.endpoint.encapsulate(batch, 100.0)
    datagram = batch.packets[0]
    assert datagram.obj is batch.buffers[0], "a view of the buffer the device read filled"
    assert len(datagram) == WRITTEN_IN_FRONT[mode] + len(packet)
    assert bytes(datagram[WRITTEN_IN_FRONT[mode]:]) == packet
    assert bytes(batch.buffers[0][HEADROOM - WRITTEN_IN_FRONT[mode]:HEADROOM + len(packet)]) \
        == bytes(datagram)


def test_decapsulation_hands_over_a_view_of_the_datagram_it_read():
    tunnel = Harness("gre")
    datagram = gre_datagram(inner4(), src=REMOTE, dst=LOCAL)
    batch = Batch(1, 512).fill_from_wire([datagram], [REMOTE], [20])
    assert tunnel.endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 100.0)
    assert batch.packets[0].obj is batch.buffers[0]
    assert bytes(batch.packets[0]) == inner4() == datagram[24:]
