"""The underlay sockets: raw IP for the modes whose outer header we write, UDP for the rest.

One socket per (local address, protocol) or (local address, port), shared by
every tunnel that uses it; the tunnel core demultiplexes what arrives. Raw
sockets send with ``IP_HDRINCL`` so that the outer TTL, TOS, DF and ID are the
codec's, per packet.

Path MTU is the router's business, not the kernel's: ``IP_PMTUDISC_PROBE``
makes the kernel send what fits the link even when it has cached a smaller
path MTU (it would otherwise refuse with EMSGSIZE until its own 10-minute
expiry), and ``IP_RECVERR`` queues every ICMP error about our datagrams, with
the quoted datagram, for the router to read (``MSG_ERRQUEUE``).

Nothing here raises once a socket exists: a send that fails is counted by
reason, a receive that fails means an error waits on the error queue.
"""

import errno
import socket
import struct
import sys

from encap.errors import DecodeError, DropReason
from encap.gso import join, segment_tcp
from encap.wire import HEADROOM

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.endpoint import DEFAULT_TTL
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

try:
    from tunnelrouter.io import _mmsg
except ImportError:   # built without a C compiler: one system call per datagram
    _mmsg = None

SOCKET_BUFFER = 4 << 20
# <linux/in.h> and <linux/in6.h>; the socket module does not name these.
IP_MTU_DISCOVER, IP_RECVERR = 10, 11
IPV6_MTU_DISCOVER, IPV6_RECVERR = 23, 25
PMTUDISC_DONT, PMTUDISC_PROBE = 0, 3   # the same values for IPv4 and IPv6
# sock_extended_err (linux/errqueue.h): errno, origin, type, code, pad, info, data.
EXTENDED_ERROR = struct.Struct("=IBBBBII")
_EXTENDED_ERROR_MESSAGES = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
_ORIGINS = {origin.value: origin for origin in ErrorOrigin}
ERROR_QUOTE = 2048        # an ICMP error quotes at most 576 (IPv4) or 1280 (IPv6) bytes
ERROR_ANCILLARY = 512
ERRORS_PER_WAKEUP = 64
_FULL = frozenset({errno.EAGAIN, errno.ENOBUFS})
_TOS_SPACE = socket.CMSG_SPACE(4)
# UDP GSO and GRO (<linux/udp.h>): one send of up to this many segments of one size;
# one receive of a train of datagrams, the size of each in a control message.
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
UDP_GSO_SEGMENTS = 64
UDP_GSO_BYTES = 65000
GRO_TRAIN = 65536
GRO_TRAINS_KEPT = 4
_RECEIVE_ANCILLARY = _TOS_SPACE + socket.CMSG_SPACE(4)


