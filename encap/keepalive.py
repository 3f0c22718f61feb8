"""Keepalive probes: inner packets a tunnel's peer sends back without being told to.

GRE (as Cisco, Juniper and MikroTik routers send them): the probe carries an
inner IPv4 packet from the peer's address to ours whose payload is a GRE header
with protocol 0. The peer decapsulates it and routes the inner packet, a plain
GRE datagram, back to us: any RFC 2784 peer reflects it without configuration
(Linux needs ``accept_local`` on its tunnel device, or it takes a packet from
its own address for a martian).

IP-in-IP: the same trick one level down; the reflected datagram carries an
IPv4 packet of protocol 253 (RFC 3692 experimentation) holding the marker.

6in4: the peer's tunnel cannot carry IPv4 back, so the probe is an ICMPv6 echo
request to the peer's link-local address, ``fe80::`` + its IPv4 address, which
a Linux sit device gives itself; the echo reply comes back through the tunnel.

Ethernet tunnels (VXLAN, gretap): a frame of the IEEE local experimental
EtherType that a tunnelrouter peer answers; another VTEP only floods it.

Every probe ends with a 16-byte marker: a magic, the sender's nonce (random per
tunnel, so a stranger cannot fake answers) and the probe's number.
"""

import struct

from encap.checksum import internet_checksum, pseudo_header_sum
from encap.errors import EncapConfigError
from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer
from encap.wire import ETHERNET_HEADER_LENGTH, IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH, IpProto

MARKER = struct.Struct("!4s8sI")      # magic, nonce, probe number
MAGIC = b"trKA"
MARKER_LENGTH = MARKER.size
EXPERIMENTAL_PROTOCOL = 253           # RFC 3692, RFC 4727
ETHERTYPE_PROBE = 0x88B5              # IEEE 802 local experimental EtherType 1
PROBE_REQUEST, PROBE_REPLY = 1, 2
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
_ICMP6_ECHO = struct.Struct("!BBHHH")   # type, code, checksum, identifier, sequence
_LINK_LOCAL_PREFIX = bytes.fromhex("fe80000000000000") + bytes(4)
_GRE_HEADER = struct.Struct("!HH")
# A frame no station owns (locally administered), from one no station owns either.
PROBE_DESTINATION_MAC = bytes.fromhex("02746b610001")
PROBE_SOURCE_MAC = bytes.fromhex("02746b610002")


def marker(nonce: bytes, number: int) -> bytes:
    if len(nonce) != 8:
        raise EncapConfigError("a keepalive nonce is 8 bytes")
    return MARKER.pack(MAGIC, nonce, number & 0xFFFFFFFF)


def ends_in_marker(tail) -> bool:
    """Whether ``tail`` ends in a marker, anybody's."""
    return len(tail) >= MARKER_LENGTH and tail[-MARKER_LENGTH:][:len(MAGIC)] == MAGIC


def probe_number(tail, nonce: bytes) -> int | None:
    """The number in a marker at the end of ``tail`` if it carries ``nonce``, else None."""
    if len(tail) < MARKER_LENGTH:
        return None
    magic, their_nonce, number = MARKER.unpack_from(tail, len(tail) - MARKER_LENGTH)
    if magic != MAGIC or their_nonce != nonce:
        return None
    return number


def _ipv4(src: bytes, dst: bytes, protocol: int, payload: bytes) -> bytes:
    buf = bytearray(IPV4_HEADER_LENGTH + len(payload))
    buf[IPV4_HEADER_LENGTH:] = payload
    Ipv4Outer(src, dst, protocol, ttl=255, dont_fragment=False).encap_into(
        buf, IPV4_HEADER_LENGTH, len(buf))
    return bytes(buf)


def gre_probe(local: bytes, remote: bytes, gre_flags: int, key: int | None,
              probe: bytes) -> bytes:
    """The inner packet of a GRE keepalive: to be encapsulated from ``local`` to ``remote``.

    Its GRE header has the tunnel's own options (``gre_flags``: checksum, key,
    sequence) so that the reflected datagram passes the tunnel's checks; its
    sequence number is 0 (a reflected datagram is never held to the receive window).
    """
    checksum, has_key, sequence = gre_flags & 0x8000, gre_flags & 0x2000, gre_flags & 0x1000
    header = bytearray(_GRE_HEADER.pack(gre_flags, 0))
    if checksum:
        header += bytes(4)
    if has_key:
        header += (key or 0).to_bytes(4, "big")
    if sequence:
        header += bytes(4)
    datagram = header + probe
    if checksum:
        datagram[4:6] = internet_checksum(datagram).to_bytes(2, "big")
    return _ipv4(remote, local, IpProto.GRE, bytes(datagram))


