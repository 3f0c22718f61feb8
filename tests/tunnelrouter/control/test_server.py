"""The control socket, served inside a real event loop on a real Unix socket: one request,
one JSON reply, never a blocked loop whatever the clients do, and a socket path that is
only ever taken from nobody.

Everything runs in the test's thread: the loop is driven with ``run_once``; a server call
that blocked would hang the test, so a timer turns a hang into a failure.
"""

import errno
import json
import os
import socket
import stat
import time

import pytest

from tunnelrouter.control.server import MAX_CLIENTS, MAX_REQUEST, ControlServer
from tunnelrouter.control.slots import CLIENT_TIMEOUT
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop

from tests.tunnelrouter.doubles import ask

pytestmark = pytest.mark.usefixtures("no_hang")


class Served:
    """A server on ``path`` in its own loop; ``answer`` echoes the request it was given
    (or what ``reply`` says), and records it."""

    def __init__(self, path: str):
        self.path = path
        self.loop = Loop()
        self.requests: list[str] = []
        self.reply: dict | None = None
        self.server = ControlServer(path, self.loop, self.answer)
        self.opened: list[socket.socket] = []   # the test's own sockets: closed with it

    def answer(self, request: str) -> dict:
        self.requests.append(request)
        return self.reply if self.reply is not None else {"request": request}

    def run(self) -> None:
        self.loop.run_once(lambda now: None, 1.0, 0.0)

    def client(self, send: bytes = b"") -> socket.socket:
        """A client that connects (and sends ``send``), accepted by one round of the loop."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.opened.append(sock)
        sock.setblocking(False)
        sock.connect(self.path)
        if send:
            sock.send(send)
        self.run()
        return sock

    def close(self) -> None:
        for sock in self.opened:
            sock.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def served(tmp_path):
    served = Served(str(tmp_path / "control.sock"))
    served.server.open()
    yield served
    served.close()


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed this client's connection (whatever it was sent before)."""
    try:
        while chunk := sock.recv(1 << 16):
            del chunk
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


# -- requests and replies ------------------------------------------------------------------

def test_show_gets_one_json_reply_and_the_connection_closes(served):
    reply = ask(served.path, b"show\n", served.run)
    assert reply == json.dumps({"request": "show"}).encode() + b"\n"
    assert served.requests == ["show"] and served.server.clients == {}


def test_the_request_line_is_stripped_and_what_follows_it_ignored(served):
    assert json.loads(ask(served.path, b"  show \r\nshow\nmore", served.run)) == \
        {"request": "show"}
    assert served.requests == ["show"]


def test_a_request_that_arrives_in_pieces_is_answered_once_its_line_is_complete(served):
    client = served.client(b"sh")
    served.run()
    assert served.requests == [] and not closed_by_server(client)
    client.send(b"ow\n")
    served.run()
    assert served.requests == ["show"]
    assert json.loads(client.recv(4096)) == {"request": "show"}
    assert closed_by_server(client)


def test_a_request_without_a_newline_followed_by_eof_is_answered(served):
    reply = ask(served.path, b"show", served.run, shutdown=True)
    assert json.loads(reply) == {"request": "show"}


def test_an_answer_that_raises_is_an_error_reply_and_a_fault_not_a_crash(served):
    def broken(_request):
        raise RuntimeError("a bug")
    served.server.answer = broken
    assert json.loads(ask(served.path, b"show\n", served.run)) == {
        "error": "internal error: RuntimeError('a bug')"}
    assert served.loop.faults == 1
    served.server.answer = served.answer
    assert json.loads(ask(served.path, b"show\n", served.run)) == {"request": "show"}


# -- clients that do not play along ------------------------------------------------------

def test_fifty_silent_clients_do_not_keep_a_fifty_first_from_its_answer(served):
    silent = [served.client() for _ in range(50)]
    assert len(served.server.clients) == MAX_CLIENTS
    assert json.loads(ask(served.path, b"show\n", served.run, rounds=2)) == {"request": "show"}
    # Each one over the limit evicted the one that had waited longest.
    evicted = 51 - MAX_CLIENTS
    assert served.server.evicted == evicted
    assert [closed_by_server(sock) for sock in silent] == \
        [True] * evicted + [False] * (50 - evicted)


def test_silent_clients_are_closed_after_the_client_timeout(served):
    silent = [served.client(), served.client(b"sh")]
    served.server.tick(time.monotonic())
    assert len(served.server.clients) == 2
    served.server.tick(time.monotonic() + CLIENT_TIMEOUT + 1)
    assert served.server.clients == {}
    assert all(closed_by_server(sock) for sock in silent)


def test_with_fifty_idle_clients_connected_another_descriptor_is_served_next_round(served):
    # Half of them send half a request: a server reading until the newline would block.
    for i in range(50):
        served.client(b"sh" if i % 2 else b"")
    device, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    served.opened += [device, host]
    device.setblocking(False)
    read = []
    served.loop.watch(device.fileno(), lambda _events: read.append(device.recv(100)))
    host.send(b"a packet")
    served.run()
    assert read == [b"a packet"]


