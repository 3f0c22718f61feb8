"""Addresses, MTU, link state and routes of a tunnel device, through pyroute2 (netlink).

Every call is an idempotent ``replace``. Nothing here is undone by hand: the
devices are not persistent, so closing a device's fd removes it together with
its addresses and routes.
"""

from pathlib import Path

from pyroute2 import IPRoute

from tunnelrouter.config import Tunnel


def program_device(ipr: IPRoute, tunnel: Tunnel) -> None:
    (index,) = ipr.link_lookup(ifname=tunnel.name)
    if 6 not in tunnel.mode.inner_families:
        # ipip cannot carry IPv6: without this the kernel would send router
        # solicitations and MLD reports into the device, only to be dropped.
        Path(f"/proc/sys/net/ipv6/conf/{tunnel.name}/disable_ipv6").write_text("1")
    ipr.link("set", index=index, mtu=tunnel.device_mtu)
    for interface in tunnel.addresses:
        ipr.addr("replace", index=index, address=str(interface.ip),
                 prefixlen=interface.network.prefixlen)
    ipr.link("set", index=index, state="up")
    for prefix in tunnel.routes:
        ipr.route("replace", dst=str(prefix), oif=index)
