"""From cells to medians, ratios, Markdown tables and a chart. Pure but for the chart
(matplotlib, imported only when drawing) and the README splice."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from bench import stats

METRICS = {  # name -> (test, how to read it from the test's result)
    "tcp1_gbps": ("tcp1", lambda r: r["bps"] / 1e9),
    "tcp4_gbps": ("tcp4", lambda r: r["bps"] / 1e9),
    "udp_kpps": ("udp", lambda r: r["pps"] / 1e3),
    "udp_offered_kpps": ("udp", lambda r: r["offered_pps"] / 1e3),
    "udp_loss": ("udp", lambda r: r["loss_percent"]),
    "rtt_idle_ms": ("tcp1", lambda r: r.get("ping_idle", {}).get("rtt_ms")),
    "rtt_load_ms": ("tcp1", lambda r: r.get("ping_load", {}).get("rtt_ms")),
    "tcp1_retransmits": ("tcp1", lambda r: r["retransmits"]),
    "tcp1_host_busy": ("tcp1", lambda r: r.get("host_busy")),
}
RATIO_METRICS = ("tcp1_gbps", "tcp4_gbps", "udp_kpps")


def _value(cell: dict, metric: str):
    test, read = METRICS[metric]
    return read(cell[test]) if test in cell else None


def _cpu(cell: dict, test: str, side: str) -> float | None:
    return cell.get(test, {}).get("processes", {}).get(side, {}).get("cpu")


def summarize(cells: list[dict], rows: list[str], wires: list[str],
              baseline: str | None = "kernel-vxlan") -> list[dict]:
    """One summary per (wire, row), in the order given: medians over repetitions, each
    throughput's ratio to ``baseline`` (paired by repetition), CPU of the tunnel's
    processes during tcp1 and udp, the largest memory figures, fragments seen, errors."""
    by = defaultdict(list)
    for cell in cells:
        by[cell["wire"], cell["row"]].append(cell)
    summary = []
    for wire in wires:
        for row in rows:
            mine = by.get((wire, row), [])
            if not mine:
                continue
            s: dict = {"wire": wire, "row": row, "repetitions": len(mine)}
            for metric in METRICS:
                s[metric] = _round(stats.median(_value(c, metric) for c in mine))
            base = {c["rep"]: c for c in by.get((wire, baseline), [])} if baseline else {}
            for metric in RATIO_METRICS:
                s[metric + "_ratio"] = _round(stats.paired_ratio(
                    {c["rep"]: _value(c, metric) for c in mine},
                    {rep: _value(c, metric) for rep, c in base.items()}), 3)
            sides = sorted({side for c in mine for test in ("tcp1", "tcp4", "udp")
                            for side in c.get(test, {}).get("processes", {})}
                           | {side for c in mine for side in c.get("memory", {})})
            s["cpu"] = {test: {side: _round(stats.median(_cpu(c, test, side) for c in mine), 0)
                               for side in sides} for test in ("tcp1", "udp")}
            s["memory_kib"] = {side: {key: max((c["memory"][side].get(key, 0) for c in mine
                                                if side in c.get("memory", {})), default=None)
                                      for key in ("VmRSS", "VmHWM")}
                               for side in sides if any(side in c.get("memory", {}) for c in mine)}
            s["fragments"] = sum(stats.fragmented(c.get("fragments", {})) for c in mine)
            s["fragment_detail"] = _merge_fragments(c.get("fragments", {}) for c in mine)
            s["errors"] = [f"rep {c['rep']}: {e}" for c in mine for e in c.get("errors", [])]
            summary.append(s)
    return summary


def _merge_fragments(deltas) -> dict:
    total: dict = defaultdict(lambda: defaultdict(int))
    for delta in deltas:
        for ns, counters in delta.items():
            for counter, n in counters.items():
                total[ns][counter] += n
    return {ns: dict(counters) for ns, counters in total.items()}


def _round(value, digits: int = 2):
    if value is None:
        return None
    return round(value, digits) if digits else round(value)


def compare(cells: list[dict], pairs: list[tuple[str, str]], wires: list[str]) -> list[dict]:
    """For each (row A, row B) and wire: B / A per throughput, paired by repetition."""
    by = {(c["wire"], c["row"], c["rep"]): c for c in cells}
    out = []
    for a, b in pairs:
        for wire in wires:
            entry = {"wire": wire, "a": a, "b": b}
            reps = sorted({rep for (w, r, rep) in by if w == wire and r == a})
            for metric in RATIO_METRICS:
                values_b = {rep: _value(by[wire, b, rep], metric) for rep in reps
                            if (wire, b, rep) in by}
                values_a = {rep: _value(by[wire, a, rep], metric) for rep in reps}
                entry[metric + "_b_over_a"] = _round(stats.paired_ratio(values_b, values_a), 3)
            out.append(entry)
    return out


# -- Markdown -------------------------------------------------------------------------------

def _num(value, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.3f}×" if value < 0.995 else f"{value:.2f}×"


def _cpu_cell(cpu: dict) -> str:
    values = [v for v in cpu.values() if v is not None]
    return " / ".join(f"{v:.0f}" for v in values) if values else "—"


def _memory_cell(memory: dict) -> str:
    rss = [m["VmRSS"] for m in memory.values() if m.get("VmRSS")]
    hwm = [m["VmHWM"] for m in memory.values() if m.get("VmHWM")]
    if not rss:
        return "—"
    return f"{max(rss) / 1024:.1f} / {max(hwm) / 1024:.1f}"


def _fragments_cell(s: dict) -> str:
    if s["fragments"]:
        where = ", ".join(f"{ns} {'/'.join(f'{k} {v}' for k, v in c.items())}"
                          for ns, c in s["fragment_detail"].items())
        return f"**{s['fragments']} ({where})**"
    return "0"


def markdown_table(summary: list[dict], wire: str, titles: dict[str, str],
                   tests: tuple[str, ...] = ("tcp1", "tcp4", "udp")) -> str:
    """The table of one wire: one line per row."""
    head = ["row"]
    if "tcp1" in tests:
        head += ["1 TCP Gbit/s", "× kernel VXLAN"]
    if "tcp4" in tests:
        head += ["4 TCP Gbit/s", "×"]
    if "udp" in tests:
        head += ["64 B UDP delivered kpps (loss)", "×", "offered kpps"]
    if "tcp1" in tests:
        head += ["ping idle / loaded ms"]
    head += ["CPU % of a core, M1 / M2 (1 TCP)"]
    if "udp" in tests:
        head += ["(64 B UDP)"]
    head += ["RSS / HWM MiB", "outer frags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        if s["wire"] != wire:
            continue
        cells = [titles.get(s["row"], s["row"])]
        if "tcp1" in tests:
            cells += [_num(s["tcp1_gbps"]), _ratio(s["tcp1_gbps_ratio"])]
        if "tcp4" in tests:
            cells += [_num(s["tcp4_gbps"]), _ratio(s["tcp4_gbps_ratio"])]
        if "udp" in tests:
            cells += [f"{_num(s['udp_kpps'], '{:.0f}')} ({_num(s['udp_loss'], '{:.0f}')} %)",
                      _ratio(s["udp_kpps_ratio"]), _num(s["udp_offered_kpps"], "{:.0f}")]
        if "tcp1" in tests:
            cells += [f"{_num(s['rtt_idle_ms'])} / {_num(s['rtt_load_ms'])}"]
        cells += [_cpu_cell(s["cpu"]["tcp1"])]
        if "udp" in tests:
            cells += [_cpu_cell(s["cpu"]["udp"])]
        cells += [_memory_cell(s["memory_kib"]), _fragments_cell(s)]
        if s["errors"]:
            cells[0] += f" ⚠ {len(s['errors'])} failed test(s)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_compare(comparison: list[dict], labels: tuple[str, str]) -> str:
    a, b = labels
    lines = [f"| wire | row | 1 TCP {b}/{a} | 4 TCP {b}/{a} | 64 B UDP {b}/{a} |",
             "|---|---|---|---|---|"]
    for c in comparison:
        lines.append(f"| {c['wire']} | {c['a'].split('@')[0]} | "
                     + " | ".join(_ratio(c[m + "_b_over_a"]) for m in RATIO_METRICS) + " |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """Every wire's table, the comparison (if any), errors and fragment warnings."""
    meta = results["meta"]
    titles = {row["id"]: row["title"] for row in meta["rows"]}
    tests = tuple(meta["settings"]["tests"])
    parts = []
    for wire in meta["wires"]:
        parts.append(f"**{meta['wire_titles'][wire]}**\n\n"
                     + markdown_table(results["summary"], wire, titles, tests))
    if results.get("compare"):
        parts.append("**Build B against build A, paired by repetition**\n\n"
                     + markdown_compare(results["compare"], tuple(meta["labels"])))
    problems = [f"- {s['wire']} / {s['row']}: {e}" for s in results["summary"] for e in s["errors"]]
    problems += [f"- {r['id']}: did not start: {r['failed']}" for r in meta["rows"] if r.get("failed")]
    if problems:
        parts.append("Problems:\n\n" + "\n".join(problems))
    return "\n\n".join(parts) + "\n"


