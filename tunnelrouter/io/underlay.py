"""The underlay sockets: raw IP for the modes whose outer header we write, UDP for the rest.

One socket per (local address, protocol) or (local address, port), shared by
every tunnel that uses it; the tunnel core demultiplexes what arrives. This is
what both kinds share, and how they are opened; ``raw_socket.py`` and
``udp_socket.py`` are the two kinds.

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
from encap.gso import segment_tcp
from encap.wire import HEADROOM

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
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
SOCKET_FULL = frozenset({errno.EAGAIN, errno.ENOBUFS})


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
                                              batch.gso_sizes[i], self.OUTER_IPV4, batch.scratch,
                                              batch.remote_checksums[i])
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
        if error.errno not in SOCKET_FULL:
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



def _count_failure(code: int, counters: Counters) -> None:
    counters.drops[DropReason.UNDERLAY_FULL if code in SOCKET_FULL else
                   DropReason.TOO_BIG if code == errno.EMSGSIZE else
                   DropReason.SEND_FAILED] += 1


def new_socket(family: int, kind: int, protocol: int, local: str) -> socket.socket:
    try:
        return socket.socket(family, kind, protocol)
    except PermissionError:
        raise SystemProblem("cannot open a raw socket: the router needs CAP_NET_RAW") from None
    except OSError as error:
        raise SystemProblem(f"cannot open a socket for {local}: {error.strerror}") from None


def bind(sock: socket.socket, address: tuple, what: str) -> None:
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


def tune(sock: socket.socket, dont_fragment: bool = True) -> None:
    """Buffers, path MTU discovery left to us, the error queue."""
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
