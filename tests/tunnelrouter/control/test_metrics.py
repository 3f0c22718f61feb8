"""The status as metrics (tunnelrouter/control/metrics.py): names, labels, values, and text
that Prometheus's own promtool and prometheus_client's parser (independent readers of the
format) accept. Status dicts are built by hand (liveness included, as tunnel/endpoint.py
gives it) and taken from a router in memory."""

import math
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from encap.errors import DropReason
from tunnelrouter.config import parse_config
from tunnelrouter.control.metrics import RELOAD_RESULTS, families, label, process_families, \
    render
from tunnelrouter.router import Router
from tunnelrouter.tunnel.counters import Counters

from tests.tunnelrouter.doubles import MemorySystem, Wire, drive
from tests.tunnelrouter.test_router import A, B, every_mode, ipv4

LIVENESS = {
    "state": "up", "since": 1764760000.5, "transitions": 3, "keepalive": 10.0, "retries": 3,
    "probes_sent": 120, "probes_answered": 117, "probes_lost": 3, "rtt": 0.00042,
    "peers": {"192.168.1.2": {"latest_rx": 1764760123.2}, "192.168.1.3": {"latest_rx": None}},
}


def tunnel(mode: str = "gre", **extra) -> dict:
    counters = {"rx_packets": 10, "rx_bytes": 1400, "tx_packets": 20, "tx_bytes": 2 ** 60 + 1,
                **dict.fromkeys(Counters.EVENTS, 0), "icmp_sent": 4,
                "drops": {"too_big": 5, "gre_wrong_key": 2}}
    return {"name": "x", "mode": mode, "local": "10.99.0.1", "peers": ["10.99.0.2"],
            "mtu": 1476, "effective_mtu": 1376,
            "path_mtu": {"10.99.0.2": {"mtu": 1400, "expires_in": 200.0}},
            "mss_clamp": {"ipv4": 1336}, "counters": counters, "device": "up"} | extra


STATUS = {
    "uptime": 12.0, "started": 1764760000.25, "internal_errors": 0,
    "unattributed": {"not_a_peer": 9}, "unattributed_wan_errors": 1,
    "tunnels": {
        "gre1": tunnel(sequence_epochs=2, liveness=LIVENESS),
        "vx1": tunnel("vxlan", vni=7, fdb_entries=3, fdb=[], device="down",
                      liveness=LIVENESS | {"state": "down", "rtt": None}),
        'we"ird\\': tunnel("ipip", liveness=LIVENESS | {"state": "unknown", "keepalive": None,
                                                       "rtt": None, "since": None}),
        "plain": tunnel("sit"),
    },
    "config": {"path": "/etc/tunnelrouter/a.yaml", "generation": 4, "sha256": "ab",
               "loaded": 1764760100.0, "reloads": {"applied": 3, "refused": 1},
               "last_reload": {"result": "refused", "changes": [], "problems": ["x"]}},
    "control": {"clients": 1, "evicted": 2},
    "workers": [{"device_packets": 10, "wire_datagrams": 12, "internal_errors": 0},
                {"device_packets": 7, "wire_datagrams": 9, "internal_errors": 0}],
    "forwards": {
        "web": {"protocol": "tcp", "listen": "0.0.0.0:8080", "to": "10.2.1.1:80",
                "state": "listening", "connections_open": 2, "connections_total": 40,
                "bytes_to_backend": 100, "bytes_to_client": 900,
                "refused": {"denied": 1, "rate": 0}, "ended": {"idle_timeout": 3},
                "dropped": {"accept_failed": 0}},
        "dns": {"protocol": "udp", "listen": "[::]:53", "to": "[fd02::10]:53",
                "state": "starting"},
    },
}


def parsed(status: dict) -> dict:
    """Family name -> {labels as a sorted tuple of pairs: value}, read back by
    prometheus_client's parser; every family has its HELP and TYPE."""
    text = render(families(status)).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        # The parser names a counter's family without its _total.
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"# HELP {name} " in text and f"# TYPE {name} {family.type}\n" in text
        assert family.documentation, name
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found[name][tuple(sorted(labels.items()))]


def test_traffic_counters_per_tunnel_carry_its_name_and_mode_exactly():
    found = parsed(STATUS)
    assert value(found, "tunnelrouter_tunnel_rx_bytes_total", tunnel="gre1", mode="gre") == 1400
    assert value(found, "tunnelrouter_tunnel_tx_packets_total", tunnel="vx1", mode="vxlan") == 20
    # Integers are written whole: a byte counter past 2**53 is not rounded.
    text = render(families(STATUS)).decode()
    assert f'tunnelrouter_tunnel_tx_bytes_total{{tunnel="gre1",mode="gre"}} {2 ** 60 + 1}\n' \
        in text


