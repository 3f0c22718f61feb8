"""One tunnel endpoint driven the way the router drives it, without the router.

:class:`Harness` feeds device packets and wire datagrams to an endpoint through
:class:`~tunnelrouter.tunnel.batch.Batch` objects, hands it WAN errors, and
collects what it asks of the I/O side: datagrams to send (the batch's packets,
destinations and ancillary marking, then the outbox's slow-path datagrams),
packets for its device (what it decapsulated, and the ICMP errors it writes
back to inner senders). ``wan_error_about`` quotes one of our datagrams the way
``tunnelrouter/io/underlay.py`` reads an error off the error queue.

The packets on the other side of the tunnel are built with scapy, not with
the codecs under test.
"""

from __future__ import annotations

from typing import NamedTuple

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN

from encap.wire import HEADROOM
from tunnelrouter.config import parse_config
from tunnelrouter.modes import TunnelConfig, Underlay
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

LOCAL, REMOTE, OTHER, THIRD, STRANGER = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.9.9.9"
HOST_A, HOST_B = "192.168.1.10", "192.168.2.20"
HOST_A6, HOST_B6 = "fd01::10", "fd02::20"
TUNNEL_ADDRESS, TUNNEL_ADDRESS6 = "192.168.9.1", "fd09::1"
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
NOW = 100.0
VNI = 42
# What a WAN router quotes of our datagram: as much as fits in 576 bytes (RFC 1812 §4.3.2.3)
# after its own IPv4 and ICMP headers; of a UDP datagram the socket hands over the payload.
RAW_QUOTE = 576 - 20 - 8
UDP_QUOTE = RAW_QUOTE - 20 - 8

# The smallest tunnel of each mode; tests add the keys they are about.
BODIES = {
    "gre": {"mode": "gre", "local": LOCAL, "remote": REMOTE,
            "addresses": [f"{TUNNEL_ADDRESS}/24", f"{TUNNEL_ADDRESS6}/64"]},
    "gretap": {"mode": "gretap", "local": LOCAL, "remote": REMOTE,
               "addresses": [f"{TUNNEL_ADDRESS}/24", f"{TUNNEL_ADDRESS6}/64"]},
    "ipip": {"mode": "ipip", "local": LOCAL, "remote": REMOTE,
             "addresses": [f"{TUNNEL_ADDRESS}/24"]},
    "sit": {"mode": "sit", "local": LOCAL, "remote": REMOTE,
            "addresses": [f"{TUNNEL_ADDRESS6}/64"]},
    "vxlan": {"mode": "vxlan", "local": LOCAL, "remotes": [REMOTE], "id": VNI,
              "addresses": [f"{TUNNEL_ADDRESS}/24", f"{TUNNEL_ADDRESS6}/64"]},
}
MODES = tuple(BODIES)


def tunnel_configs(bodies: dict[str, dict]) -> dict[str, TunnelConfig]:
    """Several tunnels from one configuration (so the checks across tunnels run too)."""
    return parse_config({"tunnels": bodies}).tunnels


def tunnel_config(mode: str = "gre", name: str = "t0", **keys) -> TunnelConfig:
    """A tunnel of ``mode`` with ``keys`` (YAML spelling) over the defaults of BODIES."""
    return tunnel_configs({name: BODIES[mode] | keys})[name]


class Sent(NamedTuple):
    data: bytes           # a raw endpoint's: from the outer IPv4 header; a UDP one's: the payload
    destinations: tuple
    marking: int | None   # ttl << 8 | tos for a UDP socket's ancillary data


def header_offset(datagram: bytes, underlay: Underlay) -> int:
    """Where a socket read says the tunnel header starts (a raw socket: after the IPv4 header)."""
    if underlay is Underlay.UDP or not datagram:
        return 0
    return (datagram[0] & 0x0F) * 4


