"""Netlink: link events parsed from the bytes the kernel sends (built here field by field,
and the kernel's own answer to a link dump), the link monitor's overflow, and the
programming calls' errors and route MTUs against a fake pyroute2 (read-only calls also
against the real one: no root needed, nothing changed)."""

import errno
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from tunnelrouter.config import parse_config
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.netlink import LinkEvent, LinkMonitor, Netlink, parse_link_messages

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/netlink.h>
NLMSG_DONE, RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR = 3, 16, 17, 18, 20
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFF_UP, IFF_RUNNING = 0x1, 0x40
ARPHRD_NONE = 0xFFFE


def attribute(kind: int, value: bytes) -> bytes:
    """struct rtattr (u16 length, u16 type) and its value, padded to 4 bytes."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + bytes(-length % 4)


def message(kind: int, body: bytes, sequence: int = 0) -> bytes:
    """struct nlmsghdr: u32 length, u16 type, u16 flags, u32 sequence, u32 port."""
    return struct.pack("=IHHII", 16 + len(body), kind, 0, sequence, 0) + body


def link(kind: int, index: int, flags: int, name: str | None = None, mtu: int | None = None,
         extra: bytes = b"") -> bytes:
    """An RTM_NEWLINK / RTM_DELLINK: struct ifinfomsg (u8 family, u8 pad, u16 type,
    s32 index, u32 flags, u32 change) and its attributes."""
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, ARPHRD_NONE, index, flags, 0xFFFFFFFF)
    body += extra
    if name is not None:
        body += attribute(IFLA_IFNAME, name.encode() + b"\0")
    if mtu is not None:
        body += attribute(IFLA_MTU, struct.pack("=I", mtu))
    return message(kind, body)


NEW_GRE1 = link(RTM_NEWLINK, 7, IFF_UP | IFF_RUNNING, "gre1", 1476)


# -- parse_link_messages -------------------------------------------------------------------

def test_a_new_link_gives_its_index_name_state_and_mtu():
    assert parse_link_messages(NEW_GRE1) == [LinkEvent(7, "gre1", True, 1476, False)]


def test_a_deleted_link_is_marked_deleted():
    assert parse_link_messages(link(RTM_DELLINK, 7, 0, "gre1")) == \
        [LinkEvent(7, "gre1", False, None, True)]


def test_several_messages_in_one_datagram_other_kinds_skipped():
    address = message(RTM_NEWADDR, bytes(8) + attribute(1, bytes(4)))
    data = (link(RTM_NEWLINK, 3, 0, "eth0", 9000, extra=attribute(IFLA_ADDRESS, bytes(6)))
            + address + link(RTM_DELLINK, 4, IFF_UP, "a-long-name-15c") + NEW_GRE1
            + message(NLMSG_DONE, struct.pack("=i", 0)))
    assert parse_link_messages(data) == [
        LinkEvent(3, "eth0", False, 9000, False),
        LinkEvent(4, "a-long-name-15c", True, None, True),
        LinkEvent(7, "gre1", True, 1476, False)]


def test_an_attribute_that_overruns_its_message_ends_the_attributes_not_the_datagram():
    overrun = link(RTM_NEWLINK, 5, IFF_UP, extra=struct.pack("=HH", 200, IFLA_IFNAME) + b"x\0\0\0")
    empty_attribute = link(RTM_NEWLINK, 6, IFF_UP, extra=struct.pack("=HH", 2, IFLA_MTU))
    short_mtu = link(RTM_NEWLINK, 8, IFF_UP, extra=attribute(IFLA_MTU, b"\1\2"))
    assert parse_link_messages(overrun + empty_attribute + short_mtu + NEW_GRE1) == [
        LinkEvent(5, "", True, None, False), LinkEvent(6, "", True, None, False),
        LinkEvent(8, "", True, None, False), LinkEvent(7, "gre1", True, 1476, False)]


def test_a_message_too_short_for_its_header_or_longer_than_the_datagram_ends_the_datagram():
    too_short = struct.pack("=IHHII", 8, RTM_NEWLINK, 0, 0, 0)
    assert parse_link_messages(NEW_GRE1 + too_short + NEW_GRE1) == \
        [LinkEvent(7, "gre1", True, 1476, False)]
    assert parse_link_messages(NEW_GRE1 + NEW_GRE1[:-1]) == \
        [LinkEvent(7, "gre1", True, 1476, False)]
    assert parse_link_messages(message(RTM_NEWLINK, bytes(8))) == []   # no whole ifinfomsg


DATAGRAM = (link(RTM_NEWLINK, 3, 0, "eth0", 9000) + NEW_GRE1
            + link(RTM_DELLINK, 4, IFF_UP, "x" * 15) + message(NLMSG_DONE, bytes(4)))


@given(st.integers(0, len(DATAGRAM)))
def test_a_cut_datagram_gives_the_events_of_its_whole_messages(length):
    events = parse_link_messages(DATAGRAM[:length])
    assert events == parse_link_messages(DATAGRAM)[:len(events)]


@given(st.binary(max_size=300))
def test_any_bytes_give_events_or_nothing_never_an_exception(data):
    for event in parse_link_messages(data):
        assert isinstance(event, LinkEvent)


@given(st.lists(st.tuples(st.integers(0, len(DATAGRAM) - 1), st.integers(0, 255)),
                max_size=8))
def test_a_corrupted_datagram_never_raises(corruptions):
    data = bytearray(DATAGRAM)
    for position, value in corruptions:
        data[position] = value
    assert len(parse_link_messages(bytes(data))) <= 4


def test_the_kernels_own_link_dump_parses_to_its_interfaces():
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                  + bytes(16))
        events, done = [], False
        while not done:
            data = sock.recv(1 << 16)
            events += parse_link_messages(data)
            done = _ends_the_dump(data)
    assert sorted((event.index, event.name) for event in events) == \
        sorted(socket.if_nameindex())
    for event in events:
        sysfs = Path("/sys/class/net") / event.name
        assert event.mtu == int((sysfs / "mtu").read_text())
        assert event.up == bool(int((sysfs / "flags").read_text(), 16) & IFF_UP)
        assert not event.deleted


def _ends_the_dump(data: bytes) -> bool:
    """The datagram holds NLMSG_DONE."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == NLMSG_DONE:
            return True
        if length < 16:
            return False
        offset += (length + 3) & ~3
    return False


