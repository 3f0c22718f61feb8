"""Two tunnelrouters across a WAN whose middle link is narrower than the routers' own links.

::

    hostA ----- M1 ------ R1 ===== middle ===== R2 ------ M2 ----- hostB
      eth0   lan  wan   to-m1  mid          mid  to-m2  wan  lan   eth0
             tunnelrouter     plain kernel routers      tunnelrouter

M1's and M2's WAN links are 1500 bytes: the small MTU is only on the middle link, so
the routers can learn it only from the ICMP fragmentation-needed that R1 (or R2) sends
back, never from an interface of their own. The WAN addresses are the netns lab's
(netns-lab/README.md)::

    M1 wan 10.99.1.1/24 - R1 10.99.1.254 | R1 10.99.12.1/24 = R2 10.99.12.2 | R2 10.99.2.254 - M2 10.99.2.1

Each tunnel carries its own prefixes between the hosts (side s = 1 for hostA/M1, 2 for
hostB/M2; host .1, router .254 or ::fe), so each mode is tested on its own::

    tunnel  mode                         hostA <-> hostB            tunnel addresses
    gre1    gre, key 42                  10.s.1.0/24, fd0s:1::/64   192.168.101.s, fd00:101::s
    vx1     vxlan, VNI 4242 (TAP)        10.s.2.0/24                192.168.102.s
    ipip1   ipip                         10.s.3.0/24                192.168.103.s
    six1    sit (6in4)                   fd0s:4::/64                fd00:104::s
    tap1    gretap, no key (TAP)         10.s.5.0/24                192.168.105.s
    greoff  gre, key 43, mss-clamp off   10.s.6.0/24                192.168.106.s

Every prefix is the config's ``routes:`` (so the router gives them the learnt path MTU as
a route ``mtu``); the TAP modes' name the far router's tunnel address as gateway (``via``).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns.conftest import Namespace, NetnsFactory
from tests.netns.routers import show, start_router, wait_for, wait_for_text, wait_until, without_dad

FULL_MTU = 1500
IPV6_MINIMUM_MTU = 1280
PMTU_TIMEOUT = 5  # seconds: the configured pmtu-timeout, the minimum the router accepts
WAN = {1: "10.99.1.1", 2: "10.99.2.1"}  # M1, M2
WAN_GATEWAY = {1: "10.99.1.254", 2: "10.99.2.254"}  # R1, R2
MIDDLE = {1: "10.99.12.1", 2: "10.99.12.2"}  # R1, R2

# Encapsulation overhead per tunnel over an IPv4 underlay (the README's table): the
# device MTU is FULL_MTU minus it, the largest inner packet a path of P bytes takes P minus it.
OVERHEAD = {"gre1": 24 + 4, "greoff": 24 + 4, "tap1": 38, "vx1": 50, "ipip1": 20, "six1": 20}


@dataclass(frozen=True)
class Flow:
    """hostA's ``src`` to hostB's ``dst`` through ``tunnel`` (and back)."""
    tunnel: str
    family: int
    src: str
    dst: str

    @property
    def id(self) -> str:
        return f"{self.tunnel}-ipv{self.family}"

    @property
    def device_mtu(self) -> int:
        return FULL_MTU - OVERHEAD[self.tunnel]

    @property
    def headers(self) -> int:
        """IP + ICMP header bytes in a ping: ``ping -s`` takes the packet size minus this."""
        return 28 if self.family == 4 else 48

    def told_mtu(self, path_mtu: int) -> int:
        """The MTU an inner sender must be told when the outer path takes ``path_mtu``:
        IPv6 is never told less than 1280 (RFC 8200 §5)."""
        inner = min(path_mtu, FULL_MTU) - OVERHEAD[self.tunnel]
        return max(inner, IPV6_MINIMUM_MTU) if self.family == 6 else inner


FLOWS = {flow.id: flow for flow in (
    Flow("gre1", 4, "10.1.1.1", "10.2.1.1"),
    Flow("gre1", 6, "fd01:1::1", "fd02:1::1"),
    Flow("tap1", 4, "10.1.5.1", "10.2.5.1"),
    Flow("vx1", 4, "10.1.2.1", "10.2.2.1"),
    Flow("ipip1", 4, "10.1.3.1", "10.2.3.1"),
    Flow("six1", 6, "fd01:4::1", "fd02:4::1"),
    Flow("greoff", 4, "10.1.6.1", "10.2.6.1"),
)}


def router_config(side: int) -> dict:
    """M1's (side 1) or M2's (side 2) tunnelrouter: every mode, path-MTU discovery on."""
    far = 3 - side
    pmtu = {"pmtu-discovery": True, "pmtu-timeout": PMTU_TIMEOUT}
    common = {"local": WAN[side], "remote": WAN[far]} | pmtu
    return {"tunnels": {
        "gre1": common | {"mode": "gre", "key": 42,
                          "addresses": [f"192.168.101.{side}/24", f"fd00:101::{side}/64"],
                          "routes": [f"10.{far}.1.0/24", f"fd0{far}:1::/64"]},
        "vx1": {"mode": "vxlan", "local": WAN[side], "remotes": [WAN[far]], "id": 4242,
                "addresses": [f"192.168.102.{side}/24"],
                "routes": [{"to": f"10.{far}.2.0/24", "via": f"192.168.102.{far}"}]} | pmtu,
        "ipip1": common | {"mode": "ipip", "addresses": [f"192.168.103.{side}/24"],
                           "routes": [f"10.{far}.3.0/24"]},
        "six1": common | {"mode": "sit", "addresses": [f"fd00:104::{side}/64"],
                          "routes": [f"fd0{far}:4::/64"]},
        "tap1": common | {"mode": "gretap", "addresses": [f"192.168.105.{side}/24"],
                          "routes": [{"to": f"10.{far}.5.0/24", "via": f"192.168.105.{far}"}]},
        # The MSS test's tunnel: nftables clamps what goes into it, not the router.
        "greoff": common | {"mode": "gre", "key": 43, "mss-clamp": "off",
                            "addresses": [f"192.168.106.{side}/24"],
                            "routes": [f"10.{far}.6.0/24"]},
    }}


@dataclass
class Router:
    ns: Namespace
    process: object
    control: Path

    def show(self) -> dict:
        return show(self.control)

    def tunnel(self, name: str) -> dict:
        return self.show()["tunnels"][name]

    def busy(self, seconds: float = 1.0) -> float:
        """The share of one CPU the router uses over the next ``seconds`` with no traffic."""
        def cpu() -> float:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime
        before = cpu()
        time.sleep(seconds)
        return (cpu() - before) / seconds


@dataclass
class PmtuLab:
    """The running topology: namespaces by role, both routers, the middle link's MTU."""
    hosta: Namespace
    m1: Namespace
    r1: Namespace
    r2: Namespace
    m2: Namespace
    hostb: Namespace
    routers: dict[int, Router] = field(default_factory=dict)
    middle_mtu: int = FULL_MTU

    def set_middle_mtu(self, mtu: int) -> None:
        """Both ends of the middle link: what `lab.sh mtu N` does in the lab."""
        for ns in (self.r1, self.r2):
            ns.ip("link", "set", "mid", "mtu", str(mtu))
        self.middle_mtu = mtu

    def path_mtus(self, side: int, tunnel: str) -> dict:
        """What ``show`` says the router of ``side`` (1: M1, 2: M2) learnt on ``tunnel``."""
        return self.routers[side].tunnel(tunnel)["path_mtu"]

    def learnt(self, side: int, tunnel: str) -> int | None:
        """The outer path MTU the router of ``side`` has learnt towards its peer, if any."""
        entry = self.path_mtus(side, tunnel).get(WAN[3 - side])
        return entry["mtu"] if entry else None

    def wait_forgotten(self, tunnels=None) -> None:
        """Until neither router lists a learnt path MTU for ``tunnels`` (default all)."""
        def clear() -> bool:
            for router in self.routers.values():
                status = router.show()["tunnels"]
                if any(status[name]["path_mtu"] for name in tunnels or status):
                    return False
            return True
        wait_until(clear, PMTU_TIMEOUT + 3, "learnt path MTUs to be forgotten")

    def settle(self, tunnel: str, within: float = 3.0) -> None:
        """Make the next ``within`` seconds predictable although pmtu-timeout is short: wait
        until neither router has a learnt path MTU for ``tunnel`` that expires sooner."""
        def settled() -> bool:
            return all(entry["expires_in"] >= within
                       for router in self.routers.values()
                       for entry in router.tunnel(tunnel)["path_mtu"].values())
        # An entry goes at the router's next housekeeping (every second) after it expires.
        wait_until(settled, within + 3, f"{tunnel}'s learnt path MTUs to expire")

    def route_mtu(self, side: int, flow: Flow) -> int | None:
        """The ``mtu`` of the route into the flow's tunnel on M1 (side 1) or M2 (side 2)."""
        prefix = flow.dst if side == 1 else flow.src
        route = self.routers[side].ns.ip(f"-{flow.family}", "route", "show", "match", prefix,
                                         "dev", flow.tunnel).stdout
        found = re.search(r" mtu (\d+)", route)
        return int(found.group(1)) if found else None

    def flush_host_caches(self) -> None:
        """Forget what the hosts learnt (PMTU exceptions), so the next packets start afresh."""
        for ns in (self.hosta, self.hostb):
            ns.ip("route", "flush", "cache")
            ns.ip("-6", "route", "flush", "cache")

    def ping(self, flow: Flow, size: int, *, df: str = "do", count: int = 3,
             interval: float = 0.2, reverse: bool = False) -> tuple[int, str]:
        """``ping -M df -s size`` from hostA (``reverse``: from hostB):
        ``(replies received, output)``."""
        host, src, dst = (self.hostb, flow.dst, flow.src) if reverse else (self.hosta, flow.src, flow.dst)
        result = host.run(
            "ping", f"-{flow.family}", "-M", df, "-s", str(size), "-c", str(count),
            "-i", str(interval), "-W", "1", "-I", src, dst,
            check=False, timeout=count * interval + 5)
        output = result.stdout + result.stderr
        received = re.search(r"(\d+) received", output)
        return (int(received.group(1)) if received else 0), output

    def transfer(self, flow: Flow, *, reverse: bool = False, size: str = "10M",
                 timeout: float = 15.0, port: int = 5201) -> str:
        """An iperf3 transfer of ``size`` bytes hostA -> hostB (``reverse``: hostB -> hostA);
        returns '' if it completed within ``timeout`` seconds, else what went wrong."""
        what = f"{flow.id} {'hostB -> hostA' if reverse else 'hostA -> hostB'}"
        server = self.iperf3_server(flow, port)
        try:
            client = self.hosta.run("iperf3", "-c", flow.dst, "-B", flow.src, "-p", str(port),
                                    "-n", size, *(["-R"] if reverse else []),
                                    check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{what}: {size} did not arrive in {timeout} s (a black hole?)"
        finally:
            server.kill()
            server.wait()
        if client.returncode != 0:
            return f"{what}: iperf3 failed: {client.stdout[-500:]} {client.stderr}"
        return ""

    def iperf3_server(self, flow: Flow, port: int):
        """A one-off iperf3 server on hostB's ``flow.dst``, listening when this returns."""
        server = self.hostb.popen("iperf3", "-s", "-1", "--forceflush", "-B", flow.dst,
                                  "-p", str(port))
        wait_for_text(server.stdout, "Server listening", 5)
        return server


def build(factory: NetnsFactory, directory: Path, middle_mtu: int) -> PmtuLab:
    """The topology with the middle link at ``middle_mtu``, both routers started."""
    lab = PmtuLab(*(factory(label) for label in ("hosta", "m1", "r1", "r2", "m2", "hostb")))
    for ns in (lab.hosta, lab.m1, lab.r1, lab.r2, lab.m2, lab.hostb):
        without_dad(ns)
        ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
        ns.sysctl("net.ipv4.conf.default.rp_filter", 0)
    for ns in (lab.m1, lab.r1, lab.r2, lab.m2):
        ns.sysctl("net.ipv4.ip_forward", 1)
        ns.sysctl("net.ipv6.conf.all.forwarding", 1)
    factory.veth(lab.hosta, lab.m1, "eth0", "lan")
    factory.veth(lab.m1, lab.r1, "wan", "to-m1")
    factory.veth(lab.r1, lab.r2, "mid", "mid")
    factory.veth(lab.r2, lab.m2, "to-m2", "wan")
    factory.veth(lab.m2, lab.hostb, "lan", "eth0")
    lab.set_middle_mtu(middle_mtu)

    # The WAN: IPv4 only.
    for ns, devices in ((lab.m1, ["wan"]), (lab.r1, ["to-m1", "mid"]), (lab.r2, ["mid", "to-m2"]),
                        (lab.m2, ["wan"])):
        for device in devices:
            ns.sysctl(f"net.ipv6.conf.{device}.disable_ipv6", 1)
    lab.m1.ip("addr", "add", f"{WAN[1]}/24", "dev", "wan")
    lab.r1.ip("addr", "add", f"{WAN_GATEWAY[1]}/24", "dev", "to-m1")
    lab.r1.ip("addr", "add", f"{MIDDLE[1]}/24", "dev", "mid")
    lab.r2.ip("addr", "add", f"{MIDDLE[2]}/24", "dev", "mid")
    lab.r2.ip("addr", "add", f"{WAN_GATEWAY[2]}/24", "dev", "to-m2")
    lab.m2.ip("addr", "add", f"{WAN[2]}/24", "dev", "wan")
    lab.m1.ip("route", "add", "10.99.0.0/16", "via", WAN_GATEWAY[1])
    lab.m2.ip("route", "add", "10.99.0.0/16", "via", WAN_GATEWAY[2])
    lab.r1.ip("route", "add", "10.99.2.0/24", "via", MIDDLE[2])
    lab.r2.ip("route", "add", "10.99.1.0/24", "via", MIDDLE[1])

    # The LANs: hostA's source for each flow routes the far prefix via its router.
    for side, host, router in ((1, lab.hosta, lab.m1), (2, lab.hostb, lab.m2)):
        far = 3 - side
        for flow in FLOWS.values():
            if flow.family == 4:
                n = flow.src.split(".")[2]
                host.ip("addr", "add", f"10.{side}.{n}.1/24", "dev", "eth0")
                router.ip("addr", "add", f"10.{side}.{n}.254/24", "dev", "lan")
                host.ip("route", "add", f"10.{far}.{n}.0/24", "via", f"10.{side}.{n}.254",
                        "src", f"10.{side}.{n}.1")
            else:
                n = flow.src.split(":")[1]
                host.ip("addr", "add", f"fd0{side}:{n}::1/64", "dev", "eth0", "nodad")
                router.ip("addr", "add", f"fd0{side}:{n}::fe/64", "dev", "lan", "nodad")
                host.ip("-6", "route", "add", f"fd0{far}:{n}::/64", "via", f"fd0{side}:{n}::fe",
                        "src", f"fd0{side}:{n}::1")

    for side, ns in ((1, lab.m1), (2, lab.m2)):
        lab.routers[side] = Router(ns, *start_router(ns, router_config(side), directory, f"m{side}"))
    for router in lab.routers.values():
        wait_for(router.control, router.process)
    return lab
