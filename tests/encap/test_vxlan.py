"""VXLAN (RFC 7348): the 8-byte header, the I flag, the 24-bit VNI."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.vxlan import Vxlan, vxlan_decap

from tests.encap.strategies import ethernet_frames

FRAME = bytes.fromhex("ffffffffffff020000000001" "0806") + bytes(28)


def test_golden_header():
    # I flag (0x08), 24 reserved bits, VNI 0x123456, 8 reserved bits.
    assert Vxlan(0x123456).encap(FRAME) == bytes.fromhex("08000000" "12345600") + FRAME


@given(st.integers(0, 0xFFFFFF), ethernet_frames)
def test_round_trip(vni, frame):
    assert Vxlan(vni).decap_bytes(Vxlan(vni).encap(frame)) == frame
    assert vxlan_decap(memoryview(Vxlan(vni).encap(frame)))[0] == vni


def test_reserved_bits_are_ignored_on_receipt():
    # Every bit but I set: RFC 7348 §5 says reserved fields are ignored.
    wire = bytes.fromhex("ffffffff" "000042ff") + FRAME
    assert Vxlan(0x42).decap_bytes(wire) == FRAME


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
