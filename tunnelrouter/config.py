"""The router's configuration: one YAML file, validated whole before anything is touched.

Key names follow netplan's ``tunnels:`` section (``mode``, ``local``, ``remote``,
``key``, ``ttl``, ``addresses``, ``routes``, VXLAN ``id``/``port``/``ageing``/
``mac-learning``) and, where netplan has nothing, wg-quick's habits. The device
name is the key of the tunnel's mapping, as in netplan.

pydantic does the type and shape checking (unknown keys, bad addresses, ranges)
and names the key path of every problem; the checks across fields and tunnels
(options a mode lacks, overlapping routes, address families) are validators here.
"""

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, IPvAnyAddress, IPvAnyInterface, IPvAnyNetwork,
                      ValidationError, field_validator, model_validator)

from encap.ecn import EcnMode
from encap.errors import EncapConfigError
from encap.mtu import IPV6_MINIMUM_MTU, Mode, TunnelMtu, tcp_mss, tunnel_mtu
from encap.vxlan import VNI_MAX
from encap.wire import VXLAN_PORT

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_CONTROL_DIR = "/run/tunnelrouter"


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` lists ``(key path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" if path else message
                                   for path, message in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


Inherit = Literal["inherit"]


class StaticFdbEntry(_Strict):
    mac: str
    remote: IPvAnyAddress

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        parts = value.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                      for p in parts):
            raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:00:01")
        return value.lower()


class Tunnel(_Strict):
    """One tunnel: its device, its peer(s), its encapsulation options."""

    name: str = ""
    mode: Mode
    local: IPvAnyAddress
    remote: IPvAnyAddress | None = None
    # GRE (RFC 2890) options.
    key: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    sequence: bool = False
    checksum: bool = False
    # VXLAN options.
    id: int | None = Field(default=None, ge=0, le=VNI_MAX, description="the VNI")
    port: int = Field(default=VXLAN_PORT, ge=1, le=65535)
    remotes: tuple[IPvAnyAddress, ...] = ()
    mac_learning: bool = Field(default=True, alias="mac-learning")
    ageing: int = Field(default=300, ge=1, le=86400)
    fdb: tuple[StaticFdbEntry, ...] = ()
    # Outer header (the README's table "Outer header, MTU and ICMP" says what each does).
    ttl: Annotated[int, Field(ge=1, le=255)] | Inherit = 64
    dscp: Annotated[int, Field(ge=0, le=63)] | Inherit = 0
    ecn: EcnMode = EcnMode.NORMAL
    pmtu_discovery: bool = Field(default=True, alias="pmtu-discovery")
    pmtu_timeout: int = Field(default=600, ge=5, le=86400, alias="pmtu-timeout")
    icmp_rate_limit: int = Field(default=100, ge=0, le=100000, alias="icmp-rate-limit")
    # The device and what is routed into it.
    addresses: tuple[IPvAnyInterface, ...] = ()
    mtu: Annotated[int, Field(ge=68, le=65535)] | Literal["auto"] = "auto"
    underlay_mtu: int = Field(default=DEFAULT_UNDERLAY_MTU, ge=68, le=65535, alias="underlay-mtu")
    routes: tuple[IPvAnyNetwork, ...] = ()
    mss_clamp: Annotated[int, Field(ge=88, le=65535)] | Literal["auto", "off"] = Field(
        default="auto", alias="mss-clamp")

    @property
    def peers(self) -> tuple:
        """Every underlay address this tunnel sends to and accepts from."""
        return tuple(dict.fromkeys(((self.remote,) if self.remote else ()) + self.remotes))

    def derived_mtu(self) -> TunnelMtu:
        """Overhead, automatic MTU and MSS values from ``encap.mtu``."""
        return tunnel_mtu(self.mode, self.underlay_mtu, self.local.version, key=self.key is not None,
                          sequence=self.sequence, checksum=self.checksum)

    @property
    def device_mtu(self) -> int:
        return self.derived_mtu().mtu if self.mtu == "auto" else self.mtu

    def mss_limits(self, mtu: int | None = None) -> tuple[int, int] | None:
        """``(mss_ipv4, mss_ipv6)`` to clamp to when the tunnel carries ``mtu``-byte packets
        (default: the device MTU), or None when clamping is off. IPv6 is carried at 1280
        at least, in outer fragments if it must (RFC 4213 §3.2)."""
        if self.mss_clamp == "off":
            return None
        if self.mss_clamp != "auto":
            return self.mss_clamp, self.mss_clamp
        mtu = self.device_mtu if mtu is None else mtu
        return tcp_mss(mtu, 4), tcp_mss(max(mtu, IPV6_MINIMUM_MTU), 6)


class RouterConfig(_Strict):
    control_socket: str | None = Field(default=None, alias="control-socket")
    tunnels: dict[str, Tunnel]

    @model_validator(mode="before")
    @classmethod
    def _names_into_tunnels(cls, data):
        if isinstance(data, dict) and isinstance(data.get("tunnels"), dict):
            data = dict(data)
            data["tunnels"] = {name: ({**body, "name": name} if isinstance(body, dict) else body)
                               for name, body in data["tunnels"].items()}
        return data

    @field_validator("tunnels")
    @classmethod
    def _device_names(cls, tunnels: dict[str, Tunnel]) -> dict[str, Tunnel]:
        if not tunnels:
            raise ValueError("at least one tunnel is needed")
        for name in tunnels:
            # The key is the device name, so the message names it.
            if not 1 <= len(name.encode()) < IFNAMSIZ:
                raise ValueError(f"device name {name!r} is {len(name.encode())} bytes; the kernel "
                                 f"allows 1 to {IFNAMSIZ - 1}")
            if "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
                raise ValueError(f"device name {name!r} may not contain '/' or white space")
        return tunnels

    def control_path(self, config_path: str | os.PathLike) -> str:
        if self.control_socket:
            return self.control_socket
        return f"{DEFAULT_CONTROL_DIR}/{Path(config_path).stem}.sock"


def _path(loc: tuple) -> str:
    """``('tunnels', 'gre1', 'addresses', 1, 'int')`` -> ``tunnels.gre1.addresses[1]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _UNION_BRANCHES or part.startswith(("literal[", "function-")):
            break  # a union branch's tag: the key ends before it
        else:
            path += f".{part}" if path else part
    return path


_REPLACED_KEYS = {"tos": ": it became 'dscp' (0..63 or inherit) and 'ecn' (normal or compatibility)"}
_UNION_BRANCHES = {"int", "str", "constrained-int", "IPv4Address", "IPv6Address"}


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    merged: dict[str, list[str]] = {}
    for detail in error.errors():
        path = _path(detail["loc"])
        if detail["type"] == "extra_forbidden":
            message = "unknown key" + _REPLACED_KEYS.get(detail["loc"][-1], "")
        elif detail["type"] == "missing":
            message = "missing"
        else:
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(detail["input"], dict):
                message = f"{detail['input']!r}: {message}"
        merged.setdefault(path, [])
        if message not in merged[path]:
            merged[path].append(message)
    # A union (a number or 'inherit') fails once per branch: say it once, with "or".
    return [(path, messages[0] + "".join(
                ", or " + m.split(": ", 1)[-1].removeprefix("Input should be ") for m in messages[1:]))
            for path, messages in merged.items()]


def _tunnel_problems(name: str, tunnel: Tunnel) -> list[tuple[str, str]]:
    """What pydantic cannot see field by field: options against the mode, families."""
    at = f"tunnels.{name}"
    problems = []
    if tunnel.mode not in (Mode.GRE, Mode.GRETAP):
        for option in ("key", "sequence", "checksum"):
            if getattr(tunnel, option) not in (None, False):
                problems.append((f"{at}.{option}", f"a GRE option; mode {tunnel.mode} has none"))
    if tunnel.mode != Mode.VXLAN:
        for option in ("id", "remotes", "fdb"):
            if getattr(tunnel, option):
                problems.append((f"{at}.{option}", f"a VXLAN option; mode {tunnel.mode} has none"))
        if tunnel.remote is None:
            problems.append((f"{at}.remote", f"missing: mode {tunnel.mode} needs the peer's address"))
    else:
        if tunnel.id is None:
            problems.append((f"{at}.id", "missing: mode vxlan needs the VNI"))
        if not tunnel.peers:
            problems.append((f"{at}.remotes", "missing: mode vxlan needs 'remote' or 'remotes'"))
    family = tunnel.local.version
    for peer in tunnel.peers:
        if peer.version != family:
            problems.append((f"{at}.remote", f"{peer} is IPv{peer.version} but local "
                                             f"{tunnel.local} is IPv{family}"))
    if family == 6 and tunnel.mode != Mode.VXLAN:
        problems.append((f"{at}.local", f"an IPv6 underlay is supported for vxlan only, not yet "
                                        f"for {tunnel.mode}"))
    carried = tunnel.mode.inner_families
    for key in ("addresses", "routes"):
        for index, value in enumerate(getattr(tunnel, key)):
            if value.version not in carried:
                problems.append((f"{at}.{key}[{index}]", f"{value} is IPv{value.version}, which "
                                                          f"{tunnel.mode} does not carry"))
    for index, entry in enumerate(tunnel.fdb):
        if entry.remote.version != family:
            problems.append((f"{at}.fdb[{index}].remote", f"{entry.remote} is not IPv{family}"))
    return problems


def _cross_tunnel_problems(config: RouterConfig) -> list[tuple[str, str]]:
    problems = []
    for name, tunnel in config.tunnels.items():
        problems += _tunnel_problems(name, tunnel)
    if problems:
        return problems  # the checks below assume consistent tunnels
    seen_routes: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for name, tunnel in config.tunnels.items():
        for route in tunnel.routes:
            for other_name, other in seen_routes:
                if route.version == other.version and route.overlaps(other):
                    problems.append((f"tunnels.{name}.routes",
                                     f"{route} overlaps {other} of tunnel {other_name}"))
            seen_routes.append((name, route))
        try:
            tunnel.derived_mtu()
        except EncapConfigError as error:
            problems.append((f"tunnels.{name}.underlay-mtu", str(error)))
        if tunnel.mtu != "auto" and tunnel.mtu > tunnel.derived_mtu().mtu:
            problems.append((f"tunnels.{name}.mtu",
                             f"{tunnel.mtu} is more than the {tunnel.derived_mtu().mtu} bytes the "
                             f"underlay MTU {tunnel.underlay_mtu} leaves inside {tunnel.mode}"))
    raw_ends: dict[tuple, str] = {}
    vxlan_ids: dict[tuple, str] = {}
    vxlan_sockets: dict[tuple, tuple[str, bool]] = {}
    for name, tunnel in config.tunnels.items():
        if tunnel.mode == Mode.VXLAN:
            end = (tunnel.local, tunnel.port, tunnel.id)
            if end in vxlan_ids:
                problems.append((f"tunnels.{name}.id",
                                 f"VNI {tunnel.id} on {tunnel.local} port {tunnel.port} is "
                                 f"already tunnel {vxlan_ids[end]}"))
            vxlan_ids[end] = name
            # DF is a property of the UDP socket, which these tunnels share.
            other, discovery = vxlan_sockets.setdefault(end[:2], (name, tunnel.pmtu_discovery))
            if discovery != tunnel.pmtu_discovery:
                problems.append((f"tunnels.{name}.pmtu-discovery",
                                 f"must equal tunnel {other}'s: both use {tunnel.local} port "
                                 f"{tunnel.port}"))
            continue
        protocol = {Mode.IPIP: 4, Mode.SIT: 41}.get(tunnel.mode, 47)
        end = (protocol, tunnel.local, tunnel.remote, tunnel.key if protocol == 47 else None)
        if end in raw_ends:
            problems.append((f"tunnels.{name}.remote",
                             f"{tunnel.mode} from {tunnel.local} to {tunnel.remote} is already "
                             f"tunnel {raw_ends[end]}" + (" (give each a different key)"
                                                          if protocol == 47 else "")))
        raw_ends[end] = name
    return problems


def parse_config(data) -> RouterConfig:
    """Validate a parsed YAML document; raise ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError([("", "the file must be a mapping with a 'tunnels:' key")])
    try:
        config = RouterConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_problems(error)) from None
    problems = _cross_tunnel_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike) -> RouterConfig:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError([("", f"cannot read {path}: {error.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([("", f"{path} is not valid YAML: {error}")]) from None
    return parse_config(data)
