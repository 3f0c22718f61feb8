"""Two tunnelrouters, one in each of two namespaces joined by a WAN veth, every mode at once.

Each side pings the other's tunnel address, IPv4 and IPv6 where the mode
carries it: the packets leave one router's TUN/TAP device, cross the WAN
encapsulated, and come out of the other router's device. gre1 and tap1 share
the same two underlay addresses and are told apart by their GRE keys.
"""

import pytest

from tests.netns.routers import WAN, join_wan, show, start_router, wait_for

pytestmark = pytest.mark.netns


def router_config(me: str, peer: str, side: int) -> dict:
    def pair(prefix: str) -> list[str]:
        return [f"{prefix}.{side}/24"]

    common = {"local": WAN[me], "remote": WAN[peer]}
    return {"tunnels": {
        "gre1": common | {"mode": "gre", "key": 42, "checksum": True, "sequence": True,
                          "addresses": pair("192.168.101") + [f"fd00:101::{side}/64"]},
        "tap1": common | {"mode": "gretap", "key": 7, "addresses": pair("192.168.105")},
        "vx1": {"mode": "vxlan", "local": WAN[me], "remotes": [WAN[peer]], "id": 4242,
                "addresses": pair("192.168.102") + [f"fd00:102::{side}/64"]},
        "ipip1": common | {"mode": "ipip", "ttl": "inherit", "addresses": pair("192.168.103")},
        "six1": common | {"mode": "sit", "addresses": [f"fd00:104::{side}/64"]},
    }}


PINGS = [("gre1", "192.168.101.2"), ("gre1", "fd00:101::2"), ("tap1", "192.168.105.2"),
         ("vx1", "192.168.102.2"), ("vx1", "fd00:102::2"), ("ipip1", "192.168.103.2"),
         ("six1", "fd00:104::2")]


@pytest.fixture
def two_routers(netns, tmp_path):
    m1, m2 = netns("m1"), netns("m2")
    join_wan(netns, m1, m2)
    return start_pair(m1, m2, tmp_path)


def start_pair(m1, m2, directory) -> dict:
    """Both routers with ``router_config``, started and ready: ``{name: (ns, process, control)}``."""
    routers = {}
    for ns, me, peer, side in ((m1, "m1", "m2", 1), (m2, "m2", "m1", 2)):
        routers[me] = (ns, *start_router(ns, router_config(me, peer, side), directory, me))
    for ns, process, control in routers.values():
        wait_for(control, process)
    return routers


def test_every_mode_carries_pings_both_ways(two_routers):
    m1, _, control = two_routers["m1"]
    failures = [f"{tunnel} -> {address}" for tunnel, address in PINGS
                if m1.run("ping", "-c", "2", "-i", "0.2", "-W", "2", address, check=False).returncode]
    assert not failures, f"no answer through: {failures}"
    status = show(control)["tunnels"]
    for tunnel in ("gre1", "tap1", "vx1", "ipip1", "six1"):
        counters = status[tunnel]["counters"]
        assert counters["tx_packets"] >= 2 and counters["rx_packets"] >= 2, (tunnel, counters)
        assert not counters["drops"], (tunnel, counters["drops"])
    # The VTEP learnt the far side's MAC from what came back.
    assert [e["remote"] for e in status["vx1"]["fdb"]] == [WAN["m2"]]


def test_shutdown_removes_every_device_and_a_second_start_works(two_routers, tmp_path):
    m1, process, control = two_routers["m1"]
    process.terminate()
    assert process.wait(timeout=10) == 0
    links = m1.ip("-o", "link", "show").stdout
    assert not any(name in links for name in ("gre1", "tap1", "vx1", "ipip1", "six1")), links
    assert "192.168.10" not in m1.ip("route").stdout and not control.exists()
    again, control = start_router(m1, router_config("m1", "m2", 1), tmp_path, "m1")
    wait_for(control, again)
    assert m1.run("ping", "-c", "1", "-W", "2", "192.168.103.2", check=False).returncode == 0
