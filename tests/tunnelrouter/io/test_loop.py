"""The event loop: handlers per descriptor, faults counted and logged once, a tick when
due, descriptors forgotten in the middle of a round, and signals turned into callbacks
that run in the loop."""

import logging
import os
import signal
import socket

import pytest

from tunnelrouter.io.loop import EPOLLIN, Loop


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def pairs():
    """``make()``: a socketpair whose ``[0]`` is to be watched, both closed at the end."""
    made = []

    def make() -> tuple[socket.socket, socket.socket]:
        watched, other = socket.socketpair()
        watched.setblocking(False)
        made.append((watched, other))
        return watched, other
    yield make
    for watched, other in made:
        watched.close()
        other.close()


def never(now: float) -> None:
    pass


def readable(pairs) -> socket.socket:
    """A watched end with a byte waiting (level-triggered: it stays ready until read)."""
    watched, other = pairs()
    other.send(b"!")
    return watched


def internal_errors(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.getMessage().startswith("internal error in")]


def test_a_ready_descriptor_gets_its_handler_called_with_the_events(loop, pairs):
    sock = readable(pairs)
    seen = []
    loop.watch(sock.fileno(), seen.append)
    loop.run_once(never, 1.0, 0.0)
    assert seen == [EPOLLIN]


def test_a_raising_handler_is_counted_logged_once_per_kind_and_the_loop_goes_on(
        loop, pairs, caplog):
    faulty, healthy = readable(pairs), readable(pairs)
    kinds = iter([ValueError, ValueError, KeyError, ValueError])

    def bug(_events):
        raise next(kinds)("a bug")
    bug.__qualname__ = "device gre1"
    served = []
    loop.watch(faulty.fileno(), bug)
    loop.watch(healthy.fileno(), served.append)
    for _ in range(4):
        loop.run_once(never, 1.0, 0.0)
    assert loop.faults == 4 and len(served) == 4
    assert internal_errors(caplog) == [
        "internal error in device gre1 (the router carries on; this is logged once): "
        "ValueError('a bug')",
        "internal error in device gre1 (the router carries on; this is logged once): "
        "KeyError('a bug')"]
    assert all(record.exc_info for record in caplog.records if record.levelno == logging.ERROR)


def test_the_same_fault_in_another_handler_is_logged_again(loop, pairs, caplog):
    for name in ("device gre1", "device gre2"):
        def bug(_events):
            raise RuntimeError("a bug")
        bug.__qualname__ = name
        loop.watch(readable(pairs).fileno(), bug)
    for _ in range(3):
        loop.run_once(never, 1.0, 0.0)
    assert loop.faults == 6
    assert sorted(message.split(" (")[0] for message in internal_errors(caplog)) == \
        ["internal error in device gre1", "internal error in device gre2"]


def test_the_tick_runs_when_due_and_a_raising_tick_is_a_fault(loop, caplog):
    ticks = []
    loop.run_once(ticks.append, 3600.0, 0.0)
    loop.run_once(ticks.append, 3600.0, 0.0)
    assert len(ticks) == 1                     # the next one is an hour away

    def broken(now):
        raise ZeroDivisionError("tick")
    other = Loop()
    try:
        other.run_once(broken, 1.0, 0.0)
        assert other.faults == 1
    finally:
        other.close()
    assert internal_errors(caplog)[0].startswith("internal error in tick")


def test_a_descriptor_forgotten_by_a_handler_is_not_served_in_the_same_round(loop, pairs):
    first, second = readable(pairs), readable(pairs)
    ran = []

    def forgets(mine: socket.socket, theirs: socket.socket):
        def handler(_events):
            ran.append(mine)
            loop.forget(theirs.fileno())
        return handler
    loop.watch(first.fileno(), forgets(first, second))
    loop.watch(second.fileno(), forgets(second, first))
    loop.run_once(never, 1.0, 0.0)
    # Both were ready in this round's poll: whichever ran first forgot the other.
    assert len(ran) == 1 and loop.faults == 0
    loop.run_once(never, 1.0, 0.0)
    assert len(ran) == 2 and ran[0] is ran[1]


def test_an_event_for_a_closed_descriptor_never_reaches_the_new_one_with_its_number(loop,
                                                                                  pairs):
    first, second = readable(pairs), readable(pairs)
    calls = []

    def closes_the_other(mine: socket.socket, theirs: socket.socket):
        def handler(_events):
            calls.append("old")
            number = theirs.fileno()
            loop.forget(number)
            theirs.close()
            # A descriptor made now takes the freed number, and is watched anew.
            reused, spare = socket.socketpair()
            os.dup2(reused.fileno(), number)
            loop.watch(number, lambda _events: calls.append("new"))
            reused.close()
            spare.close()
        return handler
    loop.watch(first.fileno(), closes_the_other(first, second))
    loop.watch(second.fileno(), closes_the_other(second, first))
    loop.run_once(never, 1.0, 0.0)
    assert calls == ["old"]


def test_forgetting_twice_or_after_close_is_harmless(loop, pairs):
    watched, _ = pairs()
    loop.watch(watched.fileno(), lambda _events: None)
    fd = watched.fileno()
    watched.close()                 # the kernel dropped it from the epoll set already
    loop.forget(fd)
    loop.forget(fd)
    loop.run_once(never, 1.0, 0.0)
    assert loop.faults == 0


def test_a_signal_runs_its_callback_from_the_loop_not_from_the_signal_handler(loop):
    before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)
    called = []
    loop.on_signal(signal.SIGHUP, lambda: called.append("hup"))
    loop.on_signal(signal.SIGUSR1, lambda: called.append("usr1"))
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert called == []                       # the handler only wrote to the wakeup fd
    for _ in range(3):
        loop.run_once(never, 3600.0, 0.0)
    assert called == ["hup", "usr1"]
    loop.close()
    assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)) == before
    assert signal.set_wakeup_fd(-1) == -1     # the wakeup fd is given back too


def test_stop_ends_run(loop):
    rounds = []

    def tick(now):
        rounds.append(now)
        if len(rounds) == 3:
            loop.stop()
    loop.run(tick, 0.001)
    assert len(rounds) == 3
