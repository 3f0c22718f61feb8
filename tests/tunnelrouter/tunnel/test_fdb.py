"""The VXLAN forwarding database: learning, ageing, static entries, and its bound.

First the table alone, then through a VXLAN endpoint with three remotes: where
frames go, what a flood of spoofed source MACs does, what status shows.
"""

import pytest
from scapy.layers.l2 import Ether

from encap.ecn import CE
from tunnelrouter.tunnel.fdb import Fdb

from tests.tunnelrouter.tunnel.harness import (
    NOW, OTHER, REMOTE, STRANGER, THIRD, Harness, frame, inner4, vxlan_datagram)

A, B, C, D = (bytes.fromhex(f"02000000000{n}") for n in "abcd")
HERE, THERE = (("10.0.0.2", 4789),), (("10.0.0.3", 4789),)
PORT = 4789
BROADCAST = "ff:ff:ff:ff:ff:ff"
EVERYWHERE = ((REMOTE, PORT), (OTHER, PORT), (THIRD, PORT))


def mac(n: int) -> str:
    return "02:" + n.to_bytes(5, "big").hex(":")


# -- the table -------------------------------------------------------------------------------

def test_a_learnt_mac_is_found_until_it_ages_out():
    fdb = Fdb(ageing=300, learning=True, limit=10)
    assert fdb.learn(A, HERE, 0.0) and fdb.lookup(A, 0.0) == HERE
    assert fdb.lookup(A, 300.0) == HERE
    assert fdb.lookup(A, 300.1) is None, "an aged entry is not used, even before expire()"
    assert len(fdb) == 1
    fdb.expire(300.1)
    assert len(fdb) == 0 and fdb.lookup(B, 0.0) is None


def test_a_mac_that_moves_to_another_remote_is_followed():
    fdb = Fdb(ageing=300, learning=True, limit=10)
    fdb.learn(A, HERE, 0.0)
    fdb.learn(A, THERE, 1.0)
    assert fdb.lookup(A, 1.0) == THERE


def test_traffic_keeps_an_entry_alive():
    fdb = Fdb(ageing=300, learning=True, limit=10)
    for now in range(0, 1000, 100):
        fdb.learn(A, HERE, float(now))
    assert fdb.lookup(A, 1000.0) == HERE


def test_an_entry_lives_ageing_seconds_after_the_last_frame_from_its_mac():
    fdb = Fdb(ageing=300, learning=True, limit=10)
    fdb.learn(A, HERE, 0.0)
    fdb.learn(A, HERE, 100.0)
    assert fdb.lookup(A, 398.0) == HERE, "298 s without traffic"


def test_static_entries_never_age_and_never_move():
    fdb = Fdb(ageing=1, learning=True, limit=10, static={A: HERE})
    assert fdb.learn(A, THERE, 5.0), "a static MAC is not a full table"
    fdb.expire(1e9)
    assert fdb.lookup(A, 1e9) == HERE and len(fdb) == 1


def test_the_table_stops_learning_at_its_limit_until_expiry_frees_room():
    fdb = Fdb(ageing=300, learning=True, limit=2, static={D: HERE})
    assert fdb.learn(A, HERE, 0.0) and fdb.learn(B, HERE, 10.0)
    assert not fdb.learn(C, HERE, 20.0), "full: static entries do not count, learnt ones do"
    assert fdb.lookup(C, 20.0) is None
    assert fdb.learn(A, THERE, 20.0), "a known MAC may still move when the table is full"
    fdb.expire(311.0)     # B, learnt at 10, is gone; A moved at 20
    assert fdb.lookup(B, 311.0) is None and fdb.lookup(A, 311.0) == THERE
    assert fdb.learn(C, HERE, 311.0) and fdb.lookup(C, 311.0) == HERE


def test_the_list_shows_static_entries_first_then_learnt_ones_by_mac_at_most_so_many():
    fdb = Fdb(ageing=300, learning=True, limit=10, static={C: THERE})
    fdb.learn(B, HERE, 0.0)
    fdb.learn(A, HERE, 0.0)
    assert fdb.as_list(100.0, 2) == [
        {"mac": "02:00:00:00:00:0c", "remote": "10.0.0.3", "static": True, "expires_in": None},
        {"mac": "02:00:00:00:00:0a", "remote": "10.0.0.2", "static": False,
         "expires_in": 200.0}]


# -- through a VXLAN endpoint -------------------------------------------------------------------

def vtep(**keys) -> Harness:
    return Harness("vxlan", remotes=[REMOTE, OTHER, THIRD], **keys)


def from_behind(tunnel: Harness, source_mac: str, remote: str, now: float = NOW, **options):
    return tunnel.receive(vxlan_datagram(frame(inner4(), src=source_mac)), source=remote,
                          now=now, **options)


