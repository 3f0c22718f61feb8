"""The underlay sockets: what a batch becomes on the socket, how send failures are counted,
the error queue parsed into WanError, and what a read leaves in a batch.

A scripted fake socket plays the kernel for the exact calls; real UDP sockets on
loopback (no root needed) check the same against the kernel itself: TOS marking by
ancillary data, the error queue of a datagram refused by a closed port, and the
messages a bind that cannot work gives.
"""

import errno
import select
import socket
import sys

import pytest
from scapy.layers.inet import IP, TCP

from encap.gso import segment_tcp
from encap.wire import HEADROOM
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.underlay import (ERRORS_PER_WAKEUP, IP_MTU_DISCOVER, IP_RECVERR,
                                      IPV6_RECVERR, PMTUDISC_DONT, PMTUDISC_PROBE, SOL_UDP,
                                      UDP_GRO, UDP_GSO_SEGMENTS, UDP_SEGMENT, RawSocket,
                                      UdpSocket)
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

from tests.encap.test_gso import checksums_valid, cut, tcp_packet

PEER, OTHER_PEER = ("10.0.0.2", 0), ("10.0.0.3", 0)
ICMP_UNREACHABLE, FRAGMENTATION_NEEDED = 3, 4
SO_EE_ORIGIN_NONE, SO_EE_ORIGIN_TXSTATUS = 0, 4


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


# -- sending -------------------------------------------------------------------------------

def test_send_batch_counts_each_datagram_sent_and_its_inner_bytes():
    fake = FakeSocket()
    batch = outgoing(100, 200, 300)
    batch.packets[1] = None                          # the core dropped it
    batch.destinations[2] = (PEER, OTHER_PEER)       # flooded
    batch.ancillary[2] = 7 << 8 | 0xB9               # TTL 7, TOS 0xB9
    counters = Counters()
    udp(fake).send_batch(batch, counters)
    native = sys.byteorder
    marking = [(socket.IPPROTO_IP, socket.IP_TTL, (7).to_bytes(4, native)),
               (socket.IPPROTO_IP, socket.IP_TOS, (0xB9).to_bytes(4, native))]
    assert fake.sent == [(bytes(8) + b"\1" * 100, PEER, None),
                         (bytes(8) + b"\3" * 300, PEER, marking),
                         (bytes(8) + b"\3" * 300, OTHER_PEER, marking)]
    assert (counters.tx_packets, counters.tx_bytes) == (3, 100 + 2 * 300)
    assert counters.drops_by_label() == {}


def test_an_ipv6_socket_marks_hop_limit_and_traffic_class():
    fake = FakeSocket()
    batch = outgoing(50)
    batch.destinations[0] = (("fd00::2", 4789, 0, 0),)
    batch.ancillary[0] = 255 << 8 | 0x02
    udp(fake, "fd00::1").send_batch(batch, Counters())
    native = sys.byteorder
    assert fake.sent[0][2] == [
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, (255).to_bytes(4, native)),
        (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, (0x02).to_bytes(4, native))]


@pytest.mark.parametrize("fail, attempts, drops", [
    # A pending ICMP error makes one send fail without sending: the second try goes out.
    ([errno.EHOSTUNREACH], 2, {}),
    ([errno.ECONNREFUSED], 2, {}),
    # A full socket is not tried again: the next datagram would find it full too.
    ([errno.EAGAIN], 1, {"underlay_full": 1}),
    ([errno.ENOBUFS], 1, {"underlay_full": 1}),
    ([errno.EMSGSIZE, errno.EMSGSIZE], 2, {"too_big": 1}),
    ([errno.EPERM, errno.EPERM], 2, {"send_failed": 1}),
    ([errno.EHOSTUNREACH, errno.EAGAIN], 2, {"underlay_full": 1}),
], ids=lambda value: str(value))
def test_a_failed_send_is_tried_again_once_or_counted_by_reason(fail, attempts, drops):
    for send in ("batch", "slow path"):
        fake, counters = FakeSocket(fail), Counters()
        sock = udp(fake)
        if send == "batch":
            sock.send_batch(outgoing(100), counters)
        else:
            sock.send(b"d" * 108, (PEER,), 1 << 8, 100, counters)
        assert (fake.attempts, counters.drops_by_label()) == (attempts, drops), send
        assert (counters.tx_packets, counters.tx_bytes) == ((0, 0) if drops else (1, 100)), send


