"""tshark, an independent decoder, reads encap's output with checksum validation on.

Every frame must decode to the protocol stack it was built as, nothing may be
malformed, every checksum tshark can see must be good, and the GRE key and
sequence number and the VXLAN VNI must read back as built. Inner packets are
built with scapy so their own checksums are valid; control frames with a
checksum broken on purpose show that tshark does report bad ones here.
"""

import itertools
import socket
import struct
from dataclasses import dataclass

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from tests.tshark import run_tshark, values
from scapy.packet import Raw

from encap.codec import Stack
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer
from encap.mss import MssAction, clamp_mss_bytes
from encap.udp import Udp
from encap.vxlan import Vxlan

pytestmark = pytest.mark.needs_binary("tshark")

OUTER4_SRC = socket.inet_pton(socket.AF_INET, "192.0.2.1")
OUTER4_DST = socket.inet_pton(socket.AF_INET, "198.51.100.2")
OUTER6_SRC = socket.inet_pton(socket.AF_INET6, "2001:db8:1::1")
OUTER6_DST = socket.inet_pton(socket.AF_INET6, "2001:db8:2::2")
GRE_KEY = 0xDEADBEEF
VNI = 0xABCDEF

LINKTYPE_RAW = 101
PCAP_GLOBAL_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD_HEADER = struct.Struct("<IIII")

FIELDS = [
    "frame.protocols", "ip.proto", "ip.checksum.status", "gre.flags.checksum", "gre.key",
    "gre.sequence_number", "gre.checksum.status", "gre.proto", "vxlan.flags", "vxlan.vni",
    "udp.checksum.status", "tcp.options.mss_val", "tcp.checksum.status",
    "icmp.checksum.status", "icmpv6.checksum.status",
    "_ws.expert.message",  # last: free text
]
# Which checksum status field each checksummed protocol of frame.protocols fills in.
STATUS_FIELD_BY_PROTOCOL = {
    "ip": "ip.checksum.status", "udp": "udp.checksum.status", "tcp": "tcp.checksum.status",
    "icmp": "icmp.checksum.status", "icmpv6": "icmpv6.checksum.status",
}
STATUS_FIELDS = sorted(set(STATUS_FIELD_BY_PROTOCOL.values()) | {"gre.checksum.status"})
GOOD, UNVERIFIED = "1", "2"


def write_pcap(path, packets) -> None:
    """A classic pcap file of raw IP packets (no link-layer header)."""
    with open(path, "wb") as out:
        out.write(PCAP_GLOBAL_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for number, packet in enumerate(packets):
            out.write(PCAP_RECORD_HEADER.pack(1_700_000_000 + number, 0, len(packet), len(packet)))
            out.write(packet)


# --- the packets ---------------------------------------------------------------------


def inner_ipv4_syn(options=(("MSS", 1460),)):
    return raw(IP(src="10.1.0.1", dst="10.2.0.2", id=77)
               / TCP(sport=40000, dport=80, flags="S", seq=1000, options=list(options)))


def inner_ipv6_echo():
    return raw(IPv6(src="fd00:1::1", dst="fd00:2::2")
               / ICMPv6EchoRequest(id=7, seq=1, data=b"ping"))


def inner_ipv6_syn():
    return raw(IPv6(src="fd00:1::1", dst="fd00:2::2")
               / TCP(sport=40001, dport=443, flags="S", options=[("MSS", 1440)]))


def ether_udp():
    return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
               / IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=50000, dport=50001) / Raw(b"tap"))


def ether_icmp():
    return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
               / IP(src="10.1.0.1", dst="10.2.0.2") / ICMP(id=3, seq=4) / Raw(b"vxlan"))


@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes
    protocols: str  # frame.protocols as tshark should print it
    gre_checksum: bool = False
    gre_key: int | None = None
    gre_sequence: int | None = None
    vni: int | None = None
    mss: int | None = None


def gre_flags_name(checksum: bool, key: bool, sequence: bool) -> str:
    names = [name for name, on in zip(("csum", "key", "seq"), (checksum, key, sequence)) if on]
    return "+".join(names) or "no-options"