def wire_batch(datagrams, sources, underlay: Underlay, tos=None) -> Batch:
    """``datagrams`` as a socket read leaves them; a raw socket reports the outer TOS of each
    from its header, a UDP socket what ``tos`` says (default 0)."""
    datagrams = [bytes(d) for d in datagrams]
    if isinstance(sources, str):
        sources = [sources] * len(datagrams)
    if tos is None:
        tos = [d[1] if underlay is Underlay.RAW and len(d) > 1 else 0 for d in datagrams]
    elif isinstance(tos, int):
        tos = [tos] * len(datagrams)
    batch = Batch(max(len(datagrams), 1), max([HEADROOM, *map(len, datagrams)]) + HEADROOM)
    return batch.fill_from_wire(datagrams, sources,
                                [header_offset(d, underlay) for d in datagrams], tos)


def device_batch(packets) -> Batch:
    packets = [bytes(p) for p in packets]
    batch = Batch(max(len(packets), 1), HEADROOM + max([1, *map(len, packets)]))
    return batch.fill_from_device(packets)


def wan_error_about(datagram: bytes, underlay: Underlay, origin: ErrorOrigin = ErrorOrigin.ICMP4,
                    icmp_type: int = 3, code: int = 4, info: int = 0, peer: str = REMOTE,
                    cut: int | None = None) -> WanError:
    """The error about ``datagram`` (as sent) the I/O side reads off the socket's error queue.

    A raw socket's quote holds the outer IPv4 header: the error starts after it, and
    ``length`` is the total length it gives. A UDP socket's quote is the payload,
    and says nothing of the length on the wire."""
    if underlay is Underlay.RAW:
        quoted = datagram[:RAW_QUOTE if cut is None else cut]
        if len(quoted) < 20:
            return WanError(origin, icmp_type, code, info, peer, memoryview(b""), 0)
        return WanError(origin, icmp_type, code, info, peer,
                        memoryview(quoted[(quoted[0] & 0x0F) * 4:]), quoted[2] << 8 | quoted[3])
    quoted = datagram[:UDP_QUOTE if cut is None else cut]
    return WanError(origin, icmp_type, code, info, peer, memoryview(quoted), 0)


class Harness:
    """One endpoint and everything it has asked for so far."""

    def __init__(self, mode: str = "gre", config: TunnelConfig | None = None, **keys):
        self.config = config if config is not None else tunnel_config(mode, **keys)
        self.endpoint = endpoint_for(self.config)
        self.underlay = self.config.kind.underlay
        self.sent: list[Sent] = []
        self.replies: list[bytes] = []      # ICMP errors written into the tunnel's device
        self.delivered: list[bytes] = []    # decapsulated packets for the device
        self.mtu_changes = 0

    @property
    def counters(self):
        return self.endpoint.counters

    @property
    def drops(self) -> dict[str, int]:
        return self.endpoint.counters.drops_by_label()

    def drain(self) -> list[Sent]:
        """Take what waits in the outbox, as the router's flush does."""
        outbox = self.endpoint.outbox
        self.replies += outbox.device_packets
        sent = [Sent(datagram, destinations, marking)
                for datagram, destinations, marking, _ in outbox.datagrams]
        self.sent += sent
        self.mtu_changes += outbox.mtu_changed
        outbox.device_packets.clear()
        outbox.datagrams.clear()
        outbox.mtu_changed = False
        return sent

    def send(self, *packets, now: float = NOW, batch: Batch | None = None) -> list[Sent]:
        """Packets read from the device; returns the datagrams that go out for them."""
        batch = device_batch(packets) if batch is None else batch.fill_from_device(
            [bytes(p) for p in packets])
        self.endpoint.encapsulate(batch, now)
        sent = [Sent(bytes(batch.packets[i]), batch.destinations[i], batch.ancillary[i])
                for i in range(batch.count) if batch.packets[i] is not None]
        self.sent += sent
        return sent + self.drain()

    def receive(self, *datagrams, source: str = REMOTE, tos: int | None = None,
                now: float = NOW) -> list[bytes]:
        """Datagrams read from the underlay socket; returns what reaches the device."""
        batch = wire_batch(datagrams, source, self.underlay, tos)
        delivered = []
        for i in range(batch.count):
            if self.endpoint.decapsulate(batch, i, batch.views[i][:batch.ends[i]], now):
                delivered.append(bytes(batch.packets[i]))
        self.delivered += delivered
        self.drain()
        return delivered

    def error(self, about: bytes, origin: ErrorOrigin = ErrorOrigin.ICMP4, icmp_type: int = 3,
              code: int = 4, info: int = 0, peer: str = REMOTE, cut: int | None = None,
              now: float = NOW) -> list[bytes]:
        """A WAN error about the datagram ``about``; returns the ICMP errors it relays."""
        before = len(self.replies)
        self.endpoint.wan_error(wan_error_about(about, self.underlay, origin, icmp_type, code,
                                                info, peer, cut), now)
        self.drain()
        return self.replies[before:]

    def learn_path_mtu(self, path_mtu: int, peer: str = REMOTE, now: float = NOW) -> None:
        """What the local stack's EMSGSIZE teaches (the quickest way to a learnt path MTU)."""
        self.endpoint.wan_error(WanError(ErrorOrigin.LOCAL, 0, 0, path_mtu, peer,
                                         memoryview(b""), 0), now)
        self.drain()

    def tick(self, now: float) -> None:
        self.endpoint.tick(now)
        self.drain()


