"""One measurement "cell": the tests of one row on one wire in one repetition.

The tests, from hostA to hostB through the row's slot, one after the other:

* ``tcp1``: ``iperf3 -t SECONDS`` (one stream); ``ping -i 0.1`` runs alongside it
  (RTT under load), after a few pings with the path idle;
* ``tcp4``: ``iperf3 -P 4``;
* ``udp``: ``iperf3 -u -l 64 -b 0`` (64-byte payloads, as fast as it can send) from one
  client, or several at once each to its own server on hostB (``--udp-clients``).
  Reported: what the servers received per second, the loss, and what the clients
  offered. One client offers 3-6 times what a userspace tunnel delivers, so there the
  tunnel is the bottleneck; for the kernel rows the sender's system call carries each
  packet through every hop, so the two cores are (the results show the machine's busy
  share). More clients do not help on two cores, and a client that starts while another
  floods a userspace tunnel can stall: its TCP control connection crosses the full
  tunnel queue and backs off for tens of seconds.

Around each test the CPU time (utime + stime from /proc/PID/stat) of every process of
the tunnel is read, as a percentage of one core over the test's wall time, with the
whole machine's busy share beside it. After the cell: the tunnel processes' VmRSS and
VmHWM, and the increase of the IPv4 fragment counters in M1, wan1, wan2 and M2.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import stats
from bench.rows import Row
from bench.topology import Topology

HZ = os.sysconf("SC_CLK_TCK")
BASE_PORT = 5201
WAN_NAMESPACES = ("m1", "wan1", "wan2", "m2")
TESTS = ("tcp1", "tcp4", "udp")


@dataclass
class Settings:
    seconds: float = 2.0
    tests: tuple[str, ...] = TESTS
    streams: int = 4
    udp_clients: int = 1
    udp_size: int = 64
    ping_interval: float = 0.1


class CpuWatch:
    """CPU time of some processes, and of the machine, between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _read(self) -> tuple[float, dict, tuple[int, int]]:
        ticks = {}
        for side, pid in self.pids.items():
            try:
                ticks[side] = stats.proc_cpu(Path(f"/proc/{pid}/stat").read_text())
            except (FileNotFoundError, ProcessLookupError):
                ticks[side] = None
        return time.monotonic(), ticks, stats.host_busy(Path("/proc/stat").read_text())

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict:
        (t0, ticks0, host0), (t1, ticks1, host1) = self.before, self._read()
        seconds = t1 - t0
        result = {}
        for side in self.pids:
            if ticks0.get(side) is None or ticks1.get(side) is None:
                continue
            user, system = (b - a for a, b in zip(ticks0[side], ticks1[side]))
            result[side] = {"cpu": round(stats.cpu_percent(user + system, seconds, HZ), 1),
                            "user": round(stats.cpu_percent(user, seconds, HZ), 1),
                            "sys": round(stats.cpu_percent(system, seconds, HZ), 1)}
        busy, total = host1[0] - host0[0], host1[1] - host0[1]
        host = round(100.0 * busy / total * os.cpu_count(), 1) if total else None
        return {"processes": result, "host_busy": host}


