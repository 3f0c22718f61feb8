"""Reload: the difference is applied and nothing else. What a plan says (tunnelrouter/reload.py),
and a router in memory reloading its file: added tunnels come up, removed ones go, changed ones
change in place (the same device), unchanged ones are not touched, and a file that is wrong,
or that the system cannot take, is refused whole with the running configuration untouched."""

import json
import logging
import socket
from pathlib import Path

import pytest
import yaml

from tunnelrouter.config import load_config, parse_config
from tunnelrouter.reload import plan
from tunnelrouter import router as router_module
from tunnelrouter.router import Router

from tests.tunnelrouter.doubles import MemorySystem, Wire, ask, drive, host_packets
from tests.tunnelrouter.test_router import A, B, C, every_mode, ipv4

GRE = {"mode": "gre", "local": A, "remote": B, "key": 1,
       "addresses": ["192.168.9.1/24"], "routes": ["192.168.21.0/24"]}
IPIP = {"mode": "ipip", "local": A, "remote": B, "addresses": ["192.168.10.1/24"]}
VXLAN = {"mode": "vxlan", "local": A, "remotes": [B, C], "id": 7}


def config(tunnels: dict, forwards: dict | None = None):
    return parse_config({"tunnels": tunnels} | ({"forwards": forwards} if forwards else {}))


# -- the plan ---------------------------------------------------------------------------------

def test_a_plan_names_what_is_added_removed_and_changed_by_key_path():
    running = config({"gre1": GRE, "ipip1": IPIP})
    new = config({"gre1": GRE | {"mtu": 1400, "routes": ["192.168.21.0/24", "10.9.0.0/16"]},
                  "vx1": VXLAN})
    changes = plan(running, new)
    assert (changes.added, changes.removed) == (["vx1"], ["ipip1"])
    [change] = changes.changed
    assert (change.name, change.keys, change.recreate) == ("gre1", ["mtu", "routes[1]"], False)
    assert changes.lines() == ["add tunnel vx1", "remove tunnel ipip1",
                               "change in place tunnel gre1: mtu, routes[1]"]


def test_a_new_mode_remakes_the_device_and_the_same_file_changes_nothing():
    running = config({"t": GRE})
    assert plan(running, config({"t": GRE | {"mode": "gretap"}})).changed[0].recreate
    unchanged = plan(running, config({"t": GRE}))
    assert not unchanged and unchanged.lines() == ["nothing changes"]


def test_forwards_are_planned_by_name():
    web = {"listen": "127.0.0.1:8080", "to": "10.2.1.1:80"}
    running = config({"t": GRE}, {"web": web, "old": web | {"listen": "127.0.0.1:8081"}})
    new = config({"t": GRE}, {"web": web | {"to": "10.2.1.2:80"},
                              "dns": web | {"listen": "127.0.0.1:53", "protocol": "udp"}})
    changes = plan(running, new)
    assert (changes.forwards_added, changes.forwards_removed, changes.forwards_changed) == (
        ["dns"], ["old"], ["web"])


# -- a router reloading its file --------------------------------------------------------------

class Site:
    """A router started from a file the test rewrites."""

    def __init__(self, path: Path, tunnels: dict, system: MemorySystem):
        self.path = path
        self.write(tunnels)
        self.router = Router(load_config(path), None, system, config_path=str(path))
        self.router.start()

    def write(self, tunnels: dict) -> None:
        self.path.write_text(yaml.safe_dump({"tunnels": tunnels}))

    def reload(self, tunnels: dict | None = None, dry_run: bool = False) -> dict:
        if tunnels is not None:
            self.write(tunnels)
        return self.router.reload(dry_run=dry_run)

    @property
    def links(self) -> dict:
        return self.router.system.links


@pytest.fixture
def site(tmp_path):
    made = []

    def make(tunnels: dict, system: MemorySystem | None = None, name: str = "site") -> Site:
        made.append(Site(tmp_path / f"{name}.yaml", tunnels, system or MemorySystem()))
        return made[-1]
    yield make
    for each in made:
        each.router.close()


