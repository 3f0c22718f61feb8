"""rate-limit (tunnelrouter/tunnel/ratelimit.py): a packet and a byte bucket per peer, which
never lets more through than the rate over the time plus the burst."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelrouter.modes.base import RateLimit
from tunnelrouter.tunnel.ratelimit import PeerRateLimit

PEER, OTHER = "10.0.0.2", "10.0.0.3"


def limiter(peers=(PEER,), **keys) -> PeerRateLimit:
    return PeerRateLimit(RateLimit.model_validate(keys), peers)


def test_a_full_bucket_lets_the_burst_through_then_the_rate():
    limit = limiter(packets=1000, burst="100ms")
    assert sum(limit.admit(PEER, 100, 10.0) for _ in range(200)) == 100
    assert sum(limit.admit(PEER, 100, 10.05) for _ in range(200)) == 50


def test_bytes_are_limited_by_the_size_of_each_packet():
    limit = limiter(bytes=10_000, burst="1s")
    assert [limit.admit(PEER, 4000, 5.0) for _ in range(3)] == [True, True, False]
    assert limit.admit(PEER, 2000, 5.0)          # the 2000 left
    assert not limit.admit(PEER, 1, 5.0)
    assert limit.admit(PEER, 2500, 5.25)         # a quarter of a second: 2500 bytes
    assert not limit.admit(PEER, 1, 5.25)


def test_a_refused_packet_takes_no_token():
    limit = limiter(packets=1000, bytes=1500, burst="1s")
    assert not limit.admit(PEER, 2000, 1.0)      # over the byte bucket: the packet token stays
    assert sum(limit.admit(PEER, 1, 1.0) for _ in range(2000)) == 1000


def test_each_peer_has_its_own_bucket():
    limit = limiter((PEER, OTHER), packets=10, burst="1s")
    assert sum(limit.admit(PEER, 1, 1.0) for _ in range(20)) == 10
    assert sum(limit.admit(OTHER, 1, 1.0) for _ in range(20)) == 10
    assert len(limit.buckets) == 2
    limit.admit("10.9.9.9", 1, 1.0)              # a stranger makes no bucket
    assert len(limit.buckets) == 2


def test_a_reload_keeps_what_a_peer_used_up_within_the_new_burst():
    old = limiter((PEER, OTHER), packets=100, burst="1s")
    for _ in range(100):
        old.admit(PEER, 1, 1.0)
    new = limiter((PEER,), packets=50, burst="1s")
    new.take_over(old)
    assert not new.admit(PEER, 1, 1.0)           # still empty: a reload is no fresh burst
    assert sum(new.admit(PEER, 1, 2.0) for _ in range(100)) == 50


@pytest.mark.parametrize("keys", [{"packets": 100}, {"bytes": 100_000}])
def test_a_rate_not_given_is_unlimited(keys):
    limit = limiter(**keys, burst="1s")
    if "packets" in keys:
        assert sum(limit.admit(PEER, 10**6, 1.0) for _ in range(200)) == 100
    else:
        assert sum(limit.admit(PEER, 1, 1.0) for _ in range(200_000)) == 100_000


arrivals = st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 9000), st.integers(1, 40)),
                    min_size=1, max_size=60)


@given(st.integers(1, 100_000), st.integers(9000, 10**8), st.sampled_from(["1ms", "100ms", "2s"]),
       arrivals)
def test_a_bucket_never_lets_more_than_rate_times_time_plus_burst_through(packets, size_rate,
                                                                          burst, arrivals):
    burst_seconds = {"1ms": 0.001, "100ms": 0.1, "2s": 2.0}[burst]
    if packets * burst_seconds < 1 or size_rate * burst_seconds < 9000:
        return   # the configuration refuses a bucket that holds no whole packet
    limit = limiter(packets=packets, bytes=size_rate, burst=burst)
    start = now = 50.0
    admitted_packets = admitted_bytes = 0
    for gap, size, count in arrivals:
        now += gap
        for _ in range(count):
            if limit.admit(PEER, size, now):
                admitted_packets += 1
                admitted_bytes += size
        elapsed = now - start
        assert admitted_packets <= packets * elapsed + packets * burst_seconds + 1e-6
        assert admitted_bytes <= size_rate * elapsed + size_rate * burst_seconds + 1e-3
