"""Nothing the WAN sends can stop a router: what used to kill it is dropped, counted, survived.

Two tunnelrouters, M1 and M2, joined by a WAN veth. Each test proves a tunnel carries
pings, does one hostile thing to a router from the WAN side, and then proves the
tunnel still carries pings, both router processes still run, ``show`` reports no
internal error (``routers.show`` asserts that) and counts what happened under its
reason:

1. forged ICMP errors quoting one of M2's own datagrams, for every mode, whose inner
   packet has IP version 5 (before the restructuring: EncapConfigError, and exit);
2. the same quotes reflected: a datagram spoofed from M2 to a dead address of M1 makes
   M1's kernel answer M2 with protocol- or port-unreachable quoting it;
3. forged GRE sequence numbers far ahead, and a peer that restarts numbering from 0;
4. a storm: more GRE datagrams than M2's socket queue holds, then M2's kernel answering
   M1's datagrams with protocol-unreachable while M2's router is down;
5. a VXLAN peer sending frames from 20 000 source MACs into a bounded FDB.

Forged datagrams come from raw sockets in the namespaces, from M1's address (a peer's
address is all an attacker on the path needs) or spoofed from an attacker namespace.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from encap.checksum import internet_checksum
from encap.gre import NEW_EPOCH_RUN, REORDER_WINDOW
from tests.netns.conftest import PYTHON
from tests.netns.routers import VENV_BIN, WAN, join_wan, show, start_router, wait_for, wait_until

pytestmark = pytest.mark.netns

GRE, IPIP, SIT, UDP = 47, 4, 41, 17
VXLAN_PORT = 4789
# The tunnels, one per mode: device name and the mode's own keys.
TUNNELS = {
    "gre": ("gre1", {"mode": "gre", "key": 42, "checksum": True, "sequence": True}),
    "gretap": ("tap1", {"mode": "gretap", "key": 7}),
    "vxlan": ("vx1", {"mode": "vxlan", "id": 4242}),
    "ipip": ("ipip1", {"mode": "ipip"}),
    "sit": ("six1", {"mode": "sit"}),
}
PROTOCOL = {"gre": GRE, "gretap": GRE, "vxlan": UDP, "ipip": IPIP, "sit": SIT}
INNER = {4: "192.168.7.{}", 6: "fd00:7::{}"}   # the tunnel addresses of side 1 and 2
M2_INSIDE = INNER[4].format(2)                 # what M1 pings through an IPv4 tunnel
# What M2's kernel answers with while M2's router is down, and what M1's kernel answers
# a spoofed datagram with: every one of them, not one a second (the kernel's default).
ICMP_UNLIMITED = {"net.ipv4.icmp_ratelimit": 0, "net.ipv4.icmp_msgs_per_sec": 1000000,
                  "net.ipv4.icmp_msgs_burst": 1000000}
MAC_M1, MAC_M2, MAC_NOBODY = "020000000001", "020000000002", "02000000fffe"


def inner_family(mode: str) -> int:
    return 6 if mode == "sit" else 4


def tunnel_config(mode: str, local: str, remote: str, side: int | None, **extra) -> dict:
    """One tunnel of ``mode`` from ``local`` to ``remote``; ``side`` (1 or 2) gives it its
    tunnel address, None none."""
    _, keys = TUNNELS[mode]
    config = {"local": local, **keys, **extra}
    config |= {"remotes": [remote]} if mode == "vxlan" else {"remote": remote}
    if side is not None:
        family = inner_family(mode)
        config["addresses"] = [f"{INNER[family].format(side)}/{24 if family == 4 else 64}"]
    return config


# -- packets ------------------------------------------------------------------------------

def ipv4(src: str, dst: str, protocol: int, payload: bytes, *,
         total_length: int | None = None) -> bytes:
    """An IPv4 datagram with DF; ``total_length`` may claim more than there is (a quote)."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_length or 20 + len(payload),
                                   0x1234, 0x4000, 64, protocol, 0, socket.inet_aton(src),
                                   socket.inet_aton(dst)))
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def udp_datagram(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet (checksum 0: none) from ``src`` to ``dst`` port 9."""
    return ipv4(src, dst, UDP, struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload)


def udp6_datagram(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(payload), UDP, 64,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
    segment = bytearray(struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload)
    pseudo = header[8:40] + struct.pack("!IxxxB", len(segment), UDP)
    segment[6:8] = (internet_checksum(pseudo + segment) or 0xFFFF).to_bytes(2, "big")
    return header + bytes(segment)


def inner_packet(version: int, side_from: int = 2, side_to: int = 1) -> bytes:
    """A packet of ``version`` as the tunnel carries it from one side's address to the
    other's; version 5 is no IP at all: the nibble, and bytes after it."""
    if version == 5:
        return bytes([0x55, 0]) + struct.pack("!H", 40) + bytes(range(36))
    make = udp_datagram if version == 4 else udp6_datagram
    return make(INNER[version].format(side_from), INNER[version].format(side_to), b"hostile!")


def claiming_more(packet: bytes) -> bytes:
    """``packet`` with an IPv4 total length far past its end: malformed inside a tunnel."""
    return packet[:2] + struct.pack("!H", 900) + packet[4:]


def gre(protocol: int, payload: bytes, *, key: int | None = None, sequence: int | None = None,
        checksum: bool = False) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | (
        0x1000 if sequence is not None else 0)
    packet = bytearray(struct.pack("!HH", flags, protocol))
    packet += bytes(4) if checksum else b""
    packet += struct.pack("!I", key) if key is not None else b""
    packet += struct.pack("!I", sequence) if sequence is not None else b""
    packet += payload
    if checksum:
        packet[4:6] = internet_checksum(packet).to_bytes(2, "big")
    return bytes(packet)


def ethernet(payload: bytes, ethertype: int = 0x0800, *, dst: str = MAC_M1,
             src: str = MAC_M2) -> bytes:
    return bytes.fromhex(dst) + bytes.fromhex(src) + struct.pack("!H", ethertype) + payload


def vxlan(vni: int, frame: bytes) -> bytes:
    return struct.pack("!II", 0x08 << 24, vni << 8) + frame


def tunnel_datagram(mode: str, src: str, dst: str, inner: bytes, *,
                    total_length: int | None = None, **changed) -> bytes:
    """The whole IPv4 datagram a ``mode`` tunnel (keys as in TUNNELS, or ``changed``) sends
    from ``src`` to ``dst`` with ``inner`` inside."""
    keys = TUNNELS[mode][1] | changed
    version = inner[0] >> 4
    if mode == "gre":
        payload = gre(0x86DD if version == 6 else 0x0800, inner, key=keys["key"],
                      sequence=7 if keys["sequence"] else None, checksum=keys["checksum"])
    elif mode == "gretap":
        payload = gre(0x6558, ethernet(inner), key=keys["key"])
    elif mode == "vxlan":
        body = vxlan(keys["id"], ethernet(inner))
        payload = struct.pack("!HHHH", VXLAN_PORT, VXLAN_PORT, 8 + len(body), 0) + body
    else:
        payload = inner
    return ipv4(src, dst, PROTOCOL[mode], payload, total_length=total_length)


def icmp_error(icmp_type: int, code: int, quote: bytes, mtu: int = 0) -> bytes:
    """An ICMPv4 error quoting ``quote``; ``mtu`` is a fragmentation-needed's next-hop MTU."""
    message = bytearray(struct.pack("!BBHHH", icmp_type, code, 0, 0, mtu) + quote)
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    return bytes(message)


# -- sending from inside a namespace ------------------------------------------------------

SEND = r"""
import json, socket, sys, time
request = json.load(sys.stdin)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sockets = {"ip": raw, "icmp": icmp, "udp": udp}
datagrams = [(sockets[kind].sendto, bytes.fromhex(data), (dst, port))
             for kind, data, dst, port in request["datagrams"]]
deadline = time.monotonic() + (request["seconds"] or 1e9)
sent = failed = 0
for round in range(request["repeat"]):
    if round % 256 == 0 and time.monotonic() > deadline:
        break
    for sendto, data, address in datagrams:
        try:
            sendto(data, address)
            sent += 1
        except OSError:
            failed += 1   # a full queue, or an error the kernel reports about an earlier one
print(json.dumps({"sent": sent, "failed": failed}), flush=True)
"""


def start_sending(ns, datagrams: list[tuple[str, bytes, str, int]], *, repeat: int = 1,
                  seconds: float | None = None):
    """Send each ``(kind, data, destination, port)`` ``repeat`` times, or until ``seconds``
    have passed, from ``ns``, in the background; :func:`sent` waits for the count. ``kind``:
    ``ip`` (a whole IPv4 datagram, any source), ``icmp`` (an ICMP message from the
    namespace's own address), ``udp`` (a UDP payload)."""
    request = {"repeat": repeat, "seconds": seconds,
               "datagrams": [(kind, data.hex(), dst, port) for kind, data, dst, port in datagrams]}
    sender = ns.popen(PYTHON, "-c", SEND, stdin=subprocess.PIPE)
    sender.stdin.write(json.dumps(request))
    sender.stdin.close()
    sender.stdin = None   # communicate() would flush it
    sender.seconds = seconds or 0
    return sender


def sent(sender) -> int:
    """How many datagrams a sender of :func:`start_sending` sent, once it is done."""
    return outcome(sender)[0]


def outcome(sender) -> tuple[int, int]:
    """``(sent, failed)`` of a sender of :func:`start_sending`, once it is done. What left is
    between the two: in the storm below, the datagrams counted and those the socket dropped
    add up to ``sent`` exactly, except in some runs under load, where they came to one more:
    a send counted as failed whose datagram still left, the only way one more can have."""
    out, err = sender.communicate(timeout=sender.seconds + 30)
    assert sender.returncode == 0, err
    result = json.loads(out)
    return result["sent"], result["failed"]


def send(ns, datagrams: list[tuple[str, bytes, str, int]], **how) -> int:
    """:func:`start_sending`, and wait: how many went."""
    return sent(start_sending(ns, datagrams, **how))


def socket_queue(ns, table: str, local: str, number: int) -> tuple[int, int]:
    """``(bytes queued, datagrams dropped)`` of the socket in ``/proc/net/<table>`` (raw:
    ``number`` is the protocol, udp: the port) bound to ``local`` in ``ns``."""
    wanted = f"{int.from_bytes(socket.inet_aton(local), 'little'):08X}:{number:04X}"
    for line in ns.run("cat", f"/proc/net/{table}").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return int(fields[4].split(":")[1], 16), int(fields[-1])
    raise AssertionError(f"no {table} socket on {wanted} in {ns}")


def ping(ns, address: str, count: int = 3, interval: float = 0.2) -> int:
    """How many of ``count`` pings to ``address`` were answered."""
    result = ns.run("ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "3",
                    address, check=False, timeout=count * interval + 30)
    for part in result.stdout.split(","):
        if part.strip().endswith("received"):
            return int(part.split()[0])
    raise AssertionError(f"ping printed no summary: {result.stdout} {result.stderr}")


def answers(ns, address: str) -> bool:
    return ping(ns, address, count=1) == 1


# -- the routers --------------------------------------------------------------------------

@dataclass
class Router:
    ns: object
    process: object
    control: Path
    config: dict
    directory: Path
    name: str

    @classmethod
    def start(cls, ns, config: dict, directory: Path, name: str) -> Router:
        process, control = start_router(ns, config, directory, name)
        wait_for(control, process, timeout=30)
        return cls(ns, process, control, config, directory, name)

    def stop(self) -> None:
        """SIGTERM, and a clean exit."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.process.stderr.read()

    def start_again(self) -> None:
        """The same configuration, in a new process: every sequence number from 0."""
        self.process, self.control = start_router(self.ns, self.config, self.directory,
                                                  self.name)
        wait_for(self.control, self.process, timeout=30)

    def counters(self, tunnel: str) -> dict:
        return self.status(tunnel)["counters"]

    def status(self, tunnel: str) -> dict:
        return show(self.control)["tunnels"][tunnel]

    def alive(self) -> bool:
        return self.process.poll() is None


def start_pair(netns, directory: Path, mode: str, **extra) -> tuple[Router, Router]:
    """M1 and M2 on a WAN veth, each running the ``mode`` tunnel of TUNNELS (with the keys
    ``extra`` changes) to the other; a ping through it has been answered."""
    m1_ns, m2_ns = netns("m1"), netns("m2")
    join_wan(netns, m1_ns, m2_ns)
    name, _ = TUNNELS[mode]
    m1, m2 = (Router.start(ns, {"tunnels": {name: tunnel_config(mode, WAN[me], WAN[peer], side,
                                                                **extra)}}, directory, me)
              for ns, me, peer, side in ((m1_ns, "m1", "m2", 1), (m2_ns, "m2", "m1", 2)))
    far = INNER[inner_family(mode)].format(2)
    wait_until(lambda: answers(m1_ns, far), 20, f"a ping through {name}")
    return m1, m2


def quiet(ns) -> None:
    """No IPv6 on devices made from now on: a tunnel device then sends nothing of its own
    (router solicitations, MLD), so every datagram on the WAN is the test's."""
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)


