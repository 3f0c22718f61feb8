"""VXLAN (RFC 7348): an 8-byte header in UDP, carrying an Ethernet frame.

::

    |R|R|R|R|I|R|R|R|            Reserved                           |
    |                VXLAN Network Identifier (VNI) |   Reserved    |
"""

import struct

from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import ETHERNET_HEADER_LENGTH

VXLAN_HEADER = struct.Struct("!II")
HEADER_LENGTH = 8
FLAG_VNI = 0x08000000  # the I flag, bit 4 of the first byte
VNI_MAX = 0xFFFFFF


def vxlan_decap(view: memoryview) -> tuple[int, memoryview]:
    """Return ``(vni, ethernet_frame)``; reserved bits are ignored (RFC 7348 §5)."""
    if len(view) < HEADER_LENGTH + ETHERNET_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    flags, vni_word = VXLAN_HEADER.unpack_from(view)
    if not flags & FLAG_VNI:
        raise DecodeError(DropReason.VXLAN_NO_VNI_FLAG)
    return vni_word >> 8, view[HEADER_LENGTH:]


class Vxlan(Codec):
    """One VXLAN segment (VNI); a router with several VNIs demuxes with ``vxlan_decap``."""

    overhead = HEADER_LENGTH

    def __init__(self, vni: int):
        if not 0 <= vni <= VNI_MAX:
            raise EncapConfigError(f"VNI {vni} is not in 0..{VNI_MAX}")
        self.vni = vni
        self._vni_word = vni << 8

    def encap_into(self, buf, start: int, end: int) -> int:
        if end - start < ETHERNET_HEADER_LENGTH:
            raise DecodeError(DropReason.INNER_MALFORMED)
        header_start = start - HEADER_LENGTH
        VXLAN_HEADER.pack_into(buf, header_start, FLAG_VNI, self._vni_word)
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        # vxlan_decap's checks, in one call per datagram.
        if len(view) < HEADER_LENGTH + ETHERNET_HEADER_LENGTH:
            raise DecodeError(DropReason.TRUNCATED)
        flags, vni_word = VXLAN_HEADER.unpack_from(view)
        if not flags & FLAG_VNI:
            raise DecodeError(DropReason.VXLAN_NO_VNI_FLAG)
        if vni_word != self._vni_word and vni_word >> 8 != self.vni:
            raise DecodeError(DropReason.VXLAN_UNKNOWN_VNI)
        return view[HEADER_LENGTH:]
