"""The harness's pure parts: iperf3, ping and /proc parsing, medians and paired ratios."""

import json

import pytest

from bench import stats


def iperf3_tcp(bps: float, retransmits: int = 7) -> str:
    return json.dumps({"end": {
        "sum_sent": {"bits_per_second": bps * 1.01, "retransmits": retransmits, "seconds": 2.0},
        "sum_received": {"bits_per_second": bps, "seconds": 2.01}}})


def iperf3_udp(sent: int, highest: int, lost: int, seconds: float = 2.0) -> str:
    """What iperf3 3.12 prints for a UDP client: the server's view is sum_received, whose
    'packets' is the highest sequence number seen and 'lost_packets' the gaps."""
    return json.dumps({"end": {
        "sum": {"packets": highest, "lost_packets": lost},
        "sum_sent": {"packets": sent, "seconds": seconds, "lost_packets": 0},
        "sum_received": {"packets": highest, "lost_packets": lost, "seconds": seconds + 0.2}}})


def test_tcp_result_takes_what_the_receiver_got():
    result = stats.tcp_result(iperf3_tcp(1.5e9))
    assert result == {"bps": 1.5e9, "retransmits": 7, "seconds": 2.01}


def test_iperf3_error_is_an_error():
    with pytest.raises(ValueError, match="unable to connect"):
        stats.tcp_result(json.dumps({"error": "unable to connect to server"}))
    with pytest.raises(ValueError, match="busy"):
        stats.udp_result(json.dumps({"error": "the server is busy"}))


def test_udp_counts_the_server_received_packets_not_the_offered_ones():
    result = stats.udp_result(iperf3_udp(sent=300_000, highest=299_000, lost=200_000))
    assert result == {"sent": 300_000, "sent_seconds": 2.0, "received": 99_000,
                      "received_seconds": 2.2}
    total = stats.udp_total([result])
    assert total["pps"] == pytest.approx(45_000)           # 99 000 over the server's 2.2 s
    assert total["offered_pps"] == pytest.approx(150_000)  # 300 000 over the client's 2 s
    assert total["loss_percent"] == pytest.approx(67.0)


def test_udp_rates_of_several_clients_add_up():
    a = stats.udp_result(iperf3_udp(sent=100, highest=100, lost=0, seconds=1.0))
    b = stats.udp_result(iperf3_udp(sent=300, highest=300, lost=100, seconds=1.0))
    total = stats.udp_total([a, b])
    assert total["pps"] == pytest.approx(300 / 1.2)
    assert total["offered_pps"] == pytest.approx(400)
    assert total["loss_percent"] == pytest.approx(25.0)


PING = """PING 10.2.3.1 (10.2.3.1) from 10.1.3.1 : 56(84) bytes of data.
64 bytes from 10.2.3.1: icmp_seq=1 ttl=61 time=0.412 ms
64 bytes from 10.2.3.1: icmp_seq=2 ttl=61 time=9.10 ms
64 bytes from 10.2.3.1: icmp_seq=4 ttl=61 time=1.25 ms

--- 10.2.3.1 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 302ms
rtt min/avg/max/mdev = 0.412/3.587/9.100/3.9 ms
"""


def test_ping_median_percentile_and_loss():
    result = stats.ping_result(PING)
    assert result == {"rtt_ms": 1.25, "rtt_p90_ms": 9.10, "sent": 4, "received": 3}


def test_ping_with_no_answer():
    out = "--- x ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss\n"
    assert stats.ping_result(out) == {"rtt_ms": None, "rtt_p90_ms": None, "sent": 3, "received": 0}


def test_proc_stat_fields_are_counted_after_the_command_name():
    # A command name with spaces and a parenthesis must not shift the fields.
    stat = "4242 (tunnel (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 1 0"
    assert stats.proc_cpu(stat) == (1234, 567)
    assert stats.cpu_percent(150, 2.0, 100) == pytest.approx(75.0)


def test_proc_memory_and_host_busy():
    status = "Name:\ttunnelrouter\nVmHWM:\t   61516 kB\nVmRSS:\t   56156 kB\nThreads:\t1\n"
    assert stats.proc_memory(status) == {"VmHWM": 61516, "VmRSS": 56156}
    busy, total = stats.host_busy("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    assert (busy, total) == (150, 1000)


def test_median_ignores_missing_values():
    assert stats.median([3.0, None, 1.0, 2.0]) == 2.0
    assert stats.median([None]) is None


def test_ratio_is_paired_by_repetition():
    # The machine got twice as slow in repetition 1: paired ratios stay 0.1, while a
    # ratio of medians would not.
    rows = {0: 1.0, 1: 0.5, 2: 1.1}
    baseline = {0: 10.0, 1: 5.0, 2: 11.0}
    assert stats.paired_ratio(rows, baseline) == pytest.approx(0.1)
    assert stats.paired_ratio({0: 1.0, 1: None}, {0: 4.0, 1: 5.0}) == pytest.approx(0.25)
    assert stats.paired_ratio({0: 1.0}, {0: 0.0}) is None   # a failed baseline gives no ratio
    assert stats.paired_ratio({0: 1.0}, {}) is None


def test_fragment_counters_only_report_increases():
    before = {"m1": {"FragCreates": 5, "ReasmReqds": 0, "FragOKs": 1},
              "wan1": {"FragCreates": 0, "ReasmReqds": 0}}
    after = {"m1": {"FragCreates": 9, "ReasmReqds": 0, "FragOKs": 3},
             "wan1": {"FragCreates": 0, "ReasmReqds": 0}}
    delta = stats.fragment_delta(before, after)
    assert delta == {"m1": {"FragCreates": 4, "FragOKs": 2}}
    assert stats.fragmented(delta) == 4
    assert stats.fragmented({}) == 0
    # A fragment made on M1 and reassembled on M2 is one fragment, not two.
    assert stats.fragmented({"m1": {"FragCreates": 6}, "m2": {"ReasmReqds": 6}}) == 6
    assert stats.fragmented({"m2": {"ReasmReqds": 2}}) == 2
