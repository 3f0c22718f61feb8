"""The datapath's workers: ``workers: N`` serves the tunnels from N threads at once.

Each worker has a loop of its own, a queue of every tunnel's device (``IFF_MULTI_QUEUE``)
and a socket of every UDP underlay end (``SO_REUSEPORT``); the kernel gives each flow to
one of them, as a program of ours chooses by the inner flow (``io/steering.py``). Worker 0
is the router's own loop; the others are threads. Every raw socket gets a copy of every
datagram and ICMP error of its protocol, so worker 0 alone reads the raw-socket modes'
datagrams, and the other workers send on raw sockets that take in only the errors of
their own sends. A tunnel whose packets must leave in the order they came (GRE with
sequence numbers) has one queue, worker 0's, and workers hand its work to the router.

There is one copy of the state: the endpoints (their counters, path MTU, FDB, liveness,
windows and limits) and the demultiplexers are the workers' common objects. Python runs
one thread at a time, and a worker lets another run where it waits for the kernel (a
read, a send, epoll), as all of them do at every system call; with the switch interval
raised far above the longest step of the tunnel core, no other point is taken, so a step
never interleaves with another worker's. What runs at the same time is the kernel's
work: the copies, checksums, segmentation and routing behind each system call, most of
a router's time. What only the router's own thread does (netlink, the loop's
registrations, remaking a device) a worker asks of it (``in_main``), and the router
changes what workers use (tunnels added, changed, removed; a device remade) only while
they are held between rounds (``paused``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator

from tunnelrouter.io.loop import Loop
from tunnelrouter.logs import event
from tunnelrouter.tunnel.batch import Batch

log = logging.getLogger("tunnelrouter")

# Seconds a thread may run Python before another that waits is let in: far above any step of
# the datapath (microseconds to a millisecond), below what would stall the others.
SWITCH_INTERVAL = 0.1
_STOP_WAIT = 5.0


class Worker:
    """What one worker reads and writes with: its loop, its queue of each device (by tunnel
    name; None while the device is being made again, or where the tunnel has no queue for
    it), its socket of each underlay end, and batches of its own."""

    __slots__ = ("index", "loop", "devices", "underlays", "device_batch", "wire_batch",
                 "delivery", "round", "thread", "device_packets", "wire_datagrams", "_wake")

    def __init__(self, index: int, loop: Loop, device_batch: Batch, wire_batch: Batch):
        self.index = index
        self.loop = loop
        self.devices: dict[str, object] = {}
        self.underlays: dict[tuple, object] = {}
        self.device_batch = device_batch
        self.wire_batch = wire_batch
        self.delivery: list = []   # the packets of one wire batch for one device
        # Held while the worker's handlers run: the router takes it to change what they use.
        self.round = threading.Lock()
        self.thread: threading.Thread | None = None
        # What it read, for the operator: whether the kernel spreads the flows.
        self.device_packets = 0
        self.wire_datagrams = 0
        self._wake: tuple[socket.socket, socket.socket] | None = None

    def status(self) -> dict:
        return {"device_packets": self.device_packets, "wire_datagrams": self.wire_datagrams,
                "internal_errors": self.loop.faults}


class Workers:
    """The router's loop as worker 0, and ``count - 1`` threads with loops of their own."""

    def __init__(self, loop: Loop, count: int, batches: Callable[[], tuple[Batch, Batch]]):
        self.all = [Worker(index, loop if index == 0 else Loop(), *batches())
                    for index in range(count)]
        self.count = count
        self._requests: collections.deque[Callable[[], None]] = collections.deque()
        self._paused = 0
        # Cleared while the router waits to hold the workers: a worker that has just let go
        # of its round would otherwise take it again first (locks are not fair).
        self._running = threading.Event()
        self._running.set()
        self._stopping = False
        self._interval = sys.getswitchinterval()
        self._main_wake = self._wake_for(self.all[0], self._run_requests)
        for worker in self.all[1:]:
            worker._wake = self._wake_for(worker, lambda _events, w=worker: _drain(w._wake[0]))

    @staticmethod
    def _wake_for(worker: Worker, handler) -> tuple[socket.socket, socket.socket]:
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader.setblocking(False)
        writer.setblocking(False)
        worker.loop.watch(reader.fileno(), handler)
        return reader, writer

    @property
    def started(self) -> bool:
        return any(worker.thread is not None for worker in self.all)

    def start(self) -> None:
        """Start the threads (the router's own loop is worker 0: it runs as it always does)."""
        if self.count > 1:
            sys.setswitchinterval(SWITCH_INTERVAL)
        for worker in self.all[1:]:
            worker.thread = threading.Thread(target=self._serve, args=(worker,),
                                             name=f"worker {worker.index}", daemon=True)
            worker.thread.start()

    def _serve(self, worker: Worker) -> None:
        loop, running = worker.loop, self._running
        try:
            while not self._stopping:
                running.wait()
                loop.run_guarded(worker.round, 1.0)
        except Exception as error:  # noqa: BLE001 - the loop itself failed: say so, once
            log.error("worker %d stopped: %r; its flows are lost until the router restarts",
                      worker.index, error, exc_info=error,
                      extra=event("worker_failed", worker=worker.index,
                                  error=type(error).__name__))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold every worker between two rounds (the router's thread only; nests)."""
        self._paused += 1
        held = []
        try:
            if self._paused == 1:
                self._running.clear()
                for worker in self.all[1:]:
                    worker.round.acquire()
                    held.append(worker)
            yield
        finally:
            for worker in held:
                worker.round.release()
            self._paused -= 1
            if not self._paused:
                self._running.set()

    def in_main(self, call: Callable[[], None]) -> None:
        """Have the router's own thread run ``call`` soon (from a worker's thread)."""
        self._requests.append(call)
        _poke(self._main_wake[1])

    def _run_requests(self, _events: int) -> None:
        _drain(self._main_wake[0])
        requests = self._requests
        while requests:
            requests.popleft()()

    def stop(self) -> None:
        """Stop the threads, and let them go; their loops close (what they watched is the
        router's to close)."""
        self._stopping = True
        self._running.set()
        for worker in self.all[1:]:
            if worker.thread is not None:
                _poke(worker._wake[1])
        for worker in self.all[1:]:
            if worker.thread is not None:
                worker.thread.join(_STOP_WAIT)
                if worker.thread.is_alive():   # a handler that never returns: a bug
                    log.error("worker %d did not stop in %.0f s; its sockets and queues are "
                              "closed under it", worker.index, _STOP_WAIT,
                              extra=event("worker_stuck", worker=worker.index))
                worker.thread = None
        sys.setswitchinterval(self._interval)

    def close(self) -> None:
        self.stop()
        main = self.all[0]
        main.loop.forget(self._main_wake[0].fileno())
        for end in self._main_wake:
            end.close()
        for worker in self.all[1:]:
            for end in worker._wake:
                end.close()
            worker.loop.close()

    def status(self) -> list[dict]:
        return [worker.status() for worker in self.all]


def _poke(writer: socket.socket) -> None:
    try:
        writer.send(b"\0")
    except (BlockingIOError, OSError):
        pass   # one already waits to be read: that wakes it as well


def _drain(reader: socket.socket) -> None:
    try:
        while reader.recv(64):
            pass
    except (BlockingIOError, OSError):
        pass
