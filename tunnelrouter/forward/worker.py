"""The forwarder process: ``python -m tunnelrouter.forward.worker FD``, started by the router.

It serves every forward on an event loop of its own (``io/loop.py``), takes ``apply``
messages from the router on the socket ``FD`` and answers each with the problems it
met, and sends its status whenever it changed, at most every ``STATUS_INTERVAL``
seconds. It ends when the router closes the socket (or dies: the same end of file),
or on SIGTERM; SIGINT from a terminal is the router's to act on, not its.
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(prog="tunnelrouter.forward.worker")
    parser.add_argument("fd", type=int)
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text")
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level, process="forwarder")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_no_new_privs()   # it never runs another program: none may gain anything
    raise_descriptor_limit()
    loop = Loop()
    worker = Worker(Channel(socket.socket(fileno=args.fd)), loop)
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
