"""sd_notify without libsystemd: the messages a Type=notify service sends, read from a
NOTIFY_SOCKET of the test's own; nothing at all outside systemd; a socket that is gone is
logged once and never raised."""

import os
import socket
import time

import pytest

from tunnelrouter.io.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def messages(sock: socket.socket) -> list[dict[str, str]]:
    found = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(4096).decode()
        except BlockingIOError:
            return found
        found.append(dict(line.split("=", 1) for line in data.split("\n")))


def test_ready_reloading_status_watchdog_and_stopping_as_systemd_reads_them(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready("4 tunnels")
    notifier.reloading()
    notifier.status("reloaded: generation 2")
    notifier.watchdog()
    notifier.stopping()
    got = messages(sock)
    assert got[0] == {"READY": "1", "STATUS": "4 tunnels"}
    assert got[1]["RELOADING"] == "1" and int(got[1]["MONOTONIC_USEC"]) >= before
    assert got[2:] == [{"STATUS": "reloaded: generation 2"}, {"WATCHDOG": "1"},
                       {"STOPPING": "1"}]
    notifier.close()


def test_an_abstract_notify_socket_is_written_with_an_at_sign():
    name = f"trt-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"


def test_outside_systemd_nothing_is_sent_and_no_watchdog_is_asked_for():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("up")
    notifier.watchdog()


@pytest.mark.parametrize("environment, interval", [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),    # another process's
    ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "soon"}, None),
])
def test_the_watchdog_is_fed_at_half_the_interval_systemd_asks_for(environment, interval):
    assert Notifier(environment).watchdog_interval == interval


def test_a_notify_socket_that_is_gone_is_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    for _ in range(3):
        notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1
