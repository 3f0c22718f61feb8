"""Running tunnelrouters inside test namespaces: start, wait, ask ``show``."""

import json
import socket
import time
from pathlib import Path

import yaml

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
WAN = {"m1": "10.99.0.1", "m2": "10.99.0.2"}


def without_dad(ns) -> None:
    """Addresses on TAP devices would otherwise wait a second for duplicate detection."""
    ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
    ns.sysctl("net.ipv6.conf.default.accept_dad", 0)


def join_wan(netns, m1, m2):
    """A veth between M1 and M2 carrying the WAN addresses; returns the Veth."""
    wan = netns.veth(m1, m2)
    for ns, end, address in ((m1, wan.a_name, WAN["m1"]), (m2, wan.b_name, WAN["m2"])):
        ns.ip("addr", "add", f"{address}/24", "dev", end)
        without_dad(ns)
    return wan


def start_router(ns, config: dict, directory: Path, name: str):
    """``tunnelrouter run`` in ``ns`` with ``config``; returns ``(process, control_socket)``."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    control = directory / f"{name}.sock"
    process = ns.popen(str(VENV_BIN / "tunnelrouter"), "run", str(path),
                       "--control-socket", str(control))
    return process, control


def wait_for(path: Path, process, timeout: float = 10.0) -> None:
    """Until the router has opened its control socket (it is then fully started)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"router exited {process.returncode}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"router did not open {path} in {timeout} s"
        time.sleep(0.05)


def show(control: Path) -> dict:
    """What ``tunnelrouter show --json`` prints, straight from the control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(control))
        sock.sendall(b"show\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data)