def test_every_drop_reason_has_a_series_for_every_tunnel_zeros_included():
    found = parsed(STATUS)
    drops = found["tunnelrouter_tunnel_drops_total"]
    assert len(drops) == len(DropReason) * len(STATUS["tunnels"])
    assert value(found, "tunnelrouter_tunnel_drops_total", tunnel="gre1", reason="too_big") == 5
    assert value(found, "tunnelrouter_tunnel_drops_total", tunnel="gre1",
                 reason="ttl_expired") == 0
    assert value(found, "tunnelrouter_demux_drops_total", reason="not_a_peer") == 9
    assert len(found["tunnelrouter_demux_drops_total"]) == len(DropReason)


def test_events_mtus_path_mtus_and_the_fdb():
    found = parsed(STATUS)
    assert value(found, "tunnelrouter_tunnel_icmp_sent_total", tunnel="gre1") == 4
    for event in Counters.EVENTS:
        assert len(found[f"tunnelrouter_tunnel_{event}_total"]) == len(STATUS["tunnels"])
    assert value(found, "tunnelrouter_tunnel_mtu_bytes", tunnel="gre1") == 1476
    assert value(found, "tunnelrouter_tunnel_effective_mtu_bytes", tunnel="gre1") == 1376
    assert value(found, "tunnelrouter_tunnel_path_mtu_bytes", tunnel="gre1",
                 peer="10.99.0.2") == 1400
    assert found["tunnelrouter_tunnel_fdb_entries"] == {(("tunnel", "vx1"),): 3}
    assert found["tunnelrouter_tunnel_sequence_epochs_total"] == {(("tunnel", "gre1"),): 2}
    assert value(found, "tunnelrouter_tunnel_device_up", tunnel="vx1") == 0
    assert value(found, "tunnelrouter_tunnel_device_up", tunnel="gre1") == 1
    assert value(found, "tunnelrouter_tunnel_info", tunnel="vx1", mode="vxlan",
                 local="10.99.0.1") == 1


def test_an_event_counter_added_to_a_tunnels_counters_is_exported_too():
    status = {"tunnels": {"t": tunnel()}}
    status["tunnels"]["t"]["counters"]["keepalives_reflected"] = 6
    found = parsed(status)
    assert value(found, "tunnelrouter_tunnel_keepalives_reflected_total", tunnel="t") == 6


def test_liveness_peer_state_last_packet_and_keepalives():
    found = parsed(STATUS)
    # unknown (keepalives off, nothing heard): no series, so no alert on it.
    assert found["tunnelrouter_peer_up"] == {(("tunnel", "gre1"),): 1, (("tunnel", "vx1"),): 0}
    assert value(found, "tunnelrouter_peer_transitions_total", tunnel="gre1") == 3
    assert value(found, "tunnelrouter_peer_state_change_timestamp_seconds",
                 tunnel="gre1") == 1764760000.5
    assert len(found["tunnelrouter_peer_state_change_timestamp_seconds"]) == 2   # never changed
    assert value(found, "tunnelrouter_tunnel_peer_last_rx_timestamp_seconds", tunnel="gre1",
                 peer="192.168.1.2") == 1764760123.2
    assert (("peer", "192.168.1.3"), ("tunnel", "gre1")) not in \
        found["tunnelrouter_tunnel_peer_last_rx_timestamp_seconds"]   # never heard
    assert found["tunnelrouter_keepalive_rtt_seconds"] == {(("tunnel", "gre1"),): 0.00042}
    assert value(found, "tunnelrouter_keepalive_interval_seconds", tunnel="gre1") == 10.0
    assert value(found, "tunnelrouter_keepalive_probes_lost_total", tunnel="vx1") == 3
    assert value(found, "tunnelrouter_keepalive_probes_answered_total", tunnel="gre1") == 117
    assert (("tunnel", 'we"ird\\'),) not in found["tunnelrouter_keepalive_probes_sent_total"]
    assert not any(("tunnel", "plain") in labels for name in found
                   if name.startswith(("tunnelrouter_peer", "tunnelrouter_keepalive"))
                   for labels in found[name])


