"""Keepalives, endpoint by endpoint: the probe each mode sends, how an RFC-conformant peer
(scapy, doing what its routing would) or a tunnelrouter peer sends it back, what the
endpoint then knows of its peer (up, down, round-trip time), and what it must not believe.
"""

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import GRE, Ether

from encap.keepalive import ETHERTYPE_PROBE, MARKER, marker
from tunnelrouter.tunnel.demux import Demux
from tunnelrouter.tunnel.liveness import DOWN, UNKNOWN, UP

from tests.tunnelrouter.tunnel.harness import (
    BODIES, LOCAL, MODES, REMOTE, Harness, gre_datagram, inner4, tunnel_configs, wire_batch)

LINK_LOCAL, PEER_LINK_LOCAL = "fe80::a00:1", "fe80::a00:2"    # fe80::10.0.0.1, fe80::10.0.0.2


def pair(mode: str, **keys) -> tuple[Harness, Harness]:
    """Our end (keepalives every second) and a tunnelrouter at the far end."""
    ours = Harness(mode, keepalive=1, **keys)
    far = BODIES[mode] | {"local": REMOTE}
    far |= {"remotes": [LOCAL]} if mode == "vxlan" else {"remote": LOCAL}
    theirs = Harness(config=tunnel_configs({"t0": far | keys})["t0"])
    return ours, theirs


def probe(harness: Harness, now: float) -> bytes:
    [sent] = harness_tick(harness, now)
    return sent.data


def harness_tick(harness: Harness, now: float):
    before = len(harness.sent)
    harness.tick(now)
    return harness.sent[before:]


def reflected_by_routing(datagram: bytes) -> bytes:
    """What an RFC 2784 / RFC 2003 peer does with a GRE or IP-in-IP probe: takes the inner
    packet out and routes it, to us."""
    outer = IP(datagram)
    inner = outer[GRE].payload if outer.proto == 47 else outer.payload
    return bytes(inner)


# -- the probes on the wire ---------------------------------------------------------------

@pytest.mark.parametrize("keys", [{}, {"key": 7}, {"key": 7, "checksum": True, "sequence": True}])
def test_a_gre_probe_is_a_packet_from_the_peer_to_us_holding_gre_protocol_0(keys):
    ours = Harness("gre", keepalive=1, **keys)
    sent = IP(probe(ours, 100.0))
    assert (sent.src, sent.dst, sent[GRE].proto) == (LOCAL, REMOTE, 0x0800)
    inner = sent[GRE].payload
    assert (inner.src, inner.dst, inner.proto, inner.ttl) == (REMOTE, LOCAL, 47, 255)
    reply = GRE(bytes(inner.payload))
    assert reply.proto == 0 and reply.key == keys.get("key")
    assert bool(reply.chksum_present) == keys.get("checksum", False)
    if reply.chksum_present:
        sent_checksum = reply.chksum
        del reply.chksum
        assert GRE(bytes(reply)).chksum == sent_checksum
    magic, nonce, number = MARKER.unpack(bytes(reply.payload))
    assert (magic, nonce, number) == (b"trKA", ours.endpoint.liveness.nonce, 0)


def test_a_6in4_probe_is_an_icmpv6_echo_between_the_link_local_addresses():
    ours = Harness("sit", keepalive=1)
    inner = IP(probe(ours, 100.0)).payload
    assert isinstance(inner, IPv6) and ICMPv6EchoRequest in inner
    assert (inner.src, inner.dst, inner.hlim) == (LINK_LOCAL, PEER_LINK_LOCAL, 255)
    checksum = inner[ICMPv6EchoRequest].cksum
    del inner[ICMPv6EchoRequest].cksum
    assert IPv6(bytes(inner))[ICMPv6EchoRequest].cksum == checksum


def test_a_vxlan_probe_is_a_frame_of_the_local_experimental_ethertype_to_every_remote():
    ours = Harness("vxlan", keepalive=1, remotes=[REMOTE, "10.0.0.3"])
    [sent] = harness_tick(ours, 100.0)
    assert Ether(sent.data[8:]).type == ETHERTYPE_PROBE
    assert set(sent.destinations) == {(REMOTE, 4789), ("10.0.0.3", 4789)}


# -- answered: by the peer's routing, or by a tunnelrouter -------------------------------

@pytest.mark.parametrize("mode", ["gre", "ipip"])
def test_a_probe_reflected_by_the_peers_routing_brings_the_peer_up(mode):
    ours = Harness(mode, keepalive=1)
    answer = reflected_by_routing(probe(ours, 100.0))
    assert ours.receive(answer, now=100.004) == []       # nothing for the device
    ours.tick(101.0)
    liveness = ours.endpoint.liveness
    assert liveness.state == UP and liveness.probes_answered == 1
    assert liveness.rtt == pytest.approx(0.004)
    assert not ours.drops


@pytest.mark.parametrize("mode", MODES)
def test_a_tunnelrouter_peer_answers_every_modes_probe(mode):
    ours, theirs = pair(mode)
    sent = probe(ours, 100.0)
    assert theirs.receive(sent, source=LOCAL) == []       # the probe is not for its device
    assert theirs.counters.peer_keepalives_answered == 1
    [answer] = theirs.sent
    assert ours.receive(answer.data, now=100.002) == []
    ours.tick(101.0)
    assert ours.endpoint.liveness.state == UP and ours.endpoint.liveness.probes_answered == 1
    assert not ours.drops and not theirs.drops


