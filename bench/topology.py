"""The benchmark's namespace lab: the netns lab's topology (netns-lab/README.md), one
address "slot" per row so that every row's tunnel is up at the same time, and the wires.

::

   hosta         m1              wan1               wan2              m2          hostb
   eth0 ------- lan  wan ------- to-m1  mid ====== mid  to-m2 ------- wan  lan ------- eth0
                tunnel end       plain kernel routers (IPv4 only)     tunnel end

Slot ``k`` (one per row) owns::

   hostA 10.1.k.1/24, fd01:k::1/64     M1 lan 10.1.k.254, fd01:k::fe    M1 wan 10.99.1.k/24
   hostB 10.2.k.1/24, fd02:k::1/64     M2 lan 10.2.k.254, fd02:k::fe    M2 wan 10.99.2.k/24
   tunnel addresses 192.168.k.1 (M1) and .2 (M2) /30, fd00:k::1 and ::2 /64

so each row has its own underlay addresses (tunnels of the same protocol or port never
share a socket) and its own inner prefixes. The hosts route the far prefix with the
tunnel's MTU (``ip route ... mtu``), so TCP starts with the right segment size on every
row instead of waiting for path-MTU discovery.

The WAN veths (both ends of m1-wan1, wan1-wan2, wan2-m2) are what :data:`WIRES` set:

* ``veth``: as veth comes, TSO/GSO on: 64 KB super-packets cross the WAN end to end;
* ``nic``: TSO, GSO and tx-udp-segmentation off, GRO on: only MTU-sized packets cross,
  and the receiver coalesces, as a real NIC without tunnel offloads does (the headline);
* ``bare``: the same with GRO off too: every packet is handled one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.lab import Lab, Namespace

WAN_DEVICES = (("m1", "wan"), ("wan1", "to-m1"), ("wan1", "mid"),
               ("wan2", "mid"), ("wan2", "to-m2"), ("m2", "wan"))
OFFLOADS = ("tso", "gso", "tx-udp-segmentation", "gro")
WIRES = {
    "veth": None,  # the features veth was created with
    "nic": {"tso": "off", "gso": "off", "tx-udp-segmentation": "off", "gro": "on"},
    "bare": {"tso": "off", "gso": "off", "tx-udp-segmentation": "off", "gro": "off"},
}
WIRE_TITLES = {
    "veth": "veth with its offloads (64 KB super-packets on the WAN)",
    "nic": "NIC-like wire (TSO/GSO/USO off on the WAN veths, GRO on)",
    "bare": "bare wire (TSO/GSO/USO and GRO off on the WAN veths)",
}
WAN_GATEWAY = {"m1": "10.99.1.254", "m2": "10.99.2.254"}
MIDDLE = {"wan1": "10.99.12.1", "wan2": "10.99.12.2"}


@dataclass(frozen=True)
class Slot:
    """The addresses of row number ``k`` (1 to 200; .253 and .254 are taken)."""
    k: int
    family: int = 4

    def host(self, side: int) -> str:
        return f"10.{side}.{self.k}.1" if self.family == 4 else f"fd0{side}:{self.k:x}::1"

    def lan_gateway(self, side: int) -> str:
        return f"10.{side}.{self.k}.254" if self.family == 4 else f"fd0{side}:{self.k:x}::fe"

    def prefix(self, side: int) -> str:
        return f"10.{side}.{self.k}.0/24" if self.family == 4 else f"fd0{side}:{self.k:x}::/64"

    def wan(self, side: int) -> str:
        return f"10.99.{side}.{self.k}"

    def tunnel(self, side: int, family: int = 4) -> str:
        """This side's tunnel (inner link) address, without a prefix length."""
        return f"192.168.{self.k}.{side}" if family == 4 else f"fd00:{self.k:x}::{side}"

    @property
    def src(self) -> str:
        return self.host(1)

    @property
    def dst(self) -> str:
        return self.host(2)