def destinations_of(tunnel: Harness, destination_mac: str, now: float = NOW) -> tuple:
    (sent,) = tunnel.send(frame(inner4(), dst=destination_mac), now=now)
    return sent.destinations


def test_vxlan_sends_to_the_remote_a_mac_was_learnt_behind_and_floods_the_rest():
    tunnel = vtep()
    assert destinations_of(tunnel, mac(7)) == EVERYWHERE, "unknown unicast is flooded"
    from_behind(tunnel, mac(7), OTHER)
    assert destinations_of(tunnel, mac(7)) == ((OTHER, PORT),)
    assert destinations_of(tunnel, BROADCAST) == EVERYWHERE
    assert destinations_of(tunnel, "01:00:5e:00:00:01") == EVERYWHERE, "multicast is flooded"


def test_vxlan_forgets_a_mac_after_ageing_and_floods_again():
    tunnel = vtep(ageing=30)
    from_behind(tunnel, mac(7), OTHER)
    assert destinations_of(tunnel, mac(7), now=NOW + 30) == ((OTHER, PORT),)
    assert destinations_of(tunnel, mac(7), now=NOW + 31) == EVERYWHERE
    tunnel.tick(NOW + 31)
    assert tunnel.endpoint.status(NOW + 31)["fdb_entries"] == 0


def test_vxlan_learns_nothing_with_mac_learning_off():
    tunnel = vtep(**{"mac-learning": False})
    assert from_behind(tunnel, mac(7), OTHER)
    assert destinations_of(tunnel, mac(7)) == EVERYWHERE


def test_a_multicast_source_mac_is_not_learnt():
    tunnel = vtep()
    assert from_behind(tunnel, "03:00:00:00:00:07", OTHER)
    assert tunnel.endpoint.status(NOW)["fdb_entries"] == 0


def test_a_datagram_that_is_dropped_teaches_the_fdb_nothing():
    tunnel = vtep()
    assert from_behind(tunnel, mac(7), OTHER, tos=CE) == []         # CE on a Not-ECT packet
    assert from_behind(tunnel, mac(8), STRANGER) == []              # not one of our remotes
    assert tunnel.drops == {"ecn_ce_on_not_ect": 1, "not_a_peer": 1}
    assert tunnel.endpoint.status(NOW)["fdb_entries"] == 0


def test_static_fdb_entries_send_to_their_remote_and_never_age():
    tunnel = vtep(fdb=[{"mac": "02:00:00:00:00:99", "remote": THIRD}], ageing=5)
    from_behind(tunnel, "02:00:00:00:00:99", OTHER)
    tunnel.tick(NOW + 1e6)
    assert destinations_of(tunnel, "02:00:00:00:00:99", now=NOW + 1e6) == ((THIRD, PORT),)


def test_a_flood_of_source_macs_stops_at_max_fdb_and_the_frames_still_arrive():
    tunnel = vtep(**{"max-fdb": 8})
    delivered = [from_behind(tunnel, mac(n), OTHER) for n in range(20)]
    assert all(len(d) == 1 for d in delivered)
    assert [Ether(d[0]).src for d in delivered] == [mac(n) for n in range(20)]
    assert tunnel.endpoint.status(NOW)["fdb_entries"] == 8
    assert tunnel.counters.fdb_full == 12 and not tunnel.drops
    assert destinations_of(tunnel, mac(19)) == EVERYWHERE, "replies to the unlearnt are flooded"
    assert destinations_of(tunnel, mac(0)) == ((OTHER, PORT),)


def test_expiry_frees_room_in_a_full_fdb():
    tunnel = vtep(**{"max-fdb": 2}, ageing=10)
    for n in range(3):
        from_behind(tunnel, mac(n), OTHER)
    assert tunnel.counters.fdb_full == 1
    tunnel.tick(NOW + 11)
    from_behind(tunnel, mac(2), REMOTE, now=NOW + 11)
    assert tunnel.counters.fdb_full == 1
    assert destinations_of(tunnel, mac(2), now=NOW + 11) == ((REMOTE, PORT),)


def test_status_lists_at_most_100_fdb_entries_and_counts_them_all():
    tunnel = vtep(fdb=[{"mac": "02:ff:00:00:00:01", "remote": THIRD}])
    for n in range(150):
        from_behind(tunnel, mac(n), OTHER)
    status = tunnel.endpoint.status(NOW)
    assert status["fdb_entries"] == 151 and len(status["fdb"]) == 100
    assert status["fdb"][0] == {"mac": "02:ff:00:00:00:01", "remote": THIRD, "static": True,
                                "expires_in": None}
    assert [entry["mac"] for entry in status["fdb"][1:]] == [mac(n) for n in range(99)]
    assert status["vni"] == 42
