"""The router's configuration: one YAML file, checked whole before anything is touched.

Key names follow netplan's ``tunnels:`` section (``mode``, ``local``, ``remote``,
``key``, ``ttl``, ``addresses``, ``routes``, VXLAN ``id``/``port``/``ageing``/
``mac-learning``) and, where netplan has nothing, wg-quick's habits. The device
name is the key of the tunnel's mapping, as in netplan; each mode's own keys
are its model's (``tunnelrouter/modes/``).

One pass reports every problem of the file, each with its key path and line:
YAML that does not parse or repeats a key, every key of every tunnel that is
wrong (pydantic, per tunnel, by its mode), how a tunnel's keys fit together
(checked on whatever keys were right), and how the tunnels fit together
(routes that overlap or cover a peer, two tunnels a socket cannot tell apart).
The ``forwards:`` section (``tunnelrouter/forward/``) is checked in the same
pass, each forward by its own model, then listeners that would take one port
(the ``metrics:`` endpoint's among them).
Nothing in a file, however broken or hostile, gives more than messages: size,
nesting and alias expansion are bounded, and the route checks take n log n.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from tunnelrouter.forward.config import Endpoint, ForwardConfig, name_problem, parse_endpoint
from tunnelrouter.modes import MODES, TunnelConfig, Underlay
from tunnelrouter.yaml_reader import Problem, path_text, read_yaml

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
DEFAULT_CONTROL_DIR = "/run/tunnelrouter"
MAX_FILE_BYTES = 16 << 20
# Datapath workers at most (a device takes 256 queues at most; a thread each costs memory).
MOST_WORKERS = 64
TOP_LEVEL_KEYS = ("tunnels", "control-socket", "forwards", "metrics", "workers")


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` lists every :class:`Problem`."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(render(problem) for problem in problems))


def render(problem: Problem, file: str | None = None) -> str:
    """``file:line: path: message``, leaving out what is not known."""
    where = f"{file}:{problem.line}" if file and problem.line else file or (
        f"line {problem.line}" if problem.line else "")
    return ": ".join(part for part in (where, problem.path, problem.message) if part)


@dataclass(frozen=True)
class RouterConfig:
    tunnels: dict[str, TunnelConfig]
    control_socket: str | None = None
    forwards: dict[str, ForwardConfig] = field(default_factory=dict)
    metrics: Endpoint | None = None   # where the Prometheus endpoint listens; None: nowhere
    workers: int = 1   # datapath threads, each with a queue of every device (workers.py)
    sha256: str = ""   # of the file it was read from: which configuration runs

    def control_path(self, config_path: str | os.PathLike) -> str:
        if self.control_socket:
            return self.control_socket
        return f"{DEFAULT_CONTROL_DIR}/{Path(config_path).stem}.sock"


def load_config(path: str | os.PathLike) -> RouterConfig:
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError([Problem("", f"cannot read {path}: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([Problem("", f"larger than {MAX_FILE_BYTES >> 20} MiB: not a "
                                       f"configuration")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ConfigError([Problem("", f"not UTF-8 text: byte {raw[error.start]:#04x} at "
                                       f"offset {error.start}", line)]) from None
    data, lines, problems = read_yaml(text)
    config = parse_config(data, lines, problems)
    return dataclasses.replace(config, sha256=hashlib.sha256(raw).hexdigest())


# -- the document -----------------------------------------------------------------------

@dataclass
class _Problems:
    """Problems in the order found, each at its key path with the line YAML had for it
    (or for the nearest key above it). A later problem at a path that already has one,
    or below it, adds nothing: the first one says what to fix."""

    lines: dict[tuple, int]
    found: list[Problem] = field(default_factory=list)
    _paths: set[tuple] = field(default_factory=set)

    def add(self, path: tuple, message: str) -> None:
        if any(path[:length] in self._paths for length in range(len(path) + 1)):
            return
        self._paths.add(path)
        self.found.append(Problem(path_text(path), message, self._line(path)))

    def keep(self, problems: list[Problem]) -> None:
        self.found.extend(problems)

    def _line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def parse_config(data, lines: dict[tuple, int] | None = None,
                 problems: list[Problem] | None = None) -> RouterConfig:
    """Check a parsed document; raise ConfigError naming every problem."""
    found = _Problems(lines or {})
    found.keep(problems or [])
    if not isinstance(data, dict):
        if not found.found:
            found.add((), "the file is empty: it needs a 'tunnels:' mapping (or 'forwards:')"
                      if data is None else
                      "the file must be a mapping with a 'tunnels:' key (or 'forwards:')")
        raise ConfigError(found.found)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            found.add((key,), f"unknown key; the file's keys are {', '.join(TOP_LEVEL_KEYS)}")
    control_socket = data.get("control-socket")
    if control_socket is not None and not (isinstance(control_socket, str) and control_socket):
        found.add(("control-socket",), "must be the path of a socket")
        control_socket = None
    tunnels = data.get("tunnels")
    # A router may only forward ports (no tunnel), or only tunnel, or both.
    only_forwards = tunnels is None and data.get("forwards") is not None
    if not only_forwards and (not isinstance(tunnels, dict) or not tunnels):
        found.add(("tunnels",), "missing: at least one tunnel is needed (or a forward, under "
                                "'forwards:')" if tunnels is None else
                  "must be a mapping of device names to tunnels, with at least one tunnel")
        raise ConfigError(found.found)
    configs = {}
    for name, body in (tunnels or {}).items():
        config = _tunnel(name, body, found)
        if config is not None:
            configs[name] = config
    _across_tunnels(configs, found)
    metrics = _metrics(data.get("metrics"), found)
    forwards = _forwards(data.get("forwards"), configs, metrics, found)
    workers = _workers(data.get("workers", 1), found)
    if found.found:
        # In the file's order, as an editor would go through them.
        raise ConfigError(sorted(found.found, key=lambda problem: problem.line or 0))
    return RouterConfig(tunnels=configs, control_socket=control_socket, forwards=forwards,
                        metrics=metrics, workers=workers)


def _workers(value, found: _Problems) -> int:
    """``workers: 2`` (or ``auto``: one per CPU this process may run on)."""
    if value == "auto":
        return min(len(os.sched_getaffinity(0)), MOST_WORKERS)
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value <= MOST_WORKERS:
        found.add(("workers",), f"{_shown(value)}: must be a number of workers from 1 to "
                                f"{MOST_WORKERS}, or auto (one per CPU)")
        return 1
    return value


def _metrics(value, found: _Problems) -> Endpoint | None:
    """``metrics: 127.0.0.1:9477`` (``[::1]:9477``): where Prometheus scrapes; absent, off."""
    if value is None:
        return None
    try:
        endpoint = parse_endpoint(value)
    except ValueError as error:
        found.add(("metrics",), f"{_shown(value)}: {error}; like 127.0.0.1:9477")
        return None
    if endpoint.address.is_multicast:
        found.add(("metrics",), f"{endpoint.address} is a multicast address: the metrics "
                                f"listen on an address of this host")
        return None
    return endpoint


# Bytes the kernel's isspace() takes for space (lib/ctype.c: 0xa0 too, which UTF-8 puts
# inside characters such as 'à'), and NUL, where the kernel's copy of a name ends.
_KERNEL_SPACE = frozenset(b"\0\t\n\v\f\r \xa0")


def _device_name_problem(name) -> str | None:
    """Linux's dev_valid_name() on the name's UTF-8 bytes, plus '%', which the kernel
    takes for a template."""
    if not isinstance(name, str):
        return f"the device name {name!r} must be text"
    size = len(name.encode())
    if not 1 <= size < IFNAMSIZ:
        return f"device name {name!r} is {size} bytes; the kernel allows 1 to {IFNAMSIZ - 1}"
    if name in (".", "..") or any(c in "/:%" or c.isspace() for c in name) or \
            any(byte in _KERNEL_SPACE for byte in name.encode()):
        return (f"device name {name!r} may not be '.' or '..', nor hold '/', ':', '%', NUL "
                f"or space")
    return None


def _tunnel(name, body, found: _Problems) -> TunnelConfig | None:
    at = ("tunnels", name)
    message = _device_name_problem(name)
    if message is not None:
        found.add(at, message)
        return None
    if not isinstance(body, dict):
        found.add(at, "must be a mapping of the tunnel's keys")
        return None
    if "name" in body:
        found.add(at + ("name",), "unknown key: the device name is the tunnel's own key")
        body = {key: value for key, value in body.items() if key != "name"}
    modes = ", ".join(MODES)
    mode = body.get("mode")
    if mode is None:
        found.add(at + ("mode",), f"missing: one of {modes}")
        return None
    if not isinstance(mode, str) or mode not in MODES:
        found.add(at + ("mode",), f"{_shown(mode)} is not a mode; the modes are {modes}")
        return None
    return _validated(MODES[mode].config, name, body, at, found,
                      lambda key: _unknown_key(key, mode))


def _validated(model, name, body: dict, at: tuple, found: _Problems, unknown_key):
    """``body`` checked by ``model`` (a tunnel's or a forward's), every problem found at its
    key below ``at``; the config, or None when the right keys do not make one."""
    try:
        config = model.model_validate(body | {"name": name})
    except ValidationError as error:
        failed = set()
        for loc, text in _messages(error, unknown_key):
            found.add(at + loc, text)
            failed.add(loc[0] if loc else None)
        # Check how the right keys fit together too: without the wrong ones, and with
        # their defaults, if the model can do without them.
        try:
            config = model.model_validate({key: value for key, value in body.items()
                                           if key not in failed} | {"name": name})
        except ValidationError:
            return None
    for path, text in config.problems():
        found.add(at + path, text)
    return config


def _messages(error: ValidationError, unknown_key) -> list[tuple[tuple, str]]:
    """pydantic's errors as ``(key path, message)``; a union (a number or 'inherit') fails
    once per branch: said once, with "or". ``unknown_key(key)`` says what is wrong with a
    key the model does not have."""
    merged: dict[tuple, list[str]] = {}
    for detail in error.errors():
        loc = _key_loc(detail["loc"])
        if detail["type"] == "extra_forbidden":
            message = unknown_key(loc[-1])
        elif detail["type"] == "missing":
            message = "missing"
        else:
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(detail["input"], dict):
                message = f"{_shown(detail['input'])}: {message}"
        merged.setdefault(loc, [])
        if message not in merged[loc]:
            merged[loc].append(message)
    return [(loc, messages[0] + "".join(
                ", or " + m.split(": ", 1)[-1].removeprefix("Input should be ")
                for m in messages[1:]))
            for loc, messages in merged.items()]


_UNION_BRANCHES = {"int", "str", "bool", "constrained-int", "IPv4Address", "IPv6Address",
                   "IPv4Interface", "IPv6Interface", "IPv4Network", "IPv6Network"}
_REPLACED_KEYS = {"tos": "it became 'dscp' (0..63 or inherit) and 'ecn' (normal or compatibility)"}


def _key_loc(loc: tuple) -> tuple:
    """pydantic's location without the type tags of union branches."""
    kept = []
    for part in loc:
        if isinstance(part, str) and (part in _UNION_BRANCHES or part.startswith(
                ("literal[", "function-", "lax-", "strict-"))):
            break
        kept.append(part)
    return tuple(kept)


