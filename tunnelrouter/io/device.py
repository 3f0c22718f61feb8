"""TUN and TAP devices: created with python-pytun, then read and written as plain fds.

python-pytun cannot read into a buffer nor write a memoryview, so after
``TUNSETIFF`` the fd is used directly: ``os.readv`` into the batch's buffers,
``os.write`` from a memoryview, non-blocking so a wakeup drains until EAGAIN.
Closing the fd removes the (non-persistent) device with its addresses and routes.

Every packet comes and goes behind a virtio-net header (``IFF_VNET_HDR``), the
kernel's way of handing over packets whose offloads are not done yet. A device
whose tunnel carries super-packets asks for them (``TUNSETOFFLOAD``: TSO for
IPv4 and IPv6, checksum offload): one read is then up to 64 KB of one TCP
stream, which the tunnel core handles as one packet and the socket cuts into
segments (``encap.gso``); a packet whose checksum the sender left to be done is
finished here. On the way out, consecutive segments of one TCP stream are joined
into one super-packet (``encap.gso.coalesce``; UDP datagrams of one flow too, as a
UDP GSO packet), so the kernel forwards one
packet where dozens arrived.
"""

import errno
import fcntl
import os
import struct

import pytun

from encap.errors import DecodeError, DropReason
from encap.gso import coalesce, finish_checksum
from encap.wire import ETHERNET_HEADER_LENGTH, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.tunnel.batch import VNET_HEADER_LENGTH, Batch
from tunnelrouter.tunnel.counters import Counters

TUN_PATH = "/dev/net/tun"
# A read or write that fails with one of these will never work again: the device is gone.
GONE = frozenset({errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF})
# <linux/if_tun.h> and <linux/virtio_net.h>.
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUNSETCARRIER = 0x400454E2
TUNSETSTEERINGEBPF = 0x800454E0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
SUPER_PACKET_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
# virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (little-endian).
VNET_HEADER = struct.Struct("<BBHHHH")
NEEDS_CSUM = 0x01
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0x00, 0x01, 0x04, 0x05, 0x80
_PROTOCOL_TCP = 6
_NO_OFFLOAD = bytes(VNET_HEADER_LENGTH)


