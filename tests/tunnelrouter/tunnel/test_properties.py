"""Properties of the whole tunnel core against whatever arrives.

Endpoints of every mode (and the option sets that carry state: GRE key, sequence
numbers and checksums; VXLAN with several remotes and a small FDB), and the
demultiplexers in front of them, get arbitrary datagrams from the wire,
arbitrary packets from their devices and arbitrary errors from the WAN: random
bytes, valid ones (built by scapy) with bytes changed and cut. Then:

- nothing raises;
- every datagram is delivered to one tunnel or counted as one drop, never both;
  every device packet goes out (in the batch or as slow-path datagrams) or is
  counted; what goes out with DF fits the path;
- state moves only for what is accepted: the FDB does not learn from a dropped
  datagram, a GRE receive window does not move for one (the new-epoch run moves
  it with the datagram that completes the run, which is accepted; RFC 6040's drop
  comes after the window, as in Linux), and an error about a datagram that
  fitted does not teach a path MTU;
- an error never raises the effective MTU nor takes it below the floor, and any
  ICMP error the core writes back carries a correct checksum.
"""

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP

from encap.errors import DropReason
from tunnelrouter.modes import Underlay
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.demux import Demux
from tunnelrouter.tunnel.pmtu import MINIMUM_PATH_MTU
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

from tests.encap.strategies import ipv4_packets, ipv6_packets, mutated
from tests.tunnelrouter.tunnel.harness import (
    LOCAL, OTHER, REMOTE, STRANGER, THIRD, device_batch, gre_datagram, icmp_checksum_ok, inner4,
    inner6, ipip_datagram, tunnel_configs, vxlan_datagram, wan_error_about, wire_batch)

PEERS = (REMOTE, OTHER, THIRD, STRANGER)

# The tunnels, by the underlay socket they share.
SOCKETS = {
    "gre": {"gre_seq": {"mode": "gre", "local": LOCAL, "remote": REMOTE, "key": 7,
                        "sequence": True, "checksum": True, "addresses": ["192.168.9.1/24",
                                                                           "fd09::1/64"]},
            "tap": {"mode": "gretap", "local": LOCAL, "remote": REMOTE, "key": 3,
                    "addresses": ["192.168.8.1/24", "fd08::1/64"]},
            "gre_plain": {"mode": "gre", "local": LOCAL, "remote": OTHER}},
    "ipip": {"ipip": {"mode": "ipip", "local": LOCAL, "remote": REMOTE,
                      "addresses": ["192.168.7.1/24"]}},
    "sit": {"sit": {"mode": "sit", "local": LOCAL, "remote": REMOTE,
                    "addresses": ["fd07::1/64"]}},
    "vxlan": {"vx42": {"mode": "vxlan", "local": LOCAL, "id": 42, "max-fdb": 4,
                       "remotes": [REMOTE, OTHER, THIRD],
                       "addresses": ["192.168.6.1/24", "fd06::1/64"]},
              "vx43": {"mode": "vxlan", "local": LOCAL, "id": 43, "remotes": [THIRD]}},
}
CONFIGS = {socket: tunnel_configs(bodies) for socket, bodies in SOCKETS.items()}
ENDPOINTS = {name: config for configs in CONFIGS.values() for name, config in configs.items()
             if name not in ("gre_plain", "vx43")}
UNDERLAY = {socket: next(iter(configs.values())).kind.underlay
            for socket, configs in CONFIGS.items()}
PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- what arrives -----------------------------------------------------------------------------

macs = st.binary(min_size=6, max_size=6)
# Packets from hosts an ICMP error may be sent to (the encap strategies' addresses are any
# four bytes, which hypothesis likes to make 0.0.0.0), as well as from anywhere.
hosts_v4 = st.builds(inner4, size=st.integers(28, 1500), df=st.booleans(),
                     tos=st.integers(0, 255), ttl=st.integers(0, 255))
hosts_v6 = st.builds(inner6, size=st.integers(48, 1500), tc=st.integers(0, 255),
                     hlim=st.integers(0, 255))
packets_v4 = st.one_of(hosts_v4, ipv4_packets(1500))
packets_v6 = st.one_of(hosts_v6, ipv6_packets(1500))


