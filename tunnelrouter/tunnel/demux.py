"""Which tunnel a datagram from the wire belongs to, among those that share one underlay
socket; the same for an ICMP error about a datagram we sent. No system calls."""

from collections.abc import Hashable

from encap.errors import DropReason

from tunnelrouter.modes import Mode
from tunnelrouter.modes.base import Unreadable
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.counters import Counters
from tunnelrouter.tunnel.endpoint import Endpoint
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError


class Demux:
    """Which tunnel a datagram belongs to, for every tunnel that shares one underlay socket.

    A mode says what tells its tunnels apart (its ``demux_key``: the source address,
    with the GRE key; the VNI); a datagram whose key no tunnel has is dropped and
    counted here, where no tunnel can be blamed. The same key finds the tunnel an
    ICMP error is about, from the quote of our own datagram.
    """

    def __init__(self, mode: Mode):
        self.key_of = mode.demux_key
        self.unknown_key = mode.unknown_key
        self.peer_owns_unknown_keys = mode.peer_owns_unknown_keys
        self.endpoints: dict[Hashable, Endpoint] = {}
        self.sources: dict[str, list[Endpoint]] = {}   # peer address -> its tunnels
        self.counters = Counters()                     # what no tunnel can be blamed for

    def add(self, endpoint: Endpoint) -> None:
        for key in endpoint.keys:
            if key in self.endpoints:
                raise ValueError(f"tunnels {self.endpoints[key].name} and {endpoint.name} "
                                 f"have the same key {key!r}")
        for key in endpoint.keys:
            self.endpoints[key] = endpoint
        for peer in endpoint.peers:
            self.sources.setdefault(peer, []).append(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        for key in endpoint.keys:
            self.endpoints.pop(key, None)
        for peer in endpoint.peers:
            self.sources[peer].remove(endpoint)
            if not self.sources[peer]:
                del self.sources[peer]

    def decapsulate(self, batch: Batch, now: float) -> None:
        """Hand each datagram of ``batch`` (from the wire) to its tunnel: afterwards
        ``batch.endpoints[i]`` is the tunnel whose device takes ``batch.packets[i]``,
        or None."""
        key_of, endpoints, views, starts, ends = self.key_of, self.endpoints, batch.views, \
            batch.starts, batch.ends
        addresses, targets = batch.addresses, batch.endpoints
        # The tunnel and peer last told that the peer was heard: once a run, not a packet.
        heard, heard_from = None, None
        for i in range(batch.count):
            datagram = views[i][:ends[i]]
            source = addresses[i]
            key = key_of(datagram, starts[i], source)
            endpoint = endpoints.get(key)
            if endpoint is None:
                endpoint = self._stray(key, source, batch.parts(i))
            if endpoint is not None and endpoint.decapsulate(batch, i, datagram, now):
                targets[i] = endpoint
                if endpoint is not heard or source != heard_from:
                    endpoint.heard(source, now)
                    heard, heard_from = endpoint, source
            else:
                targets[i] = None

    def wan_error(self, error: WanError, now: float) -> tuple[Endpoint, ...]:
        """Hand an error about one of our datagrams to the tunnel that sent it; return the
        tunnels it reached (none: it is about no datagram of ours, counted here)."""
        endpoint = self.endpoints.get(self.key_of(error.quote, 0, error.peer))
        if endpoint is None and error.origin == ErrorOrigin.LOCAL and not len(error.quote):
            # Our own stack found a datagram too big for the link and quotes none of it
            # (the kernel's ip_local_error): that link is on the way to every tunnel with
            # this peer.
            reached = tuple(self.sources.get(error.peer, ()))
        elif endpoint is None or error.peer not in endpoint.peers:
            reached = ()
        else:
            reached = (endpoint,)
        if not reached:
            self.counters.wan_errors += 1
        for endpoint in reached:
            endpoint.wan_error(error, now)
        return reached

    def _stray(self, key: Hashable, source: str, parts: int) -> Endpoint | None:
        """No tunnel has ``key``: the tunnel that takes the datagram anyway, to count why
        it drops it, or None, counted here (``parts``: the datagrams it is)."""
        if key.__class__ is Unreadable:
            self.counters.drops[key.reason] += parts
            return None
        tunnels = self.sources.get(source)
        if tunnels is None:
            self.counters.drops[DropReason.NOT_A_PEER] += parts
            return None
        if self.peer_owns_unknown_keys and len(tunnels) == 1:
            return tunnels[0]
        self.counters.drops[self.unknown_key] += parts
        return None
