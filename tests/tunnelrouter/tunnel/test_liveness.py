"""The liveness rules on their own: whatever the peer does, the verdict follows what was
heard, the probes in flight stay bounded, and nothing but our own marker is an answer."""

from hypothesis import given
from hypothesis import strategies as st

from encap.keepalive import marker
from tunnelrouter.tunnel.liveness import DOWN, UNKNOWN, UP, Liveness

# Each step: how far the clock moves, and whether the peer answers the last probe sent.
steps = st.lists(st.tuples(st.floats(0.05, 3.0), st.booleans()), max_size=60)


@given(steps, st.integers(1, 5), st.integers(1, 4))
def test_the_verdict_follows_what_was_heard_and_the_probes_in_flight_are_bounded(
        moves, interval, retries):
    liveness = Liveness(interval, retries)
    now, sent, heard = 1000.0, None, None
    for move, answers in moves:
        now += move
        due = liveness.probe(now)
        if due is not None:
            sent = due
        if answers and sent is not None:
            assert liveness.answered(b"frame" + sent[1], now)
            heard = now
        liveness.judge(None, now)
        window = interval * retries
        if liveness.state == UP:
            assert heard is not None and heard >= now - window
        elif liveness.state == DOWN:
            assert heard is None or heard <= now - window
        assert len(liveness.outstanding) <= retries + 1
        assert liveness.probes_answered <= liveness.probes_sent


def test_only_our_own_marker_is_an_answer():
    liveness = Liveness(1, 3)
    number, ours = liveness.probe(10.0)
    assert not liveness.answered(marker(b"\0" * 8, number), 10.1)
    assert not liveness.answered(ours[:-1], 10.1)
    assert liveness.heard_at is None and liveness.probes_answered == 0
    assert liveness.answered(ours, 10.25)
    assert liveness.probes_answered == 1 and liveness.rtt == 0.25


def test_a_late_or_repeated_answer_is_heard_but_gives_no_second_round_trip():
    liveness = Liveness(1, 3)
    _, first = liveness.probe(10.0)
    assert liveness.answered(first, 10.5)
    assert liveness.answered(first, 11.5)
    assert liveness.probes_answered == 1 and liveness.rtt == 0.5 and liveness.heard_at == 11.5


def test_without_keepalives_nothing_is_probed_or_judged():
    liveness = Liveness(None, 3)
    assert liveness.probe(10.0) is None
    assert not liveness.judge(10.0, 100.0) and liveness.state == UNKNOWN