class Meter:
    def __init__(self, topo: Topology, settings: Settings) -> None:
        self.topo = topo
        self.settings = settings
        self.servers: list[subprocess.Popen] = []

    def start_servers(self) -> None:
        for server in self.servers:
            self.topo.lab.stop(server, grace=1.0)
        self.servers = [self.topo["hostb"].popen("iperf3", "-s", "-p", str(BASE_PORT + i))
                        for i in range(max(1, self.settings.udp_clients))]
        time.sleep(0.3)

    def _in_hosta(self, *args: str) -> subprocess.Popen:
        """A short-lived client on hostA, its output read by us (if the run is stopped
        while it runs, the lab's teardown ends it with the namespace)."""
        return subprocess.Popen(["ip", "netns", "exec", self.topo["hosta"].name, *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def _iperf3(self, row: Row, *args: str, port: int = BASE_PORT) -> subprocess.Popen:
        return self._in_hosta("iperf3", "-c", row.slot.dst, "-B", row.slot.src, "-p", str(port),
                              "-J", "--connect-timeout", "3000",
                              "-t", f"{self.settings.seconds:g}", *args)

    def _collect(self, process: subprocess.Popen) -> str:
        timeout = self.settings.seconds + 20
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            tail = (err.strip() or out.strip())[-300:]
            raise RuntimeError(f"iperf3 did not finish in {timeout:g} s: {tail}")
        if process.returncode != 0 and not out.strip().startswith("{"):
            raise RuntimeError(f"iperf3 exited {process.returncode}: {err.strip() or out.strip()}")
        return out

    def _ping(self, row: Row, count: int, interval: float) -> subprocess.Popen:
        return self._in_hosta("ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1",
                              "-I", row.slot.src, row.slot.dst)

    def tcp(self, row: Row, streams: int, with_ping: bool) -> dict:
        result: dict = {}
        if with_ping:
            idle = self._ping(row, 5, 0.05)
            result["ping_idle"] = stats.ping_result(idle.communicate(timeout=10)[0])
        watch = CpuWatch(row.pids())
        watch.start()
        client = self._iperf3(row, *(["-P", str(streams)] if streams > 1 else []))
        pinger = None
        if with_ping:
            time.sleep(0.3)  # the stream is going
            interval = self.settings.ping_interval
            count = max(3, int((self.settings.seconds - 0.5) / interval))
            pinger = self._ping(row, count, interval)
        try:
            out = self._collect(client)
        finally:
            cpu = watch.stop()
            if pinger:
                ping_out = pinger.communicate(timeout=self.settings.seconds + 10)[0]
        result |= stats.tcp_result(out) | cpu
        if pinger:
            result["ping_load"] = stats.ping_result(ping_out)
        return result

    def udp(self, row: Row) -> dict:
        watch = CpuWatch(row.pids())
        watch.start()
        clients = [self._iperf3(row, "-u", "-l", str(self.settings.udp_size), "-b", "0",
                                port=BASE_PORT + i)
                   for i in range(self.settings.udp_clients)]
        outputs, errors = [], []
        for client in clients:
            try:
                outputs.append(stats.udp_result(self._collect(client)))
            except (RuntimeError, ValueError) as error:
                errors.append(str(error))
        cpu = watch.stop()
        if not outputs:
            raise RuntimeError("; ".join(errors))
        result = stats.udp_total(outputs) | cpu | {"clients": len(outputs)}
        if errors:
            result["errors"] = errors
        return result

    def memory(self, row: Row) -> dict:
        found = {}
        for side, pid in row.pids().items():
            try:
                found[side] = stats.proc_memory(Path(f"/proc/{pid}/status").read_text())
            except FileNotFoundError:
                pass
        return found

    def cell(self, row: Row, wire: str, rep: int) -> dict:
        cell: dict = {"row": row.id, "wire": wire, "rep": rep, "errors": []}
        before = {ns: self.topo.snmp(ns) for ns in WAN_NAMESPACES}
        for test in self.settings.tests:
            try:
                row.check_running()
                if test == "tcp1":
                    cell["tcp1"] = self.tcp(row, 1, with_ping=True)
                elif test == "tcp4":
                    cell["tcp4"] = self.tcp(row, self.settings.streams, with_ping=False)
                elif test == "udp":
                    cell["udp"] = self.udp(row)
                    time.sleep(0.2)  # let the queues drain before the next cell
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                cell["errors"].append(f"{test}: {error}")
                self.start_servers()  # a server may be stuck in the failed test
        after = {ns: self.topo.snmp(ns) for ns in WAN_NAMESPACES}
        cell["fragments"] = stats.fragment_delta(before, after)
        cell["memory"] = self.memory(row)
        return cell
