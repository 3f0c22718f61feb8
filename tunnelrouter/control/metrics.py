"""The router's status as Prometheus metrics: no system calls, a status dict in, families out.

Names follow the conventions of node_exporter and the WireGuard exporter: a
``tunnelrouter_`` prefix, base units in the name (``_bytes``, ``_seconds``),
``_total`` on counters, ``_timestamp_seconds`` on Unix times, and one family per
thing counted with labels for what it is counted by. Every drop reason is
exported for every tunnel, zeros included, so that ``rate()`` has a series
before the first drop. Counters carry on across a reload that changes a tunnel
in place (the endpoint takes its predecessor's), as Prometheus expects; a
tunnel that is removed and added again starts from zero, which ``rate()``
takes for a counter reset.

``families(status)`` reads what ``Router.status()`` returns (the same dict
``tunnelrouter show --json`` prints), including each tunnel's ``liveness``
when it is there; ``render`` writes them in the text format 0.0.4. It is
written here rather than with prometheus_client because it runs in the event
loop: a router of 1000 tunnels exports some 45 000 series, which the library's
general machinery (a labels dict and a sample object per series) took 0.65 s to
write, a stall of every tunnel at every scrape; here each label is escaped once
per scrape and each series is one string.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable

from encap.errors import DropReason
from tunnelrouter import __version__
from tunnelrouter.tunnel.counters import Counters

# The Content-Type of text format 0.0.4, which every Prometheus since 2.0 reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every result a reload can have (Router.reload), as a label value.
RELOAD_RESULTS = ("applied", "applied_with_failures", "refused", "unchanged")

# HELP for the events of Counters.EVENTS; an event added there without one here is still
# exported, with a plainer HELP.
_EVENT_HELP = {
    "fragments_sent": "Inner IPv4 packets fragmented before encapsulation (one per fragment).",
    "icmp_sent": "ICMP errors sent to inner senders (too big, time exceeded, unreachable).",
    "icmp_rate_limited": "ICMP errors not sent because of the tunnel's icmp-rate-limit.",
    "wan_errors": "ICMP errors from the WAN about this tunnel's datagrams.",
    "ecn_unused_combinations": "Datagrams with an ECN combination RFC 6040 calls unused.",
    "fdb_full": "Inner MAC addresses not learnt because the forwarding database was full.",
    "netlink_errors": "Netlink calls that failed at run time (route MTU updates).",
    "device_lost": "Times the tunnel's device was deleted under it (and made again).",
    "peer_keepalives_answered": "The peer's keepalive probes this tunnel sent back or answered.",
}
_TRAFFIC_HELP = {
    "rx_packets": "Packets from the peer delivered into the tunnel's device.",
    "rx_bytes": "Inner bytes from the peer delivered into the tunnel's device.",
    "tx_packets": "Datagrams sent to a peer (a frame flooded to three VTEPs is three).",
    "tx_bytes": "Inner bytes sent to a peer (a frame flooded to three VTEPs thrice).",
}
_FORWARD_REASON_HELP = {
    "refused": "Clients a forward refused, by reason.",
    "ended": "Connections (sessions) ended by a timeout or a reset, by reason.",
    "dropped": "Datagrams and accepts that failed, by reason.",
}


class Family:
    """One metric family: its HELP and TYPE, and its series as text."""

    __slots__ = ("name", "kind", "help", "series")

    def __init__(self, name: str, kind: str, help_text: str):
        self.name = name
        self.kind = kind                 # "counter" or "gauge"
        self.help = help_text
        self.series: list[str] = []

    def add(self, labels: str, value) -> None:
        """One series: ``labels`` as ``label()`` writes them, joined by commas ("" for none)."""
        self.series.append(f"{self.name}{{{labels}}} {_number(value)}" if labels else
                           f"{self.name} {_number(value)}")

    def text(self) -> str:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return (f"# HELP {self.name} {help_text}\n# TYPE {self.name} {self.kind}\n"
                + "\n".join(self.series) + "\n")


def label(name: str, value) -> str:
    """``name="value"``, the value escaped as the text format wants."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{text}"'


