"""The control socket: a Unix stream socket served inside the event loop, never blocking it.

A client sends one request line (``show``) and gets one reply (JSON and a
newline), then the connection closes. At most ``MAX_CLIENTS`` clients, each in a
slot as ``slots.py`` says: nothing a client does stops the router.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from collections.abc import Callable

from tunnelrouter.control.slots import RECEIVE, Client, ClientSlots
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop

MAX_CLIENTS = 32
BACKLOG = 128            # connections the kernel holds until the loop accepts them
MAX_REQUEST = 1024
_ELSEWHERE = ("give --control-socket (or control-socket:) a writable path, or create it "
              "(systemd: RuntimeDirectory=tunnelrouter)")


class ControlServer(ClientSlots):
    """``answer(request line) -> dict`` is called in the loop for each complete request.
    ``owner``: ``(uid, gid)`` the router will run as (``run --user``): the socket becomes
    theirs, so that ``tunnelrouter reload`` as that user reaches it, and so does its directory
    if the router made it, so that the router can remove the socket when it stops."""

    max_clients, what, accept_event = MAX_CLIENTS, "control socket", "control_accept_failed"

    def __init__(self, path: str, loop: Loop, answer: Callable[[str], dict],
                 owner: tuple[int, int] | None = None):
        super().__init__(loop)
        self.path = path
        self.owner = owner
        self.answer = answer
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
        self._inode = os.stat(self.path).st_ino
        self._serve(listener)

    def _receive(self, client: Client) -> None:
        while True:
            try:
                chunk = client.sock.recv(RECEIVE)
            except (BlockingIOError, InterruptedError):
                return
            client.request += chunk
            if b"\n" in client.request or not chunk or len(client.request) > MAX_REQUEST:
                break
        line = client.request.split(b"\n", 1)[0][:MAX_REQUEST]
        reply = self._reply(line.decode(errors="replace").strip())
        client.reply = json.dumps(reply).encode() + b"\n"
        self._answer_with_reply(client)

    def _reply(self, request: str) -> dict:
        try:
            return self.answer(request)
        except Exception as error:  # noqa: BLE001 - a bad answer must not cost the router
            self.loop.fault("control answer", error)
            return {"error": f"internal error: {error!r}"}

    def close(self) -> None:
        opened = self._listener is not None
        super().close()
        if opened:
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
