"""The mode registry: what each encapsulation costs on the wire, how its datagrams are told
apart, and that nothing outside ``tunnelrouter/modes/`` knows one mode from another.

Packets are built and read back with scapy; the MTUs are the Linux kernel's own
for its tunnels over a 1500-byte underlay.
"""

import ast
import itertools
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from encap.codec import Stack
from encap.errors import DropReason
from encap.gre import gre_key
from encap.ipv4 import Ipv4Outer
from encap.ipv6 import Ipv6Outer
from encap.udp import Udp
from encap.wire import HEADROOM, IpProto
from tunnelrouter.config import ConfigError, parse_config
from tunnelrouter.modes import MODES, TunnelConfig, Underlay
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.batch import Batch

PACKAGE = Path(__file__).resolve().parents[3] / "tunnelrouter"
# `ip link add ... type gre|gretap|vxlan|ipip|sit` over a 1500-byte IPv4 underlay.
KERNEL_MTU = {"gre": 1476, "gretap": 1462, "vxlan": 1450, "ipip": 1480, "sit": 1480}
GRE_OPTIONS = ("key", "sequence", "checksum")
LOCAL4, REMOTE4 = "192.0.2.1", "198.51.100.2"
LOCAL6, REMOTE6 = "2001:db8::1", "2001:db8:1::2"
NOW = 1000.0
KERNEL_UDP_AND_IP = {4: 28, 6: 48}   # what the kernel puts in front of a UDP socket's datagram


def config(mode: str, local: str = LOCAL4, remote: str = REMOTE4, **keys) -> TunnelConfig:
    body = {"mode": mode, "local": local, "remote": remote} | keys
    if mode == "vxlan":
        body.setdefault("id", 1)
    return parse_config({"tunnels": {"t": body}}).tunnels["t"]


def gre_keys(options) -> dict:
    return {option: 1234 if option == "key" else True for option in options}


def mirrored(tunnel: TunnelConfig) -> TunnelConfig:
    """The tunnel at the other end: local and remote swapped, everything else the same."""
    keys = tunnel.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    keys |= {"local": str(tunnel.remote), "remote": str(tunnel.local)}
    return config(**keys)


def inner_packet(mode: str, length: int) -> bytes:
    """What the tunnel's device gives the router: an IP packet of ``length`` bytes that may
    not be fragmented, in an Ethernet frame for a TAP device."""
    if 4 in MODES[mode].inner_families:
        packet = IP(src="10.1.0.1", dst="10.2.0.1", flags="DF", proto=253) / Raw(bytes(length - 20))
    else:
        packet = IPv6(src="fd00:1::1", dst="fd00:2::1", nh=59) / Raw(bytes(length - 40))
    if MODES[mode].ethernet:
        packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet
    return raw(packet)


def encapsulated(tunnel: TunnelConfig, packet: bytes):
    """What the tunnel's endpoint makes of ``packet``: ``(datagram, endpoint)``; the datagram
    is None when the endpoint dropped the packet."""
    endpoint = endpoint_for(tunnel)
    batch = Batch(1, HEADROOM + len(packet) + 64).fill_from_device([packet])
    endpoint.encapsulate(batch, NOW)
    datagram = batch.packets[0]
    return (None if datagram is None else bytes(datagram)), endpoint


def header_offset(mode: str) -> int:
    """Where the tunnel header starts in a datagram as the mode's socket reads it."""
    return 20 if MODES[mode].underlay is Underlay.RAW else 0


def modes_with_options():
    for mode in MODES:
        yield mode, ()
        if "key" in MODES[mode].config.model_fields:
            for count in (1, 2, 3):
                for options in itertools.combinations(GRE_OPTIONS, count):
                    yield mode, options


MODES_WITH_OPTIONS = [pytest.param(mode, options, id="-".join((mode,) + options))
                      for mode, options in modes_with_options()]


# -- overhead and MTU -------------------------------------------------------------------

