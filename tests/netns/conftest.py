"""Network-namespace fixtures for end-to-end tests (mark the tests ``netns``).

``netns`` is a factory: ``netns("m1")`` makes a namespace named
``trt-m1-<random>`` with ``lo`` up, ``netns.veth(a, b)`` joins two of them.
Links are created from inside the namespaces (``ip -n A link add ... peer
netns B``), so nothing ever appears in or is taken from the root namespace.
Teardown runs even when the test fails: it kills the processes started with
``Namespace.popen`` and deletes every namespace the factory made, which
destroys the veths in them too.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

PREFIX = "trt-"
IFNAMSIZ = 15  # usable characters in a Linux interface name
PYTHON = sys.executable


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return (f"{shlex.join(self.cmd)} exited {self.returncode}\n"
                f"stdout: {self.stdout}\nstderr: {self.stderr}")


def run(args: list[str], *, check: bool = True, input: str | None = None,
        timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with text output captured; raise CommandFailed (with stderr) if it fails."""
    result = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, args, result.stdout, result.stderr)
    return result


@dataclass
class Namespace:
    name: str
    _factory: NetnsFactory = field(repr=False)

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (see :func:`run` for the keywords)."""
        return run(self.exec_args(*args), **kwargs)

    def ip(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...``"""
        return run(["ip", "-n", self.name, *args], **kwargs)

    def python(self, script: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet (this interpreter) inside the namespace."""
        return self.run(PYTHON, "-c", script, *args, **kwargs)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        """Start a background command inside the namespace; killed at teardown."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        process = subprocess.Popen(self.exec_args(*args), **kwargs)
        self._factory.processes.append(process)
        return process

    def sysctl(self, key: str, value) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def mac(self, ifname: str) -> str:
        (link,) = json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)
        return link["address"]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Veth:
    a: Namespace
    a_name: str
    b: Namespace
    b_name: str


class NetnsFactory:
    """Makes uniquely named namespaces and veths; :meth:`cleanup` removes them all."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen] = []
        self._links = 0

    def __call__(self, label: str | None = None) -> Namespace:
        label = label or str(len(self.namespaces))
        namespace = Namespace(f"{PREFIX}{label}-{self.token}", self)
        run(["ip", "netns", "add", namespace.name])
        self.namespaces.append(namespace)  # only once it is ours to delete
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def veth(self, a: Namespace, b: Namespace, a_name: str | None = None,
             b_name: str | None = None, *, mtu: int | None = None, up: bool = True) -> Veth:
        """A veth pair with one end in ``a`` and the other in ``b`` (names default unique)."""
        self._links += 1
        a_name = a_name or f"{PREFIX}{self.token[:4]}{self._links}a"
        b_name = b_name or f"{PREFIX}{self.token[:4]}{self._links}b"
        for name in (a_name, b_name):
            assert len(name) <= IFNAMSIZ, f"interface name {name!r} is longer than {IFNAMSIZ}"
        extra = ["mtu", str(mtu)] if mtu else []
        a.ip("link", "add", a_name, *extra, "type", "veth",
             "peer", "name", b_name, *extra, "netns", b.name)
        if up:
            a.ip("link", "set", a_name, "up")
            b.ip("link", "set", b_name, "up")
        return Veth(a, a_name, b, b_name)

    def cleanup(self) -> None:
        # A process still inside a namespace keeps it (and its veths) alive.
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        failures = []
        for namespace in reversed(self.namespaces):
            result = run(["ip", "netns", "delete", namespace.name], check=False)
            if result.returncode != 0:
                failures.append(f"{namespace.name}: {result.stderr.strip()}")
        self.namespaces.clear()
        self.processes.clear()
        assert not failures, f"could not delete namespaces: {failures}"


@pytest.fixture
def netns():
    """Factory fixture: ``netns("label") -> Namespace``, ``netns.veth(a, b) -> Veth``."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
