"""What an operator may do to a running tunnelrouter, and what keeps one from starting.

Two routers, M1 and M2, joined by a WAN veth, each running ``tunnelrouter run``
with three tunnels: gre1 (IPv4 and IPv6 addresses, and routes to the far
site's prefixes, whose addresses sit on the far router's ``lo``), vx1 and
ipip1. Whatever is done to one tunnel's device (deleted, set down and up), to
the process (SIGHUP: a reload) or to its control socket (idle clients, a stale socket),
the router stays up, answers ``show`` without internal errors, and the other
tunnels forward throughout. What stops a start (a second router on the same
tunnel ends and routes, a file where the control socket goes, an address the
kernel refuses or the host lacks, missing permissions) is reported with the
configuration key or file and what to do, never with a traceback, and leaves
no device behind.
"""

import contextlib
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.conftest import IN_CI
from tests.netns.routers import (VENV_BIN, WAN, join_wan, show, start_router, wait_for,
                                 wait_for_text, wait_until)

pytestmark = pytest.mark.netns

TUNNELROUTER = str(VENV_BIN / "tunnelrouter")
REPOSITORY = Path(__file__).resolve().parents[2]
TUNNELS = ("gre1", "vx1", "ipip1")
# Each router's site: addresses on its lo, reached through gre1's routes from the other.
SITE = {1: ("10.1.1.1", "fd01:1::1"), 2: ("10.2.1.1", "fd02:1::1")}
# (tunnel, M2's address, M1's source or None): pinged from M1.
GRE_PINGS = [("gre1", "192.168.101.2", None), ("gre1", "fd00:101::2", None),
             ("gre1", SITE[2][0], SITE[1][0]), ("gre1", SITE[2][1], SITE[1][1])]
OTHER_PINGS = [("vx1", "192.168.102.2", None), ("ipip1", "192.168.103.2", None)]
PINGS = GRE_PINGS + OTHER_PINGS
# What M1's gre1 must carry whenever it is up: its addresses and the far site's routes.
GRE1_ADDRESSES = {"192.168.101.1/24", "fd00:101::1/64"}
GRE1_ROUTES = {"10.2.1.0/24", "fd02:1::/64"}


def gre(me: str, peer: str, side: int) -> dict:
    far = 3 - side
    return {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 42,
            "addresses": [f"192.168.101.{side}/24", f"fd00:101::{side}/64"],
            "routes": [f"10.{far}.1.0/24", f"fd0{far}:1::/64"]}


def vxlan(me: str, peer: str, side: int) -> dict:
    return {"mode": "vxlan", "local": WAN[me], "remotes": [WAN[peer]], "id": 4242,
            "addresses": [f"192.168.102.{side}/24", f"fd00:102::{side}/64"]}


def ipip(me: str, peer: str, side: int) -> dict:
    return {"mode": "ipip", "local": WAN[me], "remote": WAN[peer],
            "addresses": [f"192.168.103.{side}/24"]}


def router_config(me: str, peer: str, side: int, suffix: str = "") -> dict:
    """The three tunnels; ``suffix`` renames their devices and nothing else."""
    return {"tunnels": {f"gre1{suffix}": gre(me, peer, side),
                        f"vx1{suffix}": vxlan(me, peer, side),
                        f"ipip1{suffix}": ipip(me, peer, side)}}


class Running(NamedTuple):
    ns: object
    process: subprocess.Popen
    control: Path


@pytest.fixture
def pair(netns, tmp_path) -> dict[str, Running]:
    """M1 and M2 on the WAN, their sites on lo, a router in each, both answering ``show``."""
    m1, m2 = netns("m1"), netns("m2")
    join_wan(netns, m1, m2)
    routers = {}
    for ns, me, peer, side in ((m1, "m1", "m2", 1), (m2, "m2", "m1", 2)):
        ipv4, ipv6 = SITE[side]
        ns.ip("addr", "add", f"{ipv4}/32", "dev", "lo")
        ns.ip("addr", "add", f"{ipv6}/128", "dev", "lo")
        routers[me] = Running(ns, *start_router(ns, router_config(me, peer, side), tmp_path, me))
    for router in routers.values():
        wait_for(router.control, router.process)
    # Answered from inside the loop: the signal handlers are in place from here on.
    for router in routers.values():
        serving(router)
    return routers


