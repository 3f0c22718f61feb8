"""The log: text lines as they always were, JSON lines that parse and carry each event's
fields, and a rate limit that keeps a flood of what a peer can cause to a few lines and one
that counts the rest, in bounded memory, also when a whole router floods it."""

import io
import json
import logging
import re
import time

import pytest

from tunnelrouter import logs
from tunnelrouter.config import parse_config
from tunnelrouter.logs import RateLimit, event
from tunnelrouter.router import Router

from tests.tunnelrouter.doubles import MemorySystem, drive

log = logging.getLogger("tunnelrouter")
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def output():
    """``output(format, level="info", process="router")``: logging set up into a buffer, whose
    lines the call returns as a function; undone at the end."""
    def setup(log_format: str, level: str = "info", process: str = "router"):
        buffer = io.StringIO()
        logs.setup(log_format, level, process, stream=buffer)
        return lambda: buffer.getvalue().splitlines()
    yield setup
    logs.reset()


def test_text_lines_are_as_they_always_were(output):
    lines = output("text")
    log.warning("tunnel %s: its device is gone (%s)", "gre1", "deleted",
                extra=event("device_lost", tunnel="gre1"))
    log.debug("not at info")
    assert lines() == ["WARNING tunnelrouter: tunnel gre1: its device is gone (deleted)"]


def test_the_forwarders_text_lines_say_so(output):
    lines = output("text", process="forwarder")
    log.info("listening")
    assert lines() == ["INFO tunnelrouter forwarder: listening"]


def test_json_lines_parse_and_carry_time_level_event_message_and_fields(output):
    lines = output("json", "debug")
    log.warning("tunnel %s: cannot %s", "gre1", "set the route MTU",
                extra=event("netlink_failed", tunnel="gre1", call="set the route MTU",
                            key="tunnels.gre1.routes[0]", errno=1))
    log.debug("plain")
    first, second = (json.loads(line) for line in lines())
    assert RFC3339_UTC.fullmatch(first.pop("time"))
    assert first == {"level": "warning", "process": "router", "logger": "tunnelrouter",
                     "event": "netlink_failed", "message": "tunnel gre1: cannot set the route MTU",
                     "tunnel": "gre1", "call": "set the route MTU",
                     "key": "tunnels.gre1.routes[0]", "errno": 1}
    assert second["event"] == "message" and second["level"] == "debug"


def test_a_json_line_with_a_traceback_is_still_one_line(output):
    lines = output("json")
    try:
        raise ValueError("a bug\nover two lines")
    except ValueError as error:
        log.error("internal error: %r", error, exc_info=error,
                  extra=event("internal_error", where="tick", error="ValueError"))
    [line] = lines()
    entry = json.loads(line)
    assert entry["event"] == "internal_error" and "ValueError: a bug" in entry["traceback"]


def test_the_level_leaves_out_what_is_below_it(output):
    lines = output("text", "warning")
    log.info("quiet")
    log.warning("loud")
    assert lines() == ["WARNING tunnelrouter: loud"]


def test_the_forwarder_is_told_to_log_as_the_router(output):
    output("json", "debug")
    assert logs.child_arguments() == ["--log-format", "json", "--log-level", "debug"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited(output):
    """A JSON log behind a rate limit with a clock of the test's."""
    lines = output("json")
    clock = Clock()
    limiter = RateLimit(burst=5, interval=60, max_keys=8, clock=clock)
    handler = logging.getLogger().handlers[-1]
    handler.removeFilter(handler.filters[0])
    handler.addFilter(limiter)
    return lambda: [json.loads(line) for line in lines()], limiter, clock


def flap(tunnel: str, times: int) -> None:
    for _ in range(times):
        log.warning("tunnel %s: its device was set down", tunnel,
                    extra=event("device_down", limited=True, tunnel=tunnel))


def test_a_flood_of_one_event_is_five_lines_then_one_that_counts_the_rest(limited):
    lines, limiter, clock = limited
    flap("gre1", 1000)
    flap("vx1", 2)
    log.info("not limited")
    assert [(line["event"], line.get("tunnel")) for line in lines()] == \
        [("device_down", "gre1")] * 5 + [("device_down", "vx1")] * 2 + [("message", None)]
    clock.now += 59
    limiter.flush()
    assert len(lines()) == 8
    clock.now += 1
    limiter.flush()
    summary = lines()[-1]
    assert summary["event"] == "log_suppressed" and summary["level"] == "warning"
    assert (summary["suppressed_event"], summary["tunnel"], summary["count"]) == \
        ("device_down", "gre1", 995)
    assert summary["message"] == "suppressed 995 similar messages (device_down, gre1) in 60 s"
    assert len(lines()) == 9 and limiter.windows == {}   # vx1 suppressed nothing: no line
    flap("gre1", 1)
    assert lines()[-1]["event"] == "device_down"         # a new interval


def test_a_window_that_ends_on_a_new_line_reports_before_it(limited):
    lines, _, clock = limited
    flap("gre1", 7)
    clock.now += 61
    flap("gre1", 1)
    assert [line["event"] for line in lines()[5:]] == ["log_suppressed", "device_down"]


def test_the_limiter_holds_a_bounded_number_of_keys_and_reports_those_it_forgets(limited):
    lines, limiter, _ = limited
    for number in range(1000):
        flap(f"t{number}", 7)
    assert len(limiter.windows) == 8
    counted = [line for line in lines() if line["event"] == "log_suppressed"]
    assert len(counted) == 1000 - 8 and all(line["count"] == 2 for line in counted)


def test_a_link_flapping_a_thousand_times_costs_a_router_a_few_lines(output):
    lines = output("json")
    router = Router(parse_config({"tunnels": {"ipip1": {
        "mode": "ipip", "local": "10.0.0.1", "remote": "10.0.0.2",
        "addresses": ["192.168.10.1/24"]}}}), None, MemorySystem())
    router.start()
    try:
        for _ in range(1000):
            router.system.set_link("ipip1", up=False)
            drive(router)
            router.system.set_link("ipip1", up=True)
            drive(router)
        assert router.status()["tunnels"]["ipip1"]["device"] == "up"
        events = [json.loads(line)["event"] for line in lines()]
        assert events.count("device_down") == logs.BURST
        assert events.count("device_up") == logs.BURST
        router.tick(time.monotonic() + logs.INTERVAL)
        summaries = [json.loads(line) for line in lines()
                     if json.loads(line)["event"] == "log_suppressed"]
        assert sorted((line["suppressed_event"], line["count"]) for line in summaries) == \
            [("device_down", 1000 - logs.BURST), ("device_up", 1000 - logs.BURST)]
    finally:
        router.close()
