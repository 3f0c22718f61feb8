"""Path MTU through tunnels whose WAN has a narrow link in the middle.

hostA — M1 — R1 ==middle== R2 — M2 — hostB (tests/netns/topology.py): M1 and M2 run
tunnelrouter with one tunnel per mode, their own WAN links are 1500 bytes, and only the
link between the plain kernel routers R1 and R2 is narrower (1400 or 1280, one topology
each, shared by the tests below). A tunnel's device MTU is therefore too large for the
path, and the routers can only learn that from the ICMP fragmentation-needed R1/R2 send.
What must hold:

* no black hole: 10 MB of TCP crosses every mode in both directions;
* a DF packet that fits the device but not the path is answered with fragmentation-
  needed (IPv4) or packet-too-big (IPv6) carrying path MTU minus the mode's overhead,
  and ``show`` reports the learnt path MTU for the peer;
* IPv6 is never told less than 1280: below that the tunnel carries 1280-byte packets in
  fragmented outer IPv4 (RFC 4213 §3.2);
* a non-DF IPv4 packet bigger than the path is fragmented, not dropped: by the narrow
  link while the router does not know the path MTU, by the router (inner fragments) once
  it does;
* the learnt path MTU follows the middle link when its MTU changes, and is forgotten
  after ``pmtu-timeout`` (5 s here);
* the router's MSS clamp writes what nftables' ``rt mtu`` writes, before and after
  learning (the learnt MTU is programmed as the route MTU).
"""

import re

import pytest

from tests.netns.conftest import NetnsFactory
from tests.netns.routers import capture, wait_until
from tests.netns.topology import (FLOWS, FULL_MTU, IPV6_MINIMUM_MTU, OVERHEAD, PMTU_TIMEOUT,
                                  WAN, build)
from tests.tshark import run_tshark

pytestmark = [pytest.mark.netns, pytest.mark.needs_binary("iperf3", "nft", "tcpdump", "tshark")]

MIDDLE_MTUS = [1400, 1280]
TRANSFER_FLOWS = ["gre1-ipv4", "gre1-ipv6", "tap1-ipv4", "vx1-ipv4", "ipip1-ipv4", "six1-ipv6"]
# What iputils ping prints for an ICMP error from a router, and for the local error once
# the host has learnt the MTU itself.
TOLD = re.compile(r"(Frag needed and DF set \(mtu = |Packet too big: mtu=)(\d+)")
LOCAL = re.compile(r"local error: message too long, mtu[=:] ?(\d+)")


@pytest.fixture(scope="module", params=MIDDLE_MTUS, ids=lambda mtu: f"middle{mtu}")
def lab(request, tmp_path_factory):
    factory = NetnsFactory()
    try:
        yield build(factory, tmp_path_factory.mktemp("pmtu"), request.param)
    finally:
        factory.cleanup()


def assert_told(output: str, expected: int, what: str) -> None:
    """ping got at least one ICMP error from a router, and every MTU it was told is ``expected``."""
    told = [int(mtu) for _, mtu in TOLD.findall(output)]
    local = [int(mtu) for mtu in LOCAL.findall(output)]
    assert told, f"{what}: no fragmentation-needed / packet-too-big came back:\n{output}"
    assert set(told + local) == {expected}, f"{what}: told {told + local}, expected {expected}:\n{output}"


# -- a. no black hole -----------------------------------------------------------------------

@pytest.mark.parametrize("flow_id", TRANSFER_FLOWS)
def test_10mb_crosses_both_ways(lab, flow_id):
    flow = FLOWS[flow_id]
    failures = [problem for reverse in (False, True)
                if (problem := lab.transfer(flow, reverse=reverse, timeout=10))]
    assert not failures, failures


# -- b. IPv4: fragmentation-needed with the right MTU ---------------------------------------

@pytest.mark.parametrize("flow_id", ["gre1-ipv4", "tap1-ipv4", "vx1-ipv4", "ipip1-ipv4"])
def test_df_packet_too_big_for_the_path_gets_frag_needed(lab, flow_id):
    flow = FLOWS[flow_id]
    lab.settle(flow.tunnel)
    lab.flush_host_caches()
    # The largest packet the device takes. If M1 does not know the path yet, the first one
    # teaches it (R1 drops it and says why); the others are answered by M1: by its kernel
    # through the route MTU (TUN modes) or by the router itself (TAP modes).
    _, output = lab.ping(flow, flow.device_mtu - flow.headers, count=4)
    assert_told(output, lab.middle_mtu - OVERHEAD[flow.tunnel], flow.id)
    status = lab.routers[1].tunnel(flow.tunnel)
    assert status["path_mtu"][WAN[2]]["mtu"] == lab.middle_mtu, status
    assert status["mtu"] == flow.device_mtu, status
    assert status["effective_mtu"] == lab.middle_mtu - OVERHEAD[flow.tunnel], status
    # The config's routes carry the learnt MTU (the TAP modes' with their gateway too).
    assert lab.route_mtu(1, flow) == lab.middle_mtu - OVERHEAD[flow.tunnel]


