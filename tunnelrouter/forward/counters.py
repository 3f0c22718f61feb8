"""A forward's counters: what it relayed, why it refused clients, why connections ended."""

from __future__ import annotations

# Why a client got no connection to the backend.
REFUSALS = ("denied", "rate", "max_connections", "connect_timeout", "connect_refused",
            "connect_failed")
# Why a connection or session ended other than by its ends closing it.
ENDINGS = ("idle_timeout", "max_lifetime", "reset")
# What happened to datagrams and system calls that did not pass.
DROPS = ("send_failed", "backend_unreachable", "accept_failed")


class ForwardCounters:
    """One forward's numbers, kept across a reload that changes it (by name). The relay
    adds to the attributes; everything else is counted in the dicts by reason."""

    __slots__ = ("open", "total", "bytes_to_backend", "bytes_to_client",
                 "datagrams_to_backend", "datagrams_to_client", "refused", "ended", "dropped")

    def __init__(self) -> None:
        self.open = self.total = 0
        self.bytes_to_backend = self.bytes_to_client = 0
        self.datagrams_to_backend = self.datagrams_to_client = 0
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.ended = dict.fromkeys(ENDINGS, 0)
        self.dropped = dict.fromkeys(DROPS, 0)

    def status(self, protocol: str) -> dict:
        if protocol == "tcp":
            return {"connections_open": self.open, "connections_total": self.total,
                    "bytes_to_backend": self.bytes_to_backend,
                    "bytes_to_client": self.bytes_to_client,
                    "refused": dict(self.refused), "ended": dict(self.ended),
                    "dropped": {"accept_failed": self.dropped["accept_failed"]}}
        return {"sessions_open": self.open, "sessions_total": self.total,
                "datagrams_to_backend": self.datagrams_to_backend,
                "datagrams_to_client": self.datagrams_to_client,
                "bytes_to_backend": self.bytes_to_backend,
                "bytes_to_client": self.bytes_to_client,
                "refused": {reason: self.refused[reason] for reason in
                            ("denied", "rate", "max_connections", "connect_failed")},
                "ended": {reason: self.ended[reason] for reason in
                          ("idle_timeout", "max_lifetime")},
                "dropped": {reason: self.dropped[reason] for reason in
                            ("send_failed", "backend_unreachable")}}