class Topology:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.ns: dict[str, Namespace] = {}
        self.anchors: dict[str, int] = {}
        self.default_offloads: dict[tuple[str, str], dict[str, str]] = {}
        self.wire: str | None = None
        self._build()

    def __getitem__(self, name: str) -> Namespace:
        return self.ns[name]

    def _build(self) -> None:
        for name in ("hosta", "m1", "wan1", "wan2", "m2", "hostb"):
            ns = self.ns[name] = self.lab.namespace(name)
            ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
            ns.sysctl("net.ipv6.conf.default.accept_dad", 0)
            ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
            ns.sysctl("net.ipv4.conf.default.rp_filter", 0)
            # A process that lives as long as the namespace: /proc/<it>/net/snmp is the
            # namespace's IP counters, read without starting anything.
            self.anchors[name] = self.ns[name].popen("sleep", "infinity").pid
        for name in ("m1", "wan1", "wan2", "m2"):
            self.ns[name].sysctl("net.ipv4.ip_forward", 1)
        for name in ("m1", "m2"):
            self.ns[name].sysctl("net.ipv6.conf.all.forwarding", 1)
        ns, veth = self.ns, self.lab.veth
        veth(ns["hosta"], "eth0", ns["m1"], "lan")
        veth(ns["m1"], "wan", ns["wan1"], "to-m1")
        veth(ns["wan1"], "mid", ns["wan2"], "mid")
        veth(ns["wan2"], "to-m2", ns["m2"], "wan")
        veth(ns["m2"], "lan", ns["hostb"], "eth0")
        # The WAN is IPv4 only, as in the netns lab.
        for name, dev in WAN_DEVICES:
            ns[name].sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", 1)
        ns["wan1"].ip("addr", "add", "10.99.1.254/24", "dev", "to-m1")
        ns["wan1"].ip("addr", "add", "10.99.12.1/24", "dev", "mid")
        ns["wan2"].ip("addr", "add", "10.99.12.2/24", "dev", "mid")
        ns["wan2"].ip("addr", "add", "10.99.2.254/24", "dev", "to-m2")
        for name, devs in (("hosta", ["eth0"]), ("m1", ["lan", "wan"]), ("wan1", ["to-m1", "mid"]),
                           ("wan2", ["mid", "to-m2"]), ("m2", ["wan", "lan"]), ("hostb", ["eth0"])):
            for dev in devs:
                ns[name].ip("link", "set", dev, "up")
        # M1 and M2 get a primary WAN address of their own (.253); each slot adds its own.
        ns["m1"].ip("addr", "add", "10.99.1.253/24", "dev", "wan")
        ns["m2"].ip("addr", "add", "10.99.2.253/24", "dev", "wan")
        ns["m1"].ip("route", "add", "10.99.2.0/24", "via", WAN_GATEWAY["m1"])
        ns["m2"].ip("route", "add", "10.99.1.0/24", "via", WAN_GATEWAY["m2"])
        ns["wan1"].ip("route", "add", "10.99.2.0/24", "via", MIDDLE["wan2"])
        ns["wan2"].ip("route", "add", "10.99.1.0/24", "via", MIDDLE["wan1"])
        for name, dev in WAN_DEVICES:
            self.default_offloads[name, dev] = self._offloads(name, dev)

    # -- wires --------------------------------------------------------------------------

    def _offloads(self, name: str, dev: str) -> dict[str, str]:
        text = self.ns[name].run("ethtool", "-k", dev).stdout
        return parse_offloads(text)

    def set_wire(self, wire: str) -> None:
        if wire == self.wire:
            return
        for name, dev in WAN_DEVICES:
            wanted = WIRES[wire] or self.default_offloads[name, dev]
            args = [word for key in OFFLOADS for word in (key, wanted[key])]
            self.ns[name].run("ethtool", "-K", dev, *args)
        self.wire = wire

    def wire_state(self) -> dict[str, str]:
        """What m1's wan device says its offloads are now (for the results)."""
        return self._offloads("m1", "wan")

    # -- slots ---------------------------------------------------------------------------

    def add_slot(self, slot: Slot) -> None:
        """The LAN addresses of ``slot`` on both sides and its WAN addresses on M1 and M2."""
        ns = self.ns
        length = 24 if slot.family == 4 else 64
        flags = [] if slot.family == 4 else ["nodad"]
        for side, host, router in ((1, "hosta", "m1"), (2, "hostb", "m2")):
            ns[host].ip("addr", "add", f"{slot.host(side)}/{length}", "dev", "eth0", *flags)
            ns[router].ip("addr", "add", f"{slot.lan_gateway(side)}/{length}", "dev", "lan", *flags)
            ns[router].ip("addr", "add", f"{slot.wan(side)}/24", "dev", "wan")

    def route_hosts(self, slot: Slot, mtu: int) -> None:
        """hostA reaches hostB's prefix of ``slot`` through M1 with the tunnel's MTU, and back,
        from the slot's own address: a host has one per slot, and an answer from another
        (an unconnected UDP server's, as iperf3's) is not the one its client waits for."""
        for side, host in ((1, "hosta"), (2, "hostb")):
            far = 3 - side
            args = ["route", "replace", slot.prefix(far), "via", slot.lan_gateway(side),
                    "src", slot.host(side)]
            self.ns[host].ip(*(["-6"] if slot.family == 6 else []), *args, "mtu", str(mtu))

    def route_plain(self, slot: Slot) -> None:
        """No tunnel: the WAN routers route the hosts' prefixes themselves."""
        ns = self.ns
        for side, router, near_wan, far_wan in ((1, "m1", "wan1", "wan2"), (2, "m2", "wan2", "wan1")):
            far = 3 - side
            ns[router].ip("route", "add", slot.prefix(far), "via", WAN_GATEWAY[router])
            ns[near_wan].ip("route", "add", slot.prefix(side), "via", slot.wan(side))
            ns[far_wan].ip("route", "add", slot.prefix(side), "via", MIDDLE[near_wan])

    def device_mtu(self, name: str, dev: str) -> int:
        return int(self.ns[name].run("cat", f"/sys/class/net/{dev}/mtu").stdout)

    def snmp(self, name: str) -> dict[str, int]:
        """The IPv4 counters (``Ip:`` lines of /proc/net/snmp) of namespace ``name``."""
        return parse_snmp_ip(Path(f"/proc/{self.anchors[name]}/net/snmp").read_text())


def parse_offloads(text: str) -> dict[str, str]:
    """``ethtool -k`` output to {short name: on|off} for :data:`OFFLOADS`."""
    names = {"tcp-segmentation-offload": "tso", "generic-segmentation-offload": "gso",
             "tx-udp-segmentation": "tx-udp-segmentation", "generic-receive-offload": "gro"}
    found = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key in names:
            found[names[key]] = value.split()[0] if value.split() else ""
    return found


def parse_snmp_ip(text: str) -> dict[str, int]:
    """The ``Ip:`` header and value lines of /proc/net/snmp as a dict."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Ip:")]
    header, values = lines[0][1:], lines[1][1:]
    return {key: int(value) for key, value in zip(header, values)}
