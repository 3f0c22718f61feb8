"""Network namespaces the benchmark owns, and the processes it starts in them.

Every namespace is named ``trt-bench-<pid>-<name>``, ``<pid>`` being the harness's own
process id, so that concurrent runs never collide and a run that was killed outright
(SIGKILL, a lost machine) can be recognised later: :func:`remove_stale` deletes the
``trt-bench-*`` namespaces whose harness is no longer alive, and nothing else. Links are
created from inside the namespaces (``ip -n A link add ... peer netns B``), so nothing
appears in the host's namespace and deleting the namespaces removes every link.

:class:`Lab` is a context manager: leaving it, normally, on an exception or on
Ctrl-C/SIGTERM/SIGHUP (turned into exceptions by :func:`signals_raise`), stops every
process it started (SIGTERM, then SIGKILL), then anything else still running in its
namespaces, then deletes them. A second Ctrl-C during that is ignored.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "trt-bench-"
NETNS_DIR = Path("/run/netns")


class CommandFailed(RuntimeError):
    pass


def run(args: list[str], *, check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``args``, output captured as text; CommandFailed with its stderr when it fails."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise CommandFailed(f"{shlex.join(args)} exited {result.returncode}: "
                            f"{(result.stderr or result.stdout).strip()}")
    return result


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def signals_raise() -> None:
    """SIGTERM and SIGHUP raise :class:`Interrupted` and SIGINT KeyboardInterrupt, so
    ``finally`` blocks clean up. SIGINT even when the shell started us with it ignored
    (a background job): ``kill -INT`` must still stop the run cleanly. A SIGHUP that
    nohup ignores stays ignored."""
    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, handler)


@dataclass
class Namespace:
    name: str
    lab: Lab = field(repr=False)

    def ip(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...``"""
        return run(["ip", "-n", self.name, *args], **kwargs)

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *args], **kwargs)

    def sysctl(self, key: str, value) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def popen(self, *args: str, log: Path | None = None, **kwargs) -> subprocess.Popen:
        """Start ``args`` inside the namespace; ``ip netns exec`` execs it, so the Popen's
        pid is the program's own. Its own session: a Ctrl-C at the terminal reaches the
        harness only, which then stops the programs in order."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            process = subprocess.Popen(["ip", "netns", "exec", self.name, *args],
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                                       start_new_session=True, **kwargs)
        finally:
            if log:
                out.close()
        self.lab.processes.append(process)
        return process


class Lab:
    """The namespaces of one benchmark run; see the module's docstring."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}-"
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Lab:
        remove_stale()
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def namespace(self, short: str) -> Namespace:
        ns = Namespace(self.tag + short, self)
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
        a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)

    def stop(self, process: subprocess.Popen, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; one of ours only."""
        self.stop_all([process], grace)

    @staticmethod
    def stop_all(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
        """SIGTERM to all at once, SIGKILL to those still running ``grace`` seconds later
        (a router with a thousand devices takes seconds to remove them); never raises."""
        running = [p for p in processes if p.poll() is None]
        for process in running:
            try:
                process.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                pass  # unkillable for now; deleting its namespace below still goes on

    def close(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all(self.processes)
            for ns in reversed(self.namespaces):
                _empty_and_delete(ns.name)
            self.namespaces.clear()
            self.processes.clear()
        finally:
            signal.signal(signal.SIGINT, previous)


def _pids_in(name: str) -> list[int]:
    result = run(["ip", "netns", "pids", name], check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def _empty_and_delete(name: str) -> None:
    """Stop what still runs in namespace ``name`` (ours), then delete it."""
    pids = _pids_in(name)
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _pids_in(name)
    run(["ip", "netns", "del", name], check=False)


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_namespaces(names: list[str], alive=owner_alive) -> list[str]:
    """Those of ``names`` that a benchmark run made and whose run is gone."""
    stale = []
    for name in names:
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)-.+", name)
        # A pid that is alive is another run's; one equal to ours is left from an earlier
        # process that had our pid (we have made nothing yet).
        if match and (int(match.group(1)) == os.getpid() or not alive(int(match.group(1)))):
            stale.append(name)
    return stale


def remove_stale() -> list[str]:
    """Delete namespaces left behind by benchmark runs that were killed outright."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    stale = stale_namespaces(names)
    for name in stale:
        _empty_and_delete(name)
    return stale
