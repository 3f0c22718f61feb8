"""Every forward of a router on one event loop, and how a new set of forwards is applied.

:meth:`Forwarder.apply` takes the whole ``forwards:`` section and changes only what
differs, in HAProxy's and nginx's manner: a forward whose settings are the same is not
touched at all; one that changed or went stops accepting, and its connections (UDP
sessions) run on with the settings they began with until they end; a changed forward
that listens where it did hands its listening socket to its successor, so no client
is turned away in between. Counters belong to a forward's name and go on across it.
Starting is applying to an empty forwarder.
"""

from __future__ import annotations

import logging

from tunnelrouter.forward.config import ForwardConfig
from tunnelrouter.forward.counters import ForwardCounters
from tunnelrouter.forward.forward import Forward
from tunnelrouter.forward.tcp import PipePool, TcpForward
from tunnelrouter.forward.udp import UdpForward
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop
from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")

TICK = 0.1   # seconds: the granularity of every timeout


class Forwarder:
    def __init__(self, loop: Loop):
        self.loop = loop
        self.pipes = PipePool()
        self.forwards: dict[str, Forward] = {}
        self.retired: list[Forward] = []     # no longer accepting; serving what they have
        self._counters: dict[str, ForwardCounters] = {}
        self._warned: set[tuple] = set()

    def apply(self, configs: dict[str, ForwardConfig]) -> list[tuple[str, str]]:
        """Make ``configs`` the forwards; ``(key path, message)`` for each forward that
        could not listen (the others are applied all the same)."""
        changed = {name: config for name, config in configs.items()
                   if name not in self.forwards or self.forwards[name].config != config}
        ends = {_end(config) for config in changed.values()}
        handed: dict[tuple, tuple[Forward, object]] = {}   # end -> (old forward, its socket)
        for name in [name for name in self.forwards if name in changed or name not in configs]:
            old = self.forwards.pop(name)
            if _end(old.config) in ends:
                handed[_end(old.config)] = (old, old.hand_over())
            else:
                old.stop_accepting()
            self.retired.append(old)
        problems = []
        for name, config in changed.items():
            forward = self._make(config)
            predecessor, listener = handed.pop(_end(config), (None, None))
            try:
                forward.listen(listener)
            except SystemProblem as problem:
                problems.append((f"forwards.{name}.listen", problem.message))
                continue
            if isinstance(forward, UdpForward) and isinstance(predecessor, UdpForward):
                forward.previous = [predecessor, *predecessor.previous]
            self.forwards[name] = forward
        self._drop_finished()
        return problems

    def _make(self, config: ForwardConfig) -> Forward:
        counters = self._counters.setdefault(config.name, ForwardCounters())
        if config.protocol == "tcp":
            return TcpForward(config, self.loop, counters, self.warn_once, pipes=self.pipes)
        return UdpForward(config, self.loop, counters, self.warn_once)

    def tick(self, now: float) -> None:
        for forward in (*self.forwards.values(), *self.retired):
            forward.tick(now)
        self._drop_finished()

    def _drop_finished(self) -> None:
        self.retired = [forward for forward in self.retired if forward.counters_open()
                        or forward.listener is not None]
        names = set(self.forwards) | {forward.name for forward in self.retired}
        self._counters = {name: counters for name, counters in self._counters.items()
                          if name in names}

    def status(self) -> dict:
        status = {name: forward.status() for name, forward in self.forwards.items()}
        for forward in self.retired:
            status.setdefault(forward.name, forward.status())
        return status

    def warn_once(self, key: tuple, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            what, name = key
            log.warning("%s (logged once)", message,
                        extra=event(f"forward_{what}_failed", forward=name))

    def close(self) -> None:
        for forward in (*self.forwards.values(), *self.retired):
            forward.close()
        self.forwards.clear()
        self.retired.clear()
        self.pipes.close()


def _end(config: ForwardConfig) -> tuple:
    """What a listening socket is: another forward on the same end can take it over."""
    return (config.protocol, config.listen)
