"""The shape every codec shares, and a stack of codecs.

A codec writes its header into headroom the caller reserved in front of the
packet (``encap_into``), and returns the packet it carries as a slice of the
datagram (``decap``): no copy of the payload in either direction. ``encap`` and
``decap_bytes`` are bytes-to-bytes conveniences for tests and tools.
"""

from encap.errors import DecodeError, DropReason
from encap.wire import HEADROOM


class Codec:
    """Base class: subclasses set ``overhead`` and implement the two operations."""

    overhead: int = 0

    def encap_into(self, buf, start: int, end: int) -> int:
        """Write this header in front of ``buf[start:end]``; return the new start."""
        raise NotImplementedError

    def decap(self, view: memoryview) -> memoryview:
        """Validate this header; return the carried packet or raise ``DecodeError``."""
        raise NotImplementedError

    def encap(self, payload) -> bytes:
        buf = bytearray(HEADROOM + len(payload))
        buf[HEADROOM:] = payload
        start = self.encap_into(buf, HEADROOM, len(buf))
        return bytes(buf[start:])

    def decap_bytes(self, datagram) -> bytes:
        return bytes(self.decap(memoryview(datagram)))


def header_for_inner(headers: list, minimum_inner: int, buf, start: int, end: int):
    """The entry of ``headers`` for the inner packet ``buf[start:end]``, by its version nibble.

    Raises ``DecodeError(INNER_MALFORMED)`` when the packet is shorter than
    ``minimum_inner`` or its entry is None: a packet the tunnel does not carry.
    """
    if end - start < minimum_inner:
        raise DecodeError(DropReason.INNER_MALFORMED)
    header = headers[buf[start] >> 4]
    if header is None:
        raise DecodeError(DropReason.INNER_MALFORMED)
    return header


class Stack(Codec):
    """Codecs applied together, outermost first: ``Stack(Ipv4Outer(...), Gre(...))``."""

    def __init__(self, *layers: Codec):
        self.layers = layers
        self.overhead = sum(layer.overhead for layer in layers)
        # Bound once: a method lookup per layer per packet is measurable here.
        self._encaps = tuple(layer.encap_into for layer in reversed(layers))
        self._decaps = tuple(layer.decap for layer in layers)

    def encap_into(self, buf, start: int, end: int) -> int:
        for encap_into in self._encaps:
            start = encap_into(buf, start, end)
        return start

    def decap(self, view: memoryview) -> memoryview:
        for decap in self._decaps:
            view = decap(view)
        return view
