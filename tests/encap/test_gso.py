"""TCP segmentation and coalescing (encap.gso): what TSO cuts, scapy reads as the segments a
sender would have sent; what GRO joins, TSO cuts back into the same segments; and the C
accelerator gives the reference's bytes and verdicts for any input."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from encap import gso
from encap.checksum import pseudo_header_sum
from encap.errors import DecodeError, DropReason
from encap.gso import segment_count
from encap.wire import IpProto

from tests.encap.strategies import mutated

IMPLEMENTATIONS = [pytest.param(gso.PYTHON, id="python")] + (
    [pytest.param((gso.segment_tcp, gso.finish_checksum, gso.coalesce, gso.join), id="c")]
    if gso.ACCELERATED else [])
TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tcp_packet(version: int, payload: bytes, flags: str = "A", seq: int = 1000,
               options=TIMESTAMPS, ip_id: int = 7, tos: int = 0, src: str = "10.1.1.1") -> bytes:
    """An IP + TCP packet as the sending host's stack builds it, every checksum valid."""
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, window=512,
              options=options)
    ip = IP(src=src, dst="10.2.1.1", id=ip_id, flags="DF", tos=tos) if version == 4 \
        else IPv6(src="fd01::1", dst="fd02::1", tc=tos)
    return bytes(ip / tcp / payload)


def parsed(packet: bytes):
    return IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)


def checksums_valid(packet: bytes) -> bool:
    """scapy's verdict: rebuild without the checksums and compare."""
    layer = parsed(packet)
    stored = [layer[TCP].chksum] + ([layer.chksum] if packet[0] >> 4 == 4 else [])
    del layer[TCP].chksum
    if packet[0] >> 4 == 4:
        del layer.chksum
    rebuilt = parsed(bytes(layer))
    return stored == [rebuilt[TCP].chksum] + ([rebuilt.chksum] if packet[0] >> 4 == 4 else [])


def cut(implementation, datagram: bytes, inner_ip: int, gso_size: int, outer_ipv4=False,
        remote_checksum=False):
    segment = implementation[0]
    transport = inner_ip + (20 if datagram[inner_ip] >> 4 == 4 else 40)
    arena = bytearray(len(datagram) * 2 + 4096)
    count, stride, last = segment(datagram, inner_ip, transport, gso_size, outer_ipv4, arena,
                                  remote_checksum)
    return [bytes(arena[k * stride:k * stride + (stride if k < count - 1 else last)])
            for k in range(count)]


def super_packet(version: int, payload: bytes, flags: str = "A", **keywords) -> bytes:
    """What a TUN device with TSO hands over: the headers of the first segment, all the
    payload, lengths of the whole (the TCP checksum is the kernel's partial one there,
    which segmentation ignores)."""
    return tcp_packet(version, payload, flags, **keywords)


