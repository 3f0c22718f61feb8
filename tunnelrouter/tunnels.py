"""The tunnels a router runs: made, changed and removed, their devices kept alive.

For every tunnel an endpoint (``tunnel/``) and a TUN/TAP device (a queue for each worker,
``workers.py``); for every underlay end (local address and protocol or port) one socket
for each worker and one demultiplexer shared by the tunnels on it. The handlers the
workers' loops call for them, the datapath, are ``datapath.py``'s; what they hand back to
the router's thread (routes and carrier that follow the path MTU and the peer, a device
that is gone) is done here.

Tunnels are made, changed in place and removed here (at start and by a reload); a
device deleted under a tunnel is made again, one set up again gets its addresses and
routes back. Failures at run time are counted and logged once with the tunnel they
concern, never raised.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from tunnelrouter.datapath import Datapath, Tunnel
from tunnelrouter.io.device import TunTapDevice
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop
from tunnelrouter.io.system import System
from tunnelrouter.io.underlay import UnderlaySocket
from tunnelrouter.logs import event
from tunnelrouter.modes import TunnelConfig, Underlay
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.demux import Demux
from tunnelrouter.tunnel.endpoint import Endpoint
from tunnelrouter.tunnel.liveness import DOWN
from tunnelrouter.workers import Worker, Workers

log = logging.getLogger("tunnelrouter")

RESTORE_FIRST, RESTORE_LONGEST = 1.0, 30.0   # seconds between attempts to remake a device


def claim_names(config: TunnelConfig) -> list[str]:
    """The names under which the router claims a tunnel's ends (see System.claim)."""
    mode = config.kind
    end = mode.underlay_end(config)
    # A UDP port is one router's, whatever the keys: its workers' sockets share it
    # (SO_REUSEPORT), and would with another router's.
    whole = [str(end)] if mode.underlay is Underlay.UDP else []
    return whole + [f"{end}:{key!r}" for key in mode.keys(config)]


def key_path(tunnel: TunnelConfig, path: tuple = ()) -> str:
    text = f"tunnels.{tunnel.name}"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _routed(tunnel: "_Tunnel") -> bool:
    """Whether the tunnel's routes stand: not while its peer is down."""
    return tunnel.endpoint.liveness.state != DOWN


class _Tunnel(Tunnel):
    """What the router holds for one tunnel besides what the datapath sees of it (its
    endpoint and device): its device's index and state, and when to make the device again."""

    __slots__ = ("index", "up", "restore_at", "restore_delay")

    def __init__(self, config: TunnelConfig, endpoint: Endpoint):
        super().__init__(config, endpoint)
        self.index: int | None = None
        self.up = False
        self.restore_at = 0.0
        self.restore_delay = RESTORE_FIRST