@pytest.fixture
def wan_only(netns):
    """M1 and M2 on the WAN and nothing else: for starts that must fail."""
    m1, m2 = netns("m1"), netns("m2")
    join_wan(netns, m1, m2)
    return m1


def failed_pings(ns, pings=PINGS) -> list[str]:
    """The ``pings`` from ``ns`` that got no reply. They run side by side: one after the
    other, each that must fail (a tunnel that is down) would wait out its -W alone."""
    running = []
    for tunnel, address, source in pings:
        extra = ["-I", source] if source else []
        running.append((f"{tunnel} -> {address}",
                        ns.popen("ping", "-c", "2", "-i", "0.2", "-W", "2", *extra, address)))
    failures = []
    for what, ping in running:
        try:
            ping.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            ping.kill()
            ping.communicate()
        if ping.returncode:
            failures.append(what)
    return failures


def serving(router: Running) -> dict:
    """The router process is alive and ``show`` answers (with no internal errors)."""
    assert router.process.poll() is None, \
        f"the router exited {router.process.returncode}: {router.process.stderr.read()}"
    return show(router.control)


def device_state(router: Running, tunnel: str) -> str:
    return serving(router)["tunnels"][tunnel]["device"]


def tunnel_devices(ns) -> set[str]:
    """The names of the tunnel devices, any router's, that exist in ``ns``."""
    links = json.loads(ns.ip("-j", "link", "show").stdout)
    return {link["ifname"] for link in links if link["ifname"].startswith(TUNNELS)}


class Programmed(NamedTuple):
    up: bool
    addresses: set[str]
    routes: set[str]


def programmed(ns, device: str) -> Programmed | None:
    """What ``device`` in ``ns`` carries now (global addresses, route destinations), or None
    if there is no such device."""
    result = ns.ip("-j", "addr", "show", "dev", device, check=False)
    if result.returncode != 0:
        return None
    (link,) = json.loads(result.stdout)
    addresses = {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                 if a.get("scope") == "global"}
    routes = {route["dst"] for family in ("-4", "-6")
              for route in json.loads(ns.ip("-j", family, "route", "show", "dev", device).stdout)}
    return Programmed("UP" in link["flags"], addresses, routes)


def gre1_complete(ns) -> bool:
    found = programmed(ns, "gre1")
    return found is not None and found.up and GRE1_ADDRESSES <= found.addresses and \
        GRE1_ROUTES <= found.routes


