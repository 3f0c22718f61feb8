"""What happens to one packet: device -> wire (encap) and wire -> device (decap).

One object per configured tunnel. The router reads packets into its own
preallocated buffers (``HEADROOM`` bytes in front of every packet) and calls
``from_device`` or ``from_wire``; a datapath clamps the MSS, writes the outer
headers into the headroom, and sends, or validates, strips and delivers. Every
packet it does not pass on is counted under a ``DropReason``; nothing here logs.

The common case costs a length comparison and the outer TTL/TOS rule; a
packet larger than the learnt path MTU takes the slow path (``_too_big``):
fragmentation of a non-DF IPv4 packet, ICMP too-big otherwise.
"""

import abc
import errno
import socket
import struct
import sys

from encap.ecn import (DROP, ECN_MASK, UNUSED_COMBINATIONS, decapsulated_ecn, outer_ecn,
                       packet_ecn, set_packet_ecn)
from encap.errors import DecodeError, DropReason
from encap.fragment import fragment_ipv4
from encap.gre import Gre, header_length as gre_header_length
from encap.icmp import Icmp4Type, Icmp4Unreachable, Icmp6Type, parse_quoted_ipv4, relayed_error
from encap.ipip import IpInIp
from encap.ipv4 import FLAG_DONT_FRAGMENT, Ipv4Outer, Ipv4Tunnel
from encap.mss import clamp_mss
from encap.mtu import IPV4_MINIMUM_MTU, IPV6_MINIMUM_MTU, Mode
from encap.vxlan import HEADER_LENGTH as VXLAN_HEADER_LENGTH, Vxlan
from encap.wire import ETHERNET_HEADER_LENGTH, HEADROOM, IpProto

from tunnelrouter.config import Tunnel
from tunnelrouter.counters import Counters
from tunnelrouter.fdb import Fdb
from tunnelrouter.icmp import IcmpReplies
from tunnelrouter.pmtu import PathMtu
from tunnelrouter.transport import SOCKET_TTL

PROTOCOL_BY_MODE = {Mode.GRE: IpProto.GRE, Mode.GRETAP: IpProto.GRE, Mode.IPIP: IpProto.IPIP,
                    Mode.SIT: IpProto.IPV6}
_ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_IPV6 = b"\x86\xdd"
# sock_extended_err (linux/errqueue.h): errno, origin, type, code, pad, info, data.
EXTENDED_ERROR = struct.Struct("=IBBBBII")
ORIGIN_LOCAL, ORIGIN_ICMP, ORIGIN_ICMP6 = 1, 2, 3


def inner_ip(packet: memoryview, ethernet: bool) -> memoryview | None:
    """The IP packet inside ``packet`` (a TUN packet, or a TAP frame carrying IP)."""
    if not ethernet:
        return packet
    ethertype = packet[12:14]
    if ethertype == _ETHERTYPE_IPV4 or ethertype == _ETHERTYPE_IPV6:
        return packet[ETHERNET_HEADER_LENGTH:]
    return None


