"""What happens to one packet: device -> wire (encap) and wire -> device (decap).

One object per configured tunnel. The router reads packets into its own
preallocated buffers (``HEADROOM`` bytes in front of every packet) and calls
``from_device`` or ``from_wire``; a datapath clamps the MSS, writes the outer
headers into the headroom, and sends, or validates, strips and delivers. Every
packet it does not pass on is counted under a ``DropReason``; nothing here logs.
"""

import errno
import socket

from encap.codec import Stack
from encap.errors import DecodeError, DropReason
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer
from encap.mss import clamp_mss
from encap.mtu import Mode
from encap.vxlan import Vxlan
from encap.wire import ETHERNET_HEADER_LENGTH, HEADROOM, IpProto

from tunnelrouter.config import Tunnel
from tunnelrouter.counters import Counters
from tunnelrouter.fdb import Fdb

PROTOCOL_BY_MODE = {Mode.GRE: IpProto.GRE, Mode.GRETAP: IpProto.GRE, Mode.IPIP: IpProto.IPIP,
                    Mode.SIT: IpProto.IPV6}
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_IPV6 = b"\x86\xdd"


def inner_ip(packet: memoryview, ethernet: bool) -> memoryview | None:
    """The IP packet inside ``packet`` (a TUN packet, or a TAP frame carrying IP)."""
    if not ethernet:
        return packet
    ethertype = packet[12:14]
    if ethertype == _ETHERTYPE_IPV4 or ethertype == _ETHERTYPE_IPV6:
        return packet[ETHERNET_HEADER_LENGTH:]
    return None


def inner_ttl_tos(packet: memoryview) -> tuple[int, int] | None:
    """``(ttl or hop limit, tos or traffic class)`` of an IP packet, for 'inherit'."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[8], packet[1]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[7], ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
    return None


class Datapath:
    """What both kinds of tunnel share: device, counters, MSS clamping."""

    def __init__(self, config: Tunnel, device, sock: socket.socket):
        self.config = config
        self.name = config.name
        self.device = device
        self.sock = sock
        self.ethernet = config.mode.is_ethernet
        self.mss = config.mss_limits()
        self.counters = Counters()

    def _clamp(self, packet: memoryview) -> None:
        if self.mss is not None:
            inner = inner_ip(packet, self.ethernet)
            if inner is not None:
                clamp_mss(inner, *self.mss)

    def _send(self, datagram: memoryview, destination: tuple) -> bool:
        try:
            self.sock.sendto(datagram, destination)
        except OSError as error:
            reason = DropReason.TOO_BIG if error.errno == errno.EMSGSIZE else DropReason.SEND_FAILED
            self.counters.drops[reason] += 1
            return False
        return True

    def _deliver(self, packet: memoryview) -> None:
        self._clamp(packet)
        try:
            self.device.write(packet)
        except OSError:
            self.counters.drops[DropReason.SEND_FAILED] += 1
            return
        self.counters.rx_packets += 1
        self.counters.rx_bytes += len(packet)

    def status(self, now: float) -> dict:
        config = self.config
        return {
            "name": self.name, "mode": config.mode.value, "local": str(config.local),
            "peers": [str(p) for p in config.peers], "mtu": config.device_mtu,
            "mss_clamp": "off" if self.mss is None else {
                f"ipv{family}": mss for family, mss in zip((4, 6), self.mss)
                if family in config.mode.inner_families},
            "counters": self.counters.as_dict(),
        }


class RawTunnel(Datapath):
    """gre, gretap, ipip and sit: outer IPv4 written by us, sent on a raw socket."""

    def __init__(self, config: Tunnel, device, sock: socket.socket):
        super().__init__(config, device, sock)
        mode = config.mode
        protocol = PROTOCOL_BY_MODE[mode]
        self.default_ttl = 64 if config.ttl == "inherit" else config.ttl
        self.default_tos = 0 if config.tos == "inherit" else config.tos
        self.inherit_ttl = config.ttl == "inherit"
        self.inherit_tos = config.tos == "inherit"
        self.outer = Ipv4Outer(config.local.packed, config.remote.packed, protocol,
                               ttl=self.default_ttl, tos=self.default_tos)
        if mode in (Mode.GRE, Mode.GRETAP):
            self.codec = Gre(key=config.key, checksum=config.checksum, sequence=config.sequence,
                             ethernet=mode == Mode.GRETAP)
        else:
            self.codec = IpInIp(6 if mode == Mode.SIT else 4)
        self.stack = Stack(self.outer, self.codec)
        self.destination = (str(config.remote), 0)

    def from_device(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        packet = view[HEADROOM:end]
        self._clamp(packet)
        if self.inherit_ttl or self.inherit_tos:
            self._inherit(packet)
        try:
            start = self.stack.encap_into(buf, HEADROOM, end)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        if self._send(view[start:end], self.destination):
            self.counters.tx_packets += 1
            self.counters.tx_bytes += end - HEADROOM

    def _inherit(self, packet: memoryview) -> None:
        inner = inner_ip(packet, self.ethernet)
        values = inner_ttl_tos(inner) if inner is not None else None
        ttl, tos = values if values is not None else (self.default_ttl, self.default_tos)
        if self.inherit_ttl:
            # The inner TTL is what is left for the far side: the tunnel is one hop.
            self.outer.ttl = ttl if ttl > 0 else self.default_ttl
        if self.inherit_tos:
            self.outer.tos = tos

    def from_wire(self, datagram: memoryview) -> None:
        try:
            packet = self.stack.decap(datagram)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        self._deliver(packet)


class VxlanTunnel(Datapath):
    """A VXLAN tunnel end point: a TAP device, a VNI, remotes, and a forwarding database."""

    def __init__(self, config: Tunnel, device, sock: socket.socket):
        super().__init__(config, device, sock)
        self.codec = Vxlan(config.id)
        # Source address -> where to send: one lookup checks the peer and gives the
        # destination to learn, the same tuple every time.
        self.destinations = {str(peer): (str(peer), config.port) for peer in config.peers}
        self.flood = tuple(self.destinations.values())
        static = {bytes.fromhex(entry.mac.replace(":", "")): (str(entry.remote), config.port)
                  for entry in config.fdb}
        self.fdb = Fdb(config.ageing, config.mac_learning, static)

    def from_device(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        frame = view[HEADROOM:end]
        self._clamp(frame)
        try:
            start = self.codec.encap_into(buf, HEADROOM, end)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        datagram = view[start:end]
        remote = None if frame[0] & 1 else self.fdb.lookup(bytes(frame[0:6]), now)
        sent = False
        for destination in ((remote,) if remote is not None else self.flood):
            sent = self._send(datagram, destination) or sent
        if sent:
            self.counters.tx_packets += 1
            self.counters.tx_bytes += end - HEADROOM

    def from_wire(self, frame: memoryview, source: str, now: float) -> None:
        destination = self.destinations.get(source)
        if destination is None:
            self.counters.drops[DropReason.NOT_A_PEER] += 1
            return
        if self.fdb.learning and not frame[6] & 1:
            self.fdb.learn(bytes(frame[6:12]), destination, now)
        self._deliver(frame)

    def status(self, now: float) -> dict:
        return super().status(now) | {"vni": self.config.id, "fdb": self.fdb.as_list(now)}
