"""The event loop: one epoll, handlers per descriptor, signals as events, a periodic tick.

epoll itself, not selectors: selectors hides EPOLLERR from a descriptor
registered for reading, and EPOLLERR is how a socket's error queue says it
holds an ICMP error. Signals arrive through ``signal.set_wakeup_fd`` as bytes
on a socket the loop watches, so their callbacks run in the loop, never inside
a signal handler.

A handler that raises is a bug, not a reason to stop forwarding: the loop
counts it in ``faults``, logs it once per handler and kind of error (with the
traceback), and carries on.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")

EPOLLIN, EPOLLOUT, EPOLLERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._signals: dict[int, Callable[[], None]] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._stopping = False
        self._faults_seen: set[tuple[str, type]] = set()
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self._next_tick = 0.0
        self.faults = 0
        # Descriptors forgotten during this round of events: an event still to come for
        # one is the old descriptor's, even if its number is already watched anew.
        self._forgotten: set[int] = set()

    def watch(self, fd: int, handler: Callable[[int], None], writable: bool = False) -> None:
        """Call ``handler(epoll events)`` whenever ``fd`` is readable (or writable) or has
        an error."""
        self._handlers[fd] = handler
        self._epoll.register(fd, EPOLLIN | (EPOLLOUT if writable else 0))

    def want(self, fd: int, readable: bool = True, writable: bool = False) -> None:
        """Change what wakes ``fd``'s handler (errors always do)."""
        self._epoll.modify(fd, (EPOLLIN if readable else 0) | (EPOLLOUT if writable else 0))

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it)."""
        self._forgotten.add(fd)
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set

    def on_signal(self, signum: int, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in the loop after ``signum`` arrives."""
        if self._wakeup is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._wakeup = (reader, writer)
            self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(),
                                                         warn_on_full_buffer=False)
            self.watch(reader.fileno(), self._signalled)
        self._signals[signum] = callback
        self._previous.setdefault(signum, signal.getsignal(signum))
        signal.signal(signum, lambda *_: None)   # the wakeup fd carries the number

    def _signalled(self, _events: int) -> None:
        try:
            numbers = self._wakeup[0].recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in numbers:
            callback = self._signals.get(signum)
            if callback is not None:
                callback()

    def run(self, tick: Callable[[float], None], interval: float) -> None:
        """Dispatch events until :meth:`stop`; ``tick(now)`` about every ``interval`` s."""
        self._next_tick = time.monotonic() + interval
        while not self._stopping:
            self.run_once(tick, interval, max(0.0, self._next_tick - time.monotonic()))

    def run_once(self, tick: Callable[[float], None], interval: float, timeout: float) -> None:
        """One round: wait at most ``timeout`` s for events, dispatch them, tick if due."""
        self._forgotten.clear()
        self._dispatch(self._epoll.poll(timeout))
        now = time.monotonic()
        if now >= self._next_tick:
            try:
                tick(now)
            except Exception as error:  # noqa: BLE001
                self.fault("tick", error)
            self._next_tick = now + interval

    def run_guarded(self, guard: threading.Lock, timeout: float) -> None:
        """One round without a tick, the handlers run holding ``guard``: whoever holds it
        knows that none of this loop's handlers runs (a worker's loop, in its thread), and
        may forget descriptors meanwhile (those the round's events name are passed over)."""
        events = self._epoll.poll(timeout)
        with guard:
            self._dispatch(events)
            self._forgotten.clear()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        handlers, forgotten = self._handlers, self._forgotten
        for fd, happened in events:
            handler = handlers.get(fd)
            if handler is None or fd in forgotten:
                continue  # forgotten by an earlier handler of this round (or meanwhile)
            try:
                handler(happened)
            except Exception as error:  # noqa: BLE001 - the last line of defence
                self.fault(getattr(handler, "__qualname__", repr(handler)), error)

    def fault(self, where: str, error: Exception) -> None:
        self.faults += 1
        if (where, type(error)) not in self._faults_seen:
            self._faults_seen.add((where, type(error)))
            log.error("internal error in %s (the router carries on; this is logged once): %r",
                      where, error, exc_info=error,
                      extra=event("internal_error", where=where, error=type(error).__name__))

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            for end in self._wakeup:
                end.close()
            self._wakeup = None
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        self._signals.clear()
        self._epoll.close()
