"""``python -m bench``: tunnels side by side in a namespace lab (``make bench``).

Every row is set up once, in its own address slot, and stays up; then, per repetition,
per wire, every row is measured in turn (the order rotated each repetition), so that
each row's ratio to kernel VXLAN comes from measurements made back to back. See the
README section "Benchmarks: tunnels side by side" and ``--help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report, stats
from bench.lab import Interrupted, Lab, signals_raise
from bench.measure import TESTS, Meter, Settings
from bench.rows import (BASELINE, DEFAULT_ROWS, ROW_KINDS, Row, ScaleTunnelrouter, make_rows)
from bench.topology import WIRE_TITLES, WIRES, Slot, Topology

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_TUNNELROUTER = REPO / ".venv" / "bin" / "tunnelrouter"
QUICK = {"wires": ["nic"], "repetitions": 2, "seconds": 1.0}
FULL = {"wires": ["veth", "nic", "bare"], "repetitions": 3, "seconds": 2.0}
SCALE = {"wires": ["nic"], "repetitions": 3, "seconds": 2.0, "counts": [1, 10, 100, 1000],
         "modes": ["gre", "vxlan"]}
TOOLS = ("iperf3", "ethtool", "openvpn", "tincd", "fastd", "socat")


def split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", help=f"comma-separated, from: {', '.join(ROW_KINDS)} "
                   f"(default: {','.join(DEFAULT_ROWS)}; {BASELINE} is always added)")
    p.add_argument("--wires", help=f"comma-separated, from: {', '.join(WIRES)} (default: all)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; quick 2)")
    p.add_argument("--seconds", type=float, help="length of each test (default 2; quick 1)")
    p.add_argument("--tests", help=f"comma-separated, from: {', '.join(TESTS)} (default: all)")
    p.add_argument("--udp-clients", type=int, default=1, help="iperf3 UDP senders at once (1)")
    p.add_argument("--tunnelrouter", default=str(DEFAULT_TUNNELROUTER),
                   help="the tunnelrouter command (default: this tree's .venv/bin/tunnelrouter)")
    p.add_argument("--tunnelrouter-b", help="a second tunnelrouter: every tr-* row runs with both, "
                   "interleaved, and the results compare B with A")
    p.add_argument("--label-a", default="A", help="name of --tunnelrouter in the results")
    p.add_argument("--label-b", default="B", help="name of --tunnelrouter-b in the results")
    p.add_argument("--quick", action="store_true",
                   help="NIC-like wire only, 2 repetitions, 1-second tests (every row)")
    p.add_argument("--scale", action="store_true",
                   help="bench-scale: 1 TCP stream through a router with 1, 10, 100, 1000 tunnels")
    p.add_argument("--scale-counts", help="tunnel counts for --scale (default 1,10,100,1000)")
    p.add_argument("--scale-modes", help="modes for --scale: gre (distinct keys), vxlan (distinct "
                   "VNIs) (default both)")
    p.add_argument("--out", help="results path without suffix (.json, .png, .md are written); "
                   "default bench/results/latest (the full default run), bench/results/scale "
                   "(--scale), else bench/results/run (git-ignored)")
    p.add_argument("--update-readme", choices=("auto", "yes", "no"), default="auto",
                   help="put the tables into README.md (auto: for the default full run and scale)")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs of the tunnels")
    return p.parse_args(argv)


def tool_versions() -> dict[str, str]:
    commands = {"iperf3": ["iperf3", "--version"], "openvpn": ["openvpn", "--version"],
                "tincd": ["tincd", "--version"], "fastd": ["fastd", "--version"],
                "socat": ["socat", "-V"]}
    versions = {}
    for name, cmd in commands.items():
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            text = (out.stdout or out.stderr).strip().splitlines()
            line = next((l for l in text if "version" in l.lower()), text[0])
            versions[name] = line.strip()
        except (OSError, IndexError, StopIteration, subprocess.TimeoutExpired):
            versions[name] = "missing"
    return versions


def build_info(binary: str) -> dict:
    """Which tree a tunnelrouter command runs (its venv's import of ``tunnelrouter``),
    and that tree's commit: so before/after results say what they measured."""
    info = {"command": binary}
    path = Path(shutil.which(binary) or binary).resolve()
    try:
        where = subprocess.run([str(path.parent / "python"), "-c",
                                "import tunnelrouter; print(tunnelrouter.__file__)"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
        if where:
            tree = Path(where).parent.parent
            info["tree"] = str(tree)
            head = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
            if head:
                info["commit"] = head
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def plan(args: argparse.Namespace) -> dict:
    """What to run, from the options; ``default`` says whether it is the committed run."""
    base = SCALE if args.scale else QUICK if args.quick else FULL
    rows = split(args.rows) or list(DEFAULT_ROWS)
    unknown = [r for r in rows if r not in ROW_KINDS]
    wires = split(args.wires) or base["wires"]
    unknown += [w for w in wires if w not in WIRES]
    tests = split(args.tests) or list(TESTS)
    unknown += [t for t in tests if t not in TESTS]
    if unknown:
        sys.exit(f"unknown rows, wires or tests: {', '.join(unknown)}")
    if BASELINE not in rows:
        rows.insert(0, BASELINE)
    builds = {args.label_a: args.tunnelrouter}
    if args.tunnelrouter_b:
        builds[args.label_b] = args.tunnelrouter_b
    default = not any((args.rows, args.wires, args.reps, args.seconds, args.tests, args.quick,
                       args.tunnelrouter_b, args.scale_counts, args.scale_modes,
                       args.udp_clients != 1, args.tunnelrouter != str(DEFAULT_TUNNELROUTER)))
    name = "scale" if args.scale else "latest" if default else "run"
    return {"rows": rows, "wires": wires, "tests": ["tcp1"] if args.scale else tests,
            "repetitions": args.reps or base["repetitions"],
            "seconds": args.seconds or base["seconds"], "builds": builds,
            "default": default, "out": Path(args.out) if args.out else RESULTS / name,
            "counts": [int(c) for c in split(args.scale_counts) or SCALE["counts"]],
            "modes": split(args.scale_modes) or SCALE["modes"], "udp_clients": args.udp_clients}


def scale_rows(p: dict) -> list[Row]:
    rows: list[Row] = make_rows([BASELINE], p["builds"])
    # Smallest first: a router's memory grows with every device in its namespace, its own
    # or not (the link dump at its start), so the small ones start before the big ones.
    for count in sorted(p["counts"]):
        for mode in p["modes"]:
            for label, binary in p["builds"].items():
                name = f"tr-{mode}-x{count}" + (f"@{label}" if len(p["builds"]) > 1 else "")
                what = "keys" if mode == "gre" else "VNIs"
                title = f"tunnelrouter {mode}, {count} tunnel{'s' if count > 1 else ''} ({what})"
                if len(p["builds"]) > 1:
                    title += f" [{label}]"
                rows.append(ScaleTunnelrouter(name, title, 4, mode=mode, binary=binary, count=count))
    for k, row in enumerate(rows, start=1):
        row.slot = Slot(k, row.family)
    return rows


def say(text: str) -> None:
    print(text, flush=True)


def start_rows(topo: Topology, rows: list[Row], workdir: Path) -> list[Row]:
    """Start every row and prove it with a ping; a row that fails is reported, not fatal."""
    ready = []
    for row in rows:
        started = time.monotonic()
        try:
            topo.add_slot(row.slot)
            row.start(topo, workdir)
            row.mtu = topo.device_mtu("m1", row.device)
            topo.route_hosts(row.slot, row.mtu)
            wait_for_ping(topo, row)
        except Exception as error:  # noqa: BLE001 - any failure of one tunnel is reported
            row.failed = f"{type(error).__name__}: {error}"
            say(f"  {row.id:<22} FAILED to start: {row.failed}")
            logs = sorted(workdir.glob(f"{row.id.replace('@', '-')}-m*.log"))
            for log in logs:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                say("    " + log.name + ": " + " | ".join(tail))
            continue
        say(f"  {row.id:<22} up: {row.device} MTU {row.mtu} "
            f"({time.monotonic() - started:.1f} s)")
        ready.append(row)
    return ready


def wait_for_ping(topo: Topology, row: Row, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row.check_running()
        if topo["hosta"].run("ping", "-n", "-c", "1", "-W", "1", "-I", row.slot.src, row.slot.dst,
                             check=False).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ping answer from {row.slot.dst} through it in {timeout:g} s")
        time.sleep(0.2)


def progress(cell: dict) -> str:
    parts = [f"rep {cell['rep'] + 1} {cell['wire']:<4} {cell['row']:<22}"]
    if "tcp1" in cell:
        t = cell["tcp1"]
        cpu = "/".join(f"{v['cpu']:.0f}" for v in t["processes"].values())
        parts.append(f"1 TCP {t['bps'] / 1e9:6.2f} Gbit/s" + (f" cpu {cpu} %" if cpu else ""))
        if t.get("ping_load", {}).get("rtt_ms") is not None:
            parts.append(f"ping {t['ping_load']['rtt_ms']:.2f} ms")
    if "tcp4" in cell:
        parts.append(f"4 TCP {cell['tcp4']['bps'] / 1e9:6.2f}")
    if "udp" in cell:
        u = cell["udp"]
        cpu = "/".join(f"{v['cpu']:.0f}" for v in u["processes"].values())
        parts.append(f"UDP {u['pps'] / 1e3:5.0f} of {u['offered_pps'] / 1e3:.0f} kpps"
                     + (f" cpu {cpu} %" if cpu else "") + f" host {u['host_busy']:.0f} %")
    if stats.fragmented(cell["fragments"]):
        parts.append(f"OUTER FRAGMENTS {stats.fragmented(cell['fragments'])}: {cell['fragments']}")
    elif cell["fragments"]:
        parts.append(f"(IP counters: {cell['fragments']})")
    if cell["errors"]:
        parts.append("ERRORS: " + "; ".join(cell["errors"]))
    return "  ".join(parts)


def measure(p: dict, rows: list[Row], workdir: Path) -> dict:
    settings = Settings(seconds=p["seconds"], tests=tuple(p["tests"]), udp_clients=p["udp_clients"])
    started = time.monotonic()
    with Lab() as lab:
        say(f"namespaces {lab.tag}*; tunnel configs and logs in {workdir}")
        topo = Topology(lab, workdir)
        wire_states = {}
        say("starting the rows")
        ready = start_rows(topo, rows, workdir)
        meter = Meter(topo, settings)
        meter.start_servers()
        cells = []
        total = p["repetitions"] * len(p["wires"]) * len(ready)
        say(f"measuring: {total} cells of {', '.join(p['tests'])}, {p['seconds']:g} s each test")
        for rep in range(p["repetitions"]):
            order = ready[rep % len(ready):] + ready[:rep % len(ready)] if ready else []
            for wire in p["wires"]:
                topo.set_wire(wire)
                wire_states[wire] = topo.wire_state()
                time.sleep(0.3)
                for row in order:
                    cell = meter.cell(row, wire, rep)
                    cells.append(cell)
                    say(f"  [{len(cells)}/{total}] " + progress(cell))
    return {"cells": cells, "wire_states": wire_states, "seconds": time.monotonic() - started}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces)")
    p = plan(args)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    for label, binary in p["builds"].items():
        if not (shutil.which(binary) or Path(binary).exists()):
            missing.append(f"{binary} (tunnelrouter {label})")
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (make bench installs the Debian packages)")
    rows = scale_rows(p) if args.scale else make_rows(p["rows"], p["builds"])
    signals_raise()
    workdir = Path(tempfile.mkdtemp(prefix="trt-bench-"))
    say(f"{'bench-scale' if args.scale else 'bench'}: rows {', '.join(r.id for r in rows)}; "
        f"wires {', '.join(p['wires'])}; {p['repetitions']} repetitions of {p['seconds']:g} s tests")
    try:
        run = measure(p, rows, workdir)
    except (KeyboardInterrupt, Interrupted) as stop:
        say(f"stopped ({str(stop) or 'Ctrl-C'}); the namespaces are removed")
        return 130
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results = assemble(p, args, rows, run)
    write(results, p, args)
    return 0


def assemble(p: dict, args, rows: list[Row], run: dict) -> dict:
    ids = [r.id for r in rows]
    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "kind": "scale" if args.scale else "quick" if args.quick else "full" if p["default"] else "custom",
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "tools": tool_versions(),
        "builds": {label: build_info(binary) for label, binary in p["builds"].items()},
        "labels": list(p["builds"]),
        "settings": {"repetitions": p["repetitions"], "seconds": p["seconds"], "tests": p["tests"],
                     "udp_clients": args.udp_clients, "udp_size": 64, "tcp_streams": 4,
                     "ping_interval": 0.1},
        "wires": p["wires"], "wire_titles": {w: WIRE_TITLES[w] for w in p["wires"]},
        "wire_offloads_m1_wan": run["wire_states"], "headline": "nic",
        "rows": [{"id": r.id, "title": r.title, "device": r.device, "mtu": getattr(r, "mtu", None),
                  "command": r.command, **({"failed": r.failed} if getattr(r, "failed", None) else {})}
                 for r in rows],
        "runtime_seconds": round(run["seconds"]),
    }
    results = {"meta": meta, "summary": report.summarize(run["cells"], ids, p["wires"], BASELINE),
               "cells": run["cells"]}
    if len(p["builds"]) == 2:
        a, b = p["builds"]
        pairs = [(r.id, r.id[:-len(a)] + b) for r in rows if r.id.endswith("@" + a)]
        results["compare"] = report.compare(run["cells"], pairs, p["wires"])
    return results


def write(results: dict, p: dict, args) -> None:
    out: Path = p["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = report.markdown_scale(results) if args.scale else report.markdown_report(results)
    out.with_suffix(".md").write_text(text)
    say("\n" + text)
    if not args.scale:
        try:
            report.chart(results, out.with_suffix(".png"))
        except ImportError:
            say("(no chart: matplotlib is missing; make bench installs it)")
    if args.update_readme == "yes" or (args.update_readme == "auto" and p["default"]):
        marker = "bench-scale" if args.scale else "bench-results"
        report.update_readme(REPO / "README.md", marker, readme_body(results, args.scale))
        say(f"README.md updated ({marker})")
    say(f"results: {out.with_suffix('.json')} (.md{'' if args.scale else ', .png'}); "
        f"{results['meta']['runtime_seconds']} s from the first namespace to the last")


def readme_body(results: dict, scale: bool) -> str:
    meta = results["meta"]
    s = meta["settings"]
    head = (f"One run of `{'make bench-scale' if scale else 'make bench'}` on {meta['date']} "
            f"({meta['machine']['cpus']} cores, kernel {meta['machine']['kernel']}): medians of "
            f"{s['repetitions']} interleaved repetitions of {s['seconds']:g}-second tests; "
            f"{meta['runtime_seconds']} s from setting up the lab to tearing it down.\n\n")
    return head + (report.markdown_scale(results) if scale else report.markdown_report(results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