def _unknown_key(key, mode: str) -> str:
    if key in _REPLACED_KEYS:
        return f"unknown key: {_REPLACED_KEYS[key]}"
    if isinstance(key, str) and "_" in key and key.replace("_", "-") in _spellings(MODES[mode]):
        return f"unknown key: it is spelt '{key.replace('_', '-')}'"
    owners = [name for name, other in MODES.items() if key in _spellings(other)]
    if owners:
        return f"an option of mode {' and '.join(owners)}; mode {mode} has none"
    return "unknown key"


def _spellings(mode) -> set[str]:
    """The keys a mode's tunnels take, as the YAML spells them."""
    return _model_keys(mode.config)


def _model_keys(model) -> set[str]:
    """The keys a model takes, as the YAML spells them."""
    return {info.alias or name for name, info in model.model_fields.items() if name != "name"}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- across tunnels ---------------------------------------------------------------------

def _across_tunnels(configs: dict[str, TunnelConfig], found: _Problems) -> None:
    _sockets_can_tell_tunnels_apart(configs, found)
    _routes(configs, found)


def _sockets_can_tell_tunnels_apart(configs: dict[str, TunnelConfig], found: _Problems) -> None:
    """Tunnels that share an underlay socket: one kind of demultiplexing, different keys,
    and (UDP) the same DF, which belongs to the socket."""
    first_on_end: dict[tuple, str] = {}
    owners: dict[tuple, str] = {}
    for name, config in configs.items():
        mode = config.kind
        end = mode.underlay_end(config)
        where = f"{config.local}" + (f" port {config.port}" if end[0] is Underlay.UDP else "")
        other_name = first_on_end.setdefault(end, name)
        other = configs[other_name]
        if type(other.kind).demux_key is not type(mode).demux_key:
            found.add(("tunnels", name, "mode"), f"{where} already carries {other.mode} (tunnel "
                                                 f"{other_name}); give this one another end")
            continue
        if end[0] is Underlay.UDP and config.pmtu_discovery != other.pmtu_discovery:
            found.add(("tunnels", name, "pmtu-discovery"),
                      f"must equal tunnel {other_name}'s: both use {where}")
        for key in mode.keys(config):
            holder = owners.setdefault(end + (key,), name)
            if holder != name:
                found.add(("tunnels", name, mode.distinguished_by),
                          f"{mode.describe(config)} cannot be told apart from tunnel {holder}: "
                          f"{mode.conflict_hint()}")


