"""What ``tunnelrouter show`` prints for a status: golden text, line by line."""

import pytest

from tunnelrouter.config import parse_config
from tunnelrouter.control.render import duration, is_status, render_status, size
from tunnelrouter.router import Router
from tunnelrouter.tunnel.counters import Counters

from tests.tunnelrouter.doubles import MemorySystem
from tests.tunnelrouter.test_router import A, B, every_mode


def counters(**values) -> dict:
    """A tunnel's counters as the status has them: zero but for ``values``."""
    return Counters().as_dict() | values


GRE = {
    "name": "gre1", "mode": "gre", "local": "10.0.0.1", "peers": ["10.0.0.2"],
    "mtu": 1464, "effective_mtu": 1364,
    "path_mtu": {"10.0.0.2": {"mtu": 1400, "expires_in": 599.5}},
    "mss_clamp": {"ipv4": 1324, "ipv6": 1304},
    "counters": counters(rx_packets=5, rx_bytes=500, tx_packets=6, tx_bytes=600, icmp_sent=2,
                         wan_errors=1, drops={"gre_bad_checksum": 2, "too_big": 1}),
    "sequence_epochs": 2, "device": "up",
}
VXLAN = {
    "name": "vx1", "mode": "vxlan", "local": "10.0.0.1", "peers": ["10.0.0.2", "10.0.0.3"],
    "mtu": 1450, "effective_mtu": 1450, "path_mtu": {}, "mss_clamp": "off",
    "counters": counters(fdb_full=7), "vni": 7, "remote_checksum": ["tx", "rx"],
    "fdb_entries": 150,
    "fdb": [{"mac": "02:00:00:00:00:01", "remote": "10.0.0.3", "static": True,
             "expires_in": None},
            {"mac": "02:00:00:00:00:0b", "remote": "10.0.0.2", "static": False,
             "expires_in": 299.0}],
    "device": "gone (being made again)",
}


NOW = 1_800_000_000.0
LIVENESS = {"state": "up", "since": NOW - 3725, "transitions": 1, "keepalive": 10, "retries": 3,
            "probes_sent": 120, "probes_answered": 118, "probes_lost": 2, "rtt": 0.00042,
            "peers": {"10.0.0.2": {"latest_rx": NOW - 12.4}}}


def test_two_tunnels_with_everything_there_is_to_show():
    status = {"uptime": 93784.0, "internal_errors": 3,
              "unattributed": {"not_a_peer": 4, "truncated": 1}, "unattributed_wan_errors": 6,
              "tunnels": {"gre1": GRE | {"liveness": LIVENESS, "allowed_ips": ["10.2.0.0/16"],
                                         "rate_limit": {"packets": 20000, "bytes": None,
                                                        "burst": 0.1},
                                         "counters": GRE["counters"] | {"rx_bytes": 5 << 20}},
                          "vx1": VXLAN | {"liveness": {
                              "state": "unknown", "keepalive": None,
                              "peers": {"10.0.0.2": {"latest_rx": NOW - 0.2},
                                        "10.0.0.3": {"latest_rx": None}}}}},
              "config": {"generation": 3, "sha256": "ab" * 32, "path": "/etc/tr/site.yaml",
                         "last_reload": {"result": "applied"}}}
    assert render_status(status, NOW).split("\n") == [
        "router: up 1 day, 2 hours",
        "configuration: generation 3, sha256 abababababababab, from /etc/tr/site.yaml",
        "last reload: applied",
        "",
        "tunnel: gre1",
        "  mode: gre from 10.0.0.1",
        "  device: up, mtu 1464 (carries 1364 now)",
        "  mss clamp: ipv4 1324, ipv6 1304",
        "  transfer: 5.00 MiB received, 600 B sent (5 and 6 packets)",
        "  peer state: up for 1 hour, 2 minutes",
        "  keepalive: every 10 seconds, down after 3 unanswered; 120 sent, 118 answered, "
        "2 lost; round trip 0.42 ms",
        "  allowed ips: 10.2.0.0/16",
        "  rate limit: 20000 packets/s per peer, burst 0.1 s",
        "  peer: 10.0.0.2",
        "    latest packet: 12 seconds ago",
        "    path mtu: 1400 (expires in 599.5 s)",
        "  sequence epochs: 2 (the peer started numbering anew)",
        "  icmp sent: 2",
        "  wan errors: 1",
        "  dropped gre_bad_checksum: 2",
        "  dropped too_big: 1",
        "",
        "tunnel: vx1",
        "  mode: vxlan from 10.0.0.1, vni 7, remote checksum offload tx and rx",
        "  device: gone (being made again), mtu 1450",
        "  mss clamp: off",
        "  transfer: 0 B received, 0 B sent (0 and 0 packets)",
        "  keepalive: off",
        "  peer: 10.0.0.2",
        "    latest packet: just now",
        "  peer: 10.0.0.3",
        "    latest packet: none yet",
        "  fdb full: 7",
        "  fdb: 150 entries, the first 2 shown",
        "  fdb 02:00:00:00:00:01 -> 10.0.0.3 (static)",
        "  fdb 02:00:00:00:00:0b -> 10.0.0.2 (expires in 299.0 s)",
        "",
        "dropped before any tunnel, not_a_peer: 4",
        "dropped before any tunnel, truncated: 1",
        "WAN errors about no tunnel's datagram: 6",
        "internal errors: 3 (see the log)",
    ]


@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
    (5 << 30, "5.00 GiB"), (3 << 50, "3.00 PiB"), (5000 << 50, "5000.00 PiB")])
def test_transfer_totals_are_in_binary_units(count, text):
    assert size(count) == text


