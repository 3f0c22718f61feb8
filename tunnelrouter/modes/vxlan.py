"""VXLAN (RFC 7348) over UDP: Ethernet frames from a TAP device, one VNI per tunnel, any
number of remote VTEPs, a forwarding database (learnt and static MAC -> VTEP) and
head-end replication of broadcast, multicast and unknown unicast.

Tunnels on one local address and port are told apart by their VNI alone: the
source address is checked afterwards, against the tunnel's remotes.
"""

import struct
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from encap.errors import DropReason
from encap.vxlan import FLAG_VNI, HEADER_LENGTH, VNI_MAX, Vxlan, remote_checksum
from encap.wire import ETHERNET_HEADER_LENGTH, VXLAN_PORT

from tunnelrouter.modes.base import (UNREADABLE, Address, Mode, Port, Strict, TunnelConfig,
                                     Underlay, register)
from tunnelrouter.modes.keepalive import EthernetKeepalive

# Linux's max_fdb is unlimited by default; a router facing a spoofing peer needs a bound.
DEFAULT_MAX_FDB = 4096
_FLAGS_AND_VNI = struct.Struct("!B3xI")   # one read per datagram
_FLAG_VNI = FLAG_VNI >> 24   # in the first byte
_TRUNCATED = UNREADABLE[DropReason.TRUNCATED]
_NO_VNI = UNREADABLE[DropReason.VXLAN_NO_VNI_FLAG]


class StaticFdbEntry(Strict):
    mac: StrictStr
    remote: Address

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, value):
        if isinstance(value, int):
            raise ValueError("YAML read this MAC address as a number: put it in quotes")
        if not isinstance(value, str):
            return value
        parts = value.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                      for p in parts):
            raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:00:01")
        return value.lower()


class VxlanConfig(TunnelConfig):
    mode: Literal["vxlan"]
    id: Annotated[StrictInt, Field(ge=0, le=VNI_MAX, description="the VNI")]
    port: Port = VXLAN_PORT
    remote: Address | None = None
    remotes: tuple[Address, ...] = ()
    mac_learning: StrictBool = Field(default=True, alias="mac-learning")
    ageing: Annotated[StrictInt, Field(ge=1, le=86400)] = 300
    max_fdb: Annotated[StrictInt, Field(ge=1, le=1 << 20)] = Field(default=DEFAULT_MAX_FDB,
                                                                    alias="max-fdb")
    fdb: tuple[StaticFdbEntry, ...] = ()
    # Remote checksum offload, each way on its own as Linux's remcsumtx / remcsumrx: both
    # ends must agree, so neither is on by default.
    remote_checksum_tx: StrictBool = Field(default=False, alias="remote-checksum-tx")
    remote_checksum_rx: StrictBool = Field(default=False, alias="remote-checksum-rx")

    @property
    def peers(self):
        return tuple(dict.fromkeys(((self.remote,) if self.remote else ()) + self.remotes))

    def peer_path(self, index: int) -> tuple:
        if self.remote is not None:
            if index == 0:
                return ("remote",)
            index -= 1
        return ("remotes", index)

    def problems(self):
        found = super().problems()
        if not self.peers:
            found.append((("remotes",), "missing: mode vxlan needs 'remote' or 'remotes'"))
        family = self.local.version
        for index, entry in enumerate(self.fdb):
            if entry.remote.version != family:
                found.append((("fdb", index, "remote"), f"{entry.remote} is not IPv{family}"))
        if len(self.fdb) > self.max_fdb:
            found.append((("fdb",), f"{len(self.fdb)} static entries; max-fdb is {self.max_fdb}"))
        return found


class VxlanMode(Mode):
    name = "vxlan"
    config = VxlanConfig
    ethernet = True
    keepalive = EthernetKeepalive
    inner_families = frozenset({4, 6})
    underlay = Underlay.UDP
    underlay_families = frozenset({4, 6})
    distinguished_by = "id"
    unknown_key = DropReason.VXLAN_UNKNOWN_VNI
    link_header = HEADER_LENGTH + ETHERNET_HEADER_LENGTH
    remote_checksum = staticmethod(remote_checksum)

    def codec(self, tunnel: VxlanConfig) -> Vxlan:
        return Vxlan(tunnel.id, tunnel.remote_checksum_rx)

    def keys(self, tunnel: VxlanConfig):
        return (tunnel.id,)

    @staticmethod
    def demux_key(datagram, offset, source):
        try:
            flags, vni_word = _FLAGS_AND_VNI.unpack_from(datagram, offset)
        except struct.error:
            return _TRUNCATED
        if not flags & _FLAG_VNI:
            return _NO_VNI
        return vni_word >> 8

    @staticmethod
    def tunnel_header_length(quote):
        return HEADER_LENGTH if len(quote) >= HEADER_LENGTH else None

    def describe(self, tunnel: VxlanConfig) -> str:
        return f"vxlan VNI {tunnel.id} on {tunnel.local} port {tunnel.port}"

    def conflict_hint(self) -> str:
        return "give each a different id (VNI), or another port"


VXLAN = register(VxlanMode())