# -- segmentation ---------------------------------------------------------------------------

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_a_super_packet_is_cut_into_the_segments_the_sender_would_have_sent(implementation,
                                                                              version):
    payload = bytes(range(256)) * 20   # 5120 bytes: 3 full segments of 1448 and 776
    segments = cut(implementation, super_packet(version, payload, "PA"), 0, 1448)
    assert segments == [tcp_packet(version, payload[k * 1448:(k + 1) * 1448],
                                   "PA" if k == 3 else "A", seq=1000 + k * 1448,
                                   ip_id=7 + k) for k in range(4)]
    assert all(checksums_valid(segment) for segment in segments)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cwr_stays_on_the_first_segment_and_fin_goes_to_the_last(implementation):
    segments = cut(implementation, super_packet(4, bytes(3000), "FPAC"), 0, 1000)
    assert [str(parsed(s)[TCP].flags) for s in segments] == ["AC", "A", "FPA"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_packet_no_larger_than_one_segment_is_one_segment_with_its_checksum_made(
        implementation):
    packet = bytearray(tcp_packet(6, b"hello"))
    packet[56:58] = b"\x12\x34"   # the partial checksum a TUN device hands over
    [segment] = cut(implementation, bytes(packet), 0, 1448)
    assert segment == tcp_packet(6, b"hello")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gre_segments_get_their_own_outer_length_identification_and_checksum(implementation):
    inner = super_packet(4, bytes(4000))
    outer = IP(src="10.99.1.1", dst="10.99.2.1", id=300, flags="DF", ttl=64) / GRE(
        proto=0x0800, key_present=1, key=42)
    datagram = bytes(outer / IP(inner))
    segments = cut(implementation, datagram, 28, 1448, outer_ipv4=True)
    assert len(segments) == 3
    for k, segment in enumerate(segments):
        packet = IP(segment)
        assert packet.id == 300 + k and packet.len == len(segment) and packet[GRE].key == 42
        rebuilt = IP(segment)
        del rebuilt.chksum
        assert IP(bytes(rebuilt)).chksum == packet.chksum
        assert checksums_valid(bytes(packet[GRE].payload))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vxlan_segments_repeat_the_vxlan_and_ethernet_headers(implementation):
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
        super_packet(4, bytes(range(200)) * 15)))
    datagram = bytes(VXLAN(flags=0x08, vni=4242)) + frame
    segments = cut(implementation, datagram, 22, 1400)
    assert [len(s) for s in segments] == [8 + 14 + 52 + 1400] * 2 + [8 + 14 + 52 + 200]
    for segment in segments:
        vxlan = VXLAN(segment)
        assert vxlan.vni == 4242 and vxlan[Ether].dst == "02:00:00:00:00:02"
        assert checksums_valid(segment[22:])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_segments_whose_checksum_the_receiver_finishes_hold_the_sum_that_finishes_them(
        implementation, version):
    # VXLAN remote checksum offload: each segment goes with its pseudo-header sum in the
    # checksum field, which the receiver's finishing (over the TCP header and payload,
    # from the field as it is) turns into the checksum scapy computes.
    payload = bytes(range(256)) * 20
    datagram = VXLAN_AND_ETHERNET[:22] if version == 4 else vxlan_and_ethernet(6)
    segments = cut(implementation, datagram + super_packet(version, payload, "PA"), 22, 1448,
                   remote_checksum=True)
    whole = cut(implementation, datagram + super_packet(version, payload, "PA"), 22, 1448)
    transport = 22 + (20 if version == 4 else 40)
    assert len(segments) == 4
    for segment, expected in zip(segments, whole):
        assert segment != expected   # the checksum is not done
        finished = bytearray(segment)
        implementation[1](memoryview(finished)[8:], transport - 8, 16)
        assert bytes(finished) == expected and checksums_valid(expected[22:])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("datagram, inner_ip, transport", [
    (b"", 0, 20),
    (bytes(tcp_packet(4, b"x"))[:30], 0, 20),          # TCP header cut short
    (bytes(IP(proto=17) / bytes(40)), 0, 20),          # not TCP
    (bytes(tcp_packet(4, b"x")), 0, 24),               # transport is not after the header
    (bytes(tcp_packet(6, b"x")), 0, 20),               # inside the IPv6 header
    (b"\x55" + bytes(59), 0, 20),                      # IP version 5
    (bytes(tcp_packet(4, b"x")), -4, 20),
])
def test_what_does_not_parse_is_a_decode_error(implementation, datagram, inner_ip, transport):
    with pytest.raises(DecodeError) as raised:
        implementation[0](datagram, inner_ip, transport, 1000, False, bytearray(4096))
    assert raised.value.reason is DropReason.INNER_MALFORMED


def test_segment_count_rounds_up_and_is_never_zero():
    assert [segment_count(n, 1000) for n in (0, 1, 1000, 1001, 3000)] == [1, 1, 1, 2, 3]


