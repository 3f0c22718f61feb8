"""A burst of malformed and unwanted datagrams must not disturb a tunnel in use.

Two tunnelrouters (M1, M2) joined by a WAN veth run a GRE tunnel (key,
checksums) and a VXLAN tunnel. While M1 pings M2 through the GRE tunnel, bad
datagrams hit M2's underlay address: some spoofed from M1's real address (a
peer: truncated GRE, GRE version 1, reserved flags, bad checksum, wrong key,
truncated inner IPv4, VXLAN with an unknown VNI or without the I flag, a UDP
datagram too short for VXLAN) and some from a stranger in an "attacker"
namespace routed through M2 (GRE, and VXLAN with the right VNI). The ping must
get its replies, the router must keep running, and M2 must count every drop
under its reason, per tunnel where a tunnel owns the datagram and as
unattributed where none does.
"""

import json
import socket
import struct
import time

import pytest

from encap.checksum import internet_checksum
from tests.netns.routers import WAN, show, start_router, wait_for

pytestmark = pytest.mark.netns

STRANGER = "10.98.0.3"
M2_SIDE = "10.98.0.2"
KEY = 42
VNI = 4242
ROUNDS = 3


def config(me: str, peer: str, side: int) -> dict:
    return {"tunnels": {
        "gre1": {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": KEY,
                 "checksum": True, "addresses": [f"192.168.101.{side}/24"]},
        "vx1": {"mode": "vxlan", "local": WAN[me], "remotes": [WAN[peer]], "id": VNI,
                "addresses": [f"192.168.102.{side}/24"]},
    }}


def ipv4(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    # The kernel fills in the header checksum of an IP_HDRINCL datagram.
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4242, 0x4000, 64,
                         protocol, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + payload


def inner_ipv4(total_length: int | None = None, body: bytes = b"x" * 12) -> bytes:
    length = 20 + len(body) if total_length is None else total_length
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, 17, 0,
                         socket.inet_aton("192.168.101.1"), socket.inet_aton("192.168.101.2"))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + body


def gre(flags: int, protocol: int, key: int | None, payload: bytes, *,
        checksum: str = "good") -> bytes:
    """A GRE packet; ``checksum`` is 'good', 'bad' or 'none' (flag and field absent)."""
    if checksum != "none":
        flags |= 0x8000
    if key is not None:
        flags |= 0x2000
    options = b""
    if checksum != "none":
        options += b"\0\0\0\0"
    if key is not None:
        options += struct.pack("!I", key)
    packet = bytearray(struct.pack("!HH", flags, protocol) + options + payload)
    if checksum != "none":
        value = internet_checksum(bytes(packet))
        if checksum == "bad":
            value ^= 0x5A5A
        struct.pack_into("!H", packet, 4, value)
    return bytes(packet)


def vxlan(flags: int, vni: int, frame: bytes | None = None) -> bytes:
    frame = frame if frame is not None else (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x99"
                                             + b"\x08\x00" + inner_ipv4())
    return struct.pack("!II", flags << 24, vni << 8) + frame


# Each bad datagram: (where it is sent from, what it is, where M2 counts it, reason).
def bad_datagrams() -> list[tuple[str, str, bytes, str, str]]:
    peer, me = WAN["m1"], WAN["m2"]
    good_inner = inner_ipv4()
    raw = [
        # (sender, kind, payload for kind 'ip' = whole datagram / 'udp' = UDP payload,
        #  counted under, reason)
        ("m1", "ip", ipv4(peer, me, 47, struct.pack("!HH", 0xA000, 0x0800)),
         "gre1", "truncated"),
        ("m1", "ip", ipv4(peer, me, 47, b"\x20"), "gre1", "truncated"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0x0001, 0x0800, KEY, good_inner)),
         "gre1", "gre_bad_version"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0x4000, 0x0800, KEY, good_inner)),
         "gre1", "gre_reserved_flags"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, KEY, good_inner, checksum="bad")),
         "gre1", "gre_bad_checksum"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, KEY + 1, good_inner)),
         "gre1", "gre_wrong_key"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, None, good_inner)),
         "gre1", "gre_wrong_key"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, KEY, good_inner, checksum="none")),
         "gre1", "gre_missing_checksum"),
        # An inner IPv4 header claiming 200 bytes with 32 present.
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, KEY, inner_ipv4(total_length=200))),
         "gre1", "inner_malformed"),
        ("m1", "ip", ipv4(peer, me, 47, gre(0, 0x0800, KEY, good_inner[:12])),
         "gre1", "inner_malformed"),
        ("m1", "udp", vxlan(0x08, VNI + 1), None, "vxlan_unknown_vni"),
        ("m1", "udp", vxlan(0x00, VNI), None, "vxlan_no_vni_flag"),
        ("m1", "udp", vxlan(0x0C, VNI)[:4], None, "truncated"),
        ("m1", "udp", b"", None, "truncated"),
        ("attacker", "ip", ipv4(STRANGER, me, 47, gre(0, 0x0800, KEY, good_inner)),
         None, "not_a_peer"),
        ("attacker", "udp", vxlan(0x08, VNI), "vx1", "not_a_peer"),
    ]
    return raw


