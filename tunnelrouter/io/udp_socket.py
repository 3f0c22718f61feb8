"""The UDP socket of the modes whose outer IP and UDP headers the kernel writes (vxlan).

It sends a super-packet with UDP GSO, and reads with UDP GRO: a train of datagrams
of one size from one sender in one receive, the datagrams of one inner stream in
it joined into one.
"""

import socket
import sys

from encap.errors import DropReason
from encap.gso import join

from tunnelrouter.io.steering import attach_program, inner_flow_program
from tunnelrouter.io.underlay import SOCKET_FULL, UnderlaySocket, bind, new_socket, tune
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.endpoint import DEFAULT_TTL

_TOS_SPACE = socket.CMSG_SPACE(4)
# UDP GSO and GRO (<linux/udp.h>): one send of up to this many segments of one size;
# one receive of a train of datagrams, the size of each in a control message.
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
UDP_GSO_SEGMENTS = 64
UDP_GSO_BYTES = 65000
GRO_TRAIN = 65536
GRO_TRAINS_KEPT = 4
_RECEIVE_ANCILLARY = _TOS_SPACE + socket.CMSG_SPACE(4)
SO_ATTACH_REUSEPORT_CBPF = 51


class UdpSocket(UnderlaySocket):
    """A UDP socket on local address and port that reports each datagram's TOS / traffic
    class. DF is the socket's: ``dont_fragment`` for every datagram, or for none."""

    @classmethod
    def open(cls, local: str, port: int, dont_fragment: bool = True, link_header: int = 0,
             ethernet: bool = False, shared: bool = False) -> "UdpSocket":
        """``link_header``: what precedes the inner IP packet in every datagram (the tunnel
        header, and an Ethernet header if ``ethernet``); 0 if that varies (nothing is
        joined). ``shared``: one of several sockets on the port, one per worker, among
        which the kernel spreads datagrams by their addresses and ports (SO_REUSEPORT)."""
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        sock = new_socket(family, socket.SOCK_DGRAM, 0, local)
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
            # share (and break) this one's datagrams. SO_REUSEPORT would let it, were it not
            # for the router's claim on the port (tunnels.claim_names), taken before.
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            bind(sock, (local, port), f"{local} port {port}")
            tune(sock, dont_fragment)
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
                if error.errno in SOCKET_FULL:
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
        # While a tunnel here takes inner checksums its peer left to be finished (VXLAN
        # remote checksum offload), what tells such datagrams by their header (the mode's
        # remote_checksum): a train of them is joined too. None: never. Set by whoever
        # knows the tunnels on the socket.
        self.remote_checksum = None
        # Trains of one stream received back to back are joined across: room for a few.
        self._train = bytearray(GRO_TRAINS_KEPT * GRO_TRAIN)
        self._train_view = memoryview(self._train)
        self._train_at = self._train_end = self._train_step = self._train_left = 0
        self._train_tos, self._train_source = 0, ""
        # IP_TOS arrives as one byte, IPV6_TCLASS as a native int: its low byte either way.
        self._tos_byte = 0 if sys.byteorder == "little" else -1

    def spread(self, sockets: int) -> None:
        """Have the socket's SO_REUSEPORT group (``sockets`` strong, this one first) give each
        datagram to a socket by the inner flow it carries (OSError if the kernel will not)."""
        if self._link_header and self._ethernet:
            attach_program(self.sock, SO_ATTACH_REUSEPORT_CBPF,
                           inner_flow_program(self._link_header, sockets, ethernet=True))

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
        left_to_us = self.remote_checksum
        buffers, starts, ends, addresses, tos = batch.buffers, batch.starts, batch.ends, \
            batch.addresses, batch.tos
        gso_sizes, joined_counts = batch.gso_sizes, batch.joined
        train_tos, source = self._train_tos, self._train_source
        while left and count < batch.capacity:
            if link_header and left > 1:
                # A datagram of the train is joined only to those with its very link header:
                # what the first's says of its checksum, all of theirs say.
                partial = left_to_us is not None and left_to_us(train, at) is not None
                length, gso_size, _, joined = join(train, at, end, step, link_header, ethernet,
                                                   buffers[count], partial)
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
