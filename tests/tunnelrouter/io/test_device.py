"""TUN/TAP devices as plain file descriptors: a batch read drains what waits (at most a
batch), every packet comes and goes behind a virtio-net header, a super-packet is read as
one entry and segments are written as one super-packet, a write counts what was
delivered, and a device that fails is counted and flagged, never raised. A datagram
socketpair stands for the device: one read, one packet.
"""

import errno
import os
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from encap.checksum import pseudo_header_sum
from encap.gso import finish_checksum, join
from encap.wire import HEADROOM
from tunnelrouter.io.device import (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, NEEDS_CSUM,
                                    VNET_HEADER, TunTapDevice)
from tunnelrouter.tunnel.batch import BATCH_SIZE, BUFFER_SIZE, VNET_HEADER_LENGTH, Batch
from tunnelrouter.tunnel.counters import Counters

from tests.encap.test_gso import checksums_valid, datagrams, stream, tcp_packet
from tests.tunnelrouter.doubles import NO_OFFLOAD, DeviceHost

SCRATCH = BATCH_SIZE * (BUFFER_SIZE + VNET_HEADER_LENGTH)


def make_device(ethernet: bool = False):
    router_end, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.setblocking(False)
    return TunTapDevice("tun-test", router_end.fileno(), router_end, ethernet), DeviceHost([host])


@pytest.fixture
def device():
    """``(device, host)``: the router's end wrapped as a device, and the kernel's end."""
    device, host = make_device()
    yield device, host
    device.close()
    host.close()


def failing(monkeypatch, device: TunTapDevice, call: str, code: int) -> None:
    """Make ``os.<call>`` on the device's fd fail with ``code``, as the kernel would."""
    real = getattr(os, call)

    def fails(fd, *args):
        if fd == device.fd:
            raise OSError(code, os.strerror(code))
        return real(fd, *args)
    monkeypatch.setattr(os, call, fails)


def test_the_device_is_made_non_blocking(device):
    assert os.get_blocking(device[0].fd) is False


def test_a_read_drains_at_most_a_batch_and_stops_when_nothing_waits(device):
    device, host = device
    packets = [bytes([n]) * (n * 100) for n in range(1, 7)]
    for packet in packets:
        host.send(packet)
    batch = Batch(4)
    assert device.read_batch(batch, Counters()) == 4 and batch.count == 4
    assert batch.ends[:4] == [HEADROOM + len(packet) for packet in packets[:4]]
    assert [bytes(batch.buffers[i][HEADROOM:batch.ends[i]]) for i in range(4)] == packets[:4]
    assert batch.gso_sizes[:4] == [0] * 4
    assert device.read_batch(batch, Counters()) == 2 and batch.count == 2
    assert bytes(batch.buffers[1][HEADROOM:batch.ends[1]]) == packets[5]
    assert device.read_batch(batch, Counters()) == 0 and batch.count == 0
    assert device.failed == 0


def test_an_empty_packet_is_read_as_an_empty_packet(device):
    device, host = device
    host.send(b"")
    batch = Batch(2)
    assert device.read_batch(batch, Counters()) == 1 and batch.ends[0] == HEADROOM


def test_a_read_shorter_than_the_virtio_net_header_is_counted_truncated(device):
    device, host = device
    host.sock.send(b"\0" * 4)
    host.send(b"after")
    counters = Counters()
    batch = Batch(2)
    assert device.read_batch(batch, counters) == 1
    assert bytes(batch.buffers[0][HEADROOM:batch.ends[0]]) == b"after"
    assert counters.drops_by_label() == {"truncated": 1}


@pytest.mark.parametrize("version, gso_type", [(4, GSO_TCPV4), (6, GSO_TCPV6),
                                               (4, GSO_TCPV4 | 0x80)])
def test_a_super_packet_is_one_entry_with_its_segment_size_and_header_offsets(device, version,
                                                                              gso_type):
    device, host = device
    packet = tcp_packet(version, bytes(5000))
    transport = 20 if version == 4 else 40
    host.send(packet, VNET_HEADER.pack(NEEDS_CSUM, gso_type, transport + 32, 1448, transport,
                                       16))
    batch = Batch(2)
    assert device.read_batch(batch, Counters()) == 1
    assert (batch.gso_sizes[0], batch.ip_offsets[0], batch.tcp_offsets[0]) == (1448, 0, transport)
    assert bytes(batch.buffers[0][HEADROOM:batch.ends[0]]) == packet


