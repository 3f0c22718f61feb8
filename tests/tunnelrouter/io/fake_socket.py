"""A scripted fake socket that plays the kernel for the exact calls an underlay socket
makes, and the batches the core leaves for a socket to send: what the tests of
``underlay.py``, ``raw_socket.py`` and ``udp_socket.py`` share."""

import errno
import socket
import sys

from encap.wire import HEADROOM
from tunnelrouter.io.udp_socket import UdpSocket
from tunnelrouter.io.underlay import IP_RECVERR
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.encap.test_gso import tcp_packet

PEER, OTHER_PEER = ("10.0.0.2", 0), ("10.0.0.3", 0)
ICMP_UNREACHABLE, FRAGMENTATION_NEEDED = 3, 4


class FakeSocket:
    """The calls an UnderlaySocket makes, scripted. ``fail`` lists the errnos the next
    sends raise, in order; ``incoming`` what the next receives return (an errno: they
    raise it); ``error_queue`` what ``recvmsg(..., MSG_ERRQUEUE)`` returns."""

    def __init__(self, fail=(), incoming=(), error_queue=()):
        self.fail = list(fail)
        self.incoming = list(incoming)
        self.error_queue = list(error_queue)
        self.sent: list[tuple[bytes, tuple, list | None]] = []
        self.attempts = 0

    def fileno(self) -> int:
        return 1000

    def _send(self, data: bytes, destination: tuple, ancillary) -> int:
        self.attempts += 1
        if self.fail:
            code = self.fail.pop(0)
            raise OSError(code, errno.errorcode[code])
        self.sent.append((data, destination, ancillary))
        return len(data)

    def sendto(self, data, destination) -> int:
        return self._send(bytes(data), destination, None)

    def sendmsg(self, buffers, ancillary, flags, destination) -> int:
        return self._send(b"".join(map(bytes, buffers)), destination, list(ancillary))

    def _next(self):
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "nothing waits")
        item = self.incoming.pop(0)
        if isinstance(item, int):
            raise OSError(item, errno.errorcode[item])
        return item

    def recvfrom_into(self, buffer):
        data, address = self._next()
        buffer[:len(data)] = data
        return len(data), address

    def recvmsg_into(self, buffers, ancillary_size):
        data, ancillary, address = self._next()
        buffers[0][:len(data)] = data
        return len(data), ancillary, 0, address

    def recvmsg(self, size, ancillary_size, flags):
        assert flags == socket.MSG_ERRQUEUE
        if not self.error_queue:
            raise BlockingIOError(errno.EAGAIN, "no error queued")
        item = self.error_queue.pop(0)
        if isinstance(item, int):
            raise OSError(item, errno.errorcode[item])
        return item


def extended_error(origin: int, icmp_type: int, code: int, info: int = 0) -> bytes:
    """struct sock_extended_err (linux/errqueue.h), field by field in host order:
    u32 errno, u8 origin, u8 type, u8 code, u8 pad, u32 info, u32 data."""
    native = sys.byteorder
    return (errno.EHOSTUNREACH.to_bytes(4, native) + bytes([origin, icmp_type, code, 0])
            + info.to_bytes(4, native) + bytes(4))


def queued(quote: bytes, peer: str, origin=ErrorOrigin.ICMP4, icmp_type=ICMP_UNREACHABLE,
           code=FRAGMENTATION_NEEDED, info=1400, level=socket.IPPROTO_IP, kind=IP_RECVERR):
    """One entry of the error queue as recvmsg(MSG_ERRQUEUE) returns it."""
    return quote, [(level, kind, extended_error(origin, icmp_type, code, info))], 0, (peer, 0)


def outgoing(*inner_lengths: int, header: int = 8) -> Batch:
    """A batch read from a device, left by the core as datagrams: ``header`` bytes of
    tunnel header in front of each inner packet, to PEER, unmarked."""
    batch = Batch(4).fill_from_device([bytes([i + 1]) * n for i, n in enumerate(inner_lengths)])
    for i in range(batch.count):
        batch.packets[i] = batch.views[i][HEADROOM - header:batch.ends[i]]
        batch.destinations[i] = (PEER,)
    return batch


def udp(fake: FakeSocket, local: str = "10.0.0.1", link_header: int = 0) -> UdpSocket:
    return UdpSocket(fake, local, link_header)


def super_packet(prefix: bytes, payload_length: int, gso_size: int = 1000,
                 destinations=(PEER,)) -> Batch:
    """A batch whose one entry the core left as a super-packet behind ``prefix`` (the
    tunnel headers it wrote once)."""
    inner = tcp_packet(4, payload(payload_length))
    batch = Batch(2, scratch_size=512 << 10).fill_from_device([inner])
    start = HEADROOM - len(prefix)
    batch.buffers[0][start:HEADROOM] = prefix
    batch.packets[0] = batch.views[0][start:batch.ends[0]]
    batch.destinations[0] = destinations
    batch.gso_sizes[0] = gso_size
    batch.ip_offsets[0], batch.tcp_offsets[0] = len(prefix), len(prefix) + 20
    return batch


def payload(length: int) -> bytes:
    return (bytes(range(256)) * (length // 256 + 1))[:length]