def drops_since(before: dict, after: dict) -> dict[str, int]:
    """The drops counted between two readings of a tunnel's counters, by reason."""
    return {reason: count - before["drops"].get(reason, 0)
            for reason, count in after["drops"].items() if count != before["drops"].get(reason, 0)}


def assert_survived(*routers: Router) -> None:
    for router in routers:
        assert router.alive(), f"{router.name} exited: {router.process.stderr.read()}"
        show(router.control)   # answers, and logged no internal error


# -- 1. forged ICMP errors quoting a version-5 inner packet, every mode ------------------

# What a WAN router may say about a datagram (port-unreachable is never relayed).
ICMP_ERRORS = {
    "net-unreachable": (3, 0, 0), "host-unreachable": (3, 1, 0),
    "protocol-unreachable": (3, 2, 0), "port-unreachable": (3, 3, 0),
    "fragmentation-needed": (3, 4, 1400), "time-exceeded": (11, 0, 0),
}
ROUNDS = 3


@pytest.mark.parametrize("mode", list(TUNNELS))
def test_icmp_error_quoting_a_version_5_inner_packet_is_counted_not_fatal(netns, tmp_path, mode):
    name, _ = TUNNELS[mode]
    family = inner_family(mode)
    m1, m2 = start_pair(netns, tmp_path, mode)
    before = m2.counters(name)

    # Quoting a full-size datagram, so that fragmentation-needed is believable and goes
    # all the way to the relay instead of being dismissed as about a smaller packet.
    quote = tunnel_datagram(mode, WAN["m2"], WAN["m1"], inner_packet(5), total_length=1500)
    errors = [("icmp", icmp_error(*ICMP_ERRORS[kind][:2], quote, ICMP_ERRORS[kind][2]),
               WAN["m2"], 0) for kind in ICMP_ERRORS]
    send(m1.ns, errors, repeat=ROUNDS)
    expected = before["wan_errors"] + ROUNDS * len(ICMP_ERRORS)
    wait_until(lambda: m2.counters(name)["wan_errors"] >= expected, 20,
               f"{name} to count {expected} WAN errors")
    counters = m2.counters(name)
    assert counters["wan_errors"] == expected
    # Nothing to relay: no inner packet of a family this tunnel carries.
    assert counters["icmp_sent"] == before["icmp_sent"], counters

    # The same error about a packet the tunnel carries is relayed: what held the quotes
    # above back is their inner version.
    control = tunnel_datagram(mode, WAN["m2"], WAN["m1"], inner_packet(family))
    send(m1.ns, [("icmp", icmp_error(3, 1, control), WAN["m2"], 0)])
    wait_until(lambda: m2.counters(name)["icmp_sent"] == before["icmp_sent"] + 1, 20,
               f"{name} to relay host-unreachable about an IPv{family} packet")

    assert answers(m1.ns, INNER[family].format(2)) and answers(m2.ns, INNER[family].format(1))
    assert_survived(m1, m2)