def test_on_tap_the_ip_header_of_a_super_packet_follows_the_ethernet_header():
    device, host = make_device(ethernet=True)
    frame = bytes(Ether(type=0x0800) / IP(tcp_packet(4, bytes(3000))))
    host.send(frame, VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16))
    batch = Batch(2)
    assert device.read_batch(batch, Counters()) == 1
    assert (batch.gso_sizes[0], batch.ip_offsets[0], batch.tcp_offsets[0]) == (1448, 14, 34)
    device.close()
    host.close()


def test_a_packet_whose_checksum_was_left_to_do_is_read_with_it_done(device):
    device, host = device
    packet = bytearray(tcp_packet(4, b"data" * 50))
    # What the sender leaves in the field: the pseudo-header sum.
    packet[36:38] = pseudo_header_sum(packet[12:16], packet[16:20], 6,
                                      len(packet) - 20).to_bytes(2, "big")
    host.send(bytes(packet), VNET_HEADER.pack(NEEDS_CSUM, 0, 0, 0, 20, 16))
    batch = Batch(2)
    assert device.read_batch(batch, Counters()) == 1 and batch.gso_sizes[0] == 0
    assert bytes(batch.buffers[0][HEADROOM:batch.ends[0]]) == tcp_packet(4, b"data" * 50)


@pytest.mark.parametrize("header, reason", [
    (VNET_HEADER.pack(NEEDS_CSUM, 5, 0, 1400, 20, 6), "inner_malformed"),     # UDP GSO
    (VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16), "inner_malformed"),  # size 0
    (VNET_HEADER.pack(NEEDS_CSUM, 0, 0, 0, 900, 16), "inner_malformed"),      # outside
])
def test_offload_requests_that_cannot_be_done_are_counted_and_the_rest_read(device, header,
                                                                             reason):
    device, host = device
    host.send(tcp_packet(4, b"x" * 100), header)
    host.send(b"after")
    counters = Counters()
    batch = Batch(4)
    assert device.read_batch(batch, counters) == 1
    assert bytes(batch.buffers[0][HEADROOM:batch.ends[0]]) == b"after"
    assert counters.drops_by_label() == {reason: 1}


def test_a_write_delivers_the_packet_behind_an_empty_header_and_counts_it(device):
    device, host = device
    counters = Counters()
    buffer = bytearray(b"..packet..")
    device.write(memoryview(buffer)[2:8], counters)
    device.write(b"second", counters)
    assert [host.receive(), host.receive()] == [((0,) * 6, b"packet"), ((0,) * 6, b"second")]
    assert (counters.rx_packets, counters.rx_bytes) == (2, 12)


@pytest.mark.parametrize("version", [4, 6])
def test_segments_of_one_stream_are_written_as_one_super_packet_counted_as_they_came(
        device, version):
    device, host = device
    segments = stream(version, [1448, 1448, 600])
    counters = Counters()
    device.write_batch([memoryview(segment) for segment in segments], counters,
                       bytearray(SCRATCH))
    header, packet = host.receive()
    transport = 20 if version == 4 else 40
    assert header == (NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, transport + 32,
                      1448, transport, 16)
    assert len(packet) == sum(map(len, segments)) - 2 * (transport + 32)
    assert (counters.rx_packets, counters.rx_bytes) == (3, sum(map(len, segments)))
    finished = bytearray(packet)
    finish_checksum(finished, transport, 16)
    assert checksums_valid(bytes(finished))
    with pytest.raises(BlockingIOError):
        host.receive()


def test_datagrams_of_one_udp_flow_are_written_as_one_udp_gso_packet(device):
    device, host = device
    sent = datagrams(4, [64] * 10)
    counters = Counters()
    device.write_batch(sent, counters, bytearray(SCRATCH))
    header, packet = host.receive()
    assert header == (NEEDS_CSUM, GSO_UDP_L4, 28, 64, 20, 6)
    assert len(packet) == 28 + 640 and (counters.rx_packets, counters.rx_bytes) == (10, 920)


