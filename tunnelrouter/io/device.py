"""TUN and TAP devices: created with python-pytun, then read and written as plain fds.

python-pytun cannot read into a buffer nor write a memoryview, so after
``TUNSETIFF`` the fd is used directly: ``os.readv`` into the batch's buffers,
``os.write`` from a memoryview, non-blocking so a wakeup drains until EAGAIN.
Closing the fd removes the (non-persistent) device with its addresses and routes.
"""

import errno
import os

import pytun

from encap.errors import DropReason

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters

TUN_PATH = "/dev/net/tun"
# A read or write that fails with one of these will never work again: the device is gone.
GONE = frozenset({errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EBADF})


class TunTapDevice:
    """One TUN (``ethernet=False``) or TAP device, ``IFF_NO_PI`` always.

    ``failed`` becomes the errno of a read or write that says the device is gone
    (deleted under us); the router then closes it and makes it again.
    """

    def __init__(self, name: str, fd: int, owner=None):
        """Wrap ``fd``, the device's open file (``owner`` keeps it open; closing it or the
        fd removes the device)."""
        self.name = name
        self.fd = fd
        self.failed = 0
        self._owner = owner
        os.set_blocking(fd, False)

    @classmethod
    def open(cls, name: str, ethernet: bool) -> "TunTapDevice":
        flags = (pytun.IFF_TAP if ethernet else pytun.IFF_TUN) | pytun.IFF_NO_PI
        try:
            device = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as error:
            raise SystemProblem(_explain(name, error)) from None
        return cls(device.name, device.fileno(), device)

    def read_batch(self, batch: Batch) -> int:
        """Read packets into ``batch`` until none waits or it is full; return how many."""
        readv, views, ends, fd = os.readv, batch.device_views, batch.ends, self.fd
        count = 0
        while count < batch.capacity:
            try:
                ends[count] = readv(fd, (views[count],)) + batch.starts[count]
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno in GONE:
                    self.failed = error.errno
                break
            count += 1
        batch.count = count
        return count

    def write(self, packet, counters: Counters) -> None:
        """Deliver one packet; a failure is counted, never raised."""
        try:
            os.write(self.fd, packet)
        except OSError as error:
            if error.errno in GONE:
                self.failed = error.errno
            counters.drops[DropReason.DEVICE_DOWN if error.errno in GONE or
                           error.errno == errno.EIO else DropReason.SEND_FAILED] += 1
            return
        counters.rx_packets += 1
        counters.rx_bytes += len(packet)

    def close(self) -> None:
        try:
            if self._owner is not None:
                self._owner.close()
            else:
                os.close(self.fd)
        except OSError:
            pass  # already gone with its device


def _explain(name: str, error: Exception) -> str:
    """pytun says '[Errno 13] Permission denied' and no more: say which file and what to do."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    if code == errno.EACCES or code == errno.EPERM:
        return (f"cannot open {TUN_PATH} or create {name}: permission denied; the router "
                f"needs CAP_NET_ADMIN and read-write access to {TUN_PATH}")
    if code == errno.ENOENT or code == errno.ENODEV:
        return f"{TUN_PATH} does not exist: load the tun module (modprobe tun)"
    if code == errno.EBUSY or code == errno.EINVAL:
        return (f"a device named {name} already exists and is not a free TUN/TAP device of "
                f"this kind (another tunnelrouter holds it, or remove it: ip link del {name})")
    return f"cannot create device {name}: {error}"