def test_an_applied_reload_settles_memory_and_a_refused_or_empty_one_does_not(site,
                                                                              monkeypatch):
    a = site({"gre1": GRE})
    settled = []
    monkeypatch.setattr(router_module, "settle_memory", lambda: settled.append(True))
    assert a.router.reload()["result"] == "unchanged"
    a.path.write_text("tunnels: [")
    assert a.router.reload()["result"] == "refused"
    assert settled == []
    a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE, "ipip1": IPIP}}))
    assert a.router.reload()["result"] == "applied" and settled == [True]


def test_an_added_tunnel_comes_up_and_the_others_are_not_touched(site):
    a = site({"gre1": GRE})
    endpoint, device = a.router.tunnels["gre1"].endpoint, a.router.tunnels["gre1"].device
    a.router.tunnels["gre1"].endpoint.counters.tx_packets = 7
    report = a.reload({"gre1": GRE, "ipip1": IPIP})
    assert report["result"] == "applied" and report["changes"] == ["add tunnel ipip1"]
    assert set(a.links) == {"gre1", "ipip1"} and a.links["ipip1"]["up"]
    assert a.router.tunnels["gre1"].endpoint is endpoint
    assert a.router.tunnels["gre1"].device is device
    assert a.router.status()["tunnels"]["gre1"]["counters"]["tx_packets"] == 7


def test_a_removed_tunnel_goes_with_its_device_socket_and_claim(site):
    a = site({"gre1": GRE, "ipip1": IPIP})
    a.reload({"gre1": GRE})
    assert set(a.links) == {"gre1"} and set(a.router.tunnels) == {"gre1"}
    assert not any(end[2] == 4 for end in a.router.underlays)   # the IP-in-IP socket closed
    # Its end is free: another router on this host may take it now.
    other = Router(config({"ipip1": IPIP}), None, MemorySystem(claims=a.router.system.claims))
    other.start()
    other.close()


def test_a_changed_mtu_keeps_the_device_its_index_and_its_counters(site):
    a = site({"gre1": GRE})
    tunnel = a.router.tunnels["gre1"]
    index, device = a.links["gre1"]["index"], tunnel.device
    tunnel.endpoint.counters.rx_packets = 5
    report = a.reload({"gre1": GRE | {"mtu": 1300}})
    assert report["changes"] == ["change in place tunnel gre1: mtu"]
    assert a.links["gre1"]["index"] == index and a.router.tunnels["gre1"].device is device
    assert a.links["gre1"]["mtu"] == 1300
    status = a.router.status()["tunnels"]["gre1"]
    assert status["mtu"] == 1300 and status["counters"]["rx_packets"] == 5


def test_addresses_and_routes_the_new_file_leaves_out_are_taken_off_the_device(site):
    a = site({"gre1": GRE | {"addresses": ["192.168.9.1/24", "fd09::1/64"],
                             "routes": ["192.168.21.0/24", "192.168.22.0/24"]}})
    a.reload({"gre1": GRE})
    assert a.links["gre1"]["addresses"] == {"192.168.9.1/24"}
    assert set(a.links["gre1"]["routes"]) == {"192.168.21.0/24"}


def test_a_changed_key_is_claimed_anew_and_traffic_flows_with_it_after_both_ends_reload(site):
    wire = Wire()
    a = site({"gre1": GRE}, MemorySystem(wire), "a")
    b = site({"gre1": GRE | {"local": B, "remote": A}}, MemorySystem(wire), "b")
    a.reload({"gre1": GRE | {"key": 99}})
    b.reload({"gre1": GRE | {"local": B, "remote": A, "key": 99}})
    a.router.system.hosts["gre1"].send(ipv4())
    drive(a.router, b.router)
    assert host_packets(b.router.system.hosts["gre1"]) == [ipv4()]
    assert not any(":1" in name for name in a.router.tunnel_set.claims)


def test_a_file_that_is_not_valid_is_refused_and_the_running_tunnels_go_on(site):
    a = site({"gre1": GRE})
    a.path.write_text("tunnels:\n  gre1:\n    mode: gre\n    ttl: 0\n")
    report = a.reload()
    assert report["result"] == "refused" and report["changes"] == []
    assert any("ttl" in problem for problem in report["problems"])
    assert set(a.links) == {"gre1"} and a.router.generation == 1
    assert a.router.status()["config"]["last_reload"]["result"] == "refused"


