"""What a mode is, and the configuration keys every mode has.

A mode (``gre``, ``vxlan``, ...) is one :class:`Mode` object, made and registered
by the one file of this folder that implements it, with its own configuration
model (a :class:`TunnelConfig` with the mode's keys). Everything outside this
folder asks the mode: the configuration (which keys, which checks), the
endpoints (which codec, which underlay, how to tell datagrams and ICMP quotes
apart), the router and the CLI.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyAddress,
                      IPvAnyInterface, IPvAnyNetwork, PlainValidator, StrictBool, StrictInt,
                      model_validator)

from encap.codec import Codec
from encap.ecn import EcnMode
from encap.errors import DropReason, EncapConfigError
from encap.mtu import IPV6_MINIMUM_MTU, Overhead, TunnelMtu, overhead, tcp_mss, tunnel_mtu
from encap.wire import ETHERNET_HEADER_LENGTH

from tunnelrouter.units import Duration

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from tunnelrouter.modes.keepalive import Keepalive

DEFAULT_UNDERLAY_MTU = 1500
Problem = tuple[tuple, str]   # (key path below the tunnel, message)


class Underlay(enum.Enum):
    """What carries a mode's datagrams: a raw IP socket (the router writes the outer IP
    header) or a UDP socket (the kernel writes outer IP and UDP)."""

    RAW = "raw"
    UDP = "udp"


class Strict(BaseModel):
    """One spelling per key (the YAML one), nothing unknown, values not coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _written_as_text(example: str) -> BeforeValidator:
    """pydantic's address types take an integer too (``167772162`` is 10.0.0.2): a number
    in an address's place is a mistake, not an address."""
    def check(value):
        if not isinstance(value, str):
            raise ValueError(f"written as text, like {example}")
        return value
    return BeforeValidator(check)


Address = Annotated[IPvAnyAddress, _written_as_text("10.0.0.1 or 2001:db8::1")]
Interface = Annotated[IPvAnyInterface, _written_as_text("192.168.1.1/24 or fd00::1/64")]
Network = Annotated[IPvAnyNetwork, _written_as_text("10.2.0.0/16 or fd00:2::/48")]
Inherit = Literal["inherit"]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
# The kernel's route metric (priority) and table are 32-bit; table 0 is "unspecified" and
# 253..255 are the kernel's own (default, main, local): main is where a route goes unnamed.
Metric = Annotated[StrictInt, Field(ge=0, le=0xFFFFFFFF)]
Table = Annotated[StrictInt, Field(ge=1, le=0xFFFFFFFF)]
MAIN_TABLE = 254


class Route(Strict):
    """A route into the tunnel, in netplan's form: ``{to, via, metric, table}``.
    A bare prefix is ``{to: prefix}``."""

    to: Network
    via: Address | None = None
    metric: Metric | None = None
    table: Table = MAIN_TABLE

    @property
    def version(self) -> int:
        return self.to.version

    @property
    def kernel_metric(self) -> int:
        """The metric the kernel gives it: unset is 0 for IPv4 and 1024 for IPv6."""
        if self.metric is not None:
            return self.metric
        return 0 if self.to.version == 4 else 1024

    def __str__(self) -> str:
        extra = "".join(f" {word} {value}" for word, value in (
            ("via", self.via), ("metric", self.metric),
            ("table", None if self.table == MAIN_TABLE else self.table)) if value is not None)
        return f"{self.to}{extra}"


def _route(value):
    """A bare prefix is a route with nothing else said; a mapping is validated as a Route."""
    if isinstance(value, str):
        try:
            ip_network(value)
        except ValueError:
            raise ValueError("value is not a valid IPv4 or IPv6 network") from None
        return Route(to=value)
    if isinstance(value, dict) or isinstance(value, Route):
        return value
    raise ValueError("a prefix (10.2.0.0/16) or a mapping {to: prefix, via, metric, table}")


RouteItem = Annotated[Route, BeforeValidator(_route)]
MAX_BURST = 60.0


