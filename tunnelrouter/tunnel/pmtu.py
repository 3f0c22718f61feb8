"""Path MTU soft state of one tunnel (RFC 1191, RFC 2003 §5.1, RFC 4459).

The outer path to a peer may be narrower than the underlay link: a router in
the middle of the WAN says so with ICMP fragmentation-needed (or the local
stack with EMSGSIZE). The learnt value lowers the tunnel's *effective* MTU,
the largest inner packet it carries without outer fragmentation, until it
expires; then the full device MTU is tried again (RFC 1191 §6.3), and a path
that is still narrow is learnt again from the next ICMP.
"""

from encap.mtu import IPV6_MINIMUM_MTU

# Linux's net.ipv4.route.min_pmtu: a smaller report is forged or describes a path no
# one can use; it is raised to this, as the kernel does. An IPv6 path is never
# narrower than IPv6's own minimum.
MINIMUM_PATH_MTU = {4: 552, 6: IPV6_MINIMUM_MTU}


class PathMtu:
    """Learnt outer path MTUs by peer, and the effective inner MTU they leave.

    Only the tunnel's own peers are ever reported (the caller checks), so the table
    holds at most one entry per configured peer."""

    def __init__(self, device_mtu: int, overhead: int, timeout: float, underlay_family: int):
        self.device_mtu = device_mtu
        self.minimum = MINIMUM_PATH_MTU[underlay_family]
        self.overhead = overhead   # outer bytes per inner packet (L3 to L3)
        self.timeout = timeout
        self.learnt: dict[str, tuple[int, float]] = {}   # peer -> (path MTU, expiry time)
        self.effective = device_mtu

    def lower(self, peer: str, path_mtu: int, now: float) -> bool:
        """``peer`` is reachable with at most ``path_mtu`` bytes; True if that changed the
        effective MTU. A report never raises a path MTU (RFC 1191 §3): only expiry does."""
        path_mtu = max(path_mtu, self.minimum)
        current, _ = self.learnt.get(peer, (self.device_mtu + self.overhead, 0.0))
        if path_mtu >= current:
            return False
        self.learnt[peer] = (path_mtu, now + self.timeout)
        return self._recompute()

    def expire(self, now: float) -> bool:
        """Forget what is older than the timeout; True if the effective MTU changed."""
        stale = [peer for peer, (_, expiry) in self.learnt.items() if expiry <= now]
        for peer in stale:
            del self.learnt[peer]
        return bool(stale) and self._recompute()

    def _recompute(self) -> bool:
        # Several peers (a VXLAN flood list) share one device: the narrowest path rules.
        effective = min([self.device_mtu] +
                        [path_mtu - self.overhead for path_mtu, _ in self.learnt.values()])
        changed = effective != self.effective
        self.effective = effective
        return changed

    def take_over(self, other: "PathMtu", peers) -> None:
        """Keep what ``other`` learnt of the paths to ``peers`` (a reload that left them)."""
        self.learnt = {peer: learnt for peer, learnt in other.learnt.items() if peer in peers}
        self._recompute()

    def status(self, now: float) -> dict:
        return {peer: {"mtu": path_mtu, "expires_in": round(max(expiry - now, 0.0), 1)}
                for peer, (path_mtu, expiry) in self.learnt.items()}