def refused(ns, config: dict, directory: Path, name: str, *options: str) -> str:
    """``tunnelrouter run`` with ``config`` must refuse to start (exit 1) and say why in
    a message, not a traceback; returns what it printed."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = ns.run(TUNNELROUTER, "run", str(path), *options, check=False, timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}, expected 1:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def line_naming(output: str, key: str) -> str:
    """The one line of ``output`` about configuration key ``key``."""
    lines = [line for line in output.splitlines() if f"{key}:" in line]
    assert len(lines) == 1, f"expected one line naming {key}, got {lines} in:\n{output}"
    return lines[0]


# -- what is done to a running router -----------------------------------------------------

def test_a_deleted_device_is_made_again_while_the_other_tunnels_forward(pair):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    # Through the other tunnels across the deletion and the remaking: every reply counts.
    during = [m1.ns.popen("ping", "-c", "15", "-i", "0.2", "-W", "2", address)
              for _, address, _ in OTHER_PINGS]
    m1.ns.ip("link", "del", "gre1")
    wait_for_text(m1.process.stderr, "tunnel gre1: its device is gone", 15)
    wait_until(lambda: gre1_complete(m1.ns), 20, "gre1 made again with its addresses and routes")
    for ping in during:
        output, _ = ping.communicate(timeout=30)
        assert ping.returncode == 0 and " 0% packet loss" in output, output
    assert not failed_pings(m1.ns)
    tunnels = serving(m1)["tunnels"]
    assert tunnels["gre1"]["device"] == "up"
    assert {name: tunnels[name]["counters"]["device_lost"] for name in TUNNELS} == \
        {"gre1": 1, "vx1": 0, "ipip1": 0}


def test_a_deleted_device_whose_name_is_taken_stays_gone_until_the_name_is_free(pair):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    # One ip process, so the TAP device takes the name long before the router's first
    # attempt (a second after it hears of the deletion) to make gre1 again.
    m1.ns.ip("-batch", "-", input="link del gre1\ntuntap add dev gre1 mode tap\n")
    wait_for_text(m1.process.stderr, "tunnel gre1: cannot make its device again", 15)
    assert device_state(m1, "gre1") == "gone (being made again)"
    assert not failed_pings(m1.ns, OTHER_PINGS)
    assert failed_pings(m1.ns, GRE_PINGS) == [f"gre1 -> {address}" for _, address, _ in GRE_PINGS]
    m1.ns.ip("link", "del", "gre1")
    wait_until(lambda: gre1_complete(m1.ns), 20, "gre1 made again once its name was free")
    assert not failed_pings(m1.ns)
    assert device_state(m1, "gre1") == "up"


def test_a_device_set_down_and_up_again_gets_its_addresses_and_routes_back(pair):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    m1.ns.ip("link", "set", "gre1", "down")
    wait_until(lambda: device_state(m1, "gre1") == "down", 15, "show to say gre1 is down")
    assert failed_pings(m1.ns, GRE_PINGS) == [f"gre1 -> {address}" for _, address, _ in GRE_PINGS]
    assert not failed_pings(m1.ns, OTHER_PINGS)
    # The kernel took the IPv6 address and the routes with the link: only the router
    # puts them back.
    down = programmed(m1.ns, "gre1")
    assert not down.up and "fd00:101::1/64" not in down.addresses, down
    assert not GRE1_ROUTES & down.routes, down
    m1.ns.ip("link", "set", "gre1", "up")
    wait_until(lambda: gre1_complete(m1.ns), 20, "gre1's addresses and routes back")
    wait_for_text(m1.process.stderr, "tunnel gre1: device up again; addresses and routes "
                                     "restored", 15)
    assert not failed_pings(m1.ns)
    assert device_state(m1, "gre1") == "up"


def test_sighup_reloads_an_unchanged_file_as_unchanged_and_sigterm_then_stops_cleanly(pair):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    m1.process.send_signal(signal.SIGHUP)
    wait_for_text(m1.process.stderr, "is unchanged (sha256 ", 15)
    assert not failed_pings(m1.ns)
    assert set(serving(m1)["tunnels"]) == set(TUNNELS)
    m1.process.terminate()
    assert m1.process.wait(timeout=15) == 0
    assert not m1.control.exists()
    assert not tunnel_devices(m1.ns)


def test_fifty_idle_control_clients_hold_up_neither_forwarding_nor_show(pair):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    with contextlib.ExitStack() as idle:
        for _ in range(50):
            client = idle.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            client.settimeout(10)
            # A full listen backlog refuses at once (EAGAIN) rather than making us wait.
            wait_until(lambda: client.connect_ex(str(m1.control)) == 0, 10,
                       "room in the control socket's backlog")
        ping = m1.ns.run("ping", "-c", "10", "-i", "0.2", "-W", "1", "192.168.101.2",
                         check=False, timeout=30)
        # The old daemon read each client with a blocking call: 5 s per idle client.
        times = [float(ms) for ms in re.findall(r"time=([\d.]+) ms", ping.stdout)]
        assert ping.returncode == 0 and len(times) == 10, ping.stdout
        assert max(times) < 500, f"a reply took {max(times)} ms:\n{ping.stdout}"
        result = m1.ns.run(TUNNELROUTER, "show", "--socket", str(m1.control), check=False,
                           timeout=30)
        assert result.returncode == 0, result.stderr
        assert "tunnel: gre1" in result.stdout
    assert not failed_pings(m1.ns)
    serving(m1)


def test_a_stale_control_socket_left_by_a_killed_router_is_replaced_at_the_next_start(
        pair, tmp_path):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    m1.process.kill()
    m1.process.wait(timeout=15)
    assert stat.S_ISSOCK(m1.control.lstat().st_mode), "SIGKILL should leave the socket behind"
    # The devices went with the process's file descriptors.
    wait_until(lambda: not tunnel_devices(m1.ns), 15, "the killed router's devices to go")
    again = Running(m1.ns, *start_router(m1.ns, router_config("m1", "m2", 1), tmp_path, "m1"))

    def answering() -> bool:
        assert again.process.poll() is None, again.process.stderr.read()
        # Until then the path holds the stale socket, or for a moment nothing.
        with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
            return bool(serving(again))
        return False
    wait_until(answering, 20, "the new router to answer on the old socket's path")
    assert not failed_pings(m1.ns)
    serving(again)


# -- what keeps a router from starting ----------------------------------------------------

def test_a_second_router_on_the_same_tunnel_ends_and_routes_refuses_and_harms_nothing(
        pair, tmp_path):
    m1 = pair["m1"]
    assert not failed_pings(m1.ns)
    output = refused(m1.ns, router_config("m1", "m2", 1, suffix="x"), tmp_path, "second",
                     "--control-socket", str(tmp_path / "second.sock"))
    for position, prefix in enumerate(gre("m1", "m2", 1)["routes"]):
        message = line_naming(output, f"tunnels.gre1x.routes[{position}]")
        assert f"{prefix} is already routed through gre1" in message, message
    gre_end = line_naming(output, "tunnels.gre1x.key")
    assert WAN["m2"] in gre_end and "42" in gre_end and "another tunnelrouter" in gre_end
    assert "another tunnelrouter" in line_naming(output, "tunnels.ipip1x.remote")
    assert "tunnels.vx1x." in output
    assert tunnel_devices(m1.ns) == set(TUNNELS)
    assert gre1_complete(m1.ns)
    assert not failed_pings(m1.ns)
    assert all(state["device"] == "up" for state in serving(m1)["tunnels"].values())


@pytest.mark.parametrize("vni", [
    pytest.param(4242, id="same-id"),
    pytest.param(4243, id="other-id")])
def test_a_second_vxlan_router_on_the_same_port_is_told_the_port_is_taken(pair, tmp_path, vni):
    m1 = pair["m1"]
    config = {"tunnels": {"vx1x": vxlan("m1", "m2", 1) | {"id": vni}}}
    output = refused(m1.ns, config, tmp_path, "second",
                     "--control-socket", str(tmp_path / "second.sock"))
    assert not failed_pings(m1.ns, OTHER_PINGS)
    assert "4789" in line_naming(output, "tunnels.vx1x.port")


def test_a_control_socket_path_holding_a_regular_file_is_refused_and_the_file_kept(
        wan_only, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("not a socket\n")
    before = precious.stat()
    config = router_config("m1", "m2", 1) | {"control-socket": str(precious)}
    output = refused(wan_only, config, tmp_path, "m1")
    message = line_naming(output, "control-socket")
    assert f"{precious} exists and is not a socket" in message
    assert "remove it, or choose another control-socket path" in message
    assert precious.read_text() == "not a socket\n"
    assert (precious.stat().st_ino, precious.stat().st_mtime_ns) == \
        (before.st_ino, before.st_mtime_ns)
    assert not tunnel_devices(wan_only)


def test_an_address_the_kernel_refuses_stops_the_start_naming_the_key_and_the_reason(
        wan_only, tmp_path):
    wan_only.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    wan_only.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
    # ipip1 comes first (the file's keys are sorted): made, then undone when vx1 fails.
    config = {"tunnels": {"ipip1": ipip("m1", "m2", 1), "vx1": vxlan("m1", "m2", 1)}}
    output = refused(wan_only, config, tmp_path, "m1")
    message = line_naming(output, "tunnels.vx1.addresses[1]")
    assert "fd00:102::1/64" in message and "Permission denied" in message, message
    assert not tunnel_devices(wan_only)


def test_a_local_address_the_host_lacks_stops_the_start_naming_the_key(wan_only, tmp_path):
    config = {"tunnels": {"ipip1": ipip("m1", "m2", 1),
                          "vx1": vxlan("m1", "m2", 1) | {"local": "10.99.0.9"}}}
    output = refused(wan_only, config, tmp_path, "m1")
    assert "10.99.0.9 is not an address of this host" in line_naming(output, "tunnels.vx1.local")
    assert not tunnel_devices(wan_only)


# -- without root --------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
          "--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"]
# This repository and the virtualenv's packages, on the path of an interpreter uid 65534 can run.
NOBODY_PATH = f"{REPOSITORY}:{sysconfig.get_paths()['purelib']}"


@pytest.fixture(scope="module")
def nobody_python() -> str:
    """An interpreter of this Python version that uid 65534 can run with the virtualenv's
    packages: the virtualenv's own may sit where that user cannot reach (pyenv under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}"):
        probe = subprocess.run([*NOBODY, "env", f"PYTHONPATH={NOBODY_PATH}", python, "-c",
                                "import tunnelrouter.router"], capture_output=True, cwd="/")
        if probe.returncode == 0:
            return python
    reason = f"no {version} that uid 65534 can run with {NOBODY_PATH}"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def run_as_nobody(ns, python: str, prepare: str) -> str:
    """``tunnelrouter run`` as uid 65534 with CAP_NET_ADMIN and CAP_NET_RAW alone, the
    configuration at /run/site.yaml (so its control socket defaults to
    /run/tunnelrouter/site.sock); must exit 1 with a message. ``prepare`` (shell, as root)
    sets up /run and /dev/net/tun first. Both are fresh tmpfs mounts in the mount namespace
    of ``ip netns exec``, whose mounts never reach the host."""
    script = "\n".join([
        "set -e",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mount -t tmpfs -o mode=0755 tmpfs /dev/net",
        prepare,
        "cat > /run/site.yaml",
        f'exec {" ".join(NOBODY)} env PYTHONPATH={NOBODY_PATH} {python} '
        f'-m tunnelrouter.cli run /run/site.yaml'])
    result = ns.run("sh", "-c", script, input=yaml.safe_dump(router_config("m1", "m2", 1)),
                    check=False, timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}, expected 1:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert not tunnel_devices(ns)
    return result.stderr