def test_every_registered_mode_has_the_kernels_mtu_to_compare_with():
    assert set(MODES) == set(KERNEL_MTU)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_mtu_over_a_1500_byte_underlay_is_the_kernels(mode):
    derived = config(mode).derived_mtu()
    assert (derived.mtu, derived.overhead.total) == (KERNEL_MTU[mode], 1500 - KERNEL_MTU[mode])
    assert config(mode).device_mtu == KERNEL_MTU[mode]


@pytest.mark.parametrize("mode, options", [p for p in MODES_WITH_OPTIONS if p.values[1]])
def test_each_gre_option_costs_four_bytes(mode, options):
    assert config(mode, **gre_keys(options)).device_mtu == KERNEL_MTU[mode] - 4 * len(options)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_ipv6_underlay_costs_twenty_bytes_more_where_the_mode_has_one(mode):
    if 6 in MODES[mode].underlay_families:
        assert config(mode, LOCAL6, REMOTE6).device_mtu == KERNEL_MTU[mode] - 20
    else:
        with pytest.raises(ConfigError) as caught:
            config(mode, LOCAL6, REMOTE6)
        assert [p.path for p in caught.value.problems] == ["tunnels.t.local"]


def test_vxlan_over_ipv6_and_a_jumbo_underlay():
    assert config("vxlan", LOCAL6, REMOTE6).device_mtu == 1430
    assert config("vxlan", **{"underlay-mtu": 9000}).device_mtu == 8950


@pytest.mark.parametrize("mode, options, family", [
    pytest.param(*p.values, family, id=f"{p.id}-ipv{family}") for p in MODES_WITH_OPTIONS
    for family in sorted(MODES[p.values[0]].underlay_families)])
def test_the_overhead_is_what_the_codec_and_the_outer_headers_add(mode, options, family):
    kind = MODES[mode]
    local, remote = (LOCAL4, REMOTE4) if family == 4 else (LOCAL6, REMOTE6)
    tunnel = config(mode, local, remote, **gre_keys(options))
    src, dst = tunnel.local.packed, tunnel.remote.packed
    if kind.underlay is Underlay.UDP:
        outer = [Ipv4Outer(src, dst, IpProto.UDP) if family == 4 else
                 Ipv6Outer(src, dst, IpProto.UDP), Udp(src, dst, 49152, tunnel.port)]
    else:
        outer = [Ipv4Outer(src, dst, kind.protocol)]
    packet = inner_packet(mode, 100)
    wire = Stack(*outer, kind.codec(tunnel)).encap(packet)
    carried = 100   # the MTU counts the IP packet, not the frame around it
    assert len(wire) - carried == tunnel.derived_mtu().overhead.total


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(sorted(MODES)), options=st.sets(st.sampled_from(GRE_OPTIONS)),
       underlay_mtu=st.integers(1400, 9000))
def test_a_packet_of_the_device_mtu_fills_the_underlay_exactly_and_one_byte_more_is_too_big(
        mode, options, underlay_mtu):
    keys = gre_keys(options) if "key" in MODES[mode].config.model_fields else {}
    tunnel = config(mode, **keys, **{"underlay-mtu": underlay_mtu})
    mtu = tunnel.device_mtu
    datagram, _ = encapsulated(tunnel, inner_packet(mode, mtu))
    wire = len(datagram) + (KERNEL_UDP_AND_IP[4] if MODES[mode].underlay is Underlay.UDP else 0)
    assert wire == underlay_mtu
    datagram, endpoint = encapsulated(tunnel, inner_packet(mode, mtu + 1))
    assert datagram is None and endpoint.counters.drops[DropReason.TOO_BIG] == 1


