"""The forwarder in this process, on loopback: TCP and UDP relayed, limits kept, timeouts,
half-close, PROXY headers, and a new set of forwards applied as a diff. No root: every
test listens on an address of its own in 127.0.0.0/8, so parallel runs do not meet."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import struct
import threading
import time
from contextlib import contextmanager

import pytest

from tunnelrouter.config import parse_config
from tunnelrouter.forward import tcp
from tunnelrouter.forward.forwarder import TICK, Forwarder
from tunnelrouter.io.loop import Loop


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.01)


class Running:
    """A Forwarder served by a thread; ``call`` runs a function between two rounds."""

    def __init__(self):
        self.loop = Loop()
        self.forwarder = Forwarder(self.loop)
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while self._running:
            with self._lock:
                self.loop.run_once(self.forwarder.tick, TICK, 0.01)

    def call(self, function, *args):
        with self._lock:
            return function(*args)

    def apply(self, forwards: dict) -> list:
        return self.call(self.forwarder.apply, parse_config({"forwards": forwards}).forwards)

    def status(self, name: str) -> dict:
        return self.call(self.forwarder.status)[name]

    def stop(self):
        self._running = False
        self._thread.join()
        self.forwarder.close()
        assert self.loop.faults == 0, "the loop caught an exception: a bug"
        self.loop.close()


@pytest.fixture
def running():
    forwarder = Running()
    try:
        yield forwarder
    finally:
        forwarder.stop()


@pytest.fixture
def site():
    """A /24 of loopback addresses of this test's own: 127.X.Y.0."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}."


class Backend:
    """A TCP server in a thread: ``serve(conn)`` for each connection."""

    def __init__(self, address: str, serve, backlog: int = 64):
        self.sock = socket.create_server((address, 0), backlog=backlog)
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.serve = serve
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            self.serve(conn)
        except OSError:
            pass
        finally:
            conn.close()


def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def connect(address: str, port: int, source: str | None = None):
    sock = socket.create_connection((address, port), timeout=10,
                                    source_address=(source, 0) if source else None)
    try:
        yield sock
    finally:
        sock.close()


def assert_reset(address: str, port: int, source: str | None = None) -> None:
    """The forward resets a new connection (on loopback the reset may beat connect())."""
    with pytest.raises(ConnectionResetError):
        with connect(address, port, source) as client:
            client.recv(1)


# -- TCP --------------------------------------------------------------------------------

def test_tcp_bytes_go_both_ways_whole_and_are_counted(running, site):
    backend = Backend(site + "2", echo)
    assert running.apply({"web": {"listen": site + "1:8080", "to": backend.address}}) == []
    payload = os.urandom(3_000_000)
    with connect(site + "1", 8080) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        received = b""
        while len(received) < len(payload):
            received += client.recv(1 << 20)
        sender.join()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    wait_until(lambda: running.status("web")["connections_open"] == 0, "the connection to end")
    status = running.status("web")
    assert status["bytes_to_backend"] == status["bytes_to_client"] == len(payload)
    assert status["connections_total"] == 1 and status["state"] == "listening"
    assert not any(status["refused"].values()) and not any(status["ended"].values())


def test_where_splice_is_refused_the_flows_copy_and_lose_nothing(running, site, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(tcp, "_splice", refuse)

    def answer_after_eof(conn):
        conn.sendall(read_all(conn) * 100)
    backend = Backend(site + "2", answer_after_eof)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})
    payload = os.urandom(200_000)
    with connect(site + "1", 8080) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == payload * 100
    wait_until(lambda: running.status("web")["bytes_to_client"] == 100 * len(payload),
               "the count")


def test_a_client_that_shuts_its_write_side_still_gets_the_whole_response(running, site):
    def answer_after_eof(conn):
        request = read_all(conn)           # only a passed-on FIN ends this
        conn.sendall(request * 1000)
    backend = Backend(site + "2", answer_after_eof)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})
    with connect(site + "1", 8080) as client:
        client.sendall(b"x" * 2000)
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b"x" * 2_000_000


def test_a_backend_that_shuts_its_write_side_still_gets_what_the_client_sends(running, site):
    got = []

    def greet_then_listen(conn):
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        got.append(read_all(conn))
    backend = Backend(site + "2", greet_then_listen)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})
    with connect(site + "1", 8080) as client:
        assert read_all(client) == b"hello"          # the backend's FIN came through
        client.sendall(b"y" * 1_000_000)
    wait_until(lambda: got, "the backend to read to the end")
    assert got == [b"y" * 1_000_000]


