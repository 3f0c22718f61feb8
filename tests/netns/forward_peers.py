"""The two ends of a forward in the netns tests, run inside a namespace as
``python tests/netns/forward_peers.py ROLE ...``; each prints one JSON line.

``serve PORT``: the backend, on every address of both families until killed:
  TCP PORT     reads until the client's FIN, then answers what it read, 1000 times over,
               and closes (only a forward that passes the FIN on gets an answer);
  TCP PORT+1   echoes;
  UDP PORT     echoes each datagram to its sender.
``tcp HOST PORT [--source A] [--send N] [--shutdown] [--parallel K] [--count C]``:
  C times in turn, K connections at once that each send N bytes (then FIN, with
  --shutdown) and read until the end; prints each one's outcome:
  ``{"received": bytes, "ended": "eof" | "reset" | "timeout"}``.
``udp HOST PORT SIZE...``: one datagram of each size, and the size of each reply.
``http HOST PORT``: ``GET /`` (HTTP/1.0); prints the body.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading

TIMEOUT = 10.0


def serve(port: int) -> None:
    def listener(number: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", number))
        sock.listen(128)
        return sock

    def answer_after_eof(conn: socket.socket) -> None:
        request = b""
        while chunk := conn.recv(65536):
            request += chunk
        conn.sendall(request * 1000)

    def echo(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    def accept(sock: socket.socket, handle) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=lambda: _closing(conn, handle), daemon=True).start()

    for number, handle in ((port, answer_after_eof), (port + 1, echo)):
        threading.Thread(target=accept, args=(listener(number), handle), daemon=True).start()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    print(json.dumps({"serving": port}), flush=True)
    while True:
        data, address = udp.recvfrom(65536)
        udp.sendto(data, address)


def _closing(conn: socket.socket, handle) -> None:
    try:
        handle(conn)
    except OSError:
        pass
    finally:
        conn.close()


def tcp(host: str, port: int, source: str | None, send: int, shutdown: bool,
        parallel: int) -> list[dict]:
    outcomes: list[dict] = [{} for _ in range(parallel)]
    sockets = []
    for index in range(parallel):
        try:
            sockets.append(socket.create_connection((host, port), timeout=TIMEOUT,
                                                    source_address=(source, 0) if source else None))
        except ConnectionResetError:
            outcomes[index] = {"received": 0, "ended": "reset"}
            sockets.append(None)
    for sock in sockets:   # every one connected before any sends: limits see them all
        if sock is not None and send:
            try:
                sock.sendall(b"x" * send)
                if shutdown:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    for index, sock in enumerate(sockets):
        if sock is None:
            continue
        received, ended = 0, "eof"
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
                if send and not shutdown and received >= send:
                    break   # an echo: all came back
        except ConnectionResetError:
            ended = "reset"
        except TimeoutError:
            ended = "timeout"
        if send and not shutdown and received >= send and ended == "eof":
            ended = "echoed"
        outcomes[index] = {"received": received, "ended": ended}
    for sock in sockets:
        if sock is not None:
            sock.close()
    return outcomes


def udp(host: str, port: int, sizes: list[int]) -> list[int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    replies = []
    for size in sizes:
        sock.sendto(bytes(size), (host, port))
        replies.append(len(sock.recv(65536)))
    return replies


def http(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply.split(b"\r\n\r\n", 1)[1].decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("serve").add_argument("port", type=int)
    client = roles.add_parser("tcp")
    client.add_argument("host")
    client.add_argument("port", type=int)
    client.add_argument("--source")
    client.add_argument("--send", type=int, default=1)
    client.add_argument("--shutdown", action="store_true")
    client.add_argument("--parallel", type=int, default=1)
    client.add_argument("--count", type=int, default=1)
    datagrams = roles.add_parser("udp")
    datagrams.add_argument("host")
    datagrams.add_argument("port", type=int)
    datagrams.add_argument("sizes", type=int, nargs="+")
    page = roles.add_parser("http")
    page.add_argument("host")
    page.add_argument("port", type=int)
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.port)
    elif args.role == "tcp":
        print(json.dumps([tcp(args.host, args.port, args.source, args.send, args.shutdown,
                              args.parallel) for _ in range(args.count)]))
    elif args.role == "udp":
        print(json.dumps(udp(args.host, args.port, args.sizes)))
    else:
        print(json.dumps(http(args.host, args.port)))


if __name__ == "__main__":
    sys.exit(main())