def test_a_failed_send_does_not_keep_the_rest_of_the_batch_from_going():
    fake, counters = FakeSocket([errno.EAGAIN]), Counters()
    udp(fake).send_batch(outgoing(10, 20, 30), counters)
    assert [len(data) for data, _, _ in fake.sent] == [28, 38]
    assert (counters.tx_packets, counters.drops_by_label()) == (2, {"underlay_full": 1})


# -- the error queue -----------------------------------------------------------------------

def test_an_icmp_error_on_a_udp_socket_becomes_a_wan_error_about_the_quoted_payload():
    quote = b"\x08\0\0\0\0\0\x07\0" + bytes(40)   # our VXLAN header on: what UDP quotes
    fake = FakeSocket(error_queue=[queued(quote, "10.0.0.2")])
    sock = udp(fake)
    sock.errors_pending = True
    (error,) = sock.read_errors()
    assert error._replace(quote=bytes(error.quote)) == WanError(
        ErrorOrigin.ICMP4, ICMP_UNREACHABLE, FRAGMENTATION_NEEDED, 1400, "10.0.0.2", quote, 0)
    assert not sock.errors_pending


def test_an_ipv6_error_is_read_from_ipv6_recverr():
    fake = FakeSocket(error_queue=[
        queued(b"q" * 30, "fd00::2", ErrorOrigin.ICMP6, 2, 0, 1280, socket.IPPROTO_IPV6,
               IPV6_RECVERR)])
    (error,) = udp(fake, "fd00::1").read_errors()
    assert (error.origin, error.icmp_type, error.info, error.peer, bytes(error.quote)) == \
        (ErrorOrigin.ICMP6, 2, 1280, "fd00::2", b"q" * 30)


def test_a_raw_sockets_quote_starts_after_the_quoted_ip_header_and_its_length_is_known():
    datagram = bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=47, options=b"\x01\x01\x01\x00")
                     / (b"\x20\x00\x08\x00" + bytes(1400)))
    fake = FakeSocket(error_queue=[queued(datagram[:100], "10.0.0.2"),
                                   queued(datagram[:19], "10.0.0.2"),
                                   queued(b"", "10.0.0.2", ErrorOrigin.LOCAL, 0, 0, 1400)])
    long, short, local = RawSocket(fake, "10.0.0.1").read_errors()
    assert (bytes(long.quote), long.length) == (datagram[24:100], 24 + 4 + 1400)
    assert (bytes(short.quote), short.length) == (b"", 0)   # cut inside the IP header
    assert (local.origin, bytes(local.quote), local.length, local.info) == \
        (ErrorOrigin.LOCAL, b"", 0, 1400)


def test_what_is_not_an_icmp_or_local_error_is_passed_over():
    other_kind = (b"q", [(socket.IPPROTO_IP, socket.IP_TOS, b"\0")], 0, ("10.0.0.2", 0))
    cut_short = (b"q", [(socket.IPPROTO_IP, IP_RECVERR, extended_error(2, 3, 4)[:15])], 0,
                 ("10.0.0.2", 0))
    no_address = (b"q", [(socket.IPPROTO_IP, IP_RECVERR, extended_error(2, 3, 4))], 0, None)
    fake = FakeSocket(error_queue=[
        queued(b"q", "10.0.0.2", origin=SO_EE_ORIGIN_NONE),
        queued(b"q", "10.0.0.2", origin=SO_EE_ORIGIN_TXSTATUS),
        queued(b"q", "10.0.0.2", origin=255),
        other_kind, cut_short, no_address,
        queued(b"mine", "10.0.0.3")])
    assert [(error.peer, bytes(error.quote)) for error in udp(fake).read_errors()] == \
        [("10.0.0.3", b"mine")]


