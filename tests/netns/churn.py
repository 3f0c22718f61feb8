"""Churn through a forwards-only tunnelrouter: many short TCP connections and many UDP
clients, then the forwarder process's descriptors and memory must be back where they were.

Everything runs in one namespace over loopback: the router forwards 127.0.0.1:8080 (TCP)
and :5353 (UDP) to a backend on 127.0.0.2:7000. Each client has an address of its own in
127.16.0.0/12, so 100 000 of them need no port twice. ``run`` does one whole churn and
returns its figures; ``tests/netns/test_forward_churn.py`` runs it small in the suite,
``scripts/churn_forward.py`` with 100 000 of each. Run as a script inside the namespace,
this file is the two ends: ``backend PORT`` and ``client tcp|udp HOST PORT COUNT``.

A baseline is taken after a warm-up churn, not at start, and the forwarder is looked at
after each round of the churn: the first connections grow Python's arenas and the tables
to their working size once (the first round may still add a little, as the churn runs
faster than the warm-up); a leak grows them with every round.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import sys
import time
from pathlib import Path

IN_FLIGHT = 64          # clients at once
CLIENT_TIMEOUT = 10.0   # seconds a client may wait for its answer


def client_address(number: int) -> str:
    return f"127.{16 + (number >> 16)}.{(number >> 8) & 255}.{number & 255}"


def backend(port: int) -> None:
    """TCP: read one byte, answer one, close (the backend closes first, as a server that
    answers and hangs up does). UDP: echo."""
    selector = selectors.DefaultSelector()
    listener = socket.create_server(("127.0.0.2", port), backlog=4096)
    listener.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.2", port))
    udp.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(udp, selectors.EVENT_READ, "udp")
    print(json.dumps({"serving": port}), flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                for _ in range(64):
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "udp":
                for _ in range(64):
                    try:
                        data, address = udp.recvfrom(2048)
                    except BlockingIOError:
                        break
                    udp.sendto(data, address)
            else:
                conn = key.fileobj
                try:
                    if conn.recv(1):
                        conn.send(b"y")
                except OSError:
                    pass
                selector.unregister(conn)
                conn.close()


def tcp_clients(host: str, port: int, count: int) -> dict:
    """``count`` connections, ``IN_FLIGHT`` at once: each sends a byte, reads the answer and
    the end. How many got their answer, and how each of the others ended."""
    selector = selectors.DefaultSelector()
    started = done = 0
    failed: dict[str, int] = {}
    deadline: dict[socket.socket, float] = {}

    def start(number: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((client_address(number), 0))
        sock.setblocking(False)
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_WRITE, [b""])
        deadline[sock] = time.monotonic() + CLIENT_TIMEOUT

    def finish(sock: socket.socket, outcome: str | None) -> None:
        nonlocal done
        selector.unregister(sock)
        del deadline[sock]
        sock.close()
        if outcome is None:
            done += 1
        else:
            failed[outcome] = failed.get(outcome, 0) + 1

    while done + sum(failed.values()) < count:
        while started < count and len(deadline) < IN_FLIGHT:
            start(started)
            started += 1
        for key, events in selector.select(0.5):
            sock, received = key.fileobj, key.data
            try:
                if events & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        finish(sock, errno.errorcode.get(error, str(error)))
                        continue
                    sock.send(b"x")
                    selector.modify(sock, selectors.EVENT_READ, received)
                    continue
                chunk = sock.recv(16)
            except OSError as error:
                finish(sock, errno.errorcode.get(error.errno, str(error.errno)))
                continue
            if chunk:
                received[0] += chunk
            else:
                finish(sock, None if received[0] == b"y" else "no answer")
        now = time.monotonic()
        for sock in [sock for sock, until in deadline.items() if until < now]:
            finish(sock, "timeout")
    return {"done": done, "failed": failed}


def udp_clients(host: str, port: int, count: int) -> dict:
    """``count`` clients, each from an address of its own: one datagram, one answer."""
    selector = selectors.DefaultSelector()
    started = done = 0
    failed = 0
    deadline: dict[socket.socket, float] = {}
    while done + failed < count:
        while started < count and len(deadline) < IN_FLIGHT:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((client_address(started), 0))
            sock.setblocking(False)
            sock.sendto(b"u", (host, port))
            selector.register(sock, selectors.EVENT_READ)
            deadline[sock] = time.monotonic() + CLIENT_TIMEOUT
            started += 1
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            try:
                answered = sock.recv(16) == b"u"
            except OSError:
                answered = False
            selector.unregister(sock)
            del deadline[sock]
            sock.close()
            done, failed = (done + 1, failed) if answered else (done, failed + 1)
        now = time.monotonic()
        for sock in [sock for sock, until in deadline.items() if until < now]:
            selector.unregister(sock)
            del deadline[sock]
            sock.close()
            failed += 1
    return {"done": done, "failed": {"no answer": failed} if failed else {}}


# -- the whole churn, from the test or the script -------------------------------------------

def run(ns, directory: Path, rounds: int, size: int, warm_up: int) -> dict:
    """Warm up, take the baseline, then ``rounds`` times ``size`` TCP connections and as
    many UDP clients; return what the forwarder process held before and after each round,
    with the clients' results."""
    from tests.netns.conftest import PYTHON
    from tests.netns.routers import show, start_router, wait_for, wait_for_text, wait_until

    ns.sysctl("net.ipv4.ip_local_port_range", "10000 65000")
    this = str(Path(__file__).resolve())
    server = ns.popen(PYTHON, this, "backend", "7000")
    wait_for_text(server.stdout, "serving", 10)
    config = {"forwards": {
        "tcp": {"listen": "127.0.0.1:8080", "to": "127.0.0.2:7000", "max-connections": 10000},
        "udp": {"listen": "127.0.0.1:5353", "protocol": "udp", "to": "127.0.0.2:7000",
                "idle-timeout": "1s", "max-connections": 10000}}}
    router, control = start_router(ns, config, directory, "churn")
    wait_for(control, router)
    children = Path(f"/proc/{router.pid}/task/{router.pid}/children").read_text().split()
    worker = int(children[0])

    def clients(kind: str, number: int) -> dict:
        result = ns.run(PYTHON, this, "client", kind, "127.0.0.1",
                        "8080" if kind == "tcp" else "5353", str(number),
                        timeout=max(60.0, number / 100))
        return json.loads(result.stdout)

    def settled() -> dict:
        def idle() -> bool:
            forwards = show(control)["forwards"]
            return forwards["tcp"]["connections_open"] == 0 and \
                forwards["udp"]["sessions_open"] == 0
        wait_until(idle, 30, "every connection and session to end")
        time.sleep(0.3)   # the forwarder's status is at most a quarter second old
        wait_until(idle, 30, "every connection and session to end")
        status = Path(f"/proc/{worker}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        return {"descriptors": len(os.listdir(f"/proc/{worker}/fd")), "rss_kib": rss}

    clients("tcp", warm_up)
    clients("udp", warm_up)
    before = settled()
    totals = {"tcp": {"done": 0, "failed": {}, "seconds": 0.0},
              "udp": {"done": 0, "failed": {}, "seconds": 0.0}}
    held = []
    for _ in range(rounds):
        for kind, total in totals.items():
            started = time.monotonic()
            result = clients(kind, size)
            total["seconds"] = round(total["seconds"] + time.monotonic() - started, 1)
            total["done"] += result["done"]
            for outcome, number in result["failed"].items():
                total["failed"][outcome] = total["failed"].get(outcome, 0) + number
        held.append(settled())
    return {"count": rounds * size, "warm_up": warm_up, "before": before, "rounds": held,
            **totals, "forwards": show(control)["forwards"]}


def main(argv: list[str]) -> None:
    if argv[0] == "backend":
        backend(int(argv[1]))
        return
    kind, host, port, count = argv[1], argv[2], int(argv[3]), int(argv[4])
    result = (tcp_clients if kind == "tcp" else udp_clients)(host, port, count)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
