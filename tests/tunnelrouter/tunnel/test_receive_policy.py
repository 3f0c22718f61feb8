"""What a tunnel lets in from its peers, through whole endpoints and demultiplexers: the
anti-spoofing checks in their order (outer source a peer, the GRE key, the inner source
in allowed-ips) and the per-peer rate limit, each drop counted under its reason, and
tokens charged only for what is delivered."""

import pytest

from encap.ecn import CE
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.demux import Demux

from tests.tunnelrouter.tunnel.harness import (
    HOST_A, HOST_A6, MODES, OTHER, REMOTE, STRANGER, Harness, frame, gre_datagram, inner4,
    inner6, ipip_datagram, tunnel_config, vxlan_datagram, wire_batch)

ALLOWED = {"gre": ["192.168.1.0/24", "fd01::/64"], "gretap": ["192.168.1.0/24", "fd01::/64"],
           "vxlan": ["192.168.1.0/24", "fd01::/64"], "ipip": ["192.168.1.0/24"],
           "sit": ["fd01::/64"]}
SPOOFED, SPOOFED6 = "192.168.7.7", "fd07::7"


def from_host(mode: str, spoofed: bool = False, size: int = 100, outer_tos: int = 0) -> bytes:
    """A datagram from the peer of a tunnel of ``mode``, from HOST_A (or a spoofed source);
    the inner packet is Not-ECT."""
    if mode == "sit":
        return ipip_datagram(inner6(size, src=SPOOFED6 if spoofed else HOST_A6), tos=outer_tos)
    packet = inner4(size, src=SPOOFED if spoofed else HOST_A)
    if mode == "ipip":
        return ipip_datagram(packet, tos=outer_tos)
    if mode == "gre":
        return gre_datagram(packet, tos=outer_tos)
    if mode == "gretap":
        return gre_datagram(frame(packet), ethernet=True, tos=outer_tos)
    return vxlan_datagram(frame(packet))


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_source_is_delivered_and_a_spoofed_one_dropped_and_counted(mode):
    tunnel = Harness(mode, **{"allowed-ips": ALLOWED[mode]})
    assert len(tunnel.receive(from_host(mode), from_host(mode, spoofed=True),
                              from_host(mode))) == 2
    assert tunnel.drops == {"source_not_allowed": 1}


@pytest.mark.parametrize("mode", MODES)
def test_without_allowed_ips_every_source_is_delivered(mode):
    tunnel = Harness(mode)
    assert len(tunnel.receive(from_host(mode), from_host(mode, spoofed=True))) == 2
    assert tunnel.drops == {}


def test_a_family_the_list_does_not_name_is_not_let_in():
    tunnel = Harness("gre", **{"allowed-ips": ["192.168.1.0/24"]})
    assert tunnel.receive(gre_datagram(inner6())) == []
    assert tunnel.drops == {"source_not_allowed": 1}


def test_a_spoofed_frame_teaches_the_fdb_nothing():
    tunnel = Harness("vxlan", **{"allowed-ips": ALLOWED["vxlan"]})
    tunnel.receive(vxlan_datagram(frame(inner4(src=SPOOFED), src="02:00:00:00:00:66")))
    assert len(tunnel.endpoint.fdb) == 0
    tunnel.receive(vxlan_datagram(frame(inner4(), src="02:00:00:00:00:0a")))
    assert len(tunnel.endpoint.fdb) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_flood_over_the_rate_limit_is_cut_to_the_burst_then_the_rate(mode):
    # Times and rates exact in binary: 8 packets of burst, 4 more a sixteenth of a second on.
    tunnel = Harness(mode, **{"rate-limit": {"packets": 64, "burst": "125ms"}})
    assert len(tunnel.receive(*[from_host(mode)] * 30, now=100.0)) == 8
    assert tunnel.drops == {"rate_limited": 22}
    assert len(tunnel.receive(*[from_host(mode)] * 30, now=100.0625)) == 4
    assert tunnel.counters.drops_by_label() == {"rate_limited": 48}


def test_the_byte_rate_counts_the_inner_packets_bytes():
    tunnel = Harness("gre", **{"rate-limit": {"bytes": 150_000, "burst": "10ms"}})
    # 1500 bytes of bucket: three 500-byte inner packets, whatever the outer header adds.
    assert len(tunnel.receive(*[gre_datagram(inner4(500))] * 5)) == 3


@pytest.mark.parametrize("mode", MODES)
def test_only_what_would_be_delivered_is_charged(mode):
    tunnel = Harness(mode, **{"rate-limit": {"packets": 1000, "burst": "3ms"},
                              "allowed-ips": ALLOWED[mode]})
    garbage = from_host(mode)[:-60] if mode != "vxlan" else b"\x08" + bytes(10)
    tunnel.receive(garbage, from_host(mode, spoofed=True))
    # Congestion marked on the way, which a Not-ECT packet cannot carry (RFC 6040).
    tunnel.receive(from_host(mode, outer_tos=CE), tos=CE if mode == "vxlan" else None)
    assert len(tunnel.receive(*[from_host(mode)] * 5)) == 3   # the whole burst is left
    assert tunnel.drops["rate_limited"] == 2
    assert tunnel.drops["source_not_allowed"] == 1
    assert tunnel.drops["ecn_ce_on_not_ect"] == 1


