"""The internet checksum: RFC 1071 sums, RFC 1624 incremental updates."""

from hypothesis import given
from hypothesis import strategies as st

from encap.checksum import (checksum_ok, checksum_update, internet_checksum, ones_complement_sum,
                            pseudo_header_sum)


def reference_sum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word with end-around carry: the slow, obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_example_sum():
    # RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to dd f2.
    assert ones_complement_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_ipv4_header_checksum_golden():
    # A textbook header (192.168.0.1 -> 192.168.0.199, UDP, DF): checksum b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert checksum_ok(header[:10] + bytes.fromhex("b861") + header[12:])


def test_odd_length_pads_with_a_zero_byte():
    assert ones_complement_sum(b"\x12\x34\x56") == ones_complement_sum(b"\x12\x34\x56\x00")


def test_all_zero_data_sums_to_zero_and_anything_else_never_does():
    assert ones_complement_sum(bytes(40)) == 0
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert ones_complement_sum(b"\x80\x00\x7f\xff") == 0xFFFF


def test_rfc1624_section4_example_gives_plus_zero():
    # m = 0x5555 -> m' = 0x3285 with the rest summing to 0xcd7a: HC = 0xdd2f.
    # Eqn. 3 yields 0x0000, where the flawed eqn. 2 would yield 0xffff.
    assert checksum_update(0xDD2F, 0x5555, 0x3285) == 0x0000


@given(st.binary(max_size=3000))
def test_matches_rfc1071_reference_loop(data):
    assert ones_complement_sum(data) == reference_sum(data)


@given(st.binary(min_size=2, max_size=200).filter(lambda b: len(b) % 2 == 0), st.data())
def test_a_stored_checksum_verifies(data, draw):
    data = bytearray(data)
    at = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    data[at:at + 2] = b"\0\0"
    data[at:at + 2] = internet_checksum(data).to_bytes(2, "big")
    assert checksum_ok(data)


@given(st.binary(min_size=2, max_size=200).filter(lambda b: len(b) % 2 == 0), st.data())
def test_incremental_update_equals_recomputation(data, draw):
    # Holds whenever the data is not all zero (the one -0/+0 ambiguity RFC 1624 leaves).
    data = bytearray(data)
    words = len(data) // 2
    at = draw.draw(st.integers(0, words - 1)) * 2
    new_word = draw.draw(st.integers(0, 0xFFFF))
    old_word = int.from_bytes(data[at:at + 2], "big")
    before = internet_checksum(data)
    data[at:at + 2] = new_word.to_bytes(2, "big")
    if any(data):
        assert checksum_update(before, old_word, new_word) == internet_checksum(data)


def test_pseudo_headers_sum_their_fields():
    v4 = pseudo_header_sum(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, 28)
    assert v4 == reference_sum(bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 28]))
    src, dst = bytes(range(16)), bytes(range(16, 32))
    v6 = pseudo_header_sum(src, dst, 17, 1000)
    assert v6 == reference_sum(src + dst + (1000).to_bytes(4, "big") + bytes([0, 0, 0, 17]))
