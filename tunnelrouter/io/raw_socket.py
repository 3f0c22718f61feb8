"""The raw IP socket of the modes whose outer header we write (gre, gretap, ipip, sit).

It sends with ``IP_HDRINCL`` so that the outer TTL, TOS, DF and ID are the codec's,
per packet; what it reads starts with the outer IPv4 header too.
"""

import socket

from tunnelrouter.io.underlay import UnderlaySocket, bind, new_socket, tune
from tunnelrouter.tunnel.batch import Batch



class RawSocket(UnderlaySocket):
    """An IPv4 raw socket for one IP protocol, bound to the local address. Both ways the
    datagram includes the outer IPv4 header: the codec writes and checks it."""

    OUTER_IPV4 = True

    @classmethod
    def open(cls, local: str, protocol: int, send_only: bool = False) -> "RawSocket":
        """``send_only``: a worker's socket. Every raw socket of a protocol gets a copy of
        every datagram and ICMP error of it, so one socket reads them; the workers send on
        IPPROTO_RAW sockets, which take nothing in but the errors of their own sends (a
        datagram too big for the link, which teaches the path MTU)."""
        sock = new_socket(socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_RAW if send_only else protocol, local)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            bind(sock, (local, 0), f"{local}")
            tune(sock)
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
