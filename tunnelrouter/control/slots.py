"""What the control socket and the metrics endpoint share: clients served inside the event
loop, never blocking it, each in one of a bounded number of slots.

Every socket is non-blocking: a client that connects and sends nothing, or reads its
answer slowly, costs a slot and nothing else. A new client beyond ``max_clients``
evicts the one that has waited longest; a client is closed ``CLIENT_TIMEOUT``
seconds after it connected if its request is not complete, and as long again
after its answer began if it has not read it. Every answer closes the connection.
A failed call on a client closes that client; nothing here stops the router.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

from tunnelrouter.io.loop import EPOLLERR, Loop
from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")

CLIENT_TIMEOUT = 5.0
RECEIVE = 4096


class Client:
    __slots__ = ("sock", "request", "reply", "deadline")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.request = b""
        self.reply = b""
        self.deadline = deadline


class ClientSlots:
    """A listener and its clients. Subclasses open the listener (then ``_serve`` it) and
    read requests (``_receive``: set ``client.reply``, then ``_answer_with_reply``)."""

    max_clients: int
    what: str           # for the log: "control socket", "metrics"
    accept_event: str   # the log event when accepting fails

    def __init__(self, loop: Loop):
        self.loop = loop
        self.clients: dict[int, Client] = {}
        self.evicted = 0
        self._listener: socket.socket | None = None

    def _serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self.loop.watch(listener.fileno(), self._accept)

    def _accept(self, _events: int) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # EMFILE and friends: the client stays in the backlog; do not spin on it.
                log.warning("%s: cannot accept a client: %s", self.what, error.strerror,
                            extra=event(self.accept_event, limited=True, errno=error.errno))
                return
            if len(self.clients) >= self.max_clients:
                self._evict_oldest()
            sock.setblocking(False)
            fd = sock.fileno()
            self.clients[fd] = Client(sock, time.monotonic() + CLIENT_TIMEOUT)
            self.loop.watch(fd, lambda events, fd=fd: self.handle(fd, events))

    def _evict_oldest(self) -> None:
        oldest = min(self.clients.values(), key=lambda client: client.deadline)
        self.evicted += 1
        self._close(oldest)

    def handle(self, fd: int, events: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            if client.reply:
                self._send(client)
            elif events & EPOLLERR:
                self._close(client)
            else:
                self._receive(client)
        except OSError:
            self._close(client)

    def _receive(self, client: Client) -> None:
        raise NotImplementedError

    def _answer_with_reply(self, client: Client) -> None:
        """``client.reply`` is its answer: the slot's time starts again for the sending."""
        client.deadline = time.monotonic() + CLIENT_TIMEOUT
        self._send(client)

    def _send(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.debug("%s: client went away: %s", self.what, error.strerror)
            self._close(client)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self._close(client)
        else:
            # Wake for room to write only: a client that keeps sending while it does not
            # read would otherwise wake the loop again and again until its timeout.
            self.loop.want(client.sock.fileno(), readable=False, writable=True)

    def tick(self, now: float) -> None:
        for client in [c for c in self.clients.values() if c.deadline < now]:
            self._close(client)

    def _close(self, client: Client) -> None:
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        self.loop.forget(fd)
        client.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        if self._listener is not None:
            self.loop.forget(self._listener.fileno())
            self._listener.close()
            self._listener = None
