"""The log: one line per event on stderr, as text (the format it always had) or as JSON lines
(``--log-format json``), and a bound on the lines that the outside world can cause.

A log call that is an event names it, and gives its fields, with ``extra=event(...)``::

    log.warning("tunnel %s: its device is gone (%s)", name, why,
                extra=event("device_lost", limited=True, tunnel=name, reason=why))

A text line is the message, as before; a JSON line has ``time`` (RFC 3339, UTC), ``level``,
``process`` (router or forwarder), ``event``, ``message`` and the fields, so that a log
pipeline can select ``event == "device_lost" and tunnel == "gre1"`` without parsing prose.

``limited=True`` marks what a peer, the WAN or a flapping link can make the router say again
and again (path MTU changes from ICMP, devices lost and restored, failing netlink calls): such
lines pass ``BURST`` times per ``INTERVAL`` per (event, tunnel); the rest are counted, and
when the interval is over one line says how many were suppressed. The limiter holds at most
``MAX_KEYS`` keys, so a flood of names costs bounded memory.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from datetime import datetime, timezone

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
BURST = 5                # lines per (event, tunnel) ...
INTERVAL = 60.0          # ... per this many seconds
MAX_KEYS = 1024          # (event, tunnel) keys the limiter remembers at most
_TEXT = "%(levelname)s %(name)s{label}: %(message)s"

log = logging.getLogger("tunnelrouter")

_settings = {"format": "text", "level": "info"}
_handler: logging.Handler | None = None
_level_before = logging.WARNING
_limiter: RateLimit | None = None


def event(name: str, *, limited: bool = False, **fields) -> dict:
    """The ``extra=`` of a log call: the event's stable name and its fields. ``limited``: the
    outside world can cause it, so it goes through the rate limit."""
    return {"event": name, "fields": fields, "limited": limited}


def setup(log_format: str = "text", level: str = "info", process: str = "router",
          stream=None) -> logging.Handler:
    """Log to ``stream`` (stderr) from now on, in ``log_format`` at ``level`` and above,
    instead of where an earlier call said; the handler, for whoever wants it gone again."""
    global _handler, _limiter, _level_before
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    else:
        _level_before = root.level
    _handler = logging.StreamHandler(stream or sys.stderr)
    label = "" if process == "router" else f" {process}"
    _handler.setFormatter(JsonFormatter(process) if log_format == "json"
                          else logging.Formatter(_TEXT.format(label=label)))
    _limiter = RateLimit()
    _handler.addFilter(_limiter)
    root.addHandler(_handler)
    root.setLevel(level.upper())
    _settings.update({"format": log_format, "level": level})
    return _handler


def reset() -> None:
    """Undo :func:`setup`: no handler of ours, the default level and format."""
    global _handler, _limiter
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        logging.getLogger().setLevel(_level_before)
    _handler = _limiter = None
    _settings.update({"format": "text", "level": "info"})


def child_arguments() -> list[str]:
    """The options that make a child process (the forwarder) log as this one does."""
    return ["--log-format", _settings["format"], "--log-level", _settings["level"]]


def tick(now: float) -> None:
    """Say what the rate limit held back in intervals that are over (from the loop's tick)."""
    if _limiter is not None:
        _limiter.flush(now)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname.lower(),
                "process": self.process,
                "logger": record.name,
                "event": getattr(record, "event", None) or "message",
                "message": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _Window:
    __slots__ = ("start", "passed", "suppressed", "level")

    def __init__(self, start: float):
        self.start = start
        self.passed = 0
        self.suppressed = 0
        self.level = logging.DEBUG


class RateLimit(logging.Filter):
    """At most ``burst`` records per ``interval`` per (event, tunnel) of the records marked
    ``limited``; the others pass untouched."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL,
                 max_keys: int = MAX_KEYS, clock=time.monotonic):
        super().__init__()
        self.burst, self.interval, self.max_keys, self.clock = burst, interval, max_keys, clock
        self.windows: OrderedDict[tuple, _Window] = OrderedDict()   # oldest window first

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "limited", False):
            return True
        fields = getattr(record, "fields", {})
        key = (getattr(record, "event", None), fields.get("tunnel") or fields.get("forward"))
        now = self.clock()
        window = self.windows.get(key)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._report(key, self.windows.pop(key))
            elif len(self.windows) >= self.max_keys:
                self._report(*self.windows.popitem(last=False))
            window = self.windows[key] = _Window(now)
        window.passed += 1
        if window.passed <= self.burst:
            return True
        window.suppressed += 1
        window.level = max(window.level, record.levelno)
        return False

    def flush(self, now: float | None = None) -> None:
        """Forget the windows that are over, saying what each held back."""
        now = self.clock() if now is None else now
        while self.windows:
            key, window = next(iter(self.windows.items()))
            if now - window.start < self.interval:
                break      # windows are in the order they started: the rest are younger
            del self.windows[key]
            self._report(key, window)

    def _report(self, key: tuple, window: _Window) -> None:
        if not window.suppressed:
            return
        name, tunnel = key
        log.log(window.level, "suppressed %d similar messages (%s%s) in %.0f s",
                window.suppressed, name, f", {tunnel}" if tunnel else "", self.interval,
                extra=event("log_suppressed", suppressed_event=name, tunnel=tunnel,
                            count=window.suppressed))
