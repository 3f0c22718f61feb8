"""The VXLAN forwarding database: inner MAC address -> remote VTEP.

Learned from the inner source MAC and outer source address of what arrives
(RFC 7348 §4), aged out after ``ageing`` seconds without traffic, plus static
entries from the configuration that never age. Broadcast, multicast and
unknown unicast go to every remote (head-end replication).
"""

STATIC = float("inf")


class Fdb:
    def __init__(self, ageing: float, learning: bool, static: dict[bytes, tuple] | None = None):
        self.ageing = ageing
        self.learning = learning
        self._refresh_below = ageing / 2
        self.entries: dict[bytes, tuple[tuple, float]] = {
            mac: (remote, STATIC) for mac, remote in (static or {}).items()}

    def learn(self, mac: bytes, remote: tuple, now: float) -> None:
        entry = self.entries.get(mac)
        if entry is not None and entry[1] == STATIC:
            return
        # Rewriting an entry that is fresh and unchanged would be wasted work per packet.
        if entry is None or entry[0] != remote or entry[1] - now < self._refresh_below:
            self.entries[mac] = (remote, now + self.ageing)

    def lookup(self, mac: bytes, now: float) -> tuple | None:
        entry = self.entries.get(mac)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def expire(self, now: float) -> None:
        for mac in [mac for mac, (_, expires) in self.entries.items() if expires < now]:
            del self.entries[mac]

    def as_list(self, now: float) -> list[dict]:
        return [{"mac": mac.hex(":"), "remote": remote[0],
                 "static": expires == STATIC,
                 "expires_in": None if expires == STATIC else round(expires - now, 1)}
                for mac, (remote, expires) in sorted(self.entries.items())]
