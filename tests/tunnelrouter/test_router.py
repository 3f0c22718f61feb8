"""The router glue, two whole routers in memory (tests/tunnelrouter/doubles.py): every mode
at once, devices that go away or down and come back, netlink that fails at start and at
run time, the WAN error queue, the preflight, and the loop surviving a handler's bug.

scapy builds the inner packets and reads the ICMP errors the router writes into a device.
"""

import errno
import gc
import json
import logging
import os
import signal
import socket
import time
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, IPerror, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from encap.gso import coalesce
from encap.icmp import Icmp4Type, Icmp4Unreachable
from encap.wire import IpProto, VXLAN_PORT
from tunnelrouter import datapath as datapath_module
from tunnelrouter import router as router_module
from tunnelrouter import tunnels as tunnels_module
from tunnelrouter.config import parse_config
from tunnelrouter.io.device import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, VNET_HEADER
from tunnelrouter.router import Router, StartError
from tunnelrouter.tunnel.wan_error import ErrorOrigin

from tests.encap.test_gso import stream, tcp_packet
from tests.tunnelrouter.doubles import MemorySystem, Wire, WireSocket, ask, drive, host_packets

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"   # C: a VTEP of A's that is never there
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
HOST_A, HOST_B = "192.168.1.10", "192.168.2.20"
HOST_A6, HOST_B6 = "fd01::10", "fd02::20"
GRE_OVERHEAD = 20 + 16     # outer IPv4, GRE with checksum, key and sequence number
GRE_MTU = 1500 - GRE_OVERHEAD
RESTORE = 30.0             # the first restore delay, made long: no real tick restores early
LONGEST = 240.0


def every_mode(local: str, remotes: list[str], side: int) -> dict:
    """One tunnel of every mode from ``local``; ``side`` numbers the tunnel addresses."""
    remote = remotes[0]
    return {
        "gre1": {"mode": "gre", "local": local, "remote": remote, "key": 5, "checksum": True,
                 "sequence": True, "addresses": [f"192.168.9.{side}/24", f"fd09::{side}/64"],
                 "routes": [f"192.168.{20 + side}.0/24"]},
        "tap1": {"mode": "gretap", "local": local, "remote": remote, "key": 6},
        "ipip1": {"mode": "ipip", "local": local, "remote": remote,
                  "addresses": [f"192.168.10.{side}/24"]},
        "sit1": {"mode": "sit", "local": local, "remote": remote,
                 "addresses": [f"fd0a::{side}/64"]},
        "vx1": {"mode": "vxlan", "local": local, "remotes": remotes, "id": 7},
    }


def ipv4(size: int = 100, src: str = HOST_A, dst: str = HOST_B, df: bool = True,
         tos: int = 0) -> bytes:
    return bytes(IP(src=src, dst=dst, flags="DF" if df else 0, id=9, tos=tos)
                 / UDP(sport=1, dport=2) / bytes(size - 28))


def join_stream(version: int, parts: int, size: int = 1000) -> bytes:
    """``parts`` segments of one TCP stream joined as Linux's GRO leaves them."""
    segments = stream(version, [size] * parts)
    arena = bytearray(sum(map(len, segments)) + 64)
    [(start, end, *_)] = coalesce(segments, parts, 0, False, arena, 0)
    return bytes(arena[start:end])


def ipv6(size: int = 100, src: str = HOST_A6, dst: str = HOST_B6) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=1, dport=2) / bytes(size - 48))


def frame(src: str, dst: str, packet: bytes) -> bytes:
    return bytes(Ether(src=src, dst=dst, type=0x86DD if packet[0] >> 4 == 6 else 0x0800)
                 / packet)


@pytest.fixture
def make_router():
    """``make(tunnels, system=None, control_path=None)``: a started router, closed at the
    end of the test whatever happens."""
    made = []

    def make(tunnels: dict, system: MemorySystem | None = None,
             control_path: str | None = None) -> Router:
        router = Router(parse_config({"tunnels": tunnels}), control_path,
                        system or MemorySystem())
        made.append(router)
        router.start()
        return router
    yield make
    for router in made:
        router.close()


@pytest.fixture
def pair(make_router):
    """A and B on one wire with a tunnel of every mode; A's VXLAN also floods to C."""
    wire = Wire()
    a = make_router(every_mode(A, [B, C], 1), MemorySystem(wire))
    b = make_router(every_mode(B, [A], 2), MemorySystem(wire))
    return a, b


@pytest.fixture
def slow_restore(monkeypatch):
    """Restore delays no real tick reaches during a test: only ``tick(now)`` restores."""
    monkeypatch.setattr(tunnels_module, "RESTORE_FIRST", RESTORE)
    monkeypatch.setattr(tunnels_module, "RESTORE_LONGEST", LONGEST)


def counters(router: Router, name: str) -> dict:
    return router.status()["tunnels"][name]["counters"]


