"""What ``tunnelrouter show`` prints: the daemon's status (the control socket's JSON) as text."""

import time

from tunnelrouter.tunnel.counters import Counters

# What every tunnel's status holds, and of what type: what render_status reads.
_TUNNEL_FIELDS = {"mode": str, "local": str, "peers": list, "mtu": int, "effective_mtu": int,
                  "mss_clamp": (str, dict), "path_mtu": dict, "counters": dict}
_COUNTER_FIELDS = {"rx_packets": int, "rx_bytes": int, "tx_packets": int, "tx_bytes": int,
                   "drops": dict}
# What every forward's status holds (its counters come once the forwarder has reported).
_FORWARD_FIELDS = {"protocol": str, "listen": str, "to": str, "state": str}


def is_status(status) -> bool:
    """Whether ``status`` (JSON from a control socket) has the shape of a router's status."""
    def has(mapping, fields) -> bool:
        return isinstance(mapping, dict) and all(
            isinstance(mapping.get(key), kind) for key, kind in fields.items())
    if not has(status, {"tunnels": dict, "unattributed": dict}):
        return False
    forwards = status.get("forwards", {})
    return isinstance(forwards, dict) and bool(status["tunnels"] or forwards) \
        and all(has(tunnel, _TUNNEL_FIELDS) and has(tunnel["counters"], _COUNTER_FIELDS)
                for tunnel in status["tunnels"].values()) \
        and all(has(forward, _FORWARD_FIELDS) for forward in forwards.values())


def render_status(status: dict, now: float | None = None) -> str:
    """The status as ``wg show`` would put it: the router, then each tunnel with its peers
    (the latest packet, "12 seconds ago"; keepalives; path MTU), transfer totals in
    binary units, what happened besides; then the forwards. ``now``: the Unix time that
    "ago" counts from (default: the clock)."""
    now = time.time() if now is None else now
    lines = _router_lines(status)
    for name, tunnel in status["tunnels"].items():
        lines += _tunnel_lines(name, tunnel, now) + [""]
    for name, forward in status.get("forwards", {}).items():
        lines += _forward_lines(name, forward) + [""]
    for reason, count in status["unattributed"].items():
        lines.append(f"dropped before any tunnel, {reason}: {count}")
    if status.get("unattributed_wan_errors"):
        lines.append(f"WAN errors about no tunnel's datagram: {status['unattributed_wan_errors']}")
    if status.get("internal_errors"):
        lines.append(f"internal errors: {status['internal_errors']} (see the log)")
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _router_lines(status: dict) -> list[str]:
    lines = []
    if isinstance(status.get("uptime"), (int, float)):
        lines.append(f"router: up {duration(status['uptime'])}")
    lines += _config_lines(status.get("config"))
    workers = status.get("workers")
    if isinstance(workers, list) and len(workers) > 1 and \
            all(isinstance(worker, dict) for worker in workers):
        lines.append(f"workers: {len(workers)}, packets read from devices / datagrams from "
                     f"the wire: " + ", ".join(f"{worker.get('device_packets', 0)} / "
                                               f"{worker.get('wire_datagrams', 0)}"
                                               for worker in workers))
    return lines + [""] if lines else lines