# -- packets from the hosts and datagrams from the peers (scapy) ----------------------------

def icmp_checksum_ok(reply: bytes, ethernet: bool = False) -> bool:
    """Whether scapy, computing the ICMP checksum of ``reply`` (an IP packet, or an Ethernet
    frame carrying one) afresh, gets the one it carries."""
    packet = reply[14:] if ethernet else reply
    parse, field = (IP, "chksum") if packet[0] >> 4 == 4 else (IPv6, "cksum")
    parsed = parse(packet)
    sent = getattr(parsed.payload, field)
    delattr(parsed.payload, field)
    return getattr(parse(bytes(parsed)).payload, field) == sent


def inner4(size: int = 100, df: bool = True, tos: int = 0, ttl: int = 64, src: str = HOST_A,
           dst: str = HOST_B) -> bytes:
    return bytes(IP(src=src, dst=dst, tos=tos, ttl=ttl, flags="DF" if df else 0, id=7)
                 / UDP(sport=1, dport=2) / bytes(size - 28))


def inner6(size: int = 100, tc: int = 0, hlim: int = 64, src: str = HOST_A6,
           dst: str = HOST_B6) -> bytes:
    return bytes(IPv6(src=src, dst=dst, tc=tc, hlim=hlim) / UDP(sport=1, dport=2)
                 / bytes(size - 48))


def frame(packet: bytes, src: str = MAC_A, dst: str = MAC_B) -> bytes:
    """``packet`` in an Ethernet frame (the EtherType from its version nibble)."""
    ethertype = 0x86DD if packet and packet[0] >> 4 == 6 else 0x0800
    return bytes(Ether(src=src, dst=dst, type=ethertype)) + bytes(packet)


def gre_datagram(payload: bytes, key: int | None = None, sequence: int | None = None,
                 checksum: bool = False, ethernet: bool = False, tos: int = 0,
                 src: str = REMOTE, dst: str = LOCAL, protocol: int | None = None) -> bytes:
    """A GRE datagram from a peer, outer IPv4 header included."""
    if protocol is None:
        protocol = 0x6558 if ethernet else 0x86DD if payload[0] >> 4 == 6 else 0x0800
    gre = GRE(proto=protocol, key_present=key is not None, key=key,
              seqnum_present=sequence is not None, sequence_number=sequence,
              chksum_present=checksum)
    return bytes(IP(src=src, dst=dst, tos=tos, id=1, proto=47) / gre / payload)


def ipip_datagram(packet: bytes, tos: int = 0, src: str = REMOTE, dst: str = LOCAL) -> bytes:
    """An ipip (protocol 4) or sit (protocol 41) datagram, by the inner version."""
    protocol = 41 if packet[0] >> 4 == 6 else 4
    return bytes(IP(src=src, dst=dst, tos=tos, id=1, proto=protocol) / packet)


def vxlan_datagram(ethernet_frame: bytes, vni: int = VNI) -> bytes:
    """A VXLAN UDP payload: the I flag, the VNI, the frame."""
    return bytes(VXLAN(flags="Instance", vni=vni, NextProtocol=0)) + bytes(ethernet_frame)