# -- finishing a partial checksum -----------------------------------------------------------

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_a_partial_checksum_is_finished_as_the_sender_would_have(implementation, version):
    packet = tcp_packet(version, b"payload" * 100)
    start = 20 if version == 4 else 40
    partial = bytearray(packet)
    # The kernel leaves the pseudo-header sum, folded and not inverted, in the field.
    source, destination = (packet[12:16], packet[16:20]) if version == 4 else \
        (packet[8:24], packet[24:40])
    partial[start + 16:start + 18] = pseudo_header_sum(
        source, destination, IpProto.TCP, len(packet) - start).to_bytes(2, "big")
    implementation[1](partial, start, 16)
    assert bytes(partial) == packet


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_udp_checksum_that_comes_to_zero_is_sent_as_all_ones(implementation):
    # Words summing to 0xffff: the checksum is 0, which UDP says as 0xffff (RFC 768).
    packet = bytearray(b"\xff\xff\x00\x00")
    implementation[1](packet, 0, 2)
    assert packet[2:4] == b"\x00\x00"           # not UDP: 0 stays 0
    packet = bytearray(b"\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff")
    implementation[1](packet, 0, 6)
    assert packet[6:8] == b"\xff\xff"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("start, offset", [(-1, 16), (0, 99), (50, 0)])
def test_a_checksum_field_outside_the_packet_is_a_decode_error(implementation, start, offset):
    with pytest.raises(DecodeError):
        implementation[1](bytearray(40), start, offset)


# -- coalescing -----------------------------------------------------------------------------

def join(implementation, packets, l2: int = 0, headroom: int = 10, ethernet: bool = False):
    arena = bytearray(sum(map(len, packets)) + headroom * len(packets) + 64)
    runs = implementation[2](packets, len(packets), l2, ethernet, arena, headroom)
    assert sum(joined for *_, joined in runs) == len(packets)
    return [(bytes(arena[start:end]), size, transport) for start, end, size, transport, _ in runs]