def _routes(configs: dict[str, TunnelConfig], found: _Problems) -> None:
    """Routes of different tunnels may not overlap in one table, unless they are the same
    prefix at different metrics (a backup tunnel's); no route may cover an underlay address
    (the tunnel would carry its own datagrams, in a loop). Sorted sweeps: n log n in the
    number of routes."""
    tables = {(route.version, route.table) for config in configs.values()
              for route in config.routes}
    for version, table in sorted(tables):
        routes = sorted(((int(route.to.network_address), int(route.to.broadcast_address), name,
                          index) for name, config in configs.items()
                         for index, route in enumerate(config.routes)
                         if route.version == version and route.table == table),
                        key=lambda route: (route[0], -route[1]))
        widest: list[tuple[int, int, str, int]] = []   # routes no other route contains
        metrics: dict[tuple[int, int, int], tuple[str, int]] = {}  # prefix and metric: whose
        for route in routes:
            start, end, name, index = route
            if widest and start <= widest[-1][1]:
                holder = widest[-1]
                mine = configs[name].routes[index]
                holder = metrics.get((start, end, mine.kernel_metric), holder)
                other = configs[holder[2]].routes[holder[3]]
                if holder[2] == name or (holder[:2] == (start, end)
                                         and mine.kernel_metric != other.kernel_metric):
                    metrics.setdefault((start, end, mine.kernel_metric), route)
                    continue
                hint = (" (give one a higher metric: a backup route)"
                        if holder[:2] == (start, end) else "")
                found.add(("tunnels", name, "routes", index),
                          f"{mine} overlaps {other} of tunnel {holder[2]}{hint}")
            else:
                widest.append(route)
                metrics[(start, end, configs[name].routes[index].kernel_metric)] = route
        starts = [route[0] for route in widest]
        for name, config in configs.items():
            for address, what in _underlay_addresses(config):
                if address.version != version:
                    continue
                position = bisect.bisect_right(starts, int(address)) - 1
                if position >= 0 and int(address) <= widest[position][1]:
                    _, _, owner, index = widest[position]
                    found.add(("tunnels", owner, "routes", index),
                              f"{configs[owner].routes[index]} covers {address}, {what} of "
                              f"tunnel {name}: the tunnel would carry its own datagrams")


