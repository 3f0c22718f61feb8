"""Least privilege: ``run --user nobody`` makes everything as root, then runs as nobody with
CAP_NET_ADMIN and CAP_NET_RAW alone, and everything still works: forwarding, a reload that adds
a tunnel (device, addresses, routes, the two per-device sysctls) and changes an MTU, a SIGHUP
reload that removes one, a forward changed by a reload (its process runs as nobody with no
capability at all), and a stop that leaves no device and no control socket. A router that
lacks the capabilities, or cannot switch user, says so in one line and exits 69.

The router runs in the private mount namespace that ``ip netns exec`` gives each command, and
there, before it starts, the test makes the machine look like a stock Debian for a user other
than root: ``/dev/net/tun`` read-write for everyone (udev's rule; a machine without udev may
have it 0600), and the interpreter reachable (a pyenv Python under /root is not). The host's
own mounts are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.netns.routers import VENV_BIN, WAN, join_wan, show, wait_for, wait_for_text, wait_until

pytestmark = pytest.mark.netns

TUNNELROUTER = str(VENV_BIN / "tunnelrouter")
PEERS = str(Path(__file__).with_name("forward_peers.py"))
NET_ADMIN_AND_RAW = 1 << 12 | 1 << 13
NOBODY = 65534
SITE = {1: "10.1.1.1", 2: "10.2.1.1"}
SERVICE = 8000


def gre(side: int, **extra) -> dict:
    me, peer, far = f"m{side}", f"m{3 - side}", 3 - side
    return {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 42,
            "addresses": [f"192.168.101.{side}/24"], "routes": [f"10.{far}.1.0/24"]} | extra


def ipip(side: int) -> dict:
    me, peer = f"m{side}", f"m{3 - side}"
    return {"mode": "ipip", "local": WAN[me], "remote": WAN[peer],
            "addresses": [f"192.168.103.{side}/24"]}


def web(port: int) -> dict:
    return {"web": {"listen": f"{SITE[1]}:{port}", "to": f"{SITE[2]}:{SERVICE}"}}


def hidden_directory(path: Path) -> tuple[Path, Path] | None:
    """The first directory on the way to ``path`` that others may not enter, and its child
    on that way (``/root`` and ``/root/.pyenv``); None if every one is open."""
    for child in [*reversed(path.parents), path][1:]:
        if not child.parent.stat().st_mode & stat.S_IXOTH:
            return child.parent, child
    return None


def as_on_debian(stage: Path) -> list[str]:
    """A prefix for a command run by ``ip netns exec``: in its private mount namespace,
    /dev/net/tun with udev's mode and the interpreter open to every user."""
    script = ["set -e", f"mount -t tmpfs -o mode=0755 tmpfs {stage}",
              f"mknod -m 0666 {stage}/tun c 10 200", f"mount --bind {stage}/tun /dev/net/tun"]
    hidden = hidden_directory(Path(os.path.realpath(sys.executable)))
    if hidden is not None:
        directory, child = hidden
        script += [f"mkdir {stage}/open", f"mount --bind {child} {stage}/open",
                   f"mount -t tmpfs -o mode=0755 tmpfs {directory}", f"mkdir {child}",
                   f"mount --bind {stage}/open {child}"]
    return ["sh", "-c", "; ".join(script) + '; exec "$@"', "sh"]


@pytest.fixture
def shared():
    """A directory any user may read (pytest's own are root's alone): config files, sockets."""
    directory = Path(tempfile.mkdtemp(prefix="trt-privileges-"))
    directory.chmod(0o755)
    (directory / "stage").mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def write(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)


def reload(ns, control: Path) -> str:
    result = ns.run(TUNNELROUTER, "reload", "--socket", str(control), timeout=60, check=False)
    assert result.returncode == 0, result
    return result.stdout


def pings(ns, address: str, source: str | None = None) -> bool:
    extra = ["-I", source] if source else []
    return ns.run("ping", "-c", "2", "-i", "0.2", "-W", "2", *extra, address, check=False,
                  timeout=30).returncode == 0


def fetches(ns, port: int) -> bool:
    """3000 bytes through M1's forward web to M2's backend, which answers them 1000 times."""
    result = ns.run(sys.executable, PEERS, "tcp", SITE[1], str(port), "--send", "3000",
                    "--shutdown", timeout=30)
    return json.loads(result.stdout) == [[{"received": 3_000_000, "ended": "eof"}]]