def test_a_huge_request_is_cut_at_the_limit_and_answered(served):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    served.opened.append(client)
    client.connect(served.path)
    client.setblocking(False)
    sent = 0
    try:
        for _ in range(1024):
            sent += client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    assert sent > MAX_REQUEST
    reply = b""
    for _ in range(20):
        served.run()
        try:
            reply += client.recv(1 << 16)
        except BlockingIOError:
            continue
        if reply.endswith(b"\n"):
            break
    assert json.loads(reply) == {"request": "x" * MAX_REQUEST}
    for _ in range(3):
        served.run()
    assert served.server.clients == {} and served.loop.faults == 0


def big_reply(served) -> bytes:
    """Make the answer far larger than a socket buffer; returns it as sent."""
    served.reply = {"blob": "x" * (8 << 20)}
    return json.dumps(served.reply).encode() + b"\n"


def test_a_large_reply_reaches_a_client_that_reads_it_slowly(served):
    expected = big_reply(served)
    client = served.client(b"show\n")
    reply = b""
    for _ in range(10000):
        served.run()
        try:
            chunk = client.recv(1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            break
        reply += chunk
    assert reply == expected


def test_a_client_that_disconnects_in_the_middle_of_its_reply_is_dropped(served):
    big_reply(served)
    client = served.client(b"show\n")
    served.run()
    assert client.recv(1000)          # the reply had begun
    client.close()
    for _ in range(5):
        served.run()
    assert served.server.clients == {} and served.loop.faults == 0
    assert json.loads(ask(served.path, b"x\n", served.run, rounds=400))["blob"]


def test_a_client_that_keeps_talking_but_never_reads_its_reply_does_not_wake_the_loop(served):
    big_reply(served)
    client = served.client(b"show\n")
    served.run()                           # the reply fills the socket buffers...
    assert len(served.server.clients) == 1
    woken = []
    handle = served.server.handle
    served.server.handle = lambda fd, events: (woken.append(fd), handle(fd, events))
    for _ in range(20):
        client.send(b"more\n")           # ...and the client writes on, reading nothing
        served.run()
    assert woken == [] and len(served.server.clients) == 1


def test_a_client_that_never_reads_a_large_reply_costs_a_slot_until_its_timeout(served):
    big_reply(served)
    served.client(b"show\n")       # and never reads
    for _ in range(20):
        served.run()
    assert len(served.server.clients) == 1 and served.loop.faults == 0
    served.reply = None
    assert json.loads(ask(served.path, b"show\n", served.run)) == {"request": "show"}
    served.server.tick(time.monotonic() + CLIENT_TIMEOUT + 1)
    assert served.server.clients == {}


# -- the socket's path ---------------------------------------------------------------------

def test_the_socket_is_made_with_its_directory_and_mode_660(tmp_path):
    served = Served(str(tmp_path / "run" / "tunnelrouter" / "r.sock"))
    served.server.open()
    try:
        assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o660
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "tunnelrouter").st_mode) & 0o007 == 0
    finally:
        served.close()
    assert not os.path.exists(served.path)


def test_a_regular_file_at_the_path_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "control.sock"
    path.write_text("precious")
    served = Served(str(path))
    with pytest.raises(SystemProblem, match="exists and is not a socket"):
        served.server.open()
    served.close()
    assert path.read_text() == "precious"


def test_a_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)                 # a router that died: the file stays, nobody listens
    served = Served(path)
    served.server.open()
    try:
        assert json.loads(ask(path, b"show\n", served.run)) == {"request": "show"}
    finally:
        served.close()


def test_a_live_socket_is_refused_and_keeps_answering(tmp_path):
    path = str(tmp_path / "control.sock")
    first = Served(path)
    first.server.open()
    second = Served(path)
    try:
        with pytest.raises(SystemProblem, match=f"another tunnelrouter answers on {path}"):
            second.server.open()
        second.close()
        assert json.loads(ask(path, b"show\n", first.run)) == {"request": "show"}
    finally:
        first.close()


def test_a_live_socket_with_a_full_backlog_is_refused_not_taken_for_stale(tmp_path):
    path = str(tmp_path / "control.sock")
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(0)
    waiting = []
    try:
        while True:   # a router too busy to accept: its backlog fills up
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            waiting.append(client)
            client.connect(path)
    except BlockingIOError:
        pass
    served = Served(path)
    try:
        with pytest.raises(SystemProblem, match="another tunnelrouter answers"):
            served.server.open()
    finally:
        served.close()
        for client in waiting:
            client.close()
        busy.close()


def test_close_removes_its_own_socket_and_no_other(tmp_path):
    path = str(tmp_path / "control.sock")
    served = Served(path)
    served.server.open()
    os.unlink(path)                   # someone removed ours and a later router took the path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as later:
        later.bind(path)
        later.listen(1)
        served.close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)      # still the later one's


def test_a_directory_that_cannot_be_made_is_a_problem_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    directory = tmp_path / "file" / "run"
    served = Served(str(directory / "control.sock"))
    with pytest.raises(SystemProblem) as problem:
        served.server.open()
    served.close()
    assert problem.value.message.startswith(
        f"cannot create the control socket's directory {directory}: "
        f"{os.strerror(errno.ENOTDIR)}")
