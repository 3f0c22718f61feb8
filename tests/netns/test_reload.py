"""Reload in real namespaces: twenty reloads that add, change and remove other tunnels cost
an unchanged tunnel not one ping nor its TCP stream; an MTU changed by a reload is applied to
the same device (its ifindex stays); `tunnelrouter reload` and SIGHUP both reload, and a
broken file is refused while everything goes on."""

import json
import signal
import time

import pytest
import yaml

from tests.netns.routers import VENV_BIN, wait_for_text, wait_until
from tests.netns.test_operations import (SITE, gre, ipip, pair, router_config,  # noqa: F401
                                         serving, vxlan)

pytestmark = pytest.mark.netns

TUNNELROUTER = str(VENV_BIN / "tunnelrouter")


def rewrite(router, tunnels: dict) -> None:
    router.control.with_suffix(".yaml").write_text(yaml.safe_dump({"tunnels": tunnels}))


def reload(router) -> dict:
    result = router.ns.run(TUNNELROUTER, "reload", "--socket", str(router.control), check=False,
                           timeout=60)
    return {"code": result.returncode, "out": result.stdout, "err": result.stderr}


def ifindex(ns, name: str) -> int:
    return json.loads(ns.run("ip", "-j", "link", "show", name).stdout)[0]["ifindex"]


def test_twenty_reloads_of_other_tunnels_cost_an_unchanged_tunnel_nothing(pair):
    m1, m2 = pair["m1"], pair["m2"]
    server = m2.ns.popen("iperf3", "-s", "-1", "-B", SITE[2][0])
    time.sleep(0.5)
    ping = m1.ns.popen("ping", "-n", "-q", "-i", "0.05", "-I", SITE[1][0], SITE[2][0])
    stream = m1.ns.popen("iperf3", "-c", SITE[2][0], "-B", SITE[1][0], "-t", "8", "-J",
                         "-b", "200M")
    index = ifindex(m1.ns, "gre1")
    others = [{}, {"vx1": vxlan("m1", "m2", 1)}, {"ipip1": ipip("m1", "m2", 1)},
              {"ipip1": ipip("m1", "m2", 1) | {"mtu": 1300}, "vx1": vxlan("m1", "m2", 1)}]
    for round_ in range(20):
        rewrite(m1, {"gre1": gre("m1", "m2", 1)} | others[(round_ + 1) % len(others)])
        result = reload(m1)
        assert result["code"] == 0, result
        time.sleep(0.2)
    transfer = json.loads(stream.communicate(timeout=60)[0])
    ping.send_signal(signal.SIGINT)
    summary = ping.communicate(timeout=20)[0]
    server.wait(timeout=20)
    sent, received = (int(part.split()[0]) for part in summary.split("\n")[-3].split(",")[:2])
    assert sent > 50 and received == sent, summary
    assert transfer["end"]["sum_received"]["bytes"] > 0 and "error" not in transfer
    assert ifindex(m1.ns, "gre1") == index
    status = serving(m1)
    assert status["config"]["generation"] == 21 and status["tunnels"]["gre1"]["device"] == "up"


def test_an_mtu_changed_by_a_reload_is_applied_to_the_same_device(pair):
    m1 = pair["m1"]
    index = ifindex(m1.ns, "ipip1")
    tunnels = router_config("m1", "m2", 1)["tunnels"]
    rewrite(m1, tunnels | {"ipip1": tunnels["ipip1"] | {"mtu": 1300}})
    result = reload(m1)
    assert result["code"] == 0 and "change in place tunnel ipip1: mtu" in result["out"], result
    link = json.loads(m1.ns.run("ip", "-j", "link", "show", "ipip1").stdout)[0]
    assert (link["ifindex"], link["mtu"]) == (index, 1300)


def test_sighup_reloads_and_a_broken_file_is_refused_while_everything_goes_on(pair):
    m1 = pair["m1"]
    tunnels = router_config("m1", "m2", 1)["tunnels"]
    rewrite(m1, {name: body for name, body in tunnels.items() if name != "vx1"})
    m1.process.send_signal(signal.SIGHUP)
    wait_for_text(m1.process.stderr, "reload: generation 2", 15)
    wait_until(lambda: "vx1" not in serving(m1)["tunnels"], 10, "vx1 to go")
    m1.control.with_suffix(".yaml").write_text("tunnels:\n  gre1:\n    mode: gre\n    ttl: 0\n")
    result = reload(m1)
    assert result["code"] == 2 and "ttl" in result["err"], result
    status = serving(m1)
    assert set(status["tunnels"]) == {"gre1", "ipip1"}
    assert status["config"]["generation"] == 2
    assert status["config"]["last_reload"]["result"] == "refused"
