"""The pure parts: reading iperf3, ping and /proc, medians and ratios. No I/O here."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable


def tcp_result(iperf3_json: str) -> dict:
    """A TCP client's ``iperf3 -J``: what the receiver got, in bit/s, and retransmits."""
    doc = json.loads(iperf3_json)
    if "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    end = doc["end"]
    return {"bps": end["sum_received"]["bits_per_second"],
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "seconds": end["sum_received"]["seconds"]}


def udp_result(iperf3_json: str) -> dict:
    """A UDP client's ``iperf3 -u -J``: what the *server* received (``sum_received``:
    the highest sequence number seen, ``packets``, less those it never saw,
    ``lost_packets``) over the server's own duration; and what the client offered."""
    doc = json.loads(iperf3_json)
    if "error" in doc:
        raise ValueError(f"iperf3: {doc['error']}")
    sent, received = doc["end"]["sum_sent"], doc["end"]["sum_received"]
    return {"sent": sent["packets"], "sent_seconds": sent["seconds"],
            "received": received["packets"] - received["lost_packets"],
            "received_seconds": received["seconds"]}


def udp_total(clients: list[dict]) -> dict:
    """Several UDP clients at once: delivered and offered packets per second, loss %.
    Each client's rate is its own count over its own duration; rates add up."""
    delivered = sum(c["received"] / c["received_seconds"] for c in clients if c["received_seconds"])
    offered = sum(c["sent"] / c["sent_seconds"] for c in clients if c["sent_seconds"])
    sent = sum(c["sent"] for c in clients)
    received = sum(c["received"] for c in clients)
    loss = 100.0 * (sent - received) / sent if sent else 0.0
    return {"pps": delivered, "offered_pps": offered, "loss_percent": max(loss, 0.0)}


PING_TIME = re.compile(r"time=([0-9.]+) ms")
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_result(output: str) -> dict:
    """``ping`` output: the median and 90th percentile RTT (ms) and how many were lost."""
    times = [float(t) for t in PING_TIME.findall(output)]
    summary = PING_SUMMARY.search(output)
    sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (0, 0)
    return {"rtt_ms": statistics.median(times) if times else None,
            "rtt_p90_ms": percentile(times, 90) if times else None,
            "sent": sent, "received": received}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def proc_cpu(stat: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from a /proc/PID/stat line, fields 14 and 15 of
    proc(5). The command name, in parentheses, may hold spaces or parentheses: the
    fields are counted after the last ')'."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def host_busy(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the ``cpu`` line of /proc/stat."""
    values = [int(v) for v in stat.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    total = sum(values[:8])   # guest time is already counted in user
    return total - idle, total


def proc_memory(status: str) -> dict:
    """VmRSS and VmHWM, in KiB, from /proc/PID/status."""
    found = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def cpu_percent(ticks: int, seconds: float, hz: int) -> float:
    """CPU time ``ticks`` over ``seconds`` of wall time, as a percentage of one core."""
    return 100.0 * ticks / hz / seconds if seconds > 0 else 0.0


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def paired_ratio(values: dict[int, float | None], baseline: dict[int, float | None]) -> float | None:
    """The median over repetitions of value / baseline, each pair from the same repetition
    (measured back to back), so drift of the machine between repetitions cancels."""
    ratios = [values[rep] / baseline[rep] for rep in values
              if values[rep] is not None and baseline.get(rep)]
    return statistics.median(ratios) if ratios else None


def fragment_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict:
    """Outer fragments made or reassembled in the WAN namespaces between two readings of
    their ``Ip:`` counters: ``{namespace: {counter: increase}}`` for the nonzero ones."""
    counters = ("FragCreates", "FragOKs", "ReasmReqds", "ReasmOKs", "FragFails")
    # FragFails: a DF packet too big for the next link (dropped, ICMP sent): no fragment
    # crossed, but it is reported too.
    delta = {}
    for ns in after:
        changed = {c: after[ns][c] - before[ns][c] for c in counters
                   if after[ns].get(c, 0) - before[ns].get(c, 0)}
        if changed:
            delta[ns] = changed
    return delta


FRAGMENTING = ("FragCreates", "ReasmReqds")


def fragmented(delta: dict) -> int:
    """How many fragments crossed the WAN namespaces (0: none): those made (FragCreates,
    by a tunnel end or a WAN router) or, if more, those that arrived to be reassembled
    (ReasmReqds); one fragment usually counts in both, at each of its ends."""
    return max(sum(counters.get(c, 0) for counters in delta.values()) for c in FRAGMENTING)