def test_at_most_errors_per_wakeup_are_read_in_one_call():
    fake = FakeSocket(error_queue=[queued(b"q", "10.0.0.2")] * (ERRORS_PER_WAKEUP + 36))
    sock = udp(fake)
    assert [len(sock.read_errors()) for _ in range(3)] == [ERRORS_PER_WAKEUP, 36, 0]


def test_a_failing_error_queue_read_ends_the_call_with_what_was_read():
    fake = FakeSocket(error_queue=[queued(b"q", "10.0.0.2"), errno.EBADF,
                                   queued(b"q", "10.0.0.2")])
    sock = udp(fake)
    assert len(sock.read_errors()) == 1
    assert len(sock.read_errors()) == 1


# -- receiving -----------------------------------------------------------------------------

def outer(ihl_options: bytes = b"", tos: int = 0, payload: bytes = b"GRE.") -> bytes:
    return bytes(IP(src="10.0.0.2", dst="10.0.0.1", proto=47, tos=tos, options=ihl_options)
                 / payload)


def test_a_raw_read_fills_the_batch_with_header_offsets_tos_and_sources():
    plain, with_options = outer(tos=0xB9), outer(b"\x01\x01\x01\x00", tos=0x02)
    fake = FakeSocket(incoming=[(plain, ("10.0.0.2", 0)), (with_options, ("10.0.0.3", 0))])
    batch = Batch(4)
    sock = RawSocket(fake, "10.0.0.1")
    assert sock.read_batch(batch) == 2 and batch.count == 2
    assert batch.starts[:2] == [20, 24] and batch.tos[:2] == [0xB9, 0x02]
    assert batch.ends[:2] == [len(plain), len(with_options)]
    assert batch.addresses[:2] == ["10.0.0.2", "10.0.0.3"]
    assert bytes(batch.buffers[1][:batch.ends[1]]) == with_options
    assert not sock.errors_pending


def test_a_receive_that_fails_flags_a_pending_error_and_reading_goes_on():
    fake = FakeSocket(incoming=[(outer(), ("10.0.0.2", 0)), errno.EHOSTUNREACH,
                                (outer(payload=b"next"), ("10.0.0.2", 0))])
    sock = RawSocket(fake, "10.0.0.1")
    batch = Batch(4)
    assert sock.read_batch(batch) == 2 and sock.errors_pending
    assert bytes(batch.buffers[1][20:batch.ends[1]]) == b"next"


def test_a_read_stops_when_the_batch_is_full_and_when_every_receive_fails():
    fake = FakeSocket(incoming=[(outer(), ("10.0.0.2", 0))] * 6)
    sock, batch = RawSocket(fake, "10.0.0.1"), Batch(4)
    assert [sock.read_batch(batch) for _ in range(3)] == [4, 2, 0]
    failing = FakeSocket(incoming=[errno.ECONNREFUSED] * 100)
    sock = RawSocket(failing, "10.0.0.1")
    assert sock.read_batch(batch) == 0 and sock.errors_pending
    assert len(failing.incoming) == 100 - batch.capacity


def test_a_udp_read_takes_the_tos_from_ancillary_data():
    native = sys.byteorder
    fake = FakeSocket(incoming=[
        (b"one", [(socket.IPPROTO_IP, socket.IP_TOS, b"\xb9")], ("10.0.0.2", 4789)),
        (b"two", [], ("10.0.0.3", 4789)),
        (b"three", [(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, (0xBA).to_bytes(4, native))],
         ("fd00::2", 4789, 0, 0)),
        errno.ECONNREFUSED,
        (b"four", [(socket.IPPROTO_IP, socket.IP_TOS, b"\x01")], ("10.0.0.2", 4789))])
    sock, batch = udp(fake), Batch(8)
    assert sock.read_batch(batch) == 4 and sock.errors_pending
    assert batch.tos[:4] == [0xB9, 0, 0xBA, 0x01]
    assert batch.starts[:4] == [0] * 4 and batch.ends[:4] == [3, 3, 5, 4]
    assert batch.addresses[:4] == ["10.0.0.2", "10.0.0.3", "fd00::2", "10.0.0.2"]
    assert bytes(batch.buffers[2][:5]) == b"three"