def test_a_file_the_system_cannot_take_is_refused_whole(site):
    held = MemorySystem()
    a = site({"gre1": GRE}, held)
    rival = Router(config({"x": IPIP}), None, MemorySystem(claims=held.claims))
    rival.start()                      # another router holds IP-in-IP from A to B
    try:
        report = a.reload({"gre1": GRE | {"mtu": 1300}, "ipip1": IPIP})
    finally:
        rival.close()
    assert report["result"] == "refused"
    assert any("held by another tunnelrouter" in problem for problem in report["problems"])
    assert set(a.links) == {"gre1"} and a.links["gre1"]["mtu"] != 1300


def test_a_dry_run_says_what_would_change_and_changes_nothing(site):
    a = site({"gre1": GRE})
    report = a.reload({"ipip1": IPIP}, dry_run=True)
    assert report["result"] == "dry run"
    assert report["changes"] == ["add tunnel ipip1", "remove tunnel gre1"]
    assert set(a.links) == {"gre1"} and a.router.generation == 1


def test_a_new_mode_remakes_the_device(site):
    a = site({"t1": GRE})
    index = a.links["t1"]["index"]
    report = a.reload({"t1": GRE | {"mode": "gretap"}})
    assert report["changes"] == ["remake the device of tunnel t1: mode"]
    assert a.links["t1"]["index"] != index and a.router.tunnels["t1"].config.mode == "gretap"


def test_every_reload_is_a_generation_with_the_files_sha256(site, caplog):
    caplog.set_level(logging.INFO, "tunnelrouter")
    a = site({"gre1": GRE})
    first = a.router.status()["config"]
    a.reload({"gre1": GRE, "ipip1": IPIP})
    second = a.router.status()["config"]
    assert (first["generation"], second["generation"]) == (1, 2)
    assert second["sha256"] != first["sha256"] and len(second["sha256"]) == 64
    assert any(f"reload: generation 2, sha256 {second['sha256']}: add tunnel ipip1" in
               record.getMessage() for record in caplog.records)
    assert a.reload()["result"] == "unchanged" and a.router.generation == 2


def test_a_vxlan_tunnel_changed_in_place_keeps_what_it_learnt_of_remotes_it_still_has(site):
    a = site({"vx1": VXLAN})
    endpoint = a.router.tunnels["vx1"].endpoint
    destinations = endpoint.destinations
    endpoint.fdb.learn(b"\x02\0\0\0\0\x0b", destinations[B], 100.0)
    endpoint.fdb.learn(b"\x02\0\0\0\0\x0c", destinations[C], 100.0)
    a.reload({"vx1": VXLAN | {"remotes": [B], "ageing": 600}})
    fdb = a.router.tunnels["vx1"].endpoint.fdb
    assert list(fdb.entries) == [b"\x02\0\0\0\0\x0b"]


def test_a_vxlan_socket_joins_checksums_left_to_it_while_a_tunnel_on_it_agrees(site):
    def joins() -> bool:
        [udp] = [u for end, u in a.router.tunnel_set.underlays.items() if end[2] == 4789]
        return udp.remote_checksum is not None

    a = site({"vx1": VXLAN})
    assert not joins()
    other = VXLAN | {"id": 8, "remote-checksum-rx": True}
    a.reload({"vx1": VXLAN, "vx2": other})
    assert joins()
    a.reload({"vx1": VXLAN | {"remote-checksum-rx": True},
              "vx2": other | {"remote-checksum-rx": False}})
    assert joins()
    a.reload({"vx1": VXLAN, "vx2": other | {"remote-checksum-rx": False}})
    assert not joins()
    a.reload({"vx1": VXLAN | {"remote-checksum-rx": True}})
    assert joins()
    a.reload({"vx1": VXLAN | {"remote-checksum-rx": True}, "vx2": other})
    a.reload({"vx1": VXLAN | {"remote-checksum-rx": True}})    # vx2 removed: vx1 still agrees
    assert joins()
    a.reload({"vx1": VXLAN, "vx2": other})
    a.reload({"vx1": VXLAN})                                   # the one that agreed removed
    assert not joins()


