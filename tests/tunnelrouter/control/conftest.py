"""What the servers' tests share: a call that blocks the loop fails the test instead of
hanging the suite."""

import signal

import pytest

HANG = 20   # seconds: far beyond anything these tests do, short of a blocked call


@pytest.fixture
def no_hang():
    def hung(*_):
        raise TimeoutError(f"blocked for {HANG} s: a call in the loop blocks")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, HANG)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