SENDER = r"""
import json, socket, sys
a = json.load(sys.stdin)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(a["rounds"]):
    for kind, payload in a["datagrams"]:
        data = bytes.fromhex(payload)
        if kind == "ip":
            raw.sendto(data, (a["dst"], 0))
        else:
            udp.sendto(data, (a["dst"], 4789))
print("sent", flush=True)
"""


def send(ns, datagrams: list[tuple[str, bytes]]) -> None:
    request = {"rounds": 1, "dst": WAN["m2"],
               "datagrams": [(kind, data.hex()) for kind, data in datagrams]}
    result = ns.python(SENDER, input=json.dumps(request), timeout=10)
    assert result.stdout.strip() == "sent", result.stderr


@pytest.fixture
def routers_and_attacker(netns, tmp_path):
    m1, m2, attacker = netns("m1"), netns("m2"), netns("attacker")
    wan = netns.veth(m1, m2)
    side = netns.veth(attacker, m2)
    for ns, end, address in ((m1, wan.a_name, WAN["m1"]), (m2, wan.b_name, WAN["m2"]),
                             (m2, side.b_name, f"{M2_SIDE}"), (attacker, side.a_name, STRANGER)):
        ns.ip("addr", "add", f"{address}/24", "dev", end)
    attacker.ip("route", "add", "default", "via", M2_SIDE)
    for ns in (m1, m2, attacker):
        ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
        ns.sysctl("net.ipv4.conf.default.rp_filter", 0)
    routers = {}
    for ns, me, peer, number in ((m1, "m1", "m2", 1), (m2, "m2", "m1", 2)):
        routers[me] = (ns, *start_router(ns, config(me, peer, number), tmp_path, me))
    for ns, process, control in routers.values():
        wait_for(control, process)
    # Neighbours resolved before the clock starts.
    assert m1.run("ping", "-c", "1", "-W", "2", "192.168.101.2", check=False).returncode == 0
    return routers, attacker


def test_burst_of_bad_datagrams_is_counted_and_harmless(routers_and_attacker):
    routers, attacker = routers_and_attacker
    m1, p1, c1 = routers["m1"]
    m2, p2, c2 = routers["m2"]
    before = show(c2)
    assert not before["tunnels"]["gre1"]["counters"]["drops"]
    assert not before["unattributed"]

    cases = bad_datagrams()
    ping = m1.popen("ping", "-n", "-i", "0.2", "-c", "15", "-W", "2", "192.168.101.2")
    time.sleep(0.5)
    for _ in range(ROUNDS):
        for sender, ns in (("m1", m1), ("attacker", attacker)):
            send(ns, [(kind, data) for who, kind, data, _, _ in cases if who == sender])
        time.sleep(0.4)
    out, err = ping.communicate(timeout=20)

    received = int(out.split(" received")[0].rsplit(",", 1)[-1].strip())
    assert received >= 14, out + err
    assert p1.poll() is None and p2.poll() is None

    expected: dict[str | None, dict[str, int]] = {}
    for _, _, _, where, reason in cases:
        counts = expected.setdefault(where, {})
        counts[reason] = counts.get(reason, 0) + ROUNDS
    status = show(c2)
    assert status["tunnels"]["gre1"]["counters"]["drops"] == expected["gre1"]
    assert status["tunnels"]["vx1"]["counters"]["drops"] == expected["vx1"]
    assert status["unattributed"] == expected[None]
    gre1 = status["tunnels"]["gre1"]["counters"]
    assert gre1["rx_packets"] >= 14 and gre1["tx_packets"] >= 14, gre1
    # Nothing bad was delivered: what M2's router wrote to gre1 (the device's rx) is
    # exactly what it counted as received, the pings and nothing else.
    device_rx = int(m2.run("cat", "/sys/class/net/gre1/statistics/rx_packets").stdout)
    assert device_rx == gre1["rx_packets"]

    # Both tunnels still work afterwards, both ways.
    for ns, address in ((m1, "192.168.101.2"), (m1, "192.168.102.2"), (m2, "192.168.101.1"),
                        (m2, "192.168.102.1")):
        assert ns.run("ping", "-c", "1", "-W", "2", address, check=False).returncode == 0, address