@st.composite
def frames(draw):
    packet = draw(st.one_of(packets_v4, packets_v6, st.binary(max_size=64)))
    ethertype = draw(st.sampled_from([b"\x08\x00" if packet[:1] < b"\x60" else b"\x86\xdd",
                                      b"\x08\x06", b"\x08\x00"]))
    return draw(macs) + draw(macs) + ethertype + packet


def sequence_numbers():
    return st.one_of(st.integers(0, 300), st.integers(0, 0xFFFFFFFF))


@st.composite
def valid_datagrams(draw, socket: str) -> tuple[bytes, str]:
    """A datagram one of the socket's tunnels would take (or nearly), and its source."""
    config = draw(st.sampled_from(list(CONFIGS[socket].values())))
    peers = [str(peer) for peer in config.peers]
    source = draw(st.one_of(st.sampled_from(peers), st.sampled_from(PEERS)))
    tos = draw(st.integers(0, 255))
    if config.mode == "vxlan":
        vni = draw(st.sampled_from([42, 43, 44]))
        return vxlan_datagram(draw(frames()), vni), source
    if config.mode in ("ipip", "sit"):
        packet = draw(packets_v4 if config.mode == "ipip" else packets_v6)
        return ipip_datagram(packet, tos=tos, src=source), source
    ethernet = config.mode == "gretap"
    payload = draw(frames() if ethernet else st.one_of(packets_v4, packets_v6))
    key = draw(st.sampled_from([config.key, config.key, None, 9]))
    sequence = draw(sequence_numbers()) if config.sequence or draw(st.booleans()) else None
    return gre_datagram(payload, key=key, sequence=sequence,
                        checksum=config.checksum or draw(st.booleans()), ethernet=ethernet,
                        tos=tos, src=source), source


def arrivals(socket: str):
    """(datagram, source, tos) as a socket read reports them; a raw socket's TOS is the
    outer header's (None: read from it)."""
    random = st.tuples(st.binary(max_size=120), st.sampled_from(PEERS))
    datagram = st.one_of(random, valid_datagrams(socket),
                         valid_datagrams(socket).flatmap(
                             lambda ds: st.tuples(mutated(st.just(ds[0])), st.just(ds[1]))))
    tos = st.none() if UNDERLAY[socket] is Underlay.RAW else st.integers(0, 3)
    return st.tuples(datagram, tos).map(lambda a: (a[0][0], a[0][1], a[1]))


def carried_packets(config):
    """Packets (or frames) a tunnel of this configuration carries."""
    if config.kind.ethernet:
        return frames()
    families = config.kind.inner_families
    return st.one_of(*([packets_v4] if 4 in families else []) +
                     ([packets_v6] if 6 in families else []))


def device_packets(config):
    """What a device may hand over: anything, and packets (of either family) or frames."""
    valid = frames() if config.kind.ethernet else st.one_of(packets_v4, packets_v6)
    return st.one_of(st.binary(max_size=120), valid, mutated(valid))


# -- the state that may move only for what is accepted ---------------------------------------

def drops(endpoint_or_demux) -> int:
    return sum(endpoint_or_demux.counters.drops)


def ecn_drops(*endpoints) -> int:
    """Datagrams dropped by RFC 6040 (CE on a Not-ECT packet): that rule applies after the
    tunnel took the datagram, and its sequence number, as Linux's ip_tunnel_rcv does."""
    return sum(e.counters.drops[DropReason.ECN_CE_ON_NOT_ECT] for e in endpoints)


def state(endpoint) -> tuple:
    """The FDB and the GRE receive window: what a datagram the tunnel drops must not move."""
    fdb = dict(endpoint.fdb.entries) if hasattr(endpoint, "fdb") else None
    header = getattr(endpoint, "header", None)
    window = header.expected_sequence if getattr(header, "sequence", False) else None
    return fdb, window


def build_demux(socket: str):
    endpoints = {name: endpoint_for(config) for name, config in CONFIGS[socket].items()}
    demux = Demux(next(iter(CONFIGS[socket].values())).kind)
    for endpoint in endpoints.values():
        demux.add(endpoint)
    return demux, endpoints


# -- the wire ---------------------------------------------------------------------------------

