"""Hypothesis strategies for the packets tunnels carry.

Inner IP packets are built with the project's own outer-header codecs: an
``Ipv4Outer(...).encap(payload)`` *is* a well-formed IPv4 packet.
"""

from hypothesis import strategies as st

from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer

addresses_v4 = st.binary(min_size=4, max_size=4)
addresses_v6 = st.binary(min_size=16, max_size=16)
payloads = st.binary(max_size=1500)


@st.composite
def ipv4_packets(draw, max_payload: int = 1400) -> bytes:
    outer = Ipv4Outer(draw(addresses_v4), draw(addresses_v4), draw(st.integers(0, 255)),
                      ttl=draw(st.integers(1, 255)), tos=draw(st.integers(0, 255)),
                      dont_fragment=draw(st.booleans()))
    return outer.encap(draw(st.binary(max_size=max_payload)))


@st.composite
def ipv6_packets(draw, max_payload: int = 1400) -> bytes:
    outer = Ipv6Outer(draw(addresses_v6), draw(addresses_v6),
                      draw(st.sampled_from([6, 17, 58, 59])),
                      hop_limit=draw(st.integers(1, 255)),
                      traffic_class=draw(st.integers(0, 255)),
                      flow_label=draw(st.integers(0, 0xFFFFF)))
    return outer.encap(draw(st.binary(max_size=max_payload)))


ip_packets = st.one_of(ipv4_packets(), ipv6_packets())
ethernet_frames = st.binary(min_size=14, max_size=1514)


@st.composite
def mutated(draw, base):
    """A packet from ``base`` with up to four bytes changed, then cut short."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])
