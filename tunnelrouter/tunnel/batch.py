"""A batch of packets in preallocated buffers: what one wakeup reads, works on and writes.

The I/O side fills a batch (a device read, a socket read), the tunnel core works
on it in place, and the I/O side drains what the core left in it. Every buffer
keeps ``HEADROOM`` bytes in front of the packet a device read puts there, so
encapsulation writes the outer headers in front of the packet and copies
nothing. The interfaces carry a batch even where the kernel hands over one
packet per system call, so that offloads (one read = many segments), UDP
GSO/GRO and multi-queue devices fit in later below the core, not through it.

Packet ``i`` of ``count``:

- filled from a device: ``buffers[i][HEADROOM:ends[i]]`` (``starts[i]`` is HEADROOM),
  a TCP super-packet when ``gso_sizes[i]`` is not 0: segments of that many payload
  bytes each, whose IP and TCP headers are ``ip_offsets[i]`` and ``tcp_offsets[i]``
  bytes into the packet (into ``packets[i]`` once the core has encapsulated it, and
  ``remote_checksums[i]`` then says whether the segments go with their TCP checksums
  left to the receiver: VXLAN remote checksum offload);
- filled from the wire: the datagram ``buffers[i][:ends[i]]`` from ``addresses[i]``,
  whose tunnel header starts at ``starts[i]`` (after the outer IP header where the
  socket gives that too) and whose outer TOS / traffic class was ``tos[i]``; when
  ``gso_sizes[i]`` is not 0, its inner packet is a super-packet of ``joined[i]`` parts
  of that many payload bytes (datagrams of one inner TCP stream or UDP flow that a UDP
  socket joined from one train, or that the kernel's GRO joined before a raw socket);
- after the core: ``packets[i]``, the bytes to pass on (None: dropped), and
  towards the wire ``destinations[i]`` (socket addresses) with ``ancillary[i]``
  (control messages, or None), towards a device ``endpoints[i]``, the tunnel
  whose device takes it.

``scratch`` is room for what the I/O side makes of the batch on its way out:
segments cut from a super-packet, super-packets joined from segments.
"""

from encap.wire import HEADROOM

BATCH_SIZE = 64          # at most this many packets per wakeup, so no descriptor starves the rest
# A 64 KB super-packet, with an Ethernet header on TAP.
BUFFER_SIZE = HEADROOM + 65536 + 64
VNET_HEADER_LENGTH = 10  # struct virtio_net_hdr, in front of every TUN/TAP read and write


class Batch:
    __slots__ = ("capacity", "buffers", "views", "device_views", "vnet_headers", "device_iovecs",
                 "count", "starts", "ends", "gso_sizes", "joined", "ip_offsets", "tcp_offsets",
                 "remote_checksums",
                 "addresses", "tos", "packets", "destinations", "ancillary", "endpoints",
                 "scratch", "answering")

    def __init__(self, capacity: int = BATCH_SIZE, buffer_size: int = BUFFER_SIZE,
                 scratch_size: int = 0):
        self.capacity = capacity
        self.buffers = [bytearray(buffer_size) for _ in range(capacity)]
        self.views = [memoryview(buffer) for buffer in self.buffers]
        self.device_views = [view[HEADROOM:] for view in self.views]   # where a device read goes
        self.vnet_headers = bytearray(VNET_HEADER_LENGTH * capacity)
        vnet_views = [memoryview(self.vnet_headers)[i:i + VNET_HEADER_LENGTH]
                      for i in range(0, len(self.vnet_headers), VNET_HEADER_LENGTH)]
        # What one device read fills: the virtio-net header, then the packet.
        self.device_iovecs = list(zip(vnet_views, self.device_views))
        self.scratch = bytearray(scratch_size)
        self.count = 0
        self.gso_sizes = [0] * capacity
        self.joined = [1] * capacity
        self.ip_offsets = [0] * capacity
        self.tcp_offsets = [0] * capacity
        self.remote_checksums = [False] * capacity
        self.starts = [HEADROOM] * capacity
        self.ends = [HEADROOM] * capacity
        self.addresses: list = [None] * capacity
        self.tos = [0] * capacity
        self.packets: list = [None] * capacity
        self.destinations: list = [()] * capacity
        self.ancillary: list = [None] * capacity
        self.endpoints: list = [None] * capacity
        # Endpoints that answered something in this batch from the wire (a peer's keepalive):
        # their outboxes wait to be sent.
        self.answering: list = []

    def parts(self, i: int) -> int:
        """How many datagrams from the wire entry ``i`` is (more than one if joined)."""
        return self.joined[i] if self.gso_sizes[i] else 1

    def fill_from_device(self, packets) -> "Batch":
        """Copy ``packets`` in as a device read leaves them (tests and tools)."""
        return self._fill(packets, HEADROOM, [HEADROOM] * len(packets), None, None)

    def fill_from_wire(self, datagrams, addresses, header_offsets, tos=None) -> "Batch":
        """Copy ``datagrams`` in as a socket read leaves them (tests and tools)."""
        return self._fill(datagrams, 0, header_offsets, addresses, tos)

    def _fill(self, packets, offset: int, starts, addresses, tos) -> "Batch":
        packets = list(packets)
        if len(packets) > self.capacity:
            raise ValueError(f"{len(packets)} packets; the batch holds {self.capacity}")
        for i, packet in enumerate(packets):
            self.buffers[i][offset:offset + len(packet)] = packet
            self.starts[i] = starts[i]
            self.ends[i] = offset + len(packet)
            self.addresses[i] = addresses[i] if addresses is not None else None
            self.tos[i] = tos[i] if tos is not None else 0
            self.gso_sizes[i] = 0
            self.joined[i] = 1
        self.count = len(packets)
        return self