@pytest.mark.parametrize("mode, options", MODES_WITH_OPTIONS)
def test_scapy_reads_the_datagram_a_tunnel_sends_as_its_mode(mode, options):
    tunnel = config(mode, **gre_keys(options))
    packet = inner_packet(mode, 200)
    datagram, _ = encapsulated(tunnel, packet)
    if MODES[mode].underlay is Underlay.UDP:
        header = VXLAN(datagram)
        assert header.vni == tunnel.id and raw(header.payload) == packet
        return
    outer = IP(datagram)
    assert (outer.src, outer.dst, outer.proto, outer.len) == (LOCAL4, REMOTE4, MODES[mode].protocol,
                                                              len(datagram))
    if MODES[mode].protocol == IpProto.GRE:
        gre = outer[GRE]
        assert (gre.key_present, gre.seqnum_present, gre.chksum_present) == tuple(
            int(option in options) for option in GRE_OPTIONS)
        assert gre.proto == (0x6558 if MODES[mode].ethernet else 0x0800)
        assert raw(gre.payload) == packet and (gre.key == 1234 if "key" in options else True)
    else:
        assert raw(outer.payload) == packet


# -- the registry -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_has_a_config_model_whose_mode_literal_is_its_name(name):
    mode = MODES[name]
    assert mode.name == name
    names = typing.get_args(mode.config.model_fields["mode"].annotation)
    assert name in names
    # A model that takes another mode's name is that mode's model too.
    assert all(MODES[other].config is mode.config for other in names)
    assert config(name).kind is mode


def test_a_mode_cannot_be_registered_twice():
    from tunnelrouter.modes.base import register
    with pytest.raises(ValueError, match="registered twice"):
        register(MODES["gre"])


@pytest.mark.parametrize("mode, options", MODES_WITH_OPTIONS)
def test_a_datagram_a_tunnel_sends_has_a_key_of_the_tunnel_that_receives_it(mode, options):
    sender = config(mode, **gre_keys(options))
    receiver = mirrored(sender)
    kind = MODES[mode]
    datagram, _ = encapsulated(sender, inner_packet(mode, 120))
    offset = header_offset(mode)
    assert kind.demux_key(memoryview(datagram), offset, str(sender.local)) in kind.keys(receiver)
    # An ICMP error quotes the datagram from its tunnel header on, sent to our remote.
    quote = memoryview(datagram)[offset:]
    assert kind.demux_key(quote, 0, str(sender.remote)) in kind.keys(sender)
    assert kind.tunnel_header_length(quote) == kind.codec(sender).overhead


SHARING = {"gre": ["gre", "gretap"], "gretap": ["gre", "gretap"], "vxlan": ["vxlan"],
           "ipip": ["ipip"], "sit": ["sit"]}


@settings(max_examples=200, deadline=None)
@given(first=st.sampled_from(sorted(MODES)), data=st.data())
def test_tunnels_a_configuration_puts_on_one_socket_are_told_apart_by_their_keys(first, data):
    second = data.draw(st.sampled_from(SHARING[first]))
    peers = ["198.51.100.2", "198.51.100.3"]
    receivers = []
    for mode in (first, second):
        keys = {"remote": data.draw(st.sampled_from(peers))}
        if mode == "vxlan":
            keys["id"] = data.draw(st.sampled_from([1, 2]))
        elif "key" in MODES[mode].config.model_fields:
            keys["key"] = data.draw(st.sampled_from([None, 1, 2]))
        receivers.append(config(mode, **keys))
    kinds = [MODES[first], MODES[second]]
    keys = [set(kind.keys(receiver)) for kind, receiver in zip(kinds, receivers)]
    bodies = {f"t{i}": receiver.model_dump(mode="json", by_alias=True, exclude_defaults=True)
              for i, receiver in enumerate(receivers)}
    try:
        parse_config({"tunnels": bodies})
    except ConfigError:
        assert keys[0] & keys[1], "refused two tunnels whose keys differ"
        return
    assert not keys[0] & keys[1]
    for i, (kind, receiver) in enumerate(zip(kinds, receivers)):
        sender = mirrored(receiver)
        datagram, _ = encapsulated(sender, inner_packet(kind.name, 100))
        key = kind.demux_key(memoryview(datagram), header_offset(kind.name), str(sender.local))
        assert key in keys[i] and key not in keys[1 - i]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(MODES)), datagram=st.binary(max_size=80), data=st.data())