def markdown_scale(results: dict) -> str:
    """The bench-scale table: 1-stream TCP per (mode, tunnel count), with the ratio."""
    titles = {row["id"]: row["title"] for row in results["meta"]["rows"]}
    lines = ["| wire | row | 1 TCP Gbit/s | × kernel VXLAN | CPU % M1 / M2 | RSS / HWM MiB |",
             "|---|---|---|---|---|---|"]
    for s in results["summary"]:
        lines.append(f"| {s['wire']} | {titles.get(s['row'], s['row'])} | {_num(s['tcp1_gbps'])} | "
                     f"{_ratio(s['tcp1_gbps_ratio'])} | {_cpu_cell(s['cpu']['tcp1'])} | "
                     f"{_memory_cell(s['memory_kib'])} |")
    failed = [f"- {r['id']}: did not start: {r['failed']}" for r in results["meta"]["rows"]
              if r.get("failed")]
    return "\n".join(lines) + "\n" + ("\nProblems:\n\n" + "\n".join(failed) + "\n" if failed else "")


def splice(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what stands between the lines ``begin`` and ``end`` replaced."""
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"no {begin} ... {end} in the text")
    return pattern.sub(lambda _m: f"{begin}\n{body}{end}", text, count=1)


def update_readme(readme: Path, marker: str, body: str) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    readme.write_text(splice(readme.read_text(), begin, end, body))


# -- the chart ---------------------------------------------------------------------------------

def chart(results: dict, path: Path) -> None:
    """Single-stream TCP and 64-byte UDP delivered, per row, one bar per wire; log scale
    (the kernel rows are ten times the userspace ones); the ratio to kernel VXLAN on top
    of the headline wire's bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    titles = {row["id"]: row["title"] for row in meta["rows"]}
    wires = meta["wires"]
    rows = [r["id"] for r in meta["rows"] if not r.get("failed")]
    summary = {(s["wire"], s["row"]): s for s in results["summary"]}
    panels = [(m, label) for m, label, test in (
        ("tcp1_gbps", "1 TCP stream, Gbit/s", "tcp1"),
        ("udp_kpps", "64-byte UDP delivered, k packets/s", "udp")) if test in meta["settings"]["tests"]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.0 * len(rows) + 2), 4.0 * len(panels)),
                             squeeze=False)
    width = 0.8 / max(1, len(wires))
    colours = {"veth": "#9ecae1", "nic": "#08519c", "bare": "#fd8d3c"}
    headline = meta.get("headline", "nic")
    for ax, (metric, label) in zip(axes[:, 0], panels):
        lowest = min((s[metric] for s in summary.values() if s.get(metric)), default=1.0)
        floor = lowest / 3
        for i, wire in enumerate(wires):
            xs, ys, ratios = [], [], []
            for j, row in enumerate(rows):
                s = summary.get((wire, row))
                if s and s.get(metric):
                    xs.append(j + (i - (len(wires) - 1) / 2) * width)
                    ys.append(s[metric])
                    ratios.append(s.get(metric + "_ratio"))
            bars = ax.bar(xs, [y - floor for y in ys], width, bottom=floor, label=wire,
                          color=colours.get(wire))
            if wire == headline:
                for bar, y, ratio in zip(bars, ys, ratios):
                    if ratio is not None:
                        ax.annotate(f"{ratio:.2f}×", (bar.get_x() + bar.get_width() / 2, y),
                                    ha="center", va="bottom", fontsize=7,
                                    xytext=(0, 2), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel(label + " (log)")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([titles.get(r, r) for r in rows], rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", title="wire", title_fontsize=7)
    fig.suptitle(f"hostA → hostB, medians of {meta['settings']['repetitions']} interleaved "
                 f"repetitions, {meta['date']}; labels: ratio to kernel VXLAN on the "
                 f"{headline} wire", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