def test_a_backend_that_resets_while_the_fin_is_passed_on_resets_the_client(running, site):
    # The FIN goes to a socket the backend has just reset: shutdown() fails, and that ends
    # the connection as a reset (the fixture fails the test on any internal error).
    def reset_at_once(conn):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    backend = Backend(site + "2", reset_at_once)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})
    for _ in range(100):
        try:
            with connect(site + "1", 8080) as client:
                client.sendall(b"q" * 1000)
                client.shutdown(socket.SHUT_WR)
                assert client.recv(10) == b""
        except OSError:
            pass   # reset: the client may learn it at any of these calls
    wait_until(lambda: running.status("web")["connections_open"] == 0, "every one to end")


def test_a_refused_backend_resets_the_client_and_is_counted(running, site):
    running.apply({"web": {"listen": site + "1:8080", "to": site + "2:9"}})
    assert_reset(site + "1", 8080)
    assert running.status("web")["refused"]["connect_refused"] == 1
    assert running.status("web")["connections_open"] == 0


def test_a_backend_that_never_answers_times_out_and_is_counted(running, site):
    # A listener whose queue is full drops the next SYN: the connect waits, unanswered.
    stuck = socket.create_server((site + "2", 0), backlog=0)
    filler = socket.create_connection(stuck.getsockname())
    running.apply({"web": {"listen": site + "1:8080", "connect-timeout": "300ms",
                           "to": f"{site}2:{stuck.getsockname()[1]}"}})
    assert_reset(site + "1", 8080)
    assert running.status("web")["refused"]["connect_timeout"] == 1
    filler.close()
    stuck.close()


def test_allow_and_deny_reset_other_sources_and_count_them(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address,
                           "allow": [site + "0/24"], "deny": [site + "66/32"]}})
    with connect(site + "1", 8080, source=site + "10") as client:
        client.sendall(b"in")
        assert client.recv(2) == b"in"
    for source in (site + "66", "127.0.0.1" if not site.startswith("127.0.0.") else "127.9.9.9"):
        assert_reset(site + "1", 8080, source=source)
    assert running.status("web")["refused"]["denied"] == 2


def test_connections_over_the_limit_are_reset_and_counted(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address,
                           "max-connections": 2}})
    with connect(site + "1", 8080) as first, connect(site + "1", 8080) as second:
        for client in (first, second):
            client.sendall(b"k")
            assert client.recv(1) == b"k"
        assert_reset(site + "1", 8080)
    assert running.status("web")["refused"]["max_connections"] == 1
    wait_until(lambda: running.status("web")["connections_open"] == 0, "both to end")
    with connect(site + "1", 8080) as again:
        again.sendall(b"k")
        assert again.recv(1) == b"k"


def test_a_source_over_its_rate_is_reset_and_counted(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address, "rate": "2/h"}})
    for _ in range(2):
        with connect(site + "1", 8080, source=site + "10") as client:
            client.sendall(b"r")
            assert client.recv(1) == b"r"
    assert_reset(site + "1", 8080, source=site + "10")
    with connect(site + "1", 8080, source=site + "11") as other:   # its own bucket
        other.sendall(b"r")
        assert other.recv(1) == b"r"
    assert running.status("web")["refused"]["rate"] == 1


def test_an_idle_connection_is_closed_and_counted(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address,
                           "idle-timeout": "200ms"}})
    with connect(site + "1", 8080) as client:
        client.sendall(b"a")
        assert client.recv(1) == b"a"
        assert client.recv(1) == b""     # nothing either way: the forward closed it
    assert running.status("web")["ended"]["idle_timeout"] == 1


def test_a_busy_connection_ends_at_its_maximum_lifetime(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address,
                           "max-lifetime": "300ms"}})
    with connect(site + "1", 8080) as client:
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(1000):
                client.sendall(b"b")
                if client.recv(1) == b"":
                    raise ConnectionResetError
                time.sleep(0.01)
    assert running.status("web")["ended"]["max_lifetime"] == 1


@pytest.mark.parametrize("version, expected", [
    ("v1", lambda c, d: f"PROXY TCP4 {c[0]} {d[0]} {c[1]} {d[1]}\r\n".encode()),
    ("v2", lambda c, d: bytes.fromhex("0d0a0d0a000d0a515549540a2111000c")
     + socket.inet_aton(c[0]) + socket.inet_aton(d[0])
     + c[1].to_bytes(2, "big") + d[1].to_bytes(2, "big")),
])
def test_the_backend_reads_the_proxy_header_first(running, site, version, expected):
    received = []

    def record(conn):
        received.append(read_all(conn))
    backend = Backend(site + "2", record)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address,
                           "proxy-protocol": version}})
    with connect(site + "1", 8080, source=site + "7") as client:
        client.sendall(b"GET /")
        me = client.getsockname()
    wait_until(lambda: received, "the backend to read")
    assert received[0] == expected(me, (site + "1", 8080)) + b"GET /"


