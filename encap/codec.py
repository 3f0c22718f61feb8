"""The shape every codec shares, and a stack of codecs.

A codec writes its header into headroom the caller reserved in front of the
packet (``encap_into``), and returns the packet it carries as a slice of the
datagram (``decap``): no copy of the payload in either direction. ``encap`` and
``decap_bytes`` are bytes-to-bytes conveniences for tests and tools.
"""

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
