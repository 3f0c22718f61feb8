"""Summaries, comparisons and the Markdown the harness writes, from made-up cells."""

import pytest

from bench import report


def cell(row, rep, gbps, kpps=50.0, wire="nic", cpu=None, frags=None, errors=()):
    processes = {"m1": {"cpu": cpu}, "m2": {"cpu": cpu}} if cpu is not None else {}
    return {
        "row": row, "wire": wire, "rep": rep, "errors": list(errors),
        "tcp1": {"bps": gbps * 1e9, "retransmits": 0, "processes": processes, "host_busy": 150,
                 "ping_idle": {"rtt_ms": 0.1}, "ping_load": {"rtt_ms": 2.0}},
        "tcp4": {"bps": gbps * 2e9, "retransmits": 0, "processes": processes},
        "udp": {"pps": kpps * 1e3, "offered_pps": 200e3, "loss_percent": 75.0,
                "processes": processes},
        "fragments": frags or {},
        "memory": {"m1": {"VmRSS": 51200, "VmHWM": 61440}} if cpu is not None else {},
    }


CELLS = [
    cell("kernel-vxlan", 0, 6.0, 100), cell("tr-gre", 0, 0.6, 50, cpu=80),
    cell("kernel-vxlan", 1, 3.0, 100), cell("tr-gre", 1, 0.3, 40, cpu=70),
    cell("kernel-vxlan", 2, 6.0, 100), cell("tr-gre", 2, 0.65, 60, cpu=90,
                                            frags={"m1": {"FragCreates": 3}}),
]


def test_summary_medians_and_paired_ratios():
    (base, gre) = report.summarize(CELLS, ["kernel-vxlan", "tr-gre"], ["nic"])
    assert base["tcp1_gbps"] == 6.0 and base["tcp1_gbps_ratio"] == 1.0
    assert gre["repetitions"] == 3
    assert gre["tcp1_gbps"] == 0.6
    assert gre["tcp1_gbps_ratio"] == pytest.approx(0.1)     # 0.1, 0.1, 0.108: median 0.1
    assert gre["tcp4_gbps"] == 1.2
    assert gre["udp_kpps"] == 50 and gre["udp_kpps_ratio"] == pytest.approx(0.5)
    assert gre["cpu"]["tcp1"] == {"m1": 80, "m2": 80}
    assert gre["memory_kib"] == {"m1": {"VmRSS": 51200, "VmHWM": 61440}}
    assert gre["fragments"] == 3
    assert gre["fragment_detail"] == {"m1": {"FragCreates": 3}}


def test_summary_without_the_baseline_has_no_ratios():
    (gre,) = report.summarize(CELLS, ["tr-gre"], ["nic"], baseline=None)
    assert gre["tcp1_gbps_ratio"] is None


def test_a_failed_test_leaves_its_figures_out():
    cells = [cell("kernel-vxlan", 0, 6.0), cell("tr-gre", 0, 0.6, cpu=80)]
    del cells[1]["udp"]
    cells[1]["errors"] = ["udp: iperf3 did not finish in 22 s"]
    gre = report.summarize(cells, ["kernel-vxlan", "tr-gre"], ["nic"])[1]
    assert gre["udp_kpps"] is None and gre["udp_kpps_ratio"] is None
    assert gre["errors"] == ["rep 0: udp: iperf3 did not finish in 22 s"]


def test_compare_two_builds_pairs_repetitions():
    cells = [cell("tr-gre@old", 0, 0.5), cell("tr-gre@new", 0, 1.0),
             cell("tr-gre@old", 1, 0.25), cell("tr-gre@new", 1, 0.5)]
    (entry,) = report.compare(cells, [("tr-gre@old", "tr-gre@new")], ["nic"])
    assert entry["tcp1_gbps_b_over_a"] == pytest.approx(2.0)
    table = report.markdown_compare([entry], ("old", "new"))
    assert "| nic | tr-gre | 2.00× |" in table


def test_markdown_table_shows_every_figure_and_flags_fragments():
    summary = report.summarize(CELLS, ["kernel-vxlan", "tr-gre"], ["nic"])
    table = report.markdown_table(summary, "nic", {"tr-gre": "tunnelrouter gre"})
    lines = table.splitlines()
    assert lines[0].startswith("| row | 1 TCP Gbit/s | × kernel VXLAN |")
    assert len(lines) == 4 and all(l.count("|") == lines[0].count("|") for l in lines)
    assert lines[2].startswith("| kernel-vxlan | 6.00 | 1.00× | 12.00 | 1.00× | 100 (75 %)")
    gre = lines[3]
    assert gre.startswith("| tunnelrouter gre | 0.60 | 0.100× | 1.20 | 0.100× | 50 (75 %) | 0.500×")
    assert "| 0.10 / 2.00 |" in gre          # ping idle / under load
    assert "| 80 / 80 |" in gre              # CPU of M1 and M2
    assert "| 50.0 / 60.0 |" in gre          # RSS / HWM in MiB
    assert "**3 (m1 FragCreates 3)**" in gre


def test_markdown_table_of_some_tests_only():
    summary = report.summarize(CELLS, ["kernel-vxlan"], ["nic"])
    table = report.markdown_table(summary, "nic", {}, tests=("tcp1",))
    assert "UDP" not in table and "4 TCP" not in table


def test_splice_replaces_between_markers_only():
    text = "intro\n<!-- x:begin -->\nold\n<!-- x:end -->\nrest\n"
    assert report.splice(text, "<!-- x:begin -->", "<!-- x:end -->", "new\n") == \
        "intro\n<!-- x:begin -->\nnew\n<!-- x:end -->\nrest\n"
    with pytest.raises(ValueError):
        report.splice("no markers", "<!-- x:begin -->", "<!-- x:end -->", "new\n")
