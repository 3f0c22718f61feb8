"""Ipv4Tunnel: the fused outer IPv4 + tunnel header must be the Stack, only faster.

Every property compares it with ``Stack(outer, tunnel)`` built from identical
codecs: the same bytes out, the same packet or the same ``DropReason`` back on
any input, and the same receiver state afterwards.
"""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encap.checksum import internet_checksum
from encap.codec import Stack
from encap.errors import DecodeError, DropReason
from encap.gre import Gre
from encap.ipip import IpInIp
from encap.ipv4 import Ipv4Outer, Ipv4Tunnel
from encap.wire import IpProto

from tests.encap.strategies import (addresses_v4, ethernet_frames, ip_packets, ipv4_packets,
                                    ipv6_packets, mutated)

SRC, DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
GRE_OPTIONS = [dict(key=k, checksum=c, sequence=s, ethernet=e) for k, c, s, e
               in itertools.product([None, 0xDEADBEEF], [False, True], [False, True],
                                    [False, True])]
# name -> (outer protocol, a fresh tunnel codec, what it carries)
TUNNELS = {
    **{" ".join(["gre"] + [k for k, v in o.items() if v]): (
        IpProto.GRE, lambda o=o: Gre(**o), ethernet_frames if o["ethernet"] else ip_packets)
       for o in GRE_OPTIONS},
    "ipip": (IpProto.IPIP, lambda: IpInIp(4), ipv4_packets()),
    "sit": (IpProto.IPV6, lambda: IpInIp(6), ipv6_packets()),
}


def both(name: str, src=SRC, dst=DST, **outer):
    """A fused tunnel and a Stack from identical, separate codecs."""
    protocol, tunnel, _ = TUNNELS[name]
    return (Ipv4Tunnel(Ipv4Outer(src, dst, protocol, **outer), tunnel()),
            Stack(Ipv4Outer(src, dst, protocol, **outer), tunnel()))


def outcome(codec, datagram: bytes):
    try:
        return bytes(codec.decap(memoryview(datagram)))
    except DecodeError as error:
        return error.reason


def receiver_state(codec) -> tuple:
    tunnel = codec.tunnel if isinstance(codec, Ipv4Tunnel) else codec.layers[-1]
    return getattr(tunnel, "expected_sequence", None), getattr(tunnel, "next_sequence", None)


@pytest.mark.parametrize("name", TUNNELS)
@settings(max_examples=60)
@given(data=st.data(), src=addresses_v4, dst=addresses_v4, dont_fragment=st.booleans(),
       identification=st.integers(0, 0xFFFF), sequence=st.integers(0, 0xFFFFFFFF))
def test_encap_is_the_stacks_byte_for_byte(name, data, src, dst, dont_fragment, identification,
                                           sequence):
    fused, stack = both(name, src, dst, dont_fragment=dont_fragment)
    for outer in (fused.outer, stack.layers[0]):
        outer.identification = identification
    for tunnel in (fused.tunnel, stack.layers[1]):
        tunnel.next_sequence = sequence
    for payload in data.draw(st.lists(TUNNELS[name][2], min_size=1, max_size=3)):
        ttl, tos = data.draw(st.integers(1, 255)), data.draw(st.integers(0, 255))
        fused.ttl, fused.tos = ttl, tos
        stack.layers[0].ttl, stack.layers[0].tos = ttl, tos
        if data.draw(st.booleans()):  # as the router does for one packet
            fused.outer.dont_fragment = stack.layers[0].dont_fragment = data.draw(st.booleans())
        assert fused.encap(payload) == stack.encap(payload)
    assert fused.overhead == stack.overhead


@pytest.mark.parametrize("name", TUNNELS)
@settings(max_examples=60)
@given(data=st.data())
def test_round_trip_both_ways(name, data):
    # Each receiver hears one sender: sequence numbers are per sender.
    pairs = [(both(name)[0], both(name)[0]), (both(name)[0], both(name)[1]),
             (both(name)[1], both(name)[0])]
    for payload in data.draw(st.lists(TUNNELS[name][2], min_size=1, max_size=3)):
        for sender, receiver in pairs:
            assert receiver.decap_bytes(sender.encap(payload)) == payload


@pytest.mark.parametrize("name", TUNNELS)
def test_a_well_formed_datagram_takes_the_fast_path(name):
    fused, _ = both(name)
    sender, _ = both(name)
    payload = Ipv4Outer(SRC, DST, 17).encap(b"x" * 30) if name != "sit" else (
        bytes.fromhex("6000000000003a40") + bytes(32))
    if "ethernet" in name:
        payload = bytes(12) + b"\x08\x00" + payload

    def refuse(view):
        raise AssertionError("took the Stack's path")
    fused._checked_decap = refuse
    assert fused.decap_bytes(sender.encap(payload)) == payload


def with_outer_checksum_fixed(datagram: bytes) -> bytes:
    """Repair the outer header checksum, so a mutation reaches the layers behind it."""
    header_length = (datagram[0] & 0x0F) * 4 if datagram else 0
    if len(datagram) < max(header_length, 20):
        return datagram
    fixed = bytearray(datagram)
    fixed[10:12] = b"\0\0"
    fixed[10:12] = internet_checksum(fixed[:header_length]).to_bytes(2, "big")
    return bytes(fixed)