def _allowed_prefix(value):
    """A network of ``allowed-ips``. Host bits set are refused rather than cleared, as for
    routes: ``10.2.0.1/16`` may be a typo for ``10.2.0.1/32``, and a filter widened by a
    guess lets in what nobody meant to."""
    if not isinstance(value, str):
        raise ValueError("written as text, like 10.2.0.0/16 or fd00:2::/48")
    if "%" in value:
        raise ValueError("an IPv6 zone (%eth0) has no place in a prefix")
    try:
        return ip_network(value)
    except ValueError:
        pass
    try:
        network = ip_network(value, strict=False)
    except ValueError:
        raise ValueError("not a prefix: an address and a length, like 10.2.0.0/16 or "
                         "fd00:2::/48 (a bare address is one host)") from None
    raise ValueError(f"host bits set: the network is {network} (one host is "
                     f"{ip_interface(value).ip}/{network.max_prefixlen})")


AllowedPrefix = Annotated[IPv4Network | IPv6Network, PlainValidator(_allowed_prefix)]


class RateLimit(Strict):
    """What one peer may send into the tunnel: a token bucket of packets and one of bytes,
    each refilled at its rate and holding ``burst`` of it."""

    packets: Annotated[StrictInt, Field(ge=1, le=10**9)] | None = None   # per second
    bytes_: Annotated[StrictInt, Field(ge=1, le=10**12)] | None = Field(default=None,
                                                                         alias="bytes")
    burst: Duration = 0.1

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value):
        if not isinstance(value, dict):
            raise ValueError("a mapping, like {packets: 20000, bytes: 12500000, burst: 100ms}")
        return value

    def problems(self, largest_packet: int) -> list[Problem]:
        found: list[Problem] = []
        if self.packets is None and self.bytes_ is None:
            found.append(((), "give packets (per second), bytes (per second), or both"))
        if not 0 < self.burst <= MAX_BURST:
            found.append((("burst",), f"must be more than 0 and at most {MAX_BURST:.0f}s"))
        elif self.packets is not None and self.packets * self.burst < 1:
            found.append((("burst",), f"{self.packets} packets a second for {self.burst:g} s "
                                      f"is less than one packet: make burst longer"))
        elif self.bytes_ is not None and self.bytes_ * self.burst < largest_packet:
            found.append((("burst",), f"{self.bytes_} bytes a second for {self.burst:g} s "
                                      f"holds no {largest_packet}-byte packet (the tunnel's "
                                      f"largest): make burst longer or bytes larger"))
        return found


