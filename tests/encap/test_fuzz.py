"""The one rule for remote input: any bytes give a result or a DecodeError, nothing else.

The h11 fuzz rule, over every decoder in the package. The packets start from
valid ones with bytes flipped and cut, so the fuzzing reaches past the first
length check, and from plain random bytes.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encap.codec import Stack
from encap.errors import DecodeError
from encap.gre import Gre
from encap.ip import inner_ip_packet
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer, parse_ipv4
from encap.ipv6 import Ipv6Outer, parse_ipv6
from encap.mss import MssAction, clamp_mss
from encap.udp import Udp
from encap.vxlan import Vxlan, vxlan_decap

from tests.encap.strategies import ip_packets, ipv4_packets, ipv6_packets, mutated

V4, V6 = bytes([10, 0, 0, 1]), bytes(15) + b"\x01"

DECODERS = {
    "ipv4": lambda v: parse_ipv4(v, allow_fragments=True),
    "ipv6": lambda v: parse_ipv6(v, allow_fragments=True),
    "inner v4": lambda v: inner_ip_packet(v, 4),
    "inner v6": lambda v: inner_ip_packet(v, 6),
    "vxlan": vxlan_decap,
    "udp": Udp(V4, V4, 1, 2).decap,
    "ipip": IpInIp(4).decap,
    "sit": IpInIp(6).decap,
}
FRAMES = st.binary(min_size=14, max_size=200)
STACKS = {  # each with the payloads it can carry, to mutate valid datagrams
    "gre": (Stack(Ipv4Outer(V4, V4, 47), Gre()), ip_packets),
    "gre key csum seq": (Stack(Ipv4Outer(V4, V4, 47), Gre(key=7, checksum=True, sequence=True)),
                         ip_packets),
    "gretap over v6": (Stack(Ipv6Outer(V6, V6, 47), Gre(ethernet=True, checksum=True)), FRAMES),
    "vxlan": (Stack(Ipv4Outer(V4, V4, 17), Udp(V4, V4, 9, 4789), Vxlan(5)), FRAMES),
    "ipip": (Stack(Ipv4Outer(V4, V4, 4), IpInIp(4)), ipv4_packets()),
    "sit": (Stack(Ipv4Outer(V4, V4, 41), IpInIp(6)), ipv6_packets()),
}


def decodes_or_refuses(decode, data: bytes) -> None:
    try:
        decode(memoryview(data))
    except DecodeError:
        pass


@pytest.mark.parametrize("name", DECODERS)
@settings(max_examples=300)
@given(data=st.one_of(st.binary(max_size=120), mutated(ip_packets)))
def test_decoders_only_ever_raise_decode_error(name, data):
    decodes_or_refuses(DECODERS[name], data)


@pytest.mark.parametrize("name", STACKS)
@settings(max_examples=300)
@given(data=st.data())
def test_tunnel_stacks_only_ever_raise_decode_error(name, data):
    stack, payloads = STACKS[name]
    valid = st.builds(stack.encap, payloads)
    decodes_or_refuses(stack.decap, data.draw(st.one_of(st.binary(max_size=120), mutated(valid))))


@settings(max_examples=500)
@given(data=st.one_of(st.binary(max_size=120), mutated(ip_packets)))
def test_mss_clamping_never_raises_on_any_bytes(data):
    buf = bytearray(data)
    assert clamp_mss(memoryview(buf), 1360, 1340) in MssAction