class TunTapDevice:
    """One TUN (``ethernet=False``) or TAP device, ``IFF_NO_PI`` and ``IFF_VNET_HDR`` always.

    ``failed`` becomes the errno of a read or write that says the device is gone
    (deleted under us); the router then closes it and makes it again.
    """

    def __init__(self, name: str, fd: int, owner=None, ethernet: bool = False,
                 super_packets: bool = False):
        """Wrap ``fd``, the device's open file (``owner`` keeps it open; closing it or the
        fd removes the device)."""
        self.name = name
        self.fd = fd
        self.failed = 0
        self.super_packets = super_packets
        self._owner = owner
        self._link_header = ETHERNET_HEADER_LENGTH if ethernet else 0
        self._joined_header = bytearray(VNET_HEADER_LENGTH)
        os.set_blocking(fd, False)

    @classmethod
    def open(cls, name: str, ethernet: bool, super_packets: bool = False,
             queues: int = 1) -> list["TunTapDevice"]:
        """The device's queues, each an fd of its own (``IFF_MULTI_QUEUE`` if more than one:
        the kernel spreads flows over them). ``super_packets``: hand over TCP super-packets
        (TSO) instead of segments."""
        flags = (pytun.IFF_TAP if ethernet else pytun.IFF_TUN) | pytun.IFF_NO_PI | IFF_VNET_HDR
        if queues > 1:
            flags |= pytun.IFF_MULTI_QUEUE
        made: list[TunTapDevice] = []
        try:
            for _ in range(queues):
                # Opening a multi-queue device's name again attaches another queue to it.
                device = pytun.TunTapDevice(name=name, flags=flags)
                made.append(cls(device.name, device.fileno(), device, ethernet))
            made[0].set_super_packets(super_packets)   # the device's, whichever queue asks
        except (pytun.Error, SystemProblem) as error:
            for queue in made:
                queue.close()
            if isinstance(error, SystemProblem):
                raise
            raise SystemProblem(_explain(name, error)) from None
        for queue in made:
            queue.super_packets = super_packets
        return made

    def set_super_packets(self, super_packets: bool) -> None:
        """Ask the kernel for TCP super-packets (TSO) on reads, or for segments."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, SUPER_PACKET_OFFLOADS if super_packets else 0)
        except OSError as error:
            raise SystemProblem(f"cannot set the offloads of {self.name}: "
                                f"{error.strerror}") from None
        self.super_packets = super_packets

    def steer(self, program: int) -> None:
        """Have the device choose a queue for each packet by ``program`` (an eBPF program's
        fd, ``io/steering.py``), not by where the flow's replies were written."""
        try:
            fcntl.ioctl(self.fd, TUNSETSTEERINGEBPF, struct.pack("i", program))
        except OSError as error:
            raise SystemProblem(f"cannot steer the queues of {self.name}: "
                                f"{error.strerror}", errno=error.errno) from None

    def set_carrier(self, carrier: bool) -> None:
        """Carrier on or off, as a cable plugged or pulled: routing daemons watch it."""
        try:
            fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", int(carrier)))
        except OSError as error:
            raise SystemProblem(f"cannot set the carrier of {self.name}: "
                                f"{error.strerror}") from None

    def read_batch(self, batch: Batch, counters: Counters) -> int:
        """Read packets into ``batch`` until none waits or it is full; return how many.
        A super-packet is one entry with its ``gso_sizes`` and header offsets set."""
        readv, iovecs, headers, ends, starts, fd = os.readv, batch.device_iovecs, \
            batch.vnet_headers, batch.ends, batch.starts, self.fd
        gso_sizes = batch.gso_sizes
        count = 0
        while count < batch.capacity:
            try:
                length = readv(fd, iovecs[count]) - VNET_HEADER_LENGTH
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno in GONE:
                    self.failed = error.errno
                break
            if length < 0:
                counters.drops[DropReason.TRUNCATED] += 1
                continue
            ends[count] = starts[count] + length
            at = count * VNET_HEADER_LENGTH
            gso_sizes[count] = 0
            # Most reads need nothing done: the flags and GSO type bytes say so.
            if (headers[at] or headers[at + 1]) and not self._offloaded(batch, count, length,
                                                                        counters):
                continue
            count += 1
        batch.count = count
        return count

    def _offloaded(self, batch: Batch, i: int, length: int, counters: Counters) -> bool:
        """Entry ``i`` came with work the kernel left to us: a super-packet, or a checksum to
        finish. False if it cannot be done (counted)."""
        flags, gso_type, _, gso_size, checksum_start, checksum_offset = VNET_HEADER.unpack_from(
            batch.vnet_headers, i * VNET_HEADER_LENGTH)
        if gso_type != GSO_NONE:
            if gso_type & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6) or not gso_size:
                counters.drops[DropReason.INNER_MALFORMED] += 1
                return False
            batch.gso_sizes[i] = gso_size
            batch.ip_offsets[i] = self._link_header
            batch.tcp_offsets[i] = checksum_start
        elif flags & NEEDS_CSUM:
            try:
                finish_checksum(batch.device_views[i][:length], checksum_start, checksum_offset)
            except DecodeError as error:
                counters.drops[error.reason] += 1
                return False
        return True

    def write(self, packet, counters: Counters) -> None:
        """Deliver one packet (the slow path: ICMP errors); a failure is counted, never
        raised."""
        if self._deliver((_NO_OFFLOAD, packet), counters):
            counters.rx_packets += 1
            counters.rx_bytes += len(packet)

    def write_batch(self, packets: list, counters: Counters, scratch: bytearray) -> None:
        """Deliver ``packets``, joining TCP segments and UDP datagrams into super-packets in
        ``scratch`` (large enough for all of them, each behind a virtio-net header)."""
        link = self._link_header
        runs = coalesce(packets, len(packets), link, bool(link), scratch, VNET_HEADER_LENGTH)
        view = memoryview(scratch)
        for start, end, gso_size, transport, joined in runs:
            header = start - VNET_HEADER_LENGTH
            if gso_size:
                header_end = self._super_packet_header(scratch, start, transport, gso_size,
                                                       scratch, header)
                length = end - start + (joined - 1) * header_end
            else:
                scratch[header:start] = _NO_OFFLOAD
                length = end - start
            if self._deliver((view[header:end],), counters, joined):
                counters.rx_packets += joined
                counters.rx_bytes += length

    def write_joined(self, packet: memoryview, gso_size: int, joined: int,
                     counters: Counters) -> None:
        """Deliver a super-packet that ``joined`` packets of ``gso_size`` payload bytes make
        (``encap.gso.join`` made it, as ``coalesce`` makes them in ``write_batch``)."""
        link = self._link_header
        transport = link + (20 if packet[link] >> 4 == 4 else 40)
        header_end = self._super_packet_header(packet, 0, transport, gso_size,
                                               self._joined_header, 0)
        if self._deliver((self._joined_header, packet), counters, joined):
            counters.rx_packets += joined
            counters.rx_bytes += len(packet) + (joined - 1) * header_end

    def _super_packet_header(self, data, start: int, transport: int, gso_size: int, out,
                             at: int) -> int:
        """Write the virtio-net header of the super-packet at ``data[start:]`` (its TCP or UDP
        header ``transport`` bytes in, the pseudo-header sum in its checksum) to ``out[at:]``;
        return the length of the headers each of its packets repeats."""
        ip = start + self._link_header
        version = data[ip] >> 4
        if (data[ip + 9] if version == 4 else data[ip + 6]) == _PROTOCOL_TCP:
            header_end = transport + (data[start + transport + 12] >> 4) * 4
            gso_type = GSO_TCPV4 if version == 4 else GSO_TCPV6
            checksum_offset = TCP_CHECKSUM_OFFSET
        else:
            header_end, gso_type, checksum_offset = transport + 8, GSO_UDP_L4, \
                UDP_CHECKSUM_OFFSET
        VNET_HEADER.pack_into(out, at, NEEDS_CSUM, gso_type, header_end, gso_size, transport,
                              checksum_offset)
        return header_end

    def _deliver(self, buffers, counters: Counters, packets: int = 1) -> bool:
        try:
            os.writev(self.fd, buffers)
        except OSError as error:
            if error.errno in GONE:
                self.failed = error.errno
            counters.drops[DropReason.DEVICE_DOWN if error.errno in GONE or
                           error.errno == errno.EIO else DropReason.SEND_FAILED] += packets
            return False
        return True

    def close(self) -> None:
        try:
            if self._owner is not None:
                self._owner.close()
            else:
                os.close(self.fd)
        except OSError:
            pass  # already gone with its device


def _explain(name: str, error: Exception) -> str:
    """pytun says '[Errno 13] Permission denied' and no more: say which file and what to do."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    if code == errno.EACCES or code == errno.EPERM:
        return (f"cannot open {TUN_PATH} or create {name}: permission denied; the router "
                f"needs CAP_NET_ADMIN and read-write access to {TUN_PATH}")
    if code == errno.ENOENT or code == errno.ENODEV:
        return f"{TUN_PATH} does not exist: load the tun module (modprobe tun)"
    if code == errno.EBUSY or code == errno.EINVAL:
        return (f"a device named {name} already exists and is not a free TUN/TAP device of "
                f"this kind (another tunnelrouter holds it, or remove it: ip link del {name})")
    return f"cannot create device {name}: {error}"
