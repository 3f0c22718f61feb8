"""The datapath: what runs for every batch, in the thread of the worker that read it.

The event loop calls:

- a device's handler: read a batch, the endpoint encapsulates it, the socket sends it;
- a socket's handler: read a batch, the demultiplexer hands each datagram to its
  endpoint, which decapsulates it, and the endpoint's device takes it (segments of one
  TCP stream joined); errors on the socket's error queue go to the endpoint they are
  about.

After a batch, what an endpoint asked for besides it (its ``outbox``) is carried out with
the same worker's queue and socket; what only the router's thread does (netlink: route
MTUs, carrier; a device that is gone) is handed to that thread, where ``tunnels.py``, which
makes the tunnels and these handlers, does it.

With ``workers:`` above one, each worker (``workers.py``) has a queue of every device and
a socket of every UDP end, and these handlers run in its thread with its batches; what
they share is the tunnels' state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from encap.errors import DropReason
from encap.wire import HEADROOM

from tunnelrouter.io.device import TunTapDevice
from tunnelrouter.io.loop import EPOLLERR
from tunnelrouter.io.underlay import UnderlaySocket
from tunnelrouter.modes import TunnelConfig
from tunnelrouter.tunnel.batch import BATCH_SIZE, BUFFER_SIZE, VNET_HEADER_LENGTH, Batch
from tunnelrouter.tunnel.demux import Demux
from tunnelrouter.tunnel.endpoint import Endpoint
from tunnelrouter.workers import Worker, Workers

# Segments cut from one 64 KB super-packet, each with its own headers, at an MSS of 48.
SEGMENTS_SCRATCH = 512 << 10
WIRE_DATAGRAM = 9216   # the largest datagram read from the underlay, at least: a jumbo frame


class Tunnel:
    """A running tunnel as the datapath sees it: its endpoint and its device, as a queue for
    each worker that reads it (the first, worker 0's, stands for the device; each worker
    has its own socket of the tunnel's end)."""

    __slots__ = ("config", "endpoint", "device", "queues", "handed_over")

    def __init__(self, config: TunnelConfig, endpoint: Endpoint):
        self.config = config
        self.endpoint = endpoint
        self.device: TunTapDevice | None = None
        self.queues: list[TunTapDevice] = []
        self.handed_over = False   # a worker asked the router's thread to flush it


class Datapath:
    """The handlers of every worker's devices and sockets, over the tunnels and
    demultiplexers that ``tunnels.py`` keeps (the same dicts, changed only while the
    workers are paused). ``workers`` gives the workers of the moment; ``device_lost`` and
    ``follow`` are the control plane's, called in the router's thread only: a tunnel's
    device is gone, and its routes and carrier are to follow what its endpoint learnt."""

    def __init__(self, tunnels: dict[str, Tunnel], demuxes: dict[tuple, Demux],
                 datagram_size: int, workers: Callable[[], Workers],
                 device_lost: Callable[[Tunnel, str], None],
                 follow: Callable[[Tunnel], None]):
        self.tunnels = tunnels
        self.demuxes = demuxes
        self._workers = workers
        self._device_lost = device_lost
        self._follow = follow
        self._datagram = HEADROOM + max(WIRE_DATAGRAM, datagram_size)
        self._single_limit = self._datagram   # longer than this, a packet is written alone

    def batches(self) -> tuple[Batch, Batch]:
        """A worker's batches. Scratch: room to cut a super-packet into segments, or to join
        a whole batch. A device read may be a 64 KB super-packet; a datagram is no larger
        than the underlay's MTU (a larger one, reassembled from a peer's fragments, is cut
        short and dropped: its IP length says so), but what the kernel's GRO joined (raw
        sockets) or a UDP socket's train joins into is up to 64 KB: every wire buffer
        holds that."""
        datagram = self._datagram
        return Batch(scratch_size=SEGMENTS_SCRATCH), Batch(
            buffer_size=max(datagram, BUFFER_SIZE),
            scratch_size=BATCH_SIZE * (datagram + VNET_HEADER_LENGTH))

    def device_handler(self, tunnel: Tunnel, worker: Worker,
                       device: TunTapDevice) -> Callable[[int], None]:
        batch, endpoint = worker.device_batch, tunnel.endpoint
        underlay = worker.underlays[tunnel.config.kind.underlay_end(tunnel.config)]
        encapsulate, send_batch, counters = endpoint.encapsulate, underlay.send_batch, \
            endpoint.counters

        def on_device(_events: int) -> None:
            if device.read_batch(batch, counters):
                worker.device_packets += batch.count
                encapsulate(batch, time.monotonic())
                send_batch(batch, counters)
                if endpoint.outbox:
                    self.flush(tunnel, worker)
            if device.failed:
                self._queue_failed(tunnel, worker, device,
                                   f"reading it failed with errno {device.failed}")
        on_device.__qualname__ = f"device {tunnel.config.name}"
        return on_device

    def wire_handler(self, end: tuple, worker: Worker) -> Callable[[int], None]:
        batch, underlay, demux = worker.wire_batch, worker.underlays[end], self.demuxes[end]

        def on_wire(events: int) -> None:
            if events & EPOLLERR:
                self._wan_errors(underlay, demux, worker)
            while underlay.read_batch(batch):
                worker.wire_datagrams += batch.count
                demux.decapsulate(batch, time.monotonic())
                self._deliver(batch, worker)
                if batch.answering:
                    self._send_answers(batch.answering, worker)
                if not underlay.backlog:
                    break
            if underlay.errors_pending:
                self._wan_errors(underlay, demux, worker)
        on_wire.__qualname__ = f"underlay {end[1]} {end[2]}"
        return on_wire

    def _deliver(self, batch: Batch, worker: Worker) -> None:
        """Write what the demultiplexer left in ``batch`` into the tunnels' devices (the
        worker's queues of them), a run of packets for one device at a time, so that the
        device can join TCP segments; what the socket joined already goes as it is."""
        packets, targets, gso_sizes, run = batch.packets, batch.endpoints, batch.gso_sizes, \
            worker.delivery
        devices, single = worker.devices, self._single_limit
        receiver = None
        for i in range(batch.count):
            endpoint = targets[i]
            if endpoint is None:
                continue
            packet = packets[i]
            if endpoint is not receiver or gso_sizes[i] or len(packet) > single:
                if run:
                    _write_run(devices, receiver, run, batch.scratch)
                receiver = endpoint
                if gso_sizes[i]:
                    _write_joined(devices, endpoint, packet, gso_sizes[i], batch.joined[i])
                    continue
                if len(packet) > single:   # would not fit its share of the scratch
                    _write_run(devices, endpoint, [packet], batch.scratch)
                    continue
            run.append(packet)
        if run:
            _write_run(devices, receiver, run, batch.scratch)

    def _wan_errors(self, underlay: UnderlaySocket, demux: Demux, worker: Worker) -> None:
        now = time.monotonic()
        reached = set()
        for error in underlay.read_errors():
            # One error may concern several tunnels (a local EMSGSIZE: every one to its peer).
            reached.update(demux.wan_error(error, now))
        for endpoint in reached:
            tunnel = self.tunnels.get(endpoint.name)
            if tunnel is not None and tunnel.endpoint is endpoint and endpoint.outbox:
                self.flush(tunnel, worker)

    def _send_answers(self, endpoints: list, worker: Worker) -> None:
        for endpoint in endpoints:
            tunnel = self.tunnels.get(endpoint.name)
            if tunnel is not None and tunnel.endpoint is endpoint and endpoint.outbox:
                self.flush(tunnel, worker)
        endpoints.clear()

    def flush(self, tunnel: Tunnel, worker: Worker) -> None:
        """Carry out what the endpoint asked for besides its batches, with ``worker``'s queue
        and socket; what takes netlink, in the router's own thread, and all of it there if
        the worker has no queue of the tunnel's (one whose packets keep their order). The
        lists are taken before anything is written: another worker may flush the same
        endpoint meanwhile."""
        if worker.index and worker.devices.get(tunnel.config.name) is None:
            self._hand_over(tunnel)
            return
        outbox, counters = tunnel.endpoint.outbox, tunnel.endpoint.counters
        if outbox.device_packets:
            packets, outbox.device_packets = outbox.device_packets, []
            device = worker.devices.get(tunnel.config.name)
            for packet in packets:
                if device is not None:
                    device.write(packet, counters)
                else:
                    counters.drops[DropReason.DEVICE_DOWN] += 1
        if outbox.datagrams:
            datagrams, outbox.datagrams = outbox.datagrams, []
            underlay = worker.underlays[tunnel.config.kind.underlay_end(tunnel.config)]
            for datagram, destinations, marking, inner_length in datagrams:
                underlay.send(datagram, destinations, marking, inner_length, counters)
        if outbox.mtu_changed or outbox.liveness_changed:
            if worker.index:
                self._hand_over(tunnel)
            else:
                self._follow(tunnel)

    def _hand_over(self, tunnel: Tunnel) -> None:
        """Have the router's thread flush the tunnel (once, however often asked meanwhile)."""
        if not tunnel.handed_over:
            tunnel.handed_over = True
            self._workers().in_main(partial(self._flush_in_main, tunnel))

    def _flush_in_main(self, tunnel: Tunnel) -> None:
        tunnel.handed_over = False
        if self.tunnels.get(tunnel.config.name) is tunnel:   # not removed or remade since
            self.flush(tunnel, self._workers().all[0])

    def _queue_failed(self, tunnel: Tunnel, worker: Worker, queue: TunTapDevice,
                      why: str) -> None:
        """A read of the tunnel's device failed for good: the device is gone."""
        if worker.index == 0:
            self._device_lost(tunnel, why)
            return
        worker.loop.forget(queue.fd)   # or it would wake the worker until the device is closed

        def lost() -> None:
            if queue in tunnel.queues:   # not since removed, or made again
                self._device_lost(tunnel, why)
        self._workers().in_main(lost)


def _write_joined(devices: dict, endpoint: Endpoint, packet, gso_size: int, joined: int) -> None:
    device = devices[endpoint.name]
    if device is None:
        endpoint.counters.drops[DropReason.DEVICE_DOWN] += joined
    else:
        device.write_joined(packet, gso_size, joined, endpoint.counters)


def _write_run(devices: dict, endpoint: Endpoint, run: list, scratch: bytearray) -> None:
    device = devices[endpoint.name]
    if device is None:
        endpoint.counters.drops[DropReason.DEVICE_DOWN] += len(run)
    else:
        device.write_batch(run, endpoint.counters, scratch)
    run.clear()
