"""A user-mode-linux guest as a real Linux GRE / IP-in-IP / SIT tunnel peer.

The host kernel on the lab machines has no ``gre``/``ipip``/``sit`` modules, so
the kernel peer for interop tests is a second kernel: user-mode-linux (Linux
6.1) running as an ordinary process inside a network namespace, attached to a
TAP device there with UML's legacy ``tuntap`` transport (not ``vec0``: that one
offloads checksums, so GRE checksums look wrong from outside).
``scripts/uml-peer-build`` prepares the kernel and an initramfs whose ``/init``
configures the guest from ``trt.*`` words on the kernel command line.

Typical use, as root, in a namespace that already exists::

    build()                                   # idempotent, fast once cached
    with UmlPeer("trt-x", [Tunnel("gre", key=42, csum=True, seq=True,
                                   inner=("192.168.50.2/30",))]) as peer:
        peer.run("ip tunnel show")            # console command channel
        replies = raw_exchange("trt-x", 47, datagram, peer.guest_ip,
                               needle=b"token")

In the namespace the TAP device carries the host side of the underlay
(``host_addr``, 10.99.0.1/24 by default) with a permanent neighbour entry for
the guest (``guest_addr``, 10.99.0.2/24); the guest has a permanent ARP entry
for the host. A tunnel's ``remote``/``local`` default to the host and guest
underlay addresses.

The guest's own traffic: eth0 and every tunnel device get IPv6 link-local
addresses (ipip ones too), so the guest sends router solicitations and MLD
reports, through the tunnels as well (GRE ones consume sequence numbers).
Most go out during boot, before the ready marker; filter for your packet
(``raw_exchange(needle=...)``). ``sysctls=("net.ipv6.conf.default.
router_solicitations=0", "net.ipv6.conf.default.disable_ipv6=1")`` quietens
tunnels created afterwards (not eth0, which exists at boot; not sit, which
needs IPv6). Everything is on the kernel command line (4 KiB at most), so keep
``setup`` short and use :meth:`UmlPeer.run` for more.

Nothing here depends on pytest; everything is bounded by timeouts.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "uml-peer-build"
DEFAULT_CACHE = "/var/cache/tunnelrouter-uml"
READY_MARKER = "TRT-UML-READY"
FAILED_MARKER = "TRT-UML-FAILED"
_CHUNK = 768  # base64 characters per console line (the guest tty takes 4095 at most)


class UmlError(RuntimeError):
    """The guest could not be built, booted or driven; the message has the console tail."""


class UmlCommandError(UmlError):
    def __init__(self, command: str, returncode: int, output: str):
        super().__init__(f"guest command exited {returncode}: {command!r}\n{output}")
        self.command, self.returncode, self.output = command, returncode, output


def cache_dir() -> Path:
    return Path(os.environ.get("UML_CACHE", DEFAULT_CACHE))


def build(timeout: float = 900.0) -> Path:
    """Run ``scripts/uml-peer-build`` (idempotent); return the cache directory."""
    try:
        result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UmlError(f"{BUILD_SCRIPT} took longer than {timeout} s") from exc
    if result.returncode != 0:
        raise UmlError(f"{BUILD_SCRIPT} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclasses.dataclass
class Tunnel:
    """A kernel tunnel in the guest: ``ip tunnel add NAME mode MODE remote R local L ...``.

    ``remote`` and ``local`` are the guest's view of the underlay (``remote`` is
    the host side); ``None`` means the host and guest underlay addresses.
    ``inner`` are addresses put on the tunnel device, ``routes`` prefixes routed
    into it. ``key`` sets both directions (``ikey``/``okey`` one each);
    ``csum`` and ``seq`` likewise (``icsum``... are not modelled; pass them via
    ``extra``, e.g. ``extra=("iseq",)``).
    """

    mode: str  # gre | ipip | sit
    inner: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    key: int | None = None
    ikey: int | None = None
    okey: int | None = None
    csum: bool = False
    seq: bool = False
    ttl: int | None = 64
    tos: int | None = None
    mtu: int | None = None
    name: str = "trt0"
    remote: str | None = None
    local: str | None = None
    extra: tuple[str, ...] = ()

    def cmdline_word(self, default_remote: str, default_local: str) -> str:
        parts = [self.name, self.mode, self.remote or default_remote, self.local or default_local]
        for option in ("key", "ikey", "okey", "ttl", "tos", "mtu"):
            value = getattr(self, option)
            if value is not None:
                parts.append(f"{option}={value}")
        parts += [flag for flag in ("csum", "seq") if getattr(self, flag)]
        parts += list(self.extra)
        parts += [f"inner={address}" for address in self.inner]
        parts += [f"route={prefix}" for prefix in self.routes]
        word = "trt.tun=" + ",".join(parts)
        if any(c.isspace() for c in word):
            raise ValueError(f"tunnel spec must not contain whitespace: {word!r}")
        return word


def _ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                            timeout=15, check=False)
    if check and result.returncode != 0:
        raise UmlError(f"ip -n {netns} {' '.join(args)}: {result.stderr.strip()}")
    return result


class UmlPeer:
    """A booted user-mode-linux guest attached to a TAP device in ``netns``.

    ``start()`` (or ``with``) creates the TAP device, boots the guest and waits
    for its ready marker; ``stop()`` powers it off (then SIGTERM, SIGKILL on
    its process group) and deletes the TAP device. ``console`` has every line
    the guest printed (boot log included); ``boot_seconds`` how long the boot
    took until ready.
    """

    def __init__(self, netns: str, tunnels: list[Tunnel] | tuple[Tunnel, ...] = (), *,
                 guest_addr: str = "10.99.0.2/24", host_addr: str | None = "10.99.0.1/24",
                 routes: tuple[str, ...] = (), sysctls: tuple[str, ...] = (),
                 modules: tuple[str, ...] = (), setup: str = "", mem: str = "256M",
                 tap: str | None = None, mac: str | None = None,
                 boot_timeout: float = 20.0, cache: Path | str | None = None,
                 log_path: Path | str | None = None):
        self.netns = netns
        self.tunnels = list(tunnels)
        self.guest_addr, self.host_addr = guest_addr, host_addr
        self.guest_ip = str(ipaddress.ip_interface(guest_addr).ip)
        self.host_ip = str(ipaddress.ip_interface(host_addr).ip) if host_addr else None
        self.routes, self.sysctls, self.modules, self.setup = routes, sysctls, modules, setup
        self.mem = mem
        self.tap = tap or f"trtu{secrets.token_hex(4)}"
        self.guest_mac = mac or "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
        self.host_mac: str | None = None
        self.boot_timeout = boot_timeout
        self.cache = Path(cache) if cache else cache_dir()
        self.log_path = Path(log_path) if log_path else None
        self.boot_seconds: float | None = None
        self.console: list[str] = []
        self._cond = threading.Condition()
        self._run_lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._uml_dir: str | None = None
        self._tap_created = False
        self._next_id = 1

    # -- life cycle -------------------------------------------------------------

    def command_line(self) -> list[str]:
        kernel, initrd = self.cache / "linux.uml", self.cache / "initramfs.cpio.gz"
        if not kernel.exists() or not initrd.exists():
            raise UmlError(f"no {kernel} or {initrd}: run scripts/uml-peer-build (uml.build())")
        words = [str(kernel), f"mem={self.mem}", f"initrd={initrd}",
                 f"eth0=tuntap,{self.tap},{self.guest_mac}", "con0=fd:0,fd:1", "con=null",
                 f"uml_dir={self._uml_dir}", "umid=peer", "noreboot",
                 f"trt.addr={self.guest_addr}"]
        if self.host_ip and self.host_mac and ipaddress.ip_address(self.host_ip).version == 4:
            words.append(f"trt.neigh={self.host_ip},{self.host_mac}")
        words += [f"trt.route={route}" for route in self.routes]
        words += [f"trt.sysctl={sysctl}" for sysctl in self.sysctls]
        words += [f"trt.mod={module}" for module in self.modules]
        default_remote = self.host_ip or ""
        words += [t.cmdline_word(default_remote, self.guest_ip) for t in self.tunnels]
        if self.setup:
            words.append("trt.sh=" + base64.b64encode(self.setup.encode()).decode())
        return words

    def start(self) -> "UmlPeer":
        if self._proc is not None:
            raise UmlError("already started")
        try:
            self._create_tap()
            self._uml_dir = tempfile.mkdtemp(prefix="trt-uml-")
            argv = ["ip", "netns", "exec", self.netns, *self.command_line()]
            began = time.monotonic()
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            self._reader = threading.Thread(target=self._read_console, daemon=True,
                                            name=f"uml-console-{self.tap}")
            self._reader.start()
            line = self._wait_line(lambda l: l.startswith((READY_MARKER, FAILED_MARKER)),
                                   self.boot_timeout)
            if line is None:
                raise UmlError(f"guest not ready within {self.boot_timeout} s" + self._tail())
            if line.startswith(FAILED_MARKER):
                raise UmlError(f"guest set-up failed: {line}" + self._tail())
            self.boot_seconds = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Power the guest off, kill what remains of it, delete the TAP device. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    self._send_script("poweroff -f", self._new_id(), proc)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)  # the session start_new_session made
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    continue
            # UML's helper processes share the group: make sure none is left.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        if self._reader is not None:
            self._reader.join(timeout=timeout)
            self._reader = None
        if self._tap_created:
            _ip(self.netns, "link", "del", self.tap, check=False)
            self._tap_created = False
        if self._uml_dir:
            shutil.rmtree(self._uml_dir, ignore_errors=True)
            self._uml_dir = None

    def __enter__(self) -> "UmlPeer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- the console command channel ------------------------------------------

    def run(self, command: str, timeout: float = 10.0, check: bool = True) -> str:
        """Run a shell script in the guest (busybox sh, stdin /dev/null); return its output.

        stderr is merged into the output, lines end in ``\\n``. A non-zero exit
        raises :class:`UmlCommandError` when ``check``. Commands run one at a time.
        """
        with self._run_lock:
            if not self.alive:
                raise UmlError("guest is not running" + self._tail())
            ident = self._new_id()
            with self._cond:
                mark = len(self.console)
            self._send_script(command, ident)
            end = self._wait_line(lambda l: l.startswith(f"TRT-END {ident} "), timeout, mark)
            if end is None:
                raise UmlError(f"guest command timed out after {timeout} s: {command!r}"
                               + self._tail())
            with self._cond:
                lines = self.console[mark:]
            begin = lines.index(f"TRT-BEGIN {ident}")
            finish = next(i for i, l in enumerate(lines) if l.startswith(f"TRT-END {ident} "))
            output = "".join(l + "\n" for l in lines[begin + 1:finish])
            returncode = int(end.split()[2])
            if check and returncode != 0:
                raise UmlCommandError(command, returncode, output)
            return output

    def _new_id(self) -> int:
        ident, self._next_id = self._next_id, self._next_id + 1
        return ident

    def _send_script(self, script: str, ident: int, proc: subprocess.Popen | None = None) -> None:
        encoded = base64.b64encode(script.encode()).decode()
        lines = [f"+ {encoded[i:i + _CHUNK]}\n" for i in range(0, len(encoded), _CHUNK)]
        lines.append(f"! {ident}\n")
        proc = proc or self._proc
        if proc is None or proc.stdin is None:
            raise OSError("guest console closed")
        proc.stdin.write("".join(lines).encode())
        proc.stdin.flush()

    # -- plumbing -------------------------------------------------------------

    def _create_tap(self) -> None:
        if len(self.tap) > 15:
            raise ValueError(f"TAP name {self.tap!r} is longer than 15 characters")
        _ip(self.netns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        self._tap_created = True
        _ip(self.netns, "link", "set", self.tap, "up")
        if self.host_addr:
            _ip(self.netns, "addr", "add", self.host_addr, "dev", self.tap)
        _ip(self.netns, "neigh", "replace", self.guest_ip, "lladdr", self.guest_mac,
            "dev", self.tap, "nud", "permanent")
        link = json.loads(_ip(self.netns, "-j", "link", "show", "dev", self.tap).stdout)
        self.host_mac = link[0]["address"]

    def _read_console(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                if log:
                    log.write(line + "\n")
                    log.flush()
                with self._cond:
                    self.console.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            if log:
                log.close()
            with self._cond:
                self._cond.notify_all()

    def _wait_line(self, predicate, timeout: float, start: int = 0) -> str | None:
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.console):
                    line = self.console[index]
                    index += 1
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                proc = self._proc
                if left <= 0 or proc is None or (proc.poll() is not None
                                                 and self._reader is not None
                                                 and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.5))

    def _tail(self, lines: int = 40) -> str:
        with self._cond:
            tail = self.console[-lines:]
        return "\n--- guest console (tail) ---\n" + "\n".join(tail)


# -- raw sockets in a namespace -----------------------------------------------------

_RAW_EXCHANGE = r"""
import json, select, socket, sys, time
a = json.load(sys.stdin)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, a["protocol"])
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
needle = bytes.fromhex(a["needle"])
for d in a["datagrams"]:
    s.sendto(bytes.fromhex(d), (a["dst"], 0))