def test_allowed_ips_and_rate_limit_change_in_place_and_apply_at_once(site):
    wire = Wire()
    a = site({"gre1": GRE}, MemorySystem(wire), "a")
    b = site({"gre1": GRE | {"local": B, "remote": A}}, MemorySystem(wire), "b")
    device, index = a.router.tunnels["gre1"].device, a.links["gre1"]["index"]

    def delivered(packets: int = 1) -> int:
        """How many of ``packets`` from b's host reach a's device (datagrams of one flow
        may reach the device joined: counted by the counter)."""
        before = a.router.status()["tunnels"]["gre1"]["counters"]["rx_packets"]
        for _ in range(packets):
            b.router.system.hosts["gre1"].send(ipv4())
        drive(b.router, a.router)
        host_packets(a.router.system.hosts["gre1"])
        return a.router.status()["tunnels"]["gre1"]["counters"]["rx_packets"] - before

    assert delivered() == 1
    report = a.reload({"gre1": GRE | {"allowed-ips": ["192.168.5.0/24"]}})
    assert report["changes"] == ["change in place tunnel gre1: allowed-ips"]
    assert delivered() == 0
    a.reload({"gre1": GRE | {"allowed-ips": ["192.168.1.0/24"],
                             "rate-limit": {"packets": 10, "burst": "200ms"}}})
    assert delivered(5) == 2
    report = a.reload({"gre1": GRE | {"allowed-ips": ["192.168.1.0/24"],
                                      "rate-limit": {"packets": 20, "burst": "200ms"}}})
    assert report["changes"] == ["change in place tunnel gre1: rate-limit.packets"]
    assert a.router.tunnels["gre1"].device is device and a.links["gre1"]["index"] == index
    counters = a.router.status()["tunnels"]["gre1"]["counters"]
    assert counters["rx_packets"] == 3
    assert counters["drops"] == {"source_not_allowed": 1, "rate_limited": 3}


def test_twenty_reloads_of_other_tunnels_leave_an_unchanged_one_forwarding(site):
    wire = Wire()
    a = site({"gre1": GRE}, MemorySystem(wire), "a")
    b = site({"gre1": GRE | {"local": B, "remote": A}}, MemorySystem(wire), "b")
    endpoint = a.router.tunnels["gre1"].endpoint
    for round_ in range(1, 21):   # each round differs from the one before
        extra = {"ipip1": IPIP | {"mtu": 1300 + round_}} if round_ % 3 else {}
        if round_ % 4 == 1:
            extra["vx1"] = VXLAN
        a.reload({"gre1": GRE} | extra)
        a.router.system.hosts["gre1"].send(ipv4())
        drive(a.router, b.router)
        assert host_packets(b.router.system.hosts["gre1"]) == [ipv4()], round_
    assert a.router.tunnels["gre1"].endpoint is endpoint
    used = {tunnel.config.kind.underlay_end(tunnel.config) for tunnel in a.router.tunnels.values()}
    assert set(a.router.underlays) == used   # no socket left behind by a removed tunnel
    assert json.loads(json.dumps(a.router.status()))["config"]["generation"] == 21