def _tunnel_lines(name: str, tunnel: dict, now: float) -> list[str]:
    counters = tunnel["counters"]
    clamp = tunnel["mss_clamp"]
    if isinstance(clamp, dict):
        clamp = ", ".join(f"{family} {mss}" for family, mss in clamp.items())
    liveness = tunnel.get("liveness") if isinstance(tunnel.get("liveness"), dict) else {}
    lines = [f"tunnel: {name}",
             f"  mode: {tunnel['mode']} from {tunnel['local']}"
             + (f", vni {tunnel['vni']}" if "vni" in tunnel else "")
             + (f", remote checksum offload {' and '.join(tunnel['remote_checksum'])}"
                if tunnel.get("remote_checksum") else ""),
             f"  device: {tunnel.get('device', 'up')}, mtu {tunnel['mtu']}"
             + (f" (carries {tunnel['effective_mtu']} now)"
                if tunnel["effective_mtu"] != tunnel["mtu"] else ""),
             f"  mss clamp: {clamp}",
             f"  transfer: {size(counters['rx_bytes'])} received, "
             f"{size(counters['tx_bytes'])} sent ({counters['rx_packets']} and "
             f"{counters['tx_packets']} packets)"]
    lines += _liveness_lines(liveness, now)
    if isinstance(tunnel.get("allowed_ips"), list):
        lines.append(f"  allowed ips: {', '.join(tunnel['allowed_ips'])}")
    limit = tunnel.get("rate_limit")
    if isinstance(limit, dict):
        rates = [f"{limit[unit]} {unit}/s" for unit in ("packets", "bytes") if limit.get(unit)]
        lines.append(f"  rate limit: {', '.join(rates)} per peer, burst {limit.get('burst')} s")
    peers_heard = liveness.get("peers", {}) if isinstance(liveness.get("peers"), dict) else {}
    for peer in tunnel["peers"]:
        lines.append(f"  peer: {peer}")
        heard = peers_heard.get(peer, {}).get("latest_rx") if isinstance(
            peers_heard.get(peer), dict) else None
        if isinstance(heard, (int, float)):
            lines.append(f"    latest packet: {ago(now - heard)}")
        elif "peers" in liveness:
            lines.append("    latest packet: none yet")
        learnt = tunnel["path_mtu"].get(peer)
        if isinstance(learnt, dict):
            lines.append(f"    path mtu: {learnt['mtu']} (expires in {learnt['expires_in']} s)")
    if tunnel.get("sequence_epochs"):
        lines.append(f"  sequence epochs: {tunnel['sequence_epochs']} "
                     f"(the peer started numbering anew)")
    for event in Counters.EVENTS:
        if counters.get(event):
            lines.append(f"  {event.replace('_', ' ')}: {counters[event]}")
    for reason, count in counters["drops"].items():
        lines.append(f"  dropped {reason}: {count}")
    if "fdb_entries" in tunnel:
        entries = tunnel["fdb"]
        lines.append(f"  fdb: {tunnel['fdb_entries']} entries"
                     + (f", the first {len(entries)} shown" if len(entries) <
                        tunnel["fdb_entries"] else ""))
        for entry in entries:
            age = "static" if entry["static"] else f"expires in {entry['expires_in']} s"
            lines.append(f"  fdb {entry['mac']} -> {entry['remote']} ({age})")
    return lines


def _liveness_lines(liveness: dict, now: float) -> list[str]:
    interval = liveness.get("keepalive")
    if not isinstance(interval, (int, float)):
        return ["  keepalive: off"] if "keepalive" in liveness else []
    since = liveness.get("since")
    state = liveness.get("state", "unknown")
    lines = [f"  peer state: {state}" + (f" for {duration(now - since)}"
                                         if isinstance(since, (int, float)) else "")]
    rtt = liveness.get("rtt")
    lines.append(f"  keepalive: every {duration(interval)}, down after "
                 f"{liveness.get('retries')} unanswered; {liveness.get('probes_sent', 0)} sent, "
                 f"{liveness.get('probes_answered', 0)} answered, "
                 f"{liveness.get('probes_lost', 0)} lost"
                 + (f"; round trip {rtt * 1000:.2f} ms" if isinstance(rtt, (int, float)) else ""))
    return lines


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration(seconds: float) -> str:
    """``2 hours, 3 minutes``: the two largest units, as ``wg show`` words them."""
    left = max(int(seconds), 0)
    parts = []
    for unit, length in _UNITS:
        count, left = divmod(left, length)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return ", ".join(parts[:2]) or "0 seconds"


def ago(seconds: float) -> str:
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"


def size(count: int) -> str:
    """``1.23 MiB``: binary units as ``wg show``'s transfer line."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} PiB"


def _config_lines(config) -> list[str]:
    """Which configuration runs: with the file in git, its hash is the audit trail."""
    if not isinstance(config, dict) or "generation" not in config:
        return []
    lines = [f"configuration: generation {config['generation']}"
             + (f", sha256 {config['sha256'][:16]}" if config.get("sha256") else "")
             + (f", from {config['path']}" if config.get("path") else "")]
    last = config.get("last_reload")
    if isinstance(last, dict):
        lines.append(f"last reload: {last.get('result')}"
                     + "".join(f"\n  {problem}" for problem in last.get("problems", [])))
    return lines


def _forward_lines(name: str, forward: dict) -> list[str]:
    lines = [f"forward: {name}",
             f"  {forward['protocol']} {forward['listen']} -> {forward['to']} ({forward['state']})"]
    what = "connections" if forward["protocol"] == "tcp" else "sessions"
    if f"{what}_open" in forward:
        lines.append(f"  {what}: {forward[f'{what}_open']} open, {forward[f'{what}_total']} in all")
    if "datagrams_to_backend" in forward:
        lines.append(f"  datagrams: {forward['datagrams_to_backend']} to the backend, "
                     f"{forward['datagrams_to_client']} to clients")
    if "bytes_to_backend" in forward:
        lines.append(f"  bytes: {forward['bytes_to_backend']} to the backend, "
                     f"{forward['bytes_to_client']} to clients")
    for group, verb in (("refused", "refused"), ("ended", "ended by"), ("dropped", "dropped")):
        for reason, count in forward.get(group, {}).items():
            if count:
                lines.append(f"  {verb} {reason}: {count}")
    return lines
