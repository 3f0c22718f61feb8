"""Port forwards through a real tunnel: hostA reaches services on hostB across a GRE tunnel
between two tunnelrouters, by M1's forwards.

::

    hostA ------------ M1 ===== gre1 over the WAN ===== M2 ------------ hostB
    10.1.1.1, .2       10.1.1.254                       10.2.1.254      10.2.1.10
    fd01:1::1          fd01:1::fe                       fd02:1::fe      fd02:1::10
                       forwards listen here                             backends (forward_peers.py,
                                                                        HAProxy with accept-proxy)

M1 routes 10.2.0.0/16 (and fd02::/16) into gre1; M2 drops 10.2.9.0/24 into a black hole
without a word, the backend that never answers. One topology serves the module: every
forward has its own port, and each test reads its own forward's counters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netns.conftest import PYTHON, NetnsFactory
from tests.netns.routers import VENV_BIN, WAN, join_wan, show, start_router, wait_for, \
    wait_for_text, wait_until, without_dad

pytestmark = [pytest.mark.netns, pytest.mark.needs_binary("haproxy")]

PEERS = str(Path(__file__).resolve().parent / "forward_peers.py")
M1_LAN, M1_LAN6 = "10.1.1.254", "fd01:1::fe"
HOSTA, HOSTA_OTHER, HOSTA6 = "10.1.1.1", "10.1.1.2", "fd01:1::1"
HOSTB, HOSTB6 = "10.2.1.10", "fd02:1::10"
SERVICE, ECHO, HAPROXY = 7000, 7001, 8001   # on hostB (forward_peers.py serve 7000)
BLACK_HOLE = "10.2.9.9"
GRE_MTU = 1500 - 28   # gre1's MTU: GRE with a key over IPv4


def forwards() -> dict:
    backend, echo = f"{HOSTB}:{SERVICE}", f"{HOSTB}:{ECHO}"
    return {
        "web": {"listen": f"{M1_LAN}:8080", "to": backend},
        "web6": {"listen": f"[{M1_LAN6}]:8080", "to": f"[{HOSTB6}]:{SERVICE}"},
        "dns": {"listen": f"{M1_LAN}:5353", "protocol": "udp", "to": backend},
        "dns6": {"listen": f"[{M1_LAN6}]:5353", "protocol": "udp", "to": f"[{HOSTB6}]:{SERVICE}",
                 "idle-timeout": "1s"},
        "guarded": {"listen": f"{M1_LAN}:8081", "to": echo, "deny": [f"{HOSTA_OTHER}/32"]},
        "limited": {"listen": f"{M1_LAN}:8082", "to": echo, "max-connections": 2},
        "rated": {"listen": f"{M1_LAN}:8083", "to": echo, "rate": "2/h"},
        "nowhere": {"listen": f"{M1_LAN}:8084", "to": f"{BLACK_HOLE}:80",
                    "connect-timeout": "1s"},
        "idle": {"listen": f"{M1_LAN}:8085", "to": echo, "idle-timeout": "1s"},
        "proxy1": {"listen": f"{M1_LAN}:8086", "to": f"{HOSTB}:{HAPROXY}", "proxy-protocol": "v1"},
        "proxy2": {"listen": f"{M1_LAN}:8087", "to": f"{HOSTB}:{HAPROXY}", "proxy-protocol": "v2"},
        "proxy2-6": {"listen": f"[{M1_LAN6}]:8087", "to": f"[{HOSTB6}]:{HAPROXY}",
                     "proxy-protocol": "v2"},
    }


def router_config(side: int) -> dict:
    far = 3 - side
    me, peer = (("m1", "m2") if side == 1 else ("m2", "m1"))
    config = {"tunnels": {"gre1": {
        "mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 42,
        "addresses": [f"192.168.101.{side}/24", f"fd00:101::{side}/64"],
        "routes": [f"10.{far}.0.0/16", f"fd0{far}::/16"]}}}
    if side == 1:
        config["forwards"] = forwards()
    return config


# HAProxy decodes the PROXY header (v1 or v2, it tells them apart) and says what it read.
HAPROXY_CONFIG = f"""global
  maxconn 100
defaults
  mode http
  timeout client 10s
  timeout server 10s
  timeout connect 5s
frontend proxied
  bind {HOSTB}:{HAPROXY} accept-proxy
  bind [{HOSTB6}]:{HAPROXY} accept-proxy
  http-request return status 200 content-type text/plain lf-string "%[src] %[src_port] %[dst] %[dst_port]"
