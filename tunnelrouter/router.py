"""The router: devices, sockets and one event loop for every configured tunnel.

Each wakeup drains a file descriptor until EAGAIN (at most ``BATCH`` packets,
so one busy tunnel cannot starve the others) through two preallocated buffers,
one per direction. Datagrams are demultiplexed to their tunnel by source
address (plus GRE key) or by VNI; what belongs to no tunnel is counted here.
"""

import errno
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections import defaultdict

from pyroute2 import IPRoute

from encap.errors import DecodeError, DropReason
from encap.gre import gre_key
from encap.mtu import Mode
from encap.vxlan import vxlan_decap
from encap.wire import HEADROOM

from tunnelrouter.config import RouterConfig
from tunnelrouter.counters import Counters
from tunnelrouter.datapath import (EXTENDED_ERROR, ORIGIN_LOCAL, PROTOCOL_BY_MODE, RawTunnel,
                                   VxlanTunnel)
from tunnelrouter.device import TunTapDevice
from tunnelrouter.routes import program_device, program_routes
from tunnelrouter.transport import IP_RECVERR, IPV6_RECVERR, raw_socket, udp_socket

log = logging.getLogger("tunnelrouter")

BATCH = 64
BUFFER_SIZE = HEADROOM + 65536
HOUSEKEEPING_INTERVAL = 1.0
ERROR_QUOTE = 2048        # an ICMP error quotes at most 576 (IPv4) or 1280 (IPv6) bytes
ERROR_ANCILLARY = 512
_EXTENDED_ERROR_MESSAGES = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}