# -- super-packets -------------------------------------------------------------------------

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


def test_a_raw_socket_sends_a_super_packet_as_segments_each_with_its_own_outer_header():
    fake = FakeSocket()
    outer = bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=4, id=50, flags="DF",
                     len=20 + 1052))
    counters = Counters()
    RawSocket(fake, "10.0.0.1").send_batch(super_packet(outer, 2500), counters)
    sent = [IP(data) for data, destination, _ in fake.sent]
    assert [(packet.id, packet.len, len(packet[TCP].payload)) for packet in sent] == [
        (50, 1072, 1000), (51, 1072, 1000), (52, 572, 500)]
    assert all(checksums_valid(bytes(packet.payload)) for packet in sent)
    assert (counters.tx_packets, counters.tx_bytes) == (3, 2500 + 3 * 52)


def test_a_udp_socket_sends_a_super_packet_in_one_gso_call_per_64_segments():
    fake = FakeSocket()
    counters = Counters()
    udp(fake).send_batch(super_packet(bytes(8), 100 * 500, gso_size=500,
                                      destinations=(PEER, OTHER_PEER)), counters)
    stride = 8 + 52 + 500
    gso = [(SOL_UDP, UDP_SEGMENT, stride.to_bytes(2, sys.byteorder))]
    assert [(len(data), destination, ancillary) for data, destination, ancillary in fake.sent] \
        == [(UDP_GSO_SEGMENTS * stride, PEER, gso), (36 * stride, PEER, gso),
            (UDP_GSO_SEGMENTS * stride, OTHER_PEER, gso), (36 * stride, OTHER_PEER, gso)]
    assert (counters.tx_packets, counters.tx_bytes) == (200, 2 * (100 * 500 + 100 * 52))


def test_a_udp_gso_send_the_kernel_refuses_goes_one_datagram_at_a_time():
    fake = FakeSocket(fail=[errno.EIO])
    counters = Counters()
    udp(fake).send_batch(super_packet(bytes(8), 2500), counters)
    assert [len(data) for data, _, _ in fake.sent] == [1060, 1060, 560]
    assert [ancillary for _, _, ancillary in fake.sent] == [None] * 3
    assert (counters.tx_packets, counters.drops_by_label()) == (3, {})


def test_a_full_socket_buffer_counts_every_segment_of_the_gso_send_it_refused():
    fake = FakeSocket(fail=[errno.ENOBUFS])
    counters = Counters()
    udp(fake).send_batch(super_packet(bytes(8), 2500), counters)
    assert (counters.tx_packets, counters.drops_by_label()) == (0, {"underlay_full": 3})


def test_a_super_packet_that_does_not_cut_is_counted_not_sent():
    fake = FakeSocket()
    batch = super_packet(bytes(8), 2500)
    batch.tcp_offsets[0] = 9
    counters = Counters()
    udp(fake).send_batch(batch, counters)
    assert fake.sent == [] and counters.drops_by_label() == {"inner_malformed": 1}


def gro(step: int) -> list:
    return [(SOL_UDP, UDP_GRO, step.to_bytes(4, sys.byteorder)),
            (socket.IPPROTO_IP, socket.IP_TOS, b"\x02")]


