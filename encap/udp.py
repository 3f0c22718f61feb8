"""UDP headers, for stacks built without the kernel's UDP socket (captures, tests, raw paths)."""

import struct

from encap.checksum import checksum_ok, internet_checksum, pseudo_header_sum
from encap.codec import Codec
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.wire import UDP_HEADER_LENGTH, IpProto

UDP_HEADER = struct.Struct("!HHHH")
CHECKSUM_FIELD = struct.Struct("!H")


class Udp(Codec):
    """A UDP header between two fixed addresses; the checksum covers the pseudo-header."""

    overhead = UDP_HEADER_LENGTH

    def __init__(self, src: bytes, dst: bytes, src_port: int, dst_port: int, checksum: bool = True):
        if len(src) != len(dst) or len(src) not in (4, 16):
            raise EncapConfigError("UDP needs two packed IPv4 or two packed IPv6 addresses")
        for port in (src_port, dst_port):
            if not 0 <= port <= 0xFFFF:
                raise EncapConfigError(f"port {port} is not in 0..65535")
        self.src, self.dst, self.src_port, self.dst_port = src, dst, src_port, dst_port
        # RFC 8200 §8.1 forbids a zero UDP checksum over IPv6 (RFC 6935 relaxes
        # it for tunnels, but Linux only accepts that when told to).
        self.checksum = checksum or len(src) == 16

    def encap_into(self, buf, start: int, end: int) -> int:
        header_start = start - UDP_HEADER_LENGTH
        length = end - header_start
        UDP_HEADER.pack_into(buf, header_start, self.src_port, self.dst_port, length, 0)
        if self.checksum:
            initial = pseudo_header_sum(self.src, self.dst, IpProto.UDP, length)
            checksum = internet_checksum(memoryview(buf)[header_start:end], initial) or 0xFFFF
            CHECKSUM_FIELD.pack_into(buf, header_start + 6, checksum)
        return header_start

    def decap(self, view: memoryview) -> memoryview:
        if len(view) < UDP_HEADER_LENGTH:
            raise DecodeError(DropReason.TRUNCATED)
        # Ports are the socket's business; the pseudo-header sum is the same
        # whichever way round the two addresses are.
        _, _, length, checksum = UDP_HEADER.unpack_from(view)
        if length < UDP_HEADER_LENGTH or length > len(view):
            raise DecodeError(DropReason.UDP_BAD_LENGTH)
        datagram = view[:length]
        if checksum and not checksum_ok(datagram,
                                        pseudo_header_sum(self.src, self.dst, IpProto.UDP, length)):
            raise DecodeError(DropReason.UDP_BAD_CHECKSUM)
        return datagram[UDP_HEADER_LENGTH:]