# -- 2. the reflection: M1's kernel quotes a datagram spoofed from M2 ---------------------

DARK = "10.99.0.11"      # an address of M1 no router serves: its kernel answers for it
ATTACKER, M1_SIDE = "10.97.0.2", "10.97.0.1"
# The dark tunnels' own keys: a VNI of their own (GRE keys may repeat: the remote differs).
DARK_KEYS = {mode: {"id": 4243} if mode == "vxlan" else {} for mode in TUNNELS}


def test_unreachable_reflected_off_the_peer_quoting_a_version_5_packet_is_survived(netns,
                                                                                   tmp_path):
    m1_ns, m2_ns, attacker = netns("m1"), netns("m2"), netns("attacker")
    quiet(m2_ns)
    wan = join_wan(netns, m1_ns, m2_ns)
    m1_ns.ip("addr", "add", f"{DARK}/24", "dev", wan.a_name)
    side = netns.veth(attacker, m1_ns)
    attacker.ip("addr", "add", f"{ATTACKER}/24", "dev", side.a_name)
    m1_ns.ip("addr", "add", f"{M1_SIDE}/24", "dev", side.b_name)
    attacker.ip("route", "add", "default", "via", M1_SIDE)
    for key, value in ICMP_UNLIMITED.items():
        m1_ns.sysctl(key, value)
    for ns in (m1_ns, attacker):   # the spoofed source arrives from the wrong side
        ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
        ns.sysctl("net.ipv4.conf.default.rp_filter", 0)

    # M2 has, besides the tunnel in use, a tunnel of every mode to the dark address.
    dark = {f"dark-{mode}": tunnel_config(mode, WAN["m2"], DARK, None, **DARK_KEYS[mode])
            for mode in TUNNELS}
    m1 = Router.start(m1_ns, {"tunnels": {"gre1": tunnel_config("gre", WAN["m1"], WAN["m2"], 1)}},
                      tmp_path, "m1")
    m2 = Router.start(m2_ns, {"tunnels": {"gre1": tunnel_config("gre", WAN["m2"], WAN["m1"], 2)}
                              | dark}, tmp_path, "m2")
    wait_until(lambda: answers(m1_ns, M2_INSIDE), 20, "a ping through gre1")
    before = {name: m2.counters(name) for name in ("gre1", *dark)}

    spoofed = [("ip", tunnel_datagram(mode, WAN["m2"], DARK, inner_packet(5), **DARK_KEYS[mode]),
                DARK, 0) for mode in TUNNELS]
    send(attacker, spoofed, repeat=ROUNDS)

    def reflected() -> dict:
        return {name: m2.counters(name)["wan_errors"] - before[name]["wan_errors"]
                for name in dark}
    wait_until(lambda: all(count >= ROUNDS for count in reflected().values()), 20,
               f"every dark tunnel to count {ROUNDS} errors")
    assert reflected() == dict.fromkeys(dark, ROUNDS)
    for name in ("gre1", *dark):
        counters = m2.counters(name)
        assert counters["icmp_sent"] == before[name]["icmp_sent"], (name, counters)
    assert m2.counters("gre1")["wan_errors"] == before["gre1"]["wan_errors"]

    assert ping(m1_ns, M2_INSIDE) == 3
    assert_survived(m1, m2)


