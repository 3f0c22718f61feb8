"""The base underlay socket: what a batch becomes on the socket, how send failures are
counted, the error queue parsed into WanError. A UDP socket stands for both kinds
where they do not differ; the fake socket (``fake_socket.py``) plays the kernel."""

import errno
import socket
import sys

import pytest

from tunnelrouter.io.underlay import ERRORS_PER_WAKEUP, IP_RECVERR, IPV6_RECVERR
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

from tests.tunnelrouter.io.fake_socket import (FRAGMENTATION_NEEDED, ICMP_UNREACHABLE,
                                               OTHER_PEER, PEER, FakeSocket, extended_error,
                                               outgoing, queued, super_packet, udp)

SO_EE_ORIGIN_NONE, SO_EE_ORIGIN_TXSTATUS = 0, 4


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


# -- super-packets -------------------------------------------------------------------------

def test_a_super_packet_that_does_not_cut_is_counted_not_sent():
    fake = FakeSocket()
    batch = super_packet(bytes(8), 2500)
    batch.tcp_offsets[0] = 9
    counters = Counters()
    udp(fake).send_batch(batch, counters)
    assert fake.sent == [] and counters.drops_by_label() == {"inner_malformed": 1}
