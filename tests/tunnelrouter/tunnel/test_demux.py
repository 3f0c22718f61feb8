"""Which tunnel a datagram (or an error about one of ours) belongs to, on a shared socket.

GRE by source and key, ipip and sit by source, VXLAN by VNI and then the remotes;
what belongs to no tunnel is counted where it can be blamed: on the demultiplexer,
or on the one tunnel that takes it anyway to say why it is not its own.
"""

import pytest

from tunnelrouter.modes import Underlay
from tunnelrouter.tunnel.demux import Demux
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.tunnelrouter.tunnel.harness import (
    LOCAL, OTHER, REMOTE, STRANGER, THIRD, Harness, frame, gre_datagram, inner4, inner6,
    ipip_datagram, tunnel_configs, vxlan_datagram, wan_error_about, wire_batch)


def demux_of(**bodies) -> tuple[Demux, dict[str, Harness]]:
    """The tunnels of one configuration, all on one underlay socket, and its demultiplexer."""
    tunnels = {name: Harness(config=config) for name, config in tunnel_configs(bodies).items()}
    first = next(iter(tunnels.values()))
    demux = Demux(first.config.kind)
    for tunnel in tunnels.values():
        assert tunnel.config.kind.underlay_end(tunnel.config) == \
            first.config.kind.underlay_end(first.config)
        demux.add(tunnel.endpoint)
    return demux, tunnels


def gre(remote=REMOTE, **keys):
    return {"mode": "gre", "local": LOCAL, "remote": remote} | keys


def gretap(remote=REMOTE, **keys):
    return {"mode": "gretap", "local": LOCAL, "remote": remote} | keys


def vxlan(vni, *remotes):
    return {"mode": "vxlan", "local": LOCAL, "id": vni, "remotes": list(remotes)}


def decapsulate(demux: Demux, underlay: Underlay, *arrivals) -> list:
    """``arrivals`` are ``(datagram, source)``; returns, for each, the endpoint that took it."""
    batch = wire_batch([d for d, _ in arrivals], [s for _, s in arrivals], underlay)
    demux.decapsulate(batch, 100.0)
    return batch.endpoints[:batch.count]


def drops(demux: Demux, tunnels: dict[str, Harness]) -> dict[str, dict[str, int]]:
    """Every drop so far, by where it was counted: ``"demux"`` or a tunnel's name."""
    found = {"demux": demux.counters.drops_by_label()} | {
        name: tunnel.drops for name, tunnel in tunnels.items()}
    return {where: counted for where, counted in found.items() if counted}


# -- datagrams -------------------------------------------------------------------------------

def test_gre_datagrams_go_to_the_tunnel_their_source_and_key_name():
    demux, t = demux_of(a=gre(key=1), b=gre(key=2), tap=gretap(key=3), o=gre(remote=OTHER))
    arrivals = [(gre_datagram(inner4(), key=2), REMOTE), (gre_datagram(inner4(), key=1), REMOTE),
                (gre_datagram(frame(inner4()), key=3, ethernet=True), REMOTE),
                (gre_datagram(inner6()), OTHER)]
    targets = decapsulate(demux, Underlay.RAW, *arrivals)
    assert targets == [t["b"].endpoint, t["a"].endpoint, t["tap"].endpoint, t["o"].endpoint]
    assert drops(demux, t) == {}


def test_gre_datagrams_with_a_checksum_are_told_apart_by_the_key_after_it():
    demux, t = demux_of(a=gre(key=1, checksum=True), b=gre(key=2, checksum=True))
    targets = decapsulate(demux, Underlay.RAW, (gre_datagram(inner4(), key=2, checksum=True),
                                                REMOTE))
    assert targets == [t["b"].endpoint]


def test_a_gre_key_none_of_several_tunnels_of_the_peer_has_is_counted_on_the_demux():
    demux, t = demux_of(a=gre(key=1), b=gre(key=2))
    targets = decapsulate(demux, Underlay.RAW, (gre_datagram(inner4(), key=9), REMOTE),
                          (gre_datagram(inner4()), REMOTE))
    assert targets == [None, None]
    assert drops(demux, t) == {"demux": {"gre_wrong_key": 2}}