def test_router_wide_build_start_config_and_reloads():
    found = parsed(STATUS)
    (labels,) = found["tunnelrouter_build_info"]
    assert dict(labels).keys() == {"version", "python"}
    assert found["tunnelrouter_start_time_seconds"] == {(): 1764760000.25}
    assert found["tunnelrouter_config_generation"] == {(): 4}
    assert found["tunnelrouter_config_last_reload_success"] == {(): 0}
    assert found["tunnelrouter_config_last_change_timestamp_seconds"] == {(): 1764760100.0}
    assert {dict(labels)["result"]: count for labels, count in
            found["tunnelrouter_reloads_total"].items()} == {
        "applied": 3, "applied_with_failures": 0, "refused": 1, "unchanged": 0}
    assert set(RELOAD_RESULTS) == {"applied", "applied_with_failures", "refused", "unchanged"}
    assert found["tunnelrouter_control_clients"] == {(): 1}
    assert found["tunnelrouter_demux_wan_errors_total"] == {(): 1}
    assert found["tunnelrouter_worker_device_packets_total"] == {
        (("worker", "0"),): 10, (("worker", "1"),): 7}
    assert found["tunnelrouter_worker_wire_datagrams_total"] == {
        (("worker", "0"),): 12, (("worker", "1"),): 9}


@pytest.mark.parametrize("last, success", [
    (None, 1), ({"result": "applied"}, 1), ({"result": "unchanged"}, 1),
    ({"result": "refused"}, 0), ({"result": "applied with failures"}, 0)])
def test_the_last_reload_succeeded_unless_refused_or_partly_failed(last, success):
    found = parsed({"config": {"generation": 1, "last_reload": last}})
    assert found["tunnelrouter_config_last_reload_success"] == {(): success}


def test_forwards_counters_once_the_forwarder_reported():
    found = parsed(STATUS)
    assert value(found, "tunnelrouter_forward_listening", forward="web", protocol="tcp") == 1
    assert value(found, "tunnelrouter_forward_listening", forward="dns", protocol="udp") == 0
    assert found["tunnelrouter_forward_open"] == {(("forward", "web"), ("protocol", "tcp")): 2}
    assert value(found, "tunnelrouter_forward_bytes_total", forward="web", protocol="tcp",
                 direction="to_client") == 900
    assert value(found, "tunnelrouter_forward_refused_total", forward="web", protocol="tcp",
                 reason="denied") == 1


def test_label_values_are_escaped():
    assert label("tunnel", 'a"b\\c\nd') == 'tunnel="a\\"b\\\\c\\nd"'
    found = parsed(STATUS)
    assert value(found, "tunnelrouter_tunnel_mtu_bytes", tunnel='we"ird\\') == 1476


def test_special_floats_are_written_as_prometheus_spells_them():
    text = render(process_families({"cpu_seconds": math.inf, "open_fds": 3})).decode()
    assert "process_cpu_seconds_total +Inf\n" in text and "process_open_fds 3\n" in text
    assert "process_max_fds" not in text   # not read: not exported


def test_an_empty_status_still_says_which_build_runs():
    assert list(parsed({})) == ["tunnelrouter_build_info", "tunnelrouter_internal_errors_total",
                                "tunnelrouter_reloads_total", "tunnelrouter_demux_drops_total",
                                "tunnelrouter_demux_wan_errors_total"]


def a_running_routers_status() -> dict:
    """The status of a router in memory with a tunnel of every mode, after traffic."""
    wire = Wire()
    a = Router(parse_config({"tunnels": every_mode(A, [B], 1)}), None, MemorySystem(wire))
    b = Router(parse_config({"tunnels": every_mode(B, [A], 2)}), None, MemorySystem(wire))
    a.start()
    b.start()
    try:
        a.system.hosts["ipip1"].send(ipv4(200))
        drive(a, b)
        return b.status()
    finally:
        a.close()
        b.close()


def test_a_running_routers_status_is_rendered_whole():
    status = a_running_routers_status()
    found = parsed(status)
    assert value(found, "tunnelrouter_tunnel_rx_packets_total", tunnel="ipip1", mode="ipip") == 1
    assert set(dict(labels)["tunnel"] for labels in found["tunnelrouter_tunnel_info"]) == \
        set(status["tunnels"])


@pytest.mark.needs_binary("promtool")
@pytest.mark.parametrize("source", ["by hand", "a running router"])
def test_promtool_finds_nothing_to_say_about_the_metrics(source):
    status = STATUS if source == "by hand" else a_running_routers_status()
    text = render(families(status) + process_families({"cpu_seconds": 0.5, "open_fds": 7,
                                                       "resident_memory_bytes": 1 << 24}))
    checked = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, checked
