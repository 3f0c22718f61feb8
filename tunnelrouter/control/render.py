"""What ``tunnelrouter show`` prints: the daemon's status (the control socket's JSON) as text."""

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


def render_status(status: dict) -> str:
    lines = []
    for name, tunnel in status["tunnels"].items():
        counters = tunnel["counters"]
        clamp = tunnel["mss_clamp"]
        if isinstance(clamp, dict):
            clamp = ", ".join(f"{family} {mss}" for family, mss in clamp.items())
        lines += [f"tunnel: {name}",
                  f"  mode: {tunnel['mode']}",
                  f"  local: {tunnel['local']}",
                  f"  peers: {', '.join(tunnel['peers'])}",
                  f"  device: {tunnel.get('device', 'up')}",
                  f"  mtu: {tunnel['mtu']} (carries {tunnel['effective_mtu']} now)",
                  f"  mss clamp: {clamp}",
                  f"  rx: {counters['rx_packets']} packets, {counters['rx_bytes']} bytes",
                  f"  tx: {counters['tx_packets']} packets, {counters['tx_bytes']} bytes"]
        for peer, learnt in tunnel["path_mtu"].items():
            lines.append(f"  path mtu to {peer}: {learnt['mtu']} "
                         f"(expires in {learnt['expires_in']} s)")
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
        lines.append("")
    for name, forward in status.get("forwards", {}).items():
        lines += _forward_lines(name, forward) + [""]
    for reason, count in status["unattributed"].items():
        lines.append(f"dropped before any tunnel, {reason}: {count}")
    if status.get("unattributed_wan_errors"):
        lines.append(f"WAN errors about no tunnel's datagram: {status['unattributed_wan_errors']}")
    if status.get("internal_errors"):
        lines.append(f"internal errors: {status['internal_errors']} (see the log)")
    lines += _config_lines(status.get("config"))
    return "\n".join(lines)


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
