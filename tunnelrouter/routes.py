"""Addresses, MTU, link state and routes of a tunnel device, through pyroute2 (netlink).

Every call is an idempotent ``replace``. Nothing here is undone by hand: the
devices are not persistent, so closing a device's fd removes it together with
its addresses and routes.
"""

from pathlib import Path

from pyroute2 import IPRoute

from encap.mtu import IPV6_MINIMUM_MTU

from tunnelrouter.config import Tunnel


def program_device(ipr: IPRoute, tunnel: Tunnel) -> None:
    (index,) = ipr.link_lookup(ifname=tunnel.name)
    if 6 not in tunnel.mode.inner_families:
        # ipip cannot carry IPv6: without this the kernel would send router
        # solicitations and MLD reports into the device, only to be dropped.
        _device_sysctl("ipv6", tunnel.name, "disable_ipv6")
    # The router writes ICMP errors into the device from the tunnel's own address;
    # the kernel drops packets with a local source as martians unless told otherwise.
    _device_sysctl("ipv4", tunnel.name, "accept_local")
    ipr.link("set", index=index, mtu=tunnel.device_mtu)
    for interface in tunnel.addresses:
        ipr.addr("replace", index=index, address=str(interface.ip),
                 prefixlen=interface.network.prefixlen)
    ipr.link("set", index=index, state="up")
    program_routes(ipr, tunnel)


def program_routes(ipr: IPRoute, tunnel: Tunnel, mtu: int | None = None) -> None:
    """The tunnel's routes, with ``mtu`` as their MTU (a learnt path MTU) or none (the
    device's). IPv6 routes never go below IPv6's minimum MTU, 1280."""
    (index,) = ipr.link_lookup(ifname=tunnel.name)
    for prefix in tunnel.routes:
        if mtu is None:
            ipr.route("replace", dst=str(prefix), oif=index)
        else:
            route_mtu = max(mtu, IPV6_MINIMUM_MTU) if prefix.version == 6 else mtu
            ipr.route("replace", dst=str(prefix), oif=index, metrics={"mtu": route_mtu})


def _device_sysctl(family: str, device: str, setting: str) -> None:
    Path(f"/proc/sys/net/{family}/conf/{device}/{setting}").write_text("1")