def test_demux_key_and_header_length_never_raise_on_any_bytes(name, datagram, data):
    mode = MODES[name]
    offset = data.draw(st.integers(0, len(datagram)))
    source = data.draw(st.sampled_from(["198.51.100.2", "2001:db8::2"]))
    key = mode.demux_key(memoryview(datagram), offset, source)
    hash(key)
    length = mode.tunnel_header_length(memoryview(datagram))
    assert length is None or (isinstance(length, int) and length >= 0)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["gre", "gretap"]), datagram=st.binary(max_size=40), data=st.data())
def test_the_gre_demux_key_is_the_key_field_of_the_header(name, datagram, data):
    offset = data.draw(st.integers(0, len(datagram)))
    key = MODES[name].demux_key(memoryview(datagram), offset, "198.51.100.2")
    assert key == ("198.51.100.2", gre_key(memoryview(datagram)[offset:]))


@settings(max_examples=200, deadline=None)
@given(checksum=st.booleans(), key=st.none() | st.integers(0, 0xFFFFFFFF),
       sequence=st.booleans(), payload=st.binary(max_size=20), prefix=st.binary(max_size=24))
def test_the_gre_demux_key_agrees_with_scapy(checksum, key, sequence, payload, prefix):
    header = GRE(chksum_present=int(checksum), key_present=int(key is not None),
                 seqnum_present=int(sequence), key=key, sequence_number=7 if sequence else None,
                 proto=0x0800) / Raw(payload)
    datagram = prefix + raw(header)
    assert MODES["gre"].demux_key(memoryview(datagram), len(prefix), "198.51.100.2") == \
        ("198.51.100.2", key)


@settings(max_examples=200, deadline=None)
# scapy writes a longer header when both the GBP (0x80) and GPE (0x04) bits are set.
@given(vni=st.integers(0, 0xFFFFFF), flags=st.integers(0, 255).filter(lambda f: f & 0x84 != 0x84),
       payload=st.binary(max_size=20), prefix=st.binary(max_size=48))
def test_the_vxlan_demux_key_is_the_vni_when_the_i_flag_says_there_is_one(vni, flags, payload,
                                                                         prefix):
    datagram = prefix + raw(VXLAN(flags=flags, vni=vni) / Raw(payload))
    key = MODES["vxlan"].demux_key(memoryview(datagram), len(prefix), "198.51.100.2")
    if flags & 0x08:
        assert key == vni
    else:
        assert key not in MODES["vxlan"].keys(config("vxlan", id=vni))
        assert key.reason is DropReason.VXLAN_NO_VNI_FLAG


# -- nothing outside modes/ names a mode ------------------------------------------------

NAMES = frozenset(KERNEL_MTU)


def mode_names_in(source: str) -> list[tuple[int, str]]:
    """String constants of ``source`` that name a mode, or are a word made with one
    ("gre1", "vxlan-port"); docstrings and prose (text with spaces) do not count."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docstrings and " " not in node.value.strip():
            words = {word for word in _split(node.value.lower())}
            if words & NAMES:
                found.append((node.lineno, node.col_offset, node.value))
    return [(line, value) for line, _, value in sorted(found)]


def _split(text: str) -> list[str]:
    word, words = "", []
    for character in text + " ":
        if character.isalpha():
            word += character
        else:
            words.append(word)
            word = ""
    return [w for w in words if w]


def test_the_mode_name_finder_finds_what_it_should():
    source = ('"""A docstring about gre and vxlan."""\n'
              '# a comment about sit\n'
              'def f():\n    """gre"""\n    return "gre", f"{x}vxlan", "ipip1", "mode-sit"\n'
              'HELP = "GRE key present"\n'
              'OTHER = "site", "gretapper", "vxlans"\n')
    assert mode_names_in(source) == [(5, "gre"), (5, "vxlan"), (5, "ipip1"), (5, "mode-sit")]


def test_no_file_outside_modes_names_a_mode():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "modes" in path.relative_to(PACKAGE).parts:
            continue
        found = mode_names_in(path.read_text())
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}
