"""Is the peer there? What was heard from it decides; keepalive probes make sure there is
something to hear.

Anything accepted from the peer counts (a datagram that passed every check, or
the answer to a probe); a probe answered also gives the round-trip time. With
keepalives on, the peer is *down* once nothing was heard for ``retries`` probe
intervals, and *up* again with the first thing heard; until either happens
after start it is *unknown* (the tunnel's routes stand meanwhile). Without
keepalives nothing is sent and the state stays *unknown*: silence may just be a
quiet link.
"""

from __future__ import annotations

import secrets

from encap.keepalive import marker, probe_number

UNKNOWN, UP, DOWN = "unknown", "up", "down"


class Liveness:
    def __init__(self, interval: float | None, retries: int):
        self.interval = interval
        self.retries = retries
        self.nonce = secrets.token_bytes(8)
        self.state = UNKNOWN
        # Monotonic times: of the start (the first probe or judgement), the last change.
        self.started: float | None = None
        self.since: float | None = None
        self.transitions = 0
        self.heard_at: float | None = None     # the last probe answered
        self.next_probe = 0.0
        self.next_number = 0
        self.outstanding: dict[int, float] = {}   # probe number -> when sent; bounded
        self.probes_sent = self.probes_answered = self.probes_lost = 0
        self.rtt: float | None = None

    def take_over(self, old: Liveness) -> None:
        """The same tunnel, reconfigured: its probes in flight are still answered."""
        self.nonce, self.state, self.since, self.started = old.nonce, old.state, old.since, \
            old.started
        self.transitions, self.heard_at, self.next_number, self.next_probe = \
            old.transitions, old.heard_at, old.next_number, old.next_probe
        self.outstanding = old.outstanding
        self.probes_sent, self.probes_answered, self.probes_lost, self.rtt = \
            old.probes_sent, old.probes_answered, old.probes_lost, old.rtt
        if self.interval is None:
            self.state = UNKNOWN

    def _start(self, now: float) -> None:
        self.started = self.since = self.next_probe = now

    def probe(self, now: float) -> tuple[int, bytes] | None:
        """The next probe's number and marker, when one is due (else None)."""
        if self.interval is None:
            return None
        if self.started is None:
            self._start(now)
        if now < self.next_probe:
            return None
        self.next_probe = max(self.next_probe + self.interval, now)
        number = self.next_number
        self.next_number = (number + 1) & 0xFFFFFFFF
        if (number - 1) & 0xFFFFFFFF in self.outstanding:
            self.probes_lost += 1
        self.outstanding[number] = now
        if len(self.outstanding) > self.retries + 1:
            del self.outstanding[next(iter(self.outstanding))]
        self.probes_sent += 1
        return number, marker(self.nonce, number)

    def answered(self, tail, now: float) -> bool:
        """Whether ``tail`` ends in the marker of one of our probes (then it is heard)."""
        number = probe_number(tail, self.nonce)
        if number is None:
            return False
        sent = self.outstanding.pop(number, None)
        if sent is not None:
            self.probes_answered += 1
            self.rtt = now - sent
        self.heard_at = now
        return True

    def judge(self, last_datagram: float | None, now: float) -> bool:
        """Decide up or down from what was heard (``last_datagram``: the last datagram
        accepted from the peer); True if the state changed."""
        if self.interval is None:
            return False
        if self.started is None:
            self._start(now)
        heard = max(self.heard_at or -1.0, last_datagram or -1.0)
        window = self.interval * self.retries
        if heard > self.since and heard >= now - window:
            state = UP
        elif now - max(heard, self.started) >= window:
            state = DOWN
        else:
            return False
        if state == self.state:
            return False
        if self.state != UNKNOWN:
            self.transitions += 1
        self.state, self.since = state, now
        return True

    def status(self, to_wall: float) -> dict:
        """``to_wall``: what to add to a monotonic time to make it a Unix time."""
        return {
            "state": self.state, "since": None if self.since is None else self.since + to_wall,
            "transitions": self.transitions, "keepalive": self.interval,
            "retries": self.retries, "probes_sent": self.probes_sent,
            "probes_answered": self.probes_answered, "probes_lost": self.probes_lost,
            "rtt": self.rtt,
        }