class Router:
    def __init__(self, config: RouterConfig, control_path: str | None = None):
        self.config = config
        self.control_path = control_path
        self.counters = Counters()   # what no tunnel can be blamed for: strangers, unknown VNIs
        self.tunnels: dict[str, RawTunnel | VxlanTunnel] = {}
        self._devices: list[TunTapDevice] = []
        self._sockets: list[socket.socket] = []
        # epoll itself, not selectors: selectors hides EPOLLERR from a descriptor
        # registered for reading, and EPOLLERR is how the error queue says it has ICMP.
        self._epoll = select.epoll()
        self._handlers: dict[int, object] = {}
        self._wire_buf = bytearray(BUFFER_SIZE)
        self._wire_view = memoryview(self._wire_buf)
        self._device_buf = bytearray(BUFFER_SIZE)
        self._device_view = memoryview(self._device_buf)
        self._device_rx = self._device_view[HEADROOM:]
        self._stopping = False
        self._control: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.started = time.monotonic()

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Create everything, or nothing: a failure undoes what was made."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        raw_sockets: dict[tuple, socket.socket] = {}
        udp_sockets: dict[tuple, socket.socket] = {}
        by_source: dict[tuple, dict[str, list[RawTunnel]]] = defaultdict(lambda: defaultdict(list))
        by_vni: dict[tuple, dict[int, VxlanTunnel]] = defaultdict(dict)
        with IPRoute() as ipr:
            for name, tunnel in self.config.tunnels.items():
                device = TunTapDevice(name, ethernet=tunnel.mode.is_ethernet)
                self._devices.append(device)
                program_device(ipr, tunnel)
                if tunnel.mode == Mode.VXLAN:
                    end = (str(tunnel.local), tunnel.port)
                    if end not in udp_sockets:
                        udp_sockets[end] = self._own(udp_socket(*end, tunnel.pmtu_discovery))
                    datapath = VxlanTunnel(tunnel, device, udp_sockets[end])
                    by_vni[end][tunnel.id] = datapath
                else:
                    end = (str(tunnel.local), PROTOCOL_BY_MODE[tunnel.mode])
                    if end not in raw_sockets:
                        raw_sockets[end] = self._own(raw_socket(*end))
                    datapath = RawTunnel(tunnel, device, raw_sockets[end])
                    by_source[end][str(tunnel.remote)].append(datapath)
                self._watch(device.fd, self._device_reader(datapath))
                self.tunnels[name] = datapath
        for end, sock in raw_sockets.items():
            sources = {source: tuple(tunnels) for source, tunnels in by_source[end].items()}
            self._watch(sock.fileno(), self._raw_wire_reader(sock, sources))
        for end, sock in udp_sockets.items():
            self._watch(sock.fileno(), self._vxlan_wire_reader(sock, by_vni[end]))
        if self.control_path:
            self._open_control()
        log.info("started %d tunnel(s): %s", len(self.tunnels), ", ".join(self.tunnels))

    def _watch(self, fd: int, handler) -> None:
        """Call ``handler(epoll events)`` whenever ``fd`` is readable or has an error."""
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def _own(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def close(self) -> None:
        """Remove everything the router made: devices (with their routes), sockets."""
        self._epoll.close()
        for sock in self._sockets:
            sock.close()
        for device in self._devices:
            device.close()
        if self._control is not None:
            self._control.close()
            try:
                os.unlink(self.control_path)
            except FileNotFoundError:
                pass
        if self._wakeup is not None:
            for end in self._wakeup:
                end.close()
        self._sockets.clear()
        self._devices.clear()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then clean up."""
        self._install_signal_handlers()
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            while not self._stopping:
                for fd, events in self._epoll.poll(HOUSEKEEPING_INTERVAL):
                    self._handlers[fd](events)
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
        finally:
            log.info("stopping")
            self.close()

    def stop(self) -> None:
        self._stopping = True

    def _install_signal_handlers(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._watch(reader.fileno(), lambda _: reader.recv(64))
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def _housekeeping(self, now: float) -> None:
        for datapath in self.tunnels.values():
            if isinstance(datapath, VxlanTunnel):
                datapath.fdb.expire(now)
            if datapath.expire_path_mtu(now):
                self._mtu_changed(datapath)

    def _mtu_changed(self, datapath: RawTunnel | VxlanTunnel) -> None:
        """The effective MTU moved: the kernel's routes into the tunnel follow it, so that
        it answers senders itself (and fragments what may be fragmented) before the
        packets reach us."""
        mtu = datapath.effective_mtu
        lowered = mtu < datapath.config.device_mtu
        log.info("tunnel %s: path MTU %s, now carries %d-byte packets", datapath.name,
                 datapath.pmtu.status(time.monotonic()) or "back to the link's", mtu)
        try:
            with IPRoute() as ipr:
                program_routes(ipr, datapath.config, mtu if lowered else None)
        except OSError as error:
            log.warning("tunnel %s: cannot set the route MTU: %s", datapath.name, error)

    # -- readers: drain a descriptor, hand each packet to its datapath --------------------

    def _device_reader(self, datapath: RawTunnel | VxlanTunnel):
        read, rx, buf, view = datapath.device.read_into, self._device_rx, self._device_buf, \
            self._device_view
        from_device = datapath.from_device

        def drain(_events) -> None:
            now = time.monotonic()
            for _ in range(BATCH):
                try:
                    n = read(rx)
                except BlockingIOError:
                    return
                from_device(buf, view, HEADROOM + n, now)
        return drain

    def _raw_wire_reader(self, sock: socket.socket, sources: dict[str, tuple[RawTunnel, ...]]):
        receive, buf, view, drops = sock.recvfrom_into, self._wire_buf, self._wire_view, \
            self.counters.drops

        def on_error(origin, icmp_type, code, info, address, quoted, now) -> None:
            tunnels = sources.get(address[0], ())
            if len(tunnels) > 1 and origin != ORIGIN_LOCAL:
                keyed = _by_gre_key(tunnels, quoted)
                tunnels = (keyed,) if keyed is not None else ()
            for datapath in tunnels:
                if datapath.wan_error(origin, icmp_type, code, info, address[0], quoted, now):
                    self._mtu_changed(datapath)

        def drain(events) -> None:
            if events & select.EPOLLERR:
                self._read_errors(sock, on_error)
            for _ in range(BATCH):
                try:
                    n, (source, _) = receive(buf)
                except BlockingIOError:
                    return
                except OSError:
                    self._read_errors(sock, on_error)
                    continue
                tunnels = sources.get(source)
                if tunnels is None:
                    drops[DropReason.NOT_A_PEER] += 1
                    continue
                datagram = view[:n]
                datapath = tunnels[0] if len(tunnels) == 1 else _by_gre_key(tunnels, datagram)
                if datapath is None:
                    drops[DropReason.GRE_WRONG_KEY] += 1
                    continue
                datapath.from_wire(datagram)
        return drain

    def _vxlan_wire_reader(self, sock: socket.socket, by_vni: dict[int, VxlanTunnel]):
        receive, buffers, view, drops = sock.recvmsg_into, [self._wire_buf], self._wire_view, \
            self.counters.drops
        space = socket.CMSG_SPACE(4)
        # IP_TOS arrives as one byte, IPV6_TCLASS as a native int: its low byte either way.
        low_byte = 0 if sys.byteorder == "little" else -1

        def on_error(origin, icmp_type, code, info, address, quoted, now) -> None:
            vni = int.from_bytes(quoted[4:7], "big") if len(quoted) >= 8 else None
            datapath = by_vni.get(vni)
            if datapath is not None and address[0] in datapath.destinations:
                if datapath.wan_error(origin, icmp_type, code, info, address[0], quoted, now):
                    self._mtu_changed(datapath)

        def drain(events) -> None:
            if events & select.EPOLLERR:
                self._read_errors(sock, on_error)
            now = time.monotonic()
            for _ in range(BATCH):
                try:
                    n, ancillary, _, address = receive(buffers, space)
                except BlockingIOError:
                    return
                except OSError:
                    self._read_errors(sock, on_error)
                    continue
                try:
                    vni, frame = vxlan_decap(view[:n])
                except DecodeError as error:
                    drops[error.reason] += 1
                    continue
                datapath = by_vni.get(vni)
                if datapath is None:
                    drops[DropReason.VXLAN_UNKNOWN_VNI] += 1
                    continue
                tos = ancillary[0][2][low_byte] if ancillary else 0
                datapath.from_wire(frame, address[0], tos, now)
        return drain

    def _read_errors(self, sock: socket.socket, on_error) -> None:
        """Everything on the socket's error queue: ICMP errors from the WAN about our
        datagrams, and local EMSGSIZE, each with the datagram as far as it was quoted."""
        now = time.monotonic()
        while True:
            try:
                data, ancillary, _, address = sock.recvmsg(ERROR_QUOTE, ERROR_ANCILLARY,
                                                           socket.MSG_ERRQUEUE)
            except BlockingIOError:
                return
            for level, kind, payload in ancillary:
                if (level, kind) in _EXTENDED_ERROR_MESSAGES and \
                        len(payload) >= EXTENDED_ERROR.size:
                    _, origin, icmp_type, code, _, info, _ = EXTENDED_ERROR.unpack_from(payload)
                    on_error(origin, icmp_type, code, info, address, memoryview(data), now)

    # -- control socket (``tunnelrouter show``) ------------------------------------------

    def _open_control(self) -> None:
        os.makedirs(os.path.dirname(self.control_path) or ".", mode=0o750, exist_ok=True)
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(self.control_path)
        os.chmod(self.control_path, 0o660)
        control.listen(8)
        control.setblocking(False)
        self._control = control
        self._watch(control.fileno(), self._answer_control)

    def _answer_control(self, _events) -> None:
        try:
            connection, _ = self._control.accept()
        except BlockingIOError:
            return
        with connection:
            connection.settimeout(1.0)
            try:
                connection.recv(256)
                connection.sendall(json.dumps(self.status()).encode() + b"\n")
            except OSError as error:
                if error.errno not in (errno.EPIPE, errno.ECONNRESET) and \
                        not isinstance(error, TimeoutError):
                    raise

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "uptime": round(now - self.started, 1),
            "unattributed": self.counters.as_dict()["drops"],
            "tunnels": {name: datapath.status(now) for name, datapath in self.tunnels.items()},
        }


def _by_gre_key(tunnels: tuple[RawTunnel, ...], datagram: memoryview) -> RawTunnel | None:
    """Several GRE tunnels between the same two addresses differ only by key."""
    key = gre_key(datagram[(datagram[0] & 0x0F) * 4:]) if len(datagram) >= 20 else None
    for datapath in tunnels:
        if datapath.config.key == key:
            return datapath
    return None
