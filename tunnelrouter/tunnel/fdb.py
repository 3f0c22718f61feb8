"""The VXLAN forwarding database: inner MAC address -> remote VTEP.

Learnt from the inner source MAC and outer source address of what arrives
(RFC 7348 §4), aged out after ``ageing`` seconds without traffic, plus static
entries from the configuration that never age. Broadcast, multicast and
unknown unicast go to every remote (head-end replication).

At most ``limit`` learnt entries, like Linux's ``max_fdb``: a peer that sends
frames from a million source MACs fills the table, and then new MACs are not
learnt (their frames still arrive, and replies to them are flooded) until old
ones age out.
"""

STATIC = float("inf")


class Fdb:
    def __init__(self, ageing: float, learning: bool, limit: int,
                 static: dict[bytes, tuple] | None = None):
        self.ageing = ageing
        self.learning = learning
        self.limit = limit
        # An entry is rewritten at most about once a second (not per frame), so it ages out
        # between ageing - 1 and ageing seconds after the last frame from its MAC.
        self._refresh_below = ageing - 1
        self.entries: dict[bytes, tuple[tuple, float]] = {
            mac: (remote, STATIC) for mac, remote in (static or {}).items()}
        self.static = len(self.entries)

    def learn(self, mac: bytes, remote: tuple, now: float) -> bool:
        """Remember that ``mac`` is behind ``remote``; False if the table is full."""
        entry = self.entries.get(mac)
        if entry is None:
            if len(self.entries) - self.static >= self.limit:
                return False
        elif entry[1] == STATIC:
            return True
        # Rewriting an entry that is fresh and unchanged would be wasted work per packet.
        if entry is None or entry[0] != remote or entry[1] - now < self._refresh_below:
            self.entries[mac] = (remote, now + self.ageing)
        return True

    def take_over(self, other: "Fdb", destinations: dict[str, tuple]) -> None:
        """Keep what ``other`` learnt of MACs behind remotes that are still ``destinations``
        (by address), as far as the limit allows; static entries are this table's own."""
        for mac, (remote, expires) in other.entries.items():
            if expires == STATIC or mac in self.entries:
                continue
            destination = destinations.get(remote[0][0])
            if destination is not None and len(self.entries) - self.static < self.limit:
                self.entries[mac] = (destination, expires)

    def lookup(self, mac: bytes, now: float) -> tuple | None:
        entry = self.entries.get(mac)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def expire(self, now: float) -> None:
        for mac in [mac for mac, (_, expires) in self.entries.items() if expires < now]:
            del self.entries[mac]

    def __len__(self) -> int:
        return len(self.entries)

    def as_list(self, now: float, most: int) -> list[dict]:
        """At most ``most`` entries, static ones first, then by MAC."""
        shown = sorted(self.entries.items(), key=lambda item: (item[1][1] != STATIC, item[0]))
        return [{"mac": mac.hex(":"), "remote": remote[0][0],
                 "static": expires == STATIC,
                 "expires_in": None if expires == STATIC else round(expires - now, 1)}
                for mac, (remote, expires) in shown[:most]]
