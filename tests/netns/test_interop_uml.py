"""tunnelrouter against a real Linux kernel's GRE / IP-in-IP / 6in4 tunnel (user-mode-linux).

The host kernel has no gre/ipip/sit modules, so the far end is a UML guest
(Linux 6.1) behind a TAP device in a namespace (see tests/peers/uml.py).
tunnelrouter runs in that same namespace with local = the TAP's underlay
address and remote = the guest's. Pings go from the namespace through
tunnelrouter's device to the guest's tunnel address, and from the guest (over
its console) to tunnelrouter's tunnel address; both sides' counters must show
the traffic, and tunnelrouter must drop nothing: GRE with key, checksums and
sequence numbers both ways (the guest drops anything out of order or with a
bad checksum, and so does tunnelrouter).
"""

import contextlib
import dataclasses
import time

import pytest

from tests.netns.routers import show, start_router, wait_for, without_dad
from tests.peers.uml import Tunnel, UmlPeer, build

pytestmark = pytest.mark.netns

HOST, GUEST = "10.99.0.1", "10.99.0.2"
# Tunnels created after these take effect send no router solicitations / MLD (gre, ipip).
QUIET = ("net.ipv6.conf.default.router_solicitations=0", "net.ipv6.conf.default.disable_ipv6=1")
# A GRE or IP-in-IP keepalive comes out of the guest's tunnel as a packet from the guest's own
# address to ours: Linux sends it on if it forwards (as a router does) and takes its own
# address as a source on the tunnel (otherwise it drops it as a martian). sit needs neither.
KEEPALIVE_SYSCTLS = ("net.ipv4.conf.all.accept_local=1", "net.ipv4.ip_forward=1")


@dataclasses.dataclass(frozen=True)
class Case:
    guest: Tunnel
    router: dict
    host_inner: str
    guest_inner: str
    sysctls: tuple[str, ...]


CASES = {
    "gre-key-csum-seq": Case(
        Tunnel("gre", key=42, csum=True, seq=True, inner=("192.168.50.2/30",)),
        {"mode": "gre", "key": 42, "checksum": True, "sequence": True,
         "addresses": ["192.168.50.1/30"]},
        "192.168.50.1", "192.168.50.2", QUIET),
    "ipip": Case(
        Tunnel("ipip", inner=("192.168.51.2/30",)),
        {"mode": "ipip", "addresses": ["192.168.51.1/30"]},
        "192.168.51.1", "192.168.51.2", QUIET),
    "sit": Case(
        Tunnel("sit", inner=("fd00:52::2/64",)),
        {"mode": "sit", "addresses": ["fd00:52::1/64"]},
        "fd00:52::1", "fd00:52::2", ()),
}


@pytest.fixture(scope="session")
def uml_cache():
    return build()


@contextlib.contextmanager
def guest_and_router(case: Case, ns, tmp_path, cache, router_keys: dict | None = None,
                     sysctls: tuple[str, ...] = ()):
    """The guest with ``case``'s tunnel, and tunnelrouter in ``ns`` as its peer."""
    without_dad(ns)
    with UmlPeer(ns.name, [case.guest], guest_addr=f"{GUEST}/24", host_addr=f"{HOST}/24",
                 sysctls=case.sysctls + sysctls, boot_timeout=20.0, cache=cache) as peer:
        process, control = start_router(ns, {"tunnels": {"trt0": {
            "local": HOST, "remote": GUEST, **(router_keys or {}), **case.router}}},
            tmp_path, "router")
        try:
            wait_for(control, process)
            yield peer, process, control
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except Exception:
                process.kill()


@pytest.fixture(params=sorted(CASES))
def router_and_guest(request, netns, tmp_path, uml_cache):
    case = CASES[request.param]
    ns = netns("uml")
    with guest_and_router(case, ns, tmp_path, uml_cache) as (peer, process, control):
        yield case, ns, peer, process, control


def guest_counter(peer: UmlPeer, name: str, counter: str) -> int:
    return int(peer.run(f"cat /sys/class/net/{name}/statistics/{counter}").strip())


def test_pings_both_ways_with_guest_kernel_tunnel(router_and_guest):
    case, ns, peer, process, control = router_and_guest
    name = case.guest.name

    result = ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", case.guest_inner,
                    check=False, timeout=15)
    assert result.returncode == 0, f"host -> guest:\n{result.stdout}{result.stderr}" + \
        peer.run("ip -s link show " + name, check=False)

    six = "-6 " if ":" in case.host_inner else ""
    output = peer.run(f"ping {six}-c 3 -i 0.2 -W 2 {case.host_inner}", timeout=20, check=False)
    assert " 0% packet loss" in output, f"guest -> host:\n{output}"

    assert process.poll() is None
    status = show(control)
    counters = status["tunnels"]["trt0"]["counters"]
    # 3 requests + 3 replies each way.
    assert counters["tx_packets"] >= 6 and counters["rx_packets"] >= 6, counters
    assert not counters["drops"], counters["drops"]
    assert not status["unattributed"], status["unattributed"]
    # The guest kernel accepted everything tunnelrouter sent (no rx errors: checksums,
    # keys and sequence numbers were all right).
    assert guest_counter(peer, name, "rx_packets") >= 6
    assert guest_counter(peer, name, "rx_errors") == 0
    assert guest_counter(peer, name, "tx_packets") >= 6


# -- keepalives: the guest kernel sends tunnelrouter's probes back --------------------------

def until_answered(control, name: str = "trt0", answers: int = 2, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        liveness = show(control)["tunnels"][name]["liveness"]
        if liveness["probes_answered"] >= answers and liveness["state"] == "up":
            return liveness
        assert time.monotonic() < deadline, f"no answers to {name}'s keepalives: {liveness}"
        time.sleep(0.2)


@pytest.fixture(params=sorted(CASES))
def keepalive_guest(request, netns, tmp_path, uml_cache):
    case = CASES[request.param]
    with guest_and_router(case, netns("ka"), tmp_path, uml_cache,
                          {"keepalive": 1, "keepalive-retries": 3}, KEEPALIVE_SYSCTLS) as guest:
        yield (case, *guest)


def test_the_guest_kernel_sends_every_modes_keepalive_back(keepalive_guest):
    case, peer, process, control = keepalive_guest
    liveness = until_answered(control)
    assert 0 < liveness["rtt"] < 1.0
    status = show(control)["tunnels"]["trt0"]
    assert not status["counters"]["drops"], status["counters"]
    assert process.poll() is None
