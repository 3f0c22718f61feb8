"""The raw socket: the quoted datagram of an error, what a read leaves in a batch, a
super-packet sent as segments each with its own outer header."""

import errno

from scapy.layers.inet import IP, TCP

from tunnelrouter.io.raw_socket import RawSocket
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.encap.test_gso import checksums_valid
from tests.tunnelrouter.io.fake_socket import FakeSocket, queued, super_packet


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


# -- super-packets -------------------------------------------------------------------------

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
