"""What the underlay says went wrong with a datagram we sent: an ICMP error from the WAN
about it, or the local stack refusing it as too big."""

import enum
from typing import NamedTuple


class ErrorOrigin(enum.IntEnum):
    """Who reported the error (the values are Linux's ``SO_EE_ORIGIN_*``)."""

    LOCAL = 1      # our own stack: the datagram is larger than the route's MTU (EMSGSIZE)
    ICMP4 = 2
    ICMP6 = 3


class WanError(NamedTuple):
    origin: ErrorOrigin
    icmp_type: int
    code: int
    info: int              # the MTU of a "too big" report, else whatever the message carried
    peer: str              # the destination of the datagram the error is about
    quote: memoryview      # that datagram as quoted, from its tunnel header on (cut short)
    length: int            # that datagram's length on the wire, or 0 where the quote cannot say