def _number(value) -> str:
    if isinstance(value, int):          # exact: a byte counter past 2**53 loses nothing
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> bytes:
    """The text exposition of ``families``; those without a series are left out."""
    return "".join(family.text() for family in families if family.series).encode()


def families(status: dict) -> list[Family]:
    """Every metric family the status holds."""
    tunnels = status.get("tunnels", {})
    return (_router(status) + _tunnels(tunnels) + _liveness(tunnels)
            + _forwards(status.get("forwards", {})))


def process_families(process: dict) -> list[Family]:
    """The process's own figures, named as every Prometheus client library names them."""
    found = []
    for name, kind, help_text in (
            ("process_cpu_seconds_total", "counter", "User and system CPU time, in seconds."),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
            ("process_open_fds", "gauge", "Open file descriptors."),
            ("process_max_fds", "gauge", "The limit of open file descriptors.")):
        key = name.removeprefix("process_").removesuffix("_total")
        if key in process:
            family = Family(name, kind, help_text)
            family.add("", process[key])
            found.append(family)
    return found


_REASONS = [(reason, label("reason", reason.label)) for reason in DropReason]


def _router(status: dict) -> list[Family]:
    found = []

    def one(name: str, kind: str, help_text: str, value) -> None:
        family = Family(name, kind, help_text)
        family.add("", value)
        found.append(family)

    info = Family("tunnelrouter_build_info", "gauge",
                  "The running tunnelrouter's version and Python, as labels; always 1.")
    info.add(f"{label('version', __version__)},{label('python', platform.python_version())}", 1)
    found.append(info)
    if "started" in status:
        one("tunnelrouter_start_time_seconds", "gauge",
            "When the router started, in seconds since the Unix epoch.", status["started"])
    one("tunnelrouter_internal_errors_total", "counter",
        "Exceptions caught by the event loop (bugs; see the log).",
        status.get("internal_errors", 0))
    config = status.get("config") or {}
    if "generation" in config:
        one("tunnelrouter_config_generation", "gauge",
            "The running configuration's generation: 1 at start, one more for each reload "
            "that applied a change.", config["generation"])
        one("tunnelrouter_config_last_reload_success", "gauge",
            "Whether the last reload (SIGHUP, tunnelrouter reload) was applied whole: 1 yes "
            "(or no reload yet), 0 refused or partly failed.", _last_reload_succeeded(config))
    if "loaded" in config:
        one("tunnelrouter_config_last_change_timestamp_seconds", "gauge",
            "When the running configuration was loaded (the start, or the last reload that "
            "changed it), in Unix seconds.", config["loaded"])
    reloads = Family("tunnelrouter_reloads_total", "counter",
                     "Reloads asked for, by result (dry runs not counted).")
    counted = config.get("reloads", {})
    for result in RELOAD_RESULTS:
        reloads.add(label("result", result), counted.get(result, 0))
    found.append(reloads)
    drops = Family("tunnelrouter_demux_drops_total", "counter",
                   "Datagrams dropped before any tunnel could be blamed for them (not from a "
                   "peer, an unknown VNI, ...), by reason.")
    unattributed = status.get("unattributed", {})
    for reason, reason_label in _REASONS:
        drops.add(reason_label, unattributed.get(reason.label, 0))
    found.append(drops)
    one("tunnelrouter_demux_wan_errors_total", "counter",
        "ICMP errors from the WAN about no tunnel's datagram.",
        status.get("unattributed_wan_errors", 0))
    workers = status.get("workers", [])
    for key, name, help_text in (
            ("device_packets", "tunnelrouter_worker_device_packets_total",
             "Packets a datapath worker read from the tunnels' devices (its queue of each)."),
            ("wire_datagrams", "tunnelrouter_worker_wire_datagrams_total",
             "Datagrams a datapath worker read from the underlay (its socket of each end).")):
        family = Family(name, "counter", help_text)
        for index, worker in enumerate(workers):
            family.add(label("worker", index), worker[key])
        found.append(family)
    control = status.get("control")
    if control is not None:
        one("tunnelrouter_control_clients", "gauge",
            "Clients connected to the control socket now.", control["clients"])
        one("tunnelrouter_control_clients_evicted_total", "counter",
            "Control clients closed to make room for a new one.", control["evicted"])
    return found