# -- 3. GRE sequence numbers --------------------------------------------------------------

FAR_AHEAD = 1 << 30


@pytest.fixture
def sequenced_pair(netns, tmp_path):
    """gre1 with key and sequence numbers between M1 and M2, a ping through it done."""
    return start_pair(netns, tmp_path, "gre", checksum=False)


def forged_gre(protocol: int, inner: bytes, *, key: int = 42, sequence: int = FAR_AHEAD) -> tuple:
    """A GRE datagram from M1's address to M2, to send from M1's namespace."""
    payload = gre(protocol, inner, key=key, sequence=sequence)
    return ("ip", ipv4(WAN["m1"], WAN["m2"], GRE, payload), WAN["m2"], 0)


def test_far_ahead_sequence_on_a_datagram_that_fails_other_checks_moves_nothing(
        sequenced_pair):
    m1, m2 = sequenced_pair
    before = m2.counters("gre1")
    good = inner_packet(4, 1, 2)
    forged = {"gre_unknown_protocol": forged_gre(0x88B5, good),
              "gre_wrong_key": forged_gre(0x0800, good, key=43),
              "inner_malformed": forged_gre(0x0800, claiming_more(good))}
    send(m1.ns, list(forged.values()), repeat=ROUNDS)
    wait_until(lambda: sum(drops_since(before, m2.counters("gre1")).values()) >=
               ROUNDS * len(forged), 20, "the forged datagrams to be counted")

    assert ping(m1.ns, M2_INSIDE, count=5) == 5
    status = m2.status("gre1")
    # Each dropped for what is wrong with it, and none of M1's own datagrams after them.
    assert drops_since(before, status["counters"]) == dict.fromkeys(forged, ROUNDS)
    assert status["sequence_epochs"] == 0, status
    assert_survived(m1, m2)