class UnderlaySocket:
    """What both kinds share: sending a batch, counting failures, the error queue.

    A super-packet in the batch (``batch.gso_sizes[i]``) leaves as segments, cut
    into the batch's scratch space: each gets the tunnel headers the core wrote once
    (with its own outer length, identification and checksum where the outer IPv4
    header is ours). Datagrams one after the other to one destination leave in one
    ``sendmmsg`` where ``_mmsg`` was built and the socket is the kernel's.
    """

    OUTER_IPV4 = False   # whether the datagrams we send start with an IPv4 header of ours
    # Datagrams read from the socket that did not fit the last batch: read_batch again
    # (epoll will not say so: they are no longer in the socket).
    backlog = False

    def __init__(self, sock: socket.socket, local: str):
        self.sock = sock
        self.local = local
        self.fd = sock.fileno()
        self.family = socket.AF_INET6 if ":" in local else socket.AF_INET
        self.errors_pending = False   # a receive failed: an error waits on the error queue
        self._markings: dict[int, list[tuple]] = {}
        self._mmsg = _mmsg if type(sock) is socket.socket else None
        # Consecutive unmarked datagrams of a batch to one destination, and their inner
        # lengths: what one sendmmsg sends.
        self._run: list = []
        self._run_lengths: list[int] = []

    def send_batch(self, batch: Batch, counters: Counters) -> None:
        """Send every datagram the core left in ``batch`` (read from a device) to its
        destinations, in order; count what went and what failed."""
        packets, destinations, markings, ends, gso_sizes = batch.packets, batch.destinations, \
            batch.ancillary, batch.ends, batch.gso_sizes
        run, lengths, run_to = self._run, self._run_lengths, None
        for i in range(batch.count):
            packet = packets[i]
            if packet is None:
                continue
            if not gso_sizes[i] and markings[i] is None and len(destinations[i]) == 1:
                if destinations[i][0] != run_to:
                    if run:
                        self._send_run(run_to, counters)
                    run_to = destinations[i][0]
                run.append(packet)
                lengths.append(ends[i] - HEADROOM)
                continue
            if run:
                self._send_run(run_to, counters)
            if gso_sizes[i]:
                self._send_super_packet(batch, i, counters)
            else:
                self.send(packet, destinations[i], markings[i], ends[i] - HEADROOM, counters)
        if run:
            self._send_run(run_to, counters)

    def _send_run(self, destination, counters: Counters) -> None:
        run, lengths = self._run, self._run_lengths
        if self._mmsg is None:
            for packet, length in zip(run, lengths):
                self.send(packet, (destination,), None, length, counters)
        else:
            sent, _, failures = self._mmsg.send_many(self.fd, run, destination)
            inner = sum(lengths)
            for index, code in failures:
                inner -= lengths[index]
                _count_failure(code, counters)
            counters.tx_packets += sent
            counters.tx_bytes += inner
        run.clear()
        lengths.clear()

    def _send_super_packet(self, batch: Batch, i: int, counters: Counters) -> None:
        packet = batch.packets[i]
        try:
            count, stride, last = segment_tcp(packet, batch.ip_offsets[i], batch.tcp_offsets[i],
                                              batch.gso_sizes[i], self.OUTER_IPV4, batch.scratch)
        except DecodeError as error:
            counters.drops[error.reason] += 1
            return
        tunnel_headers = len(packet) - (batch.ends[i] - batch.starts[i])
        segments = memoryview(batch.scratch)[:(count - 1) * stride + last]
        for destination in batch.destinations[i]:
            sent, sent_bytes = self._send_segments(segments, stride, destination,
                                                   batch.ancillary[i], counters)
            counters.tx_packets += sent
            counters.tx_bytes += sent_bytes - sent * tunnel_headers

    def _send_segments(self, segments: memoryview, stride: int, destination, marking,
                       counters: Counters) -> tuple[int, int]:
        """Send ``segments`` (one every ``stride`` bytes, the last maybe shorter); return
        how many went, and their bytes."""
        if self._mmsg is not None and marking is None:
            sent, sent_bytes, failures = self._mmsg.send_strided(self.fd, segments, stride,
                                                                 len(segments), destination)
            for _, code in failures:
                _count_failure(code, counters)
            return sent, sent_bytes
        sent = sent_bytes = 0
        for at in range(0, len(segments), stride):
            segment = segments[at:at + stride]
            try:
                self._transmit(segment, destination, marking)
            except OSError as error:
                if not self._send_again(error, segment, destination, marking, counters):
                    continue
            sent += 1
            sent_bytes += len(segment)
        return sent, sent_bytes

    def send(self, datagram: bytes, destinations: tuple, marking: int | None, inner_length: int,
             counters: Counters) -> None:
        """One datagram of the slow path (a fragment, an outer-fragmented packet)."""
        for destination in destinations:
            try:
                self._transmit(datagram, destination, marking)
            except OSError as error:
                if not self._send_again(error, datagram, destination, marking, counters):
                    continue
            counters.tx_packets += 1
            counters.tx_bytes += inner_length

    def _send_again(self, error: OSError, datagram, destination, marking, counters) -> bool:
        """A send failed: try once more, unless the socket is full.

        An ICMP error about an earlier datagram leaves the socket with a pending error
        that the next send returns instead of sending (the error itself waits on the
        error queue); that datagram deserves a second try."""
        if error.errno not in _FULL:
            try:
                self._transmit(datagram, destination, marking)
                return True
            except OSError as again:
                error = again
        _count_failure(error.errno, counters)
        return False

    def _transmit(self, datagram, destination, marking: int | None) -> None:
        if marking is None:
            self.sock.sendto(datagram, destination)
        else:
            self.sock.sendmsg((datagram,), self._ancillary(marking), 0, destination)

    def _ancillary(self, marking: int) -> list[tuple]:
        """The control messages for a datagram's outer TTL and TOS (``ttl << 8 | tos``)."""
        ancillary = self._markings.get(marking)
        if ancillary is None:
            if self.family == socket.AF_INET6:
                level, ttl_type, tos_type = socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, \
                    socket.IPV6_TCLASS
            else:
                level, ttl_type, tos_type = socket.IPPROTO_IP, socket.IP_TTL, socket.IP_TOS
            ancillary = self._markings[marking] = [
                (level, ttl_type, (marking >> 8).to_bytes(4, sys.byteorder)),
                (level, tos_type, (marking & 0xFF).to_bytes(4, sys.byteorder))]
        return ancillary

    def read_errors(self) -> list[WanError]:
        """What waits on the error queue: ICMP errors from the WAN about our datagrams,
        and local EMSGSIZE, each with the datagram as far as it was quoted."""
        self.errors_pending = False
        errors = []
        for _ in range(ERRORS_PER_WAKEUP):
            try:
                data, ancillary, _, address = self.sock.recvmsg(ERROR_QUOTE, ERROR_ANCILLARY,
                                                                socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not address:
                continue
            for level, kind, payload in ancillary:
                if (level, kind) in _EXTENDED_ERROR_MESSAGES and \
                        len(payload) >= EXTENDED_ERROR.size:
                    _, origin, icmp_type, code, _, info, _ = EXTENDED_ERROR.unpack_from(payload)
                    if origin in _ORIGINS:
                        quote, length = self._quoted(memoryview(data))
                        errors.append(WanError(_ORIGINS[origin], icmp_type, code, info,
                                               address[0], quote, length))
        return errors

    def _quoted(self, data: memoryview) -> tuple[memoryview, int]:
        """The quoted datagram from its tunnel header on, and its length on the wire
        (0 where the quote does not say)."""
        return data, 0

    def close(self) -> None:
        self.sock.close()


class RawSocket(UnderlaySocket):
    """An IPv4 raw socket for one IP protocol, bound to the local address. Both ways the
    datagram includes the outer IPv4 header: the codec writes and checks it."""

    OUTER_IPV4 = True

    @classmethod
    def open(cls, local: str, protocol: int) -> "RawSocket":
        sock = _socket(socket.AF_INET, socket.SOCK_RAW, protocol, local)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            _bind(sock, (local, 0), f"{local}")
            _tune(sock)
        except BaseException:
            sock.close()
            raise
        return cls(sock, local)

    def read_batch(self, batch: Batch) -> int:
        """Read datagrams into ``batch`` until none waits or it is full; return how many."""
        count = self._receive_many(batch) if self._mmsg is not None else self._receive(batch)
        buffers, starts, tos, gso_sizes = batch.buffers, batch.starts, batch.tos, batch.gso_sizes
        for i in range(count):
            buffer = buffers[i]
            starts[i] = (buffer[0] & 0x0F) * 4
            tos[i] = buffer[1]
            gso_sizes[i] = 0   # the batch is shared with UDP sockets, which join datagrams
        batch.count = count
        return count

    def _receive_many(self, batch: Batch) -> int:
        """One recvmmsg; a failure means an error waits on the error queue (IP_RECVERR),
        and the call that says so consumes it: try again."""
        for _ in range(batch.capacity):
            try:
                return self._mmsg.recv_into(self.fd, batch.views, batch.capacity, batch.ends,
                                            batch.addresses)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError:
                self.errors_pending = True
        return 0

    def _receive(self, batch: Batch) -> int:
        receive, buffers, ends, addresses = self.sock.recvfrom_into, batch.buffers, \
            batch.ends, batch.addresses
        count = failures = 0
        while count < batch.capacity and failures < batch.capacity:
            try:
                n, address = receive(buffers[count])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors_pending = True   # IP_RECVERR: an error was queued for us
                failures += 1
                continue
            ends[count] = n
            addresses[count] = address[0]
            count += 1
        return count

    def _quoted(self, data: memoryview) -> tuple[memoryview, int]:
        if len(data) < 20:
            return data[:0], 0
        return data[(data[0] & 0x0F) * 4:], data[2] << 8 | data[3]


class UdpSocket(UnderlaySocket):
    """A UDP socket on local address and port that reports each datagram's TOS / traffic
    class. DF is the socket's: ``dont_fragment`` for every datagram, or for none."""

    @classmethod
    def open(cls, local: str, port: int, dont_fragment: bool = True, link_header: int = 0,
             ethernet: bool = False) -> "UdpSocket":
        """``link_header``: what precedes the inner IP packet in every datagram (the tunnel
        header, and an Ethernet header if ``ethernet``); 0 if that varies (nothing is
        joined)."""
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        sock = _socket(family, socket.SOCK_DGRAM, 0, local)
        try:
            # The defaults a datagram without ancillary data gets: TTL 64 whatever the
            # host's ip_default_ttl, TOS 0; other values travel with each datagram.
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, DEFAULT_TTL)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, DEFAULT_TTL)
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            # No SO_REUSEADDR: a second router on the same port must fail to start, not
            # share (and break) this one's datagrams.
            _bind(sock, (local, port), f"{local} port {port}")
            _tune(sock, dont_fragment)
        except BaseException:
            sock.close()
            raise
        return cls(sock, local, link_header, ethernet)

    def _send_segments(self, segments: memoryview, stride: int, destination, marking,
                       counters: Counters) -> tuple[int, int]:
        """UDP GSO: the kernel cuts each send into datagrams of ``stride`` bytes, so a
        super-packet takes two or three system calls instead of forty."""
        chunk = stride * max(1, min(UDP_GSO_SEGMENTS, UDP_GSO_BYTES // stride))
        ancillary = [(SOL_UDP, UDP_SEGMENT, stride.to_bytes(2, sys.byteorder))]
        if marking is not None:
            ancillary += self._ancillary(marking)
        sent = sent_bytes = 0
        for at in range(0, len(segments), chunk):
            part = segments[at:at + chunk]
            try:
                self.sock.sendmsg((part,), ancillary, 0, destination)
            except OSError as error:
                if error.errno in _FULL:
                    counters.drops[DropReason.UNDERLAY_FULL] += -(-len(part) // stride)
                    continue
                # Not for GSO (an old kernel, an error pending): one datagram at a time.
                again, again_bytes = super()._send_segments(part, stride, destination,
                                                            marking, counters)
                sent, sent_bytes = sent + again, sent_bytes + again_bytes
                continue
            sent += -(-len(part) // stride)
            sent_bytes += len(part)
        return sent, sent_bytes

    def __init__(self, sock: socket.socket, local: str, link_header: int = 0,
                 ethernet: bool = False):
        super().__init__(sock, local)
        # UDP GRO: one receive is a train of datagrams of one size from one sender. The
        # datagrams of one TCP stream (or UDP flow) in it become one datagram of the batch,
        # their inner packets joined behind the first's headers (encap.gso.join), as GRO
        # would have joined them had the kernel known the tunnel; the rest go one by one.
        # What does not fit in the batch waits here for the next.
        self._link_header, self._ethernet = link_header, ethernet
        # Trains of one stream received back to back are joined across: room for a few.
        self._train = bytearray(GRO_TRAINS_KEPT * GRO_TRAIN)
        self._train_view = memoryview(self._train)
        self._train_at = self._train_end = self._train_step = self._train_left = 0
        self._train_tos, self._train_source = 0, ""
        # IP_TOS arrives as one byte, IPV6_TCLASS as a native int: its low byte either way.
        self._tos_byte = 0 if sys.byteorder == "little" else -1

    @property
    def backlog(self) -> bool:
        return self._train_left > 0

    def read_batch(self, batch: Batch) -> int:
        count = self._unload_train(batch, 0)
        receive, space, capacity = self.sock.recvmsg_into, _RECEIVE_ANCILLARY, batch.capacity
        failures = 0
        while count < capacity and failures < capacity:
            waiting = self._train_left
            if waiting and not self._extendable(capacity - count):
                count = self._unload_train(batch, count)
                continue
            behind = self._train_end if waiting else 0
            try:
                n, ancillary, _, address = receive((self._train_view[behind:],), space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors_pending = True
                failures += 1
                continue
            tos, step = 0, n
            for level, kind, data in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    step = int.from_bytes(data[:4], sys.byteorder) or n
                elif data:
                    tos = data[self._tos_byte]
            left = -(-n // step) if n else 1   # an empty datagram is one too
            if waiting:
                # The same sender goes on with datagrams of the same size (or one shorter,
                # which ends a train): one train of both.
                if (step == self._train_step or left == 1 and 0 < n < self._train_step) and \
                        tos == self._train_tos and address[0] == self._train_source:
                    self._train_end, self._train_left = behind + n, waiting + left
                    continue
                count = self._unload_train(batch, count)   # all of it: _extendable saw room
            self._train_at, self._train_end, self._train_step = behind, behind + n, step
            self._train_left, self._train_tos, self._train_source = left, tos, address[0]
        count = self._unload_train(batch, count)
        batch.count = count
        return count

    def _extendable(self, room: int) -> bool:
        """Whether the next train may be received behind the waiting one and joined to it:
        the waiting one's datagrams are all whole, a train fits behind it, and the batch
        has ``room`` for every datagram of it should the next not go on."""
        step = self._train_step
        return bool(self._link_header and step and self._train_left < room and
                    (self._train_end - self._train_at) % step == 0 and
                    self._train_end + GRO_TRAIN <= len(self._train))

    def _unload_train(self, batch: Batch, count: int) -> int:
        """Hand what waits of the last train to the batch, from entry ``count`` on: a
        joined datagram has its ``gso_sizes`` (its parts' payload size) and ``joined``."""
        at, end, step, train = self._train_at, self._train_end, self._train_step, self._train
        left, link_header, ethernet = self._train_left, self._link_header, self._ethernet
        buffers, starts, ends, addresses, tos = batch.buffers, batch.starts, batch.ends, \
            batch.addresses, batch.tos
        gso_sizes, joined_counts = batch.gso_sizes, batch.joined
        train_tos, source = self._train_tos, self._train_source
        while left and count < batch.capacity:
            if link_header and left > 1:
                length, gso_size, _, joined = join(train, at, end, step, link_header, ethernet,
                                                   buffers[count])
            else:
                length, gso_size, joined = min(step, end - at), 0, 1
                buffers[count][:length] = train[at:at + length]
            starts[count] = 0
            ends[count] = length
            gso_sizes[count] = gso_size
            joined_counts[count] = joined
            tos[count] = train_tos
            addresses[count] = source
            count += 1
            at += joined * step
            left -= joined
        self._train_at, self._train_left = min(at, end), left
        return count


def _count_failure(code: int, counters: Counters) -> None:
    counters.drops[DropReason.UNDERLAY_FULL if code in _FULL else
                   DropReason.TOO_BIG if code == errno.EMSGSIZE else
                   DropReason.SEND_FAILED] += 1


def _socket(family: int, kind: int, protocol: int, local: str) -> socket.socket:
    try:
        return socket.socket(family, kind, protocol)
    except PermissionError:
        raise SystemProblem("cannot open a raw socket: the router needs CAP_NET_RAW") from None
    except OSError as error:
        raise SystemProblem(f"cannot open a socket for {local}: {error.strerror}") from None


def _bind(sock: socket.socket, address: tuple, what: str) -> None:
    try:
        sock.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRNOTAVAIL:
            message = f"{address[0]} is not an address of this host (add it to an interface)"
        elif error.errno == errno.EADDRINUSE:
            message = (f"{what} is in use (another tunnelrouter, or a kernel tunnel, has it)")
        else:
            message = f"cannot bind to {what}: {error.strerror}"
        raise SystemProblem(message) from None


def _tune(sock: socket.socket, dont_fragment: bool = True) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    discovery = PMTUDISC_PROBE if dont_fragment else PMTUDISC_DONT
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, discovery)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, discovery)
    sock.setblocking(False)
