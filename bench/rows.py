"""The rows: one way each of carrying hostA's traffic to hostB, set up in its own slot.

Every row is started once and stays up for the whole run, so rows can be interleaved
without paying a start-up per measurement. A row knows the tunnel device it made on M1
(its MTU is what the hosts' routes get), the processes that are the tunnel (whose CPU
and memory are measured) and how to start them. The userspace tunnels are tuned as a
user who cares about speed would, and carry no cryptography:

* OpenVPN 2.6 point-to-point, no TLS, ``--cipher none --auth none``, data channel
  offload off (userspace), 4 MiB socket buffers, ``--fast-io``, ``--txqueuelen 1000``;
* tinc 1.0 router mode, ``Cipher = none``, ``Digest = none``, ``MACLength = 0``,
  ``Compression = 0``;
* fastd, TUN mode, method ``null``;
* socat, ``TUN`` <-> ``UDP``.

Each one's device MTU is set so that its datagram fills the 1500-byte WAN and no more
(:data:`UDP_OVERHEAD`); the harness checks that the WAN saw no fragment.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.lab import run
from bench.topology import Slot, Topology

WAN_MTU = 1500
# Bytes each userspace tunnel adds to an inner packet over IPv4 (20) + UDP (8); the MTU of
# each device is WAN_MTU minus it. Checked in this lab: at these MTUs no outer packet is
# fragmented, and with one byte more OpenVPN's, fastd's and socat's are (M1 FragCreates);
# tinc never fragments outer packets (what exceeds the path MTU it discovers for itself
# it does not send as one datagram), and a capture shows its largest datagrams at 1500.
UDP_OVERHEAD = {
    "openvpn": 28 + 0,   # no TLS, no crypto, no compression framing: the bare packet
    "tinc": 28 + 4 + 14,  # tinc 1.0: 4-byte sequence number, the packet with its Ethernet header
    "fastd": 28 + 1,     # fastd: a 1-byte packet type, method null adds nothing
    "socat": 28,         # the bare packet
}
VXLAN_KERNEL_PORT = 8472  # Linux's historical VXLAN port: 4789 stays free for tunnelrouter


@dataclass
class Row:
    """A row of the table. ``id`` names it on the command line (``ROWS=``)."""
    id: str
    title: str
    family: int = 4
    slot: Slot | None = None
    device: str = ""          # the tunnel's device on M1 ("wan" for plain routing)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # "m1"/"m2" -> process
    command: str = ""         # what ran, for the results
    mtu: int = 0              # the device's MTU, once started
    failed: str = ""          # why it did not start, if it did not

    def start(self, topo: Topology, workdir: Path) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        return {side: process.pid for side, process in self.processes.items()}

    def check_running(self) -> None:
        for side, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{self.id}: the {side} process exited ({process.returncode})")


class Plain(Row):
    def start(self, topo: Topology, workdir: Path) -> None:
        topo.route_plain(self.slot)
        self.device = "wan"
        self.command = "kernel routing through wan1 and wan2"


# Remote checksum offload as Linux's VXLAN takes it: it needs the outer UDP checksum.
KERNEL_REMOTE_CHECKSUM = ("udpcsum", "remcsumtx", "remcsumrx")


@dataclass
class KernelVxlan(Row):
    options: tuple[str, ...] = ()
    # Linux shares one socket per port among its VXLAN devices only if their flags agree
    # (udpcsum, remote checksum offload): another kind takes the next port.
    port: int = VXLAN_KERNEL_PORT

    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = f"vxk{slot.k}"
        for side, router in ((1, "m1"), (2, "m2")):
            ns = topo[router]
            ns.ip("link", "add", self.device, "type", "vxlan", "id", str(100 + slot.k),
                  "local", slot.wan(side), "remote", slot.wan(3 - side),
                  "dstport", str(self.port), "dev", "wan", *self.options)
            ns.ip("addr", "add", f"{slot.tunnel(side)}/30", "dev", self.device)
            ns.ip("link", "set", self.device, "up")
            ns.ip("route", "add", slot.prefix(3 - side), "via", slot.tunnel(3 - side))
        self.command = (f"ip link add {self.device} type vxlan id {100 + slot.k} local L remote R "
                        f"dstport {self.port} dev wan {' '.join(self.options)} "
                        f"(MTU 1450)").replace("  ", " ")


TR_MODES = ("gre", "ipip", "sit", "vxlan", "gretap")


@dataclass
class Tunnelrouter(Row):
    mode: str = "gre"
    binary: str = ""
    remote_checksum: bool = False   # vxlan: remote checksum offload both ways
    workers: int = 1

    def device_name(self) -> str:
        return {"gre": "gre", "ipip": "ipip", "sit": "six", "vxlan": "vx",
                "gretap": "tap"}[self.mode] + str(self.slot.k)

    def config(self, side: int) -> dict:
        return tunnelrouter_config(self.mode, self.slot, side, self.device,
                                   self.remote_checksum, self.workers)

    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = self.device_name()
        controls = {}
        for side, router in ((1, "m1"), (2, "m2")):  # both at once: 1000 tunnels take a while
            stem = workdir / f"{self.id}-{router}".replace("@", "-")
            path, controls[router] = stem.with_suffix(".yaml"), stem.with_suffix(".sock")
            path.write_text(yaml.safe_dump(self.config(side), sort_keys=False))
            self.processes[router] = topo[router].popen(
                self.binary, "run", str(path), "--control-socket", str(controls[router]),
                log=stem.with_suffix(".log"))
        for router, control in controls.items():
            wait_for_path(control, self.processes[router], f"{self.id} on {router}", timeout=120)
        if self.mode in ("vxlan", "gretap"):  # TAP: the far prefix needs a gateway
            for side, router in ((1, "m1"), (2, "m2")):
                topo[router].ip("route", "add", slot.prefix(3 - side), "via",
                                slot.tunnel(3 - side), "dev", self.device)
        self.command = f"{self.binary} run CONFIG (mode {self.mode})"


def tunnelrouter_config(mode: str, slot: Slot, side: int, device: str,
                        remote_checksum: bool = False, workers: int = 1) -> dict:
    """One side's configuration of a tunnelrouter row (``side`` 1 is M1)."""
    far = 3 - side
    tunnel: dict = {"mode": mode, "local": slot.wan(side)}
    if mode == "vxlan":
        tunnel |= {"remotes": [slot.wan(far)], "id": 4242, "port": 4789}
        if remote_checksum:
            tunnel |= {"remote-checksum-tx": True, "remote-checksum-rx": True}
    else:
        tunnel["remote"] = slot.wan(far)
    if mode in ("gre", "gretap"):
        tunnel["key"] = 42
    if mode == "sit":
        tunnel |= {"addresses": [f"{slot.tunnel(side, 6)}/64"], "routes": [slot.prefix(far)]}
    elif mode in ("vxlan", "gretap"):
        tunnel["addresses"] = [f"{slot.tunnel(side)}/30"]
    else:
        tunnel |= {"addresses": [f"{slot.tunnel(side)}/30"], "routes": [slot.prefix(far)]}
    return {"tunnels": {device: tunnel}} | ({"workers": workers} if workers > 1 else {})