def test_forged_far_ahead_sequence_stalls_the_tunnel_for_a_short_run_at_most(sequenced_pair):
    m1, m2 = sequenced_pair
    before = m2.counters("gre1")
    send(m1.ns, [forged_gre(0x0800, inner_packet(4, 1, 2))])
    # Taken: from now on M1's own numbers are a billion behind.
    wait_until(lambda: m2.counters("gre1")["rx_packets"] > before["rx_packets"], 20,
               "the forged datagram to be taken")
    before = m2.counters("gre1")

    assert_followed_after_a_short_run(m1, m2, before)
    assert_survived(m1, m2)


def assert_followed_after_a_short_run(m1: Router, m2: Router, before: dict) -> None:
    """M1's numbers are far behind what M2 expects: NEW_EPOCH_RUN consecutive ones are M1
    numbering anew; the first ones of the run are lost, the one that completes it is
    taken, and so is all that follows."""
    pings, lost = 10, NEW_EPOCH_RUN - 1
    received = ping(m1.ns, M2_INSIDE, count=pings)
    status = m2.status("gre1")
    assert drops_since(before, status["counters"]) == {"gre_out_of_order": lost}, status
    assert status["sequence_epochs"] == 1, status
    assert received >= pings - lost
    assert ping(m1.ns, M2_INSIDE) == 3