def test_a_gro_train_is_handed_to_the_batch_datagram_by_datagram_and_what_waits_comes_next():
    train = b"".join(bytes([n]) * 100 for n in range(5)) + b"\x05" * 30
    fake = FakeSocket(incoming=[(train, gro(100), ("10.0.0.2", 4789)),
                                (b"single", [], ("10.0.0.3", 4789))])
    sock, batch = udp(fake), Batch(4)
    assert sock.read_batch(batch) == 4 and sock.backlog
    assert [bytes(batch.buffers[i][:batch.ends[i]]) for i in range(4)] == [
        bytes([n]) * 100 for n in range(4)]
    assert batch.tos[:4] == [2] * 4 and batch.addresses[:4] == ["10.0.0.2"] * 4
    assert sock.read_batch(batch) == 3 and not sock.backlog
    assert [bytes(batch.buffers[i][:batch.ends[i]]) for i in range(3)] == [
        b"\x04" * 100, b"\x05" * 30, b"single"]
    assert batch.addresses[:3] == ["10.0.0.2", "10.0.0.2", "10.0.0.3"]


TUNNEL_HEADER = bytes(range(8))   # what precedes each inner packet: link_header 8


def stream_train(sizes, seq: int = 1000, flags: dict | None = None) -> tuple[bytes, list]:
    """Datagrams of one inner TCP stream behind TUNNEL_HEADER, end to end as a GRO train:
    the train and the datagrams."""
    datagrams = []
    for k, size in enumerate(sizes):
        datagrams.append(TUNNEL_HEADER + tcp_packet(4, payload(size), (flags or {}).get(k, "A"),
                                                    seq=seq, ip_id=k))
        seq += size
    return b"".join(datagrams), datagrams


def entries(batch: Batch, count: int) -> list[tuple[int, int]]:
    """(joined, gso_size) of each entry: (1, 0) for a datagram as it came."""
    return [(batch.parts(i), batch.gso_sizes[i]) for i in range(count)]


def test_a_train_of_one_stream_becomes_one_datagram_whose_inner_packet_cuts_back_into_it():
    train, datagrams = stream_train([1000] * 5 + [300])
    fake = FakeSocket(incoming=[(train, gro(len(datagrams[0])), ("10.0.0.2", 4789))])
    sock, batch = udp(fake, link_header=8), Batch(4)
    assert sock.read_batch(batch) == 1 and not sock.backlog
    assert entries(batch, 1) == [(6, 1000)] and batch.tos[0] == 2
    joined = bytes(batch.buffers[0][:batch.ends[0]])
    assert joined[:8] == TUNNEL_HEADER
    assert [TUNNEL_HEADER + s for s in cut((segment_tcp,), joined[8:], 0, 1000)] == datagrams


def test_trains_of_one_stream_received_back_to_back_are_joined_across():
    first, one = stream_train([1000] * 3)
    second, two = stream_train([1000] * 2 + [500], seq=4000)
    fake = FakeSocket(incoming=[(first, gro(len(one[0])), ("10.0.0.2", 4789)),
                                (second, gro(len(two[0])), ("10.0.0.2", 4789))])
    sock, batch = udp(fake, link_header=8), Batch(4)
    assert sock.read_batch(batch) == 1 and entries(batch, 1) == [(6, 1000)]


@pytest.mark.parametrize("why, second_from, second_seq", [
    ("another sender", "10.0.0.3", 4000),
    ("a gap in the stream", "10.0.0.2", 9000),
])
def test_what_does_not_go_on_with_the_stream_is_an_entry_of_its_own(why, second_from, second_seq):
    first, one = stream_train([1000] * 3)
    second, two = stream_train([1000] * 2, seq=second_seq)
    fake = FakeSocket(incoming=[(first, gro(len(one[0])), ("10.0.0.2", 4789)),
                                (second, gro(len(two[0])), (second_from, 4789))])
    sock, batch = udp(fake, link_header=8), Batch(4)
    assert sock.read_batch(batch) == 2 and entries(batch, 2) == [(3, 1000), (2, 1000)]
    assert batch.addresses[:2] == ["10.0.0.2", second_from]