def messages(caplog, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def frag_needed(router: Router, datagram: bytes, mtu: int, peer: str = B) -> list[bytes]:
    """A WAN router says ``datagram`` (ours, outer IPv4 header first) met a ``mtu`` link;
    returns what the router then wrote into gre1 (the relayed error)."""
    router.system.sockets[(A, IpProto.GRE)].queue_error(
        datagram[:576], peer, ErrorOrigin.ICMP4, Icmp4Type.DEST_UNREACHABLE,
        Icmp4Unreachable.FRAGMENTATION_NEEDED, mtu)
    drive(router)
    return host_packets(router.system.hosts["gre1"]) if "gre1" in router.system.hosts else []


def send_big_gre_packet(a: Router, b: Router) -> bytes:
    """A full-size DF packet from A to B through gre1; returns the datagram it became."""
    a.system.hosts["gre1"].send(ipv4(GRE_MTU))
    drive(a, b)
    assert len(host_packets(b.system.hosts["gre1"])) == 1
    return a.system.sockets[(A, IpProto.GRE)].sent[-1][0]


def forwards(sender: Router, receiver: Router, name: str, packet: bytes) -> bool:
    sender.system.hosts[name].send(packet)
    drive(sender, receiver)
    return host_packets(receiver.system.hosts[name]) == [packet]


# -- the datapath, every mode at once ------------------------------------------------------

def traffic(mac_src: str, mac_dst: str, src: str, dst: str, src6: str, dst6: str) -> dict:
    """Packets for every tunnel: IPv4 and IPv6 inside where the mode carries them."""
    return {
        "gre1": [ipv4(src=src, dst=dst), ipv6(src=src6, dst=dst6), ipv4(1200, src, dst)],
        "tap1": [frame(mac_src, mac_dst, ipv4(src=src, dst=dst)),
                 frame(mac_src, mac_dst, ipv6(src=src6, dst=dst6))],
        "ipip1": [ipv4(src=src, dst=dst), ipv4(300, src, dst)],
        "sit1": [ipv6(src=src6, dst=dst6), ipv6(300, src6, dst6)],
        "vx1": [frame(mac_src, mac_dst, ipv4(src=src, dst=dst)),
                frame(mac_src, mac_dst, ipv6(src=src6, dst=dst6))],
    }


def test_two_routers_exchange_packets_both_ways_in_every_mode_at_once(pair):
    a, b = pair
    from_a = traffic(MAC_A, MAC_B, HOST_A, HOST_B, HOST_A6, HOST_B6)
    from_b = traffic(MAC_B, MAC_A, HOST_B, HOST_A, HOST_B6, HOST_A6)
    for name in from_a:
        for packet in from_a[name]:
            a.system.hosts[name].send(packet)
        for packet in from_b[name]:
            b.system.hosts[name].send(packet)
    drive(a, b)
    assert {name: host_packets(b.system.hosts[name]) for name in from_a} == from_a
    assert {name: host_packets(a.system.hosts[name]) for name in from_b} == from_b

    def summary(router: Router, name: str) -> tuple:
        found = counters(router, name)
        return (found["rx_packets"], found["rx_bytes"], found["tx_packets"], found["tx_bytes"],
                found["drops"])
    for name in from_a:
        # A floods its VXLAN frames to B and to C (where nobody listens): two datagrams each.
        copies = 2 if name == "vx1" else 1
        sent_a, sent_b = from_a[name], from_b[name]
        assert summary(a, name) == (len(sent_b), sum(map(len, sent_b)), copies * len(sent_a),
                                    copies * sum(map(len, sent_a)), {})
        assert summary(b, name) == (len(sent_a), sum(map(len, sent_a)), len(sent_b),
                                    sum(map(len, sent_b)), {})
    assert a.status()["internal_errors"] == b.status()["internal_errors"] == 0
    assert a.status()["unattributed"] == b.status()["unattributed"] == {}


@pytest.mark.parametrize("long_packet, gso_size", [
    (join_stream(4, 5), 1480 - 52),          # GRO joined it: cut at the tunnel's largest segment
    (tcp_packet(4, bytes(4000)), 0),         # whole (a peer's reassembled fragments): as it is
    (tcp_packet(4, bytes(20000)), 0),        # and alone, past what a batch's scratch holds each
])
def test_a_long_datagram_from_a_raw_socket_reaches_the_device_as_the_kernel_left_it(
        pair, long_packet, gso_size):
    a, b = pair
    datagram = bytes(IP(src=A, dst=B, proto=4, id=1) / long_packet)   # ipip1, from A's end
    a.system.sockets[(A, 4)].sendto(datagram, (B, 0))
    drive(a, b)
    header, delivered = b.system.hosts["ipip1"].receive()
    assert delivered == long_packet and header[3] == gso_size
    assert counters(b, "ipip1")["rx_packets"] == (-(-5000 // gso_size) if gso_size else 1)


@pytest.mark.parametrize("name, version", [("tap1", 4), ("ipip1", 4), ("sit1", 6), ("vx1", 4)])
def test_a_tcp_super_packet_crosses_as_segments_and_arrives_joined_into_one_again(pair, name,
                                                                                  version):
    a, b = pair
    ethernet = name in ("tap1", "vx1")
    payload = bytes(range(256)) * 20
    packet = tcp_packet(version, payload)
    transport = (14 if ethernet else 0) + (20 if version == 4 else 40)
    a.system.hosts[name].send(frame(MAC_A, MAC_B, packet) if ethernet else packet,
                              VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV4 if version == 4 else
                                               GSO_TCPV6, transport + 32, 1000, transport, 16))
    drive(a, b)
    header, joined = b.system.hosts[name].receive()
    assert header[1:5] == (GSO_TCPV4 if version == 4 else GSO_TCPV6, transport + 32, 1000,
                           transport)
    inner = joined[14:] if ethernet else joined
    assert bytes((IP(inner) if version == 4 else IPv6(inner))[TCP].payload) == payload
    flooded = 2 if name == "vx1" else 1     # A's VXLAN does not know MAC_B: B and C get it
    assert counters(a, name)["tx_packets"] == 6 * flooded
    assert counters(b, name)["rx_packets"] == 6


def test_gre_with_sequence_numbers_gets_no_super_packets_from_its_device(pair):
    a, _ = pair
    assert a.system.links["gre1"]["super_packets"] is False
    assert a.system.links["ipip1"]["super_packets"] is True


def test_vxlan_learns_the_replying_vtep_and_stops_flooding_to_the_others(pair):
    a, b = pair
    vxlan = (A, VXLAN_PORT)
    a.system.hosts["vx1"].send(frame(MAC_A, MAC_B, ipv4()))
    drive(a, b)
    assert len(host_packets(b.system.hosts["vx1"])) == 1
    assert [destination for _, destination in a.system.sockets[vxlan].sent] == \
        [(B, VXLAN_PORT), (C, VXLAN_PORT)]
    reply = frame(MAC_B, MAC_A, ipv4(src=HOST_B, dst=HOST_A))
    assert forwards(b, a, "vx1", reply)
    fdb = a.status()["tunnels"]["vx1"]
    assert (fdb["fdb_entries"], [(e["mac"], e["remote"], e["static"]) for e in fdb["fdb"]]) == \
        (1, [(MAC_B, B, False)])
    assert forwards(a, b, "vx1", frame(MAC_A, MAC_B, ipv4(200)))
    assert a.system.sockets[vxlan].sent[-1][1] == (B, VXLAN_PORT)
    assert len(a.system.sockets[vxlan].sent) == 3
    assert counters(a, "vx1")["tx_packets"] == 3


def test_a_gre_datagram_is_sent_without_the_marking_a_vxlan_frame_left_in_the_batch(pair):
    a, b = pair
    assert forwards(a, b, "vx1", frame(MAC_A, MAC_B, ipv4(tos=0x02)))
    assert a.system.sockets[(A, VXLAN_PORT)].ancillary[-1] is not None   # TTL 64, ECT(0)
    assert forwards(a, b, "gre1", ipv4())
    # The outer header of a raw datagram is the codec's: nothing goes with it.
    assert a.system.sockets[(A, IpProto.GRE)].ancillary == [None]


# -- devices that go away or down ----------------------------------------------------------

def test_a_deleted_device_is_made_again_after_the_restore_delay_and_the_rest_carry_on(
        pair, slow_restore, caplog):
    a, b = pair
    a.system.delete("gre1")
    drive(a)
    gre1 = a.status()["tunnels"]["gre1"]
    assert gre1["device"] == "gone (being made again)"
    assert gre1["counters"]["device_lost"] == 1
    assert messages(caplog, "tunnel gre1: its device is gone (deleted)")
    for name, packet in (("ipip1", ipv4()), ("sit1", ipv6()), ("tap1", frame(MAC_A, MAC_B,
                                                                              ipv4()))):
        assert forwards(a, b, name, packet) and forwards(b, a, name, packet)
    b.system.hosts["gre1"].send(ipv4())
    drive(b, a)
    assert counters(a, "gre1")["drops"] == {"device_down": 1}

    lost_at = time.monotonic()
    a.tick(lost_at + RESTORE / 2)
    assert "gre1" not in a.system.links
    a.tick(lost_at + RESTORE)
    assert a.status()["tunnels"]["gre1"]["device"] == "up"
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": None}
    assert forwards(b, a, "gre1", ipv4()) and forwards(a, b, "gre1", ipv6())
    assert a.status()["internal_errors"] == 0


def test_a_path_mtu_learnt_while_the_device_is_gone_goes_on_the_routes_of_the_new_one(
        pair, slow_restore):
    a, b = pair
    datagram = send_big_gre_packet(a, b)
    a.system.delete("gre1")
    drive(a)
    calls = a.system.netlink_double.calls
    before = len(calls)
    assert frag_needed(a, datagram, 1400) == []
    # Learnt all the same; the error for the inner sender had no device to go into.
    assert counters(a, "gre1")["drops"] == {"device_down": 1}
    assert a.status()["tunnels"]["gre1"]["effective_mtu"] == 1400 - GRE_OVERHEAD
    assert calls[before:] == []
    a.tick(time.monotonic() + RESTORE)
    assert calls[before:] == [("program_device", "gre1"),
                              ("program_routes", "gre1", 1400 - GRE_OVERHEAD)]
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": 1400 - GRE_OVERHEAD}


def test_a_device_whose_reads_fail_as_gone_is_closed_and_made_again(pair, slow_restore,
                                                                     monkeypatch):
    a, b = pair
    gone_fd = a.tunnels["gre1"].device.fd
    readv = os.readv

    def deleted_under_us(fd, buffers):
        if fd == gone_fd:
            raise OSError(errno.EBADFD, "File descriptor in bad state")
        return readv(fd, buffers)
    monkeypatch.setattr(os, "readv", deleted_under_us)
    a.system.hosts["gre1"].send(ipv4())
    drive(a)
    monkeypatch.undo()
    assert a.status()["tunnels"]["gre1"]["device"] == "gone (being made again)"
    assert counters(a, "gre1")["device_lost"] == 1
    assert "gre1" not in a.system.links    # closing its fd removed it
    a.tick(time.monotonic() + RESTORE)
    assert forwards(a, b, "gre1", ipv4())


def test_a_device_that_cannot_be_made_again_is_retried_ever_later_and_logged_once(
        pair, slow_restore, caplog):
    caplog.set_level(logging.INFO, logger="tunnelrouter")
    a, b = pair
    netlink = a.system.netlink_double
    a.system.delete("gre1")
    drive(a)
    netlink.fail = {"program_device"}
    start = time.monotonic()
    attempts = []
    for at in (1, 2, 3, 5, 6, 7, 9, 15, 20, 23):
        before = len(netlink.calls)
        a.tick(start + at * RESTORE)
        attempts.append(len(netlink.calls) - before)
    # Tried at 30 s, then 60 s later (90), 120 s later (210), then every 240 s at most.
    assert attempts == [1, 0, 1, 0, 0, 1, 0, 1, 0, 1]
    assert len(messages(caplog, "cannot make its device again")) == 1
    assert "gre1" not in a.system.links     # each failed attempt removed what it made
    netlink.fail = set()
    a.tick(start + 31 * RESTORE)
    assert messages(caplog, "tunnel gre1: device made again")
    assert forwards(b, a, "gre1", ipv4())


def test_a_device_set_down_and_up_again_gets_its_addresses_and_routes_back(pair):
    a, _ = pair
    calls = a.system.netlink_double.calls
    a.system.set_link("gre1", up=False)
    drive(a)
    assert a.status()["tunnels"]["gre1"]["device"] == "down"
    before = len(calls)
    a.system.set_link("gre1", up=True)
    drive(a)
    assert calls[before:] == [("program_device", "gre1")]
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": None}
    assert a.status()["tunnels"]["gre1"]["device"] == "up"


def test_a_path_mtu_learnt_while_the_device_was_down_goes_on_its_routes_when_it_is_up(pair):
    a, b = pair
    datagram = send_big_gre_packet(a, b)
    a.system.set_link("gre1", up=False)
    drive(a)
    frag_needed(a, datagram, 1400)
    assert a.system.links["gre1"]["routes"] == {}     # nothing to put it on while down
    a.system.set_link("gre1", up=True)
    drive(a)
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": 1400 - GRE_OVERHEAD}


def test_a_device_whose_mtu_was_changed_gets_it_set_back(pair, caplog):
    a, _ = pair
    a.system.set_link("gre1", mtu=9000)
    drive(a)
    assert a.system.links["gre1"]["mtu"] == GRE_MTU
    assert messages(caplog, "tunnel gre1: its device's MTU was changed to 9000; setting it "
                            f"back to {GRE_MTU}")


def test_lost_link_events_make_the_router_look_at_every_device(pair):
    a, _ = pair
    a.system.links["gre1"]["up"] = False      # no event: the monitor's socket overflowed
    a.system.monitor.overflowed = True
    a.tick(time.monotonic())
    assert a.status()["tunnels"]["gre1"]["device"] == "down"
    assert not a.system.monitor.overflowed


# -- netlink failures ----------------------------------------------------------------------

def test_a_netlink_failure_at_start_names_the_tunnel_and_key_and_leaves_nothing_behind(
        make_router):
    system = MemorySystem()
    system.netlink_double.fail = {"program_device"}
    with pytest.raises(StartError) as failure:
        make_router(every_mode(A, [B], 1), system)
    assert failure.value.problems == [
        ("tunnels.gre1.addresses[0]", "the kernel refused to program_device: Invalid argument "
                                      "(errno 22)")]
    assert system.links == {} and system.hosts == {}
    assert system.sockets and all(wire_socket.sock.fileno() == -1
                                  for wire_socket in system.sockets.values())
    again = make_router(every_mode(A, [B], 1), MemorySystem(claims=system.claims))
    assert list(again.status()["tunnels"]) == list(every_mode(A, [B], 1))


def test_a_netlink_failure_at_run_time_is_counted_logged_once_and_survived(pair, caplog):
    a, b = pair
    netlink = a.system.netlink_double
    datagram = send_big_gre_packet(a, b)
    netlink.fail = {"program_routes"}
    for mtu in (1400, 1300):
        frag_needed(a, datagram, mtu)
    assert counters(a, "gre1")["netlink_errors"] == 2
    warned = "tunnel gre1: cannot set the route MTU: tunnels.gre1.routes[0]: the kernel " \
             "refused to program_routes"
    assert len(messages(caplog, warned)) == 1
    assert forwards(a, b, "gre1", ipv4()) and forwards(b, a, "gre1", ipv4())

    netlink.fail = set()
    frag_needed(a, datagram, 1200)
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": 1200 - GRE_OVERHEAD}
    netlink.fail = {"program_routes"}
    frag_needed(a, datagram, 1100)
    assert len(messages(caplog, warned)) == 2      # it worked in between: logged anew
    assert counters(a, "gre1")["netlink_errors"] == 3
    assert a.status()["internal_errors"] == 0


# -- the WAN error queue -------------------------------------------------------------------

def test_frag_needed_about_our_datagram_lowers_the_mtu_and_is_relayed_to_the_sender(pair):
    a, b = pair
    datagram = send_big_gre_packet(a, b)
    relayed = frag_needed(a, datagram, 1400)
    gre1 = a.status()["tunnels"]["gre1"]
    assert gre1["effective_mtu"] == 1400 - GRE_OVERHEAD
    assert gre1["path_mtu"][B]["mtu"] == 1400
    assert gre1["counters"]["wan_errors"] == 1
    assert a.system.links["gre1"]["routes"] == {"192.168.21.0/24": 1400 - GRE_OVERHEAD}
    (relayed,) = [IP(packet) for packet in relayed]
    assert (relayed.src, relayed.dst) == ("192.168.9.1", HOST_A)
    assert (relayed[ICMP].type, relayed[ICMP].code, relayed[ICMP].nexthopmtu) == \
        (3, 4, 1400 - GRE_OVERHEAD)
    assert (relayed[IPerror].src, relayed[IPerror].dst) == (HOST_A, HOST_B)


@pytest.mark.parametrize("end, tunnels", [
    ((A, IpProto.IPIP), ["ipip1"]),
    ((A, IpProto.GRE), ["gre1", "tap1"]),
    ((A, VXLAN_PORT), ["vx1"]),
], ids=["ipip", "gre-keyed", "vxlan"])
def test_a_local_emsgsize_lowers_the_path_mtu_of_every_tunnel_to_that_peer(pair, end, tunnels):
    a, _ = pair
    # What the kernel queues when the link itself is narrower than the datagram (seen on a
    # raw IP_HDRINCL and a UDP socket, lo at MTU 1400): no quote, the link MTU as info.
    a.system.sockets[end].queue_error(b"", B, ErrorOrigin.LOCAL, 0, 0, 1400)
    drive(a)
    learnt = {name: a.status()["tunnels"][name]["path_mtu"] for name in tunnels}
    assert {name: paths.get(B, {}).get("mtu") for name, paths in learnt.items()} == \
        dict.fromkeys(tunnels, 1400)
    assert a.status()["internal_errors"] == 0

def test_an_error_quoting_an_inner_packet_of_ip_version_5_is_survived(pair):
    a, b = pair
    datagram = bytearray(send_big_gre_packet(a, b))
    datagram[GRE_OVERHEAD] = 0x55
    assert frag_needed(a, bytes(datagram), 1400) == []
    # The outer header and the GRE key are ours: the path MTU is learnt, nothing relayed.
    assert a.status()["tunnels"]["gre1"]["effective_mtu"] == 1400 - GRE_OVERHEAD
    a.system.sockets[(A, IpProto.GRE)].queue_error(
        bytes(datagram), B, ErrorOrigin.ICMP4, Icmp4Type.DEST_UNREACHABLE, 1)
    drive(a)
    assert a.status()["internal_errors"] == 0
    assert host_packets(a.system.hosts["gre1"]) == []
    assert counters(a, "gre1")["wan_errors"] == 2
    assert forwards(a, b, "gre1", ipv4())


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ERROR_FIELDS = {"origin": st.sampled_from(list(ErrorOrigin) + [0, 4, 255]),
                "icmp_type": st.integers(0, 255), "code": st.integers(0, 255),
                "info": st.integers(0, 0xFFFFFFFF)}


def drain(router: Router) -> None:
    """Read what the router wrote into its devices, so that none fills up."""
    for host in router.system.hosts.values():
        host_packets(host)


def test_an_error_about_no_datagram_of_ours_is_counted_where_the_operator_sees_it(pair):
    a, b = pair
    datagram = send_big_gre_packet(a, b)
    frag_needed(a, datagram, 1400, peer="10.9.9.9")       # a peer no tunnel has
    status = a.status()
    assert status["unattributed_wan_errors"] == 1
    assert status["tunnels"]["gre1"]["effective_mtu"] == GRE_MTU
    assert status["tunnels"]["gre1"]["counters"]["wan_errors"] == 0


def test_any_error_on_any_error_queue_is_survived(pair):
    a, b = pair

    @FUZZ
    @given(end=st.sampled_from(sorted(a.system.sockets)), quote=st.binary(max_size=80),
           peer=st.sampled_from([A, B, C, "10.9.9.9"]), **ERROR_FIELDS)
    def survives(end, quote, peer, origin, icmp_type, code, info):
        a.system.sockets[end].queue_error(quote, peer, origin, icmp_type, code, info)
        drive(a, rounds=2)
        drain(a)
        assert a.status()["internal_errors"] == 0
    survives()
    assert forwards(a, b, "gre1", ipv4(200))


def test_any_error_quoting_our_gre_datagram_reaches_its_tunnel_and_is_survived(pair):
    a, b = pair
    datagram = send_big_gre_packet(a, b)
    keyed = 20 + 12        # outer IPv4 header, GRE flags, checksum and key: the quote is ours

    @FUZZ
    @given(quote=st.one_of(st.integers(0, len(datagram)).map(lambda n: datagram[:n]),
                           st.binary(max_size=60).map(lambda tail: datagram[:44] + tail)),
           **ERROR_FIELDS)
    def reaches_gre1(quote, origin, icmp_type, code, info):
        before = counters(a, "gre1")["wan_errors"]
        a.system.sockets[(A, IpProto.GRE)].queue_error(quote, B, origin, icmp_type, code, info)
        drive(a, rounds=2)
        drain(a)
        assert a.status()["internal_errors"] == 0
        if origin == ErrorOrigin.LOCAL and len(quote) <= 20:
            return   # nothing past the outer header: test_a_local_emsgsize_lowers_the_path_...
        ours = origin in list(ErrorOrigin) and len(quote) >= keyed
        assert counters(a, "gre1")["wan_errors"] == before + ours
    reaches_gre1()
    assert forwards(a, b, "gre1", ipv4(200)) and forwards(b, a, "gre1", ipv6())


# -- preflight -----------------------------------------------------------------------------

def test_the_preflight_reports_every_conflict_at_once_and_makes_nothing(make_router):
    wire = Wire()
    gre = {"mode": "gre", "local": A, "remote": B, "key": 5}
    first = make_router({"gre1": gre}, MemorySystem(wire))
    system = MemorySystem(wire, claims=first.system.claims)
    system.add_foreign_device("taken")
    system.netlink_double.foreign_routes[(socket.AF_INET, "192.168.50.0", 24, 254, 0)] = 7
    second = {"taken": {"mode": "ipip", "local": A, "remote": C},
              "routed": {"mode": "gre", "local": A, "remote": C,
                         "routes": ["192.168.50.0/24"]},
              "gre2": gre}
    with pytest.raises(StartError) as failure:
        make_router(second, system)
    assert failure.value.problems == [
        ("tunnels.taken", "a device named taken already exists (another tunnelrouter has it, "
                          "or remove it: ip link del taken)"),
        ("tunnels.routed.routes[0]", "192.168.50.0/24 is already routed through foreign7, "
                                     "which this router does not own (another tunnelrouter?)"),
        ("tunnels.gre2.key", "gre from 10.0.0.1 to 10.0.0.2 with key 5: held by another "
                             "tunnelrouter")]
    assert system.sockets == {} and list(system.links) == ["taken"]
    assert system.netlink_double.calls == []
    # What the failed preflight claimed, it gave back; the first router keeps its own.
    third = make_router({"routed": second["routed"]}, MemorySystem(claims=system.claims))
    assert third.status()["tunnels"]["routed"]["device"] == "up"
    assert first.status()["tunnels"]["gre1"]["device"] == "up"



def test_an_underlay_port_another_router_holds_fails_the_start_naming_the_port(make_router):
    # Whatever the VNI: a UDP port is one router's (its workers' sockets share it).
    wire = Wire()
    first = make_router({"vx1": {"mode": "vxlan", "local": A, "remote": B, "id": 7}},
                        MemorySystem(wire))
    system = MemorySystem(wire, claims=first.system.claims)   # the same host
    with pytest.raises(StartError) as failure:
        make_router({"gre2": {"mode": "gre", "local": A, "remote": B, "key": 2},
                     "vx2": {"mode": "vxlan", "local": A, "remote": B, "id": 8}}, system)
    assert failure.value.problems == [
        ("tunnels.vx2.port", f"{A} port {VXLAN_PORT}: held by another tunnelrouter")]
    assert system.links == {} and system.sockets == {}
    assert first.status()["tunnels"]["vx1"]["device"] == "up"


def test_an_underlay_port_another_program_holds_fails_the_start_naming_the_port(make_router):
    system = MemorySystem()
    holder = WireSocket(system.wire, A, VXLAN_PORT, udp=True)   # a kernel VXLAN device, say
    try:
        with pytest.raises(StartError) as failure:
            make_router({"gre2": {"mode": "gre", "local": A, "remote": B, "key": 2},
                         "vx2": {"mode": "vxlan", "local": A, "remote": B, "id": 8}}, system)
    finally:
        holder.close()
    assert failure.value.problems == [
        ("tunnels.vx2.port", f"{A} port {VXLAN_PORT} is in use (another tunnelrouter, or a "
                             f"kernel tunnel, has it)")]
    assert system.links == {} and system.sockets[(A, IpProto.GRE)].sock.fileno() == -1

# -- the loop survives bugs ----------------------------------------------------------------

def test_a_handler_that_raises_is_counted_logged_once_and_the_other_tunnels_carry_on(
        pair, caplog):
    a, b = pair

    def bug(*_):
        raise RuntimeError("a bug in decapsulate")
    b.tunnels["gre1"].endpoint.decapsulate = bug
    for _ in range(2):
        a.system.hosts["gre1"].send(ipv4())
        drive(a, b)
    assert b.status()["internal_errors"] == 2
    assert len(messages(caplog, "internal error in underlay 10.0.0.2 47")) == 1
    assert forwards(a, b, "tap1", frame(MAC_A, MAC_B, ipv4()))   # the same socket
    assert forwards(a, b, "ipip1", ipv4()) and forwards(a, b, "vx1", frame(MAC_A, MAC_B,
                                                                             ipv6()))



def test_sigterm_ends_run_which_removes_everything_the_router_made(make_router, monkeypatch,
                                                                    caplog):
    monkeypatch.setattr(router_module, "TICK", 0.001)
    router = make_router(every_mode(A, [B], 1))
    system = router.system
    handlers = {number: signal.getsignal(number)
                for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    ticks = []
    tick = router.tick

    def tick_and_signal(now):
        tick(now)
        ticks.append(now)
        if len(ticks) == 1:
            os.kill(os.getpid(), signal.SIGHUP)     # a reload, refused: said, and carried on
        elif len(ticks) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        elif len(ticks) > 1000:
            router.stop()                           # SIGTERM did not stop it: fail, not hang
    router.tick = tick_and_signal
    router.run()
    assert len(ticks) < 100
    assert messages(caplog, "reload refused: this router was not started from a file")
    assert system.links == {} and system.hosts == {}
    assert all(wire_socket.sock.fileno() == -1 for wire_socket in system.sockets.values())
    assert {number: signal.getsignal(number) for number in handlers} == handlers


def test_settling_memory_collects_the_cycles_left_behind_and_freezes_what_stays():
    class Node:
        pass
    cycle = Node()
    cycle.itself = cycle
    collected = weakref.ref(cycle)
    del cycle
    try:
        router_module.settle_memory()
        assert collected() is None
        assert gc.get_freeze_count() > 0       # what stays is out of the collector's way
    finally:
        gc.unfreeze()


def test_run_settles_memory_before_it_serves(make_router, monkeypatch):
    monkeypatch.setattr(router_module, "TICK", 0.001)
    router = make_router({"ipip1": every_mode(A, [B], 1)["ipip1"]})
    settled, ticks = [], []
    monkeypatch.setattr(router_module, "settle_memory", lambda: settled.append(len(ticks)))

    def counting(now):
        ticks.append(now)
        if len(ticks) == 2:
            router.stop()
    router.tick = counting
    router.run()
    assert settled == [0]


def test_under_systemd_run_says_ready_feeds_the_watchdog_from_its_loop_and_says_stopping(
        make_router, monkeypatch, tmp_path):
    monkeypatch.setattr(router_module, "TICK", 0.001)
    system = MemorySystem()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    system.notify_environment = {"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                 "WATCHDOG_USEC": "1000"}
    router = make_router({"ipip1": every_mode(A, [B], 1)["ipip1"]}, system)
    ticks = []
    tick = router.tick

    def counting(now):
        tick(now)
        ticks.append(now)
        if len(ticks) == 5:
            router.stop()
    router.tick = counting
    router.run()
    said = []
    while True:
        try:
            said.append(notify.recv(200).decode())
        except BlockingIOError:
            break
    notify.close()
    assert said[0] == "READY=1\nSTATUS=1 tunnel(s), 1 up"
    assert said[1:-1] == ["WATCHDOG=1"] * 5 and said[-1] == "STOPPING=1"


# -- the control socket --------------------------------------------------------------------

def test_the_control_socket_answers_show_with_the_status_and_anything_else_with_an_error(
        make_router, tmp_path):
    path = str(tmp_path / "run" / "router.sock")
    router = make_router(every_mode(A, [B], 1), control_path=path)
    status = json.loads(ask(path, b"show\n", router.run_once))
    assert list(status["tunnels"]) == list(every_mode(A, [B], 1))
    assert status["tunnels"]["gre1"]["device"] == "up"
    assert json.loads(ask(path, b"restart\n", router.run_once)) == {
        "error": "unknown request 'restart'; this router answers: show, reload, "
                 "reload --dry-run, config"}
    router.close()
    assert not os.path.exists(path)


def test_a_control_socket_that_cannot_be_opened_fails_the_start_and_leaves_nothing(
        make_router, tmp_path):
    path = tmp_path / "router.sock"
    path.write_text("not a socket")
    system = MemorySystem()
    with pytest.raises(StartError) as failure:
        make_router(every_mode(A, [B], 1), system, control_path=str(path))
    assert failure.value.problems == [
        ("control-socket", f"{path} exists and is not a socket: remove it, or choose another "
                           f"control-socket path")]
    assert system.links == {} and path.read_text() == "not a socket"


# -- keepalives and failover ---------------------------------------------------------------

def primary_and_backup(local: str, remote: str, side: int) -> dict:
    """gre1 carries 10.5.0.0/16 while its peer answers; ipip1 is the backup (metric 200)."""
    return {
        "gre1": {"mode": "gre", "local": local, "remote": remote, "key": 5, "checksum": True,
                 "sequence": True, "keepalive": 1, "keepalive-retries": 3,
                 "addresses": [f"192.168.9.{side}/24"], "routes": ["10.5.0.0/16"]},
        "ipip1": {"mode": "ipip", "local": local, "remote": remote,
                  "addresses": [f"192.168.10.{side}/24"],
                  "routes": [{"to": "10.5.0.0/16", "metric": 200}]},
    }


class Clock:
    """The tunnels' clock, moved by the test: ahead of any tick the loop makes by itself."""

    def __init__(self) -> None:
        self.now = time.monotonic() + 1000

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


def test_a_silent_peer_loses_its_routes_and_carrier_and_gets_them_back_when_it_answers(
        make_router, caplog, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tunnels_module, "time", clock)
    monkeypatch.setattr(datapath_module, "time", clock)
    wire = Wire()
    a = make_router(primary_and_backup(A, B, 1), MemorySystem(wire))
    b = make_router(primary_and_backup(B, A, 2), MemorySystem(wire))
    links = a.system.links
    start = clock.now
    far = [b]

    def tick(at: float) -> dict:
        clock.now = start + at
        a.tick(clock.now)
        clock.now += 0.002                # the answer's round trip
        drive(a, *far)
        return a.status()["tunnels"]["gre1"]["liveness"]

    assert tick(0)["state"] == "unknown"
    up = tick(1)
    assert up["state"] == "up" and up["probes_answered"] == 2
    assert up["rtt"] == pytest.approx(0.002)
    assert up["peers"][B]["latest_rx"] is not None

    b.close()                           # the far router is gone
    far.clear()
    # Heard last at 1.002: silent for three intervals of 1 s at 4.002, seen at the tick of 5.
    states = [tick(at)["state"] for at in (2, 3, 4, 5)]
    assert states == ["up", "up", "up", "down"]
    assert links["gre1"]["routes"] == {} and links["gre1"]["carrier"] is False
    assert links["ipip1"]["routes"] == {"10.5.0.0/16 metric 200": None}   # the backup stands
    assert messages(caplog, "tunnel gre1: peer down")

    far.append(make_router(primary_and_backup(B, A, 2), MemorySystem(wire)))
    assert [tick(at)["state"] for at in (6, 7)] == ["down", "up"]
    assert links["gre1"]["routes"] == {"10.5.0.0/16": None} and links["gre1"]["carrier"]
    assert a.status()["tunnels"]["gre1"]["liveness"]["transitions"] == 2


def test_a_tunnelrouter_answers_its_peers_keepalives_without_keepalives_of_its_own(
        make_router):
    wire = Wire()
    a = make_router(primary_and_backup(A, B, 1), MemorySystem(wire))
    quiet = primary_and_backup(B, A, 2)
    quiet["gre1"]["keepalive"] = "off"
    b = make_router(quiet, MemorySystem(wire))
    a.tick(time.monotonic() + 1000)
    drive(a, b)
    assert counters(b, "gre1")["peer_keepalives_answered"] == 1
    assert b.status()["tunnels"]["gre1"]["liveness"]["state"] == "unknown"
    assert not counters(a, "gre1")["drops"] and not counters(b, "gre1")["drops"]


def test_keepalives_turned_off_by_a_reload_give_a_down_peers_routes_and_carrier_back(
        make_router, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tunnels_module, "time", clock)
    monkeypatch.setattr(datapath_module, "time", clock)
    a = make_router(primary_and_backup(A, B, 1), MemorySystem(Wire()))   # nobody answers
    for at in range(5):
        clock.now += 1
        a.tick(clock.now)
    links = a.system.links
    assert a.status()["tunnels"]["gre1"]["liveness"]["state"] == "down"
    assert links["gre1"]["routes"] == {} and links["gre1"]["carrier"] is False
    quiet = primary_and_backup(A, B, 1)
    quiet["gre1"]["keepalive"] = "off"
    a.tunnel_set.change(parse_config({"tunnels": quiet}).tunnels["gre1"])
    assert a.status()["tunnels"]["gre1"]["liveness"]["state"] == "unknown"
    assert links["gre1"]["routes"] == {"10.5.0.0/16": None} and links["gre1"]["carrier"]


def test_metrics_are_served_from_the_start_with_the_routers_status(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    router = Router(parse_config({"tunnels": every_mode(A, [B], 1),
                                  "metrics": f"127.0.0.1:{port}"}), None, MemorySystem())
    router.start()
    try:
        answer = ask(("127.0.0.1", port), b"GET /metrics HTTP/1.1\r\n\r\n", router.run_once)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'tunnelrouter_tunnel_info{tunnel="vx1",mode="vxlan",local="10.0.0.1"} 1\n' \
            in answer
        assert router.status()["metrics"] == {"listen": f"127.0.0.1:{port}", "clients": 0,
                                              "evicted": 0, "scrapes": 1}
    finally:
        router.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_metrics_that_cannot_listen_fail_the_start_with_the_other_problems_and_leave_nothing():
    system = MemorySystem()
    system.add_foreign_device("gre1")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        router = Router(parse_config({"tunnels": every_mode(A, [B], 1),
                                      "metrics": f"127.0.0.1:{port}"}), None, system)
        with pytest.raises(StartError) as failure:
            router.start()
    assert failure.value.problems == [
        ("tunnels.gre1", "a device named gre1 already exists (another tunnelrouter has it, or "
                         "remove it: ip link del gre1)"),
        ("metrics", f"cannot listen on 127.0.0.1:{port}: Address already in use (another "
                    f"program, or another tunnelrouter, listens there: choose another port)")]
    assert list(system.links) == ["gre1"] and router.metrics is None