def test_clients_that_say_nothing_or_half_open_block_no_one(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})
    silent = [socket.create_connection((site + "1", 8080), timeout=5) for _ in range(100)]
    half_open = [socket.create_connection((site + "1", 8080), timeout=5) for _ in range(100)]
    for sock in half_open:
        sock.shutdown(socket.SHUT_WR)
    with connect(site + "1", 8080) as client:
        client.sendall(b"still served")
        assert client.recv(12) == b"still served"
    # The half-open ones ended as the echo backend, told of their FIN, closed its side.
    wait_until(lambda: running.status("web")["connections_open"] == 100, "the silent ones alone")
    assert all(sock.recv(1) == b"" for sock in half_open)
    for sock in silent + half_open:
        sock.close()


def test_a_thousand_connections_leave_no_descriptor_behind(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address}})

    def one():
        with connect(site + "1", 8080) as client:
            client.sendall(b"z")
            assert client.recv(1) == b"z"
    one()
    wait_until(lambda: running.status("web")["connections_open"] == 0, "the first to end")
    before = len(os.listdir("/proc/self/fd")) - len(backend.accepted)
    for _ in range(1000):
        one()
    wait_until(lambda: running.status("web")["connections_open"] == 0, "all to end")
    wait_until(lambda: len(os.listdir("/proc/self/fd")) - len(backend.accepted) <= before,
               "the descriptors to be closed")
    assert running.status("web")["connections_total"] == 1001


# -- UDP --------------------------------------------------------------------------------