@pytest.mark.parametrize("tunnel_key, datagram_key", [(1, 9), (1, None), (None, 9)])
def test_with_exactly_one_gre_tunnel_for_a_peer_a_wrong_key_is_counted_on_that_tunnel(
        tunnel_key, datagram_key):
    keys = {} if tunnel_key is None else {"key": tunnel_key}
    demux, t = demux_of(a=gre(**keys), o=gre(remote=OTHER, key=5))
    targets = decapsulate(demux, Underlay.RAW, (gre_datagram(inner4(), key=datagram_key), REMOTE))
    assert targets == [None]
    assert drops(demux, t) == {"a": {"gre_wrong_key": 1}}


@pytest.mark.parametrize("bodies, datagram", [
    ({"a": gre(key=1)}, gre_datagram(inner4(), key=1, src=STRANGER)),
    ({"a": {"mode": "ipip", "local": LOCAL, "remote": REMOTE}}, ipip_datagram(inner4())),
    ({"a": {"mode": "sit", "local": LOCAL, "remote": REMOTE}}, ipip_datagram(inner6())),
])
def test_a_raw_datagram_from_an_address_no_tunnel_has_is_counted_as_not_a_peer(bodies,
                                                                              datagram):
    demux, t = demux_of(**bodies)
    assert decapsulate(demux, Underlay.RAW, (datagram, STRANGER)) == [None]
    assert drops(demux, t) == {"demux": {"not_a_peer": 1}}


@pytest.mark.parametrize("mode, packet", [("ipip", inner4()), ("sit", inner6())])
def test_ipip_and_sit_datagrams_go_to_the_tunnel_of_their_source(mode, packet):
    demux, t = demux_of(a={"mode": mode, "local": LOCAL, "remote": REMOTE},
                        b={"mode": mode, "local": LOCAL, "remote": OTHER})
    targets = decapsulate(demux, Underlay.RAW, (ipip_datagram(packet, src=OTHER), OTHER),
                          (ipip_datagram(packet), REMOTE))
    assert targets == [t["b"].endpoint, t["a"].endpoint] and drops(demux, t) == {}


def test_vxlan_datagrams_go_to_the_tunnel_of_their_vni_from_its_remotes_only():
    demux, t = demux_of(v42=vxlan(42, REMOTE, OTHER), v43=vxlan(43, THIRD))
    payload = frame(inner4())
    targets = decapsulate(demux, Underlay.UDP, (vxlan_datagram(payload, 42), OTHER),
                          (vxlan_datagram(payload, 43), THIRD),
                          (vxlan_datagram(payload, 42), REMOTE),
                          (vxlan_datagram(payload, 42), THIRD))
    assert targets == [t["v42"].endpoint, t["v43"].endpoint, t["v42"].endpoint, None]
    # A known VNI from the wrong VTEP: the tunnel of that VNI says why it refuses it.
    assert drops(demux, t) == {"v42": {"not_a_peer": 1}}


@pytest.mark.parametrize("datagram, source, reason", [
    (vxlan_datagram(frame(inner4()), 44), REMOTE, "vxlan_unknown_vni"),
    (vxlan_datagram(frame(inner4()), 44), STRANGER, "not_a_peer"),
    (vxlan_datagram(frame(inner4()), 42)[:7], REMOTE, "truncated"),
    (b"", REMOTE, "truncated"),
    (b"\x00" + vxlan_datagram(frame(inner4()), 42)[1:], REMOTE, "vxlan_no_vni_flag"),
])
def test_a_vxlan_datagram_no_tunnel_can_take_is_counted_on_the_demux(datagram, source, reason):
    demux, t = demux_of(v42=vxlan(42, REMOTE, OTHER), v43=vxlan(43, THIRD))
    assert decapsulate(demux, Underlay.UDP, (datagram, source)) == [None]
    assert drops(demux, t) == {"demux": {reason: 1}}


def test_a_batch_mixes_tunnels_and_strays_and_each_is_decided_alone():
    demux, t = demux_of(a=gre(key=1), b=gre(key=2))
    targets = decapsulate(demux, Underlay.RAW, (gre_datagram(inner4(), key=1), REMOTE),
                          (gre_datagram(inner4(), key=1), STRANGER),
                          (gre_datagram(inner4(), key=2), REMOTE),
                          (gre_datagram(inner4(), key=3), REMOTE))
    assert targets == [t["a"].endpoint, None, t["b"].endpoint, None]
    assert drops(demux, t) == {"demux": {"not_a_peer": 1, "gre_wrong_key": 1}}


