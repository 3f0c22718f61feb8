"""A real Prometheus (Debian's) scrapes a running tunnelrouter: M1 and M2 joined by a WAN
veth with a GRE tunnel, M1 serving its metrics on its namespace's loopback, and a
Prometheus started in M1 with a configuration and storage of its own and the shipped
rules loaded. Through Prometheus's HTTP API the test sees the target up, a tunnel counter
that moves after traffic, the recording rule's rate, and the alerting rules loaded."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.netns.routers import WAN, join_wan, show, start_router, wait_for, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.needs_binary("prometheus")]

RULES = Path(__file__).resolve().parents[2] / "prometheus" / "tunnelrouter-rules.yml"
METRICS = "127.0.0.1:9477"
PROMETHEUS = "127.0.0.1:9090"


def gre(me: str, peer: str, side: int) -> dict:
    return {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 7,
            "addresses": [f"192.168.101.{side}/24"]}


def query(ns, expression: str) -> list:
    """The result of an instant query, asked of Prometheus's HTTP API from inside ``ns``."""
    return json.loads(ns.python(
        "import sys, urllib.parse, urllib.request\n"
        "url = 'http://%s/api/v1/query?' % sys.argv[1] + urllib.parse.urlencode("
        "{'query': sys.argv[2]})\n"
        "print(urllib.request.urlopen(url, timeout=5).read().decode())",
        PROMETHEUS, expression).stdout)["data"]["result"]


def scalar(ns, expression: str) -> float | None:
    result = query(ns, expression)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_router_and_sees_its_tunnel_counters_move(netns, tmp_path):
    m1, m2 = netns("m1"), netns("m2")
    join_wan(netns, m1, m2)
    routers = {}
    for ns, me, peer, side, extra in ((m1, "m1", "m2", 1, {"metrics": METRICS}),
                                      (m2, "m2", "m1", 2, {})):
        process, control = start_router(ns, {"tunnels": {"gre1": gre(me, peer, side)}} | extra,
                                        tmp_path, me)
        wait_for(control, process)
        routers[me] = control
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "tunnelrouter",
                            "static_configs": [{"targets": [METRICS]}]}]}))
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = m1.popen(shutil.which("prometheus"), f"--config.file={config}",
                          f"--storage.tsdb.path={tmp_path / 'data'}",
                          f"--web.listen-address={PROMETHEUS}", stdout=log,
                          stderr=subprocess.STDOUT)

    def answers(expression: str, predicate) -> bool:
        assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            value = scalar(m1, expression)
        except Exception:   # noqa: BLE001 - not listening yet
            return False
        return value is not None and predicate(value)

    wait_until(lambda: answers('up{job="tunnelrouter"}', lambda up: up == 1), 30,
               "Prometheus to scrape the router")
    sent = 'tunnelrouter_tunnel_tx_packets_total{tunnel="gre1",mode="gre"}'
    before = scalar(m1, sent)
    m1.run("ping", "-c", "5", "-i", "0.2", "-W", "2", "192.168.101.2")
    wait_until(lambda: answers(sent, lambda now: now >= before + 5), 15,
               "the scraped counter to count the pings")
    wait_until(lambda: answers('tunnel:tunnelrouter_tunnel_bytes:rate5m{tunnel="gre1"}',
                               lambda rate: rate > 0), 15, "the recording rule's rate")
    assert scalar(m1, 'tunnelrouter_tunnel_drops_total{tunnel="gre1",reason="too_big"}') == 0
    assert scalar(m1, "tunnelrouter_config_generation") == 1
    assert scalar(m1, "process_resident_memory_bytes") > 1 << 20
    rules = json.loads(m1.python(
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen('http://%s/api/v1/rules' % sys.argv[1], timeout=5)"
        ".read().decode())", PROMETHEUS).stdout)["data"]["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {
        "TunnelrouterPeerDown", "TunnelrouterTrafficFarAboveUsual",
        "tunnel:tunnelrouter_tunnel_bytes:usual_rate5m"}
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules
    # The router counts the scrapes it answered: one a second, as Prometheus was told.
    wait_until(lambda: show(routers["m1"])["metrics"]["scrapes"] >= 3, 10,
               "the router to have answered three scrapes")
    prometheus.terminate()
    prometheus.wait(timeout=10)
    log.close()
