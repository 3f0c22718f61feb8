"""Port forwards side by side: tunnelrouter, socat, HAProxy and an nftables DNAT rule.

Three namespaces of our own, ``trt-fwd-{client,proxy,server}-<random>``, joined by
veths::

    client 10.77.1.1 ---- 10.77.1.2 proxy 10.77.2.1 ---- 10.77.2.2 server

Each forwarder in turn runs alone in the proxy namespace, listening on 10.77.1.2 and
relaying to the server: tunnelrouter (a router with only ``forwards:``), socat
(``fork``), HAProxy (``mode tcp``, ``option splice-auto``, a thread per core) and
nftables DNAT (the kernel alone: the ceiling). For each, in the same run:

* TCP throughput, 1 and 16 connections: iperf3 through the forward;
* connection rate: wrk with ``Connection: close`` (a new connection per request) to
  an HTTP server (HAProxy answering 200 by itself) behind the forward;
* UDP packets per second: iperf3 ``-u -l 64`` unlimited, the rate the server received
  (HAProxy has no UDP: no row).

CPU is the forwarder's processes' user + system time over the measurement (for
socat, its children too); DNAT's is the kernel's softirq time, which no process is
charged with, so it is not given. Each figure is the best of ``--runs`` runs, the
forwarders taking turns (as bench_codec.py takes the best of its repeats: other work on a
shared machine only ever lowers a figure); read the ratios. Ends with
PASS/FAIL against the issue's targets: TCP throughput >= 1.0x HAProxy and >= 3x socat,
connection rate >= 0.5x HAProxy.

Usage: ``scripts/bench_forward.py [--seconds 5] [--runs 3] [--json PATH]`` (root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns.conftest import NetnsFactory  # noqa: E402
from tests.netns.routers import wait_for, wait_for_text  # noqa: E402

CLIENT, PROXY_IN, PROXY_OUT, SERVER = "10.77.1.1", "10.77.1.2", "10.77.2.1", "10.77.2.2"
IPERF_PORT, HTTP_PORT = 5201, 8000
TUNNELROUTER = ROOT / ".venv" / "bin" / "tunnelrouter"
TICKS = os.sysconf("SC_CLK_TCK")
FORWARDERS = ("tunnelrouter", "socat", "haproxy", "nft-dnat")


def haproxy_config(frontends: list[tuple[str, int, str, int]], extra: str = "") -> str:
    lines = ["global", "  maxconn 6000", "defaults", "  mode tcp", "  timeout connect 5s",
             "  timeout client 10m", "  timeout server 10m", extra]
    for number, (listen, port, to, to_port) in enumerate(frontends):
        lines += [f"listen l{number}", f"  bind {listen}:{port}",
                  f"  server s{number} {to}:{to_port}"]
    return "\n".join(lines) + "\n"


HTTP_SERVER = """global
  nbthread 1
  maxconn 6000
defaults
  mode http
  timeout client 10s
  timeout server 10s
  timeout connect 5s
frontend web
  bind {address}:{port}
  http-request return status 200 content-type text/plain string ok