TUN_FOR_ALL = "mknod -m 0666 /dev/net/tun c 10 200"


@pytest.mark.needs_binary("setpriv")
def test_without_root_a_control_directory_that_cannot_be_made_is_named_with_the_fix(
        wan_only, nobody_python):
    output = run_as_nobody(wan_only, nobody_python, TUN_FOR_ALL)
    message = line_naming(output, "control-socket")
    assert "cannot create the control socket's directory /run/tunnelrouter" in message
    assert "give --control-socket (or control-socket:) a writable path" in message


@pytest.mark.needs_binary("setpriv")
@pytest.mark.parametrize("mode", [0o750, 0o755], ids=oct)
def test_without_root_a_control_directory_left_by_root_is_named_with_the_fix(
        wan_only, nobody_python, mode):
    output = run_as_nobody(wan_only, nobody_python,
                           f"{TUN_FOR_ALL}\nmkdir -m {mode:o} /run/tunnelrouter")
    message = line_naming(output, "control-socket")
    assert "/run/tunnelrouter/site.sock" in message
    assert "give --control-socket (or control-socket:) a writable path" in message


@pytest.mark.needs_binary("setpriv")
def test_without_root_a_tun_device_file_the_user_cannot_open_is_named(wan_only, nobody_python):
    output = run_as_nobody(wan_only, nobody_python, "mknod -m 0600 /dev/net/tun c 10 200")
    message = line_naming(output, "tunnels.gre1")
    assert "/dev/net/tun" in message and "read-write access" in message, message