# -- c. IPv6: packet-too-big, never below 1280 ------------------------------------------------

@pytest.mark.parametrize("flow_id", ["gre1-ipv6", "six1-ipv6"])
def test_ipv6_gets_packet_too_big_and_1280_bytes_get_through(lab, flow_id):
    flow = FLOWS[flow_id]
    lab.settle(flow.tunnel)
    lab.flush_host_caches()
    _, output = lab.ping(flow, flow.device_mtu - flow.headers, count=4)
    expected = flow.told_mtu(lab.middle_mtu)
    assert_told(output, expected, flow.id)
    assert lab.learnt(1, flow.tunnel) == lab.middle_mtu, lab.path_mtus(1, flow.tunnel)
    assert lab.route_mtu(1, flow) == expected  # never below 1280 for an IPv6 route
    # Once both routers know the path, a 1280-byte IPv6 packet goes through whatever the
    # path: in outer IPv4 with DF clear, fragmented on the way, when the path is narrower
    # than 1280 + overhead (RFC 4213 §3.2.2). (Before a router knows, it sends DF like any
    # other packet, and the first one is lost to teach it.)
    lab.ping(flow, flow.device_mtu - flow.headers, count=2, reverse=True)
    assert lab.learnt(2, flow.tunnel) == lab.middle_mtu, lab.path_mtus(2, flow.tunnel)
    received, output = lab.ping(flow, IPV6_MINIMUM_MTU - flow.headers, count=3)
    assert received == 3, output


# -- d. non-DF IPv4 bigger than the path is fragmented ---------------------------------------

@pytest.mark.parametrize("flow_id", ["gre1-ipv4", "ipip1-ipv4"])
def test_non_df_packet_bigger_than_the_path_is_fragmented(lab, flow_id):
    flow = FLOWS[flow_id]
    # Path MTU not known yet: the outer packet copies the inner's clear DF (RFC 2003 §3.1)
    # and the narrow link fragments it. None is lost, none is answered with
    # fragmentation-needed (that is for DF packets), and the router is idle afterwards.
    lab.wait_forgotten([flow.tunnel])
    lab.flush_host_caches()
    received, output = lab.ping(flow, 1450, df="dont", count=3)
    assert (received, TOLD.search(output)) == (3, None), output
    assert lab.routers[1].busy() < 0.2, "M1's router keeps a CPU busy after the transfer"
    # Path MTU known (a DF packet taught it): the inner packet is fragmented before
    # encapsulation (RFC 4459 §3) — by M1's kernel, since the learnt MTU is the route's
    # MTU — so each ping crosses the tunnel as two packets, and still none is lost.
    lab.settle(flow.tunnel)
    lab.ping(flow, flow.device_mtu - flow.headers, count=1)
    assert lab.learnt(1, flow.tunnel) == lab.middle_mtu
    lab.flush_host_caches()
    before = lab.routers[1].tunnel(flow.tunnel)["counters"]["tx_packets"]
    received, output = lab.ping(flow, 1450, df="dont", count=3)
    assert (received, TOLD.search(output)) == (3, None), output
    assert lab.routers[1].tunnel(flow.tunnel)["counters"]["tx_packets"] - before >= 6


# -- e. the path MTU follows the middle link ------------------------------------------------