def test_a_datagram_that_may_not_be_joined_stays_one_and_the_stream_goes_on_after_it():
    train, datagrams = stream_train([1000] * 4, flags={1: "PA"})
    fake = FakeSocket(incoming=[(train, gro(len(datagrams[0])), ("10.0.0.2", 4789))])
    sock, batch = udp(fake, link_header=8), Batch(4)
    assert sock.read_batch(batch) == 2 and entries(batch, 2) == [(2, 1000), (2, 1000)]


def test_a_joined_datagram_grows_no_larger_than_the_buffer_it_is_joined_into():
    train, datagrams = stream_train([1000] * 12)
    fake = FakeSocket(incoming=[(train, gro(len(datagrams[0])), ("10.0.0.2", 4789))])
    sock, batch = udp(fake, link_header=8), Batch(8, buffer_size=4000)
    assert sock.read_batch(batch) == 4 and entries(batch, 4) == [(3, 1000)] * 4


def test_without_a_link_header_nothing_is_joined():
    train, datagrams = stream_train([1000] * 3)
    fake = FakeSocket(incoming=[(train, gro(len(datagrams[0])), ("10.0.0.2", 4789))])
    sock, batch = udp(fake), Batch(4)
    assert sock.read_batch(batch) == 3 and entries(batch, 3) == [(1, 0)] * 3
    assert [bytes(batch.buffers[i][:batch.ends[i]]) for i in range(3)] == datagrams


def test_an_empty_datagram_is_one_entry_of_length_zero():
    fake = FakeSocket(incoming=[(b"", [], ("10.0.0.2", 4789))])
    sock, batch = udp(fake), Batch(4)
    assert sock.read_batch(batch) == 1 and batch.ends[0] == 0 and not sock.backlog


# -- real UDP sockets on loopback ----------------------------------------------------------

@pytest.fixture
def opened():
    """``open(local, port=0, dont_fragment=True)``: a real UdpSocket, closed at the end."""
    sockets = []

    def open_(local: str, port: int = 0, dont_fragment: bool = True,
              link_header: int = 0) -> UdpSocket:
        sock = UdpSocket.open(local, port, dont_fragment, link_header)
        sockets.append(sock)
        return sock
    yield open_
    for sock in sockets:
        sock.close()


def port(sock: UdpSocket) -> int:
    return sock.sock.getsockname()[1]


def wait_readable(sock: UdpSocket) -> int:
    """Until the kernel has something for ``sock`` (data or an error); its poll events."""
    poller = select.poll()
    poller.register(sock.fd, select.POLLIN)
    ((_, events),) = poller.poll(5000)
    return events


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_two_udp_sockets_exchange_a_batch_with_its_tos(opened, loopback):
    a, b = opened(loopback), opened(loopback)
    batch = Batch(4).fill_from_device([b"marked" * 10, b"plain" * 10])
    for i in range(2):
        batch.packets[i] = batch.views[i][HEADROOM:batch.ends[i]]
        batch.destinations[i] = ((loopback, port(b)),)
    batch.ancillary[0] = 9 << 8 | 0xB9
    counters = Counters()
    a.send_batch(batch, counters)
    assert (counters.tx_packets, counters.drops_by_label()) == (2, {})
    received, batch = [], Batch(4)
    while len(received) < 2:
        wait_readable(b)
        for i in range(b.read_batch(batch)):
            received.append((bytes(batch.buffers[i][:batch.ends[i]]), batch.tos[i],
                             batch.addresses[i]))
    assert received == [(b"marked" * 10, 0xB9, loopback), (b"plain" * 10, 0, loopback)]


