"""allowed-ips and rate-limit between two real routers: what the peer sends through its
tunnel is let in, or dropped and counted where ``tunnelrouter show --json`` shows it.

M1 and M2 on a WAN veth, one tunnel between them; only M1 has the policy. From M2's
namespace, packets go into M2's tunnel device as any host's would (a raw socket writes
whatever source it likes), M2's router carries them to M1, and M1 decides.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.netns.routers import VENV_BIN, WAN, join_wan, wait_until
from tests.netns.test_hostile_wan import (INNER, TUNNELS, Router, answers, assert_survived,
                                          drops_since, quiet, send, tunnel_config, udp_datagram)

pytestmark = pytest.mark.netns

M1_INSIDE, M2_INSIDE = INNER[4].format(1), INNER[4].format(2)
SPOOFED = "10.66.0.1"


def start_pair(netns, directory, mode: str, policy: dict) -> tuple[Router, Router]:
    """M1 (with ``policy``) and M2 joined by a ``mode`` tunnel that carries pings. IPv6 is off
    on the tunnel devices, so that every packet M1 gets through the tunnel is the test's
    (and ARP, which the policy lets in)."""
    m1_ns, m2_ns = netns("m1"), netns("m2")
    for ns in (m1_ns, m2_ns):
        quiet(ns)
    join_wan(netns, m1_ns, m2_ns)
    name, _ = TUNNELS[mode]
    m1 = Router.start(m1_ns, {"tunnels": {name: tunnel_config(
        mode, WAN["m1"], WAN["m2"], 1, **policy)}}, directory, "m1")
    m2 = Router.start(m2_ns, {"tunnels": {name: tunnel_config(
        mode, WAN["m2"], WAN["m1"], 2)}}, directory, "m2")
    wait_until(lambda: answers(m2_ns, M1_INSIDE), 20, f"a ping through {name}")
    return m1, m2


def show_json(router: Router) -> dict:
    """What an operator sees: ``tunnelrouter show --json``, run in the router's namespace."""
    result = router.ns.run(str(VENV_BIN / "tunnelrouter"), "show", "--json", "--socket",
                           str(router.control))
    return json.loads(result.stdout)


@pytest.mark.parametrize("mode", ["gre", "vxlan"])
def test_a_spoofed_inner_source_from_the_peer_is_dropped_and_an_allowed_one_delivered(
        netns, tmp_path, mode):
    m1, m2 = start_pair(netns, tmp_path, mode, {"allowed-ips": [f"{M2_INSIDE}/32"]})
    name, _ = TUNNELS[mode]
    before = show_json(m1)["tunnels"][name]["counters"]
    spoofed = udp_datagram(SPOOFED, M1_INSIDE, b"spoofed")
    allowed = udp_datagram(M2_INSIDE, M1_INSIDE, b"allowed")
    assert send(m2.ns, [("ip", spoofed, M1_INSIDE, 0)], repeat=7) == 7
    assert send(m2.ns, [("ip", allowed, M1_INSIDE, 0)], repeat=5) == 5

    def counted() -> bool:
        after = show_json(m1)["tunnels"][name]["counters"]
        return drops_since(before, after).get("source_not_allowed") == 7 and \
            after["rx_packets"] - before["rx_packets"] >= 5
    wait_until(counted, 10, "7 spoofed packets counted and 5 allowed ones delivered")
    after = show_json(m1)["tunnels"][name]["counters"]
    assert drops_since(before, after) == {"source_not_allowed": 7}
    assert answers(m2.ns, M1_INSIDE)
    assert_survived(m1, m2)


def test_a_flood_above_the_rate_limit_is_cut_and_counted_and_the_router_stays_up(netns, tmp_path):
    rate, burst = 500, 0.1
    m1, m2 = start_pair(netns, tmp_path, "gre",
                        {"rate-limit": {"packets": rate, "burst": "100ms"}})
    before = show_json(m1)["tunnels"]["gre1"]["counters"]
    started = time.monotonic()
    flood = send(m2.ns, [("udp", b"flood" * 10, M1_INSIDE, 9)], repeat=20_000)

    seen = [-1]

    def settled() -> bool:   # nothing more arrives: M2 and the WAN may lose part of a flood
        after = show_json(m1)["tunnels"]["gre1"]["counters"]
        arrived = after["rx_packets"] + sum(after["drops"].values())
        done, seen[0] = arrived == seen[0], arrived
        return done
    wait_until(settled, 30, "the flood to end", interval=0.5)
    elapsed = time.monotonic() - started
    after = show_json(m1)["tunnels"]["gre1"]["counters"]
    delivered = after["rx_packets"] - before["rx_packets"]
    limited = drops_since(before, after).get("rate_limited", 0)
    assert limited > 0 and delivered > 0, (delivered, limited, flood)
    # The bucket's bound, with the wall clock (which only loosens it): never more than the
    # rate over the time plus the burst.
    assert delivered <= rate * elapsed + rate * burst + 1, (delivered, elapsed)
    assert set(drops_since(before, after)) == {"rate_limited"}
    assert_survived(m1, m2)
    time.sleep(burst)   # the bucket fills again
    assert answers(m2.ns, M1_INSIDE)


def test_a_reload_that_sets_allowed_ips_applies_at_once_without_remaking_the_tunnel(
        netns, tmp_path):
    m1, m2 = start_pair(netns, tmp_path, "gre", {})
    index = m1.ns.run("cat", "/sys/class/net/gre1/ifindex").stdout
    m1.config["tunnels"]["gre1"]["allowed-ips"] = ["192.168.99.0/24"]
    (tmp_path / "m1.yaml").write_text(json.dumps(m1.config))
    result = m1.ns.run(str(VENV_BIN / "tunnelrouter"), "reload", "--socket", str(m1.control),
                       check=False)
    assert result.returncode == 0, result.stderr
    assert "change in place tunnel gre1: allowed-ips" in result.stdout
    assert not answers(m2.ns, M1_INSIDE)
    assert show_json(m1)["tunnels"]["gre1"]["counters"]["drops"].get("source_not_allowed")
    assert m1.ns.run("cat", "/sys/class/net/gre1/ifindex").stdout == index
    assert_survived(m1, m2)