def inner_header_fields(packet: memoryview) -> tuple[int, int, bool] | None:
    """``(ttl or hop limit, tos or traffic class, may be fragmented)`` of an IP packet."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[8], packet[1], not packet[6] & 0x40
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[7], ((packet[0] & 0x0F) << 4) | (packet[1] >> 4), False
    return None


class Datapath(abc.ABC):
    """What every kind of tunnel shares: device, counters, MSS, outer TTL/TOS, PMTU, ICMP."""

    def __init__(self, config: Tunnel, device, sock: socket.socket):
        self.config = config
        self.name = config.name
        self.device = device
        self.sock = sock
        self.ethernet = config.mode.is_ethernet
        self.counters = Counters()
        self.icmp = IcmpReplies(config, device, self.counters)
        # The outer TOS is (inner TOS & inherited bits) | fixed bits: DSCP is the
        # upper six bits, ECN the lower two (RFC 6040 normal mode copies them).
        inherit_dscp = config.dscp == "inherit"
        self.tos_inherited = (0xFC if inherit_dscp else 0) | outer_ecn(ECN_MASK, config.ecn)
        self.tos_fixed = 0 if inherit_dscp else config.dscp << 2
        self.inherit_ttl = config.ttl == "inherit"
        self.default_ttl = 64 if self.inherit_ttl else config.ttl
        self.frame_overhead = ETHERNET_HEADER_LENGTH if self.ethernet else 0
        self.discovery = config.pmtu_discovery
        self.pmtu_overhead = config.derived_mtu().overhead.total
        self.pmtu = PathMtu(config.device_mtu, self.pmtu_overhead,
                            config.pmtu_timeout) if config.pmtu_discovery else None
        self._apply_mtu(config.device_mtu)

    # -- MTU ------------------------------------------------------------------------------

    def _apply_mtu(self, mtu: int) -> None:
        """The effective MTU rules the size check, and the MSS clamp when it is 'auto'."""
        self.effective_mtu = mtu
        self.frame_limit = mtu + self.frame_overhead
        self.mss = self.config.mss_limits(mtu)

    def learn_path_mtu(self, peer: str, path_mtu: int, now: float) -> bool:
        """A report that ``peer`` takes at most ``path_mtu`` outer bytes; True if the
        effective MTU changed (the router then updates the routes)."""
        if self.pmtu is None or not self.pmtu.lower(peer, path_mtu, now):
            return False
        self._apply_mtu(self.pmtu.effective)
        return True

    def expire_path_mtu(self, now: float) -> bool:
        if self.pmtu is None or not self.pmtu.expire(now):
            return False
        self._apply_mtu(self.pmtu.effective)
        return True

    # -- per packet helpers ---------------------------------------------------------------

    def _clamp(self, inner: memoryview | None) -> None:
        """Clamp the MSS of ``inner``, the IP packet ``inner_ip`` found (None: not IP)."""
        if self.mss is not None and inner is not None:
            clamp_mss(inner, *self.mss)

    def _outer_fields(self, inner: memoryview | None) -> tuple[int, int, bool]:
        """Outer TTL, TOS and whether the outer packet may be fragmented, for the inner IP
        packet (ttl, dscp and ecn settings; an IPv4 packet's own DF, RFC 2003 §3.1).
        TTL 0: drop."""
        fields = inner_header_fields(inner) if inner is not None else None
        if fields is None:
            return self.default_ttl, self.tos_fixed, False
        ttl, tos, fragmentable = fields
        return (ttl if self.inherit_ttl else self.default_ttl if ttl else 0), \
            (tos & self.tos_inherited) | self.tos_fixed, fragmentable

    def _send_again(self, send, *arguments) -> bool:
        """``send(*arguments)`` once more, after a first attempt failed.

        An ICMP error about an earlier datagram leaves the socket with a pending error
        that the next send returns instead of sending (the error itself waits on the
        error queue for the router); that packet deserves a second try."""
        try:
            send(*arguments)
        except OSError as error:
            reason = DropReason.TOO_BIG if error.errno == errno.EMSGSIZE else \
                DropReason.SEND_FAILED
            self.counters.drops[reason] += 1
            return False
        return True

    def _decapsulate_ecn(self, packet: memoryview, outer_ecn: int) -> bool:
        """RFC 6040 §4.2 on an arriving packet whose outer header is ECN-capable.
        False: drop it (CE on a Not-ECT inner packet)."""
        inner = inner_ip(packet, self.ethernet)
        if inner is None:
            return True  # not IP: nothing to mark
        try:
            inner_ecn = packet_ecn(inner)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return False
        ecn = decapsulated_ecn(inner_ecn, outer_ecn)
        if (inner_ecn, outer_ecn) in UNUSED_COMBINATIONS:
            self.counters.ecn_unused_combinations += 1
        if ecn == inner_ecn:
            return True
        if ecn == DROP:
            self.counters.drops[DropReason.ECN_CE_ON_NOT_ECT] += 1
            return False
        set_packet_ecn(inner, ecn)
        return True

    def _deliver(self, packet: memoryview) -> None:
        self._clamp(inner_ip(packet, self.ethernet))
        try:
            self.device.write(packet)
        except OSError:
            self.counters.drops[DropReason.SEND_FAILED] += 1
            return
        self.counters.rx_packets += 1
        self.counters.rx_bytes += len(packet)

    def from_device(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        """The packet at ``buf[HEADROOM:end]`` came out of the device: send it to the peer."""
        if end - HEADROOM > self.frame_limit:
            self._too_big(buf, view, end, now)
        else:
            self._encapsulate(buf, view, end, now)

    @abc.abstractmethod
    def _encapsulate(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        """Write the outer headers in front of a packet that fits, and send it."""

    # -- the slow paths -------------------------------------------------------------------

    def _too_big(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        """A packet larger than the effective MTU: fragment it if it allows, else tell its
        sender the MTU (RFC 1191, RFC 8201), or carry IPv6 in outer fragments when the
        path is too narrow to tell IPv6 anything (RFC 4213 §3.2)."""
        frame = view[HEADROOM:end]
        inner = inner_ip(frame, self.ethernet)
        header = frame[:ETHERNET_HEADER_LENGTH] if self.ethernet else None
        version = inner[0] >> 4 if inner is not None and len(inner) else 0
        mtu = self.effective_mtu
        if version == 4 and len(inner) >= 20 and not inner[6] << 8 & FLAG_DONT_FRAGMENT:
            self._send_fragments(buf, view, inner, header, now)
            return
        if version == 6 and mtu < IPV6_MINIMUM_MTU and len(inner) <= IPV6_MINIMUM_MTU:
            self._send_outer_fragmented(buf, view, end, now)
            return
        self.counters.drops[DropReason.TOO_BIG] += 1
        if version == 4:
            self.icmp.send(inner, header, Icmp4Type.DEST_UNREACHABLE,
                           Icmp4Unreachable.FRAGMENTATION_NEEDED, mtu, now)
        elif version == 6:
            self.icmp.send(inner, header, Icmp6Type.PACKET_TOO_BIG, 0,
                           max(mtu, IPV6_MINIMUM_MTU), now)

    def _send_fragments(self, buf, view, inner, header, now: float) -> None:
        """RFC 4459 §3: fragment the inner packet, so the far end never reassembles."""
        try:
            fragments = fragment_ipv4(inner, self.effective_mtu)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        prefix = bytes(header) if header is not None else b""
        for fragment in fragments:
            end = HEADROOM + len(prefix) + len(fragment)
            buf[HEADROOM:end] = prefix + fragment
            self.counters.fragments_sent += 1
            self._encapsulate(buf, view, end, now)

    @abc.abstractmethod
    def _send_outer_fragmented(self, buf, view, end: int, now: float) -> None:
        """Send an IPv6 packet of at most 1280 bytes with outer DF clear."""

    # -- errors the WAN reports about our packets -----------------------------------------

    def wan_error(self, origin: int, icmp_type: int, code: int, info: int, peer: str,
                  quoted: memoryview, now: float) -> bool:
        """An error queued on the underlay socket about a packet we sent to ``peer``:
        learn the path MTU from it and relay what RFC 2003 §4 / RFC 4213 §3.4 say to
        relay to the inner sender. True if the effective MTU changed."""
        self.counters.wan_errors += 1
        too_big = origin == ORIGIN_LOCAL or (origin == ORIGIN_ICMP and icmp_type == 3 and
                                             code == 4) or (origin == ORIGIN_ICMP6 and
                                                            icmp_type == 2)
        changed = False
        if too_big:
            # A report must be usable (RFC 1191 routers that send 0 are ignored) and about
            # a packet that was indeed larger, which also rejects most blind forgeries.
            if info < IPV4_MINIMUM_MTU or (origin != ORIGIN_LOCAL and
                                           self.quoted_length(quoted) <= info):
                return False
            changed = self.learn_path_mtu(peer, info, now)
        if origin == ORIGIN_ICMP:
            self._relay(icmp_type, code, info, quoted, now)
        return changed

    def _relay(self, icmp_type: int, code: int, info: int, quoted: memoryview, now: float):
        frame = self.quoted_inner(quoted)
        if frame is None:
            return
        inner = inner_ip(frame, self.ethernet) if len(frame) > ETHERNET_HEADER_LENGTH else None
        if inner is None or len(inner) == 0:
            return
        version = inner[0] >> 4
        relayed = relayed_error(icmp_type, code, version)
        if relayed is None:
            return
        parameter = 0
        if relayed in ((Icmp4Type.DEST_UNREACHABLE,
                        Icmp4Unreachable.FRAGMENTATION_NEEDED),
                       (Icmp6Type.PACKET_TOO_BIG, 0)):
            parameter = min(self.effective_mtu, info - self.pmtu_overhead)
            if parameter < (IPV6_MINIMUM_MTU if version == 6 else IPV4_MINIMUM_MTU):
                return  # nothing true to tell (IPv6 now goes in outer fragments)
            if version == 4 and (len(inner) < 7 or not inner[6] & 0x40):
                return  # its sender allowed fragments: from now on the router makes them
        header = frame[:ETHERNET_HEADER_LENGTH] if self.ethernet else None
        self.icmp.send(inner, header, relayed[0], relayed[1], parameter, now)

    @abc.abstractmethod
    def quoted_length(self, quoted: memoryview) -> int:
        """The length on the wire of the datagram an ICMP error quotes."""

    @abc.abstractmethod
    def quoted_inner(self, quoted: memoryview) -> memoryview | None:
        """The inner packet (or frame) inside what an ICMP error quoted, possibly truncated."""

    def status(self, now: float) -> dict:
        config = self.config
        return {
            "name": self.name, "mode": config.mode.value, "local": str(config.local),
            "peers": [str(p) for p in config.peers], "mtu": config.device_mtu,
            "effective_mtu": self.effective_mtu,
            "path_mtu": self.pmtu.status(now) if self.pmtu is not None else {},
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
        self.outer = Ipv4Outer(config.local.packed, config.remote.packed, PROTOCOL_BY_MODE[mode],
                               ttl=self.default_ttl, tos=self.tos_fixed,
                               dont_fragment=config.pmtu_discovery)
        if mode in (Mode.GRE, Mode.GRETAP):
            self.codec = Gre(key=config.key, checksum=config.checksum, sequence=config.sequence,
                             ethernet=mode == Mode.GRETAP)
        else:
            self.codec = IpInIp(6 if mode == Mode.SIT else 4)
        self.stack = Ipv4Tunnel(self.outer, self.codec)
        self.destination = (str(config.remote), 0)

    def _encapsulate(self, buf: bytearray, view: memoryview, end: int, now: float,
                     fragmentable: bool = False) -> None:
        packet = view[HEADROOM:end]
        inner = inner_ip(packet, self.ethernet)
        self._clamp(inner)
        outer = self.outer
        ttl, outer.tos, inner_fragmentable = self._outer_fields(inner)
        if not ttl:
            self._time_exceeded(packet, now)
            return
        outer.ttl = ttl
        # Outer DF as the inner IPv4 packet's (RFC 2003 §3.1): a packet that may be
        # fragmented is fragmented by a narrow WAN link rather than lost before the path
        # MTU is known; once it is, such packets are fragmented inside (_too_big).
        flags = FLAG_DONT_FRAGMENT if self.discovery and not (fragmentable or
                                                             inner_fragmentable) else 0
        if flags != outer.flags:  # the plain attribute: the property costs a call
            outer.dont_fragment = bool(flags)
        try:
            start = self.stack.encap_into(buf, HEADROOM, end)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        datagram = view[start:end]
        try:
            self.sock.sendto(datagram, self.destination)
        except OSError:
            if not self._send_again(self.sock.sendto, datagram, self.destination):
                return
        self.counters.tx_packets += 1
        self.counters.tx_bytes += end - HEADROOM

    def _time_exceeded(self, packet: memoryview, now: float) -> None:
        """RFC 2003 §3.1 / RFC 1812 §5.3.1: a packet with no hops left is not sent on."""
        self.counters.drops[DropReason.TTL_EXPIRED] += 1
        inner = inner_ip(packet, self.ethernet)
        header = packet[:ETHERNET_HEADER_LENGTH] if self.ethernet else None
        if inner[0] >> 4 == 4:
            self.icmp.send(inner, header, Icmp4Type.TIME_EXCEEDED, 0, 0, now)
        else:
            self.icmp.send(inner, header, Icmp6Type.TIME_EXCEEDED, 0, 0, now)

    def _send_outer_fragmented(self, buf, view, end: int, now: float) -> None:
        self._encapsulate(buf, view, end, now, fragmentable=True)

    def from_wire(self, datagram: memoryview) -> None:
        try:
            packet = self.stack.decap(datagram)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        outer_ecn = datagram[1] & 3
        if outer_ecn and not self._decapsulate_ecn(packet, outer_ecn):
            return
        self._deliver(packet)

    def quoted_length(self, quoted: memoryview) -> int:
        return quoted[2] << 8 | quoted[3] if len(quoted) >= 4 else 0

    def quoted_inner(self, quoted: memoryview) -> memoryview | None:
        try:
            _, _, _, payload = parse_quoted_ipv4(quoted)
        except DecodeError:
            return None
        if isinstance(self.codec, Gre):
            if len(payload) < 4:
                return None
            return payload[gre_header_length(payload[0] << 8):]
        return payload


class VxlanTunnel(Datapath):
    """A VXLAN tunnel end point: a TAP device, a VNI, remotes, and a forwarding database.

    The outer header is the kernel's (a UDP socket): TTL and TOS go with each
    datagram as ancillary data, the DF bit is the socket's, and the arriving
    TOS comes back as ancillary data for RFC 6040 decapsulation.
    """

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
        self._ancillary: dict[int, list[tuple]] = {}
        if config.local.version == 4:
            self._cmsg = (socket.IPPROTO_IP, socket.IP_TTL, socket.IP_TOS)
        else:
            self._cmsg = (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, socket.IPV6_TCLASS)

    def _encapsulate(self, buf: bytearray, view: memoryview, end: int, now: float) -> None:
        frame = view[HEADROOM:end]
        inner = inner_ip(frame, True)
        self._clamp(inner)
        ttl, tos, _ = self._outer_fields(inner)  # DF is the socket's: RFC 7348 §4.3
        if not ttl:
            ttl = self.default_ttl  # bridged frames are not routed: their TTL is not ours
        try:
            start = self.codec.encap_into(buf, HEADROOM, end)
        except DecodeError as error:
            self.counters.drops[error.reason] += 1
            return
        remote = None if frame[0] & 1 else self.fdb.lookup(bytes(frame[0:6]), now)
        sent = False
        if ttl == SOCKET_TTL and tos == 0:
            # The socket's own defaults: no ancillary data to build or parse.
            send, arguments = self.sock.sendto, (view[start:end],)
        else:
            ancillary = self._ancillary.get(ttl << 8 | tos) or self._new_ancillary(ttl, tos)
            send, arguments = self.sock.sendmsg, ((view[start:end],), ancillary, 0)
        for destination in ((remote,) if remote is not None else self.flood):
            try:
                send(*arguments, destination)
                sent = True
            except OSError:
                sent = self._send_again(send, *arguments, destination) or sent
        if sent:
            self.counters.tx_packets += 1
            self.counters.tx_bytes += end - HEADROOM

    def _new_ancillary(self, ttl: int, tos: int) -> list[tuple]:
        """The control messages that set TTL and TOS on one datagram, built once per pair."""
        level, ttl_type, tos_type = self._cmsg
        ancillary = self._ancillary[ttl << 8 | tos] = [
            (level, ttl_type, ttl.to_bytes(4, sys.byteorder)),
            (level, tos_type, tos.to_bytes(4, sys.byteorder))]
        return ancillary

    def _send_outer_fragmented(self, buf, view, end: int, now: float) -> None:
        # RFC 7348 §4.3: a VTEP does not fragment, and the socket's DF is shared.
        self.counters.drops[DropReason.TOO_BIG] += 1

    def from_wire(self, frame: memoryview, source: str, outer_tos: int, now: float) -> None:
        destination = self.destinations.get(source)
        if destination is None:
            self.counters.drops[DropReason.NOT_A_PEER] += 1
            return
        outer_ecn = outer_tos & 3
        if outer_ecn and not self._decapsulate_ecn(frame, outer_ecn):
            return
        if self.fdb.learning and not frame[6] & 1:
            self.fdb.learn(bytes(frame[6:12]), destination, now)
        self._deliver(frame)

    def quoted_length(self, quoted: memoryview) -> int:
        # The quote starts after the UDP header; the outer IP and UDP headers are 28 or 48.
        frame = self.quoted_inner(quoted)
        inner = inner_ip(frame, True) if frame is not None and len(frame) >= 20 else None
        if inner is None or len(inner) < 4:
            return 0
        length = inner[2] << 8 | inner[3] if inner[0] >> 4 == 4 else 40 + (inner[4] << 8 | inner[5])
        return length + self.pmtu_overhead

    def quoted_inner(self, quoted: memoryview) -> memoryview | None:
        # A UDP socket's error quotes what follows the UDP header: VXLAN, then the frame.
        return quoted[VXLAN_HEADER_LENGTH:] if len(quoted) > VXLAN_HEADER_LENGTH else None

    def status(self, now: float) -> dict:
        return super().status(now) | {"vni": self.config.id, "fdb": self.fdb.as_list(now)}