deadline = time.monotonic() + a["timeout"]
got, found = [], False
while not found:
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        break
    data = s.recv(65535)
    got.append(data.hex())
    found = bool(needle) and needle in data
json.dump({"found": found, "received": got}, sys.stdout)
"""


def raw_exchange(netns: str, protocol: int, datagrams, dst: str, needle: bytes = b"",
                 timeout: float = 5.0) -> list[bytes]:
    """Send IPv4 datagrams (whole, header included) from ``netns``; collect replies.

    A child process in ``netns`` opens ``socket(AF_INET, SOCK_RAW, protocol)``
    with ``IP_HDRINCL``, sends ``datagrams`` (bytes or a list of them) to
    ``dst`` and returns every IPv4 datagram of ``protocol`` it receives (outer
    header included) up to and including the first that contains ``needle``.
    Raises ``TimeoutError`` (with what was received) if none does within
    ``timeout``; with an empty ``needle`` it collects for the whole ``timeout``.
    """
    if isinstance(datagrams, (bytes, bytearray, memoryview)):
        datagrams = [datagrams]
    request = {"protocol": protocol, "datagrams": [bytes(d).hex() for d in datagrams],
               "dst": dst, "needle": needle.hex(), "timeout": timeout}
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _RAW_EXCHANGE],
                            input=json.dumps(request), capture_output=True, text=True,
                            timeout=timeout + 15, check=False)
    if result.returncode != 0:
        raise UmlError(f"raw socket helper in {netns} failed: {result.stderr.strip()}")
    answer = json.loads(result.stdout)
    received = [bytes.fromhex(h) for h in answer["received"]]
    if needle and not answer["found"]:
        raise TimeoutError(f"no reply containing the needle within {timeout} s; "
                           f"received {len(received)} other datagram(s): "
                           + ", ".join(d[:64].hex() for d in received))
    return received
