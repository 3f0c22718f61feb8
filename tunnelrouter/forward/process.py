"""The router's side of the forwarder process: start it, hand it the forwards, keep its
latest status for ``show``, and start it again if it dies.

Forwarding runs in a process of its own, not in the tunnels' loop nor in a thread
beside it: the tunnels' datapath is a Python epoll loop, and a thread busy accepting
connections or moving bytes would hold the GIL it needs; a process runs on the other
core, and its descriptors, memory and any failure are its own (README, Architecture).
"""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import time

from tunnelrouter import logs
from tunnelrouter.forward.channel import Channel
from tunnelrouter.forward.config import ForwardConfig
from tunnelrouter.io.loop import Loop
from tunnelrouter.io.privileges import Account
from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")

START_TIMEOUT = 30.0          # seconds for the process to start and open every listener
STOP_TIMEOUT = 5.0
RESTART_FIRST, RESTART_LONGEST = 1.0, 30.0


class ForwarderProcess:
    """``run_as``: the user the process runs as when the router still runs as root and will
    drop to it (``run --user``); it then has no capability at all. None: as the router."""

    def __init__(self, forwards: dict[str, ForwardConfig], loop: Loop,
                 run_as: Account | None = None):
        self.forwards = forwards
        self.loop = loop
        self.run_as = run_as
        self.process: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.restarts = 0
        self.faults = 0          # internal errors the process reported
        self._status: dict = {}
        self._restart_at: float | None = None
        self._restart_delay = RESTART_FIRST

    def start(self) -> list[tuple[str, str]]:
        """Start the process and apply the forwards: ``(key path, message)`` for each that
        cannot listen (then the caller closes this and does not start)."""
        router_end, worker_end = socket.socketpair()
        user = {} if self.run_as is None else {
            "user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tunnelrouter.forward.worker", str(worker_end.fileno()),
                 *logs.child_arguments()],
                pass_fds=(worker_end.fileno(),), stdin=subprocess.DEVNULL,
                start_new_session=True, **user)   # a terminal's ^C is the router's to act on
        except OSError as error:
            router_end.close()
            return [("forwards", f"cannot start the forwarder process: {error.strerror}")]
        finally:
            worker_end.close()
        self.channel = Channel(router_end)
        self.channel.send(("apply", self.forwards))
        problems = self._wait_applied()
        if problems is None:
            return [("forwards", "the forwarder process did not start (see the log above)")]
        self.loop.watch(self.channel.fileno(), self._on_channel)
        return problems

    def apply(self, forwards: dict[str, ForwardConfig]) -> list[tuple[str, str]]:
        """A reload's new ``forwards:``: the process applies the difference (see
        Forwarder.apply); ``(key path, message)`` for each forward it could not start. A
        process being started again takes the new section when it starts."""
        self.forwards = forwards
        if self.channel is None or self.channel.closed:
            return []
        self.channel.send(("apply", forwards))
        problems = self._wait_applied()
        if problems is None:
            return [("forwards", "the forwarder process did not answer the new forwards")]
        return problems

    def _wait_applied(self) -> list | None:
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            select.select([self.channel.sock], [], [], left)
            for kind, body in self.channel.receive():
                if kind == "applied":
                    return body
                self._take(kind, body)
            if self.channel.closed:
                return None
        return None

    def _on_channel(self, _events: int) -> None:
        for kind, body in self.channel.receive():
            self._take(kind, body)
        if self.channel.closed:
            self._lost()

    def _take(self, kind: str, body) -> None:
        if kind == "status":
            self._status = body["forwards"]
            self.faults = body["internal_errors"]

    def _lost(self) -> None:
        """The process died (a bug, or killed from outside): the tunnels carry on, and the
        forwards start again after a while."""
        self.loop.forget(self.channel.fileno())
        self.channel.close()
        self.channel = None
        code = self.process.wait()
        self.process = None
        self._status = {}
        self._restart_at = time.monotonic() + self._restart_delay
        log.warning("the forwarder process ended (exit status %s); its connections are gone; "
                    "starting it again in %.0f s", code, self._restart_delay,
                    extra=event("forwarder_ended", exit_status=code))

    def tick(self, now: float) -> None:
        if self._restart_at is None or now < self._restart_at:
            return
        self.restarts += 1
        problems = self.start()
        if self.process is not None and self.channel is not None and not self.channel.closed:
            self._restart_at = None
            self._restart_delay = RESTART_FIRST
            for path, message in problems:
                log.warning("forwarder started again without %s: %s", path, message,
                            extra=event("forward_not_restarted", key=path, problem=message))
            log.info("forwarder process started again",
                     extra=event("forwarder_restarted", restarts=self.restarts))
            return
        self.close()
        self._restart_delay = min(self._restart_delay * 2, RESTART_LONGEST)
        self._restart_at = now + self._restart_delay

    def status(self) -> dict:
        """Each forward's status as the process last sent it (within a quarter second)."""
        if self._status:
            return self._status
        state = "starting" if self.process is not None else \
            "not running (the forwarder process is being started again)"
        return {name: {"protocol": config.protocol, "listen": str(config.listen),
                       "to": str(config.to), "state": state}
                for name, config in self.forwards.items()}

    def close(self) -> None:
        """End the process: it leaves when its socket closes; killed if it has not after
        ``STOP_TIMEOUT`` seconds."""
        if self.channel is not None:
            self.loop.forget(self.channel.fileno())
            self.channel.close()
            self.channel = None
        if self.process is not None:
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
