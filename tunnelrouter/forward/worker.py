"""The forwarder process: ``python -m tunnelrouter.forward.worker FD [--log-format F
--log-level L]``, started by the router, which passes its own log options.

It serves every forward on an event loop of its own (``io/loop.py``), takes ``apply``
messages from the router on the socket ``FD`` and answers each with the problems it
met, and sends its status whenever it changed, at most every ``STATUS_INTERVAL``
seconds. It ends when the router closes the socket (or dies: the same end of file),
or on SIGTERM; SIGINT from a terminal is the router's to act on, not its.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import sys

from tunnelrouter import logs
from tunnelrouter.forward.channel import Channel
from tunnelrouter.forward.forwarder import TICK, Forwarder
from tunnelrouter.io.loop import Loop
from tunnelrouter.io.privileges import set_no_new_privs

log = logging.getLogger("tunnelrouter")

STATUS_INTERVAL = 0.25


class Worker:
    def __init__(self, channel: Channel, loop: Loop):
        self.channel = channel
        self.loop = loop
        self.forwarder = Forwarder(loop)
        self._sent_status = None
        self._next_status = 0.0

    def on_channel(self, _events: int) -> None:
        for kind, body in self.channel.receive():
            if kind == "apply":
                self.channel.send(("applied", self.forwarder.apply(body)))
        if self.channel.closed:
            self.loop.stop()

    def tick(self, now: float) -> None:
        self.forwarder.tick(now)
        logs.tick(now)
        if now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            status = {"forwards": self.forwarder.status(), "internal_errors": self.loop.faults}
            if status != self._sent_status and self.channel.send(("status", status)):
                self._sent_status = status
        try:
            self.channel.flush()
        except OSError:
            self.loop.stop()   # the router is gone


def raise_descriptor_limit() -> None:
    """Every connection holds two sockets and, while it moves bytes, two pipes: take all
    the descriptors the hard limit allows (the tunnels' process keeps its own)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def main(argv: list[str]) -> int:
    # The router alone writes this command line; no argparse: the process stays lean (with
    # argparse the churn test saw its RSS step up by 600 KiB in a late round, 3 runs in 12).
    fd, options = int(argv[0]), dict(zip(argv[1::2], argv[2::2]))
    logs.setup(options.get("--log-format", "text"), options.get("--log-level", "info"),
               process="forwarder")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_no_new_privs()   # it never runs another program: none may gain anything
    raise_descriptor_limit()
    loop = Loop()
    worker = Worker(Channel(socket.socket(fileno=fd)), loop)
    loop.on_signal(signal.SIGTERM, loop.stop)
    loop.watch(worker.channel.fileno(), worker.on_channel)
    try:
        loop.run(worker.tick, TICK)
    finally:
        worker.forwarder.close()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
