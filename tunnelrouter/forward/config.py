"""A forward's keys: where it listens, where it connects, and the limits it keeps.

Spelt as the README's ``forwards:`` table: an end is ``a.b.c.d:port`` or
``[v6]:port``; a duration is a whole number with a unit (``500ms``, ``5s``,
``10m``, ``1h``), or ``0`` where "none" makes sense; a rate is ``N/s``, ``N/m``
or ``N/h``: a token bucket per source address that holds ``N`` and refills
``N`` each second, minute or hour. The checks across forwards (two listeners
on one port) are in ``tunnelrouter/config.py`` with the rest of the file's.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, PlainValidator, StrictInt

from tunnelrouter.modes.base import Network, Problem, Strict
from tunnelrouter.units import Duration

MAX_CONNECTIONS = 1_000_000
DEFAULT_IDLE_TIMEOUT = {"tcp": 600.0, "udp": 60.0}
TCP_ONLY_KEYS = {"connect_timeout": "connect-timeout", "proxy_protocol": "proxy-protocol"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class Endpoint(NamedTuple):
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def family(self) -> int:
        return self.address.version

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else \
            f"{self.address}:{self.port}"


def parse_endpoint(value) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError("written as text, like 10.2.1.10:80 or [fd02::10]:80")
    found = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]*):(\d{1,5})", value)
    if not found:
        raise ValueError("not an address and port: write 10.2.1.10:80, or [fd02::10]:80 for "
                         "IPv6 (a name is not looked up)")
    host = found.group(1) if found.group(1) is not None else found.group(3)
    port = int(found.group(2) or found.group(4))
    if "%" in host:
        raise ValueError("an IPv6 zone (%eth0) is not supported")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (a name is not looked up)") from None
    if (found.group(1) is not None) != (address.version == 6):
        raise ValueError("an IPv6 address goes in brackets, [fd02::10]:80; an IPv4 one does not")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not 1 to 65535")
    return Endpoint(address, port)


class Rate(NamedTuple):
    """A token bucket: ``count`` tokens at most, refilled at ``count`` per ``period`` s."""
    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = next(name for name, seconds in _PERIODS.items() if seconds == self.period)
        return f"{self.count}/{unit}"


def parse_rate(value) -> Rate:
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError("new connections per source address, like 50/s, 600/m or 10/h")
    found = re.fullmatch(r"(\d{1,9})/(s|m|h)", value)
    if not found or int(found.group(1)) == 0:
        raise ValueError("a number of 1 or more and a period, like 50/s, 600/m or 10/h")
    return Rate(int(found.group(1)), _PERIODS[found.group(2)])


EndpointValue = Annotated[Endpoint, PlainValidator(parse_endpoint)]
RateValue = Annotated[Rate, PlainValidator(parse_rate)]


class ForwardConfig(Strict):
    """One forward: ``listen`` on this host, each client's traffic relayed to ``to``."""

    listen: EndpointValue
    protocol: Literal["tcp", "udp"] = "tcp"
    to: EndpointValue
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    connect_timeout: Duration = Field(default=5.0, alias="connect-timeout")
    idle_timeout: Duration | None = Field(default=None, alias="idle-timeout")
    max_lifetime: Duration = Field(default=0.0, alias="max-lifetime")
    max_connections: Annotated[StrictInt, Field(ge=1, le=MAX_CONNECTIONS)] = Field(
        default=1000, alias="max-connections")
    rate: RateValue | None = None
    proxy_protocol: Literal["v1", "v2"] | None = Field(default=None, alias="proxy-protocol")
    # Not a key: the forward's name in ``forwards:``.
    name: str = Field(default="", exclude=True)

    @property
    def idle(self) -> float:
        """Seconds without traffic after which a connection or session ends (0: never)."""
        return DEFAULT_IDLE_TIMEOUT[self.protocol] if self.idle_timeout is None \
            else self.idle_timeout

    def problems(self) -> list[Problem]:
        """How the keys fit together."""
        found: list[Problem] = []
        if self.protocol == "udp":
            for field, key in TCP_ONLY_KEYS.items():
                if field in self.model_fields_set:
                    found.append(((key,), "a key of tcp forwards; a udp forward has none"))
            if self.idle_timeout == 0:
                found.append((("idle-timeout",), "a udp session ends only when it is idle: "
                                                 "give a duration, like 60s"))
        elif self.connect_timeout == 0:
            found.append((("connect-timeout",), "must be more than 0"))
        if self.listen.address.is_multicast:
            found.append((("listen",), f"{self.listen.address} is a multicast address: a "
                                       f"forward listens on an address of this host"))
        to = self.to.address
        if to.is_unspecified or to.is_multicast or to == ipaddress.IPv4Address("255.255.255.255"):
            found.append((("to",), f"{to} is no address to connect to: give the backend's "
                                   f"address"))
        return found


def name_problem(name) -> str | None:
    """A forward's name appears in `show`, logs and key paths: plain and short."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (f"the forward name {name!r} must be 1 to 63 letters, digits, '.', '_' or "
                f"'-', starting with a letter or digit")
    return None
