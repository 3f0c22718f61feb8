"""Telling systemd how the router is doing: sd_notify(3), without libsystemd.

A ``Type=notify`` service gets ``$NOTIFY_SOCKET``; the router sends it newline-separated
``KEY=value`` datagrams: ``READY=1`` once it forwards, ``RELOADING=1`` with
``MONOTONIC_USEC`` when a reload begins (then ``READY=1`` again), ``STOPPING=1``,
``STATUS=`` lines an operator reads in ``systemctl status``, and ``WATCHDOG=1`` from the
loop at half the ``WatchdogSec`` systemd asks for (``$WATCHDOG_USEC``), so a loop that
hangs is restarted. Outside systemd every call does nothing. A send that fails is
logged once and never raised: the router's health is not systemd's to break.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from tunnelrouter.logs import event

log = logging.getLogger("tunnelrouter")


class Notifier:
    def __init__(self, environment: dict | None = None):
        environment = os.environ if environment is None else environment
        path = environment.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@'.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval: float | None = None
        usec = environment.get("WATCHDOG_USEC", "")
        pid = environment.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s (logged once)",
                            self._address.replace("\0", "@"), error.strerror or error,
                            extra=event("notify_failed", errno=error.errno))
            return
        self._failed = False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
