"""VXLAN (RFC 7348): an 8-byte header in UDP, carrying an Ethernet frame.

::

    |R|R|R|R|I|R|R|R|            Reserved                           |
    |                VXLAN Network Identifier (VNI) |   Reserved    |

Remote checksum offload (draft-herbert-vxlan-rco, Linux's ``remcsumtx``/``remcsumrx``)
uses a reserved flag (C) and the last reserved byte: the sender leaves the inner TCP or
UDP checksum partial (the pseudo-header sum in its field) and says where it starts; the
receiver finishes it. Both ends must agree to it, and the outer UDP checksum then
guards the bytes the inner one would have::

    |R|R|R|R|I|R|R|R|R|R|C|R|R|R|R|R|          Reserved             |
    |                VXLAN Network Identifier (VNI) |O| Csum start  |

O: the checksum is UDP's (start + 6), else TCP's (start + 16); Csum start: where its
coverage starts in the inner frame, in 2-byte units.
"""

import struct

from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import ETHERNET_HEADER_LENGTH, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET

VXLAN_HEADER = struct.Struct("!II")
HEADER_LENGTH = 8
FLAG_VNI = 0x08000000  # the I flag, bit 4 of the first byte
VNI_MAX = 0xFFFFFF
FLAG_REMOTE_CHECKSUM = 0x00200000   # the C flag (Linux's VXLAN_HF_RCO)
_REMOTE_CHECKSUM_UDP = 0x80         # the O bit of the VNI word's last byte
_REMOTE_CHECKSUM_START = 0x7F       # and the start, halved
REMOTE_CHECKSUM_MAX_START = _REMOTE_CHECKSUM_START << 1


def vxlan_decap(view: memoryview) -> tuple[int, memoryview]:
    """Return ``(vni, ethernet_frame)``; reserved bits are ignored (RFC 7348 §5)."""
    if len(view) < HEADER_LENGTH + ETHERNET_HEADER_LENGTH:
        raise DecodeError(DropReason.TRUNCATED)
    flags, vni_word = VXLAN_HEADER.unpack_from(view)
    if not flags & FLAG_VNI:
        raise DecodeError(DropReason.VXLAN_NO_VNI_FLAG)
    return vni_word >> 8, view[HEADER_LENGTH:]


def remote_checksum_field(checksum_start: int, checksum_offset: int) -> int | None:
    """The VNI word's last byte for an inner checksum left to the receiver: coverage from
    ``checksum_start`` in the inner frame, the field ``checksum_offset`` bytes further
    (16: TCP, 6: UDP); None if the header cannot say so (an odd start, one past
    ``REMOTE_CHECKSUM_MAX_START``, another offset): such a packet goes with its checksum
    done."""
    if checksum_start & 1 or not 0 <= checksum_start <= REMOTE_CHECKSUM_MAX_START:
        return None
    if checksum_offset == TCP_CHECKSUM_OFFSET:
        return checksum_start >> 1
    if checksum_offset == UDP_CHECKSUM_OFFSET:
        return _REMOTE_CHECKSUM_UDP | checksum_start >> 1
    return None


def remote_checksum(view, at: int = 0) -> tuple[int, int] | None:
    """``(checksum_start, checksum_offset)`` in the inner frame of the checksum the sender of
    the VXLAN header at ``view[at:]`` left for the receiver to finish; None if it left none
    (or there is no whole header)."""
    if len(view) < at + HEADER_LENGTH:
        return None
    flags, vni_word = VXLAN_HEADER.unpack_from(view, at)
    if not flags & FLAG_REMOTE_CHECKSUM:
        return None
    return (vni_word & _REMOTE_CHECKSUM_START) << 1, \
        UDP_CHECKSUM_OFFSET if vni_word & _REMOTE_CHECKSUM_UDP else TCP_CHECKSUM_OFFSET


class Vxlan(Codec):
    """One VXLAN segment (VNI); a router with several VNIs demuxes with ``vxlan_decap``.

    ``remote_checksum``: datagrams whose inner checksum the sender left to us are taken
    (finishing it is the caller's: :func:`remote_checksum` says where); without it they
    are refused (``vxlan_remote_checksum_off``), as their inner packets are not whole."""

    overhead = HEADER_LENGTH

    def __init__(self, vni: int, remote_checksum: bool = False):
        if not 0 <= vni <= VNI_MAX:
            raise EncapConfigError(f"VNI {vni} is not in 0..{VNI_MAX}")
        self.vni = vni
        self._vni_word = vni << 8
        self._refused_flags = 0 if remote_checksum else FLAG_REMOTE_CHECKSUM

    def encap_into(self, buf, start: int, end: int) -> int:
        if end - start < ETHERNET_HEADER_LENGTH:
            raise DecodeError(DropReason.INNER_MALFORMED)
        header_start = start - HEADER_LENGTH
        VXLAN_HEADER.pack_into(buf, header_start, FLAG_VNI, self._vni_word)
        return header_start

    def mark_remote_checksum(self, buf, header_start: int, field: int) -> None:
        """Say in the header at ``buf[header_start:]`` that the inner checksum is left to
        the receiver, where :func:`remote_checksum_field` put it."""
        VXLAN_HEADER.pack_into(buf, header_start, FLAG_VNI | FLAG_REMOTE_CHECKSUM,
                               self._vni_word | field)

    def decap(self, view: memoryview) -> memoryview:
        # vxlan_decap's checks, in one call per datagram.
        if len(view) < HEADER_LENGTH + ETHERNET_HEADER_LENGTH:
            raise DecodeError(DropReason.TRUNCATED)
        flags, vni_word = VXLAN_HEADER.unpack_from(view)
        if not flags & FLAG_VNI:
            raise DecodeError(DropReason.VXLAN_NO_VNI_FLAG)
        if vni_word != self._vni_word and vni_word >> 8 != self.vni:
            raise DecodeError(DropReason.VXLAN_UNKNOWN_VNI)
        if flags & self._refused_flags:
            raise DecodeError(DropReason.VXLAN_REMOTE_CHECKSUM_OFF)
        return view[HEADER_LENGTH:]