def test_each_vxlan_remote_has_its_own_bucket_and_strangers_make_none():
    config = tunnel_config("vxlan", remotes=[REMOTE, OTHER],
                           **{"rate-limit": {"packets": 1000, "burst": "2ms"}})
    tunnel = Harness(config=config)
    datagram = vxlan_datagram(frame(inner4()))
    assert len(tunnel.receive(*[datagram] * 5, source=REMOTE)) == 2
    assert len(tunnel.receive(*[datagram] * 5, source=OTHER)) == 2
    assert tunnel.receive(datagram, source=STRANGER) == []
    assert tunnel.drops == {"rate_limited": 6, "not_a_peer": 1}
    assert set(tunnel.endpoint.rate_limit.buckets) == {REMOTE, OTHER}


# -- the order of the checks, through the demultiplexer ------------------------------------

def test_each_check_counts_its_own_reason_in_the_order_they_are_made():
    """Outer source, then the GRE key, then the inner source, then the rate limit: a
    datagram that fails several is counted under the first."""
    config = tunnel_config("gre", key=5, **{"allowed-ips": ["192.168.1.0/24"],
                                            "rate-limit": {"packets": 1000, "burst": "1ms"}})
    demux = Demux(config.kind)
    endpoint = endpoint_for(config)
    demux.add(endpoint)
    cases = [
        (gre_datagram(inner4(src=SPOOFED), key=5, src=STRANGER), STRANGER),   # not a peer
        (gre_datagram(inner4(src=SPOOFED), key=6), REMOTE),                   # wrong key
        (gre_datagram(inner4(src=SPOOFED), key=5), REMOTE),                   # spoofed inside
        (gre_datagram(inner4(), key=5), REMOTE),                              # delivered
        (gre_datagram(inner4(), key=5), REMOTE),                              # over the rate
    ]
    batch = wire_batch([d for d, _ in cases], [s for _, s in cases], config.kind.underlay)
    demux.decapsulate(batch, 100.0)
    assert [target is endpoint for target in batch.endpoints[:batch.count]] == [
        False, False, False, True, False]
    assert demux.counters.drops_by_label() == {"not_a_peer": 1}
    assert endpoint.counters.drops_by_label() == {"gre_wrong_key": 1, "source_not_allowed": 1,
                                                  "rate_limited": 1}


def test_a_reloaded_endpoint_keeps_its_counters_and_what_its_peers_used_up():
    old = Harness("gre", **{"rate-limit": {"packets": 1000, "burst": "2ms"}})
    old.receive(*[from_host("gre")] * 3)
    new = Harness("gre", **{"rate-limit": {"packets": 2000, "burst": "2ms"},
                            "allowed-ips": ["192.168.1.0/24"]})
    new.endpoint.take_over(old.endpoint)
    assert new.drops == {"rate_limited": 1}
    assert new.receive(from_host("gre")) == []        # the bucket is still empty
    assert new.receive(from_host("gre", spoofed=True), now=101.0) == []
    assert len(new.receive(from_host("gre"), now=101.0)) == 1
    assert new.drops == {"rate_limited": 2, "source_not_allowed": 1}


def test_the_datagrams_of_a_batch_share_its_time_and_so_one_refill():
    tunnel = Harness("ipip", **{"rate-limit": {"packets": 1000, "burst": "5ms"}})
    for now in (100.0, 100.001):
        batch = wire_batch([from_host("ipip")] * 8, REMOTE, tunnel.underlay)
        delivered = sum(tunnel.endpoint.decapsulate(batch, i, batch.views[i][:batch.ends[i]], now)
                        for i in range(batch.count))
        assert delivered == (5 if now == 100.0 else 1)


# -- datagrams a UDP socket joined from one train ---------------------------------------------

def joined_batch(datagram: bytes, parts: int, source: str = REMOTE):
    """A batch of one datagram that a socket joined from ``parts`` of one train."""
    batch = wire_batch([datagram], source, Harness("vxlan").underlay)
    batch.gso_sizes[0], batch.joined[0] = 1000, parts
    return batch


def test_a_joined_datagram_is_refused_whole_and_counted_as_every_part_it_was():
    tunnel = Harness("vxlan", **{"allowed-ips": ALLOWED["vxlan"]})
    batch = joined_batch(from_host("vxlan", spoofed=True), 5)
    assert not tunnel.endpoint.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)
    assert tunnel.drops == {"source_not_allowed": 5}


def test_a_joined_datagram_takes_a_token_for_each_part_or_none():
    tunnel = Harness("vxlan", **{"rate-limit": {"packets": 1000, "burst": "8ms"}})
    decapsulate = tunnel.endpoint.decapsulate
    batch = joined_batch(from_host("vxlan"), 5)
    assert decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)       # 8 - 5 = 3 left
    assert not decapsulate(batch, 0, batch.views[0][:batch.ends[0]], 1.0)   # 5 > 3: none taken
    assert tunnel.drops == {"rate_limited": 5}
    assert len(tunnel.receive(*[from_host("vxlan")] * 4, now=1.0)) == 3


def test_a_joined_datagram_from_no_peer_is_counted_as_its_parts_where_it_is_refused():
    tunnel = Harness("vxlan")
    demux = Demux(tunnel.config.kind)
    demux.add(tunnel.endpoint)
    unknown_vni = vxlan_datagram(frame(inner4()), tunnel.config.id + 1)
    for datagram, source in ((unknown_vni, REMOTE), (from_host("vxlan"), STRANGER)):
        batch = joined_batch(datagram, 7, source)
        demux.decapsulate(batch, 1.0)
        assert batch.endpoints[0] is None
    assert demux.counters.drops_by_label() == {"vxlan_unknown_vni": 7}
    assert tunnel.drops == {"not_a_peer": 7}