@pytest.mark.parametrize("socket", SOCKETS)
@PROPERTY
@given(data=st.data())
def test_every_datagram_is_delivered_or_counted_once_and_a_dropped_one_changes_nothing(
        socket, data):
    demux, endpoints = build_demux(socket)
    for datagram, source, tos in data.draw(st.lists(arrivals(socket), min_size=1, max_size=8)):
        before = {name: state(endpoint) for name, endpoint in endpoints.items()}
        drops_before = drops(demux) + sum(map(drops, endpoints.values()))
        ecn_before = ecn_drops(*endpoints.values())
        batch = wire_batch([datagram], source, UNDERLAY[socket], tos)
        demux.decapsulate(batch, 100.0)
        target = batch.endpoints[0]
        counted = drops(demux) + sum(map(drops, endpoints.values())) - drops_before
        event(f"delivered by {target.name}" if target is not None else "dropped")
        if target is not None:
            assert counted == 0 and source in target.peers
            assert len(batch.packets[0]) <= len(datagram)
            for name, endpoint in endpoints.items():
                if endpoint is not target:
                    assert state(endpoint) == before[name]
            continue
        assert counted == 1
        ecn_dropped = ecn_drops(*endpoints.values()) > ecn_before
        for name, endpoint in endpoints.items():
            fdb, window = state(endpoint)
            assert fdb == before[name][0], "the FDB learnt from a dropped datagram"
            assert window == before[name][1] or ecn_dropped, "the window moved for a drop"


@pytest.mark.parametrize("socket", SOCKETS)
@PROPERTY
@given(data=st.data())
def test_a_whole_batch_of_datagrams_is_delivered_or_counted(socket, data):
    demux, endpoints = build_demux(socket)
    batch_arrivals = data.draw(st.lists(arrivals(socket), min_size=1, max_size=16))
    batch = wire_batch([a[0] for a in batch_arrivals], [a[1] for a in batch_arrivals],
                       UNDERLAY[socket],
                       None if UNDERLAY[socket] is Underlay.RAW else [a[2] for a in batch_arrivals])
    demux.decapsulate(batch, 100.0)
    delivered = sum(target is not None for target in batch.endpoints[:batch.count])
    assert delivered + drops(demux) + sum(map(drops, endpoints.values())) == len(batch_arrivals)


SENDER_STEPS = st.one_of(
    st.tuples(st.just("next"), st.integers(1, 6)),         # in order
    st.tuples(st.just("late"), st.integers(0, 200)),       # reordered, duplicated, replayed
    st.tuples(st.just("gap"), st.integers(2, 1000)),       # lost on the way
    st.tuples(st.just("restart"), st.integers(1, 6)),      # the peer numbers from 0 again
    st.tuples(st.just("forged"), st.integers(0, 0xFFFFFFFF)))


def sent_sequences(counter: int, action: str, amount: int) -> tuple[int, list[int]]:
    """The sender's counter after a step, and the numbers it put on the wire."""
    if action == "next":
        return (counter + amount) & 0xFFFFFFFF, [(counter + n) & 0xFFFFFFFF
                                                 for n in range(1, amount + 1)]
    if action == "gap":
        counter = (counter + amount) & 0xFFFFFFFF
        return counter, [counter]
    if action == "restart":
        return amount - 1, list(range(amount))
    return counter, [(counter - amount) & 0xFFFFFFFF if action == "late" else amount]


@PROPERTY
@given(steps=st.lists(st.tuples(SENDER_STEPS, st.booleans(), st.booleans()), max_size=30),
       data=st.data())
def test_the_gre_receive_window_moves_only_with_an_accepted_datagram(steps, data):
    endpoint = endpoint_for(ENDPOINTS["gre_seq"])
    gre = endpoint.header
    counter = 1000
    for (action, amount), with_key, changed in steps:
        counter, sequences = sent_sequences(counter, action, amount)
        for sequence in sequences:
            datagram = gre_datagram(data.draw(hosts_v4), key=7 if with_key else 9,
                                    sequence=sequence, checksum=True)
            if changed:
                datagram = data.draw(mutated(st.just(datagram)))
            expected, epochs = gre.expected_sequence, gre.epochs
            ecn_before = ecn_drops(endpoint)
            batch = wire_batch([datagram], REMOTE, Underlay.RAW)
            accepted = endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 100.0)
            event("new epoch" if gre.epochs > epochs else "accepted" if accepted else "dropped")
            if not accepted:
                if ecn_drops(endpoint) == ecn_before:
                    assert (gre.expected_sequence, gre.epochs) == (expected, epochs)
                continue
            carried = int.from_bytes(datagram[(datagram[0] & 0x0F) * 4 + 12:][:4], "big")
            assert gre.expected_sequence == (carried + 1) & 0xFFFFFFFF
            in_order = expected is None or (carried - expected) & 0xFFFFFFFF < 1 << 31
            assert in_order or gre.epochs == epochs + 1, "accepted from behind, no new epoch"


