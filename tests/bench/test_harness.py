"""The harness's choices that need no root: what a run plans, the configurations it
gives tunnelrouter, which namespaces count as left over."""

import pytest

from bench import __main__ as cli
from bench.lab import stale_namespaces
from bench.rows import make_rows, scale_config, tunnelrouter_config
from bench.topology import Slot, Topology, parse_offloads, parse_snmp_ip
from tunnelrouter.config import parse_config


def plan(*argv):
    return cli.plan(cli.parse_args(list(argv)))


def test_the_default_run_is_the_committed_one():
    p = plan()
    assert p["default"] and p["out"].name == "latest"
    assert p["wires"] == ["veth", "nic", "bare"] and p["repetitions"] == 3
    assert p["rows"][:2] == ["plain", "kernel-vxlan"]


def test_knobs_make_a_custom_run_that_always_has_the_baseline():
    p = plan("--rows", "tr-vxlan", "--wires", "nic", "--reps", "5", "--seconds", "3")
    assert not p["default"] and p["out"].name == "run"
    assert p["rows"] == ["kernel-vxlan", "tr-vxlan"]
    assert (p["wires"], p["repetitions"], p["seconds"]) == (["nic"], 5, 3.0)
    q = plan("--quick")
    assert (q["wires"], q["repetitions"], q["seconds"]) == (["nic"], 2, 1.0)


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit):
        plan("--rows", "wireguard")
    with pytest.raises(SystemExit):
        plan("--wires", "fibre")


def test_two_builds_double_the_tunnelrouter_rows_only():
    p = plan("--rows", "openvpn,tr-gre", "--tunnelrouter", "/a/tr", "--tunnelrouter-b", "/b/tr",
             "--label-a", "before", "--label-b", "after")
    rows = make_rows(p["rows"], p["builds"])
    assert [r.id for r in rows] == ["kernel-vxlan", "openvpn", "tr-gre@before", "tr-gre@after"]
    assert [r.binary for r in rows[2:]] == ["/a/tr", "/b/tr"]
    assert [r.slot.k for r in rows] == [1, 2, 3, 4]   # every row its own addresses


@pytest.mark.parametrize("mode", ["gre", "ipip", "sit", "vxlan", "gretap"])
def test_row_configurations_are_valid_tunnelrouter_configurations(mode):
    slot = Slot(7, 6 if mode == "sit" else 4)
    for side in (1, 2):
        config = parse_config(tunnelrouter_config(mode, slot, side, f"t{mode}7"))
        tunnel = config.tunnels[f"t{mode}7"]
        assert str(tunnel.local) == f"10.99.{side}.7"


def test_the_remote_checksum_rows_turn_it_on_at_both_ends_of_both_kinds():
    kernel, router = make_rows(["kernel-vxlan-rco", "tr-vxlan-rco"], {"A": "/a/tr"})
    assert kernel.options == ("udpcsum", "remcsumtx", "remcsumrx") and kernel.port == 8473
    assert router.mode == "vxlan"
    router.device = router.device_name()
    for side in (1, 2):
        tunnel = parse_config(router.config(side)).tunnels[router.device]
        assert tunnel.remote_checksum_tx and tunnel.remote_checksum_rx


@pytest.mark.parametrize("mode", ["gre", "vxlan"])
def test_scale_configurations_are_valid_and_carry_the_traffic_in_the_last_tunnel(mode):
    slot = Slot(3)
    config, device = scale_config(mode, 50, slot, 1)
    parsed = parse_config(config)
    assert len(parsed.tunnels) == 50
    last = config["tunnels"][device]
    assert last["addresses"] == ["192.168.3.1/30"]
    assert (last.get("key") or last.get("id")) == 50
    if mode == "gre":
        assert last["routes"] == ["10.2.3.0/24"]


def test_scale_rows_side_by_side_share_no_address_or_route():
    # Several scale rows run at once in the same namespaces: put two rows' tunnels in one
    # file (keys renumbered, one local address) and let the router's own checks look for
    # overlapping routes.
    tunnels = {}
    for k in (2, 3):
        tunnels |= scale_config("gre", 100, Slot(k), 1)[0]["tunnels"]
    for key, tunnel in enumerate(tunnels.values(), start=1):
        tunnel |= {"local": "10.99.1.2", "key": key}
    assert len(parse_config({"tunnels": tunnels}).tunnels) == 200


def test_only_namespaces_of_dead_runs_are_stale():
    names = ["trt-bench-100-m1", "trt-bench-200-hosta", "trt-lab-m1", "trt-m1-abc",
             "trt-bench-probe", "trt-bench-100"]
    assert stale_namespaces(names, alive=lambda pid: pid == 200) == ["trt-bench-100-m1"]


def test_slot_addresses():
    v4, v6 = Slot(12), Slot(12, 6)
    assert (v4.src, v4.dst, v4.wan(1), v4.tunnel(2)) == ("10.1.12.1", "10.2.12.1", "10.99.1.12",
                                                         "192.168.12.2")
    assert (v6.src, v6.dst, v6.prefix(2)) == ("fd01:c::1", "fd02:c::1", "fd02:c::/64")


def test_ethtool_and_snmp_parsing():
    text = ("Features for wan:\ntcp-segmentation-offload: off\n\ttx-tcp-segmentation: off\n"
            "generic-segmentation-offload: off\ngeneric-receive-offload: on\n"
            "tx-udp-segmentation: off [requested on]\n")
    assert parse_offloads(text) == {"tso": "off", "gso": "off", "gro": "on",
                                    "tx-udp-segmentation": "off"}
    snmp = "Ip: Forwarding DefaultTTL FragCreates\nIp: 1 64 3\nIcmp: InMsgs\nIcmp: 0\n"
    assert parse_snmp_ip(snmp) == {"Forwarding": 1, "DefaultTTL": 64, "FragCreates": 3}


@pytest.mark.parametrize("family", [4, 6])
def test_hosts_answer_each_slot_from_its_own_address(family):
    # A host has an address per slot: without a route's src, an IPv6 answer to one slot came
    # from another slot's address, and iperf3's UDP client never took it.
    said: dict[str, list] = {"hosta": [], "hostb": []}

    class Host:
        def __init__(self, name: str):
            self.name = name

        def ip(self, *args: str) -> None:
            said[self.name].append(args)

    topo = Topology.__new__(Topology)
    topo.ns = {name: Host(name) for name in said}
    slot = Slot(3, family)
    topo.route_hosts(slot, 1400)
    for side, host in ((1, "hosta"), (2, "hostb")):
        [args] = said[host]
        assert args[args.index("src") + 1] == slot.host(side)
