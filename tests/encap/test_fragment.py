"""IPv4 fragmentation, RFC 791: pieces that fit, that reassemble, and that scapy agrees with."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, defragment, fragment

from encap.checksum import checksum_ok, internet_checksum
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.fragment import copied_options, fragment_ipv4

SRC, DST = bytes([10, 1, 1, 1]), bytes([10, 2, 1, 1])
DF, MF = 0x4000, 0x2000

# Options by their type byte: 0x83 loose source route and 0x82 security are
# copied into every fragment; 0x07 record route and 0x44 timestamp are not.
LOOSE_ROUTE = bytes([0x83, 7, 4]) + bytes([192, 0, 2, 1])
SECURITY = bytes([0x82, 11]) + bytes(9)
RECORD_ROUTE = bytes([0x07, 7, 4]) + bytes(4)
TIMESTAMP = bytes([0x44, 8, 5, 0]) + bytes(4)
NOP, EOL = b"\x01", b"\x00"


def ipv4_packet(payload: bytes, options: bytes = b"", flags_offset: int = 0,
                identification: int = 0x1234) -> bytes:
    """An IPv4 UDP-numbered packet with ``options`` padded with EOL and a valid checksum."""
    options += EOL * (-len(options) % 4)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0xB8,
                                   20 + len(options) + len(payload), identification,
                                   flags_offset, 64, 17, 0, SRC, DST) + options)
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def fields(fragment_bytes: bytes) -> tuple[int, int, int, int]:
    """``(header length, total length, flags, offset in bytes)`` of one fragment."""
    first, total, flags_offset = struct.unpack_from("!BxHxxH", fragment_bytes)
    return (first & 15) * 4, total, flags_offset & 0xE000, (flags_offset & 0x1FFF) * 8


def reassemble(fragments: list[bytes]) -> tuple[int, bytes, int]:
    """Our own reassembly: ``(offset of the first byte, data, flags of the last piece)``."""
    pieces = sorted((fields(f)[3], f[fields(f)[0]:fields(f)[1]]) for f in fragments)
    start, data = pieces[0][0], b""
    for offset, piece in pieces:
        assert offset == start + len(data)      # no gap, no overlap
        data += piece
    return start, data, fields(max(fragments, key=lambda f: fields(f)[3]))[2]


PAYLOAD_1480 = bytes(range(256)) * 5 + bytes(200)


def test_golden_1500_bytes_to_mtu_1400():
    packet = ipv4_packet(PAYLOAD_1480)
    first, second = fragment_ipv4(packet, 1400)
    # (1400 - 20) rounded down to 8 is 1376 data bytes: 1396 in all, MF, offset 0.
    # The other 1480 - 1376 = 104 bytes: 124 in all, no MF, offset 1376 / 8 = 172.
    expected_first = bytearray.fromhex("45b8" "0574" "1234" "2000" "4011" "0000") + SRC + DST
    expected_second = bytearray.fromhex("45b8" "007c" "1234" "00ac" "4011" "0000") + SRC + DST
    for header in (expected_first, expected_second):
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
    assert first == bytes(expected_first) + PAYLOAD_1480[:1376]
    assert second == bytes(expected_second) + PAYLOAD_1480[1376:]


def test_scapy_fragments_a_packet_without_options_the_same_way():
    packet = bytes(IP(src="10.1.1.1", dst="10.2.1.1", id=7) / UDP() / PAYLOAD_1480[:3972])
    ours = fragment_ipv4(packet, 1400)
    theirs = [bytes(piece) for piece in fragment(IP(packet), fragsize=1376)]
    assert [IP(piece).fields for piece in ours] == [IP(piece).fields for piece in theirs]
    assert ours == theirs


def test_scapy_reassembles_our_fragments():
    packet = ipv4_packet(PAYLOAD_1480, LOOSE_ROUTE + RECORD_ROUTE)
    fragments = fragment_ipv4(packet, 576)
    assert len(fragments) == 3
    for piece in fragments:
        parsed = IP(piece)
        stored, parsed.chksum = parsed.chksum, None
        assert IP(bytes(parsed)).chksum == stored
    (whole,) = defragment([IP(piece) for piece in fragments])
    assert bytes(whole.payload) == PAYLOAD_1480


def test_later_fragments_keep_only_copied_options():
    packet = ipv4_packet(PAYLOAD_1480, RECORD_ROUTE + NOP + LOOSE_ROUTE + TIMESTAMP)
    first, *later = fragment_ipv4(packet, 600)
    assert first[20:fields(first)[0]] == packet[20:fields(packet)[0]]
    for piece in later:
        # Loose route (7 bytes) padded with one EOL to 8.
        assert fields(piece)[0] == 28 and piece[20:28] == LOOSE_ROUTE + EOL


def test_a_packet_without_copied_options_has_bare_later_headers():
    first, second = fragment_ipv4(ipv4_packet(PAYLOAD_1480, RECORD_ROUTE + TIMESTAMP), 1400)
    assert fields(first)[0] == 36 and fields(second)[0] == 20


def test_a_fragment_is_fragmented_again_keeping_its_offset_and_more_fragments():
    first, second, third = fragment_ipv4(ipv4_packet(PAYLOAD_1480 * 2), 1100)
    assert fields(second)[2:] == (MF, 1080)
    again = fragment_ipv4(second, 300)
    assert [fields(piece)[2] for piece in again] == [MF] * len(again)
    assert reassemble(again) == (1080, second[20:], MF)
    assert reassemble([first, *again, third]) == (0, PAYLOAD_1480 * 2, 0)


def test_a_packet_that_fits_comes_back_whole_without_trailing_bytes():
    packet = ipv4_packet(b"small", flags_offset=DF)
    assert fragment_ipv4(packet + bytes(6), 1500) == [packet]


def test_dont_fragment_is_the_callers_mistake():
    with pytest.raises(EncapConfigError):
        fragment_ipv4(ipv4_packet(PAYLOAD_1480, flags_offset=DF), 1400)


def test_an_mtu_without_room_for_8_data_bytes_is_the_callers_mistake():
    packet = ipv4_packet(PAYLOAD_1480, SECURITY)       # 32-byte header
    with pytest.raises(EncapConfigError):
        fragment_ipv4(packet, 39)
    assert max(len(piece) for piece in fragment_ipv4(packet, 40)) == 40


def with_byte(packet: bytes, offset: int, value: int) -> bytes:
    changed = bytearray(packet)
    changed[offset] = value
    changed[10:12] = b"\0\0"
    changed[10:12] = internet_checksum(changed[:(changed[0] & 15) * 4]).to_bytes(2, "big")
    return bytes(changed)


@pytest.mark.parametrize("packet", [
    ipv4_packet(PAYLOAD_1480)[:19],
    with_byte(ipv4_packet(PAYLOAD_1480), 0, 0x65),
    ipv4_packet(PAYLOAD_1480)[:1000],
    with_byte(ipv4_packet(PAYLOAD_1480), 8, 1)[:10] + ipv4_packet(PAYLOAD_1480)[10:],
    with_byte(ipv4_packet(PAYLOAD_1480, LOOSE_ROUTE), 21, 40),
    with_byte(ipv4_packet(PAYLOAD_1480, LOOSE_ROUTE), 21, 1),
    ipv4_packet(PAYLOAD_1480, NOP * 3 + b"\x83"),
    ipv4_packet(PAYLOAD_1480, flags_offset=0x1FFF),
], ids=["truncated", "version 6", "total past buffer", "bad checksum", "option past header",
        "option length 1", "option type without length", "past 65535 bytes"])
def test_malformed_packets_are_inner_malformed(packet):
    with pytest.raises(DecodeError) as caught:
        fragment_ipv4(packet, 576)
    assert caught.value.reason == DropReason.INNER_MALFORMED


def test_copied_options_stop_at_end_of_list():
    assert copied_options(memoryview(LOOSE_ROUTE + EOL + SECURITY[:4])) == LOOSE_ROUTE + EOL


option_lists = st.lists(st.one_of(
    st.just(NOP),
    st.builds(lambda kind, data: bytes([kind, len(data) + 2]) + data,
              st.sampled_from([0x82, 0x83, 0x89, 0x94, 0x07, 0x44, 0x1E]),
              st.binary(max_size=6)),
), max_size=5).map(b"".join).filter(lambda options: len(options) <= 40)


@given(st.binary(min_size=1, max_size=4000), option_lists, st.integers(68, 1500),
       st.integers(0, 0xFFFF), st.booleans())
def test_fragments_fit_and_reassemble(payload, options, mtu, identification, more):
    packet = ipv4_packet(payload, options, MF if more else 0, identification)
    header_length = fields(packet)[0]
    if mtu - header_length < 8:
        mtu = header_length + 8
    fragments = fragment_ipv4(packet, mtu)
    assert reassemble(fragments) == (0, payload, MF if more else 0)
    for piece in fragments:
        length, total, _, _ = fields(piece)
        assert total == len(piece) <= mtu and checksum_ok(piece[:length])
        assert piece[4:6] == packet[4:6] and piece[8:10] == packet[8:10]     # id, TTL, protocol
        assert piece[1] == packet[1] and piece[12:20] == packet[12:20]       # TOS, addresses
    for piece in fragments[:-1]:
        assert (fields(piece)[1] - fields(piece)[0]) % 8 == 0