def stream(version: int, sizes, flags=None, seq: int = 1000) -> list[bytes]:
    """Consecutive segments of one stream, as they arrive from the peer."""
    packets = []
    for k, size in enumerate(sizes):
        packets.append(tcp_packet(version, bytes([k]) * size, (flags or {}).get(k, "A"),
                                  seq=seq, ip_id=7 + k))
        seq += size
    return packets


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_consecutive_segments_of_a_stream_become_one_super_packet_that_cuts_back_into_them(
        implementation, version):
    segments = stream(version, [1448, 1448, 1448, 500], {3: "PA"})
    [(joined, size, transport)] = join(implementation, segments)
    assert (size, transport) == (1448, 20 if version == 4 else 40)
    layer = parsed(joined)
    assert bytes(layer[TCP].payload) == b"".join(bytes(parsed(s)[TCP].payload) for s in segments)
    assert str(layer[TCP].flags) == "PA"
    assert (layer.len if version == 4 else layer.plen + 40) == len(joined)
    assert cut(implementation, joined, 0, size) == segments


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_on_tap_the_ethernet_header_is_kept_and_must_match(implementation):
    ether = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
    segments = [ether + s for s in stream(4, [1000, 1000])]
    [(joined, size, transport)] = join(implementation, segments, l2=14, ethernet=True)
    assert joined[:14] == ether and (size, transport) == (1000, 34)
    other = bytes(Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:02", type=0x0800))
    assert [size for _, size, _ in join(implementation, [segments[0], other + segments[1][14:]],
                                        l2=14, ethernet=True)] == [0, 0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ethertype", [0x0806, 0x86DD, 0x8100])
def test_on_tap_an_ip_packet_behind_another_ethertype_is_never_joined(implementation, ethertype):
    ether = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=ethertype))
    segments = [ether + s for s in stream(4, [1000, 1000])]
    assert [size for _, size, _ in join(implementation, segments, l2=14, ethernet=True)] == [0, 0]
    assert [size for _, size, _ in join(implementation, segments, l2=14)] == [1000]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("why, packets", [
    ("a gap in the sequence", stream(4, [1000]) + stream(4, [1000], seq=3000)),
    ("a SYN", [tcp_packet(4, b"x" * 100, "S")] + stream(4, [100], seq=1100)),
    ("a FIN", stream(4, [100], {0: "FA"}) + stream(4, [100], seq=1100)),
    ("another flow", stream(4, [100]) + [tcp_packet(4, b"y" * 100, seq=1100, src="10.1.1.9")]),
    ("other options", stream(4, [100]) + [tcp_packet(4, b"y" * 100, seq=1100,
                                                     options=[("NOP", None)] * 12)]),
    ("a larger second segment", stream(4, [100, 200])),
    ("a pure ACK", stream(4, [100]) + [tcp_packet(4, b"", seq=1100)]),
    ("another TOS", stream(4, [100]) + [tcp_packet(4, b"y" * 100, seq=1100, tos=3)]),
    ("neither TCP nor UDP", [bytes(IP(src="10.1.1.1", dst="10.2.1.1", proto=1) / bytes(100))] * 2),
])
def test_what_may_not_be_joined_is_copied_as_it_came(implementation, why, packets):
    assert join(implementation, packets) == [(packet, 0, 0) for packet in packets]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_segment_with_a_bad_checksum_is_never_joined_but_passed_on_for_the_kernel_to_drop(
        implementation):
    packets = stream(4, [100, 100, 100])
    bad = bytearray(packets[1])
    bad[-1] ^= 0xFF
    packets[1] = bytes(bad)
    assert [size for _, size, _ in join(implementation, packets)] == [0, 0, 0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_psh_and_a_short_segment_each_end_a_super_packet(implementation):
    runs = join(implementation, stream(4, [500, 500, 500, 300, 500, 500], {1: "PA"}, seq=0))
    assert [(size, len(parsed(packet)[TCP].payload)) for packet, size, _ in runs] == [
        (500, 1000), (500, 800), (500, 1000)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def datagrams(version: int, sizes, sport: int = 5000, zero_checksum: bool = False) -> list[bytes]:
    """UDP datagrams of one flow, as a sender sends them one by one."""
    made = []
    for k, size in enumerate(sizes):
        udp = UDP(sport=sport, dport=53, chksum=0 if zero_checksum else None) / (bytes([k]) * size)
        ip = IP(src="10.1.1.1", dst="10.2.1.1", id=k) if version == 4 else \
            IPv6(src="fd01::1", dst="fd02::1")
        made.append(bytes(ip / udp))
    return made


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_datagrams_of_one_udp_flow_become_one_udp_super_packet(implementation, version):
    sent = datagrams(version, [64] * 5 + [30])
    [(joined, size, transport)] = join(implementation, sent)
    assert (size, transport) == (64, 20 if version == 4 else 40)
    layer = parsed(joined)
    assert layer[UDP].len == len(joined) - transport
    assert bytes(layer[UDP].payload) == b"".join(bytes(parsed(d)[UDP].payload) for d in sent)
    finished = bytearray(joined)
    implementation[1](finished, transport, 6)
    rebuilt = parsed(bytes(finished))
    del rebuilt[UDP].chksum
    assert parsed(bytes(finished))[UDP].chksum == parsed(bytes(rebuilt))[UDP].chksum


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ipv4_datagrams_without_a_checksum_are_joined_and_ipv6_ones_are_not(implementation):
    assert [size for _, size, _ in join(implementation, datagrams(4, [50] * 3,
                                                                  zero_checksum=True))] == [50]
    unchecked = []
    for datagram in datagrams(6, [50] * 3):
        zeroed = bytearray(datagram)
        zeroed[46:48] = b"\0\0"
        unchecked.append(bytes(zeroed))
    assert [size for _, size, _ in join(implementation, unchecked)] == [0, 0, 0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_udp_datagrams_of_other_flows_or_bad_checksums_or_growing_sizes_stay_apart(
        implementation):
    other_port = datagrams(4, [50]) + datagrams(4, [50], sport=5001)
    bad = datagrams(4, [50, 50])
    corrupted = bytearray(bad[1])
    corrupted[-1] ^= 1
    growing = datagrams(4, [50, 60])
    for packets in (other_port, [bad[0], bytes(corrupted)], growing):
        assert [size for _, size, _ in join(implementation, packets)] == [0, 0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_at_most_64_datagrams_make_one_udp_super_packet(implementation):
    assert [joined_count for joined_count in
            (len(parsed(packet)[UDP].payload) // 10
             for packet, _, _ in join(implementation, datagrams(4, [10] * 100)))] == [64, 36]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_super_packet_never_grows_past_64_kib(implementation):
    runs = join(implementation, stream(4, [1448] * 60))
    assert all(len(packet) <= 0xFFFF for packet, _, _ in runs)
    assert sum(len(parsed(packet)[TCP].payload) for packet, _, _ in runs) == 60 * 1448
    assert len(runs) == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_joined_checksum_is_the_pseudo_header_sum_the_kernel_completes(implementation):
    [(joined, _, transport)] = join(implementation, stream(4, [100, 100]))
    finished = bytearray(joined)
    implementation[1](finished, transport, 16)
    assert checksums_valid(bytes(finished))


# -- the accelerator against the reference --------------------------------------------------

needs_accelerator = pytest.mark.skipif(not gso.ACCELERATED, reason="encap._gso was not built")


@needs_accelerator
@PROPERTY
@given(version=st.sampled_from([4, 6]), payload=st.binary(max_size=9000),
       gso_size=st.integers(1, 3000), flags=st.sampled_from(["A", "PA", "FA", "AC", "FPAEC"]),
       prefix=st.sampled_from([b"", bytes(8) + bytes(14)]), remote_checksum=st.booleans())
def test_c_cuts_exactly_as_the_reference(version, payload, gso_size, flags, prefix,
                                         remote_checksum):
    datagram = prefix + super_packet(version, payload, flags)
    outputs = []
    for implementation in (gso.PYTHON, (gso.segment_tcp,)):
        outputs.append(cut(implementation, datagram, len(prefix), gso_size,
                           remote_checksum=remote_checksum))
    assert outputs[0] == outputs[1]


def reference_verdict(function, *args):
    try:
        return function(*args)
    except DecodeError as error:
        return error.reason


@needs_accelerator
@PROPERTY
@given(datagram=mutated(st.builds(lambda v, p: super_packet(v, p), st.sampled_from([4, 6]),
                                  st.binary(max_size=3000))),
       inner_ip=st.integers(-2, 30), transport=st.integers(0, 80), gso_size=st.integers(0, 2000),
       outer_ipv4=st.booleans())
def test_c_and_the_reference_agree_on_any_bytes(datagram, inner_ip, transport, gso_size,
                                                outer_ipv4):
    results = []
    for segment in (gso.PYTHON[0], gso.segment_tcp):
        arena = bytearray(8 * len(datagram) + 70000)
        verdict = reference_verdict(segment, datagram, inner_ip, transport, gso_size,
                                    outer_ipv4, arena)
        results.append((verdict, bytes(arena) if isinstance(verdict, tuple) else None))
    assert results[0] == results[1]


@needs_accelerator
@PROPERTY
@given(data=st.data())
def test_c_joins_exactly_as_the_reference(data):
    version = data.draw(st.sampled_from([4, 6]))
    sizes = data.draw(st.lists(st.integers(1, 1500), min_size=1, max_size=12))
    if data.draw(st.booleans()):
        packets = stream(version, sizes, {k: data.draw(st.sampled_from(["A", "PA", "FA", "SA"]))
                                          for k in range(len(sizes))})
    else:
        packets = datagrams(version, sizes, zero_checksum=data.draw(st.booleans()))
    packets = [data.draw(st.one_of(st.just(p), mutated(st.just(p)))) for p in packets]
    assume(all(packets))
    assert join(gso.PYTHON, packets) == join((None, None, gso.coalesce), packets)


def train_of(datagrams_: list[bytes]) -> tuple[bytes, int]:
    """What a UDP socket's GRO hands over: equal datagrams end to end (the last may be
    shorter), and their size."""
    step = len(datagrams_[0])
    assert all(len(d) == step for d in datagrams_[:-1]) and len(datagrams_[-1]) <= step
    return b"".join(datagrams_), step


def joined_train(implementation, train: bytes, step: int, l2: int, ethernet: bool, at: int = 0,
                 remote_checksum: bool = False):
    out = bytearray(len(train) + 64)
    end, size, transport, joined = implementation[3](train, at, len(train), step, l2, ethernet,
                                                     out, remote_checksum)
    return bytes(out[:end]), size, transport, joined


def vxlan_and_ethernet(version: int = 4) -> bytes:
    return bytes(VXLAN(vni=4242)) + bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                                                type=0x0800 if version == 4 else 0x86DD))


VXLAN_AND_ETHERNET = vxlan_and_ethernet()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_a_gro_train_of_vxlan_datagrams_joins_into_one_datagram_of_the_whole_stream(
        implementation, version):
    # As UDP GRO hands a VXLAN receiver 40 datagrams of one inner TCP stream: one datagram
    # whose inner packet is the super-packet GRO of the inner stream would have made.
    outer = [vxlan_and_ethernet(version) + segment
             for segment in stream(version, [1380] * 39 + [700])]
    train, step = train_of(outer)
    joined, size, transport, count = joined_train(implementation, train, step, 22, True)
    assert (size, transport, count) == (1380, 22 + (20 if version == 4 else 40), 40)
    assert joined[:22] == outer[0][:22]
    [(expected, _, _)] = join(implementation, [d[22:] for d in outer], l2=0)
    assert joined[22:] == expected
    assert cut(implementation, joined[8:], 14, size) == [d[8:] for d in outer]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_train_joins_from_where_it_is_told_and_stops_where_the_stream_does(implementation):
    ether = VXLAN_AND_ETHERNET
    first, second = stream(4, [500, 500], seq=0), stream(4, [500, 500], seq=7000)
    train, step = train_of([ether + s for s in first + second])
    assert joined_train(implementation, train, step, 22, True)[1:] == (500, 42, 2)
    assert joined_train(implementation, train, step, 22, True, at=2 * step)[1:] == (500, 42, 2)
    assert joined_train(implementation, train, step, 22, True, at=3 * step) == (
        ether + second[1], 0, 0, 1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_train_with_other_vxlan_headers_is_not_joined_across_them(implementation):
    other = bytes(VXLAN(vni=7)) + VXLAN_AND_ETHERNET[8:]
    segments = stream(4, [500, 500])
    train, step = train_of([VXLAN_AND_ETHERNET + segments[0], other + segments[1]])
    assert joined_train(implementation, train, step, 22, True)[1:] == (0, 0, 1)


def vxlan_segments(version: int, sizes, remote_checksum: bool) -> list[bytes]:
    """VXLAN datagrams of one TCP stream as cutting a super-packet makes them; with
    ``remote_checksum``, their inner checksums left partial (remote checksum offload)."""
    payload = bytes(range(256)) * (sum(sizes) // 256 + 1)
    datagram = vxlan_and_ethernet(version) + super_packet(version, payload[:sum(sizes)])
    return cut(gso.PYTHON, datagram, 22, sizes[0], remote_checksum=remote_checksum)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("version", [4, 6])
def test_a_train_left_to_the_receiver_joins_only_where_the_receiver_agreed(implementation,
                                                                           version):
    partial, whole = (vxlan_segments(version, [1380] * 9 + [500], left) for left in (True, False))
    # The same joined datagram either way: its checksum is left partial for the device.
    assert joined_train(implementation, *train_of(partial), 22, True, remote_checksum=True) == \
        joined_train(implementation, *train_of(whole), 22, True)
    assert joined_train(implementation, *train_of(whole), 22, True, remote_checksum=True)[3] == 10
    # Not agreed: a partial checksum is a wrong one.
    assert joined_train(implementation, *train_of(partial), 22, True)[1:] == (0, 0, 1)
    # Agreed, a checksum that is neither whole nor the pseudo-header sum still stops it;
    # its complement too (0 and 0xFFFF are the only two spellings of one sum).
    field = 22 + (20 if version == 4 else 40) + 16
    for flip in (0x0040, 0xFFFF):
        broken = bytearray(partial[1])
        broken[field:field + 2] = (int.from_bytes(broken[field:field + 2], "big") ^ flip
                                   ).to_bytes(2, "big")
        train, step = train_of([partial[0], bytes(broken)] + partial[2:])
        assert joined_train(implementation, train, step, 22, True, remote_checksum=True)[3] == 1


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_empty_datagram_is_a_train_of_one(implementation):
    assert joined_train(implementation, b"", 1, 22, True) == (b"", 0, 0, 1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("at, end, step, out", [(-1, 10, 5, 64), (0, 11, 5, 64), (6, 5, 5, 64),
                                                 (0, 10, 0, 64), (0, 10, 5, 4)])
def test_a_train_out_of_range_is_a_caller_error(implementation, at, end, step, out):
    with pytest.raises(ValueError):
        implementation[3](bytes(10), at, end, step, 0, False, bytearray(out))


@needs_accelerator
@PROPERTY
@given(data=st.data())
def test_c_joins_trains_exactly_as_the_reference(data):
    version = data.draw(st.sampled_from([4, 6]))
    size = data.draw(st.integers(1, 1400))
    count = data.draw(st.integers(1, 10))
    last = data.draw(st.integers(1, size))
    sizes = [size] * (count - 1) + [last]
    partial = data.draw(st.booleans())
    packets = vxlan_segments(version, sizes, partial)
    step = len(packets[0])
    train = bytearray(b"".join(packets))
    for _ in range(data.draw(st.integers(0, 3))):
        train[data.draw(st.integers(0, len(train) - 1))] = data.draw(st.integers(0, 255))
    at = data.draw(st.sampled_from([0, step * data.draw(st.integers(0, count - 1))]))
    ethernet, remote_checksum = data.draw(st.booleans()), data.draw(st.booleans())
    assert joined_train(gso.PYTHON, bytes(train), step, 22, ethernet, at, remote_checksum) == \
        joined_train((None, None, None, gso.join), bytes(train), step, 22, ethernet, at,
                     remote_checksum)


@needs_accelerator
@PROPERTY
@given(packet=st.binary(max_size=200), start=st.integers(-2, 210), offset=st.integers(0, 20))
def test_c_finishes_checksums_exactly_as_the_reference(packet, start, offset):
    results = []
    for finish in (gso.PYTHON[1], gso.finish_checksum):
        buffer = bytearray(packet)
        results.append((reference_verdict(finish, buffer, start, offset), bytes(buffer)))
    assert results[0] == results[1]


# -- what Linux's GRO leaves for a raw socket -----------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("l2", [0, 14])
def test_a_super_packet_as_gro_leaves_it_is_told_from_a_packet_that_is_whole(version, l2):
    link = bytes(Ether(type=0x0800 if version == 4 else 0x86DD)) if l2 else b""
    segments = [link + s for s in stream(version, [1000] * 3)]
    [(joined, size, transport)] = join(gso.PYTHON, segments, l2=l2, ethernet=bool(l2))
    assert gso.gro_merged(joined, l2) == transport == l2 + (20 if version == 4 else 40)
    assert gso.gro_merged(memoryview(joined), l2) == transport
    assert gso.gro_merged(segments[0], l2) == 0                  # its checksum is whole
    assert gso.gro_merged(joined[:-1], l2) == 0                  # the IP length disagrees
    udp = [link + d for d in datagrams(version, [100] * 3)]
    [(joined_udp, _, _)] = join(gso.PYTHON, udp, l2=l2, ethernet=bool(l2))
    assert gso.gro_merged(joined_udp, l2) == 0                   # TCP only
