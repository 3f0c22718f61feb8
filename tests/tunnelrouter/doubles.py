"""Test doubles of the system a router runs on: devices, underlay and netlink in memory.

A :class:`MemorySystem` hands the router the real device and underlay classes
wrapped around Unix datagram sockets instead of TUN/TAP file descriptors and
raw or UDP sockets, so the router's own reading, writing, sending and
error-queue parsing run as they do in production, without root:

- a device is one end of a socketpair; the test holds the other, ``hosts[name]``
  (a :class:`DeviceHost`), and writes what the kernel would route into the device,
  reads what the router delivers, each behind the virtio-net header a TUN/TAP
  device puts in front of every packet;
- the underlay is a :class:`Wire`: every underlay socket has an abstract Unix
  address derived from its IP address and protocol (or port), and a datagram to
  an IP address goes to the socket with that address. UDP datagrams carry their
  TOS in a leading byte, as ``IP_RECVTOS`` would report it; the test can queue
  ICMP errors on a socket's error queue (:meth:`WireSocket.queue_error`);
- netlink (:class:`MemoryNetlink`) records what the router programs, can be
  told to fail, and knows the devices the router made; the link monitor
  (:class:`MemoryLinkMonitor`) delivers the events a test emits, and those the
  devices make: closing a device removes it (as closing a TUN fd does) and says so.

Two routers on one wire talk to each other; ``drive(a, b)`` runs their loops;
``ask`` puts a request to a control socket whose server runs in the test's own
thread.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import sys
from collections.abc import Callable

from tunnelrouter.io.device import VNET_HEADER, TunTapDevice
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.netlink import LinkEvent
from tunnelrouter.io.system import System
from tunnelrouter.io.systemd import Notifier
from tunnelrouter.io.raw_socket import RawSocket
from tunnelrouter.io.udp_socket import SOL_UDP, UDP_SEGMENT, UdpSocket
from tunnelrouter.io.underlay import EXTENDED_ERROR, IP_RECVERR, bind
from tunnelrouter.router import Router

_DATA, _PENDING_ERROR = b"\0", b"\1"
RECEIVE = 1 << 17
NO_OFFLOAD = bytes(VNET_HEADER.size)


class DeviceHost:
    """The kernel's end of a device double: every packet behind a virtio-net header. A
    device of several queues has an end for each; the test says which queue a packet
    takes (the kernel would choose by its flow)."""

    def __init__(self, socks: list[socket.socket]):
        self.socks = socks
        self.sock = socks[0]

    def send(self, packet: bytes, header: bytes = NO_OFFLOAD, queue: int = 0) -> None:
        self.socks[queue].send(header + packet)

    def receive(self) -> tuple[tuple, bytes]:
        """The next packet the router wrote, on whichever queue, with its header's fields
        (BlockingIOError if there is none)."""
        for sock in self.socks[1:]:
            try:
                data = sock.recv(RECEIVE)
                break
            except BlockingIOError:
                continue
        else:
            data = self.sock.recv(RECEIVE)
        return VNET_HEADER.unpack_from(data), data[VNET_HEADER.size:]

    def recv(self, _size: int = RECEIVE) -> bytes:
        return self.receive()[1]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class Wire:
    """The underlay all sockets of one test share."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(4)
        # Which worker's socket of a UDP port takes a datagram (given its payload), as a
        # SO_REUSEPORT group's program would choose; None: worker 0's.
        self.worker_of: Callable[[bytes], int] | None = None

    def name(self, address: str, number: int) -> str:
        return f"\0trt-wire-{self.token}-{address}-{number}"

    def address_of(self, name: str | bytes) -> str:
        if isinstance(name, bytes):
            name = name.decode()
        return name.split("-")[3]


