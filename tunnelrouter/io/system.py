"""The system the router runs on, as the factories it asks for devices, sockets and netlink.

The router is handed a :class:`System`; tests hand it one whose devices and
sockets live in memory, so two whole routers can talk without root.
"""

import errno
import socket

from encap.wire import ETHERNET_HEADER_LENGTH

from tunnelrouter.io.device import TunTapDevice
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io import privileges
from tunnelrouter.io.netlink import LinkMonitor, Netlink
from tunnelrouter.io.raw_socket import RawSocket
from tunnelrouter.io.steering import load_steering
from tunnelrouter.io.systemd import Notifier
from tunnelrouter.io.udp_socket import UdpSocket


class System:
    def device(self, name: str, ethernet: bool, super_packets: bool,
               queues: int = 1) -> list[TunTapDevice]:
        """A TUN or TAP device, as its queues (one for each worker that reads it)."""
        return TunTapDevice.open(name, ethernet, super_packets, queues)

    def steering(self, workers: int, ethernet: bool) -> int:
        """The program that gives each flow of a TUN (TAP) device to one of ``workers``
        queues (an fd; SystemProblem if the kernel will not load it)."""
        return load_steering(ETHERNET_HEADER_LENGTH if ethernet else 0, workers, ethernet)

    def raw_socket(self, local: str, protocol: int, send_only: bool = False) -> RawSocket:
        return RawSocket.open(local, protocol, send_only)

    def udp_socket(self, local: str, port: int, dont_fragment: bool, link_header: int = 0,
                   ethernet: bool = False, shared: bool = False) -> UdpSocket:
        """``shared``: one of the sockets on this port the workers share (SO_REUSEPORT)."""
        return UdpSocket.open(local, port, dont_fragment, link_header, ethernet, shared)

    def netlink(self) -> Netlink:
        return Netlink()

    def link_monitor(self) -> LinkMonitor:
        return LinkMonitor()

    def notifier(self) -> Notifier:
        """systemd's notify socket, from the environment (outside systemd: silent)."""
        return Notifier()

    def drop_privileges(self, account: privileges.Account) -> None:
        """Become ``account`` with only the capabilities the router needs (``run --user``)."""
        privileges.drop(account)

    def claim(self, name: str) -> socket.socket:
        """Hold ``name`` for as long as the returned socket is open; SystemProblem if another
        process holds it. An abstract Unix socket: it belongs to this network namespace,
        and the kernel releases it when its holder dies, however it dies."""
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            holder.bind("\0tunnelrouter:" + name)
        except OSError as error:
            holder.close()
            if error.errno == errno.EADDRINUSE:
                raise SystemProblem("held by another tunnelrouter") from None
            raise SystemProblem(f"cannot claim it: {error.strerror}") from None
        return holder
