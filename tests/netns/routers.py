"""Running tunnelrouters inside test namespaces: start, wait, ask ``show``."""

import json
import os
import select
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
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
    status = json.loads(data)
    # The loop's last line of defence caught an exception: a bug, whatever the test is about.
    assert not status.get("internal_errors"), f"the router logged internal errors: {status}"
    return status


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(interval)


def wait_for_text(stream, text: str, timeout: float) -> None:
    """Read a process's ``stream`` until ``text`` appears (TimeoutError if it does not).
    Reads the descriptor itself: a buffered readline would hide data from select."""
    deadline = time.monotonic() + timeout
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([stream], [], [], left)[0]:
            break
        chunk = os.read(stream.fileno(), 4096)
        seen += chunk
        if text.encode() in seen:
            return
        if not chunk:
            break
    raise TimeoutError(f"no {text!r} in {timeout} s; got {seen.decode(errors='replace')!r}")


@contextmanager
def capture(ns, ifname: str, pcap: Path, *bpf: str, timeout: float = 5.0):
    """tcpdump on ``ifname`` in ``ns`` into ``pcap`` while the ``with`` block runs.

    It is capturing when the block starts (``listening on`` said, file header written)
    and every frame it saw is in the file when the block ends. --immediate-mode: without
    it frames wait in the capture ring for up to a second, and what is still there at
    SIGINT is counted "received by filter" but never written.
    """
    tcpdump = ns.popen("tcpdump", "-ni", ifname, "-w", str(pcap), "-U", "--immediate-mode",
                       "-Z", "root", *bpf)
    deadline = time.monotonic() + timeout
    wait_for_text(tcpdump.stderr, "listening on", timeout)
    while not (pcap.exists() and pcap.stat().st_size >= 24):  # the pcap file header
        assert time.monotonic() < deadline, "tcpdump did not write its file header"
        time.sleep(0.02)
    try:
        yield pcap
    finally:
        time.sleep(0.1)  # let the last frames reach the capture
        tcpdump.send_signal(signal.SIGINT)
        try:
            tcpdump.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            raise AssertionError("tcpdump did not stop on SIGINT")