class WireSocket:
    """What an UnderlaySocket wraps: sendto/sendmsg/recvfrom_into/recvmsg_into/recvmsg."""

    def __init__(self, wire: Wire, local: str, number: int, udp: bool, worker: int = 0):
        """``worker``: a worker's socket beside worker 0's (for UDP, of its SO_REUSEPORT
        group; the wire delivers to worker 0's, a test to this one's ``name``)."""
        self.wire, self.local, self.number, self.udp = wire, local, number, udp
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.name = wire.name(local, number) + (f"#{worker}" if worker else "")
        try:
            # The real sockets' message: one address and port per host, as UDP's.
            bind(self.sock, self.name, f"{local} port {number}" if udp else local)
        except SystemProblem:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.errors: list[tuple[bytes, list, tuple]] = []
        self.options: dict[tuple[int, int], object] = {}   # what the router set
        self.sent: list[tuple[bytes, tuple]] = []
        self.ancillary: list[list | None] = []   # per datagram sent: its control messages

    def fileno(self) -> int:
        return self.sock.fileno()

    def setsockopt(self, level: int, option: int, value) -> None:
        self.options[(level, option)] = value

    def _deliver(self, data: bytes, destination: tuple, tos: int, ancillary=None) -> None:
        self.sent.append((bytes(data), destination))
        self.ancillary.append(ancillary)
        number = destination[1] if self.udp else self.number
        frame = _DATA + (bytes([tos]) if self.udp else b"") + bytes(data)
        name = self.wire.name(destination[0], number)
        worker = self.wire.worker_of(bytes(data)) if self.udp and self.wire.worker_of else 0
        try:
            self.sock.sendto(frame, name + (f"#{worker}" if worker else ""))
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # nobody there: the WAN loses it

    def sendto(self, data, destination) -> int:
        self._deliver(data, destination, 0)
        return len(data)

    def sendmsg(self, buffers, ancillary, flags, destination) -> int:
        """With UDP_SEGMENT, as UDP GSO: one datagram per segment size of ``data``."""
        data = b"".join(bytes(buffer) for buffer in buffers)
        tos, segment = 0, len(data) or 1
        for level, kind, value in ancillary:
            if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TOS),
                                 (socket.IPPROTO_IPV6, socket.IPV6_TCLASS)):
                tos = int.from_bytes(value, sys.byteorder)
            elif (level, kind) == (SOL_UDP, UDP_SEGMENT):
                segment = int.from_bytes(value, sys.byteorder)
        for at in range(0, max(len(data), 1), segment):
            self._deliver(data[at:at + segment], destination, tos, list(ancillary))
        return len(data)

    def _receive(self) -> tuple[bytes, str]:
        frame, name = self.sock.recvfrom(RECEIVE)
        if frame[:1] == _PENDING_ERROR:
            raise OSError(errno.EHOSTUNREACH, "an ICMP error is pending")
        return frame[1:], self.wire.address_of(name)

    def recvfrom_into(self, buffer) -> tuple[int, tuple]:
        data, address = self._receive()
        buffer[:len(data)] = data
        return len(data), (address, 0)

    def recvmsg_into(self, buffers, space) -> tuple[int, list, int, tuple]:
        data, address = self._receive()
        tos, data = data[0], data[1:]
        buffers[0][:len(data)] = data
        return len(data), [(socket.IPPROTO_IP, socket.IP_TOS, bytes([tos]))], 0, (address, 4789)

    def recvmsg(self, size, ancillary_size, flags):
        if not self.errors:
            raise BlockingIOError(errno.EAGAIN, "no error queued")
        return self.errors.pop(0)

    def queue_error(self, quote: bytes, peer: str, origin: int, icmp_type: int, code: int,
                    info: int = 0) -> None:
        """Put an error on the queue (as IP_RECVERR would) and make the next receive fail
        (as the pending socket error does), which wakes the router."""
        extended = EXTENDED_ERROR.pack(errno.EHOSTUNREACH, origin, icmp_type, code, 0, info, 0)
        self.errors.append((bytes(quote), [(socket.IPPROTO_IP, IP_RECVERR, extended)], 0,
                            (peer, 0)))
        self.sock.sendto(_PENDING_ERROR, self.name)

    def close(self) -> None:
        self.sock.close()