class TunnelSet:
    """Every tunnel of a router: records, sockets, demultiplexers, claims, devices."""

    def __init__(self, system: System, loop: Loop, datagram_size: int, workers: int = 1):
        self.system = system
        self.loop = loop
        self.netlink = None                                 # the router's, once it started
        self.tunnels: dict[str, _Tunnel] = {}
        self.demuxes: dict[tuple, Demux] = {}
        self._claims: dict[str, object] = {}   # claim name -> the socket that holds it
        self.datapath = Datapath(self.tunnels, self.demuxes, datagram_size,
                                 lambda: self.workers, self._device_lost, self._follow)
        self.workers = Workers(loop, workers, self.datapath.batches)
        # The programs that steer each flow to a worker's queue, for TUN (False) and TAP
        # (True) devices, loaded with the first device: before run --user drops what loading
        # takes. None: not loaded (the kernel's own choice, logged once).
        self._steering: dict[bool, int | None] = {}
        self._warned: set[tuple] = set()

    @property
    def devices(self) -> dict[str, TunTapDevice | None]:
        """Worker 0's queue of each tunnel's device (None while it is made again)."""
        return self.workers.all[0].devices

    @property
    def underlays(self) -> dict[tuple, UnderlaySocket]:
        """Worker 0's socket of each underlay end."""
        return self.workers.all[0].underlays

    def set_workers(self, count: int) -> None:
        """Serve with ``count`` workers from now on: only while no tunnel runs (a reload that
        changes ``workers`` remakes every tunnel)."""
        if count == self.workers.count:
            return
        assert not self.tunnels, "workers change only while no tunnel runs"
        started = self.workers.started
        self._unload_steering()
        self.workers.close()
        self.workers = Workers(self.loop, count, self.datapath.batches)
        if started:
            self.workers.start()

    @property
    def claims(self) -> set[str]:
        return set(self._claims)

    def close(self) -> None:
        """Stop the workers; close every device (which removes it with its addresses and
        routes), every socket, every claim."""
        self.workers.stop()
        for tunnel in self.tunnels.values():
            self._close_device(tunnel)
        for worker in self.workers.all:
            for underlay in worker.underlays.values():
                worker.loop.forget(underlay.fd)
                underlay.close()
            worker.underlays.clear()
        self.workers.close()
        self._unload_steering()
        for claim in self._claims.values():
            claim.close()
        self._claims.clear()

    def tick(self, now: float) -> None:
        main = self.workers.all[0]
        for tunnel in self.tunnels.values():
            endpoint = tunnel.endpoint
            endpoint.tick(now)
            if endpoint.outbox:
                self.datapath.flush(tunnel, main)
            if tunnel.device is None and now >= tunnel.restore_at:
                self._restore(tunnel, now)

    def up(self) -> int:
        return sum(1 for tunnel in self.tunnels.values() if tunnel.device is not None and tunnel.up)

    def status(self, now: float) -> dict:
        """Each tunnel's status, and what no tunnel can be blamed for."""
        wall = time.time()
        unattributed = Counters()
        for demux in self.demuxes.values():
            for reason, count in enumerate(demux.counters.drops):
                unattributed.drops[reason] += count
        tunnels = {}
        for name, tunnel in self.tunnels.items():
            state = "up" if tunnel.device is not None and tunnel.up else \
                "down" if tunnel.device is not None else "gone (being made again)"
            tunnels[name] = tunnel.endpoint.status(now) | {
                "device": state, "liveness": tunnel.endpoint.liveness_status(now, wall)}
        return {"unattributed": unattributed.drops_by_label(),
                "unattributed_wan_errors": sum(demux.counters.wan_errors
                                               for demux in self.demuxes.values()),
                "workers": self.workers.status(),
                "tunnels": tunnels}

    # -- making, changing and removing ----------------------------------------------------

    def check_new(self, configs: list[TunnelConfig], ours: dict[int, str]) -> list[tuple[str, str]]:
        """What keeps ``configs`` (tunnels to make, or to change) from being made: a device
        of theirs that exists and is not ours, a route held by a device that is not ``ours``
        (index -> name), a tunnel end another router serves. The ends are claimed here."""
        problems = []
        routes = self.netlink.routes_by_prefix({route.table for config in configs
                                                for route in config.routes})
        for config in configs:
            if config.name not in self.tunnels and self.netlink.index(config.name) is not None:
                problems.append((key_path(config), f"a device named {config.name} already "
                                 f"exists (another tunnelrouter has it, or remove it: ip link "
                                 f"del {config.name})"))
            for position, route in enumerate(config.routes):
                family = 2 if route.version == 4 else 10
                index = routes.get((family, str(route.to.network_address), route.to.prefixlen,
                                    route.table, route.kernel_metric))
                if index is not None and index not in ours:
                    problems.append((key_path(config, ("routes", position)),
                                     f"{route} is already routed through "
                                     f"{self.netlink.name_of(index)}, which this router does "
                                     f"not own (another tunnelrouter?)"))
            mode = config.kind
            for name in claim_names(config):
                if name in self._claims:
                    continue
                try:
                    self._claims[name] = self.system.claim(name)
                except SystemProblem as problem:
                    # A UDP port serves one process whatever the VNI: another port helps,
                    # another VNI would not.
                    key = "port" if mode.underlay is Underlay.UDP else mode.distinguished_by
                    _, local, number = mode.underlay_end(config)
                    what = f"{local} port {number}" if name == str(mode.underlay_end(config)) \
                        else mode.describe(config)
                    problems.append((key_path(config, (key,)), f"{what}: {problem.message}"))
                    break   # one problem says it
        return problems

    def add(self, config: TunnelConfig) -> _Tunnel:
        """Make a tunnel: its endpoint on its underlay socket (opened if it is the first
        there), its device. SystemProblem names the key that failed."""
        with self.workers.paused():
            self._claim(config)
            endpoint = endpoint_for(config)
            self._open_underlay(config)
            self.demuxes[config.kind.underlay_end(config)].add(endpoint)
            self._agree_on_checksums(config.kind.underlay_end(config))
            tunnel = self.tunnels[config.name] = _Tunnel(config, endpoint)
            for worker in self.workers.all:
                worker.devices[config.name] = None
            self._make_device(tunnel)
            return tunnel

    def _claim(self, config: TunnelConfig) -> None:
        """Hold the tunnel's ends (check_new claimed them, unless a reload that remakes the
        tunnel let them go with the old one)."""
        for name in claim_names(config):
            if name not in self._claims:
                try:
                    self._claims[name] = self.system.claim(name)
                except SystemProblem as problem:
                    key = "port" if config.kind.underlay is Underlay.UDP else \
                        config.kind.distinguished_by
                    raise SystemProblem(f"{config.kind.describe(config)}: {problem.message}",
                                        (key,)) from None

    def _open_underlay(self, config: TunnelConfig) -> None:
        """Open the sockets of the tunnel's end (each worker's), if it is the first tunnel
        there: a UDP end's sockets are each read by their worker, a raw end's by worker 0
        (the others send on theirs, and read only the errors of their own sends)."""
        end = config.kind.underlay_end(config)
        if end not in self.underlays:
            kind, local, number = end
            opened: list[tuple[Worker, UnderlaySocket]] = []
            try:
                for worker in self.workers.all:
                    if kind is Underlay.RAW:
                        underlay = self.system.raw_socket(local, number,
                                                          send_only=worker.index > 0)
                    else:
                        underlay = self.system.udp_socket(local, number, config.pmtu_discovery,
                                                          config.kind.link_header,
                                                          config.kind.ethernet,
                                                          shared=self.workers.count > 1)
                    opened.append((worker, underlay))
            except SystemProblem as problem:
                for _, underlay in opened:
                    underlay.close()
                key = "port" if "port" in problem.message and kind is Underlay.UDP else "local"
                raise SystemProblem(problem.message, (key,)) from None
            self.demuxes[end] = Demux(config.kind)
            if kind is Underlay.UDP and len(opened) > 1:
                self._spread(opened[0][1], end, len(opened))
            for worker, underlay in opened:
                worker.underlays[end] = underlay
                # (A raw socket of worker 1 on reads nothing: only the errors of its sends.)
                worker.loop.watch(underlay.fd, self.datapath.wire_handler(end, worker))

    def _spread(self, underlay: UnderlaySocket, end: tuple, workers: int) -> None:
        try:
            underlay.spread(workers)
        except OSError as error:
            self._warn_once(("spread", end), f"{end[1]} port {end[2]}: the workers share its "
                            f"datagrams by the kernel's hash of their outer addresses and "
                            f"ports, which puts a peer's on one worker: cannot choose by "
                            f"inner flow: {error.strerror}",
                            event("spread_by_inner_flow_failed", local=end[1], port=end[2],
                                  errno=error.errno))

    def _agree_on_checksums(self, end) -> None:
        """A UDP socket joins datagrams whose inner checksums were left to the receiver only
        if a tunnel on it takes such datagrams (VXLAN's remote-checksum-rx)."""
        if end in self.underlays and end[0] is Underlay.UDP:
            endpoints = self.demuxes[end].endpoints.values()
            agreed = next((endpoint.mode.remote_checksum for endpoint in endpoints
                           if endpoint.remote_checksum_rx), None)
            for worker in self.workers.all:
                worker.underlays[end].remote_checksum = agreed

    def remove(self, name: str) -> None:
        """Take a tunnel down: its device goes (with its addresses and routes), its end is
        released, and its socket closed if no other tunnel uses it."""
        with self.workers.paused():
            tunnel = self.tunnels.pop(name)
            self._close_device(tunnel)
            for worker in self.workers.all:
                worker.devices.pop(name, None)
            config = tunnel.config
            self.demuxes[config.kind.underlay_end(config)].remove(tunnel.endpoint)
            self.release(claim_names(config))
            self._close_unused_underlays()
            self._agree_on_checksums(config.kind.underlay_end(config))

    def release(self, names) -> None:
        held = {claim for tunnel in self.tunnels.values() for claim in claim_names(tunnel.config)}
        for name in names:
            if name not in held and name in self._claims:
                self._claims.pop(name).close()

    def _close_unused_underlays(self) -> None:
        used = {tunnel.config.kind.underlay_end(tunnel.config) for tunnel in self.tunnels.values()}
        for end in [end for end in self.underlays if end not in used]:
            del self.demuxes[end]
            for worker in self.workers.all:
                underlay = worker.underlays.pop(end)
                worker.loop.forget(underlay.fd)
                underlay.close()

    def change(self, config: TunnelConfig) -> None:
        """Apply a changed configuration to a running tunnel, keeping its device (and so its
        ifindex) and what it learnt: a new endpoint takes over from the old one, on the
        socket of its (maybe new) end; MTU, addresses and routes are set anew, and what the
        new configuration left out is taken off the device."""
        with self.workers.paused():
            self._change(config)

    def _change(self, config: TunnelConfig) -> None:
        tunnel = self.tunnels[config.name]
        old = tunnel.config
        endpoint = endpoint_for(config)
        endpoint.take_over(tunnel.endpoint)
        self._open_underlay(config)
        self.demuxes[old.kind.underlay_end(old)].remove(tunnel.endpoint)
        self.demuxes[config.kind.underlay_end(config)].add(endpoint)
        tunnel.config, tunnel.endpoint = config, endpoint
        self.release(claim_names(old))
        self._close_unused_underlays()
        for end in {old.kind.underlay_end(old), config.kind.underlay_end(config)}:
            self._agree_on_checksums(end)
        device = tunnel.device
        if device is None:
            return   # made anew, as configured now, when it is restored
        self._watch_queues(tunnel, again=True)
        if device.super_packets != endpoint.super_packets:
            self._netlink(tunnel, "change its offloads",
                          lambda: device.set_super_packets(endpoint.super_packets))
        if tunnel.up:
            routed = _routed(tunnel)

            def reprogram() -> None:
                self.netlink.program_device(config, routes=routed)
                self.netlink.withdraw(config, set(old.addresses) - set(config.addresses),
                                      set(old.routes) - set(config.routes if routed else ()))
                device.set_carrier(routed)
            self._netlink(tunnel, "apply its new configuration", reprogram)
            if endpoint.effective_mtu != config.device_mtu:
                self._set_route_mtu(tunnel)

    def _make_device(self, tunnel: _Tunnel) -> None:
        """Create the tunnel's device (a queue for each worker that reads it), program it,
        and watch it."""
        config = tunnel.config
        queues = self.system.device(config.name, config.kind.ethernet,
                                    tunnel.endpoint.super_packets,
                                    config.kind.queues(config, self.workers.count))
        try:
            self.netlink.program_device(config, routes=_routed(tunnel))
            if not _routed(tunnel):
                queues[0].set_carrier(False)
            tunnel.index = self.netlink.index(config.name)
        except BaseException:
            for queue in queues:
                queue.close()
            raise
        tunnel.device, tunnel.queues = queues[0], queues
        tunnel.up = True
        if len(queues) > 1:
            self._steer(tunnel)
        self._watch_queues(tunnel)

    def _steer(self, tunnel: _Tunnel) -> None:
        """Each flow to the queue of the worker the inner-flow choice names (io/steering.py),
        the same that a UDP port's socket group names for it."""
        if not self._steering:
            for ethernet in (False, True):
                try:
                    self._steering[ethernet] = self.system.steering(self.workers.count,
                                                                    ethernet)
                except SystemProblem as problem:
                    self._steering[ethernet] = None
                    self._warn_once(("steering", ethernet), f"{problem.message}: the flows of "
                                    f"{'TAP' if ethernet else 'TUN'} devices go to the queue "
                                    f"the kernel picks (for a flow with replies, the queue "
                                    f"they were written to)",
                                    event("steering_unavailable", ethernet=ethernet,
                                          errno=problem.errno))
        program = self._steering[tunnel.config.kind.ethernet]
        if program is not None:
            self._netlink(tunnel, "steer its flows to the workers",
                          lambda: tunnel.device.steer(program))

    def _unload_steering(self) -> None:
        for program in self._steering.values():
            if program is not None:
                os.close(program)
        self._steering.clear()

    def _watch_queues(self, tunnel: _Tunnel, again: bool = False) -> None:
        """Each queue of the tunnel's device to its worker, with a handler for the tunnel as
        it is now (``again``: in place of the one for what it was)."""
        for worker, queue in zip(self.workers.all, tunnel.queues):
            if again:
                worker.loop.forget(queue.fd)
            worker.devices[tunnel.config.name] = queue
            worker.loop.watch(queue.fd, self.datapath.device_handler(tunnel, worker, queue))

    def _close_device(self, tunnel: _Tunnel) -> None:
        """Close every queue of the tunnel's device: with the last, the device goes."""
        for worker, queue in zip(self.workers.all, tunnel.queues):
            worker.loop.forget(queue.fd)
            worker.devices[tunnel.config.name] = None
            queue.close()
        tunnel.device, tunnel.queues = None, []

    # -- routes and carrier follow what the endpoints learnt -----------------------------

    def _follow(self, tunnel: _Tunnel) -> None:
        """The routes and carrier follow what the endpoint learnt (router's thread)."""
        outbox = tunnel.endpoint.outbox
        if outbox.mtu_changed:
            outbox.mtu_changed = False
            self._set_route_mtu(tunnel)
        if outbox.liveness_changed:
            outbox.liveness_changed = False
            self._peer_changed(tunnel)

    def _peer_changed(self, tunnel: _Tunnel) -> None:
        """The peer went down (nothing heard for its retries) or came back: its routes and
        the device's carrier follow, so that traffic takes a backup tunnel's routes and
        routing daemons see the link go."""
        config, liveness = tunnel.config, tunnel.endpoint.liveness
        routed = _routed(tunnel)
        peers = [str(peer) for peer in config.peers]
        if routed:
            log.info("tunnel %s: peer up; routes and carrier restored", config.name,
                     extra=event("peer_up", limited=True, tunnel=config.name, peers=peers,
                                 rtt=liveness.rtt))
        else:
            log.warning("tunnel %s: peer down, nothing heard for %d keepalive intervals of "
                        "%d s; its routes are withdrawn and its carrier is off", config.name,
                        liveness.retries, liveness.interval,
                        extra=event("peer_down", limited=True, tunnel=config.name, peers=peers,
                                    silent_for=liveness.retries * liveness.interval))
        device = tunnel.device
        if device is None:
            return   # made again as the peer's state says
        self._netlink(tunnel, "set its carrier", lambda: device.set_carrier(routed))
        if not tunnel.up:
            return
        if routed:
            self._set_route_mtu(tunnel, quiet=True)
        else:
            self._netlink(tunnel, "withdraw its routes",
                          lambda: self.netlink.withdraw(config, (), config.routes))

    def _set_route_mtu(self, tunnel: _Tunnel, quiet: bool = False) -> None:
        """The effective MTU moved (or the routes come back): the kernel's routes into the
        tunnel follow it, so that it answers senders itself (and fragments what may be
        fragmented) before the packets reach us."""
        endpoint = tunnel.endpoint
        mtu = endpoint.effective_mtu
        lowered = mtu < tunnel.config.device_mtu
        if not quiet:
            log.info("tunnel %s: path MTU %s, now carries %d-byte packets", endpoint.name,
                     endpoint.pmtu.status(time.monotonic()) or "back to the link's", mtu,
                     extra=event("path_mtu_changed", limited=True, tunnel=endpoint.name,
                                 mtu=mtu))
        if tunnel.device is None or not tunnel.up or not _routed(tunnel):
            return  # the routes come back with the device (or the peer), with this MTU
        self._netlink(tunnel, "set the route MTU", lambda: self.netlink.program_routes(
            tunnel.config, mtu if lowered else None))

    def _netlink(self, tunnel: _Tunnel, what: str, call: Callable[[], None]) -> bool:
        """Make a netlink call at run time: a failure is counted and logged once (until the
        same call works again), never raised."""
        try:
            call()
        except SystemProblem as problem:
            tunnel.endpoint.counters.netlink_errors += 1
            self._warn_once((tunnel.config.name, what),
                            f"tunnel {tunnel.config.name}: cannot {what}: "
                            f"{key_path(tunnel.config, problem.path)}: {problem.message}",
                            event("netlink_failed", limited=True, tunnel=tunnel.config.name,
                                  call=what, key=key_path(tunnel.config, problem.path),
                                  errno=problem.errno))
            return False
        self._warned.discard((tunnel.config.name, what))
        return True

    def _warn_once(self, key: tuple, message: str, fields: dict) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s (logged once until it works again)", message, extra=fields)

    # -- devices that go away or down ----------------------------------------------------

    def _device_lost(self, tunnel: _Tunnel, why: str) -> None:
        if tunnel.device is None:
            return
        with self.workers.paused():
            self._close_device(tunnel)
        tunnel.index = None
        tunnel.endpoint.counters.device_lost += 1
        tunnel.restore_delay = RESTORE_FIRST
        tunnel.restore_at = time.monotonic() + RESTORE_FIRST
        log.warning("tunnel %s: its device is gone (%s); the other tunnels carry on, and "
                    "the device is made again in %.0f s", tunnel.config.name, why,
                    RESTORE_FIRST, extra=event("device_lost", limited=True,
                                               tunnel=tunnel.config.name, reason=why))

    def _restore(self, tunnel: _Tunnel, now: float) -> None:
        name = tunnel.config.name
        try:
            with self.workers.paused():
                self._make_device(tunnel)
        except SystemProblem as problem:
            tunnel.restore_delay = min(tunnel.restore_delay * 2, RESTORE_LONGEST)
            tunnel.restore_at = now + tunnel.restore_delay
            self._warn_once((name, "make its device again"),
                            f"tunnel {name}: cannot make its device again: {problem.message}; "
                            f"trying again every {RESTORE_LONGEST:.0f} s at most",
                            event("device_restore_failed", limited=True, tunnel=name,
                                  errno=problem.errno))
            return
        self._warned.discard((name, "make its device again"))
        log.info("tunnel %s: device made again, with its addresses and routes", name,
                 extra=event("device_restored", limited=True, tunnel=name))
        if tunnel.endpoint.effective_mtu != tunnel.config.device_mtu:
            self._set_route_mtu(tunnel)

    def link_events(self, events) -> None:
        """What the kernel said of links: a tunnel's device deleted, or changed."""
        by_index = {tunnel.index: tunnel for tunnel in self.tunnels.values()
                    if tunnel.index is not None}
        changed = {}
        for event in events:
            tunnel = by_index.get(event.index)
            if tunnel is not None:
                changed[tunnel.config.name] = event.deleted or changed.get(tunnel.config.name,
                                                                           False)
        for name, deleted in changed.items():
            if deleted:
                self._device_lost(self.tunnels[name], "deleted")
            else:
                self._reconcile(self.tunnels[name])

    def check_links(self) -> None:
        """Link events were lost: look at every device instead."""
        for tunnel in self.tunnels.values():
            if tunnel.index is not None:
                self._reconcile(tunnel)

    def _reconcile(self, tunnel: _Tunnel) -> None:
        """Something changed on the tunnel's device: compare its state now (an event may
        be stale, and our own set-up makes events too) with what the router wants."""
        name = tunnel.config.name
        state = self.netlink.link_state(tunnel.index)
        if state is None:
            self._device_lost(tunnel, "deleted")
            return
        up, mtu = state
        if not up:
            if tunnel.up:
                tunnel.up = False
                log.warning("tunnel %s: its device was set down; its routes are gone until "
                            "it is up again", name,
                            extra=event("device_down", limited=True, tunnel=name))
            return
        if not tunnel.up:
            tunnel.up = True
            if self._netlink(tunnel, "restore its addresses and routes",
                             lambda: self.netlink.program_device(tunnel.config,
                                                                 routes=_routed(tunnel))):
                log.info("tunnel %s: device up again; addresses and routes restored", name,
                         extra=event("device_up", limited=True, tunnel=name))
                if tunnel.endpoint.effective_mtu != tunnel.config.device_mtu:
                    self._set_route_mtu(tunnel)
        elif mtu is not None and mtu != tunnel.config.device_mtu:
            log.warning("tunnel %s: its device's MTU was changed to %d; setting it back to %d",
                        name, mtu, tunnel.config.device_mtu,
                        extra=event("device_mtu_reset", limited=True, tunnel=name, mtu=mtu,
                                    configured=tunnel.config.device_mtu))
            self._netlink(tunnel, "set its MTU back",
                          lambda: self.netlink.program_device(tunnel.config,
                                                              routes=_routed(tunnel)))