def test_a_cisco_keepalive_sent_to_us_goes_back_as_it_is():
    ours = Harness("gre", key=5)
    keepalive = bytes(IP(src=LOCAL, dst=REMOTE, proto=47, ttl=255)
                      / GRE(proto=0, key_present=1, key=5))
    assert ours.receive(gre_datagram(keepalive, key=5)) == []
    [back] = ours.sent
    assert back.data == keepalive and back.destinations == ((REMOTE, 0),)


def test_a_packet_from_someone_else_inside_gre_is_delivered_not_reflected():
    ours = Harness("gre")
    packet = bytes(IP(src="10.9.9.9", dst=REMOTE, proto=47) / GRE(proto=0))
    assert ours.receive(gre_datagram(packet)) == [packet]
    assert ours.sent == []


def test_an_echo_reply_that_is_not_ours_passes_to_the_device():
    ours = Harness("sit", keepalive=1)
    other = bytes(IPv6(src=PEER_LINK_LOCAL, dst=LINK_LOCAL) / ICMPv6EchoReply(data=b"ping"))
    assert ours.receive(bytes(IP(src=REMOTE, dst=LOCAL, proto=41) / other)) == [other]


# -- what is believed ---------------------------------------------------------------------

def test_a_silent_peer_is_down_after_its_retries_and_up_again_with_the_first_answer():
    ours = Harness("gre", keepalive=2, **{"keepalive-retries": 3})
    liveness = ours.endpoint.liveness
    states = []
    for now in range(100, 108):
        ours.endpoint.tick(float(now))
        states.append((liveness.state, ours.endpoint.outbox.liveness_changed))
        ours.endpoint.outbox.liveness_changed = False
        ours.drain()
    assert states == [(UNKNOWN, False)] * 6 + [(DOWN, True)] * 1 + [(DOWN, False)]
    assert liveness.probes_sent == 4 and liveness.probes_lost == 3
    answer = reflected_by_routing(ours.sent[-1].data)
    ours.receive(answer, now=108.5)
    ours.endpoint.tick(109.0)
    assert liveness.state == UP and ours.endpoint.outbox.liveness_changed
    assert liveness.transitions == 1


def test_any_datagram_from_the_peer_counts_as_heard():
    ours = Harness("gre", keepalive=1)
    demux = Demux(ours.config.kind)
    demux.add(ours.endpoint)
    for now in range(100, 110):
        batch = wire_batch([gre_datagram(inner4())] * 3, REMOTE, ours.underlay)
        demux.decapsulate(batch, now + 0.5)
        assert batch.endpoints[:3] == [ours.endpoint] * 3
        ours.tick(float(now + 1))
    assert ours.endpoint.liveness.state == UP
    assert ours.endpoint.liveness.probes_answered == 0


def test_an_answer_with_another_nonce_is_dropped_and_believes_nothing():
    ours = Harness("ipip", keepalive=1)
    answer = bytearray(reflected_by_routing(probe(ours, 100.0)))
    answer[-16:] = marker(b"stranger", 0)
    assert ours.receive(bytes(answer)) == []
    assert ours.drops == {"keepalive_not_ours": 1}
    assert ours.endpoint.liveness.probes_answered == 0


def test_without_keepalive_nothing_is_sent_and_the_peer_stays_unknown():
    ours = Harness("gre")
    for now in range(100, 200, 10):
        ours.tick(float(now))
    assert ours.sent == [] and ours.endpoint.liveness.state == UNKNOWN


def test_a_reload_keeps_the_probes_in_flight_and_the_state():
    ours = Harness("gre", keepalive=1)
    answer = reflected_by_routing(probe(ours, 100.0))
    changed = Harness("gre", keepalive=5)
    changed.endpoint.take_over(ours.endpoint)
    changed.receive(answer, now=100.5)
    changed.tick(101.0)
    assert changed.endpoint.liveness.state == UP
    assert changed.endpoint.liveness.probes_answered == 1


def test_the_status_gives_unix_times_and_each_remotes_last_datagram():
    ours, theirs = pair("vxlan")
    theirs.receive(probe(ours, 100.0), source=LOCAL)
    ours.receive(theirs.sent[-1].data, now=100.5)
    ours.tick(101.0)
    status = ours.endpoint.liveness_status(101.0, wall=1_700_000_001.0)
    assert status["state"] == UP and status["since"] == 1_700_000_001.0
    assert status["peers"] == {REMOTE: {"latest_rx": 1_700_000_000.5}}
    assert status["keepalive"] == 1 and status["probes_answered"] == 1


def test_answering_the_peers_probes_is_charged_to_its_rate_limit():
    ours, theirs = pair("gre", **{"rate-limit": {"packets": 10, "burst": "100ms"}})
    probes = [probe(ours, now) for now in (100.0, 101.0, 102.0)]
    theirs.receive(*probes, source=LOCAL, now=102.0)
    assert theirs.counters.peer_keepalives_answered == 1
    assert theirs.drops == {"rate_limited": 2}