class TunnelConfig(Strict):
    """The keys of every tunnel, whatever its mode. Each mode adds its own keys (and
    narrows ``mode`` to its name) in a subclass."""

    mode: str
    local: Address
    # Outer header (the README's table "Outer header, MTU and ICMP" says what each does).
    ttl: Annotated[StrictInt, Field(ge=1, le=255)] | Inherit = 64
    dscp: Annotated[StrictInt, Field(ge=0, le=63)] | Inherit = 0
    ecn: EcnMode = EcnMode.NORMAL
    pmtu_discovery: StrictBool = Field(default=True, alias="pmtu-discovery")
    pmtu_timeout: Annotated[StrictInt, Field(ge=5, le=86400)] = Field(default=600,
                                                                       alias="pmtu-timeout")
    icmp_rate_limit: Annotated[StrictInt, Field(ge=0, le=100000)] = Field(
        default=100, alias="icmp-rate-limit")
    # The device and what is routed into it.
    addresses: tuple[Interface, ...] = ()
    mtu: Annotated[StrictInt, Field(ge=68, le=65535)] | Literal["auto"] = "auto"
    underlay_mtu: Annotated[StrictInt, Field(ge=68, le=65535)] = Field(
        default=DEFAULT_UNDERLAY_MTU, alias="underlay-mtu")
    routes: tuple[RouteItem, ...] = ()
    mss_clamp: Annotated[StrictInt, Field(ge=88, le=65535)] | Literal["auto", "off"] = Field(
        default="auto", alias="mss-clamp")
    # Liveness: probes every ``keepalive`` seconds; silent for ``keepalive-retries`` of them,
    # the peer is down (its routes withdrawn, the device's carrier off).
    keepalive: Annotated[StrictInt, Field(ge=1, le=3600)] | Literal["off"] = "off"
    keepalive_retries: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        default=3, alias="keepalive-retries")
    # What the tunnel lets in from its peers (README "Anti-spoofing and rate limits").
    allowed_ips: tuple[AllowedPrefix, ...] | None = Field(default=None, alias="allowed-ips")
    rate_limit: RateLimit | None = Field(default=None, alias="rate-limit")
    # Not a key: the tunnel's name in ``tunnels:``, which is also its device's name.
    name: str = Field(default="", exclude=True)

    @property
    def kind(self) -> Mode:
        return MODES[self.mode]

    @property
    def peers(self) -> tuple[IPv4Address | IPv6Address, ...]:
        """Every underlay address this tunnel sends to and accepts from."""
        raise NotImplementedError

    def derived_mtu(self) -> TunnelMtu:
        """Overhead, automatic MTU and MSS values (raises EncapConfigError if the underlay
        MTU leaves too little)."""
        return tunnel_mtu(self.kind.overhead(self), self.underlay_mtu, self.kind.inner_families)

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

    def problems(self) -> list[Problem]:
        """What the keys' own types cannot see: how they fit together. Subclasses add theirs."""
        found: list[Problem] = []
        family = self.local.version
        kind = self.kind
        if family not in kind.underlay_families:
            found.append((("local",), f"an IPv{family} underlay is not supported yet for "
                                      f"{self.mode}; use an IPv4 'local'"))
        for index, peer in enumerate(self.peers):
            if peer.version != family:
                found.append((self.peer_path(index), f"{peer} is IPv{peer.version} but local "
                                                     f"{self.local} is IPv{family}"))
        for key, values in (("addresses", self.addresses), ("routes", self.routes),
                            ("allowed-ips", self.allowed_ips or ())):
            for index, value in enumerate(values):
                if value.version not in kind.inner_families:
                    found.append(((key, index), f"{value} is IPv{value.version}, which "
                                                f"{self.mode} does not carry"))
        for index, route in enumerate(self.routes):
            if route.via is None:
                continue
            if route.via.version != route.version:
                found.append((("routes", index, "via"), f"{route.via} is IPv{route.via.version} "
                              f"but {route.to} is IPv{route.version}"))
            elif not any(route.via in interface.network for interface in self.addresses):
                found.append((("routes", index, "via"), f"{route.via} is on none of the "
                              f"tunnel's own networks (addresses:): the kernel could not reach it"))
        if self.allowed_ips == ():
            found.append((("allowed-ips",), "an empty list would let nothing in: leave the key "
                                            "out to let every source in"))
        try:
            derived = self.derived_mtu()
        except EncapConfigError as error:
            return found + [(("underlay-mtu",), str(error))]
        if self.mtu != "auto" and self.mtu > derived.mtu:
            found.append((("mtu",), f"{self.mtu} is more than the {derived.mtu} bytes the "
                                    f"underlay MTU {self.underlay_mtu} leaves inside {self.mode}"))
        if self.device_mtu < IPV6_MINIMUM_MTU:
            for index, interface in enumerate(self.addresses):
                if interface.version == 6:
                    found.append((("addresses", index),
                                  f"{interface} needs an MTU of at least {IPV6_MINIMUM_MTU}; "
                                  f"this tunnel's is {self.device_mtu}"))
        if self.rate_limit is not None:
            largest = self.device_mtu + (ETHERNET_HEADER_LENGTH if kind.ethernet else 0)
            found += [(("rate-limit",) + path, message)
                      for path, message in self.rate_limit.problems(largest)]
        return found

    def peer_path(self, index: int) -> tuple:
        """The key path of the ``index``-th of :attr:`peers`, for messages."""
        return ("remote",)