# -- the link monitor ----------------------------------------------------------------------

class ScriptedSocket:
    """``recv`` returns (or, for an errno, raises) the next item; then EAGAIN."""

    def __init__(self, *items):
        self.items = list(items)

    def recv(self, _size):
        if not self.items:
            raise BlockingIOError(errno.EAGAIN, "nothing waits")
        item = self.items.pop(0)
        if isinstance(item, int):
            raise OSError(item, errno.errorcode[item])
        return item

    def close(self):
        pass


@pytest.fixture
def monitor():
    monitor = LinkMonitor()    # a real one: listening to link events needs no privilege
    yield monitor
    monitor.close()


def test_a_quiet_link_monitor_reads_nothing_without_blocking(monitor):
    assert monitor.read_events() == [] and not monitor.overflowed


def test_an_overflowed_monitor_says_so_and_reads_on(monitor):
    monitor.sock.close()
    monitor.sock = ScriptedSocket(errno.ENOBUFS, NEW_GRE1, link(RTM_DELLINK, 7, 0, "gre1"))
    assert monitor.read_events() == [LinkEvent(7, "gre1", True, 1476, False),
                                     LinkEvent(7, "gre1", False, None, True)]
    assert monitor.overflowed


def test_a_monitor_read_that_fails_otherwise_ends_the_round(monitor):
    monitor.sock.close()
    monitor.sock = ScriptedSocket(NEW_GRE1, errno.EBADF, NEW_GRE1)
    assert len(monitor.read_events()) == 1 and not monitor.overflowed


# -- programming, against a fake pyroute2 ----------------------------------------------------

class FakeIPRoute:
    """The IPRoute calls Netlink makes; ``fail`` maps a destination to the NetlinkError
    its route raises."""

    def __init__(self, index: int | None = 42, fail: dict | None = None):
        self.index = index
        self.fail = fail or {}
        self.routes: list[dict] = []

    def link_lookup(self, ifname):
        return [] if self.index is None else [self.index]

    def route(self, command, **arguments):
        if arguments["dst"] in self.fail:
            raise self.fail[arguments["dst"]]
        self.routes.append({"command": command} | arguments)

    def get_links(self, index):
        if index != self.index:
            raise NetlinkError(errno.ENODEV, "No such device")
        return [{"flags": IFF_UP | IFF_RUNNING, "mtu": 1476, "ifname": "gre1"}]

    def close(self):
        pass