@pytest.mark.parametrize("sent", [
    REORDER_WINDOW * 3,
    REORDER_WINDOW // 2,
], ids=lambda sent: f"after{sent}")
def test_peer_restarting_its_numbers_from_zero_is_followed_after_a_short_run(sequenced_pair,
                                                                             sent):
    m1, m2 = sequenced_pair
    assert ping(m1.ns, M2_INSIDE, count=sent, interval=0.005) == sent
    before = m2.counters("gre1")
    m1.stop()
    m1.start_again()
    assert_followed_after_a_short_run(m1, m2, before)
    assert_survived(m1, m2)


# -- 4. a storm -----------------------------------------------------------------------------

FLOOD_SECONDS = 3.0
STALL_SECONDS = 1.0


def test_storm_that_overflows_the_socket_then_echoes_unreachables_is_survived(netns,
                                                                              tmp_path):
    m1, m2 = start_pair(netns, tmp_path, "gre", sequence=False, checksum=False)
    for key, value in ICMP_UNLIMITED.items():
        m2.ns.sysctl(key, value)
    before, m1_sent_before = m2.counters("gre1"), m1.counters("gre1")["tx_packets"]

    # Small datagrams M2 must read and examine to the inner header before dropping them.
    flood = ("ip", ipv4(WAN["m1"], WAN["m2"], GRE,
                        gre(0x0800, claiming_more(inner_packet(4, 1, 2)), key=42)), WAN["m2"], 0)
    sender = start_sending(m1.ns, [flood], repeat=10 ** 7, seconds=FLOOD_SECONDS)
    # A router that falls behind: its queue fills whatever the machine's speed.
    time.sleep(FLOOD_SECONDS / 3)
    m2.process.send_signal(signal.SIGSTOP)
    time.sleep(STALL_SECONDS)
    m2.process.send_signal(signal.SIGCONT)
    flooded, failed = outcome(sender)
    wait_until(lambda: socket_queue(m2.ns, "raw", WAN["m2"], GRE)[0] == 0, 30,
               "M2 to read what its socket queued")
    _, overflowed = socket_queue(m2.ns, "raw", WAN["m2"], GRE)
    assert overflowed > 0, f"the flood of {flooded} never filled M2's socket queue"
    drops = drops_since(before, m2.counters("gre1"))
    assert set(drops) == {"inner_malformed"}, drops
    # Each datagram the socket kept is counted once, none twice. What the socket lost may
    # include datagrams of M1's own tunnel (its device's router solicitations and MLD
    # reports, at start-up), not only the flood's.
    m1_sent = m1.counters("gre1")["tx_packets"] - m1_sent_before
    assert drops["inner_malformed"] <= flooded + failed - overflowed + m1_sent, (
        drops, flooded, failed, overflowed, m1_sent)
    assert ping(m1.ns, M2_INSIDE) == 3

    # M2's router down: its kernel answers every datagram M1 sends with protocol-unreachable.
    m2.stop()
    m1_before = m1.counters("gre1")
    send(m1.ns, [("udp", b"x" * 32, M2_INSIDE, 9)], repeat=10 ** 7, seconds=2.0)
    wait_until(lambda: m1.counters("gre1")["wan_errors"] > m1_before["wan_errors"], 20,
               "M1 to hear of M2's protocol-unreachables")
    counters = m1.counters("gre1")
    relayed = counters["icmp_sent"] - m1_before["icmp_sent"]
    held_back = counters["icmp_rate_limited"] - m1_before["icmp_rate_limited"]
    errors = counters["wan_errors"] - m1_before["wan_errors"]
    # Each is relayed to the inner sender as host-unreachable, as far as the rate allows.
    assert relayed > 0 and relayed + held_back <= errors, counters

    m2.start_again()
    wait_until(lambda: answers(m1.ns, M2_INSIDE), 20, "a ping after M2's restart")
    assert_survived(m1, m2)