def build_cases() -> list[Case]:
    cases = []
    for checksum, key, sequence in itertools.product((False, True), repeat=3):
        name = gre_flags_name(checksum, key, sequence)
        # One tunnel end sends both packets: the sequence number counts 0, then 1.
        stack = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 47),
                      Gre(key=GRE_KEY if key else None, checksum=checksum, sequence=sequence))
        common = dict(gre_checksum=checksum, gre_key=GRE_KEY if key else None)
        cases.append(Case(f"gre-{name}-ipv4-tcp-syn", stack.encap(inner_ipv4_syn()),
                          "raw:ip:gre:ip:tcp", gre_sequence=0 if sequence else None,
                          mss=1460, **common))
        cases.append(Case(f"gre-{name}-ipv6-icmpv6", stack.encap(inner_ipv6_echo()),
                          "raw:ip:gre:ipv6:icmpv6:data", gre_sequence=1 if sequence else None,
                          **common))

    for checksum, key in ((False, None), (True, GRE_KEY)):
        wire = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 47),
                     Gre(key=key, checksum=checksum, ethernet=True)).encap(ether_udp())
        cases.append(Case(f"gretap-{gre_flags_name(checksum, key is not None, False)}", wire,
                          "raw:ip:gre:eth:ethertype:ip:udp:data", gre_checksum=checksum,
                          gre_key=key))

    vxlan4 = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 17),
                   Udp(OUTER4_SRC, OUTER4_DST, 49152, 4789, checksum=True), Vxlan(VNI))
    cases.append(Case("vxlan-ipv4-udp-checksum", vxlan4.encap(ether_icmp()),
                      "raw:ip:udp:vxlan:eth:ethertype:ip:icmp:data", vni=VNI))
    vxlan6 = Stack(Ipv6Outer(OUTER6_SRC, OUTER6_DST, 17),
                   Udp(OUTER6_SRC, OUTER6_DST, 49152, 4789), Vxlan(1))
    cases.append(Case("vxlan-ipv6", vxlan6.encap(ether_icmp()),
                      "raw:ipv6:udp:vxlan:eth:ethertype:ip:icmp:data", vni=1))

    ipip = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 4), IpInIp(4))
    cases.append(Case("ipip-tcp-syn", ipip.encap(inner_ipv4_syn()), "raw:ip:ip:tcp", mss=1460))
    sit = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 41), IpInIp(6))
    cases.append(Case("6in4-tcp-syn", sit.encap(inner_ipv6_syn()), "raw:ip:ipv6:tcp", mss=1440))

    gre6 = Stack(Ipv6Outer(OUTER6_SRC, OUTER6_DST, 47, traffic_class=0xB8, flow_label=0x12345),
                 Gre(key=GRE_KEY, checksum=True, sequence=True))
    cases.append(Case("ipv6-gre-csum+key+seq-ipv4-tcp-syn", gre6.encap(inner_ipv4_syn()),
                      "raw:ipv6:gre:ip:tcp", gre_checksum=True, gre_key=GRE_KEY,
                      gre_sequence=0, mss=1460))
    cases.append(Case("ipv6-gre-csum+key+seq-ipv6-icmpv6", gre6.encap(inner_ipv6_echo()),
                      "raw:ipv6:gre:ipv6:icmpv6:data", gre_checksum=True, gre_key=GRE_KEY,
                      gre_sequence=1))
    gre6_plain = Stack(Ipv6Outer(OUTER6_SRC, OUTER6_DST, 47), Gre())
    cases.append(Case("ipv6-gre-no-options-ipv6-icmpv6", gre6_plain.encap(inner_ipv6_echo()),
                      "raw:ipv6:gre:ipv6:icmpv6:data"))

    # A SYN clamped by encap (MSS value at an odd offset), then tunnelled: tshark
    # checks the incrementally updated TCP checksum from scratch.
    for name, inner in (("ipv4", inner_ipv4_syn([("NOP", None), ("MSS", 1460), ("WScale", 7)])),
                        ("ipv6", raw(IPv6(src="fd00:1::1", dst="fd00:2::2")
                                     / TCP(flags="SA", options=[("NOP", None), ("MSS", 1460)])))):
        clamped, action = clamp_mss_bytes(inner, 1360, 1340)
        assert action == MssAction.CLAMPED
        wire = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 47), Gre(checksum=True)).encap(clamped)
        cases.append(Case(f"gre-csum-clamped-{name}-syn-odd-mss-offset", wire,
                          f"raw:ip:gre:{'ip' if name == 'ipv4' else 'ipv6'}:tcp",
                          gre_checksum=True, mss=1360 if name == "ipv4" else 1340))
    return cases


def flip(wire: bytes, offset: int) -> bytes:
    broken = bytearray(wire)
    broken[offset] ^= 0x40
    return bytes(broken)


