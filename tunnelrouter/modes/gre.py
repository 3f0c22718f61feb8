"""GRE (RFC 2784, RFC 2890 key and sequence number) over a raw IP socket: ``gre`` carries IP
packets from a TUN device, ``gretap`` Ethernet frames from a TAP device (protocol 0x6558).

Several GRE tunnels between the same two addresses are told apart by their key, as
the kernel's are; gre and gretap tunnels share the one raw socket for protocol 47.
"""

import struct
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt

from encap.errors import DropReason
from encap.gre import FLAG_CHECKSUM, FLAG_KEY, Gre, gre_key, header_length
from encap.wire import IpProto

from tunnelrouter.modes.base import Address, Mode, TunnelConfig, Underlay, register
from tunnelrouter.modes.keepalive import EthernetKeepalive, GreKeepalive

GRE_HEADER_MINIMUM = 4
_FLAGS_AND_WORDS = struct.Struct("!H2xII")


class GreConfig(TunnelConfig):
    mode: Literal["gre", "gretap"]
    remote: Address
    # Symmetric, as `ip tunnel ... key K csum seq`: sent, and required on receipt.
    key: Annotated[StrictInt, Field(ge=0, le=0xFFFFFFFF)] | None = None
    sequence: StrictBool = False
    checksum: StrictBool = False

    @property
    def peers(self):
        return (self.remote,)


class GreMode(Mode):
    name = "gre"
    config = GreConfig
    keepalive = GreKeepalive
    ethernet = False
    inner_families = frozenset({4, 6})
    underlay = Underlay.RAW
    protocol = IpProto.GRE
    distinguished_by = "key"
    unknown_key = DropReason.GRE_WRONG_KEY
    peer_owns_unknown_keys = True

    def codec(self, tunnel: GreConfig) -> Gre:
        return Gre(key=tunnel.key, checksum=tunnel.checksum, sequence=tunnel.sequence,
                   ethernet=self.ethernet)

    def keys(self, tunnel: GreConfig):
        return ((str(tunnel.remote), tunnel.key),)

    @staticmethod
    def demux_key(datagram, offset, source):
        # One read of the flags and the two words where the key can be: per datagram.
        if len(datagram) < offset + _FLAGS_AND_WORDS.size:
            return source, gre_key(datagram[offset:])
        flags, first, second = _FLAGS_AND_WORDS.unpack_from(datagram, offset)
        if not flags & FLAG_KEY:
            return source, None
        return source, second if flags & FLAG_CHECKSUM else first

    def carries_super_packets(self, tunnel: GreConfig) -> bool:
        # A sequence number or a checksum belongs to each packet (Linux's GRE turns GSO
        # off for sequence numbers too).
        return not (tunnel.sequence or tunnel.checksum)

    def keeps_order(self, tunnel: GreConfig) -> bool:
        return tunnel.sequence

    def describe(self, tunnel: GreConfig) -> str:
        key = "without a key" if tunnel.key is None else f"with key {tunnel.key}"
        return f"{super().describe(tunnel)} {key}"

    def codec_status(self, codec: Gre) -> dict:
        return {"sequence_epochs": codec.epochs} if codec.sequence else {}

    @staticmethod
    def tunnel_header_length(quote):
        if len(quote) < GRE_HEADER_MINIMUM:
            return None
        return header_length(quote[0] << 8)


class GretapMode(GreMode):
    name = "gretap"
    ethernet = True
    keepalive = EthernetKeepalive


GRE = register(GreMode())
GRETAP = register(GretapMode())