# -- 5. the FDB bound -----------------------------------------------------------------------

MAX_FDB = 1000
SOURCE_MACS = 20000
CHUNK = 2000      # well within what M2's socket queues, so that no frame is lost
GROWTH_LIMIT_KB = 50 * 1024


def rss_kb(router: Router) -> int:
    pid = router.process.pid   # ip netns exec execs the router: the same process
    assert "tunnelrouter" in Path(f"/proc/{pid}/cmdline").read_text()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_vxlan_fdb_stops_at_max_fdb_under_a_flood_of_source_macs(netns, tmp_path):
    m1, m2 = start_pair(netns, tmp_path, "vxlan", **{"max-fdb": MAX_FDB})
    before = m2.status("vx1")
    learnt_before = before["fdb_entries"]
    rss_before = rss_kb(m2)

    # From M1's address (a plain UDP socket there), to a MAC nobody has: M2 delivers the
    # frames to its TAP device, whose kernel drops them; only the source MAC is news.
    def frame(index: int) -> bytes:
        source = (0x020000000000 | 0x10000000 | index).to_bytes(6, "big").hex()
        return vxlan(4242, ethernet(b"\0" * 46, 0x88B5, dst=MAC_NOBODY, src=source))

    for start in range(0, SOURCE_MACS, CHUNK):
        frames = [("udp", frame(index), WAN["m2"], VXLAN_PORT)
                  for index in range(start, start + CHUNK)]
        assert send(m1.ns, frames) == CHUNK

        def seen(status: dict) -> int:
            return (status["fdb_entries"] - learnt_before + status["counters"]["fdb_full"]
                    - before["counters"]["fdb_full"])
        wait_until(lambda: seen(m2.status("vx1")) >= start + CHUNK, 30,
                   f"M2 to take {start + CHUNK} frames")

    status = m2.status("vx1")
    assert status["fdb_entries"] == MAX_FDB
    assert status["counters"]["fdb_full"] - before["counters"]["fdb_full"] == \
        SOURCE_MACS - (MAX_FDB - learnt_before)
    assert rss_kb(m2) - rss_before < GROWTH_LIMIT_KB

    tool = str(VENV_BIN / "tunnelrouter")
    text = m2.ns.run(tool, "show", "--socket", str(m2.control), timeout=30).stdout
    assert f"fdb: {MAX_FDB} entries, the first 100 shown" in text, text[:2000]
    assert len(re.findall(r"^  fdb (?:[0-9a-f]{2}:){5}[0-9a-f]{2} -> ", text, re.M)) == 100
    printed = json.loads(m2.ns.run(tool, "show", "--json", "--socket", str(m2.control),
                                   timeout=30).stdout)
    assert printed["tunnels"]["vx1"]["fdb_entries"] == MAX_FDB

    assert ping(m1.ns, M2_INSIDE) == 3
    assert_survived(m1, m2)
