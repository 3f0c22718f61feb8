"""One error model for the whole package.

Input that arrives from outside the router (the WAN, a TUN/TAP device) can be
anything; a decoder answers it with a result or with :class:`DecodeError`
carrying a :class:`DropReason`, and nothing else. The router counts the reason
and drops the packet. A mistake by the *caller* (an impossible option, a VNI
out of range) is :class:`EncapConfigError`, a ``ValueError``: it is a bug or a
bad configuration, never a property of a packet.
"""

import enum


class DropReason(enum.IntEnum):
    """Why a packet was dropped; the router keeps one counter per member."""

    TRUNCATED = enum.auto()
    IP_BAD_VERSION = enum.auto()
    IP_BAD_HEADER_LENGTH = enum.auto()
    IP_BAD_TOTAL_LENGTH = enum.auto()
    IP_BAD_CHECKSUM = enum.auto()
    IP_FRAGMENT = enum.auto()
    IP_BAD_EXTENSION_HEADER = enum.auto()
    WRONG_PROTOCOL = enum.auto()
    INNER_MALFORMED = enum.auto()
    GRE_BAD_VERSION = enum.auto()
    GRE_RESERVED_FLAGS = enum.auto()
    GRE_BAD_CHECKSUM = enum.auto()
    GRE_MISSING_CHECKSUM = enum.auto()
    GRE_WRONG_KEY = enum.auto()
    GRE_MISSING_SEQUENCE = enum.auto()
    GRE_OUT_OF_ORDER = enum.auto()
    GRE_UNKNOWN_PROTOCOL = enum.auto()
    VXLAN_NO_VNI_FLAG = enum.auto()
    VXLAN_UNKNOWN_VNI = enum.auto()
    VXLAN_REMOTE_CHECKSUM_OFF = enum.auto()  # the sender left the inner checksum to us: not agreed
    UDP_BAD_LENGTH = enum.auto()
    UDP_BAD_CHECKSUM = enum.auto()
    # Decided by the router, not by a codec: policy and delivery.
    NOT_A_PEER = enum.auto()
    NO_ROUTE = enum.auto()
    TOO_BIG = enum.auto()
    SEND_FAILED = enum.auto()
    UNDERLAY_FULL = enum.auto()       # the socket's send buffer is full (EAGAIN, ENOBUFS)
    DEVICE_DOWN = enum.auto()         # the tunnel's device is down, or gone
    TTL_EXPIRED = enum.auto()
    ECN_CE_ON_NOT_ECT = enum.auto()   # RFC 6040 §4.2: congestion the inner packet cannot carry
    KEEPALIVE_NOT_OURS = enum.auto()  # a keepalive answer with another sender's nonce
    # The tunnel's receive policy (allowed-ips, rate-limit): from a peer, but not let in.
    SOURCE_NOT_ALLOWED = enum.auto()     # inner source (ARP sender, ND target) outside allowed-ips
    ETHERTYPE_NOT_ALLOWED = enum.auto()  # a frame allowed-ips cannot vouch for: not IP or ARP
    RATE_LIMITED = enum.auto()           # over the peer's rate-limit

    @property
    def label(self) -> str:
        """The name used in counters and metrics: ``gre_bad_checksum``."""
        return self.name.lower()


class DecodeError(Exception):
    """Input from outside is malformed or unwanted; drop it and count ``reason``."""

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason):
        super().__init__(reason.label)
        self.reason = reason


class EncapConfigError(ValueError):
    """The caller asked for something impossible (bad option or argument)."""
