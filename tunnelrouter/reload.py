"""What a reload would change: the running configuration against a new one. No system calls.

A reload applies the difference and nothing else. A tunnel is *added*, *removed*,
or *changed* (with the key paths that changed); an unchanged one is not touched at
all and keeps its counters, learnt path MTUs and FDB. A changed tunnel keeps its
device (and its ifindex) unless its mode changed: everything else (MTU, addresses,
routes, TTL/DSCP/ECN, keys, remotes, FDB entries, limits) is applied in place, or
the number of its device's queues changed (``workers:``, or GRE's ``sequence`` with more
than one worker): a device cannot be given queues, or have its own taken back.
Forwards are handed to the forwarder, which applies them as a difference too. The
metrics endpoint moves (or starts, or stops) with the ``metrics:`` key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunnelrouter.config import RouterConfig
from tunnelrouter.forward.config import Endpoint
from tunnelrouter.modes import TunnelConfig

# Keys whose change remakes the tunnel's device: another mode can be another kind of
# device (TUN or TAP), carrying other families.
RECREATING_KEYS = frozenset({"mode"})


@dataclass
class TunnelChange:
    name: str
    keys: list[str]                  # key paths, YAML spelling: "mtu", "routes[1]"
    recreate: bool


@dataclass
class ReloadPlan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[TunnelChange] = field(default_factory=list)
    forwards_added: list[str] = field(default_factory=list)
    forwards_removed: list[str] = field(default_factory=list)
    forwards_changed: list[str] = field(default_factory=list)
    control_socket_changed: bool = False
    workers: tuple[int, int] | None = None   # (before, after) if ``workers:`` changed
    metrics_changed: bool = False
    metrics: Endpoint | None = None     # where the metrics are to listen (None: nowhere)
    metrics_before: Endpoint | None = None

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.forwards_added or
                    self.forwards_removed or self.forwards_changed or self.metrics_changed or
                    self.workers)

    def lines(self) -> list[str]:
        """What the plan does, one line per tunnel or forward, for logs and --dry-run."""
        said = [f"workers: {self.workers[0]} -> {self.workers[1]}"] if self.workers else []
        said += [f"add tunnel {name}" for name in self.added]
        said += [f"remove tunnel {name}" for name in self.removed]
        for change in self.changed:
            how = "remake the device of" if change.recreate else "change in place"
            said.append(f"{how} tunnel {change.name}: {', '.join(change.keys)}")
        said += [f"add forward {name}" for name in self.forwards_added]
        said += [f"remove forward {name} (its connections finish on the old settings)"
                 for name in self.forwards_removed]
        said += [f"change forward {name} (its connections finish on the old settings)"
                 for name in self.forwards_changed]
        if self.metrics_changed:
            said.append(f"metrics: listen on {self.metrics}" if self.metrics_before is None else
                        f"metrics: off (was {self.metrics_before})" if self.metrics is None else
                        f"metrics: move from {self.metrics_before} to {self.metrics}")
        if self.control_socket_changed:
            said.append("control-socket: changed, but a running router keeps its socket "
                        "until it restarts")
        return said or ["nothing changes"]


def plan(running: RouterConfig, new: RouterConfig) -> ReloadPlan:
    result = ReloadPlan()
    result.added = [name for name in new.tunnels if name not in running.tunnels]
    result.removed = [name for name in running.tunnels if name not in new.tunnels]
    if running.workers != new.workers:
        result.workers = (running.workers, new.workers)
    for name, old in running.tunnels.items():
        tunnel = new.tunnels.get(name)
        if tunnel is None or (tunnel == old and not result.workers):
            continue
        keys = changed_keys(old, tunnel) + (["workers"] if result.workers else [])
        queues = old.kind.queues(old, running.workers) != tunnel.kind.queues(tunnel, new.workers)
        result.changed.append(TunnelChange(name, keys, bool(result.workers) or queues or any(
            key.split("[")[0].split(".")[0] in RECREATING_KEYS for key in keys)))
    result.forwards_added = [name for name in new.forwards if name not in running.forwards]
    result.forwards_removed = [name for name in running.forwards if name not in new.forwards]
    result.forwards_changed = [name for name, forward in running.forwards.items()
                               if name in new.forwards and new.forwards[name] != forward]
    result.control_socket_changed = running.control_socket != new.control_socket
    result.metrics_changed = running.metrics != new.metrics
    result.metrics, result.metrics_before = new.metrics, running.metrics
    return result


def changed_keys(old: TunnelConfig, new: TunnelConfig) -> list[str]:
    """The key paths whose values differ, in the YAML's spelling."""
    return _differences(old.model_dump(mode="json", by_alias=True),
                        new.model_dump(mode="json", by_alias=True), "")


def _differences(old, new, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [key for key in new if key not in old]:
            found += _differences(old.get(key), new.get(key),
                                  f"{path}.{key}" if path else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list):
        found = []
        for index in range(max(len(old), len(new))):
            found += _differences(old[index] if index < len(old) else None,
                                  new[index] if index < len(new) else None, f"{path}[{index}]")
        return found
    return [] if old == new else [path]