def scale_config(mode: str, count: int, slot: Slot, side: int) -> tuple[dict, str]:
    """A configuration of ``count`` tunnels between the same two WAN addresses, told
    apart by GRE key or VNI, each with its own device, addresses and routes; the last one
    carries ``slot``'s traffic. Returns it and that last tunnel's device name."""
    far = 3 - side
    tunnels = {}
    # Each slot its own /16 of 100.64.0.0/10, cut into /30s: rows run side by side in
    # the same namespaces, so their unused tunnels must not share addresses or routes.
    spare = ipaddress.ip_network(f"100.{64 + slot.k}.0.0/16").subnets(new_prefix=30)
    for i in range(1, count + 1):
        name = f"{'g' if mode == 'gre' else 'v'}{slot.k}x{i}"
        link = next(spare)  # this tunnel's /30: .1 on M1, .2 on M2
        if i == count:
            address = f"{slot.tunnel(side)}/30"
            routes = [slot.prefix(far)]
        else:
            address = f"{link[side]}/30"
            routes = [str(next(spare))]  # a prefix of its own, never used
        tunnel: dict = {"mode": mode, "local": slot.wan(side), "addresses": [address]}
        if mode == "gre":
            tunnel |= {"remote": slot.wan(far), "key": i, "routes": routes}
        else:
            tunnel |= {"remotes": [slot.wan(far)], "id": i, "port": 4789}
        tunnels[name] = tunnel
    return {"tunnels": tunnels}, name


@dataclass
class ScaleTunnelrouter(Tunnelrouter):
    count: int = 1

    def device_name(self) -> str:
        return scale_config(self.mode, self.count, self.slot, 1)[1]

    def config(self, side: int) -> dict:
        return scale_config(self.mode, self.count, self.slot, side)[0]


