"""No leak under churn: 20 000 short TCP connections and 20 000 UDP clients through a
forwards-only router (in four rounds, after a warm-up) leave the forwarder process with
the descriptors it had, and its memory where the first round left it.

The full 100 000 of each is ``make churn-forward`` (scripts/churn_forward.py): the same
churn in ten rounds of 10 000, about a minute, too long for every run of the suite.
"""

import pytest

from tests.netns import churn

pytestmark = pytest.mark.netns

ROUNDS, SIZE, WARM_UP = 4, 5_000, 5_000
# A leak of 50 bytes per connection or session would add 500 KiB every round.
RSS_MARGIN_KIB = 256


def test_twenty_thousand_connections_and_udp_clients_leave_nothing_behind(netns, tmp_path):
    result = churn.run(netns("fwd-churn"), tmp_path, ROUNDS, SIZE, WARM_UP)
    count = ROUNDS * SIZE
    assert result["tcp"]["done"] == count and not result["tcp"]["failed"], result["tcp"]
    assert result["udp"]["done"] == count and not result["udp"]["failed"], result["udp"]
    tcp, udp = result["forwards"]["tcp"], result["forwards"]["udp"]
    assert tcp["connections_total"] == count + WARM_UP and not any(tcp["refused"].values())
    assert udp["sessions_total"] == count + WARM_UP and not any(udp["refused"].values())
    assert udp["ended"]["idle_timeout"] == count + WARM_UP
    assert all(held["descriptors"] == result["before"]["descriptors"]
               for held in result["rounds"]), result
    # A leak grows every round; the allocator taking one more arena is one step. The
    # median round's growth tells them apart (4 rounds: 3 steps, one of them allowed).
    rss = [held["rss_kib"] for held in result["rounds"]]
    growth = sorted(after - before for before, after in zip(rss, rss[1:]))
    assert growth[len(growth) // 2] < RSS_MARGIN_KIB, result