# Header bytes the checks turn on: versions and lengths, flags, protocol numbers.
TELLING_BYTES = st.sampled_from([0x00, 0x01, 0x08, 0x20, 0x40, 0x44, 0x45, 0x46, 0x4F, 0x60,
                                 0x65, 0x80, 0x86, 0xFF])


@st.composite
def header_flipped(draw, datagram: bytes, inner_start: int) -> bytes:
    """``datagram`` with one to three bytes of its headers changed: anywhere in the
    first 64, or in the fields checked (outer version, lengths, fragment, protocol;
    the inner packet's version and length), to a telling value or off by one."""
    data = bytearray(datagram)
    checked = [0, 2, 3, 6, 7, 9] + [inner_start + i for i in range(6)]
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.one_of(st.integers(0, 63), st.sampled_from(checked)))
        if position < len(data):
            nudged = st.sampled_from([(data[position] + 1) % 256, (data[position] - 1) % 256])
            data[position] = draw(st.one_of(TELLING_BYTES, nudged, st.integers(0, 255)))
    return bytes(data)


@st.composite
def received(draw, name: str):
    """What a receiver may see: random bytes, or a sender's datagrams valid, padded,
    with header bytes changed (the outer checksum fixed up or not), or mutated and
    cut, in any order."""
    sender, _ = both(name)
    datagram = sender.encap(draw(TUNNELS[name][2]))
    choice = draw(st.sampled_from(["random", "valid", "padded", "flipped", "fixed", "cut"]))
    if choice == "random":
        return draw(st.binary(max_size=120))
    if choice == "valid":
        return datagram
    if choice == "padded":
        return datagram + draw(st.binary(min_size=1, max_size=8))
    if choice == "cut":
        return draw(mutated(st.just(datagram)))
    flipped = draw(header_flipped(datagram, sender.overhead))
    return with_outer_checksum_fixed(flipped) if choice == "fixed" else flipped


@pytest.mark.parametrize("name", TUNNELS)
@settings(max_examples=300)
@given(data=st.data())
def test_decap_agrees_with_the_stack_on_any_input(name, data):
    fused, stack = both(name)
    for datagram in data.draw(st.lists(received(name), min_size=1, max_size=4)):
        assert outcome(fused, datagram) == outcome(stack, datagram)
        assert receiver_state(fused) == receiver_state(stack)


def test_ipv4_options_and_padding_are_accepted_as_by_the_stack():
    fused, stack = both("gre")
    packet = Ipv4Outer(SRC, DST, 17).encap(b"payload")
    datagram = bytearray(stack.encap(packet))
    # An IHL of 6 with a no-op option word in front of GRE, checksum redone.
    datagram = bytearray(b"\x46" + datagram[1:2] + (len(datagram) + 4).to_bytes(2, "big")
                         + datagram[4:20] + b"\x01\x01\x01\x00" + datagram[20:])
    optioned = with_outer_checksum_fixed(bytes(datagram))
    assert outcome(fused, optioned) == outcome(stack, optioned) == packet
    assert outcome(fused, stack.encap(packet) + b"\0\0") == packet


@pytest.mark.parametrize("name, payload", [("gre", b""), ("gre", b"\x50" + bytes(19)),
                                           ("gre ethernet", bytes(13)), ("ipip", bytes(20)),
                                           ("sit", Ipv4Outer(SRC, DST, 6).encap(b""))])
def test_unsendable_local_input_is_refused_as_by_the_stack(name, payload):
    fused, stack = both(name)
    reasons = []
    for codec in (fused, stack):
        with pytest.raises(DecodeError) as caught:
            codec.encap(payload)
        reasons.append(caught.value.reason)
    assert reasons == [DropReason.INNER_MALFORMED] * 2
    assert fused.outer.identification == 0


def test_ttl_and_tos_set_the_outer_header():
    fused, _ = both("ipip", ttl=9, tos=1)
    assert (fused.ttl, fused.tos) == (9, 1)
    fused.ttl, fused.tos = 200, 0xB8
    assert (fused.outer.ttl, fused.outer.tos) == (200, 0xB8)
    wire = fused.encap(Ipv4Outer(SRC, DST, 17).encap(b""))
    assert (wire[8], wire[1]) == (200, 0xB8)


INNER_EDGES = {  # inner-header byte -> value: each just past what inner_ip_packet accepts
    "ihl 4": (0, 0x44), "version 5": (0, 0x55), "length 19": (3, 19), "length 21": (3, 21),
}


@pytest.mark.parametrize("name", ["gre", "gre key sequence", "ipip"])
@pytest.mark.parametrize("edge", INNER_EDGES)
def test_inner_header_edges_are_refused_as_by_the_stack(name, edge):
    sender, _ = both(name)
    datagram = bytearray(sender.encap(Ipv4Outer(SRC, DST, 17).encap(b"")))
    offset, value = INNER_EDGES[edge]
    datagram[sender.overhead + offset] = value
    fused, stack = both(name)
    assert outcome(fused, bytes(datagram)) == outcome(stack, bytes(datagram)) == (
        DropReason.INNER_MALFORMED)
