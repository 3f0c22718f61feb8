"""The decisions a forward makes about a new client, and the bounded tables behind them."""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from tunnelrouter.forward.config import Rate
from tunnelrouter.forward.limits import AccessList, RecentlyUsed, SourceRate


def networks(*texts):
    return [ipaddress.ip_network(text) for text in texts]


# -- allow and deny ---------------------------------------------------------------------

def test_nothing_given_lets_everyone_in():
    access = AccessList([], [])
    assert access.everyone and access.permits("192.0.2.1") and access.permits("2001:db8::1")


def test_allow_lets_in_only_its_prefixes_of_either_family():
    access = AccessList(networks("192.0.2.0/24", "2001:db8::/32"), [])
    assert access.permits("192.0.2.255") and access.permits("2001:db8:ffff::1")
    assert not access.permits("192.0.3.0") and not access.permits("2001:db9::1")


def test_deny_carves_out_of_allow():
    access = AccessList(networks("10.0.0.0/8"), networks("10.6.6.0/24"))
    assert access.permits("10.6.5.255") and access.permits("10.6.7.0")
    assert not access.permits("10.6.6.1") and not access.permits("11.0.0.1")


def test_deny_alone_lets_in_everyone_else():
    access = AccessList([], networks("192.0.2.7/32", "fd00::/8"))
    assert not access.permits("192.0.2.7") and not access.permits("fd12::1")
    assert access.permits("192.0.2.8") and access.permits("2001:db8::1")


def test_an_ipv4_prefix_never_matches_an_ipv6_source():
    access = AccessList(networks("0.0.0.0/0"), [])
    assert access.permits("203.0.113.1") and not access.permits("::1")


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=12),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_allow_agrees_with_asking_every_prefix(prefixes, sources):
    nets = [ipaddress.ip_network((address, length), strict=False) for address, length in prefixes]
    access = AccessList(nets, [])
    for number in sources:
        source = ipaddress.IPv4Address(number)
        assert access.permits(str(source)) == (not nets or any(source in n for n in nets))


# -- the rate, a token bucket per source ---------------------------------------------------

def test_a_source_may_open_the_count_at_once_then_one_per_share_of_the_period():
    rate = SourceRate(Rate(3, 60.0))   # 3/m: 3 at once, then one every 20 s
    assert [rate.take("10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not rate.take("10.0.0.1", 19.0)
    assert rate.take("10.0.0.1", 20.5)
    assert not rate.take("10.0.0.1", 21.0)


def test_each_source_has_its_own_bucket():
    rate = SourceRate(Rate(1, 1.0))
    assert rate.take("10.0.0.1", 0.0) and not rate.take("10.0.0.1", 0.1)
    assert rate.take("10.0.0.2", 0.1) and rate.take("2001:db8::1", 0.1)


def test_a_refused_attempt_does_not_cost_a_token():
    rate = SourceRate(Rate(2, 10.0))   # one token each 5 s
    assert rate.take("s", 0.0) and rate.take("s", 0.0)
    for moment in (1.0, 2.0, 3.0, 4.0):
        assert not rate.take("s", moment)
    assert rate.take("s", 5.0)


def test_a_bucket_unused_for_a_period_is_full_again_and_forgotten():
    rate = SourceRate(Rate(5, 1.0))
    for source in ("a", "b", "c"):
        rate.take(source, 0.0)
    rate.take("c", 0.8)
    rate.expire(1.5)
    assert len(rate) == 1   # only c, used 0.7 s ago
    assert all(rate.take("a", 1.5) for _ in range(5))


def test_the_sources_remembered_are_bounded_and_the_least_recent_goes_first():
    rate = SourceRate(Rate(1, 3600.0), max_sources=3)
    for number, source in enumerate(("a", "b", "c")):
        assert rate.take(source, float(number))
    assert not rate.take("a", 3.0)            # a is now the most recent
    assert rate.take("d", 4.0)                # b, least recent, is forgotten for it
    assert len(rate) == 3
    assert rate.take("b", 5.0)                # b starts again with a full bucket
    assert not rate.take("a", 6.0) and not rate.take("d", 6.0)


def test_a_flood_of_sources_keeps_the_table_at_its_bound():
    rate = SourceRate(Rate(10, 1.0), max_sources=1000)
    for number in range(100_000):
        rate.take(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}", number * 1e-6)
    assert len(rate) == 1000


# -- the table ---------------------------------------------------------------------------

def test_entries_unused_since_a_time_come_out_least_recent_first():
    table = RecentlyUsed(10)
    for key, moment in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        table.add(key, key.upper(), moment)
    table.use("a", 4.0)
    assert list(table.pop_unused_since(3.5)) == [("b", "B"), ("c", "C")]
    assert len(table) == 1 and "a" in table and table.get("a") == "A"


def test_popping_the_front_stays_cheap_however_many_left_before():
    table = RecentlyUsed(200_000)
    for number in range(200_000):
        table.add(number, number, float(number))
    for cutoff in range(1000, 200_001, 1000):
        assert len(list(table.pop_unused_since(float(cutoff)))) == 1000
    assert len(table) == 0


def test_a_full_table_says_so_and_gives_up_its_oldest():
    table = RecentlyUsed(2)
    table.add("a", 1, 0.0)
    table.add("b", 2, 1.0)
    assert table.full and table.pop_oldest() == ("a", 1) and not table.full
    assert table.pop("b") == 2 and table.pop("b") is None and len(table) == 0