"""


class Site:
    def __init__(self, factory: NetnsFactory, directory: Path):
        self.factory = factory
        self.hosta, self.m1, self.m2, self.hostb = (factory(label) for label in
                                                    ("fa", "fm1", "fm2", "fb"))
        for ns in (self.hosta, self.m1, self.m2, self.hostb):
            without_dad(ns)
        for ns in (self.m1, self.m2):
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.ipv6.conf.all.forwarding", 1)
        join_wan(factory, self.m1, self.m2)
        factory.veth(self.hosta, self.m1, "eth0", "lan")
        factory.veth(self.m2, self.hostb, "lan", "eth0")
        for ns, addresses in ((self.hosta, [f"{HOSTA}/24", f"{HOSTA_OTHER}/24", f"{HOSTA6}/64"]),
                              (self.m1, [f"{M1_LAN}/24", f"{M1_LAN6}/64"]),
                              (self.m2, ["10.2.1.254/24", "fd02:1::fe/64"]),
                              (self.hostb, [f"{HOSTB}/24", f"{HOSTB6}/64"])):
            device = "lan" if ns in (self.m1, self.m2) else "eth0"
            for address in addresses:
                ns.ip("addr", "add", address, "dev", device, *(["nodad"] if ":" in address else []))
        self.hosta.ip("route", "add", "default", "via", M1_LAN)
        self.hosta.ip("-6", "route", "add", "default", "via", M1_LAN6)
        # hostB's way back crosses the tunnel: its route says so, or the first UDP reply
        # too large for the tunnel would be dropped at M2 (told by ICMP), as for any sender.
        self.hostb.ip("route", "add", "default", "via", "10.2.1.254", "mtu", str(GRE_MTU))
        self.hostb.ip("-6", "route", "add", "default", "via", "fd02:1::fe", "mtu", str(GRE_MTU))
        self.m2.ip("route", "add", "blackhole", "10.2.9.0/24")
        backend = self.hostb.popen(PYTHON, PEERS, "serve", str(SERVICE))
        wait_for_text(backend.stdout, "serving", 10)
        haproxy = directory / "haproxy.cfg"
        haproxy.write_text(HAPROXY_CONFIG)
        self.hostb.popen("haproxy", "-db", "-f", str(haproxy))
        self.routers = {}
        for side, ns in ((1, self.m1), (2, self.m2)):
            self.routers[side] = start_router(ns, router_config(side), directory, f"m{side}")
        for process, control in self.routers.values():
            wait_for(control, process)
        wait_until(lambda: all(forward["state"] == "listening" for forward in
                               self.forwards().values()), 10, "the forwards to listen")
        wait_until(lambda: f":{HAPROXY} " in self.hostb.run("ss", "-Hltn").stdout, 10,
                   "HAProxy to listen")

    def forwards(self) -> dict:
        return show(self.routers[1][1])["forwards"]

    def forward(self, name: str) -> dict:
        return self.forwards()[name]

    def client(self, *args: str, timeout: float = 30) -> object:
        result = self.hosta.run(PYTHON, PEERS, *args, timeout=timeout)
        return json.loads(result.stdout)

    def tcp(self, host: str, port: int, *options: str) -> list:
        return self.client("tcp", host, str(port), *options)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    factory = NetnsFactory()
    try:
        yield Site(factory, tmp_path_factory.mktemp("forwards"))
    finally:
        factory.cleanup()


@pytest.mark.parametrize("host, name", [(M1_LAN, "web"), (M1_LAN6, "web6")])
def test_a_tcp_forward_reaches_the_far_site_and_passes_a_half_close(site, host, name):
    # The backend answers only once it has read the client's FIN: the forward must pass
    # the FIN on (shutdown) and go on carrying the answer the other way.
    [[outcome]] = site.tcp(host, 8080, "--send", "3000", "--shutdown")
    assert outcome == {"received": 3_000_000, "ended": "eof"}
    def counted():
        forward = site.forward(name)
        return forward["connections_open"] == 0 and forward["bytes_to_client"] >= 3_000_000
    wait_until(counted, 5, f"{name}'s counters")
    forward = site.forward(name)
    assert forward["bytes_to_backend"] >= 3000 and not any(forward["refused"].values())
    tunnel = show(site.routers[1][1])["tunnels"]["gre1"]["counters"]
    assert tunnel["tx_packets"] > 0 and tunnel["rx_packets"] > 0   # through the tunnel


@pytest.mark.parametrize("host, name", [(M1_LAN, "dns"), (M1_LAN6, "dns6")])
def test_a_udp_forward_relays_datagrams_of_every_size_whole(site, host, name):
    sizes = [1, 512, 1472, 9000, 65507] if name == "dns" else [1, 512, 1452, 9000, 65527]
    assert site.client("udp", host, "5353", *map(str, sizes)) == sizes
    wait_until(lambda: site.forward(name)["datagrams_to_client"] >= len(sizes), 5,
               f"{name}'s counters")
    assert site.forward(name)["sessions_total"] >= 1


def test_a_udp_session_ends_after_its_idle_timeout(site):
    assert site.client("udp", M1_LAN6, "5353", "10") == [10]
    wait_until(lambda: site.forward("dns6")["sessions_open"] == 0
               and site.forward("dns6")["ended"]["idle_timeout"] >= 1, 10,
               "the session to end when idle")


def test_a_denied_source_is_reset_and_counted_and_the_others_pass(site):
    [[allowed]] = site.tcp(M1_LAN, 8081, "--source", HOSTA)
    [[denied]] = site.tcp(M1_LAN, 8081, "--source", HOSTA_OTHER)
    assert allowed == {"received": 1, "ended": "echoed"}
    assert denied == {"received": 0, "ended": "reset"}
    wait_until(lambda: site.forward("guarded")["refused"]["denied"] == 1, 5, "the count")


def test_connections_past_max_connections_are_reset_and_counted(site):
    [outcomes] = site.tcp(M1_LAN, 8082, "--parallel", "3")
    assert sorted(outcome["ended"] for outcome in outcomes) == ["echoed", "echoed", "reset"]
    wait_until(lambda: site.forward("limited")["refused"]["max_connections"] == 1, 5, "the count")


def test_connections_past_the_rate_are_reset_and_counted(site):
    outcomes = [outcome for [outcome] in site.tcp(M1_LAN, 8083, "--count", "3")]
    assert [outcome["ended"] for outcome in outcomes] == ["echoed", "echoed", "reset"]
    wait_until(lambda: site.forward("rated")["refused"]["rate"] == 1, 5, "the count")


def test_a_black_holed_backend_times_out_the_client_is_reset_and_it_is_counted(site):
    [[outcome]] = site.tcp(M1_LAN, 8084)
    assert outcome == {"received": 0, "ended": "reset"}
    wait_until(lambda: site.forward("nowhere")["refused"]["connect_timeout"] == 1, 5, "the count")
    assert site.forward("nowhere")["connections_open"] == 0


def test_an_idle_connection_is_closed_and_counted(site):
    # Echoed, then nothing either way: the forward closes it, and the client reads EOF.
    [[outcome]] = site.tcp(M1_LAN, 8085, "--send", "0")
    assert outcome == {"received": 0, "ended": "eof"}
    wait_until(lambda: site.forward("idle")["ended"]["idle_timeout"] == 1, 5, "the count")


@pytest.mark.parametrize("name, host, port, client, listen", [
    ("proxy1", M1_LAN, 8086, HOSTA, M1_LAN),
    ("proxy2", M1_LAN, 8087, HOSTA, M1_LAN),
    ("proxy2-6", M1_LAN6, 8087, HOSTA6, M1_LAN6),
])
def test_haproxy_reads_the_client_address_from_the_proxy_header(site, name, host, port,
                                                                client, listen):
    source, source_port, destination, destination_port = \
        site.client("http", host, str(port)).split()
    assert (source, destination, destination_port) == (client, listen, str(port))
    assert 1024 <= int(source_port) <= 65535
    wait_until(lambda: site.forward(name)["connections_total"] >= 1, 5, "the count")


def test_show_prints_the_forwards_beside_the_tunnel(site):
    _, control = site.routers[1]
    text = site.m1.run(str(VENV_BIN / "tunnelrouter"), "show", "--socket", str(control)).stdout
    assert "tunnel: gre1" in text
    assert f"forward: web\n  tcp {M1_LAN}:8080 -> {HOSTB}:{SERVICE} (listening)" in text
    assert f"forward: dns\n  udp {M1_LAN}:5353 -> {HOSTB}:{SERVICE} (listening)" in text
