"""Smoke test of the user-mode-linux tunnel peer, checked with the project's own codec.

For each of GRE (key 42, checksums, sequence numbers), IP-in-IP and 6in4 (sit),
a guest kernel is booted behind a TAP device in a fresh namespace; from that
namespace an encapsulated ICMP echo request built with ``encap`` goes out over
a raw socket, and the guest kernel's encapsulated echo reply must decode with
``encap`` into the matching echo reply. The guest's tunnels also send IPv6
router solicitations and MLD reports on their own: the exchange waits for the
datagram that carries this echo's payload and ignores the others.
"""

import dataclasses
import ipaddress
import secrets
import struct
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from encap.checksum import checksum_ok
from encap.codec import Codec, Stack
from encap.gre import FLAG_CHECKSUM, FLAG_KEY, FLAG_SEQUENCE, Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer, parse_ipv4
from encap.wire import IpProto
from tests.peers.uml import Tunnel, UmlPeer, build, raw_exchange

pytestmark = pytest.mark.netns

HOST, GUEST = "10.99.0.1", "10.99.0.2"
PACK = {address: ipaddress.ip_address(address).packed for address in (HOST, GUEST)}


@dataclasses.dataclass(frozen=True)
class Case:
    tunnel: Tunnel
    protocol: int
    host_inner: str
    guest_inner: str

    def codec(self, src: str, dst: str) -> Codec:
        if self.tunnel.mode == "gre":
            inner = Gre(key=self.tunnel.key, checksum=self.tunnel.csum, sequence=self.tunnel.seq)
        else:
            inner = IpInIp(6 if self.tunnel.mode == "sit" else 4)
        return Stack(Ipv4Outer(PACK[src], PACK[dst], self.protocol), inner)


CASES = {
    "gre": Case(Tunnel("gre", key=42, csum=True, seq=True, inner=("192.168.50.2/30",)),
                IpProto.GRE, "192.168.50.1", "192.168.50.2"),
    "ipip": Case(Tunnel("ipip", inner=("192.168.51.2/30",)),
                 IpProto.IPIP, "192.168.51.1", "192.168.51.2"),
    "sit": Case(Tunnel("sit", inner=("fd00:52::2/64",)),
                IpProto.IPV6, "fd00:52::1", "fd00:52::2"),
}


@pytest.fixture(scope="session")
def uml_cache():
    return build()


@pytest.fixture
def netns():
    name = f"trt-uml-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@pytest.fixture(params=sorted(CASES))
def case_and_peer(request, netns, uml_cache):
    case = CASES[request.param]
    with UmlPeer(netns, [case.tunnel], guest_addr=f"{GUEST}/24", host_addr=f"{HOST}/24",
                 boot_timeout=20.0, cache=uml_cache) as peer:
        yield case, peer


def echo_request(case: Case, ident: int, payload: bytes) -> bytes:
    if case.tunnel.mode == "sit":
        return bytes(IPv6(src=case.host_inner, dst=case.guest_inner, hlim=64)
                     / ICMPv6EchoRequest(id=ident, seq=1, data=payload))
    return bytes(IP(src=case.host_inner, dst=case.guest_inner, ttl=64, id=ident)
                 / ICMP(id=ident, seq=1) / payload)


def check_echo_reply(case: Case, inner: bytes, ident: int, payload: bytes) -> None:
    if case.tunnel.mode == "sit":
        packet = IPv6(inner)
        assert (packet.src, packet.dst) == (case.guest_inner, case.host_inner)
        reply = packet[ICMPv6EchoReply]
        assert (reply.id, reply.seq, reply.data) == (ident, 1, payload)
        received = reply.cksum
        del reply.cksum
        assert IPv6(bytes(packet))[ICMPv6EchoReply].cksum == received
        return
    header, icmp = parse_ipv4(memoryview(inner))
    assert (header.src, header.dst) == (ipaddress.ip_address(case.guest_inner).packed,
                                        ipaddress.ip_address(case.host_inner).packed)
    assert checksum_ok(icmp)
    reply = IP(inner)[ICMP]
    assert (reply.type, reply.code, reply.id, reply.seq) == (0, 0, ident, 1)
    assert bytes(reply.payload) == payload


def test_guest_kernel_answers_encapsulated_echo(case_and_peer):
    case, peer = case_and_peer
    ident = secrets.randbelow(0xFFFF) + 1
    payload = b"trt-uml-" + secrets.token_bytes(24)
    datagram = case.codec(HOST, GUEST).encap(echo_request(case, ident, payload))

    received = raw_exchange(peer.netns, case.protocol, datagram, GUEST, needle=payload,
                            timeout=5.0)

    reply = received[-1]
    header, tunnel_payload = parse_ipv4(memoryview(reply))
    assert (header.src, header.dst, header.protocol) == (PACK[GUEST], PACK[HOST], case.protocol)
    if case.tunnel.mode == "gre":
        flags, _ = struct.unpack_from("!HH", tunnel_payload)
        assert flags & (FLAG_CHECKSUM | FLAG_KEY | FLAG_SEQUENCE) == (
            FLAG_CHECKSUM | FLAG_KEY | FLAG_SEQUENCE)
        assert checksum_ok(tunnel_payload)
        assert struct.unpack_from("!I", tunnel_payload, 8)[0] == 42
    # The codec decodes it too: checksum verified, key matched, sequence number required.
    inner = case.codec(GUEST, HOST).decap_bytes(reply)
    check_echo_reply(case, inner, ident, payload)

    # The console channel works and the guest counted the packet on its tunnel.
    rx = int(peer.run(f"cat /sys/class/net/{case.tunnel.name}/statistics/rx_packets"))
    assert rx >= 1