class OpenVpn(Row):
    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = f"ovpn{slot.k}"
        mtu = WAN_MTU - UDP_OVERHEAD["openvpn"]
        for side, router in ((1, "m1"), (2, "m2")):
            args = ["openvpn", "--dev", self.device, "--dev-type", "tun", "--proto", "udp",
                    "--local", slot.wan(side), "--lport", "1194",
                    "--remote", slot.wan(3 - side), "--rport", "1194",
                    "--ifconfig", slot.tunnel(side), slot.tunnel(3 - side),
                    "--cipher", "none", "--auth", "none", "--disable-dco",
                    "--tun-mtu", str(mtu), "--mssfix", "0",
                    "--sndbuf", "4194304", "--rcvbuf", "4194304", "--fast-io",
                    "--txqueuelen", "1000", "--verb", "3"]
            self.processes[router] = topo[router].popen(*args, log=workdir / f"{self.id}-{router}.log")
            self.command = " ".join(args)
        for side, router in ((1, "m1"), (2, "m2")):
            wait_for_device(topo, router, self.device, self.processes[router])
            topo[router].ip("route", "add", slot.prefix(3 - side), "dev", self.device)


class Tinc(Row):
    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = f"tinc{slot.k}"
        mtu = WAN_MTU - UDP_OVERHEAD["tinc"]
        names = {1: "site_a", 2: "site_b"}
        dirs = {side: workdir / f"tinc-{names[side]}" for side in (1, 2)}
        for side in (1, 2):
            d = dirs[side]
            (d / "hosts").mkdir(parents=True, exist_ok=True)
            (d / "tinc.conf").write_text(
                f"Name = {names[side]}\nMode = router\nDeviceType = tun\n"
                f"Interface = {self.device}\nAddressFamily = ipv4\n"
                f"BindToAddress = {slot.wan(side)} 655\nConnectTo = {names[3 - side]}\n")
            (d / "hosts" / names[side]).write_text(
                f"Address = {slot.wan(side)} 655\nSubnet = {slot.prefix(side)}\n"
                f"Subnet = {slot.tunnel(side)}/32\n"
                "Cipher = none\nDigest = none\nMACLength = 0\nCompression = 0\n")
            up = d / "tinc-up"
            up.write_text("#!/bin/sh\n"
                          f"ip link set $INTERFACE mtu {mtu} txqueuelen 1000 up\n"
                          f"ip addr add {slot.tunnel(side)}/30 dev $INTERFACE\n"
                          f"ip route add {slot.prefix(3 - side)} dev $INTERFACE\n")
            up.chmod(0o755)
            run(["tincd", "-c", str(d), "-K", "2048"], input="\n\n", timeout=60)
        for side in (1, 2):  # each side knows the other's host file (its public key)
            host = (dirs[side] / "hosts" / names[side]).read_text()
            (dirs[3 - side] / "hosts" / names[side]).write_text(host)
        for side, router in ((1, "m1"), (2, "m2")):
            args = ["tincd", "-c", str(dirs[side]), "-D", "-d0",
                    "--pidfile", str(dirs[side] / "pid")]
            self.processes[router] = topo[router].popen(*args, log=workdir / f"{self.id}-{router}.log")
            self.command = " ".join(args)
        for router in ("m1", "m2"):
            wait_for_device(topo, router, self.device, self.processes[router])


class Fastd(Row):
    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = f"fastd{slot.k}"
        mtu = WAN_MTU - UDP_OVERHEAD["fastd"]
        keys = {side: generate_fastd_key() for side in (1, 2)}
        for side, router in ((1, "m1"), (2, "m2")):
            conf = workdir / f"fastd-{router}.conf"
            conf.write_text(
                f'log level warn;\ninterface "{self.device}";\nmode tun;\nmethod "null";\n'
                f'bind {slot.wan(side)}:10000;\nsecret "{keys[side][0]}";\nmtu {mtu};\n'
                f'on up "ip link set $INTERFACE txqueuelen 1000 up; '
                f'ip addr add {slot.tunnel(side)}/30 dev $INTERFACE; '
                f'ip route add {slot.prefix(3 - side)} dev $INTERFACE";\n'
                f'peer "far" {{ key "{keys[3 - side][1]}"; remote {slot.wan(3 - side)}:10000; }}\n')
            args = ["fastd", "--config", str(conf)]
            self.processes[router] = topo[router].popen(*args, log=workdir / f"{self.id}-{router}.log")
            self.command = " ".join(args)
        for router in ("m1", "m2"):
            wait_for_device(topo, router, self.device, self.processes[router])


def generate_fastd_key() -> tuple[str, str]:
    """(secret, public) from ``fastd --generate-key``."""
    out = run(["fastd", "--generate-key"]).stdout
    secret = re.search(r"Secret: ([0-9a-f]{64})", out).group(1)
    public = re.search(r"Public: ([0-9a-f]{64})", out).group(1)
    return secret, public