def _last_reload_succeeded(config: dict) -> int:
    last = config.get("last_reload")
    return 1 if last is None or last.get("result") in ("applied", "unchanged") else 0


def _tunnels(tunnels: dict) -> list[Family]:
    info = Family("tunnelrouter_tunnel_info", "gauge",
                  "Each tunnel's mode and local underlay address; always 1.")
    device_up = Family("tunnelrouter_tunnel_device_up", "gauge",
                       "Whether the tunnel's device exists and is up: 1 yes, 0 no (down, or "
                       "deleted and being made again).")
    traffic = {key: Family(f"tunnelrouter_tunnel_{key}_total", "counter", help_text)
               for key, help_text in _TRAFFIC_HELP.items()}
    drops = Family("tunnelrouter_tunnel_drops_total", "counter",
                   "Packets the tunnel dropped, by reason (every reason, zeros included).")
    events = {event: Family(f"tunnelrouter_tunnel_{event}_total", "counter",
                            _EVENT_HELP.get(event, f"The tunnel's {event.replace('_', ' ')} "
                                                   f"counter."))
              for event in _events(tunnels)}
    epochs = Family("tunnelrouter_tunnel_sequence_epochs_total", "counter",
                    "Times the peer's sequence numbers started anew (a restart) and the "
                    "tunnel followed.")
    mtu = Family("tunnelrouter_tunnel_mtu_bytes", "gauge", "The tunnel device's MTU.")
    effective = Family("tunnelrouter_tunnel_effective_mtu_bytes", "gauge",
                       "The largest inner packet the tunnel carries now: the device MTU, or "
                       "less where a path MTU was learnt.")
    path_mtu = Family("tunnelrouter_tunnel_path_mtu_bytes", "gauge",
                      "Outer path MTU learnt to a peer from ICMP (only while one is learnt).")
    fdb = Family("tunnelrouter_tunnel_fdb_entries", "gauge",
                 "MAC addresses in the tunnel's forwarding database, static and learnt.")
    for name, tunnel in tunnels.items():
        counters = tunnel["counters"]
        of = label("tunnel", name)
        with_mode = f"{of},{label('mode', tunnel['mode'])}"
        info.add(f"{with_mode},{label('local', tunnel['local'])}", 1)
        device_up.add(of, 1 if tunnel.get("device", "up") == "up" else 0)
        for key, family in traffic.items():
            family.add(with_mode, counters[key])
        dropped = counters["drops"]
        for reason, reason_label in _REASONS:
            drops.add(f"{of},{reason_label}", dropped.get(reason.label, 0))
        for event, family in events.items():
            family.add(of, counters.get(event, 0))
        if "sequence_epochs" in tunnel:
            epochs.add(of, tunnel["sequence_epochs"])
        mtu.add(of, tunnel["mtu"])
        effective.add(of, tunnel["effective_mtu"])
        for peer, learnt in tunnel["path_mtu"].items():
            path_mtu.add(f"{of},{label('peer', peer)}", learnt["mtu"])
        if "fdb_entries" in tunnel:
            fdb.add(of, tunnel["fdb_entries"])
    return [info, device_up, *traffic.values(), drops, *events.values(), epochs, mtu,
            effective, path_mtu, fdb]


def _events(tunnels: dict) -> list[str]:
    """The event counters: Counters.EVENTS, and any a tunnel's counters add."""
    known = set(Counters.EVENTS) | set(_TRAFFIC_HELP)
    extra = {key for tunnel in tunnels.values() for key, value in tunnel["counters"].items()
             if key not in known and isinstance(value, int)}
    return list(Counters.EVENTS) + sorted(extra)


