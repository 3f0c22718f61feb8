"""UDP forwards: a session per client address, like a NAT mapping.

A datagram from a new client address opens a session: a socket connected to the
backend, so that the kernel gives it only the backend's replies, and each reply goes
back to that one client from the listening socket. A session ends after the idle
timeout without a datagram either way (or at its maximum lifetime). Datagrams are
relayed whole, up to 65 507 bytes (the most IPv4 carries; the receive buffer is
larger, so nothing is cut).

A forward that a reload changed hands its listening socket to its successor, which
keeps passing the old sessions' datagrams to them (``previous``) until they end; one
that was removed keeps its socket for its sessions alone.
"""

from __future__ import annotations

import socket
import time
from collections import deque

from tunnelrouter.forward.forward import Forward
from tunnelrouter.forward.limits import RecentlyUsed

DATAGRAM_BATCH = 64          # datagrams per wakeup: the other sockets get their turn
BUFFER = 65536               # more than any UDP payload: a datagram is never cut


class Session:
    __slots__ = ("forward", "client", "upstream", "listener")

    def __init__(self, forward: UdpForward, client: tuple, upstream: socket.socket,
                 listener: socket.socket):
        self.forward = forward
        self.client = client
        self.upstream = upstream
        self.listener = listener

    def on_reply(self, _events: int) -> None:
        forward = self.forward
        counters, view = forward.counters, forward.view
        upstream, listener, client = self.upstream, self.listener, self.client
        for _ in range(DATAGRAM_BATCH):
            try:
                size = upstream.recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                # The backend's host said port unreachable about an earlier datagram.
                counters.dropped["backend_unreachable"] += 1
                continue
            except OSError:
                counters.dropped["backend_unreachable"] += 1
                break
            try:
                listener.sendto(view[:size], client)
            except OSError:
                counters.dropped["send_failed"] += 1
                continue
            counters.datagrams_to_client += 1
            counters.bytes_to_client += size
        forward.sessions.use(client, time.monotonic())

    def close(self) -> None:
        self.forward.loop.forget(self.upstream.fileno())
        self.upstream.close()


class UdpForward(Forward):
    protocol = "udp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sessions = RecentlyUsed(self.config.max_connections)   # client -> Session
        self.lifetimes: deque[tuple[float, Session]] = deque()
        self.previous: list[UdpForward] = []   # forwards this one took the socket from
        self.view = memoryview(bytearray(BUFFER))

    def counters_open(self) -> int:
        return len(self.sessions)

    def on_listener(self, _events: int) -> None:
        listener, view, counters = self.listener, self.view, self.counters
        sessions = self.sessions
        now = time.monotonic()
        for _ in range(DATAGRAM_BATCH):
            try:
                size, client = listener.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return   # nothing an unconnected socket reports is about one datagram
            session = sessions.get(client)
            if session is None:
                session = self._session(client, now)
                if session is None:
                    continue
            try:
                session.upstream.send(view[:size])
            except OSError:
                # A full buffer, or the backend's host said unreachable about an earlier
                # datagram: this one is lost, as it would be on the way.
                session.forward.counters.dropped["send_failed"] += 1
                continue
            counters = session.forward.counters
            counters.datagrams_to_backend += 1
            counters.bytes_to_backend += size
            session.forward.sessions.use(client, now)

    def _session(self, client: tuple, now: float) -> Session | None:
        """The session of a client this forward has none for: a predecessor's, or a new one
        if the client may have it."""
        for previous in self.previous:
            session = previous.sessions.get(client)
            if session is not None:
                return session
        if not self.accepting:
            return None
        reason = self.refusal(client[0], now)
        if reason is None:
            try:
                upstream = socket.socket(self.family, socket.SOCK_DGRAM)
            except OSError as error:
                self.warn_once(("socket", self.name), f"forward {self.name}: cannot open a "
                               f"socket to the backend: {error.strerror}")
                reason = "connect_failed"
        if reason is not None:
            self.counters.refused[reason] += 1
            return None
        upstream.setblocking(False)
        try:
            upstream.connect(self.backend)
        except OSError:
            upstream.close()
            self.counters.refused["connect_failed"] += 1
            return None
        session = Session(self, client, upstream, self.listener)
        self.sessions.add(client, session, now)
        if self.config.max_lifetime:
            self.lifetimes.append((now + self.config.max_lifetime, session))
        self.counters.open += 1
        self.counters.total += 1
        self.loop.watch(upstream.fileno(), session.on_reply)
        return session

    def stop_accepting(self) -> None:
        """Removed: no new sessions; the socket stays while sessions need it."""
        if self.sessions:
            self.accepting = False
        else:
            super().stop_accepting()

    def tick(self, now: float) -> None:
        super().tick(now)
        for _, session in list(self.sessions.pop_unused_since(now - self.config.idle)):
            self._end(session, "idle_timeout")
        while self.lifetimes and self.lifetimes[0][0] <= now:
            _, session = self.lifetimes.popleft()
            if self.sessions.pop(session.client) is session:
                self._end(session, "max_lifetime")
        self.previous = [previous for previous in self.previous if previous.sessions]
        if not self.accepting and not self.sessions and self.listener is not None:
            super().stop_accepting()   # drained: the socket goes now

    def _end(self, session: Session, why: str) -> None:
        self.counters.ended[why] += 1
        self.counters.open -= 1
        session.close()

    def close(self) -> None:
        super().stop_accepting()
        for session in self.sessions.values():
            session.close()
        self.counters.open -= len(self.sessions)
        self.sessions = RecentlyUsed(self.config.max_connections)
        self.lifetimes.clear()
