"""TCP forwards: accept, connect to the backend without blocking, then relay both ways.

Each direction of a connection is a :class:`Flow` through a pipe: ``splice`` moves the
bytes from the source socket into the pipe and from the pipe into the other socket, so
the kernel hands pages over and Python never sees the payload. Where splice is refused
(``EINVAL``: a socket type without it), that flow copies through a buffer instead.

A flow reads only when its pipe is empty, and its socket is watched for room only while
the pipe holds bytes the other end would not take: epoll (level-triggered) is told only
when that changes. A FIN read from one end is passed on as ``shutdown(SHUT_WR)`` once
the pipe is empty, while the other direction goes on (half-close); the connection ends
when both directions have. A reset or error on either end resets the other.

A client the forward refuses (denied, over its rate or its connection limit, a backend
that refused or did not answer in time) is reset: it learns at once that it got
nothing, and no side of the refusal waits in TIME_WAIT.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections import deque

from tunnelrouter.forward import proxy_protocol
from tunnelrouter.forward.forward import Forward
from tunnelrouter.forward.limits import RecentlyUsed
from tunnelrouter.io.loop import EPOLLERR, EPOLLIN, EPOLLOUT

EPOLLHUP = 0x10

ACCEPT_BATCH = 64            # accepts per wakeup: the other connections get their turn
PIPE_SIZE = 1 << 20          # bytes a pipe may hold (fewer where the kernel says no)
SPLICE_CHUNK = PIPE_SIZE
COPY_CHUNK = 1 << 16
IDLE_PIPES = 256             # empty pipes kept for the next connections
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends RST
_READ = EPOLLIN | EPOLLERR | EPOLLHUP   # what makes a flow read: data, or news of its end
_splice = os.splice


class PipePool:
    """Pipes for flows. An empty pipe outlives its connection here, so that a burst of
    short connections does not make and close two pipes each."""

    def __init__(self, keep: int = IDLE_PIPES):
        self.keep = keep
        self._idle: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        if self._idle:
            return self._idle.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over fs.pipe-max-size or the user's pipe quota: the default 64 KiB serves
        return read, write

    def give_back(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for read, write in self._idle:
            os.close(read)
            os.close(write)
        self._idle.clear()


class Flow:
    """One direction: bytes from ``src`` to ``dst``. ``pending`` bytes wait in the pipe (or
    the buffer) for ``dst`` to take them; ``prefix`` goes out before anything else."""

    __slots__ = ("src", "dst", "pipe", "pending", "eof", "shut", "prefix", "buffer", "start")

    def __init__(self, src: int, dst: int):
        self.src = src
        self.dst = dst
        self.pipe: tuple[int, int] | None = None
        self.pending = 0
        self.eof = False
        self.shut = False
        self.prefix = b""
        self.buffer: bytearray | None = None   # set when this flow copies instead
        self.start = 0                         # copy: where the unsent bytes begin

    @property
    def waiting(self) -> bool:
        """Bytes wait for ``dst`` to take them."""
        return bool(self.pending or self.prefix)


class Connection:
    """A client, its connection to the backend, and the two flows between them."""

    __slots__ = ("forward", "client", "server", "source", "up", "down", "connected", "masks")

    def __init__(self, forward: TcpForward, client: socket.socket, source: tuple,
                 server: socket.socket):
        self.forward = forward
        self.client = client
        self.server = server
        self.source = source
        self.up = Flow(client.fileno(), server.fileno())     # client -> backend
        self.down = Flow(server.fileno(), client.fileno())   # backend -> client
        self.connected = False
        # What epoll watches for each socket now (client, server): EPOLLIN | EPOLLOUT,
        # or None while it is not watched at all (see _unwatch).
        self.masks: list[int | None] = [0, EPOLLIN | EPOLLOUT]

    # -- connecting -----------------------------------------------------------------------

    def _on_connect(self, events: int) -> None:
        forward = self.forward
        error = self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not error and events & EPOLLERR:
            error = errno.EIO
        if error:
            forward.refuse_connection(self, "connect_refused" if error == errno.ECONNREFUSED
                                      else "connect_failed")
            return
        try:
            self.server.getpeername()
        except OSError:
            return  # an event meant for an earlier socket with this number: still connecting
        self.connected = True
        forward.connected(self)
        if forward.config.proxy_protocol:
            self.up.prefix = proxy_protocol.header(forward.config.proxy_protocol, self.source,
                                                   self.client.getsockname())
        forward.loop.watch(self.up.src, self.on_client)
        self.masks[0] = EPOLLIN
        self.on_server(0)   # the PROXY header goes now: the new socket has room for it

    # -- relaying -------------------------------------------------------------------------

    def on_client(self, events: int) -> None:
        self._on_event(0, events, self.up, self.down)

    def on_server(self, events: int) -> None:
        if not self.connected:
            self._on_connect(events)
        else:
            self._on_event(1, events, self.down, self.up)

    def _on_event(self, which: int, events: int, reading: Flow, writing: Flow) -> None:
        """An event on one end (0: the client, 1: the server): ``reading`` is the flow from
        it, ``writing`` the flow to it."""
        if events & EPOLLERR:
            self.forward.end(self, "reset")
            return
        if events & EPOLLHUP and self.masks[which] == 0:
            self._unwatch(which)
            return
        try:
            if events & _READ:
                self._move(reading, True)
            if writing.waiting:
                self._move(writing, False)
        except OSError:
            self.forward.end(self, "reset")
            return
        self._after()

    def _unwatch(self, which: int) -> None:
        """The socket hung up (both ways shut) while its flow's pipe is still full, so we
        want nothing from it yet; epoll would report the hang-up on every round until the
        pipe empties, so it is not watched until then (_after watches it again)."""
        self.forward.loop.forget(self.up.src if which == 0 else self.down.src)
        self.masks[which] = None

    def _move(self, flow: Flow, read: bool) -> None:
        """Pass on what waits for ``flow.dst``; then, if ``read`` and it all went, read
        what ``flow.src`` has and pass that on too. OSError: an end failed or was reset."""
        if flow.prefix:
            sent = os.write(flow.dst, flow.prefix)
            flow.prefix = flow.prefix[sent:]
            if flow.prefix:
                return
        if flow.pending and not self._drain(flow):
            return
        if not read or flow.eof:
            return
        if flow.buffer is None:
            if flow.pipe is None:
                flow.pipe = self.forward.pipes.take()
            try:
                moved = _splice(flow.src, flow.pipe[1], SPLICE_CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                flow.buffer = bytearray(COPY_CHUNK)   # no splice here: copy
                return self._move(flow, read)
        else:
            try:
                moved = os.readv(flow.src, [flow.buffer])
            except BlockingIOError:
                return
            flow.start = 0
        if moved == 0:
            flow.eof = True
            return
        if flow is self.up:
            self.forward.counters.bytes_to_backend += moved
        else:
            self.forward.counters.bytes_to_client += moved
        flow.pending = moved
        self._drain(flow)

    @staticmethod
    def _drain(flow: Flow) -> bool:
        """Write what waits to ``flow.dst``; whether it all went."""
        try:
            if flow.buffer is None:
                flow.pending -= _splice(flow.pipe[0], flow.dst, flow.pending,
                                        flags=_SPLICE_FLAGS)
            else:
                sent = os.write(flow.dst, memoryview(flow.buffer)[flow.start:
                                                                  flow.start + flow.pending])
                flow.start += sent
                flow.pending -= sent
        except BlockingIOError:
            return False
        return flow.pending == 0

    def _after(self) -> None:
        """Pass on a FIN whose flow is empty; end the connection when both flows have; tell
        epoll what each socket waits for now."""
        up, down = self.up, self.down
        for flow, sock in ((up, self.server), (down, self.client)):
            if flow.eof and not flow.shut and not flow.waiting:
                flow.shut = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self.forward.end(self, "reset")
                    return
        if up.shut and down.shut:
            self.forward.end(self, None)
            return
        self.forward.active.use(self, time.monotonic())
        client_mask = (0 if up.eof or up.waiting else EPOLLIN) | (EPOLLOUT if down.waiting else 0)
        server_mask = (0 if down.eof or down.waiting else EPOLLIN) | (EPOLLOUT if up.waiting else 0)
        if client_mask != self.masks[0]:
            self._watch(0, up.src, client_mask, self.on_client)
        if server_mask != self.masks[1]:
            self._watch(1, down.src, server_mask, self.on_server)

    def _watch(self, which: int, fd: int, mask: int, handler) -> None:
        loop = self.forward.loop
        if self.masks[which] is None:
            if not mask:
                return
            loop.watch(fd, handler)
        loop.want(fd, bool(mask & EPOLLIN), bool(mask & EPOLLOUT))
        self.masks[which] = mask

    # -- the end --------------------------------------------------------------------------

    def close(self, reset: bool) -> None:
        loop, pipes = self.forward.loop, self.forward.pipes
        loop.forget(self.down.src)
        if self.connected:
            loop.forget(self.up.src)
        for sock in (self.client, self.server):
            if reset:
                _reset(sock)
            else:
                sock.close()
        for flow in (self.up, self.down):
            if flow.pipe is not None:
                pipes.give_back(flow.pipe, flow.pending == 0)
                flow.pipe = None


class TcpForward(Forward):
    protocol = "tcp"

    def __init__(self, *args, pipes: PipePool, **kwargs):
        super().__init__(*args, **kwargs)
        self.pipes = pipes
        # Connections waiting for the backend, oldest first; those relaying, least
        # recently active first: the timeouts look only at the fronts.
        self.connecting = RecentlyUsed(self.config.max_connections)
        self.active = RecentlyUsed(self.config.max_connections)
        self.lifetimes: deque[tuple[float, Connection]] = deque()
        self._paused = False

    def counters_open(self) -> int:
        return len(self.connecting) + len(self.active)

    def on_listener(self, _events: int) -> None:
        listener, counters = self.listener, self.counters
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            try:
                client, source = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # Out of descriptors (EMFILE, ENFILE) or memory: the client waits in the
                # backlog; listen again at the next tick rather than spin on it.
                counters.dropped["accept_failed"] += 1
                self.warn_once(("accept", self.name), f"forward {self.name}: cannot accept "
                               f"a client: {error.strerror}; trying again")
                self._pause()
                return
            reason = self.refusal(source[0], now)
            if reason is None:
                reason = self._connect(client, source, now)
            if reason is not None:
                counters.refused[reason] += 1
                _reset(client)

    def _connect(self, client: socket.socket, source: tuple, now: float) -> str | None:
        """Start the connection to the backend; the refusal, if it cannot start."""
        try:
            server = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as error:
            self.warn_once(("socket", self.name), f"forward {self.name}: cannot open a "
                           f"socket to the backend: {error.strerror}")
            return "connect_failed"
        server.setblocking(False)
        client.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = server.connect_ex(self.backend)
        if code not in (0, errno.EINPROGRESS):
            server.close()
            return "connect_refused" if code == errno.ECONNREFUSED else "connect_failed"
        connection = Connection(self, client, source, server)
        self.connecting.add(connection, connection, now)
        if self.config.max_lifetime:
            self.lifetimes.append((now + self.config.max_lifetime, connection))
        self.counters.open += 1
        self.loop.watch(server.fileno(), connection.on_server, writable=True)
        if code == 0:
            connection.on_server(EPOLLOUT)
        return None

    def connected(self, connection: Connection) -> None:
        self.connecting.pop(connection)
        self.active.add(connection, connection, time.monotonic())
        self.counters.total += 1

    def refuse_connection(self, connection: Connection, reason: str) -> None:
        """The backend refused, failed or did not answer: the client is reset."""
        self.counters.refused[reason] += 1
        self.counters.open -= 1
        self.connecting.pop(connection)
        connection.close(reset=True)

    def end(self, connection: Connection, why: str | None) -> None:
        """The connection is over: ``why`` is None when both ends closed it; a reset is
        passed on as one."""
        if why is not None:
            self.counters.ended[why] += 1
        self.counters.open -= 1
        if self.active.pop(connection) is None:
            self.connecting.pop(connection)
        connection.close(reset=why == "reset")

    def tick(self, now: float) -> None:
        super().tick(now)
        if self._paused and self.listener is not None:
            self._paused = False
            self.loop.want(self.listener.fileno(), readable=True)
        config = self.config
        for connection, _ in list(self.connecting.pop_unused_since(now - config.connect_timeout)):
            self.refuse_connection(connection, "connect_timeout")
        if config.idle:
            for connection, _ in list(self.active.pop_unused_since(now - config.idle)):
                self.end(connection, "idle_timeout")
        while self.lifetimes and self.lifetimes[0][0] <= now:
            _, connection = self.lifetimes.popleft()
            if connection in self.active or connection in self.connecting:
                self.end(connection, "max_lifetime")

    def _pause(self) -> None:
        if not self._paused and self.listener is not None:
            self._paused = True
            self.loop.want(self.listener.fileno(), readable=False)

    def close(self) -> None:
        super().close()
        for table in (self.connecting, self.active):
            for connection in table.values():
                connection.close(reset=True)
        self.counters.open -= len(self.connecting) + len(self.active)
        self.connecting = RecentlyUsed(self.config.max_connections)
        self.active = RecentlyUsed(self.config.max_connections)
        self.lifetimes.clear()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    except OSError:
        pass  # already reset: close() alone is right
    sock.close()