TUNNEL = parse_config({"tunnels": {"gre1": {
    "mode": "gre", "local": "10.0.0.1", "remote": "10.0.0.2",
    "routes": ["192.168.50.0/24", "fd50::/64"]}}}).tunnels["gre1"]


def netlink_with(ipr: FakeIPRoute) -> Netlink:
    netlink = Netlink()
    netlink._ipr = ipr
    return netlink


def test_routes_carry_a_learnt_mtu_but_ipv6_routes_never_below_1280():
    ipr = FakeIPRoute()
    netlink_with(ipr).program_routes(TUNNEL, 1200)
    netlink_with(ipr).program_routes(TUNNEL)
    main4, main6 = {"table": 254, "priority": 0}, {"table": 254, "priority": 1024}
    assert ipr.routes == [
        {"command": "replace", "dst": "192.168.50.0/24", "oif": 42, **main4,
         "metrics": {"mtu": 1200}},
        {"command": "replace", "dst": "fd50::/64", "oif": 42, **main6, "metrics": {"mtu": 1280}},
        {"command": "replace", "dst": "192.168.50.0/24", "oif": 42, **main4},
        {"command": "replace", "dst": "fd50::/64", "oif": 42, **main6}]


def test_a_route_in_netplan_form_goes_through_its_gateway_at_its_metric_in_its_table():
    tunnel = parse_config({"tunnels": {"vx1": {
        "mode": "vxlan", "local": "10.0.0.1", "remote": "10.0.0.2", "id": 5,
        "addresses": ["192.168.102.1/24"],
        "routes": [{"to": "10.2.2.0/24", "via": "192.168.102.2", "metric": 100,
                    "table": 100}]}}}).tunnels["vx1"]
    ipr = FakeIPRoute()
    netlink = netlink_with(ipr)
    netlink.program_routes(tunnel)
    netlink.withdraw(tunnel, (), tunnel.routes)
    fields = {"dst": "10.2.2.0/24", "oif": 42, "table": 100, "priority": 100,
              "gateway": "192.168.102.2"}
    assert ipr.routes == [{"command": "replace", **fields}, {"command": "del", **fields}]


def test_a_route_the_kernel_refuses_is_a_problem_naming_its_key_and_errno():
    ipr = FakeIPRoute(fail={"fd50::/64": NetlinkError(errno.EEXIST, "File exists")})
    with pytest.raises(SystemProblem) as problem:
        netlink_with(ipr).program_routes(TUNNEL)
    assert (problem.value.path, problem.value.message) == (
        ("routes", 1), "the kernel refused to route fd50::/64 into gre1: File exists (errno 17)")


def test_routes_for_a_device_that_is_gone_are_a_problem_not_a_crash():
    with pytest.raises(SystemProblem, match="device gre1 is gone"):
        netlink_with(FakeIPRoute(index=None)).program_routes(TUNNEL)


def test_link_state_is_up_and_mtu_or_none_for_a_device_that_is_gone():
    netlink = netlink_with(FakeIPRoute())
    assert netlink.link_state(42) == (True, 1476)
    assert netlink.link_state(43) is None
    assert (netlink.name_of(42), netlink.name_of(43)) == ("gre1", "index 43")


def test_the_real_netlink_reads_this_hosts_links_and_routes():
    netlink = Netlink()
    try:
        lo = socket.if_nametoindex("lo")
        assert netlink.index("lo") == lo and netlink.index("no-such-dev0") is None
        assert netlink.link_state(lo) == (True, int(Path("/sys/class/net/lo/mtu").read_text()))
        assert netlink.name_of(lo) == "lo"
        indexes = {index for index, _ in socket.if_nameindex()}
        routes = netlink.routes_by_prefix({254})
        assert set(routes.values()) <= indexes
        assert {family for family, *_ in routes} <= {socket.AF_INET, socket.AF_INET6}
        assert {table for _, _, _, table, _ in routes} <= {254}
    finally:
        netlink.close()
