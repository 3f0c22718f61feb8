"""VXLAN (RFC 7348): the 8-byte header, the I flag, the 24-bit VNI; remote checksum offload
(draft-herbert-vxlan-rco, as Linux's vxlan driver writes it)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.vxlan import (REMOTE_CHECKSUM_MAX_START, Vxlan, remote_checksum,
                         remote_checksum_field, vxlan_decap)

from tests.encap.strategies import ethernet_frames

FRAME = bytes.fromhex("ffffffffffff020000000001" "0806") + bytes(28)
HEADROOM_FOR_TESTS = 16


def test_golden_header():
    # I flag (0x08), 24 reserved bits, VNI 0x123456, 8 reserved bits.
    assert Vxlan(0x123456).encap(FRAME) == bytes.fromhex("08000000" "12345600") + FRAME


@given(st.integers(0, 0xFFFFFF), ethernet_frames)
def test_round_trip(vni, frame):
    assert Vxlan(vni).decap_bytes(Vxlan(vni).encap(frame)) == frame
    assert vxlan_decap(memoryview(Vxlan(vni).encap(frame)))[0] == vni


def test_reserved_bits_are_ignored_on_receipt():
    # Every bit set but remote checksum offload's C: RFC 7348 §5 says reserved fields are
    # ignored.
    wire = bytes.fromhex("ffdfffff" "000042ff") + FRAME
    assert Vxlan(0x42).decap_bytes(wire) == FRAME


@pytest.mark.parametrize("start, offset, header", [
    (34, 16, "08200000" "12345611"),   # TCP in IPv4 behind Ethernet: 34 / 2 = 0x11
    (54, 6, "08200000" "1234569b"),    # UDP in IPv6: O bit, 54 / 2 = 0x1b
    (0, 16, "08200000" "12345600"),
    (254, 6, "08200000" "123456ff"),
])
def test_golden_remote_checksum_headers(start, offset, header):
    # As Linux's vxlan_build_skb writes them: C is bit 21 of the flags word, the VNI
    # word's last byte holds start / 2 and the O bit for UDP.
    codec = Vxlan(0x123456, remote_checksum=True)
    buf = bytearray(HEADROOM_FOR_TESTS) + FRAME
    header_start = codec.encap_into(buf, HEADROOM_FOR_TESTS, len(buf))
    codec.mark_remote_checksum(buf, header_start, remote_checksum_field(start, offset))
    assert bytes(buf[header_start:header_start + 8]) == bytes.fromhex(header)
    assert remote_checksum(buf[header_start:]) == (start, offset)
    assert codec.decap_bytes(buf[header_start:]) == FRAME


@given(st.integers(0, REMOTE_CHECKSUM_MAX_START // 2), st.sampled_from([6, 16]),
       st.integers(0, 0xFFFFFF))
def test_every_start_and_offset_the_header_can_say_comes_back(half, offset, vni):
    codec = Vxlan(vni, remote_checksum=True)
    buf = bytearray(8)
    codec.mark_remote_checksum(buf, 0, remote_checksum_field(half * 2, offset))
    assert remote_checksum(buf) == (half * 2, offset)
    assert vxlan_decap(memoryview(buf + FRAME))[0] == vni   # the VNI is untouched


@pytest.mark.parametrize("start, offset", [(35, 16), (256, 16), (-2, 16), (34, 4), (34, 0)])
def test_what_the_header_cannot_say_is_none(start, offset):
    assert remote_checksum_field(start, offset) is None


def test_no_remote_checksum_without_the_c_flag():
    assert remote_checksum(bytes.fromhex("08000000" "000042ff")) is None


def test_a_checksum_left_to_a_receiver_that_did_not_agree_is_refused():
    wire = bytes.fromhex("08200000" "00004211") + FRAME
    with pytest.raises(DecodeError) as caught:
        Vxlan(0x42).decap(memoryview(wire))
    assert caught.value.reason == DropReason.VXLAN_REMOTE_CHECKSUM_OFF
    assert Vxlan(0x42, remote_checksum=True).decap_bytes(wire) == FRAME


@pytest.mark.parametrize("wire, reason", [
    (bytes.fromhex("00000000" "00004200") + FRAME, DropReason.VXLAN_NO_VNI_FLAG),
    (bytes.fromhex("0c000000" "00004200")[:4] + bytes(4) + FRAME, DropReason.VXLAN_UNKNOWN_VNI),
    (bytes.fromhex("08000000" "00004300") + FRAME, DropReason.VXLAN_UNKNOWN_VNI),
    (bytes.fromhex("08000000" "00004200") + FRAME[:13], DropReason.TRUNCATED),
    (bytes.fromhex("080000"), DropReason.TRUNCATED),
], ids=["no I flag", "vni 0", "other vni", "short frame", "short header"])
def test_refused(wire, reason):
    with pytest.raises(DecodeError) as caught:
        Vxlan(0x42).decap(memoryview(wire))
    assert caught.value.reason == reason


def test_frame_shorter_than_ethernet_header_is_not_sent():
    with pytest.raises(DecodeError):
        Vxlan(1).encap(bytes(13))


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_vni_out_of_range_is_a_config_error(vni):
    with pytest.raises(EncapConfigError):
        Vxlan(vni)
