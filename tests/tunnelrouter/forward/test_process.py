"""The forwarder process from the router's side: started with the forwards, its status in
the router's, a listener it cannot open a problem at start, and it is started again when
it dies. No root: loopback addresses of the test's own."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tunnelrouter.config import parse_config
from tunnelrouter.control.render import is_status, render_status
from tunnelrouter.forward import process as process_module
from tunnelrouter.forward.process import ForwarderProcess
from tunnelrouter.io.loop import Loop
from tunnelrouter.router import Router, StartError

from tests.tunnelrouter.doubles import MemorySystem
from tests.tunnelrouter.test_config import TUNNELROUTER
from tests.tunnelrouter.forward.test_forwarder import Backend, echo, wait_until
from tests.tunnelrouter.test_router import every_mode

A = "10.0.0.1"


@pytest.fixture
def site():
    return f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}."


@pytest.fixture
def backend(site):
    return Backend(site + "2", echo)


def forwards_config(site: str, backend: Backend) -> dict:
    return {"web": {"listen": site + "1:8080", "to": backend.address},
            "dns": {"listen": site + "1:5353", "protocol": "udp", "to": site + "2:53"}}


@pytest.fixture
def handle():
    """``start(forwards dict)``: a started ForwarderProcess on a Loop, closed at the end."""
    made = []

    def start(forwards: dict) -> tuple[ForwarderProcess, Loop, list]:
        loop = Loop()
        forwarder = ForwarderProcess(parse_config({"forwards": forwards}).forwards, loop)
        made.append((forwarder, loop))
        return forwarder, loop, forwarder.start()
    yield start
    for forwarder, loop in made:
        forwarder.close()
        loop.close()


def serve_until(loop: Loop, forwarder: ForwarderProcess, predicate, what: str) -> None:
    """Run the router's side of things (the loop, the tick) until ``predicate()``."""
    deadline = time.monotonic() + 15
    while not predicate():
        assert time.monotonic() < deadline, f"waited 15 s for {what}"
        loop.run_once(forwarder.tick, 0.1, 0.05)


def echoes(site: str) -> bool:
    with socket.create_connection((site + "1", 8080), timeout=5) as client:
        client.sendall(b"ping")
        return client.recv(4) == b"ping"


def test_the_process_serves_the_forwards_and_reports_their_status(handle, site, backend):
    forwarder, loop, problems = handle(forwards_config(site, backend))
    assert problems == [] and forwarder.process.poll() is None
    assert echoes(site)
    serve_until(loop, forwarder, lambda: forwarder.status()["web"].get("connections_total") == 1,
                "the status to come")
    status = forwarder.status()
    assert status["web"]["state"] == "listening" and status["web"]["bytes_to_client"] == 4
    assert status["dns"]["protocol"] == "udp" and forwarder.faults == 0


def test_a_forward_that_cannot_listen_is_a_start_problem_naming_its_key(handle, site, backend):
    taken = socket.create_server((site + "1", 8080))
    _, _, problems = handle(forwards_config(site, backend))
    assert [path for path, _ in problems] == ["forwards.web.listen"]
    assert "Address already in use" in problems[0][1]
    taken.close()


def test_a_killed_process_is_started_again_and_serves_again(handle, site, backend, caplog,
                                                            monkeypatch):
    monkeypatch.setattr(process_module, "RESTART_FIRST", 0.2)
    forwarder, loop, _ = handle(forwards_config(site, backend))
    first = forwarder.process.pid
    os.kill(first, signal.SIGKILL)
    serve_until(loop, forwarder, lambda: forwarder.process is None, "the death to be noticed")
    assert forwarder.status()["web"]["state"].startswith("not running")
    assert "the forwarder process ended" in caplog.text
    serve_until(loop, forwarder, lambda: forwarder.process is not None, "the restart")
    assert forwarder.process.pid != first and forwarder.restarts == 1
    assert echoes(site)


def test_closing_ends_the_process(handle, site, backend):
    forwarder, _, _ = handle(forwards_config(site, backend))
    child = forwarder.process
    forwarder.close()
    assert child.poll() is not None and forwarder.process is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((site + "1", 8080), timeout=5)


# -- in the router ----------------------------------------------------------------------

def test_a_router_with_only_forwards_starts_and_shows_them(site, backend):
    router = Router(parse_config({"forwards": forwards_config(site, backend)}), None,
                    MemorySystem())
    try:
        router.start()
        assert echoes(site)
        wait = time.monotonic() + 15
        while router.status()["forwards"]["web"].get("connections_total") != 1:
            assert time.monotonic() < wait
            router.run_once(0.05)
        status = router.status()
        assert status["tunnels"] == {} and status["internal_errors"] == 0
        assert is_status(status)
        text = render_status(status)
        assert f"forward: web\n  tcp {site}1:8080 -> {backend.address} (listening)" in text
        assert "  connections: 0 open, 1 in all\n  bytes: 4 to the backend, 4 to clients" in text
    finally:
        router.close()
    assert router.forwarder.process is None


def test_start_problems_of_tunnels_and_forwards_come_together(site, backend):
    taken = socket.create_server((site + "1", 8080))
    system = MemorySystem()
    system.add_foreign_device("gre1")
    router = Router(parse_config({"tunnels": {"gre1": every_mode(A, ["10.0.0.2"], 1)["gre1"]},
                                  "forwards": forwards_config(site, backend)}), None, system)
    try:
        with pytest.raises(StartError) as caught:
            router.start()
    finally:
        taken.close()
    assert [path for path, _ in caught.value.problems] == ["tunnels.gre1", "forwards.web.listen"]
    assert router.forwarder.process is None   # closed: nothing left running


def test_the_forwarder_process_does_not_outlive_a_killed_router(site, backend, tmp_path):
    config = tmp_path / "forwards.yaml"
    control = tmp_path / "control.sock"
    config.write_text(json.dumps({"control-socket": str(control),
                                  "forwards": forwards_config(site, backend)}))
    router = subprocess.Popen([TUNNELROUTER, "run", str(config)], stderr=subprocess.PIPE)
    try:
        wait_until(control.exists, "the router to start", timeout=30)
        (child,) = Path(f"/proc/{router.pid}/task/{router.pid}/children").read_text().split()
        assert echoes(site)
        router.kill()
        router.wait()
        wait_until(lambda: not Path(f"/proc/{child}").exists()
                   or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2],
                   "the forwarder to leave with its router")
    finally:
        router.kill()
        router.wait()