def free_port() -> int:
    """A port free on every address (a test may move a listener from 127.0.0.1 to the
    wildcard of the same port)."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def test_forwards_come_and_go_with_reloads_the_forwarder_process_with_them(site, tmp_path):
    a = site({"gre1": GRE})
    web = {"listen": f"127.0.0.1:{free_port()}", "to": "127.0.0.1:9"}
    a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE}, "forwards": {"web": web}}))
    assert a.router.reload()["changes"] == ["add forward web"]
    assert a.router.forwarder is not None and list(a.router.status()["forwards"]) == ["web"]
    dns = {"listen": f"127.0.0.1:{free_port()}", "protocol": "udp", "to": "127.0.0.1:53"}
    a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE},
                                      "forwards": {"web": web, "dns": dns}}))
    report = a.router.reload()
    assert report["result"] == "applied" and report["changes"] == ["add forward dns"]
    assert a.reload({"gre1": GRE})["result"] == "applied"
    assert a.router.forwarder is None and "forwards" not in a.router.status()


# -- metrics: ---------------------------------------------------------------------------------

def scrape(router: Router, where) -> int:
    """The HTTP status code of a scrape of ``where`` (address, port)."""
    return int(ask(where, b"GET /metrics HTTP/1.1\r\n\r\n", router.run_once).split(b" ", 2)[1])


def refused(where) -> bool:
    try:
        socket.create_connection(where, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_metrics_are_planned_like_the_rest():
    off, on = config({"gre1": GRE}), parse_config({"tunnels": {"gre1": GRE},
                                                  "metrics": "127.0.0.1:9477"})
    moved = parse_config({"tunnels": {"gre1": GRE}, "metrics": "[::1]:9100"})
    assert plan(off, on).lines() == ["metrics: listen on 127.0.0.1:9477"]
    assert plan(on, moved).lines() == ["metrics: move from 127.0.0.1:9477 to [::1]:9100"]
    assert plan(on, off).lines() == ["metrics: off (was 127.0.0.1:9477)"]
    assert not plan(on, on)


def test_metrics_are_started_moved_and_stopped_by_reloads(site):
    a = site({"gre1": GRE})
    first, second = ("127.0.0.1", free_port()), ("::1", free_port())

    def write(metrics: str | None) -> None:
        a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE}} |
                                         ({"metrics": metrics} if metrics else {})))
    write(f"127.0.0.1:{first[1]}")
    assert a.router.reload(dry_run=True)["changes"] == [f"metrics: listen on 127.0.0.1:{first[1]}"]
    assert a.router.metrics is None
    assert a.router.reload()["result"] == "applied"
    assert scrape(a.router, first) == 200
    write(f"[::1]:{second[1]}")
    assert a.router.reload()["result"] == "applied"
    assert scrape(a.router, second) == 200 and refused(first)
    assert str(a.router.config.metrics) == f"[::1]:{second[1]}"
    write(None)
    assert a.router.reload()["changes"] == [f"metrics: off (was [::1]:{second[1]})"]
    assert a.router.metrics is None and refused(second)
    assert a.router.status()["config"]["reloads"] == {"applied": 3}


def test_metrics_that_cannot_listen_on_their_new_address_stay_where_they_were(site):
    port = free_port()
    a = site({"gre1": GRE})
    a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE}, "metrics": f"127.0.0.1:{port}"}))
    a.router.reload()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE, "ipip1": IPIP},
                                          "metrics": f"127.0.0.1:{taken}"}))
        report = a.router.reload()
    assert report["result"] == "applied with failures"
    assert report["problems"] == [
        f"metrics: cannot listen on 127.0.0.1:{taken}: Address already in use (another "
        f"program, or another tunnelrouter, listens there: choose another port); the metrics "
        f"stay on 127.0.0.1:{port}"]
    assert "ipip1" in a.router.tunnels                  # the rest was applied
    assert scrape(a.router, ("127.0.0.1", port)) == 200
    assert a.router.config.metrics.port == port         # the next reload tries again
    status = a.router.status()
    assert status["config"]["reloads"] == {"applied": 1, "applied_with_failures": 1}
    assert b"tunnelrouter_config_last_reload_success 0\n" in ask(
        ("127.0.0.1", port), b"GET /metrics HTTP/1.0\r\n\r\n", a.router.run_once)


def test_metrics_moving_to_the_wildcard_of_their_own_port_step_aside_first(site):
    port = free_port()
    a = site({"gre1": GRE})
    for metrics in (f"127.0.0.1:{port}", f"0.0.0.0:{port}"):
        a.path.write_text(yaml.safe_dump({"tunnels": {"gre1": GRE}, "metrics": metrics}))
        assert a.router.reload()["result"] == "applied"
    assert str(a.router.metrics.endpoint) == f"0.0.0.0:{port}"
    assert scrape(a.router, ("127.0.0.1", port)) == 200