@pytest.mark.parametrize("seconds, text", [
    (0, "0 seconds"), (1, "1 second"), (59.9, "59 seconds"), (61, "1 minute, 1 second"),
    (3600, "1 hour"), (90061, "1 day, 1 hour")])
def test_durations_are_worded_as_wg_show_words_them(seconds, text):
    assert duration(seconds) == text


def test_workers_are_shown_with_what_each_read_when_there_are_several():
    text = render_status({"uptime": 1.0, "unattributed": {}, "tunnels": {"gre1": GRE | {
        "counters": counters()}}, "workers": [{"device_packets": 10, "wire_datagrams": 12},
                                              {"device_packets": 7, "wire_datagrams": 9}]})
    assert "workers: 2, packets read from devices / datagrams from the wire: 10 / 12, 7 / 9" \
        in text.split("\n")


def test_what_did_not_happen_is_not_shown():
    quiet_gre = GRE | {"sequence_epochs": 0, "path_mtu": {}, "counters": counters()}
    whole_fdb = VXLAN | {"fdb_entries": 2, "counters": counters()}
    text = render_status({"uptime": 1.0, "internal_errors": 0, "unattributed": {},
                          "unattributed_wan_errors": 0,
                          "workers": [{"device_packets": 5, "wire_datagrams": 6}],
                          "tunnels": {"gre1": quiet_gre, "vx1": whole_fdb}})
    assert "  fdb: 2 entries" in text.split("\n")
    for absent in ("sequence epochs", "path mtu to", "dropped", "internal errors", "shown",
                   "fdb full", "icmp sent", "WAN errors", "workers"):
        assert absent not in text


def test_a_running_routers_status_renders_every_tunnel():
    router = Router(parse_config({"tunnels": every_mode(A, [B], 1)}), system=MemorySystem())
    router.start()
    try:
        text = render_status(router.status())
    finally:
        router.close()
    lines = text.split("\n")
    for name in every_mode(A, [B], 1):
        assert f"tunnel: {name}" in lines
    assert len([line for line in lines if line.startswith("  device: up")]) == 5
    assert "  mss clamp: ipv6 1420" in lines                    # sit carries IPv6 only
    assert "  sequence epochs" not in text and "  fdb: 0 entries" in lines


WEB = {"protocol": "tcp", "listen": "0.0.0.0:8080", "to": "10.2.1.10:80", "state": "listening",
       "connections_open": 3, "connections_total": 120, "bytes_to_backend": 5000,
       "bytes_to_client": 90000,
       "refused": {"denied": 2, "rate": 0, "max_connections": 1, "connect_timeout": 0,
                   "connect_refused": 4, "connect_failed": 0},
       "ended": {"idle_timeout": 7, "max_lifetime": 0, "reset": 1},
       "dropped": {"accept_failed": 0}}
DNS = {"protocol": "udp", "listen": "[::]:53", "to": "[fd02::10]:53",
       "state": "draining (removed or changed by a reload)", "sessions_open": 1,
       "sessions_total": 9, "datagrams_to_backend": 30, "datagrams_to_client": 29,
       "bytes_to_backend": 1500, "bytes_to_client": 9000,
       "refused": {"denied": 0, "rate": 3, "max_connections": 0, "connect_failed": 0},
       "ended": {"idle_timeout": 8, "max_lifetime": 0},
       "dropped": {"send_failed": 0, "backend_unreachable": 2}}


def forwards_status(forwards: dict, tunnels: dict | None = None) -> dict:
    return {"uptime": 1.0, "internal_errors": 0, "unattributed": {},
            "unattributed_wan_errors": 0, "tunnels": tunnels or {}, "forwards": forwards}


def test_forwards_with_everything_there_is_to_show():
    assert render_status(forwards_status({"web": WEB, "dns": DNS})).split("\n") == [
        "router: up 1 second",
        "",
        "forward: web",
        "  tcp 0.0.0.0:8080 -> 10.2.1.10:80 (listening)",
        "  connections: 3 open, 120 in all",
        "  bytes: 5000 to the backend, 90000 to clients",
        "  refused denied: 2",
        "  refused max_connections: 1",
        "  refused connect_refused: 4",
        "  ended by idle_timeout: 7",
        "  ended by reset: 1",
        "",
        "forward: dns",
        "  udp [::]:53 -> [fd02::10]:53 (draining (removed or changed by a reload))",
        "  sessions: 1 open, 9 in all",
        "  datagrams: 30 to the backend, 29 to clients",
        "  bytes: 1500 to the backend, 9000 to clients",
        "  refused rate: 3",
        "  ended by idle_timeout: 8",
        "  dropped backend_unreachable: 2",
    ]


def test_a_forward_whose_process_has_not_reported_yet_shows_its_ends():
    starting = {key: WEB[key] for key in ("protocol", "listen", "to")} | {"state": "starting"}
    assert render_status(forwards_status({"web": starting})).split("\n")[2:4] == [
        "forward: web", "  tcp 0.0.0.0:8080 -> 10.2.1.10:80 (starting)"]


def test_a_status_of_forwards_only_or_of_tunnels_and_forwards_is_a_status():
    assert is_status(forwards_status({"web": WEB}))
    assert is_status(forwards_status({"web": WEB}, {"gre1": GRE}))


@pytest.mark.parametrize("status", [
    forwards_status({}),                                   # neither tunnels nor forwards
    forwards_status([WEB]),
    forwards_status({"web": {"protocol": "tcp"}}),         # a forward without its ends
    forwards_status({"web": WEB | {"state": 3}}),
])
def test_what_is_not_a_status_with_forwards_is_refused(status):
    assert not is_status(status)