def _underlay_addresses(config: TunnelConfig):
    for peer in config.peers:
        yield peer, "a remote"
    for entry in getattr(config, "fdb", ()):
        yield entry.remote, "an fdb remote"


# -- forwards ---------------------------------------------------------------------------

def _forwards(section, tunnels: dict[str, TunnelConfig], metrics: Endpoint | None,
              found: _Problems) -> dict[str, ForwardConfig]:
    if section is None:
        return {}
    if not isinstance(section, dict) or not section:
        found.add(("forwards",), "must be a mapping of names to forwards, with at least one")
        return {}
    forwards = {}
    for name, body in section.items():
        at = ("forwards", name)
        message = name_problem(name)
        if message is not None:
            found.add(at, message)
        elif not isinstance(body, dict):
            found.add(at, "must be a mapping of the forward's keys (listen, to, ...)")
        elif "name" in body:
            found.add(at + ("name",), "unknown key: the forward's name is its own key")
        else:
            config = _validated(ForwardConfig, name, body, at, found, _unknown_forward_key)
            if config is not None:
                forwards[name] = config
    _listeners(forwards, tunnels, metrics, found)
    return forwards


def _unknown_forward_key(key) -> str:
    keys = _model_keys(ForwardConfig)
    if isinstance(key, str) and "_" in key and key.replace("_", "-") in keys:
        return f"unknown key: it is spelt '{key.replace('_', '-')}'"
    return f"unknown key; a forward's keys are {', '.join(sorted(keys))}"


def _listeners(forwards: dict[str, ForwardConfig], tunnels: dict[str, TunnelConfig],
               metrics: Endpoint | None, found: _Problems) -> None:
    """One address and port serves one listener per protocol: two forwards may not share it,
    nor may a udp forward take a VXLAN tunnel's port, nor a tcp forward the metrics'.
    ``0.0.0.0`` (``[::]``) takes the port on every address of its family."""
    taken: dict[tuple, list[tuple[object, str]]] = {}
    if metrics is not None:
        taken[("tcp", metrics.family, metrics.port)] = [(metrics.address, "the metrics")]
    for name, tunnel in tunnels.items():
        kind, local, port = tunnel.kind.underlay_end(tunnel)
        if kind is Underlay.UDP:
            address = ipaddress.ip_address(local)
            taken.setdefault(("udp", address.version, port), []).append(
                (address, f"tunnel {name}'s UDP port"))
    for name, forward in forwards.items():
        listen = forward.listen
        holders = taken.setdefault((forward.protocol, listen.family, listen.port), [])
        for address, holder in holders:
            if address == listen.address or address.is_unspecified or \
                    listen.address.is_unspecified:
                found.add(("forwards", name, "listen"),
                          f"{listen} ({forward.protocol}) is taken by {holder}: one address "
                          f"and port serve one listener")
                break
        holders.append((listen.address, f"forward {name}"))
