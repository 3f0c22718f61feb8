"""The Prometheus endpoint: HTTP on a TCP socket, served inside the event loop, never blocking it.

``GET /metrics`` (or ``HEAD``) is answered with the text exposition format,
rendered in the loop from the router's status at that moment (one consistent
picture, no locks); any other path is 404, any other method 405, a request that
does not parse 400. Every answer closes the connection: a scrape a second is
nothing to keep a connection for, and a closed connection holds no slot.

At most ``MAX_CLIENTS`` clients, each in a slot as ``slots.py`` says (as on the
control socket); a request larger than ``MAX_REQUEST`` is answered 431 and
closed. Nothing a client does stops the router.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Callable

from tunnelrouter.control.metrics import CONTENT_TYPE, families, process_families, render
from tunnelrouter.control.slots import RECEIVE, Client, ClientSlots
from tunnelrouter.forward.config import Endpoint
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop

MAX_CLIENTS = 16
BACKLOG = 64
MAX_REQUEST = 8192       # the request line and headers; Prometheus sends about 300 bytes
_PATH = "/metrics"


class MetricsServer(ClientSlots):
    """Serves ``status()`` (``Router.status``) as metrics on ``endpoint``."""

    max_clients, what, accept_event = MAX_CLIENTS, "metrics", "metrics_accept_failed"

    def __init__(self, endpoint: Endpoint, loop: Loop, status: Callable[[], dict]):
        super().__init__(loop)
        self.endpoint = endpoint
        self.router_status = status
        self.scrapes = 0

    def open(self) -> None:
        """Listen; raise SystemProblem saying why not."""
        family = socket.AF_INET6 if self.endpoint.family == 6 else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((str(self.endpoint.address), self.endpoint.port))
            listener.listen(BACKLOG)
        except OSError as error:
            listener.close()
            raise SystemProblem(f"cannot listen on {self.endpoint}: {error.strerror}"
                                f"{_hint(error, self.endpoint)}") from None
        self._serve(listener)

    def _receive(self, client: Client) -> None:
        while b"\r\n\r\n" not in client.request and b"\n\n" not in client.request:
            try:
                chunk = client.sock.recv(RECEIVE)
            except (BlockingIOError, InterruptedError):
                return
            if not chunk:
                self._close(client)   # gone before it finished asking
                return
            client.request += chunk
            if len(client.request) > MAX_REQUEST:
                client.reply = _response(431, "Request Header Fields Too Large",
                                         b"request too large\n")
                break
        if not client.reply:
            client.reply = self._answer(client.request)
        self._answer_with_reply(client)

    def _answer(self, request: bytes) -> bytes:
        line = request.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, "Bad Request", b"not an HTTP/1 request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != _PATH.encode():
            return _response(404, "Not Found", b"not found: the metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"GET or HEAD\n",
                             extra=b"Allow: GET, HEAD\r\n")
        try:
            body = render(families(self.router_status()) + process_families(_process()))
        except Exception as error:  # noqa: BLE001 - a rendering bug must not cost the router
            self.loop.fault("metrics rendering", error)
            return _response(500, "Internal Server Error", b"internal error; see the log\n")
        self.scrapes += 1
        return _response(200, "OK", body, CONTENT_TYPE, head=method == b"HEAD")

    def status(self) -> dict:
        return {"listen": str(self.endpoint), "clients": len(self.clients),
                "evicted": self.evicted, "scrapes": self.scrapes}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _process() -> dict:
    """This process's CPU time, memory and descriptors, from /proc (proc(5)); what cannot
    be read is left out."""
    found = {}
    try:
        with open("/proc/self/stat", "rb") as file:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = file.read().rsplit(b")", 1)[1].split()
        found["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        found["virtual_memory_bytes"] = int(fields[20])
        found["resident_memory_bytes"] = int(fields[21]) * _PAGE
        found["open_fds"] = len(os.listdir("/proc/self/fd"))
    except (OSError, IndexError, ValueError):
        pass
    found["max_fds"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return found


def _response(code: int, reason: str, body: bytes, content_type: str = "text/plain; "
              "charset=utf-8", head: bool = False, extra: bytes = b"") -> bytes:
    header = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    return header + extra + b"\r\n" + (b"" if head else body)


def _hint(error: OSError, endpoint: Endpoint) -> str:
    if error.errno == errno.EADDRINUSE:
        return " (another program, or another tunnelrouter, listens there: choose another port)"
    if error.errno == errno.EADDRNOTAVAIL:
        return f" ({endpoint.address} is not an address of this host: add it to an interface)"
    if error.errno == errno.EACCES:
        return " (a port below 1024 needs CAP_NET_BIND_SERVICE)"
    return ""
