"""TUN and TAP devices: created with python-pytun, then read and written as plain fds.

python-pytun cannot read into a buffer nor write a memoryview, so after
``TUNSETIFF`` the fd is used directly: ``os.readv`` into the caller's buffer,
``os.write`` from a memoryview, non-blocking so a wakeup drains until EAGAIN.
Closing the fd removes the (non-persistent) device with its addresses and routes.
"""

import os

import pytun


class TunTapDevice:
    """One TUN (``ethernet=False``) or TAP device, ``IFF_NO_PI`` always."""

    def __init__(self, name: str, ethernet: bool):
        flags = (pytun.IFF_TAP if ethernet else pytun.IFF_TUN) | pytun.IFF_NO_PI
        self._device = pytun.TunTapDevice(name=name, flags=flags)
        self.name = self._device.name
        self.fd = self._device.fileno()
        os.set_blocking(self.fd, False)

    def read_into(self, view: memoryview) -> int:
        """One packet into ``view``; raises BlockingIOError when none is waiting."""
        return os.readv(self.fd, (view,))

    def write(self, view: memoryview) -> None:
        os.write(self.fd, view)

    def close(self) -> None:
        self._device.close()