def test_path_mtu_drops_and_recovers_while_the_router_runs(lab):
    flow = FLOWS["gre1-ipv4"]
    narrow = lab.middle_mtu
    try:
        lab.set_middle_mtu(FULL_MTU)
        lab.wait_forgotten([flow.tunnel])
        lab.flush_host_caches()
        # Traffic flows at the full MTU, then the middle link narrows under it.
        def sent() -> int:
            return lab.routers[1].tunnel(flow.tunnel)["counters"]["tx_bytes"]
        before = sent()
        lab.iperf3_server(flow, 5202)
        background = lab.hosta.popen("iperf3", "-c", flow.dst, "-B", flow.src, "-p", "5202",
                                     "-t", "3")
        wait_until(lambda: sent() > before + (4 << 20), 5, "the transfer to get going")
        lab.set_middle_mtu(narrow)
        wait_until(lambda: lab.learnt(1, flow.tunnel) == narrow, 3,
                   f"M1 to learn path MTU {narrow}")
        assert lab.routers[1].tunnel(flow.tunnel)["effective_mtu"] == narrow - OVERHEAD["gre1"]
        out, err = background.communicate(timeout=10)
        assert background.returncode == 0, out + err
        assert not lab.transfer(flow, timeout=10)
        # Wider again: after pmtu-timeout the full MTU is tried again, and it passes.
        lab.set_middle_mtu(FULL_MTU)
        wait_until(lambda: not lab.path_mtus(1, flow.tunnel), PMTU_TIMEOUT + 3,
                   "M1 to forget the path MTU")
        status = lab.routers[1].tunnel(flow.tunnel)
        assert status["effective_mtu"] == status["mtu"] == flow.device_mtu, status
        lab.flush_host_caches()
        received, output = lab.ping(flow, flow.device_mtu - flow.headers, count=3)
        assert received == 3, output
    finally:
        lab.set_middle_mtu(narrow)


# -- f. the clamp agrees with nftables' rt mtu ----------------------------------------------

NFT_CLAMP = """
table inet trt_pmtu_mss {
    chain forward {
        type filter hook forward priority filter; policy accept;
        oifname "greoff" tcp flags syn tcp option maxseg size set rt mtu
    }
}
"""
CAPTURE_FIELDS = ["gre.key", "tcp.flags.syn", "tcp.options.mss_val"]
CLAMPED_BY = {42: "tunnelrouter", 43: "nftables"}  # gre1's and greoff's keys


def syn_mss_on_the_middle_link(lab, tmp_path) -> dict[str, int]:
    """A kernel SYN from hostA through gre1 and one through greoff: the MSS each carries on
    the middle link (captured in R2, decoded by tshark), by who clamped it."""
    with capture(lab.r2, "mid", tmp_path / "middle.pcap", "proto 47") as pcap:
        for flow in (FLOWS["gre1-ipv4"], FLOWS["greoff-ipv4"]):
            # Nothing listens on hostB: the SYN is answered with a RST, which is all we need.
            lab.hosta.python("import socket, sys\n"
                             "try: socket.create_connection((sys.argv[1], 9), timeout=2, "
                             "source_address=(sys.argv[2], 0))\n"
                             "except OSError: pass", flow.dst, flow.src)
    seen = {}
    for frame in run_tshark(pcap, CAPTURE_FIELDS):
        if frame["tcp.flags.syn"] in ("1", "True") and frame["tcp.options.mss_val"]:
            key = int(frame["gre.key"], 0)  # tshark prints 0x0000002a
            seen.setdefault(CLAMPED_BY.get(key, f"key {key}"), int(frame["tcp.options.mss_val"]))
    return seen


def test_clamp_writes_what_nftables_rt_mtu_writes(lab, tmp_path):
    # gre1 is clamped by tunnelrouter (mss-clamp auto); greoff (mss-clamp off) by nftables
    # in M1's forward chain. Same overhead (GRE with key: 28), same peer; hostA's SYNs
    # carry MSS 1460 (its own MTU: its caches are flushed), so both must lower it.
    tunnels = ["gre1", "greoff"]
    lab.m1.run("nft", "-f", "-", input=NFT_CLAMP)
    try:
        lab.wait_forgotten(tunnels)
        lab.flush_host_caches()
        mss = FULL_MTU - 28 - 40
        assert syn_mss_on_the_middle_link(lab, tmp_path) == {"tunnelrouter": mss, "nftables": mss}

        for tunnel in tunnels:  # a big DF packet teaches each tunnel the path MTU
            flow = FLOWS[f"{tunnel}-ipv4"]
            lab.ping(flow, flow.device_mtu - flow.headers, count=2)
            assert lab.learnt(1, tunnel) == lab.middle_mtu, lab.path_mtus(1, tunnel)
        route = lab.m1.ip("route", "show", "10.2.6.0/24").stdout  # greoff's: nft reads it
        assert f"mtu {lab.middle_mtu - 28}" in route, route
        lab.flush_host_caches()
        mss = lab.middle_mtu - 28 - 40
        assert syn_mss_on_the_middle_link(lab, tmp_path) == {"tunnelrouter": mss, "nftables": mss}
    finally:
        lab.m1.run("nft", "delete", "table", "inet", "trt_pmtu_mss", check=False)
