"""The metrics endpoint, served inside a real event loop on real loopback TCP sockets: the
metrics at /metrics, nothing anywhere else, and a loop that no client can block or fill.

Everything runs in the test's thread: the loop is driven with ``run_once``; a server call
that blocked would hang the test, so a timer turns a hang into a failure.
"""

import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunnelrouter.control.metrics_server import MAX_CLIENTS, MAX_REQUEST, \
    MetricsServer
from tunnelrouter.control.slots import CLIENT_TIMEOUT
from tunnelrouter.forward.config import parse_endpoint
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop

from tests.tunnelrouter.doubles import ask

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: router\r\nAccept: text/plain\r\n\r\n"
STATUS = {"started": 1764760000.5, "internal_errors": 0, "unattributed": {},
          "tunnels": {}, "config": {"generation": 3, "loaded": 1764760100.0}}

pytestmark = pytest.mark.usefixtures("no_hang")


def free_port(address: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class Served:
    """A metrics server on loopback in its own loop, serving ``status`` (a dict the test
    may change) and counting how often it was asked."""

    def __init__(self, address: str = "127.0.0.1"):
        self.where = (address, free_port(address))
        self.loop = Loop()
        self.status = dict(STATUS)
        self.asked = 0
        self.server = MetricsServer(parse_endpoint(f"[{address}]:{self.where[1]}" if ":" in address
                                                   else f"{address}:{self.where[1]}"),
                                    self.loop, self.router_status)
        self.opened: list[socket.socket] = []

    def router_status(self) -> dict:
        self.asked += 1
        return self.status

    def run(self) -> None:
        self.loop.run_once(lambda now: None, 1.0, 0.0)

    def get(self, request: bytes = SCRAPE) -> tuple[int, dict, bytes]:
        """Status code, headers and body of the answer to ``request``."""
        return parse(ask(self.where, request, self.run))

    def client(self, send: bytes = b"", receive_buffer: int | None = None) -> socket.socket:
        """A client that connects (and sends ``send``), accepted by one round of the loop."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.where[0] else socket.AF_INET)
        self.opened.append(sock)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(self.where)
        sock.setblocking(False)
        if send:
            sock.send(send)
        self.run()
        return sock

    def close(self) -> None:
        for sock in self.opened:
            sock.close()
        self.server.close()
        self.loop.close()


def parse(answer: bytes) -> tuple[int, dict, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers["Content-Length"]) == len(body) or not body
    return int(status_line.split()[1]), headers, body


@pytest.fixture
def served():
    served = Served()
    served.server.open()
    yield served
    served.close()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (end of file or a reset), reading what it sent."""
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_scrape_gets_the_status_as_text_format_0_0_4_and_the_connection_closes(served):
    code, headers, body = served.get()
    assert code == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    found = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert found["tunnelrouter_config_generation"].samples[0].value == 3
    assert found["process_resident_memory_bytes"].samples[0].value > 1 << 20
    assert found["process_open_fds"].samples[0].value >= 3
    served.status = STATUS | {"config": {"generation": 4}}
    # Each scrape is rendered from the status of that moment.
    assert b"tunnelrouter_config_generation 4\n" in served.get()[2]
    assert served.server.scrapes == 2 and not served.server.clients


def test_an_ipv6_listener_serves_too():
    served = Served("::1")
    served.server.open()
    try:
        assert served.get()[0] == 200
    finally:
        served.close()


@pytest.mark.parametrize("request_bytes, code", [
    (b"GET / HTTP/1.1\r\n\r\n", 404),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
    (b"GET /metrics/../etc/passwd HTTP/1.0\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),   # a TLS client hello
    (b"GET /metrics\r\n\r\n", 400),                                 # HTTP/0.9
    (b"GET /metrics SPDY/3\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
])
def test_anything_but_a_get_of_the_metrics_is_refused_without_rendering(served, request_bytes,
                                                                          code):
    assert served.get(request_bytes)[0] == code
    assert served.asked == 0
    assert served.get()[0] == 200   # and the next scrape is served


def test_a_head_request_gets_the_headers_only_and_a_query_string_is_ignored(served):
    code, headers, body = served.get(b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n")
    assert (code, body) == (200, b"") and int(headers["Content-Length"]) > 1000


def test_a_request_arriving_a_byte_at_a_time_is_answered_once_it_is_whole(served):
    sock = served.client()
    for byte in SCRAPE[:-1]:
        sock.send(bytes([byte]))
        served.run()
    assert not closed(sock) and served.asked == 0
    sock.send(SCRAPE[-1:])
    answer = b""
    for _ in range(100):
        served.run()
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        answer += chunk
    assert parse(answer)[0] == 200


def test_a_request_larger_than_the_limit_is_refused_and_closed(served):
    code, _, _ = served.get(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * MAX_REQUEST + b"\r\n\r\n")
    assert code == 431 and served.asked == 0 and not served.server.clients


def test_a_silent_client_costs_a_slot_until_its_timeout_and_blocks_no_scrape(served):
    silent = served.client()
    half = served.client(b"GET /metr")
    assert len(served.server.clients) == 2
    assert served.get()[0] == 200             # served while the others wait
    served.server.tick(time.monotonic() + CLIENT_TIMEOUT + 0.1)
    assert not served.server.clients
    assert closed(silent) and closed(half)


def test_too_many_clients_evict_the_longest_waiting_one_and_a_scrape_still_gets_through(served):
    first = served.client()
    others = [served.client() for _ in range(MAX_CLIENTS - 1)]
    assert len(served.server.clients) == MAX_CLIENTS
    assert served.get()[0] == 200
    assert served.server.evicted == 1 and closed(first)
    assert not any(closed(sock) for sock in others)
    assert len(served.server.clients) == MAX_CLIENTS - 1   # the scrape's slot is free again


def test_a_client_that_does_not_read_its_answer_is_closed_at_its_timeout(served):
    # Some 9 MB of metrics: more than the socket buffers of both ends hold.
    served.status = STATUS | {"tunnels": {f"t{i}": tunnel(f"t{i}") for i in range(3000)}}
    sock = served.client(receive_buffer=4096)
    sock.send(SCRAPE * 50)                    # and it keeps sending, too
    for _ in range(20):
        served.run()
    assert len(served.server.clients) == 1    # the answer waits in its slot
    assert served.get()[0] == 200             # others are served meanwhile
    served.server.tick(time.monotonic() + CLIENT_TIMEOUT + 0.1)
    assert not served.server.clients


def test_a_client_that_resets_is_forgotten(served):
    sock = served.client(b"GET /metrics HTTP/1.1\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    served.opened.remove(sock)
    for _ in range(5):
        served.run()
    assert not served.server.clients


def test_a_port_in_use_is_a_problem_that_says_so():
    served = Served()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(served.where)
        other.listen()
        with pytest.raises(SystemProblem) as caught:
            served.server.open()
    served.close()
    assert caught.value.message == (
        f"cannot listen on 127.0.0.1:{served.where[1]}: Address already in use (another "
        f"program, or another tunnelrouter, listens there: choose another port)")


def test_an_address_of_no_interface_is_a_problem_that_says_so():
    loop = Loop()
    server = MetricsServer(parse_endpoint("192.0.2.77:9477"), loop, dict)
    with pytest.raises(SystemProblem) as caught:
        server.open()
    loop.close()
    assert "192.0.2.77 is not an address of this host" in caught.value.message


def test_a_status_that_cannot_be_rendered_is_a_500_and_a_counted_fault(served):
    served.status = {"tunnels": {"t": {"mode": "gre"}}}   # no counters: a bug, not a client's
    assert served.get()[0] == 500
    assert served.loop.faults == 1
    served.status = dict(STATUS)
    assert served.get()[0] == 200


def tunnel(name: str) -> dict:
    return {"name": name, "mode": "gre", "local": "10.0.0.1", "peers": ["10.0.0.2"],
            "mtu": 1476, "effective_mtu": 1476, "path_mtu": {}, "mss_clamp": "off",
            "counters": {"rx_packets": 1, "rx_bytes": 2, "tx_packets": 3, "tx_bytes": 4,
                         "drops": {}}}
