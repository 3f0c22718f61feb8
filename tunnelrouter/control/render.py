"""What ``tunnelrouter show`` prints: the daemon's status (the control socket's JSON) as text."""

from tunnelrouter.tunnel.counters import Counters

# What every tunnel's status holds, and of what type: what render_status reads.
_TUNNEL_FIELDS = {"mode": str, "local": str, "peers": list, "mtu": int, "effective_mtu": int,
                  "mss_clamp": (str, dict), "path_mtu": dict, "counters": dict}
_COUNTER_FIELDS = {"rx_packets": int, "rx_bytes": int, "tx_packets": int, "tx_bytes": int,
                   "drops": dict}


def is_status(status) -> bool:
    """Whether ``status`` (JSON from a control socket) has the shape of a router's status."""
    def has(mapping, fields) -> bool:
        return isinstance(mapping, dict) and all(
            isinstance(mapping.get(key), kind) for key, kind in fields.items())
    return has(status, {"tunnels": dict, "unattributed": dict}) and bool(status["tunnels"]) \
        and all(has(tunnel, _TUNNEL_FIELDS) and has(tunnel["counters"], _COUNTER_FIELDS)
                for tunnel in status["tunnels"].values())


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
    for reason, count in status["unattributed"].items():
        lines.append(f"dropped before any tunnel, {reason}: {count}")
    if status.get("unattributed_wan_errors"):
        lines.append(f"WAN errors about no tunnel's datagram: {status['unattributed_wan_errors']}")
    if status.get("internal_errors"):
        lines.append(f"internal errors: {status['internal_errors']} (see the log)")
    return "\n".join(lines)
