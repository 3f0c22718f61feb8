"""What a forward decides about a new client before it costs anything: allowed or denied by
its address, within its rate or not; and the bounded, least-recently-used table that both
the rate limiter and the session tables keep their entries in.

No system calls and no clock: ``now`` is handed in.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from tunnelrouter.forward.config import Rate

MAX_SOURCES = 65536   # source addresses whose buckets the rate limiter remembers


class RecentlyUsed:
    """Entries by key, least recently used first, at most ``limit``: expiring the ones
    unused since a time looks at those alone, and a full table knows which entry to evict.
    Backed by an OrderedDict, whose front is O(1) however many entries left it (a plain
    dict's is not)."""

    __slots__ = ("limit", "_entries", "_used")

    def __init__(self, limit: int):
        self.limit = limit
        self._entries: OrderedDict = OrderedDict()   # key -> value
        self._used: dict = {}                        # key -> when last used

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.limit

    def get(self, key):
        return self._entries.get(key)

    def add(self, key, value, now: float) -> None:
        """Add ``key`` (the caller has made room: see :attr:`full`)."""
        self._entries[key] = value
        self._used[key] = now

    def use(self, key, now: float) -> None:
        self._entries.move_to_end(key)
        self._used[key] = now

    def pop(self, key):
        self._used.pop(key, None)
        return self._entries.pop(key, None)

    def pop_oldest(self):
        key, value = self._entries.popitem(last=False)
        del self._used[key]
        return key, value

    def pop_unused_since(self, when: float) -> Iterator[tuple[object, object]]:
        """Remove and yield the entries last used before ``when``."""
        entries, used = self._entries, self._used
        while entries:
            key = next(iter(entries))
            if used[key] >= when:
                return
            del used[key]
            yield key, entries.pop(key)

    def values(self) -> list:
        return list(self._entries.values())


class SourceRate:
    """A token bucket per source address (``rate.count`` tokens, refilled at
    ``rate.count`` per ``rate.period``): a new connection takes a token or is refused.

    A bucket unused for one period is full again, which is what a source never seen has:
    such buckets are forgotten (:meth:`expire`). Past ``MAX_SOURCES`` sources the least
    recently seen is forgotten early; it may then start again with a full bucket, which
    only a client spread over that many addresses can arrange."""

    __slots__ = ("rate", "_buckets", "_per_second")

    def __init__(self, rate: Rate, max_sources: int = MAX_SOURCES):
        self.rate = rate
        self._per_second = rate.per_second
        self._buckets = RecentlyUsed(max_sources)   # source -> [tokens, when counted]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if self._buckets.full:
                self._buckets.pop_oldest()
            self._buckets.add(source, [self.rate.count - 1.0, now], now)
            return True
        tokens = min(float(self.rate.count), bucket[0] + (now - bucket[1]) * self._per_second)
        bucket[1] = now
        self._buckets.use(source, now)
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def expire(self, now: float) -> None:
        for _ in self._buckets.pop_unused_since(now - self.rate.period):
            pass


class AccessList:
    """``allow`` (nothing: everyone) minus ``deny``, looked up by the source's text as the
    socket module gives it: sorted ranges of integers, a binary search each."""

    __slots__ = ("_allow", "_deny")

    def __init__(self, allow: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 deny: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        allow, deny = list(allow), list(deny)
        self._allow = _Ranges(allow) if allow else None
        self._deny = _Ranges(deny) if deny else None

    @property
    def everyone(self) -> bool:
        return self._allow is None and self._deny is None

    def permits(self, source: str) -> bool:
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        number = int.from_bytes(socket.inet_pton(family, source), "big")
        version = 6 if family == socket.AF_INET6 else 4
        if self._allow is not None and not self._allow.holds(version, number):
            return False
        return self._deny is None or not self._deny.holds(version, number)


class _Ranges:
    """Networks as merged, sorted ``[start, end]`` ranges per IP version."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, networks):
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for network in sorted(networks, key=lambda n: (n.version, int(n.network_address))):
            start, end = int(network.network_address), int(network.broadcast_address)
            starts, ends = self._starts[network.version], self._ends[network.version]
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)

    def holds(self, version: int, number: int) -> bool:
        position = bisect.bisect_right(self._starts[version], number) - 1
        return position >= 0 and number <= self._ends[version][position]