@pytest.fixture
def udp_echo(site):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((site + "2", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    seen = []

    def serve():
        while True:
            try:
                data, address = sock.recvfrom(65536)
            except OSError:
                return
            seen.append(address)
            sock.sendto(data, address)
    threading.Thread(target=serve, daemon=True).start()
    yield f"{site}2:{sock.getsockname()[1]}", seen
    sock.close()


def udp_client(source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if source:
        sock.bind((source, 0))
    return sock


def test_udp_datagrams_up_to_65507_bytes_come_back_whole_to_their_own_client(running, site,
                                                                            udp_echo):
    backend, _ = udp_echo
    running.apply({"dns": {"listen": site + "1:5353", "protocol": "udp", "to": backend}})
    one, two = udp_client(), udp_client()
    for size in (1, 1400, 9000, 65507):
        first, second = os.urandom(size), os.urandom(size)
        one.sendto(first, (site + "1", 5353))
        two.sendto(second, (site + "1", 5353))
        assert one.recv(65536) == first and two.recv(65536) == second
    status = running.status("dns")
    assert status["sessions_open"] == status["sessions_total"] == 2
    assert status["datagrams_to_backend"] == status["datagrams_to_client"] == 8
    assert status["bytes_to_client"] == 2 * (1 + 1400 + 9000 + 65507)


def test_udp_sessions_end_when_idle_and_the_next_datagram_opens_another(running, site,
                                                                       udp_echo):
    backend, seen = udp_echo
    running.apply({"dns": {"listen": site + "1:5353", "protocol": "udp", "to": backend,
                           "idle-timeout": "200ms"}})
    client = udp_client()
    client.sendto(b"1", (site + "1", 5353))
    assert client.recv(10) == b"1"
    wait_until(lambda: running.status("dns")["sessions_open"] == 0, "the session to expire")
    client.sendto(b"2", (site + "1", 5353))
    assert client.recv(10) == b"2"
    status = running.status("dns")
    assert status["ended"]["idle_timeout"] == 1 and status["sessions_total"] == 2
    assert seen[0] != seen[1]   # a new session: a new socket towards the backend


def test_udp_clients_over_the_limit_or_denied_are_dropped_and_counted(running, site, udp_echo):
    backend, _ = udp_echo
    running.apply({"dns": {"listen": site + "1:5353", "protocol": "udp", "to": backend,
                           "max-connections": 1, "deny": [site + "66/32"]}})
    first, second, denied = udp_client(), udp_client(), udp_client(site + "66")
    first.sendto(b"a", (site + "1", 5353))
    assert first.recv(10) == b"a"
    second.sendto(b"b", (site + "1", 5353))
    denied.sendto(b"c", (site + "1", 5353))
    wait_until(lambda: sum(running.status("dns")["refused"].values()) == 2, "both refusals")
    assert running.status("dns")["refused"] | {"rate": 0} == {
        "denied": 1, "rate": 0, "max_connections": 1, "connect_failed": 0}


# -- applying a new set of forwards -----------------------------------------------------

def test_an_unchanged_forward_is_not_touched_by_apply(running, site):
    backend = Backend(site + "2", echo)
    forwards = {"web": {"listen": site + "1:8080", "to": backend.address}}
    running.apply(forwards)
    before = running.forwarder.forwards["web"]
    with connect(site + "1", 8080) as client:
        client.sendall(b"1")
        assert client.recv(1) == b"1"
        assert running.apply(forwards | {"other": {"listen": site + "1:8081",
                                                   "to": backend.address}}) == []
        assert running.forwarder.forwards["web"] is before
        client.sendall(b"2")
        assert client.recv(1) == b"2"


def test_a_changed_forward_keeps_its_connections_on_the_old_backend(running, site):
    old = Backend(site + "2", lambda conn: (conn.sendall(b"old"), echo(conn)))
    new = Backend(site + "3", lambda conn: (conn.sendall(b"new"), echo(conn)))
    running.apply({"web": {"listen": site + "1:8080", "to": old.address}})
    listener = running.forwarder.forwards["web"].listener
    with connect(site + "1", 8080) as kept:
        assert kept.recv(3) == b"old"
        assert running.apply({"web": {"listen": site + "1:8080", "to": new.address,
                                      "idle-timeout": "1h"}}) == []
        # The same socket, handed over: no client was turned away in between.
        assert running.forwarder.forwards["web"].listener is listener
        with connect(site + "1", 8080) as fresh:
            assert fresh.recv(3) == b"new"
        kept.sendall(b"still")
        assert kept.recv(5) == b"still"
        # The fresh client has closed; the forwarder sees it when its loop next runs.
        wait_until(lambda: running.status("web")["connections_open"] == 1,
                   "the fresh connection to be closed, the kept one open")
    wait_until(lambda: running.call(lambda: running.forwarder.retired) == [],
               "the old forward to be dropped once its connection ended")
    assert running.status("web")["connections_total"] == 2   # counters go on by name


def test_a_removed_forward_stops_accepting_and_its_connections_run_to_their_end(running, site):
    backend = Backend(site + "2", echo)
    running.apply({"web": {"listen": site + "1:8080", "to": backend.address},
                   "keep": {"listen": site + "1:8081", "to": backend.address}})
    with connect(site + "1", 8080) as client:
        client.sendall(b"1")
        assert client.recv(1) == b"1"
        running.apply({"keep": {"listen": site + "1:8081", "to": backend.address}})
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((site + "1", 8080), timeout=5)
        assert running.status("web")["state"].startswith("draining")
        client.sendall(b"2")
        assert client.recv(1) == b"2"
    wait_until(lambda: "web" not in running.call(running.forwarder.status), "web to go")


def test_a_changed_udp_forward_keeps_its_sessions_on_the_old_backend(running, site):
    backends = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((site + "2", 0))
        backends.append(sock)

    def answer(sock, word):
        while True:
            try:
                _, address = sock.recvfrom(100)
            except OSError:
                return
            sock.sendto(word, address)
    for sock, word in zip(backends, (b"old", b"new")):
        threading.Thread(target=answer, args=(sock, word), daemon=True).start()
    to = [f"{site}2:{sock.getsockname()[1]}" for sock in backends]
    running.apply({"dns": {"listen": site + "1:5353", "protocol": "udp", "to": to[0]}})
    kept = udp_client()
    kept.sendto(b"?", (site + "1", 5353))
    assert kept.recv(10) == b"old"
    assert running.apply({"dns": {"listen": site + "1:5353", "protocol": "udp",
                                  "to": to[1]}}) == []
    fresh = udp_client()
    fresh.sendto(b"?", (site + "1", 5353))
    assert fresh.recv(10) == b"new"
    kept.sendto(b"?", (site + "1", 5353))
    assert kept.recv(10) == b"old"
    for sock in backends:
        sock.close()


def test_a_forward_that_cannot_listen_is_a_problem_naming_its_key(running, site):
    taken = socket.create_server((site + "1", 8080))
    problems = running.apply({"web": {"listen": site + "1:8080", "to": site + "2:80"},
                              "fine": {"listen": site + "1:8081", "to": site + "2:80"}})
    assert problems == [("forwards.web.listen", f"cannot listen on {site}1:8080 (tcp): "
                         f"Address already in use (another program, or another tunnelrouter, "
                         f"has it)")]
    assert list(running.forwarder.forwards) == ["fine"]
    taken.close()
