"""The UDP socket: TOS from ancillary data, UDP GSO sends, GRO trains handed to the
batch and joined. A fake socket (``fake_socket.py``) plays the kernel for the exact
calls; real UDP sockets on loopback (no root needed) check the same against the
kernel itself: TOS marking by ancillary data, the error queue of a datagram refused
by a closed port, the messages a bind that cannot work gives, GSO and GRO."""

import errno
import select
import socket
import sys

import pytest
from scapy.layers.inet import IP, TCP

from encap.gso import finish_checksum, segment_tcp
from encap.vxlan import remote_checksum
from encap.wire import HEADROOM
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.udp_socket import SOL_UDP, UDP_GRO, UDP_GSO_SEGMENTS, UDP_SEGMENT, UdpSocket
from tunnelrouter.io.underlay import IP_MTU_DISCOVER, IP_RECVERR, PMTUDISC_DONT, PMTUDISC_PROBE
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.encap.test_gso import checksums_valid, cut, tcp_packet
from tests.tunnelrouter.io.fake_socket import (OTHER_PEER, PEER, FakeSocket, payload,
                                               super_packet, udp)


# -- receiving -----------------------------------------------------------------------------

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


# A VXLAN header that says the inner TCP checksum (20 bytes into the inner packet) was left.
LEFT_HEADER = bytes.fromhex("08200000" "0000420a")


@pytest.mark.parametrize("agreed, header, joined", [
    (True, LEFT_HEADER, True),
    (False, LEFT_HEADER, False),           # no tunnel here takes such datagrams
    (True, bytes.fromhex("08000000" "00004200"), False),   # the header does not say so
])
def test_a_train_whose_checksums_were_left_to_the_receiver_joins_where_a_tunnel_agreed(
        agreed, header, joined):
    # VXLAN remote checksum offload: the sender left each segment's pseudo-header sum.
    datagrams = cut((segment_tcp,), header + tcp_packet(4, payload(5300)), 8, 1000,
                    remote_checksum=True)
    fake = FakeSocket(incoming=[(b"".join(datagrams), gro(len(datagrams[0])),
                                 ("10.0.0.2", 4789))])
    sock, batch = udp(fake, link_header=8), Batch(8)
    sock.remote_checksum = remote_checksum if agreed else None
    count = sock.read_batch(batch)
    assert entries(batch, count) == ([(6, 1000)] if joined else [(1, 0)] * 6)


@pytest.mark.parametrize("left", [True, False])
def test_a_super_packet_is_sent_with_its_checksums_left_where_the_core_said(left):
    fake = FakeSocket()
    batch = super_packet(LEFT_HEADER if left else bytes(8), 3000, gso_size=1000)
    batch.remote_checksums[0] = left
    udp(fake).send_batch(batch, Counters())
    [(data, _, _)] = fake.sent
    segments = [data[k:k + 8 + 52 + 1000] for k in range(0, len(data), 8 + 52 + 1000)]
    assert len(segments) == 3
    for segment in segments:
        inner = bytearray(segment[8:])
        assert checksums_valid(bytes(inner)) != left
        if left:
            finish_checksum(inner, 20, 16)    # as the peer finishes it
            assert checksums_valid(bytes(inner))


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
