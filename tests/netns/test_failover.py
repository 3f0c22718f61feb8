"""Liveness and failover between real routers in namespaces.

::

    M1 (tunnelrouter) ---- B1 (tunnelrouter): gre1, keepalive 1 s, 10.50.0.0/24 at metric 0
       \\--------------- B2 (tunnelrouter): ipip1, the backup, 10.50.0.0/24 at metric 100

B1 and B2 both answer for 10.50.0.1 (on their loopback). M1 pings it: the replies come
back through the tunnel that carried the request, so the ping's source address (the
tunnel address the kernel picked) says which tunnel the route chose. Kill B1: its
keepalives go unanswered, M1 withdraws gre1's route and turns its carrier off, and the
pings go through ipip1; start B1 again and they come back to gre1.

A Cisco router's keepalive (a GRE packet holding a GRE packet addressed back to its
sender) is sent back by M1 as it is: scapy sends one from B1's namespace and reads it back.
"""

import json
import signal
import time

import pytest

from tests.netns.routers import show, start_router, wait_for, wait_until

pytestmark = pytest.mark.netns

M1_GRE, B1_GRE = "10.98.1.1", "10.98.1.2"
M1_IPIP, B2_IPIP = "10.98.2.1", "10.98.2.2"
SERVICE = "10.50.0.1"
INTERVAL, RETRIES = 1, 2


def m1_config() -> dict:
    return {"tunnels": {
        "gre1": {"mode": "gre", "local": M1_GRE, "remote": B1_GRE, "key": 9,
                 "keepalive": INTERVAL, "keepalive-retries": RETRIES,
                 "addresses": ["192.168.61.1/30"], "routes": ["10.50.0.0/24"]},
        "ipip1": {"mode": "ipip", "local": M1_IPIP, "remote": B2_IPIP,
                  "addresses": ["192.168.62.1/30"],
                  "routes": [{"to": "10.50.0.0/24", "metric": 100}]},
    }}


def far_config(name: str) -> dict:
    if name == "b1":
        return {"tunnels": {"gre1": {"mode": "gre", "local": B1_GRE, "remote": M1_GRE, "key": 9,
                                     "addresses": ["192.168.61.2/30"]}}}
    return {"tunnels": {"ipip1": {"mode": "ipip", "local": B2_IPIP, "remote": M1_IPIP,
                                  "addresses": ["192.168.62.2/30"]}}}


@pytest.fixture
def sites(netns, tmp_path):
    m1, b1, b2 = netns("m1"), netns("b1"), netns("b2")
    for far, (near_address, far_address) in ((b1, (M1_GRE, B1_GRE)), (b2, (M1_IPIP, B2_IPIP))):
        veth = netns.veth(m1, far)
        m1.ip("addr", "add", f"{near_address}/24", "dev", veth.a_name)
        far.ip("addr", "add", f"{far_address}/24", "dev", veth.b_name)
        far.ip("addr", "add", f"{SERVICE}/32", "dev", "lo")
    routers = {}

    def start(name: str, ns) -> None:
        config = m1_config() if name == "m1" else far_config(name)
        process, control = start_router(ns, config, tmp_path, name)
        wait_for(control, process)
        routers[name] = (process, control)

    for name, ns in (("b1", b1), ("b2", b2), ("m1", m1)):
        start(name, ns)
    yield {"m1": m1, "b1": b1, "b2": b2}, routers, start
    for process, _ in routers.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def ping_source(m1) -> str | None:
    """The address M1's ping to the service went out (and came back) from, or None."""
    result = m1.run("ping", "-c", "1", "-W", "1", SERVICE, check=False)
    if result.returncode != 0:
        return None
    route = json.loads(m1.ip("-j", "route", "get", SERVICE).stdout)[0]
    return route["prefsrc"]


def liveness(control) -> dict:
    return show(control)["tunnels"]["gre1"]["liveness"]


def test_traffic_moves_to_the_backup_tunnel_when_the_peer_goes_silent_and_back_after(sites):
    namespaces, routers, start = sites
    m1 = namespaces["m1"]
    _, m1_control = routers["m1"]
    wait_until(lambda: liveness(m1_control)["state"] == "up", 5, "gre1's peer to answer")
    assert ping_source(m1) == "192.168.61.1"

    b1, _ = routers["b1"]
    b1.send_signal(signal.SIGKILL)
    b1.wait(timeout=5)
    killed = time.monotonic()
    wait_until(lambda: ping_source(m1) == "192.168.62.1", 10, "traffic through ipip1")
    moved = time.monotonic() - killed
    # Silence of RETRIES intervals, seen at the next once-a-second tick: 3 intervals at most
    # (the second of slack is for the pings' own timeouts on a loaded machine).
    assert moved < (RETRIES + 1) * INTERVAL + 1.0, moved
    down = liveness(m1_control)
    assert down["state"] == "down" and down["probes_lost"] >= RETRIES
    link = json.loads(m1.ip("-j", "link", "show", "gre1").stdout)[0]
    assert "NO-CARRIER" in link["flags"]
    routes = json.loads(m1.ip("-j", "route", "show", "10.50.0.0/24").stdout)
    assert [(route["dev"], route.get("metric", 0)) for route in routes] == [("ipip1", 100)]

    start("b1", namespaces["b1"])
    wait_until(lambda: ping_source(m1) == "192.168.61.1", 10, "traffic back through gre1")
    up = liveness(m1_control)
    assert up["state"] == "up" and up["transitions"] == 2
    link = json.loads(m1.ip("-j", "link", "show", "gre1").stdout)[0]
    assert "NO-CARRIER" not in link["flags"]
    for process, _ in routers.values():
        assert process.poll() is None


CISCO_KEEPALIVE = """
import socket, sys
from scapy.layers.inet import IP
from scapy.layers.l2 import GRE
keepalive = bytes(IP(src=sys.argv[2], dst=sys.argv[1], proto=47, ttl=255) / GRE(proto=0, key_present=1, key=9))
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
sock.settimeout(3)
sock.sendto(bytes(GRE(proto=0x0800, key_present=1, key=9) / keepalive), (sys.argv[2], 0))
while True:
    data, _ = sock.recvfrom(2048)
    if data[20:] == keepalive[20:] and data[12:16] == socket.inet_aton(sys.argv[2]):
        print("reflected")
        break
"""


def test_a_cisco_keepalive_sent_to_tunnelrouter_comes_back(sites):
    namespaces, routers, _ = sites
    routers["b1"][0].terminate()          # its raw socket would see the reflection too
    routers["b1"][0].wait(timeout=5)
    result = namespaces["b1"].python(CISCO_KEEPALIVE, B1_GRE, M1_GRE, timeout=10)
    assert result.stdout.strip() == "reflected"
    counters = show(routers["m1"][1])["tunnels"]["gre1"]["counters"]
    assert counters["peer_keepalives_answered"] >= 1 and not counters["drops"]