"""


class Bench:
    def __init__(self, seconds: float, directory: Path):
        self.seconds = seconds
        self.directory = directory
        self.factory = NetnsFactory()
        self.client = self.proxy = self.server = None
        self.iperf_process: subprocess.Popen | None = None

    def build(self) -> None:
        factory = self.factory
        self.client, self.proxy, self.server = (factory(f"fwd-{role}")
                                                for role in ("client", "proxy", "server"))
        factory.veth(self.client, self.proxy, "eth0", "in")
        factory.veth(self.proxy, self.server, "out", "eth0")
        self.client.ip("addr", "add", f"{CLIENT}/24", "dev", "eth0")
        self.proxy.ip("addr", "add", f"{PROXY_IN}/24", "dev", "in")
        self.proxy.ip("addr", "add", f"{PROXY_OUT}/24", "dev", "out")
        self.server.ip("addr", "add", f"{SERVER}/24", "dev", "eth0")
        self.client.ip("route", "add", "default", "via", PROXY_IN)
        self.server.ip("route", "add", "default", "via", PROXY_OUT)
        self.proxy.sysctl("net.ipv4.ip_forward", 1)
        for ns in (self.client, self.proxy, self.server):
            ns.sysctl("net.ipv4.ip_local_port_range", "10000 65000")
            ns.sysctl("net.ipv4.tcp_tw_reuse", 1)
            ns.sysctl("net.core.somaxconn", 65535)
        http = self.directory / "http.cfg"
        http.write_text(HTTP_SERVER.format(address=SERVER, port=HTTP_PORT))
        self.server.popen("haproxy", "-db", "-f", str(http))
        self.wait_listening(self.server, HTTP_PORT)
        self.iperf_server()

    def iperf_server(self) -> None:
        """(Again) an iperf3 server: one that a broken test left waiting is replaced."""
        if self.iperf_process is not None:
            self.iperf_process.kill()
            self.iperf_process.wait()
        self.iperf_process = self.server.popen("iperf3", "-s", "-B", SERVER, "-p",
                                               str(IPERF_PORT), "--forceflush")
        wait_for_text(self.iperf_process.stdout, "Server listening", 5)

    # -- the forwarders ---------------------------------------------------------------------

    def start(self, forwarder: str) -> list[subprocess.Popen]:
        """Start ``forwarder`` in the proxy namespace; the processes whose CPU is its own."""
        ends = [(PROXY_IN, IPERF_PORT, SERVER, IPERF_PORT), (PROXY_IN, HTTP_PORT, SERVER, HTTP_PORT)]
        if forwarder == "tunnelrouter":
            config = self.directory / "forwards.yaml"
            forwards = {f"tcp{port}": {"listen": f"{listen}:{port}", "to": f"{to}:{to_port}",
                                       "max-connections": 100000}
                        for listen, port, to, to_port in ends}
            forwards["udp"] = {"listen": f"{PROXY_IN}:{IPERF_PORT}", "protocol": "udp",
                               "to": f"{SERVER}:{IPERF_PORT}", "max-connections": 100000}
            control = self.directory / "forwards.sock"
            config.write_text(json.dumps({"control-socket": str(control), "forwards": forwards}))
            router = self.proxy.popen(str(TUNNELROUTER), "run", str(config))
            wait_for(control, router)
            return [router]
        if forwarder == "socat":
            processes = [self.proxy.popen(
                "socat", f"TCP4-LISTEN:{port},bind={listen},fork,reuseaddr,backlog=4096",
                f"TCP4:{to}:{to_port}") for listen, port, to, to_port in ends]
            processes.append(self.proxy.popen(
                "socat", "-T", "10", f"UDP4-LISTEN:{IPERF_PORT},bind={PROXY_IN},fork,reuseaddr",
                f"UDP4:{SERVER}:{IPERF_PORT}"))
            self.wait_listening(self.proxy, IPERF_PORT)
            return processes
        if forwarder == "haproxy":
            config = self.directory / "haproxy.cfg"
            config.write_text(haproxy_config(ends, "  option splice-auto"))
            process = self.proxy.popen("haproxy", "-db", "-f", str(config))
            self.wait_listening(self.proxy, IPERF_PORT)
            return [process]
        rules = (f"table ip trtfwd {{\n chain pre {{\n  type nat hook prerouting priority dstnat\n"
                 f"  ip daddr {PROXY_IN} tcp dport {{ {IPERF_PORT}, {HTTP_PORT} }} dnat to {SERVER}\n"
                 f"  ip daddr {PROXY_IN} udp dport {IPERF_PORT} dnat to {SERVER}\n }}\n}}\n")
        self.proxy.run("nft", "-f", "-", input=rules)
        return []

    def stop(self, forwarder: str, processes: list[subprocess.Popen]) -> None:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if forwarder == "nft-dnat":
            self.proxy.run("nft", "delete", "table", "ip", "trtfwd")
        for pid in self.proxy_pids():   # what is left: socat's children
            try:
                os.kill(int(pid), 15)
            except ProcessLookupError:
                pass

    def wait_listening(self, ns, port: int) -> None:
        deadline = time.monotonic() + 10
        while f":{port} " not in ns.run("ss", "-Hltn").stdout:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)

    def proxy_pids(self) -> list[str]:
        """Every process in the proxy namespace: all of them ours."""
        return self.proxy.run("ip", "netns", "pids", self.proxy.name, check=False).stdout.split()

    def cpu(self) -> float:
        """CPU seconds of every process in the proxy namespace, and of their reaped children."""
        total = 0
        for pid in self.proxy_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(value) for value in fields[11:15])   # utime stime cutime cstime
        return total / TICKS

    # -- the measurements -------------------------------------------------------------------

    def measure(self, processes, run) -> tuple[float, float | None]:
        before = self.cpu()
        started = time.monotonic()
        value = run()
        elapsed = time.monotonic() - started
        cpu = (self.cpu() - before) / elapsed if processes else None
        return value, cpu

    def iperf(self, *args: str) -> dict:
        """iperf3 through the forward; a run that hangs (iperf3's control connection can
        wedge under load) is tried once more with a new server."""
        command = ["iperf3", "-c", PROXY_IN, "-p", str(IPERF_PORT), "-J", "-t",
                   str(self.seconds), *args]
        try:
            result = self.client.run(*command, timeout=self.seconds + 30, check=False)
        except subprocess.TimeoutExpired:
            print(f"iperf3 {' '.join(args)} hung; once more", file=sys.stderr)
            self.iperf_server()
            result = self.client.run(*command, timeout=self.seconds + 30, check=False)
        report = json.loads(result.stdout)
        if "error" in report:
            raise RuntimeError(f"iperf3 {' '.join(args)}: {report['error']}")
        return report

    def tcp(self, streams: int) -> float:
        report = self.iperf("-P", str(streams))
        return report["end"]["sum_received"]["bits_per_second"] / 1e9

    def udp(self) -> float:
        report = self.iperf("-u", "-b", "0", "-l", "64")
        total = report["end"]["sum"]
        return (total["packets"] - total["lost_packets"]) / total["seconds"]

    def connection_rate(self) -> float:
        result = self.client.run("wrk", "-t", "2", "-c", "64", "-d", f"{round(self.seconds)}s",
                                 "-H", "Connection: close", f"http://{PROXY_IN}:{HTTP_PORT}/",
                                 timeout=self.seconds + 30)
        rate = next(line for line in result.stdout.splitlines() if line.startswith("Requests/sec"))
        return float(rate.split()[1])

    def run_all(self, runs: int) -> dict:
        """Every forwarder ``runs`` times, the forwarders taking turns, so that a noisy
        moment of the machine hits them alike; each figure is the best of its runs (with the
        CPU of that run): what other work on the machine does can only lower a figure."""
        measured: dict[str, dict[str, list]] = {name: {} for name in FORWARDERS}
        for number in range(runs):
            for forwarder in FORWARDERS:
                processes = self.start(forwarder)
                try:
                    for test, run in (("tcp1", lambda: self.tcp(1)),
                                      ("tcp16", lambda: self.tcp(16)),
                                      ("connections", self.connection_rate), ("udp", self.udp)):
                        if test == "udp" and forwarder == "haproxy":
                            continue
                        measured[forwarder].setdefault(test, []).append(
                            self.measure(processes, run))
                        time.sleep(0.5)   # iperf3's server takes its next client
                finally:
                    self.stop(forwarder, processes)
                print(f"run {number + 1}, {forwarder}: "
                      f"{ {test: round(values[-1][0], 2) for test, values in measured[forwarder].items()} }",
                      file=sys.stderr)
        return {forwarder: {test: max(values) for test, values in row.items()}
                for forwarder, row in measured.items()}


def report(results: dict) -> tuple[str, bool]:
    ours, haproxy, socat = results["tunnelrouter"], results["haproxy"], results["socat"]

    def ratio(test: str, other: dict) -> str:
        return f"{ours[test][0] / other[test][0]:.2f}x" if test in other else "-"

    def cpu_per(value: float, cpu: float | None, unit: float) -> str:
        return "kernel" if cpu is None else f"{100 * cpu / (value / unit):.0f} %"

    lines = ["| forwarder | TCP 1 conn Gbit/s | CPU per Gbit/s | TCP 16 conns Gbit/s | "
             "CPU per Gbit/s | connections/s | CPU | UDP 64 B pps | CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        cells = [name]
        for test in ("tcp1", "tcp16"):
            value, cpu = row[test]
            cells += [f"{value:.2f}", cpu_per(value, cpu, 1)]
        value, cpu = row["connections"]
        cells += [f"{value:,.0f}", "kernel" if cpu is None else f"{100 * cpu:.0f} %"]
        if "udp" in row:
            value, cpu = row["udp"]
            cells += [f"{value:,.0f}", "kernel" if cpu is None else f"{100 * cpu:.0f} %"]
        else:
            cells += ["no UDP", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "CPU: a share of one core (per Gbit/s for throughput); 'kernel': DNAT runs in "
              "softirq, charged to no process.", "",
              "| tunnelrouter vs | TCP 1 | TCP 16 | connections/s | UDP pps |",
              "|---|---|---|---|---|"]
    for name, other in (("haproxy", haproxy), ("socat", socat), ("nft-dnat", results["nft-dnat"])):
        lines.append(f"| {name} | {ratio('tcp1', other)} | {ratio('tcp16', other)} | "
                     f"{ratio('connections', other)} | {ratio('udp', other)} |")
    targets = [
        ("TCP throughput, 1 connection >= 1.0x HAProxy", ours["tcp1"][0] >= haproxy["tcp1"][0]),
        ("TCP throughput, 16 connections >= 1.0x HAProxy", ours["tcp16"][0] >= haproxy["tcp16"][0]),
        ("TCP throughput, 1 connection >= 3x socat", ours["tcp1"][0] >= 3 * socat["tcp1"][0]),
        ("TCP throughput, 16 connections >= 3x socat", ours["tcp16"][0] >= 3 * socat["tcp16"][0]),
        ("connection rate >= 0.5x HAProxy",
         ours["connections"][0] >= 0.5 * haproxy["connections"][0]),
    ]
    lines.append("")
    lines += [f"{'PASS' if met else 'FAIL'}  {what}" for what, met in targets]
    return "\n".join(lines), all(met for _, met in targets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; the best is shown")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    missing = [tool for tool in ("iperf3", "wrk", "socat", "haproxy", "nft")
               if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        print(f"bench_forward: needs root and {', '.join(missing) or 'nothing else'} "
              f"(make bench-forward installs them)", file=sys.stderr)
        return 2
    directory = Path(subprocess.run(["mktemp", "-d", "/tmp/trt-fwd-bench.XXXXXX"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    bench = Bench(args.seconds, directory)
    try:
        bench.build()
        results = bench.run_all(args.runs)
    finally:
        bench.factory.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    text, met = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
