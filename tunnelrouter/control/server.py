"""The control socket: a Unix stream socket served inside the event loop, never blocking it.

A client sends one request line (``show``) and gets one reply (JSON and a
newline), then the connection closes. Every socket is non-blocking: a client
that connects and sends nothing, or reads its reply slowly, costs a slot and
nothing else. There are at most ``MAX_CLIENTS`` slots; a new client evicts the
one that has waited longest without finishing its request, and a client
silent for ``CLIENT_TIMEOUT`` seconds is closed. A failed call on a client
closes that client; nothing here stops the router.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import EPOLLERR, Loop
from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")

MAX_CLIENTS = 32
BACKLOG = 128            # connections the kernel holds until the loop accepts them
CLIENT_TIMEOUT = 5.0
MAX_REQUEST = 1024
_RECEIVE = 4096
_ELSEWHERE = ("give --control-socket (or control-socket:) a writable path, or create it "
              "(systemd: RuntimeDirectory=tunnelrouter)")


class _Client:
    __slots__ = ("sock", "request", "reply", "deadline")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.request = b""
        self.reply = b""
        self.deadline = deadline


class ControlServer:
    """``answer(request line) -> dict`` is called in the loop for each complete request.
    ``owner``: ``(uid, gid)`` the router will run as (``run --user``): the socket becomes
    theirs, so that ``tunnelrouter reload`` as that user reaches it, and so does its directory
    if the router made it, so that the router can remove the socket when it stops."""

    def __init__(self, path: str, loop: Loop, answer: Callable[[str], dict],
                 owner: tuple[int, int] | None = None):
        self.path = path
        self.owner = owner
        self.loop = loop
        self.answer = answer
        self.clients: dict[int, _Client] = {}
        self.evicted = 0
        self._listener: socket.socket | None = None
        self._inode: int | None = None

    def open(self) -> None:
        """Listen on ``path``; a stale socket there is replaced, anything else refused."""
        made_directory = _claim(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o660)
            if self.owner is not None:
                os.chown(self.path, *self.owner)
                if made_directory:
                    os.chown(os.path.dirname(self.path) or ".", *self.owner)
            listener.listen(BACKLOG)
        except OSError as error:
            listener.close()
            raise SystemProblem(f"cannot listen on {self.path}: {error.strerror}"
                                f"{_hint(error)}") from None
        listener.setblocking(False)
        self._listener = listener
        self._inode = os.stat(self.path).st_ino
        self.loop.watch(listener.fileno(), self._accept)

    def _accept(self, _events: int) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # EMFILE and friends: the client stays in the backlog; do not spin on it.
                log.warning("control socket: cannot accept a client: %s", error.strerror,
                            extra=event("control_accept_failed", limited=True,
                                        errno=error.errno))
                return
            if len(self.clients) >= MAX_CLIENTS:
                self._evict_oldest()
            sock.setblocking(False)
            fd = sock.fileno()
            self.clients[fd] = _Client(sock, time.monotonic() + CLIENT_TIMEOUT)
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

    def _receive(self, client: _Client) -> None:
        while True:
            try:
                chunk = client.sock.recv(_RECEIVE)
            except (BlockingIOError, InterruptedError):
                return
            client.request += chunk
            if b"\n" in client.request or not chunk or len(client.request) > MAX_REQUEST:
                break
        line = client.request.split(b"\n", 1)[0][:MAX_REQUEST]
        reply = self._reply(line.decode(errors="replace").strip())
        client.reply = json.dumps(reply).encode() + b"\n"
        client.deadline = time.monotonic() + CLIENT_TIMEOUT
        self._send(client)

    def _reply(self, request: str) -> dict:
        try:
            return self.answer(request)
        except Exception as error:  # noqa: BLE001 - a bad answer must not cost the router
            self.loop.fault("control answer", error)
            return {"error": f"internal error: {error!r}"}

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.debug("control socket: client went away: %s", error.strerror)
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

    def _close(self, client: _Client) -> None:
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
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)   # ours still: not one a later router put there
            except OSError:
                pass


def _claim(path: str) -> bool:
    """Make ``path`` free for our socket: create its directory, remove a stale socket;
    refuse a live one (another router answers there) and anything that is not a socket.
    True if the directory was made here."""
    directory = os.path.dirname(path) or "."
    made = not os.path.isdir(directory)
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
    except OSError as error:
        raise SystemProblem(f"cannot create the control socket's directory {directory}: "
                            f"{error.strerror}; {_ELSEWHERE}") from None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return made
    except OSError as error:
        raise SystemProblem(f"cannot look at {path}: {error.strerror}{_hint(error)}") from None
    if not stat.S_ISSOCK(mode):
        raise SystemProblem(f"{path} exists and is not a socket: remove it, or choose another "
                            f"control-socket path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # nobody listens: a stale socket from a router that died
        except BlockingIOError:
            raise SystemProblem(f"another tunnelrouter answers on {path} (too busy to accept "
                                f"now); stop it first, or give this one another "
                                f"control-socket path") from None
        except OSError as error:
            raise SystemProblem(f"cannot tell whether another tunnelrouter answers on {path}: "
                                f"{error.strerror}") from None
        else:
            raise SystemProblem(f"another tunnelrouter answers on {path}; stop it first, or "
                                f"give this one another control-socket path")
    try:
        os.unlink(path)
    except OSError as error:
        raise SystemProblem(f"cannot remove the stale socket {path}: {error.strerror}") from None
    return made


def _hint(error: OSError) -> str:
    return f"; {_ELSEWHERE}" if error.errno in (errno.EACCES, errno.EPERM) else ""
