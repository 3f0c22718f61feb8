"""TUN/TAP devices as plain file descriptors: a batch read drains what waits (at most a
batch), a write counts what was delivered, and a device that fails is counted and
flagged, never raised. A datagram socketpair stands for the device: one read, one packet.
"""

import errno
import os
import socket

import pytest

from encap.wire import HEADROOM
from tunnelrouter.io.device import TunTapDevice
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters


@pytest.fixture
def device():
    """``(device, host)``: the router's end wrapped as a device, and the kernel's end."""
    router_end, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.setblocking(False)
    device = TunTapDevice("tun-test", router_end.fileno(), router_end)
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
    assert device.read_batch(batch) == 4 and batch.count == 4
    assert batch.ends[:4] == [HEADROOM + len(packet) for packet in packets[:4]]
    assert [bytes(batch.buffers[i][HEADROOM:batch.ends[i]]) for i in range(4)] == packets[:4]
    assert device.read_batch(batch) == 2 and batch.count == 2
    assert bytes(batch.buffers[1][HEADROOM:batch.ends[1]]) == packets[5]
    assert device.read_batch(batch) == 0 and batch.count == 0
    assert device.failed == 0


def test_an_empty_packet_is_read_as_an_empty_packet(device):
    device, host = device
    host.send(b"")
    batch = Batch(2)
    assert device.read_batch(batch) == 1 and batch.ends[0] == HEADROOM


def test_a_write_delivers_the_packet_and_counts_it_received(device):
    device, host = device
    counters = Counters()
    buffer = bytearray(b"..packet..")
    device.write(memoryview(buffer)[2:8], counters)
    device.write(b"second", counters)
    assert [host.recv(100), host.recv(100)] == [b"packet", b"second"]
    assert (counters.rx_packets, counters.rx_bytes) == (2, 12)


@pytest.mark.parametrize("code", [errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF])
def test_a_read_that_says_the_device_is_gone_flags_it_and_keeps_what_was_read(
        device, monkeypatch, code):
    device, host = device
    host.send(b"before")
    batch = Batch(4)
    assert device.read_batch(batch) == 1
    failing(monkeypatch, device, "readv", code)
    assert device.read_batch(batch) == 0 and device.failed == code


def test_a_read_that_fails_otherwise_ends_the_batch_but_keeps_the_device(device, monkeypatch):
    device, host = device
    failing(monkeypatch, device, "readv", errno.EIO)
    host.send(b"waiting")
    assert device.read_batch(Batch(4)) == 0 and device.failed == 0
    monkeypatch.undo()
    assert device.read_batch(Batch(4)) == 1


@pytest.mark.parametrize("code", [errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF])
def test_a_write_that_says_the_device_is_gone_flags_it_and_counts_device_down(
        device, monkeypatch, code):
    device, _ = device
    failing(monkeypatch, device, "write", code)
    counters = Counters()
    device.write(b"packet", counters)
    assert device.failed == code
    assert (counters.rx_packets, counters.drops_by_label()) == (0, {"device_down": 1})


def test_a_write_to_a_device_that_is_down_counts_device_down_and_keeps_it(device, monkeypatch):
    device, _ = device
    failing(monkeypatch, device, "write", errno.EIO)   # TUN says EIO while the link is down
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
    assert device.read_batch(Batch(2)) == 0 and device.failed == errno.EBADF