class MemoryNetlink:
    """Records what the router programs; ``fail`` names operations that raise next."""

    def __init__(self, system: MemorySystem):
        self.system = system
        self.fail: set[str] = set()
        self.calls: list[tuple] = []
        self.foreign_routes: dict[tuple[int, str, int, int, int], int] = {}

    def _maybe_fail(self, operation: str, path: tuple = ()) -> None:
        if operation in self.fail:
            raise SystemProblem(f"the kernel refused to {operation}: Invalid argument "
                                f"(errno 22)", path)

    def index(self, name: str):
        link = self.system.links.get(name)
        return None if link is None else link["index"]

    def link_state(self, index: int):
        for link in self.system.links.values():
            if link["index"] == index:
                return link["up"], link["mtu"]
        return None

    def program_device(self, tunnel, up: bool = True, routes: bool = True) -> None:
        self.calls.append(("program_device", tunnel.name))
        self._maybe_fail("program_device", ("addresses", 0) if tunnel.addresses else ())
        link = self.system.links[tunnel.name]
        link["mtu"] = tunnel.device_mtu
        link["up"] = link["up"] or up
        link["addresses"] = link.get("addresses", set()) | {str(a) for a in tunnel.addresses}
        if routes:
            link["routes"].update({str(prefix): None for prefix in tunnel.routes})

    def withdraw(self, tunnel, addresses, routes) -> None:
        self.calls.append(("withdraw", tunnel.name))
        self._maybe_fail("withdraw")
        link = self.system.links[tunnel.name]
        link["addresses"] -= {str(address) for address in addresses}
        for prefix in routes:
            link["routes"].pop(str(prefix), None)

    def program_routes(self, tunnel, mtu: int | None = None) -> None:
        self.calls.append(("program_routes", tunnel.name, mtu))
        self._maybe_fail("program_routes", ("routes", 0))
        self.system.links[tunnel.name]["routes"].update({str(prefix): mtu
                                                          for prefix in tunnel.routes})

    def routes_by_prefix(self, tables):
        return dict(self.foreign_routes)

    def name_of(self, index: int) -> str:
        return f"foreign{index}"

    def close(self) -> None:
        pass


class MemoryLinkMonitor:
    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._reader.setblocking(False)
        self.fd = self._reader.fileno()
        self.events: list[LinkEvent] = []
        self.overflowed = False
        self.closed = False

    def emit(self, event: LinkEvent) -> None:
        if self.closed:
            return  # nobody listens any more
        self.events.append(event)
        self._writer.send(b"!")

    def read_events(self) -> list[LinkEvent]:
        try:
            while self._reader.recv(16):
                pass
        except BlockingIOError:
            pass
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self.closed = True
        self._reader.close()
        self._writer.close()


class _DeviceFile:
    """The router's end of a device: closing it removes the device with its host end, as
    closing a non-persistent TUN/TAP fd does, and the link monitor hears of it."""

    def __init__(self, system: MemorySystem, name: str, sock: socket.socket):
        self.system, self.name, self.sock = system, name, sock
        self.link = system.links[name]

    def close(self) -> None:
        self.sock.close()
        self.link["open_queues"] -= 1
        if self.link["open_queues"] == 0 and self.system.links.get(self.name) is self.link:
            # the last queue closed, and the device was not deleted and made anew
            del self.system.links[self.name]
            self.system.hosts.pop(self.name).close()
            self.system.monitor.emit(LinkEvent(self.link["index"], self.name, False, None,
                                               True))


class MemoryDevice(TunTapDevice):
    """A device whose offloads are what ``links[name]["super_packets"]`` says, and whose
    steering program is ``links[name]["steering"]``."""

    def steer(self, program: int) -> None:
        self._owner.link["steering"] = program

    def set_super_packets(self, super_packets: bool) -> None:
        self._owner.link["super_packets"] = self.super_packets = super_packets

    def set_carrier(self, carrier: bool) -> None:
        self._owner.link["carrier"] = carrier