def _liveness(tunnels: dict) -> list[Family]:
    """Peer state and keepalives, from each tunnel's ``liveness`` (where there is one)."""
    up = Family("tunnelrouter_peer_up", "gauge",
                "Whether the tunnel's peer answers: 1 up, 0 down. No series while the state "
                "is unknown (keepalives off and nothing heard yet).")
    since = Family("tunnelrouter_peer_state_change_timestamp_seconds", "gauge",
                   "When the peer state last changed, in Unix seconds.")
    transitions = Family("tunnelrouter_peer_transitions_total", "counter",
                         "Peer state changes between up and down since the router started.")
    last_rx = Family("tunnelrouter_tunnel_peer_last_rx_timestamp_seconds", "gauge",
                     "When the last datagram accepted from this peer arrived, in Unix "
                     "seconds (no series before the first).")
    interval = Family("tunnelrouter_keepalive_interval_seconds", "gauge",
                      "Seconds between keepalive probes (no series: keepalives off).")
    probes = {what: Family(f"tunnelrouter_keepalive_probes_{what}_total", "counter",
                           f"Keepalive probes {what}.")
              for what in ("sent", "answered", "lost")}
    rtt = Family("tunnelrouter_keepalive_rtt_seconds", "gauge",
                 "Round-trip time of the last answered keepalive probe.")
    for name, tunnel in tunnels.items():
        liveness = tunnel.get("liveness")
        if liveness is None:
            continue
        of = label("tunnel", name)
        if liveness["state"] in ("up", "down"):
            up.add(of, 1 if liveness["state"] == "up" else 0)
        if liveness.get("since") is not None:    # None: the state never changed
            since.add(of, liveness["since"])
        transitions.add(of, liveness["transitions"])
        for peer, heard in liveness["peers"].items():
            if heard.get("latest_rx") is not None:
                last_rx.add(f"{of},{label('peer', peer)}", heard["latest_rx"])
        if liveness.get("keepalive") is not None:
            interval.add(of, liveness["keepalive"])
            for what, family in probes.items():
                family.add(of, liveness[f"probes_{what}"])
        if liveness.get("rtt") is not None:
            rtt.add(of, liveness["rtt"])
    return [up, since, transitions, last_rx, interval, *probes.values(), rtt]


def _forwards(forwards: dict) -> list[Family]:
    listening = Family("tunnelrouter_forward_listening", "gauge",
                       "Whether the forward accepts clients: 1 yes, 0 no (starting, or its "
                       "process is being started again).")
    open_now = Family("tunnelrouter_forward_open", "gauge",
                      "TCP connections (UDP sessions) open now.")
    accepted = Family("tunnelrouter_forward_accepted_total", "counter",
                      "TCP connections (UDP sessions) begun.")
    relayed = {unit: Family(f"tunnelrouter_forward_{unit}_total", "counter",
                            f"{unit.capitalize()} relayed, by direction.")
               for unit in ("bytes", "datagrams")}
    by_reason = {group: Family(f"tunnelrouter_forward_{group}_total", "counter", help_text)
                 for group, help_text in _FORWARD_REASON_HELP.items()}
    for name, forward in forwards.items():
        protocol = forward["protocol"]
        of = f"{label('forward', name)},{label('protocol', protocol)}"
        listening.add(of, 1 if forward["state"] == "listening" else 0)
        what = "connections" if protocol == "tcp" else "sessions"
        if f"{what}_open" not in forward:
            continue   # the forwarder has not reported yet
        open_now.add(of, forward[f"{what}_open"])
        accepted.add(of, forward[f"{what}_total"])
        for unit, family in relayed.items():
            for direction in ("to_backend", "to_client"):
                if f"{unit}_{direction}" in forward:
                    family.add(f"{of},{label('direction', direction)}",
                               forward[f"{unit}_{direction}"])
        for group, family in by_reason.items():
            for reason, count in forward.get(group, {}).items():
                family.add(f"{of},{label('reason', reason)}", count)
    return [listening, open_now, accepted, *relayed.values(), *by_reason.values()]
