"""Netlink: the addresses, MTU, state and routes of tunnel devices (pyroute2), and the
kernel's link events (a small socket of our own, read inside the event loop).

Every programming call is an idempotent ``replace``; nothing is undone by hand,
since the devices are not persistent and closing one removes its addresses and
routes with it. pyroute2's ``NetlinkError`` is not an ``OSError``: both are
caught here, and come out as a :class:`SystemProblem` naming the key of the
configuration the failed call was about.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from pathlib import Path
from typing import NamedTuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from encap.mtu import IPV6_MINIMUM_MTU

from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.modes import TunnelConfig

IFF_UP = 0x1


class Netlink:
    """One pyroute2 socket for the daemon's lifetime, subscribed to nothing."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    def _route(self) -> IPRoute:
        if self._ipr is None:
            try:
                self._ipr = IPRoute(groups=0)
            except (NetlinkError, OSError) as error:
                raise SystemProblem(f"cannot open a netlink socket: {_reason(error)}") from None
        return self._ipr

    def index(self, name: str) -> int | None:
        """The index of the device ``name``, or None if there is none."""
        try:
            found = self._route().link_lookup(ifname=name)
        except (NetlinkError, OSError) as error:
            raise SystemProblem(f"cannot look up device {name}: {_reason(error)}") from None
        return found[0] if found else None

    def link_state(self, index: int) -> tuple[bool, int] | None:
        """``(up, mtu)`` of device ``index``, or None if it is gone."""
        try:
            (link,) = self._route().get_links(index)
        except (NetlinkError, OSError, ValueError):
            return None
        return bool(link["flags"] & IFF_UP), link.get("mtu")

    def program_device(self, tunnel: TunnelConfig, up: bool = True, routes: bool = True) -> None:
        """MTU, addresses, state (``up``) and (with ``routes``) routes of the tunnel's
        device."""
        name = tunnel.name
        index = self.index(name)
        if index is None:
            raise SystemProblem(f"device {name} vanished while it was being set up")
        if 6 not in tunnel.kind.inner_families:
            # ipip cannot carry IPv6: without this the kernel would send router
            # solicitations and MLD reports into the device, only to be dropped.
            _device_sysctl("ipv6", name, "disable_ipv6")
        # The router writes ICMP errors into the device from the tunnel's own address;
        # the kernel drops packets with a local source as martians unless told otherwise.
        _device_sysctl("ipv4", name, "accept_local")
        ipr = self._route()
        self._call(("mtu",), f"set the MTU of {name} to {tunnel.device_mtu}",
                   ipr.link, "set", index=index, mtu=tunnel.device_mtu)
        for position, interface in enumerate(tunnel.addresses):
            self._call(("addresses", position), f"add {interface} to {name}", ipr.addr,
                       "replace", index=index, address=str(interface.ip),
                       prefixlen=interface.network.prefixlen)
        if up:
            self._call((), f"set {name} up", ipr.link, "set", index=index, state="up")
            if routes:
                self.program_routes(tunnel)

    def program_routes(self, tunnel: TunnelConfig, mtu: int | None = None) -> None:
        """The tunnel's routes, with ``mtu`` as their MTU (a learnt path MTU) or none (the
        device's). IPv6 routes never go below IPv6's minimum MTU, 1280."""
        index = self.index(tunnel.name)
        if index is None:
            raise SystemProblem(f"device {tunnel.name} is gone")
        ipr = self._route()
        for position, route in enumerate(tunnel.routes):
            extra = _route_attributes(route)
            if mtu is not None:
                extra["metrics"] = {"mtu": max(mtu, IPV6_MINIMUM_MTU) if route.version == 6
                                    else mtu}
            self._call(("routes", position), f"route {route} into {tunnel.name}", ipr.route,
                       "replace", dst=str(route.to), oif=index, **extra)

    def withdraw(self, tunnel: TunnelConfig, addresses, routes) -> None:
        """Take ``addresses`` (interfaces) and ``routes`` off the tunnel's device: what a
        reload left out, or a silent peer's routes. What is already gone is no error."""
        index = self.index(tunnel.name)
        if index is None:
            return
        ipr = self._route()
        for route in routes:
            self._call(("routes",), f"remove the route {route} from {tunnel.name}", _absent_ok,
                       ipr.route, "del", dst=str(route.to), oif=index,
                       **_route_attributes(route))
        for interface in addresses:
            self._call(("addresses",), f"remove {interface} from {tunnel.name}", _absent_ok,
                       ipr.addr, "del", index=index, address=str(interface.ip),
                       prefixlen=interface.network.prefixlen)

    def routes_by_prefix(self, tables) -> dict[tuple[int, str, int, int, int], int]:
        """Every route of ``tables``: ``(family, destination, length, table, metric) ->
        device index``."""
        found = {}
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                for table in tables:
                    for route in self._route().get_routes(family=family, table=table):
                        if route.get("dst") is not None and route.get("oif") is not None:
                            found[(family, route.get("dst"), route["dst_len"], table,
                                   route.get("priority") or 0)] = route.get("oif")
        except (NetlinkError, OSError) as error:
            raise SystemProblem(f"cannot read the routing table: {_reason(error)}") from None
        return found

    def name_of(self, index: int) -> str:
        try:
            (link,) = self._route().get_links(index)
            return link.get("ifname") or f"index {index}"
        except (NetlinkError, OSError, ValueError):
            return f"index {index}"

    @staticmethod
    def _call(path: tuple, what: str, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except (NetlinkError, OSError) as error:
            number = error.code if isinstance(error, NetlinkError) else error.errno
            raise SystemProblem(f"the kernel refused to {what}: {_reason(error)}", path,
                                number) from None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _route_attributes(route) -> dict:
    """What besides destination and device tells a route apart: gateway, metric, table."""
    attributes = {"table": route.table, "priority": route.kernel_metric}
    if route.via is not None:
        attributes["gateway"] = str(route.via)
    return attributes


def _absent_ok(function, *args, **kwargs) -> None:
    """``function(*args, **kwargs)``, where "there is no such thing" means it is done."""
    try:
        function(*args, **kwargs)
    except NetlinkError as error:
        if error.code not in (errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


def _reason(error: Exception) -> str:
    if isinstance(error, NetlinkError):
        return f"{error.args[1] if len(error.args) > 1 else error} (errno {error.code})"
    return getattr(error, "strerror", None) or str(error)


def _device_sysctl(family: str, device: str, setting: str) -> None:
    path = Path(f"/proc/sys/net/{family}/conf/{device}/{setting}")
    try:
        path.write_text("1")
    except OSError as error:
        raise SystemProblem(f"cannot set {path}: {error.strerror}", errno=error.errno) from None


# -- link events ------------------------------------------------------------------------

NETLINK_HEADER = struct.Struct("=IHHII")      # length, type, flags, sequence, port
LINK_HEADER = struct.Struct("=BxHiII")        # family, type, index, flags, change
ATTRIBUTE = struct.Struct("=HH")              # length, type
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME, IFLA_MTU = 3, 4
RTMGRP_LINK = 1
RECEIVE_SIZE = 1 << 16


class LinkEvent(NamedTuple):
    index: int
    name: str
    up: bool
    mtu: int | None
    deleted: bool


class LinkMonitor:
    """The kernel's RTM_NEWLINK / RTM_DELLINK messages, read without blocking.

    When the kernel had to drop messages (ENOBUFS: the socket overflowed),
    ``overflowed`` is set: whoever reads must look at its links again.
    """

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self.sock.bind((0, RTMGRP_LINK))
        except OSError as error:
            raise SystemProblem(f"cannot listen to link events: {error.strerror}",
                                errno=error.errno) from None
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.overflowed = False

    def read_events(self) -> list[LinkEvent]:
        events = []
        for _ in range(64):
            try:
                data = self.sock.recv(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    self.overflowed = True
                    continue
                break
            events.extend(parse_link_messages(data))
        return events

    def close(self) -> None:
        self.sock.close()


def parse_link_messages(data: bytes) -> list[LinkEvent]:
    """The link messages in one netlink datagram (anything else, or malformed, skipped)."""
    events = []
    offset = 0
    while offset + NETLINK_HEADER.size <= len(data):
        length, kind, _, _, _ = NETLINK_HEADER.unpack_from(data, offset)
        if length < NETLINK_HEADER.size or offset + length > len(data):
            break
        body = offset + NETLINK_HEADER.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + LINK_HEADER.size <= offset + length:
            _, _, index, flags, _ = LINK_HEADER.unpack_from(data, body)
            name, mtu = "", None
            position = body + LINK_HEADER.size
            while position + ATTRIBUTE.size <= offset + length:
                size, attribute = ATTRIBUTE.unpack_from(data, position)
                if size < ATTRIBUTE.size or position + size > offset + length:
                    break
                value = data[position + ATTRIBUTE.size:position + size]
                if attribute == IFLA_IFNAME:
                    name = value.split(b"\0", 1)[0].decode(errors="replace")
                elif attribute == IFLA_MTU and len(value) >= 4:
                    mtu = int.from_bytes(value[:4], sys.byteorder)
                position += (size + 3) & ~3
            events.append(LinkEvent(index, name, bool(flags & IFF_UP), mtu, kind == RTM_DELLINK))
        offset += (length + 3) & ~3
    return events