def build_controls() -> list[tuple[str, bytes, str, list[str]]]:
    """(name, wire, status field, expected statuses): checksums broken on purpose."""
    gre = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 47), Gre(checksum=True)).encap(inner_ipv4_syn())
    vxlan = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 17),
                  Udp(OUTER4_SRC, OUTER4_DST, 49152, 4789), Vxlan(VNI)).encap(ether_icmp())
    ipip = Stack(Ipv4Outer(OUTER4_SRC, OUTER4_DST, 4), IpInIp(4)).encap(inner_ipv4_syn())
    return [
        ("outer-ip-checksum", flip(gre, 10), "ip.checksum.status", ["0", "1"]),
        ("gre-checksum", flip(gre, 24), "gre.checksum.status", ["0"]),
        ("udp-checksum", flip(vxlan, 26), "udp.checksum.status", ["0"]),
        ("inner-tcp-checksum", flip(ipip, 20 + 20 + 16), "tcp.checksum.status", ["0"]),
    ]


CASES = build_cases()
CONTROLS = build_controls()


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> list[dict[str, str]]:
    path = tmp_path_factory.mktemp("tshark") / "encap.pcap"
    write_pcap(path, [case.wire for case in CASES] + [control[1] for control in CONTROLS])
    frames = run_tshark(path, FIELDS)
    assert len(frames) == len(CASES) + len(CONTROLS)
    return frames


def frame_of(decoded, case: Case) -> dict[str, str]:
    return decoded[CASES.index(case)]


by_name = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])


def test_case_names_are_unique():
    assert len({case.name for case in CASES}) == len(CASES)


@by_name
def test_tshark_decodes_the_protocol_stack_it_was_built_as(decoded, case):
    assert frame_of(decoded, case)["frame.protocols"] == case.protocols


@by_name
def test_tshark_finds_nothing_malformed(decoded, case):
    frame = frame_of(decoded, case)
    assert "malformed" not in frame["frame.protocols"].lower()
    for message in values(frame, "_ws.expert.message"):
        assert "malformed" not in message.lower(), message
        assert "incorrect" not in message.lower(), message
        assert "bad" not in message.lower(), message


@by_name
def test_tshark_finds_every_checksum_good(decoded, case):
    frame = frame_of(decoded, case)
    layers = case.protocols.split(":")
    expected_counts = {field: 0 for field in STATUS_FIELDS}
    for layer in layers:
        if layer in STATUS_FIELD_BY_PROTOCOL:
            expected_counts[STATUS_FIELD_BY_PROTOCOL[layer]] += 1
    expected_counts["gre.checksum.status"] = int(case.gre_checksum)
    for field in STATUS_FIELDS:
        statuses = values(frame, field)
        # 2 (unverified) would only be acceptable where tshark cannot verify;
        # every checksum here is one it can, so each must be 1 (good).
        assert statuses == [GOOD] * expected_counts[field], field


@by_name
def test_tshark_reads_tunnel_fields_as_built(decoded, case):
    frame = frame_of(decoded, case)
    if "gre" in case.protocols.split(":"):
        assert values(frame, "gre.flags.checksum") == [str(int(case.gre_checksum))]
    keys = [int(value, 0) for value in values(frame, "gre.key")]
    assert keys == ([] if case.gre_key is None else [case.gre_key])
    sequences = [int(value, 0) for value in values(frame, "gre.sequence_number")]
    assert sequences == ([] if case.gre_sequence is None else [case.gre_sequence])
    vnis = [int(value, 0) for value in values(frame, "vxlan.vni")]
    assert vnis == ([] if case.vni is None else [case.vni])
    if case.vni is not None:
        assert [int(value, 0) for value in values(frame, "vxlan.flags")] == [0x0800]
    mss_values = [int(value) for value in values(frame, "tcp.options.mss_val")]
    assert mss_values == ([] if case.mss is None else [case.mss])


def test_ipip_shows_both_ip_protocol_numbers(decoded):
    (case,) = [case for case in CASES if case.name == "ipip-tcp-syn"]
    assert values(frame_of(decoded, case), "ip.proto") == ["4", "6"]


@pytest.mark.parametrize("index", range(len(CONTROLS)), ids=[c[0] for c in CONTROLS])
def test_tshark_reports_a_checksum_broken_on_purpose_as_bad(decoded, index):
    _, _, field, expected = CONTROLS[index]
    assert values(decoded[len(CASES) + index], field) == expected