def test_a_router_run_as_nobody_keeps_two_capabilities_and_does_everything(netns, shared):
    m1, m2 = netns("pm1"), netns("pm2")
    join_wan(netns, m1, m2)
    for ns, side in ((m1, 1), (m2, 2)):
        ns.ip("addr", "add", f"{SITE[side]}/32", "dev", "lo")
    backend = m2.popen(sys.executable, PEERS, "serve", str(SERVICE))
    wait_for_text(backend.stdout, "serving", 10)
    write(shared / "m2.yaml", {"tunnels": {"gre1": gre(2), "ipip1": ipip(2)}})
    far = m2.popen(TUNNELROUTER, "run", str(shared / "m2.yaml"),
                   "--control-socket", str(shared / "m2.sock"))
    config, control = shared / "m1.yaml", shared / "run" / "m1.sock"
    write(config, {"tunnels": {"gre1": gre(1)}, "forwards": web(8080)})
    router = m1.popen(*as_on_debian(shared / "stage"), TUNNELROUTER, "run", str(config),
                      "--control-socket", str(control), "--user", "nobody",
                      "--log-format", "json")
    wait_for(shared / "m2.sock", far)
    wait_for(control, router)
    wait_for_text(router.stderr, '"event": "privileges_dropped"', 10)

    process = status_of(router.pid)
    assert process["Uid"].split() == [str(NOBODY)] * 4 and process["Gid"].split() == \
        [str(NOBODY)] * 4 and process["Groups"].strip() == ""
    assert int(process["CapEff"], 16) == NET_ADMIN_AND_RAW
    assert int(process["CapPrm"], 16) == NET_ADMIN_AND_RAW
    assert int(process["CapInh"], 16) == 0 and int(process["CapAmb"], 16) == 0
    assert process["NoNewPrivs"] == "1"
    socket_stat = control.stat()
    assert (socket_stat.st_uid, stat.S_IMODE(socket_stat.st_mode)) == (NOBODY, 0o660)
    [forwarder] = children(router.pid)
    assert status_of(forwarder)["Uid"].split() == [str(NOBODY)] * 4
    assert int(status_of(forwarder)["CapEff"], 16) == 0

    assert pings(m1, "192.168.101.2") and pings(m1, SITE[2], SITE[1])
    assert fetches(m1, 8080)

    # A reload as nobody: a new device with its addresses and sysctls, an MTU changed in
    # place, a forward moved to another port (its process started again, as nobody).
    write(config, {"tunnels": {"gre1": gre(1, mtu=1400), "ipip1": ipip(1)},
                   "forwards": web(8081)})
    out = reload(m1, control)
    assert "add tunnel ipip1" in out and "change in place tunnel gre1: mtu" in out, out
    links = {link["ifname"]: link for link in json.loads(m1.ip("-j", "link", "show").stdout)}
    assert links["gre1"]["mtu"] == 1400 and "ipip1" in links
    for sysctl in ("ipv4/conf/ipip1/accept_local", "ipv6/conf/ipip1/disable_ipv6"):
        assert m1.run("cat", f"/proc/sys/net/{sysctl}").stdout.strip() == "1", sysctl
    assert pings(m1, "192.168.103.2") and pings(m1, SITE[2], SITE[1])
    wait_until(lambda: show(control)["forwards"]["web"].get("state") == "listening", 10,
               "the forward to listen on its new port")
    assert fetches(m1, 8081)
    assert all(status_of(child)["Uid"].split()[0] == str(NOBODY)
               for child in children(router.pid))

    # SIGHUP: the file read again by nobody; ipip1 removed.
    write(config, {"tunnels": {"gre1": gre(1, mtu=1400)}, "forwards": web(8081)})
    router.send_signal(signal.SIGHUP)
    wait_for_text(router.stderr, '"event": "reload_applied"', 15)
    wait_until(lambda: "ipip1" not in show(control)["tunnels"], 10, "ipip1 to go")
    assert m1.ip("link", "show", "ipip1", check=False).returncode != 0
    assert show(control)["internal_errors"] == 0

    router.send_signal(signal.SIGTERM)
    assert router.wait(timeout=20) == 0
    names = {link["ifname"] for link in json.loads(m1.ip("-j", "link", "show").stdout)}
    assert not names & {"gre1", "ipip1"} and not control.exists()


@pytest.mark.parametrize("setpriv, arguments, message", [
    # nobody with no capability at all
    (["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"], [],
     "tunnelrouter run: missing CAP_NET_ADMIN and CAP_NET_RAW: run as root, or grant them"),
    # root's user id, but only the router's two capabilities: it cannot become nobody
    (["--inh-caps=-all", "--bounding-set=-all,+net_admin,+net_raw"], ["--user", "nobody"],
     "tunnelrouter run: --user nobody needs CAP_SETUID and CAP_SETGID to switch to that user"),
])
def test_a_router_without_what_it_needs_says_so_in_one_line_and_exits_69(
        netns, shared, setpriv, arguments, message):
    ns = netns("pnocap")
    config = shared / "r.yaml"
    write(config, {"tunnels": {"gre1": gre(1)}})
    result = ns.run(*as_on_debian(shared / "stage"), "setpriv", *setpriv, TUNNELROUTER, "run",
                    str(config), "--control-socket", str(shared / "r.sock"), *arguments,
                    check=False, timeout=30)
    assert result.returncode == 69, result
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert ns.ip("link", "show", "gre1", check=False).returncode != 0
