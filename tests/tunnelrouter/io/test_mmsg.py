"""sendmmsg and recvmmsg (tunnelrouter.io._mmsg) against the kernel, on loopback UDP sockets
(no root): what one call sends arrives datagram by datagram, a message the kernel refuses is
named by its index and errno, and a socket that sends through it sends and counts exactly
what one call per datagram sends and counts."""

import errno
import select
import socket

import pytest

from encap.wire import HEADROOM
from tunnelrouter.io import underlay
from tunnelrouter.io.udp_socket import UdpSocket
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters

_mmsg = pytest.importorskip("tunnelrouter.io._mmsg", reason="tunnelrouter.io._mmsg was not built")


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket, count: int) -> list[bytes]:
    datagrams = []
    while len(datagrams) < count:
        select.select([sock], [], [], 5)
        try:
            datagrams.append(sock.recv(70000))
        except BlockingIOError:
            continue
    return datagrams


def test_send_many_sends_each_buffer_as_one_datagram(sender, receiver):
    buffers = [b"one", memoryview(bytearray(b"..two..."))[2:5], b"", b"four" * 100]
    result = _mmsg.send_many(sender.fileno(), buffers, receiver.getsockname())
    assert result == (4, 3 + 3 + 0 + 400, [])
    assert received(receiver, 4) == [b"one", b"two", b"", b"four" * 100]


def test_an_ipv6_address_with_flow_info_and_scope_as_python_gives_it():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as receiver6, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender6:
        receiver6.bind(("::1", 0))
        receiver6.setblocking(False)
        host, port, flow_info, scope_id = receiver6.getsockname()
        assert _mmsg.send_many(sender6.fileno(), [b"six"], (host, port, flow_info, scope_id)) \
            == (1, 3, [])
        assert received(receiver6, 1) == [b"six"]


def test_send_strided_cuts_a_buffer_into_datagrams_of_one_size(sender, receiver):
    data = bytes(range(250))
    assert _mmsg.send_strided(sender.fileno(), data, 100, 250, receiver.getsockname()) == (
        3, 250, [])
    assert received(receiver, 3) == [data[:100], data[100:200], data[200:]]


def test_messages_the_kernel_refuses_are_each_named_by_index_and_errno(sender):
    # An IPv6 destination on an IPv4 socket: every message fails, each after one retry.
    sent, sent_bytes, failures = _mmsg.send_many(sender.fileno(), [b"a", b"b"], ("::1", 9))
    assert (sent, sent_bytes) == (0, 0)
    assert [index for index, _ in failures] == [0, 1]
    assert {code for _, code in failures} <= {errno.EAFNOSUPPORT, errno.EINVAL}


@pytest.mark.parametrize("address", [("not an address", 1), ("10.0.0.1",), "10.0.0.1",
                                     ("10.0.0.1", 1, 2, 3, 4)])
def test_an_address_that_is_not_one_is_a_caller_error(sender, address):
    with pytest.raises((ValueError, TypeError)):
        _mmsg.send_many(sender.fileno(), [b"a"], address)


def test_recv_into_reads_what_waits_with_lengths_and_sources(sender, receiver):
    for data in (b"first", b"second!", b"3"):
        sender.sendto(data, receiver.getsockname())
    got: list[tuple[bytes, str]] = []
    while len(got) < 3:
        select.select([receiver], [], [], 5)
        buffers = [bytearray(64) for _ in range(8)]
        ends, addresses = [0] * 8, [None] * 8
        try:
            count = _mmsg.recv_into(receiver.fileno(), buffers, 8, ends, addresses)
        except BlockingIOError:
            continue
        got += [(bytes(buffers[i][:ends[i]]), addresses[i]) for i in range(count)]
    assert got == [(b"first", "127.0.0.1"), (b"second!", "127.0.0.1"), (b"3", "127.0.0.1")]


def test_recv_into_says_nothing_waits_as_recv_would(receiver):
    with pytest.raises(BlockingIOError):
        _mmsg.recv_into(receiver.fileno(), [bytearray(10)], 1, [0], [None])


def exchanged(batched: bool) -> tuple[list[bytes], tuple]:
    """What a UdpSocket sends of one batch, through sendmmsg or one call per datagram."""
    a = UdpSocket.open("127.0.0.1", 0)
    b = UdpSocket.open("127.0.0.1", 0)
    try:
        if not batched:
            a._mmsg = None
        to = ("127.0.0.1", b.sock.getsockname()[1])
        packets = [bytes([n]) * (10 * n + 1) for n in range(6)]
        batch = Batch(8).fill_from_device(packets)
        for i in range(batch.count):
            batch.packets[i] = batch.views[i][HEADROOM - 2:batch.ends[i]]
            batch.destinations[i] = (to,)
        batch.ancillary[3] = 9 << 8 | 4          # marked: sent on its own, in its place
        batch.destinations[4] = (to, to)         # flooded
        counters = Counters()
        a.send_batch(batch, counters)
        return received(b.sock, 7), (counters.tx_packets, counters.tx_bytes,
                                     counters.drops_by_label())
    finally:
        a.close()
        b.close()


def test_a_socket_sends_and_counts_through_sendmmsg_exactly_as_one_call_at_a_time():
    assert underlay._mmsg is _mmsg
    assert exchanged(batched=True) == exchanged(batched=False)