class Socat(Row):
    def start(self, topo: Topology, workdir: Path) -> None:
        slot = self.slot
        self.device = f"socat{slot.k}"
        mtu = WAN_MTU - UDP_OVERHEAD["socat"]
        for side, router in ((1, "m1"), (2, "m2")):
            args = ["socat", "-b", "65536",
                    f"TUN:{slot.tunnel(side)}/30,tun-name={self.device},tun-type=tun,iff-no-pi,iff-up",
                    # Not UDP: (connected): the ICMP port unreachable that answers the
                    # first datagram, before the far socat is up, would end it.
                    f"UDP-DATAGRAM:{slot.wan(3 - side)}:9000,bind={slot.wan(side)}:9000"]
            self.processes[router] = topo[router].popen(*args, log=workdir / f"{self.id}-{router}.log")
            self.command = " ".join(args)
        for side, router in ((1, "m1"), (2, "m2")):
            wait_for_device(topo, router, self.device, self.processes[router])
            topo[router].ip("link", "set", self.device, "mtu", str(mtu), "txqueuelen", "1000")
            topo[router].ip("route", "add", slot.prefix(3 - side), "dev", self.device)


# -- waiting -------------------------------------------------------------------------------

def wait_for_path(path: Path, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready in {timeout} s")
        time.sleep(0.05)


def wait_for_device(topo: Topology, router: str, device: str, process: subprocess.Popen,
                    timeout: float = 30.0) -> None:
    """Until ``device`` exists and is up in ``router`` (the tunnel made and configured it)."""
    deadline = time.monotonic() + timeout
    while True:
        out = topo[router].ip("addr", "show", "dev", device, check=False).stdout
        if ",UP" in out and "inet" in out:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{device} on {router}: the tunnel exited {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device} on {router} did not come up in {timeout} s")
        time.sleep(0.1)


# -- the catalogue -------------------------------------------------------------------------

# id -> (kind, title, inner family, what the kind is given beyond them)
ROW_KINDS = {
    "plain": (Plain, "plain routing (no tunnel)", 4, {}),
    "kernel-vxlan": (KernelVxlan, "kernel VXLAN", 4, {}),
    "kernel-vxlan-rco": (KernelVxlan, "kernel VXLAN, remote checksum offload", 4,
                         {"options": KERNEL_REMOTE_CHECKSUM, "port": VXLAN_KERNEL_PORT + 1}),
    "tr-gre": (Tunnelrouter, "tunnelrouter gre (key)", 4, {"mode": "gre"}),
    "tr-ipip": (Tunnelrouter, "tunnelrouter ipip", 4, {"mode": "ipip"}),
    "tr-sit": (Tunnelrouter, "tunnelrouter sit (IPv6 inner)", 6, {"mode": "sit"}),
    "tr-vxlan": (Tunnelrouter, "tunnelrouter vxlan", 4, {"mode": "vxlan"}),
    "tr-vxlan-rco": (Tunnelrouter, "tunnelrouter vxlan, remote checksum offload", 4,
                     {"mode": "vxlan", "remote_checksum": True}),
    "tr-vxlan-w2": (Tunnelrouter, "tunnelrouter vxlan, 2 workers", 4,
                    {"mode": "vxlan", "workers": 2}),
    "tr-gre-w2": (Tunnelrouter, "tunnelrouter gre (key), 2 workers", 4,
                  {"mode": "gre", "workers": 2}),
    "tr-gretap": (Tunnelrouter, "tunnelrouter gretap (key)", 4, {"mode": "gretap"}),
    "openvpn": (OpenVpn, "OpenVPN p2p, no crypto", 4, {}),
    "tinc": (Tinc, "tinc, Cipher/Digest none", 4, {}),
    "fastd": (Fastd, "fastd, method null", 4, {}),
    "socat": (Socat, "socat TUN<->UDP", 4, {}),
}
DEFAULT_ROWS = ("plain", "kernel-vxlan", "tr-gre", "tr-ipip", "tr-sit", "tr-vxlan",
                "openvpn", "tinc", "fastd", "socat")
BASELINE = "kernel-vxlan"


def make_rows(ids: list[str], builds: dict[str, str]) -> list[Row]:
    """Rows for ``ids``; each tunnelrouter row once per build (``builds``: label -> the
    tunnelrouter command). With one build the rows are named ``tr-gre``, with two
    ``tr-gre@LABEL``. Slots are numbered in order."""
    rows: list[Row] = []
    for row_id in ids:
        cls, title, family, given = ROW_KINDS[row_id]
        if cls is Tunnelrouter:
            for label, binary in builds.items():
                name = row_id if len(builds) == 1 else f"{row_id}@{label}"
                shown = title if len(builds) == 1 else f"{title} [{label}]"
                rows.append(Tunnelrouter(name, shown, family, binary=binary, **given))
        else:
            rows.append(cls(row_id, title, family, **given))
    for k, row in enumerate(rows, start=1):
        row.slot = Slot(k, row.family)
    return rows