def test_two_tunnels_with_the_same_key_are_refused_and_a_removed_tunnel_takes_nothing():
    first, second = Harness("gre", key=1), Harness("gre", key=1)
    demux = Demux(first.config.kind)
    demux.add(first.endpoint)
    with pytest.raises(ValueError, match="same key"):
        demux.add(second.endpoint)
    demux.remove(first.endpoint)
    assert decapsulate(demux, Underlay.RAW, (gre_datagram(inner4(), key=1), REMOTE)) == [None]
    assert demux.counters.drops_by_label() == {"not_a_peer": 1}


# -- errors about our datagrams --------------------------------------------------------------

def test_an_error_reaches_the_gre_tunnel_that_sent_the_quoted_datagram():
    demux, t = demux_of(a=gre(key=1, addresses=["192.168.9.1/24"]),
                        b=gre(key=2, addresses=["192.168.8.1/24"]))
    (sent,) = t["b"].send(inner4(200))
    error = wan_error_about(sent.data, Underlay.RAW, icmp_type=11, code=0)
    assert demux.wan_error(error, 100.0) == (t["b"].endpoint,)
    assert (t["a"].counters.wan_errors, t["b"].counters.wan_errors) == (0, 1)
    assert len(t["b"].endpoint.outbox.device_packets) == 1 and not t["a"].endpoint.outbox


def test_a_too_big_error_lowers_only_the_path_of_the_tunnel_it_is_about():
    demux, t = demux_of(a=gre(key=1), b=gre(key=2))
    (sent,) = t["a"].send(inner4(1472))    # GRE with a key leaves 1472 of 1500
    demux.wan_error(wan_error_about(sent.data, Underlay.RAW, info=1400), 100.0)
    assert (t["a"].endpoint.effective_mtu, t["b"].endpoint.effective_mtu) == (1372, 1472)


@pytest.mark.parametrize("why", ["a key no tunnel has", "a peer the tunnel does not have",
                                 "a quote cut before the key", "no quote at all"])
def test_an_error_about_no_datagram_of_ours_is_ignored(why):
    demux, t = demux_of(a=gre(key=1), b=gre(key=2))
    (sent,) = t["a"].send(inner4(200))
    forged = sent.data[:24] + (9).to_bytes(4, "big") + sent.data[28:]
    error = {
        "a key no tunnel has": wan_error_about(forged, Underlay.RAW, icmp_type=11, code=0),
        "a peer the tunnel does not have": wan_error_about(sent.data, Underlay.RAW, icmp_type=11,
                                                           code=0, peer=STRANGER),
        "a quote cut before the key": wan_error_about(sent.data, Underlay.RAW, icmp_type=11,
                                                      code=0, cut=26),
        "no quote at all": wan_error_about(sent.data, Underlay.RAW, icmp_type=11, code=0, cut=0),
    }[why]
    assert demux.wan_error(error, 100.0) == ()
    assert demux.counters.wan_errors == 1
    assert (t["a"].counters.wan_errors, t["b"].counters.wan_errors) == (0, 0)
    assert not t["a"].endpoint.outbox and not t["b"].endpoint.outbox


def test_an_error_about_a_vxlan_datagram_reaches_the_tunnel_of_its_vni_and_remote():
    demux, t = demux_of(v42=vxlan(42, REMOTE, OTHER), v43=vxlan(43, THIRD))
    (sent, *_) = t["v42"].send(frame(inner4(1450), dst="ff:ff:ff:ff:ff:ff"))
    about = wan_error_about(sent.data, Underlay.UDP, info=1400, peer=OTHER)
    assert demux.wan_error(about, 100.0) == (t["v42"].endpoint,)
    assert t["v42"].endpoint.pmtu.learnt.keys() == {OTHER}
    stray = wan_error_about(sent.data, Underlay.UDP, info=1300, peer=THIRD)
    assert demux.wan_error(stray, 100.0) == (), "THIRD is v43's remote, not v42's"
    assert t["v43"].counters.wan_errors == 0 and t["v43"].endpoint.pmtu.learnt == {}


def test_an_error_about_an_ipip_datagram_reaches_the_tunnel_of_its_destination():
    demux, t = demux_of(a={"mode": "ipip", "local": LOCAL, "remote": REMOTE},
                        b={"mode": "ipip", "local": LOCAL, "remote": OTHER})
    (sent,) = t["b"].send(inner4(1400))
    error = wan_error_about(sent.data, Underlay.RAW, ErrorOrigin.ICMP4, info=1300, peer=OTHER)
    assert demux.wan_error(error, 100.0) == (t["b"].endpoint,)
    assert t["b"].endpoint.effective_mtu == 1280 and t["a"].endpoint.effective_mtu == 1480