class MemorySystem(System):
    def __init__(self, wire: Wire | None = None, claims: str | None = None):
        self.wire = wire or Wire()
        self.claims = claims or secrets.token_hex(4)   # share it to make two routers collide
        self.hosts: dict[str, DeviceHost] = {}
        self.links: dict[str, dict] = {}
        self.sockets: dict[tuple[str, int], WireSocket] = {}
        self.worker_sockets: dict[tuple[str, int], list[WireSocket]] = {}
        self.netlink_double = MemoryNetlink(self)
        self.monitor = MemoryLinkMonitor()
        self.notify_environment: dict[str, str] = {}   # NOTIFY_SOCKET, WATCHDOG_USEC for tests
        self._next_index = 100

    def device(self, name: str, ethernet: bool, super_packets: bool,
               queues: int = 1) -> list[TunTapDevice]:
        if name in self.links:
            raise SystemProblem(f"a device named {name} already exists")
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(queues)]
        for _, host_end in pairs:
            host_end.setblocking(False)
        self.hosts[name] = DeviceHost([host_end for _, host_end in pairs])
        self._next_index += 1
        self.links[name] = {"index": self._next_index, "up": False, "mtu": 1500, "routes": {},
                            "super_packets": super_packets, "carrier": True,
                            "queues": queues, "open_queues": queues}
        return [MemoryDevice(name, router_end.fileno(), _DeviceFile(self, name, router_end),
                             ethernet, super_packets) for router_end, _ in pairs]

    def delete(self, name: str) -> None:
        """What `ip link del` does: the device goes, and the link monitor says so."""
        link = self.links.pop(name)
        self.hosts.pop(name).close()
        self.monitor.emit(LinkEvent(link["index"], name, False, None, True))

    def set_link(self, name: str, up: bool | None = None, mtu: int | None = None) -> None:
        """What `ip link set NAME down|up|mtu N` does: the kernel forgets the routes of a
        device set down, and the link monitor hears of the change."""
        link = self.links[name]
        if up is not None:
            link["up"] = up
            if not up:
                link["routes"] = {}
        if mtu is not None:
            link["mtu"] = mtu
        self.monitor.emit(LinkEvent(link["index"], name, link["up"], link["mtu"], False))

    def add_foreign_device(self, name: str) -> None:
        """A device this router did not make (another program's, or a leftover)."""
        self._next_index += 1
        self.links[name] = {"index": self._next_index, "up": True, "mtu": 1500, "routes": {}}

    def steering(self, workers: int, ethernet: bool) -> int:
        """A stand-in for the program's fd, which the devices record."""
        return os.open(os.devnull, os.O_RDONLY)

    def raw_socket(self, local: str, protocol: int, send_only: bool = False) -> RawSocket:
        return RawSocket(self._wire_socket(local, protocol, False, send_only), local)

    def udp_socket(self, local: str, port: int, dont_fragment: bool, link_header: int = 0,
                   ethernet: bool = False, shared: bool = False) -> UdpSocket:
        return UdpSocket(self._wire_socket(local, port, True, shared), local, link_header,
                         ethernet)

    def _wire_socket(self, local: str, number: int, udp: bool, beside: bool) -> WireSocket:
        """Worker 0's socket is ``sockets[(local, number)]``; the other workers' (``beside``
        it, once it exists) are ``worker_sockets[(local, number)]``."""
        main = self.sockets.get((local, number))
        if not beside or main is None or main.sock.fileno() == -1:
            made = self.sockets[(local, number)] = WireSocket(self.wire, local, number, udp)
            self.worker_sockets[(local, number)] = []
            return made
        others = self.worker_sockets[(local, number)]
        made = WireSocket(self.wire, local, number, udp, worker=len(others) + 1)
        others.append(made)
        return made

    def netlink(self) -> MemoryNetlink:
        return self.netlink_double

    def link_monitor(self) -> MemoryLinkMonitor:
        return self.monitor

    def notifier(self) -> Notifier:
        return Notifier(self.notify_environment)

    def claim(self, name: str) -> socket.socket:
        return super().claim(f"{self.claims}:{name}")


def drive(*routers: Router, rounds: int = 20) -> None:
    """Run each router's loops a few rounds, in turn, without waiting: its own, and its
    workers' (in the test's thread: the router's threads were not started)."""
    for _ in range(rounds):
        for router in routers:
            router.run_once(0.0)
            for worker in router.tunnel_set.workers.all[1:]:
                worker.loop.run_guarded(worker.round, 0.0)


def host_packets(host: DeviceHost) -> list[bytes]:
    """Everything the router delivered into a device since the last call."""
    packets = []
    while True:
        try:
            packets.append(host.recv(RECEIVE))
        except BlockingIOError:
            return packets



def ask(path: str | tuple[str, int], request: bytes, run_once: Callable[[], None],
        rounds: int = 200, shutdown: bool = False) -> bytes:
    """Send ``request`` to the control socket at ``path`` (or the TCP server at ``(address,
    port)``; then end the stream, with ``shutdown``) and return everything read until the
    server closes, running ``run_once()`` (the server's loop, in this thread) between
    reads. Fails if the server has not closed after ``rounds`` rounds."""
    family = socket.AF_UNIX if isinstance(path, str) else \
        socket.AF_INET6 if ":" in path[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.connect(path)
        client.setblocking(False)
        client.sendall(request)
        if shutdown:
            client.shutdown(socket.SHUT_WR)
        reply = b""
        for _ in range(rounds):
            run_once()
            try:
                while chunk := client.recv(RECEIVE):
                    reply += chunk
            except BlockingIOError:
                continue
            return reply
    raise AssertionError(f"no reply to {request[:40]!r} after {rounds} rounds: {reply[:200]!r}")