def ipip_probe(local: bytes, remote: bytes, probe: bytes) -> bytes:
    """The inner packet of an IP-in-IP keepalive (from ``local`` to ``remote``)."""
    return _ipv4(remote, local, IpProto.IPIP,
                 _ipv4(local, remote, EXPERIMENTAL_PROTOCOL, probe))


def reflected_ipip_probe(packet) -> bool:
    """Whether a decapsulated IPv4 packet is the inside of a reflected IP-in-IP probe."""
    return len(packet) >= IPV4_HEADER_LENGTH and packet[9] == EXPERIMENTAL_PROTOCOL


def link_local(ipv4: bytes) -> bytes:
    """The link-local IPv6 address Linux gives a point-to-point sit device: fe80::a.b.c.d."""
    return _LINK_LOCAL_PREFIX + ipv4


def _icmp6_echo(kind: int, src: bytes, dst: bytes, identifier: int, sequence: int,
                data: bytes) -> bytes:
    body = bytearray(_ICMP6_ECHO.pack(kind, 0, 0, identifier, sequence) + data)
    body[2:4] = internet_checksum(body, pseudo_header_sum(src, dst, IpProto.ICMPV6,
                                                          len(body))).to_bytes(2, "big")
    buf = bytearray(IPV6_HEADER_LENGTH) + body
    Ipv6Outer(src, dst, IpProto.ICMPV6, hop_limit=255).encap_into(
        buf, IPV6_HEADER_LENGTH, len(buf))
    return bytes(buf)


def sit_probe(local: bytes, remote: bytes, number: int, probe: bytes) -> bytes:
    """The inner packet of a 6in4 keepalive: an ICMPv6 echo request from our link-local
    address to the peer's."""
    return _icmp6_echo(ICMP6_ECHO_REQUEST, link_local(local), link_local(remote), 0x7472,
                       number & 0xFFFF, probe)


def icmp6_echo_kind(packet) -> int:
    """The ICMPv6 type of an IPv6 packet that is an echo request or reply with nothing
    between its header and the ICMPv6 one; 0 for anything else."""
    if len(packet) < IPV6_HEADER_LENGTH + _ICMP6_ECHO.size or packet[0] >> 4 != 6 or \
            packet[6] != IpProto.ICMPV6:
        return 0
    kind = packet[IPV6_HEADER_LENGTH]
    return kind if kind in (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) else 0


def icmp6_echo_reply(request) -> bytes:
    """The echo reply to an echo request (``icmp6_echo_kind`` said so), same data."""
    identifier, sequence = struct.unpack_from("!HH", request, IPV6_HEADER_LENGTH + 4)
    return _icmp6_echo(ICMP6_ECHO_REPLY, bytes(request[24:40]), bytes(request[8:24]),
                       identifier, sequence, bytes(request[IPV6_HEADER_LENGTH + 8:]))


def ethernet_probe(kind: int, probe: bytes) -> bytes:
    """A probe frame (``PROBE_REQUEST``) or the answer to one (``PROBE_REPLY``)."""
    return (PROBE_DESTINATION_MAC + PROBE_SOURCE_MAC + ETHERTYPE_PROBE.to_bytes(2, "big")
            + bytes((kind,)) + probe)


def ethernet_probe_kind(frame) -> int:
    """``PROBE_REQUEST`` or ``PROBE_REPLY`` for a probe frame, 0 for any other frame."""
    if len(frame) < ETHERNET_HEADER_LENGTH + 1 + MARKER_LENGTH or frame[12] != 0x88 or \
            frame[13] != 0xB5:
        return 0
    kind = frame[ETHERNET_HEADER_LENGTH]
    return kind if kind in (PROBE_REQUEST, PROBE_REPLY) else 0