@pytest.mark.parametrize("loopback, origin, icmp_type, code", [
    ("127.0.0.1", ErrorOrigin.ICMP4, 3, 3),      # port unreachable
    ("::1", ErrorOrigin.ICMP6, 1, 4),
])
def test_a_datagram_refused_by_a_closed_port_comes_back_through_the_error_queue(
        opened, loopback, origin, icmp_type, code):
    a, closed = opened(loopback), opened(loopback)
    destination = port(closed)
    closed.close()
    a.send(b"our datagram", ((loopback, destination),), None, 12, Counters())
    assert wait_readable(a) & select.POLLERR
    assert a.read_batch(Batch(4)) == 0 and a.errors_pending
    (error,) = a.read_errors()
    assert (error.origin, error.icmp_type, error.code, error.peer, bytes(error.quote),
            error.length) == (origin, icmp_type, code, loopback, b"our datagram", 0)
    assert a.read_errors() == [] and not a.errors_pending


@pytest.mark.parametrize("dont_fragment, discovery", [(True, PMTUDISC_PROBE),
                                                      (False, PMTUDISC_DONT)])
def test_df_is_the_sockets_and_errors_are_queued(opened, dont_fragment, discovery):
    sock = opened("127.0.0.1", dont_fragment=dont_fragment).sock
    assert sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == discovery
    assert sock.getsockopt(socket.IPPROTO_IP, IP_RECVERR) == 1
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 64
    assert sock.getblocking() is False


def test_a_second_socket_on_the_same_port_is_refused(opened):
    first = opened("127.0.0.1")
    with pytest.raises(SystemProblem) as problem:
        opened("127.0.0.1", port(first))
    assert problem.value.message == (f"127.0.0.1 port {port(first)} is in use (another "
                                     f"tunnelrouter, or a kernel tunnel, has it)")


@pytest.mark.parametrize("address", ["198.51.100.1", "2001:db8::1"])
def test_an_address_this_host_does_not_have_is_named(opened, address):
    with pytest.raises(SystemProblem) as problem:
        opened(address)
    assert problem.value.message == (f"{address} is not an address of this host (add it to "
                                     f"an interface)")



class CountingSocket:
    """A socket whose receives are counted."""

    def __init__(self, sock: socket.socket):
        self._sock, self.receives = sock, 0

    def recvmsg_into(self, *args):
        self.receives += 1
        return self._sock.recvmsg_into(*args)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_the_kernel_cuts_a_gso_send_and_gro_hands_the_datagrams_back_in_one_receive(opened):
    a, b = opened("127.0.0.1"), opened("127.0.0.1")
    b.sock = CountingSocket(b.sock)
    batch = super_packet(bytes(8), 10 * 1000, destinations=(("127.0.0.1", port(b)),))
    expected = [bytes(8) + segment for segment in
                cut((segment_tcp,), tcp_packet(4, payload(10 * 1000)), 0, 1000)]
    counters = Counters()
    a.send_batch(batch, counters)
    assert (counters.tx_packets, counters.drops_by_label()) == (10, {})
    received, batch = [], Batch(16)
    while len(received) < 10:
        wait_readable(b)
        for i in range(b.read_batch(batch)):
            received.append(bytes(batch.buffers[i][:batch.ends[i]]))
    assert received == expected
    assert b.sock.receives <= 2   # one train (and the receive that finds nothing more)


def test_a_gso_send_arrives_as_one_train_and_is_joined_into_the_super_packet_it_was(opened):
    a, b = opened("127.0.0.1"), opened("127.0.0.1", link_header=8)
    batch = super_packet(TUNNEL_HEADER, 10 * 1000, destinations=(("127.0.0.1", port(b)),))
    sent = bytes(batch.packets[0])
    a.send_batch(batch, Counters())
    wait_readable(b)
    batch = Batch(4)
    assert b.read_batch(batch) == 1 and entries(batch, 1) == [(10, 1000)]
    joined = bytes(batch.buffers[0][:batch.ends[0]])
    # The same packet but for what a super-packet on its way to a device carries instead:
    # the pseudo-header sum for a checksum, the flags of every part.
    assert joined[:8] == sent[:8] and IP(joined[8:])[TCP].payload == IP(sent[8:])[TCP].payload
    assert cut((segment_tcp,), joined[8:], 0, 1000) == cut((segment_tcp,), sent[8:], 0, 1000)