@pytest.mark.parametrize("ethernet", [False, True])
@pytest.mark.parametrize("parts", [
    pytest.param(stream(4, [1448, 1448, 600]), id="tcp4"),
    pytest.param(stream(6, [1428, 1428, 1428]), id="tcp6"),
    pytest.param(datagrams(4, [64] * 10), id="udp4"),
])
def test_a_super_packet_a_socket_joined_is_written_as_write_batch_would_write_its_parts(
        ethernet, parts):
    link = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                       type=0x0800 if parts[0][0] >> 4 == 4 else 0x86DD)) if ethernet else b""
    parts = [link + part for part in parts]
    joined = bytearray(BUFFER_SIZE)
    end, gso_size, _, count = join(b"".join(parts), 0, sum(map(len, parts)), len(parts[0]),
                                   len(link), ethernet, joined)
    written = []
    for write in (lambda device, counters: device.write_joined(
                      memoryview(joined)[:end], gso_size, count, counters),
                  lambda device, counters: device.write_batch(parts, counters, bytearray(SCRATCH))):
        device, host = make_device(ethernet)
        counters = Counters()
        write(device, counters)
        written.append((host.receive(), counters.rx_packets, counters.rx_bytes))
        device.close()
        host.close()
    assert written[0] == written[1] and written[0][1:] == (len(parts), sum(map(len, parts)))


def test_what_cannot_be_joined_is_written_one_by_one_in_order(device):
    device, host = device
    packets = [b"not ip", tcp_packet(4, b"a" * 100, "S"), bytes(IP(proto=17) / b"udp")]
    device.write_batch(packets, Counters(), bytearray(SCRATCH))
    assert [host.receive() for _ in packets] == [((0,) * 6, packet) for packet in packets]


# -- failures -----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF])
def test_a_read_that_says_the_device_is_gone_flags_it_and_keeps_what_was_read(
        device, monkeypatch, code):
    device, host = device
    host.send(b"before")
    batch = Batch(4)
    assert device.read_batch(batch, Counters()) == 1
    failing(monkeypatch, device, "readv", code)
    assert device.read_batch(batch, Counters()) == 0 and device.failed == code


def test_a_read_that_fails_otherwise_ends_the_batch_but_keeps_the_device(device, monkeypatch):
    device, host = device
    failing(monkeypatch, device, "readv", errno.EIO)
    host.send(b"waiting")
    assert device.read_batch(Batch(4), Counters()) == 0 and device.failed == 0
    monkeypatch.undo()
    assert device.read_batch(Batch(4), Counters()) == 1


@pytest.mark.parametrize("code", [errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF])
def test_a_write_that_says_the_device_is_gone_flags_it_and_counts_device_down(
        device, monkeypatch, code):
    device, _ = device
    failing(monkeypatch, device, "writev", code)
    counters = Counters()
    device.write(b"packet", counters)
    assert device.failed == code
    assert (counters.rx_packets, counters.drops_by_label()) == (0, {"device_down": 1})


def test_a_failed_write_of_a_super_packet_counts_every_segment_it_held(device, monkeypatch):
    device, _ = device
    failing(monkeypatch, device, "writev", errno.EIO)
    counters = Counters()
    device.write_batch(stream(4, [1000, 1000, 1000]), counters, bytearray(SCRATCH))
    assert (counters.rx_packets, counters.drops_by_label()) == (0, {"device_down": 3})


def test_a_write_to_a_device_that_is_down_counts_device_down_and_keeps_it(device, monkeypatch):
    device, _ = device
    failing(monkeypatch, device, "writev", errno.EIO)   # TUN says EIO while the link is down
    counters = Counters()
    device.write(b"packet", counters)
    assert device.failed == 0
    assert counters.drops_by_label() == {"device_down": 1}


def test_a_write_that_fails_otherwise_is_counted_send_failed_and_never_raised(device):
    device, host = device
    host.close()                      # nobody on the other side: ECONNREFUSED
    counters = Counters()
    device.write(b"packet", counters)
    assert device.failed == 0
    assert (counters.rx_packets, counters.drops_by_label()) == (0, {"send_failed": 1})


def test_a_real_closed_descriptor_is_gone_both_ways():
    router_end, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.close()
    fd = router_end.detach()
    device = TunTapDevice("tun-test", fd)
    os.close(fd)                      # the fd is invalid now: EBADF, as for a device torn away
    counters = Counters()
    device.write(b"packet", counters)
    assert device.failed == errno.EBADF and counters.drops_by_label() == {"device_down": 1}
    device.failed = 0
    assert device.read_batch(Batch(2), Counters()) == 0 and device.failed == errno.EBADF


def test_the_batch_and_the_device_agree_on_the_size_of_struct_virtio_net_hdr():
    assert len(NO_OFFLOAD) == VNET_HEADER_LENGTH == VNET_HEADER.size == 10