class Mode:
    """One encapsulation: its name and everything the rest of the router asks about it.

    Subclasses (one file each) set the class attributes and implement the methods.
    ``keys`` and ``demux_key`` are the demultiplexing contract: the datagrams (and
    the ICMP quotes of our own datagrams) for which ``demux_key`` gives one of a
    tunnel's ``keys`` belong to that tunnel.
    """

    name: ClassVar[str]
    config: ClassVar[type[TunnelConfig]]
    keepalive: ClassVar[type[Keepalive]]      # its probes, and how it answers the peer's
    ethernet: ClassVar[bool]                  # a TAP device: the tunnel carries Ethernet frames
    inner_families: ClassVar[frozenset[int]]  # the IP versions it carries
    underlay: ClassVar[Underlay]
    underlay_families: ClassVar[frozenset[int]] = frozenset({4})
    protocol: ClassVar[int] = 0               # Underlay.RAW: the outer IP protocol number
    # Two tunnels on one underlay socket must differ in this key (for messages).
    distinguished_by: ClassVar[str]
    # Why a datagram from a known peer is dropped when no tunnel has its demux key...
    unknown_key: ClassVar[DropReason]
    # ... unless the only tunnel with that peer takes it, to count why it is not its own.
    peer_owns_unknown_keys: ClassVar[bool] = False
    # Underlay.UDP: the bytes in front of the inner IP packet in every datagram (the tunnel
    # header, then Ethernet's on ethernet modes), behind which the socket joins a train's
    # datagrams of one stream; 0: the header varies, nothing is joined.
    link_header: ClassVar[int] = 0
    # Underlay.UDP, modes with remote checksum offload: ``(datagram, at) -> (start, offset)
    # | None``, where the tunnel header at ``datagram[at:]`` says the inner checksum starts
    # and lies, if its sender left it to the receiver.
    remote_checksum: ClassVar[Callable | None] = None

    def codec(self, tunnel: TunnelConfig) -> Codec:
        """The codec of the tunnel header (the outer IP and UDP headers are not in it)."""
        raise NotImplementedError

    def keys(self, tunnel: TunnelConfig) -> tuple[Hashable, ...]:
        raise NotImplementedError

    @staticmethod
    def demux_key(datagram: memoryview, offset: int, source: str) -> Hashable:
        """The key of a datagram whose tunnel header starts at ``offset``, from ``source``.
        Also applied to the ICMP quote of a datagram we sent (``offset`` 0, the
        destination as ``source``). Any bytes give a key: ``UNREADABLE[reason]`` when
        the key cannot be read."""
        raise NotImplementedError

    @staticmethod
    def tunnel_header_length(quote: memoryview) -> int | None:
        """The length of the tunnel header at the start of ``quote`` (None: cut short)."""
        raise NotImplementedError

    def describe(self, tunnel: TunnelConfig) -> str:
        """The tunnel's end as an operator would name it, for messages."""
        return f"{tunnel.mode} from {tunnel.local} to {', '.join(map(str, tunnel.peers))}"

    def carries_super_packets(self, tunnel: TunnelConfig) -> bool:
        """Whether a TCP super-packet may cross the tunnel whole: its tunnel header written
        once and copied to every segment. Not when that header changes per packet."""
        return True

    def queues(self, tunnel: TunnelConfig, workers: int) -> int:
        """How many queues the tunnel's device has: one for each worker, or only worker 0's
        where packets must leave in the order they came."""
        return 1 if self.keeps_order(tunnel) else workers

    def keeps_order(self, tunnel: TunnelConfig) -> bool:
        """Whether each packet carries its place in the order (a sequence number): then one
        worker sends them all, or the peer would see them reordered."""
        return False

    def codec_status(self, codec: Codec) -> dict:
        """What the codec's own state adds to the tunnel's status."""
        return {}

    def conflict_hint(self) -> str:
        """What to do about two tunnels that this mode cannot tell apart."""
        return f"give each a different {self.distinguished_by}"

    def overhead(self, tunnel: TunnelConfig) -> Overhead:
        return overhead(tunnel.local.version, self.codec(tunnel).overhead,
                        udp=self.underlay is Underlay.UDP, ethernet=self.ethernet)

    def underlay_end(self, tunnel: TunnelConfig) -> tuple:
        """The socket this tunnel's datagrams use, shared by every tunnel with the same end:
        ``("raw", local, protocol)`` or ``("udp", local, port)``."""
        if self.underlay is Underlay.RAW:
            return (Underlay.RAW, str(tunnel.local), self.protocol)
        return (Underlay.UDP, str(tunnel.local), tunnel.port)

    def __repr__(self) -> str:
        return f"<mode {self.name}>"


class Unreadable:
    """The demux key of a datagram whose key cannot be read, and why: no tunnel has it."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason):
        self.reason = reason


UNREADABLE = {reason: Unreadable(reason) for reason in DropReason}
MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    if mode.name in MODES:
        raise ValueError(f"mode {mode.name} is registered twice")
    MODES[mode.name] = mode
    return mode