# -- the device -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENDPOINTS)
@PROPERTY
@given(data=st.data())
def test_every_device_packet_goes_out_or_is_counted_and_what_has_df_fits_the_path(name, data):
    config = ENDPOINTS[name]
    endpoint = endpoint_for(config)
    path = data.draw(st.sampled_from([None, 600, 1000, 1300]))
    if path is not None:
        endpoint.wan_error(WanError(ErrorOrigin.LOCAL, 0, 0, path, REMOTE, memoryview(b""), 0),
                           100.0)
    raw = config.kind.underlay is Underlay.RAW
    # Outer bytes besides the tunnel's own header: the IPv4 header of a raw datagram is in
    # it, a VXLAN datagram's IPv4 and UDP headers are the kernel's.
    outside = 0 if raw else 28
    for packet in data.draw(st.lists(device_packets(config), min_size=1,
                                     max_size=6)):
        before = drops(endpoint)
        batch = device_batch([packet])
        endpoint.encapsulate(batch, 100.0)
        sent = batch.packets[0]
        slow = endpoint.outbox.datagrams
        counted = drops(endpoint) - before
        event("sent" if sent is not None else "slow path" if slow else "dropped")
        assert sent is not None or counted or slow, "a packet vanished"
        assert not (sent is not None and counted), "a packet went out and was counted"
        assert len(endpoint.outbox.device_packets) <= 1
        for reply in endpoint.outbox.device_packets:
            assert icmp_checksum_ok(reply, config.kind.ethernet)
        datagrams = ([bytes(sent)] if sent is not None else []) + [d for d, *_ in slow]
        for datagram in datagrams:
            event("DF" if raw and datagram[6] & 0x40 else "no DF")
            if raw:
                outer = IP(datagram)
                assert (outer.src, outer.dst, outer.len) == (LOCAL, REMOTE, len(datagram))
                if outer.flags.DF:
                    assert len(datagram) <= endpoint.effective_mtu + endpoint.pmtu_overhead
            else:
                assert len(datagram) + outside <= endpoint.effective_mtu + \
                    endpoint.pmtu_overhead
        endpoint.outbox.datagrams.clear()
        endpoint.outbox.device_packets.clear()


# -- the WAN ----------------------------------------------------------------------------------

