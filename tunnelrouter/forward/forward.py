"""What every forward has, TCP or UDP: its settings, its counters, its listening socket, and
the decision whether a new client may have a connection (or a session)."""

from __future__ import annotations

import errno
import logging
import socket

from tunnelrouter.forward.config import Endpoint, ForwardConfig
from tunnelrouter.forward.counters import ForwardCounters
from tunnelrouter.forward.limits import AccessList, SourceRate
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop

log = logging.getLogger("tunnelrouter")

LISTEN_BACKLOG = 4096      # the kernel caps it at net.core.somaxconn
UDP_RECEIVE_BUFFER = 4 << 20
SO_RCVBUFFORCE = 33        # asm-generic/socket.h; Python 3.11 has no name for it


class Forward:
    """One forward's settings made real. ``accepting`` is false once a reload replaced or
    removed it: it then only serves the connections it has until they end (``draining``)."""

    protocol: str

    def __init__(self, config: ForwardConfig, loop: Loop, counters: ForwardCounters,
                 warn_once):
        self.config = config
        self.loop = loop
        self.counters = counters
        self.warn_once = warn_once
        self.access = AccessList(config.allow, config.deny)
        self.rate = SourceRate(config.rate) if config.rate else None
        self.listener: socket.socket | None = None
        self.accepting = False
        self.family = socket.AF_INET6 if config.to.family == 6 else socket.AF_INET
        self.backend = (str(config.to.address), config.to.port)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def draining(self) -> bool:
        return not self.accepting and self.counters_open() > 0

    def counters_open(self) -> int:
        """Connections (sessions) this forward object serves now."""
        raise NotImplementedError

    def refusal(self, source: str, now: float) -> str | None:
        """Why a new client from ``source`` gets nothing, or None: it may have one."""
        if not self.access.permits(source):
            return "denied"
        if self.counters_open() >= self.config.max_connections:
            return "max_connections"
        if self.rate is not None and not self.rate.take(source, now):
            return "rate"
        return None

    # -- the listener ---------------------------------------------------------------------

    def listen(self, listener: socket.socket | None = None) -> None:
        """Serve on ``listener`` (a predecessor's, for the same end) or on a new one."""
        self.listener = listener or open_listener(self.config.listen, self.protocol)
        self.accepting = True
        self.loop.watch(self.listener.fileno(), self.on_listener)

    def hand_over(self) -> socket.socket | None:
        """Stop serving the listener and give it to a successor for the same end."""
        listener, self.listener = self.listener, None
        self.accepting = False
        if listener is not None:
            self.loop.forget(listener.fileno())
        return listener

    def stop_accepting(self) -> None:
        """Removed or replaced: no new clients; what is open goes on until it ends."""
        listener = self.hand_over()
        if listener is not None:
            listener.close()

    def on_listener(self, events: int) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        if self.rate is not None:
            self.rate.expire(now)

    def close(self) -> None:
        """End everything now (the router stops)."""
        self.stop_accepting()

    def status(self) -> dict:
        config = self.config
        state = "listening" if self.accepting else \
            "draining (removed or changed by a reload)" if self.draining else "stopped"
        return {"protocol": config.protocol, "listen": str(config.listen),
                "to": str(config.to), "state": state} | self.counters.status(config.protocol)


def open_listener(end: Endpoint, protocol: str) -> socket.socket:
    """A non-blocking socket bound to ``end`` (and listening, for TCP); SystemProblem
    saying what to do when the kernel refuses."""
    family = socket.AF_INET6 if end.family == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # [::]:80 is IPv6 only, so that 0.0.0.0:80 can be another forward.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Inherited by every accepted socket: a relay should not hold back small writes.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            grow_receive_buffer(sock, UDP_RECEIVE_BUFFER)
        sock.bind((str(end.address), end.port))
        if protocol == "tcp":
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise SystemProblem(f"cannot listen on {end} ({protocol}): {error.strerror}"
                            f"{_listen_hint(error, end)}") from None
    return sock


def grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """As large as asked where we may (root: past net.core.rmem_max), else the kernel's most."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _listen_hint(error: OSError, end: Endpoint) -> str:
    if error.errno == errno.EADDRINUSE:
        return " (another program, or another tunnelrouter, has it)"
    if error.errno == errno.EADDRNOTAVAIL:
        return f" ({end.address} is not an address of this host: add it to an interface)"
    if error.errno in (errno.EACCES, errno.EPERM) and end.port < 1024:
        return " (ports below 1024 need CAP_NET_BIND_SERVICE)"
    return ""