# ICMPv4 (type, code) pairs RFC 2003 §4 has a rule for, and ICMPv6 packet too big.
MEANINGFUL_ERRORS = [(3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (11, 0), (5, 0), (4, 0),
                     (12, 0), (2, 0)]


@st.composite
def wan_errors(draw, endpoint, config, peers):
    """An error as the I/O side reads it: about one of our datagrams (quoted as sent, or
    changed and cut), or about anything at all. Returns it and, for an unchanged quote of
    our own, the datagram's length on the wire."""
    origin = draw(st.sampled_from([ErrorOrigin.ICMP4] * 3 + [ErrorOrigin.ICMP6, ErrorOrigin.LOCAL]))
    icmp_type, code = draw(st.one_of(st.sampled_from(MEANINGFUL_ERRORS),
                                     st.tuples(st.integers(0, 255), st.integers(0, 255))))
    info = draw(st.one_of(st.sampled_from([0, 67, 68, 551, 552, 1000, 1280, 1400, 1500]),
                          st.integers(0, 1600), st.integers(0, 0xFFFFFFFF)))
    peer = draw(st.sampled_from(peers))
    underlay = config.kind.underlay
    kind = draw(st.sampled_from(["ours", "changed", "random"]))
    if kind == "random":
        quote = draw(st.binary(max_size=120))
        length = draw(st.one_of(st.just(0), st.integers(0, 0xFFFF)))
        return WanError(origin, icmp_type, code, info, peer, memoryview(quote), length), None
    batch = device_batch([draw(carried_packets(config))])
    endpoint.encapsulate(batch, 100.0)
    endpoint.outbox.datagrams.clear()
    endpoint.outbox.device_packets.clear()
    if batch.packets[0] is None:
        return WanError(origin, icmp_type, code, info, peer, memoryview(b""), 0), None
    datagram = bytes(batch.packets[0])
    cut = draw(st.one_of(st.none(), st.integers(0, len(datagram))))
    if kind == "changed":
        datagram = draw(mutated(st.just(datagram)))
    error = wan_error_about(datagram, underlay, origin, icmp_type, code, info, peer, cut)
    wire_length = len(datagram) + (0 if underlay is Underlay.RAW else 28)
    return error, (wire_length if kind == "ours" else None)


def check_error_outcome(endpoint, config, error, wire_length, effective_before, learnt_before):
    floor = MINIMUM_PATH_MTU[config.local.version] - endpoint.pmtu_overhead
    assert endpoint.effective_mtu <= effective_before, "an error raised the MTU"
    assert endpoint.effective_mtu >= min(floor, effective_before)
    assert all(mtu >= MINIMUM_PATH_MTU[config.local.version]
               for mtu, _ in endpoint.pmtu.learnt.values())
    if wire_length is not None and error.origin != ErrorOrigin.LOCAL and \
            wire_length <= error.info:
        assert endpoint.pmtu.learnt == learnt_before, "learnt from a datagram that fitted"
    assert len(endpoint.outbox.device_packets) <= 1
    for reply in endpoint.outbox.device_packets:
        assert icmp_checksum_ok(reply, config.kind.ethernet)


@pytest.mark.parametrize("name", ENDPOINTS)
@PROPERTY
@given(data=st.data())
def test_no_error_from_the_wan_raises_the_mtu_or_teaches_a_path_that_fitted(name, data):
    config = ENDPOINTS[name]
    endpoint = endpoint_for(config)
    peers = [str(peer) for peer in config.peers]
    for _ in range(data.draw(st.integers(1, 4))):
        error, wire_length = data.draw(wan_errors(endpoint, config, peers))
        effective, learnt, fdb = endpoint.effective_mtu, dict(endpoint.pmtu.learnt), \
            state(endpoint)
        endpoint.wan_error(error, 100.0)
        event(f"mtu {'lowered' if endpoint.effective_mtu < effective else 'kept'}, "
              f"{'relayed' if endpoint.outbox.device_packets else 'not relayed'}")
        check_error_outcome(endpoint, config, error, wire_length, effective, learnt)
        assert state(endpoint) == fdb
        endpoint.outbox.device_packets.clear()


@pytest.mark.parametrize("socket", ["gre", "vxlan"])
@PROPERTY
@given(data=st.data())
def test_an_error_reaches_only_a_tunnel_that_has_its_peer(socket, data):
    demux, endpoints = build_demux(socket)
    sender_name = data.draw(st.sampled_from(list(endpoints)))
    sender, config = endpoints[sender_name], CONFIGS[socket][sender_name]
    error, wire_length = data.draw(wan_errors(sender, config, list(PEERS)))
    before = {name: (e.effective_mtu, dict(e.pmtu.learnt), e.counters.wan_errors)
              for name, e in endpoints.items()}
    reached = demux.wan_error(error, 100.0)
    if len(reached) > 1:   # a local EMSGSIZE without a quote: every tunnel to the peer
        assert error.origin == ErrorOrigin.LOCAL and not len(error.quote)
    for name, endpoint in endpoints.items():
        if endpoint in reached:
            assert error.peer in endpoint.peers
            assert endpoint.counters.wan_errors == before[name][2] + 1
            check_error_outcome(endpoint, CONFIGS[socket][name], error,
                                wire_length if endpoint is sender else None, *before[name][:2])
        else:
            assert (endpoint.effective_mtu, endpoint.pmtu.learnt,
                    endpoint.counters.wan_errors) == before[name]
            assert not endpoint.outbox.device_packets
    assert (not reached) == (demux.counters.wan_errors == 1)
