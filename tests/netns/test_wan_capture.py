"""What two tunnelrouters put on the WAN, as an independent decoder (tshark) reads it.

Two routers run every mode at once (as in test_router_e2e); tcpdump captures
the WAN veth in M2's namespace while pings (IPv4 and IPv6 where carried) and
one TCP connection per tunnel address cross every tunnel. tshark then decodes
the capture with checksum validation on: nothing may be malformed, every
checksum it can check (outer IPv4, GRE, VXLAN's UDP, inner TCP/ICMP) must be
good, the expected encapsulations must appear with the configured keys/VNI,
GRE sequence numbers must increase, and the MSS in SYNs seen on the WAN must
fit the tunnel's MTU.

TX checksum offload is turned off on both WAN veth ends before the routers
start: otherwise checksums the kernel leaves to the "NIC" (VXLAN's UDP
socket) would appear unfinished in the capture, which a real NIC would finish.
"""

import json
import select
import subprocess

import pytest

from tests.netns.routers import VENV_BIN, WAN, capture, join_wan
from tests.netns.test_router_e2e import PINGS, start_pair
from tests.tshark import run_tshark, values

pytestmark = [pytest.mark.netns, pytest.mark.needs_binary("tshark", "tcpdump")]

FIELDS = [
    "frame.number", "frame.protocols", "ip.src", "ip.proto", "ip.checksum.status",
    "gre.flags.checksum", "gre.key", "gre.sequence_number", "gre.checksum.status",
    "gre.proto", "vxlan.flags", "vxlan.vni", "udp.checksum.status", "tcp.flags.syn",
    "tcp.options.mss_val", "tcp.checksum.status", "icmp.checksum.status",
    "icmpv6.checksum.status",
    "_ws.expert.message",  # last: free text
]
STATUS_FIELDS = ["ip.checksum.status", "gre.checksum.status", "udp.checksum.status",
                 "tcp.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status"]
GOOD = "1"

# Tunnel address each TCP connection goes to (in M2), and the IP header size inside.
TCP_TARGETS = [("gre1", "192.168.101.2"), ("gre1", "fd00:101::2"), ("tap1", "192.168.105.2"),
               ("vx1", "192.168.102.2"), ("vx1", "fd00:102::2"), ("ipip1", "192.168.103.2"),
               ("six1", "fd00:104::2")]
TCP_PORT = 5001
PAYLOAD = 4096
# The tunnel MTUs the brief of the router promises (the clamp: MSS <= MTU - 40 / - 60).
EXPECTED_MTU = {"gre1": 1464, "ipip1": 1480, "vx1": 1450, "six1": 1480}

SERVER = r"""
import select, socket, sys, time
listeners = []
for address in sys.argv[2:]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, int(sys.argv[1])))
    s.listen(4)
    listeners.append(s)
print("ready", flush=True)
deadline = time.monotonic() + 8
served = 0
while served < len(listeners) and time.monotonic() < deadline:
    ready, _, _ = select.select(listeners, [], [], 0.2)
    for s in ready:
        conn, _ = s.accept()
        conn.settimeout(3)
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(str(total).encode())
        conn.close()
        served += 1
"""

CLIENT = r"""
import json, socket, sys
results = {}
for address in sys.argv[3:]:
    try:
        with socket.create_connection((address, int(sys.argv[1])), timeout=3) as s:
            s.sendall(b"x" * int(sys.argv[2]))
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(100):
                reply += chunk
            results[address] = reply.decode()
    except OSError as error:
        results[address] = f"error: {error}"
print(json.dumps(results))
"""


def read_line(pipe, timeout: float) -> str:
    """One line from a Popen text pipe, or '' if none comes within ``timeout``."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    return pipe.readline() if ready else ""


def tunnel_of(frame: dict[str, str]) -> str | None:
    """Which of the routers' tunnels carried this WAN frame (None: not tunnel traffic)."""
    protocols = frame["frame.protocols"].split(":")
    if "vxlan" in protocols:
        return "vx1"
    if "gre" in protocols:
        keys = [int(key, 0) for key in values(frame, "gre.key")]  # tshark prints 0x0000002a
        return {(42,): "gre1", (7,): "tap1"}.get(tuple(keys), f"gre-keys-{keys}")
    proto = values(frame, "ip.proto")
    if proto[:1] == ["4"]:
        return "ipip1"
    if proto[:1] == ["41"]:
        return "six1"
    return None


def inner_protocols(frame: dict[str, str]) -> list[str]:
    """frame.protocols after the outer eth:ethertype:ip[:gre|:udp:vxlan]."""
    protocols = frame["frame.protocols"].split(":")
    assert protocols[:3] == ["eth", "ethertype", "ip"], protocols
    rest = protocols[3:]
    if rest[:1] == ["gre"]:
        return rest[1:]
    if rest[:2] == ["udp", "vxlan"]:
        return rest[2:]
    return rest


@pytest.fixture
def wan_routers(netns, tmp_path):
    """Two routers (M1, M2), WAN veth with TX checksum offload off on both ends."""
    m1, m2 = netns("m1"), netns("m2")
    wan = join_wan(netns, m1, m2)
    m1.run("ethtool", "-K", wan.a_name, "tx", "off")
    m2.run("ethtool", "-K", wan.b_name, "tx", "off")
    # Static neighbours: no ARP needed on the WAN while the capture runs.
    m1.ip("neigh", "replace", WAN["m2"], "lladdr", m2.mac(wan.b_name), "dev", wan.a_name)
    m2.ip("neigh", "replace", WAN["m1"], "lladdr", m1.mac(wan.a_name), "dev", wan.b_name)
    start_pair(m1, m2, tmp_path)
    return m1, m2, wan


def capture_traffic(m1, m2, wan, pcap) -> None:
    with capture(m2, wan.b_name, pcap):
        failed_pings, results, addresses = exchange_traffic(m1, m2)
    assert not failed_pings, f"no answer through: {failed_pings}"
    assert results == {address: str(PAYLOAD) for address in addresses}, results


def exchange_traffic(m1, m2):
    """Pings through every tunnel and one TCP connection per tunnel address, at once."""
    addresses = [address for _, address in TCP_TARGETS]
    server = m2.popen(str(VENV_BIN / "python"), "-c", SERVER, str(TCP_PORT), *addresses)
    assert read_line(server.stdout, 5).strip() == "ready", server.stderr.read()

    pings = [(tunnel, address, subprocess.Popen(
        m1.exec_args("ping", "-c", "3", "-i", "0.2", "-W", "2", address),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)) for tunnel, address in PINGS]
    client = m1.python(CLIENT, str(TCP_PORT), str(PAYLOAD), *addresses, timeout=30)
    failed_pings = [f"{tunnel} -> {address}" for tunnel, address, ping in pings
                    if ping.wait(timeout=10)]
    server.wait(timeout=10)
    return failed_pings, json.loads(client.stdout), addresses


def test_wan_capture_decodes_cleanly(wan_routers, tmp_path):
    m1, m2, wan = wan_routers
    mtu = {name: json.loads(m1.ip("-j", "link", "show", "dev", name).stdout)[0]["mtu"]
           for name in ("gre1", "tap1", "vx1", "ipip1", "six1")}
    for name, expected in EXPECTED_MTU.items():
        assert mtu[name] == expected, (name, mtu)

    pcap = tmp_path / "wan.pcap"
    capture_traffic(m1, m2, wan, pcap)
    frames = run_tshark(pcap, FIELDS, timeout=30)
    assert frames, "empty capture"

    problems = []
    by_tunnel: dict[str, list[dict[str, str]]] = {}
    for frame in frames:
        number = frame["frame.number"]
        if "malformed" in frame["frame.protocols"].lower():
            problems.append(f"#{number} malformed: {frame['frame.protocols']}")
        for message in values(frame, "_ws.expert.message"):
            lowered = message.lower()
            if "malformed" in lowered or ("checksum" in lowered and "bad" in lowered):
                problems.append(f"#{number} expert: {message}")
        for field in STATUS_FIELDS:
            for status in values(frame, field):
                if status != GOOD:
                    problems.append(f"#{number} {field}={status} in {frame['frame.protocols']}")
        tunnel = tunnel_of(frame)
        if tunnel:
            by_tunnel.setdefault(tunnel, []).append(frame)
    assert not problems, "\n".join(problems)
    assert set(by_tunnel) == {"gre1", "tap1", "vx1", "ipip1", "six1"}, sorted(by_tunnel)

    # gre1: key 42, checksummed (and checked good above), sequence numbers rising per sender.
    sequences: dict[str, list[int]] = {}
    for frame in by_tunnel["gre1"]:
        assert values(frame, "gre.flags.checksum") in (["1"], ["True"]), frame
        assert frame["gre.checksum.status"] == GOOD, frame
        assert values(frame, "gre.sequence_number"), frame
        sequences.setdefault(values(frame, "ip.src")[0], []).append(
            int(values(frame, "gre.sequence_number")[0]))
        assert inner_protocols(frame)[0] in ("ip", "ipv6"), frame
    assert set(sequences) == set(WAN.values()), sequences
    for sender, numbers in sequences.items():
        assert all(b > a for a, b in zip(numbers, numbers[1:])), (sender, numbers)
    assert {inner_protocols(f)[0] for f in by_tunnel["gre1"]} == {"ip", "ipv6"}

    # tap1: GRE key 7 carrying Ethernet (transparent Ethernet bridging, 0x6558).
    for frame in by_tunnel["tap1"]:
        assert values(frame, "gre.proto")[0].lower() in ("0x6558", "25944"), frame
        assert inner_protocols(frame)[:2] == ["eth", "ethertype"], frame
        assert not values(frame, "gre.sequence_number"), frame

    # vx1: VNI 4242, I flag, Ethernet inside, UDP checksum present and good.
    for frame in by_tunnel["vx1"]:
        assert values(frame, "vxlan.vni") == ["4242"], frame
        assert values(frame, "udp.checksum.status")[0] == GOOD, frame
        assert inner_protocols(frame)[:2] == ["eth", "ethertype"], frame
    assert {inner_protocols(f)[2] for f in by_tunnel["vx1"]} >= {"ip", "ipv6"}

    # ipip1: IPv4 in IPv4; six1: IPv6 in IPv4 (protocol 41).
    for frame in by_tunnel["ipip1"]:
        assert values(frame, "ip.proto")[:1] == ["4"] and inner_protocols(frame)[:1] == ["ip"]
    for frame in by_tunnel["six1"]:
        assert values(frame, "ip.proto")[:1] == ["41"] and inner_protocols(frame)[:1] == ["ipv6"]

    # Every TCP connection's SYN and SYN-ACK crossed the WAN with an MSS that fits the tunnel.
    syn_mss: dict[tuple[str, str], list[int]] = {}
    for tunnel, tunnel_frames in by_tunnel.items():
        for frame in tunnel_frames:
            if "tcp" not in frame["frame.protocols"].split(":"):
                continue
            inner = inner_protocols(frame)
            family = "ipv6" if "ipv6" in inner else "ip"
            if "1" in values(frame, "tcp.flags.syn") or "True" in values(frame, "tcp.flags.syn"):
                mss = values(frame, "tcp.options.mss_val")
                assert mss, f"SYN without MSS through {tunnel}: {frame}"
                syn_mss.setdefault((tunnel, family), []).extend(int(m) for m in mss)
    expected = {(tunnel, "ipv6" if ":" in address else "ip") for tunnel, address in TCP_TARGETS}
    assert set(syn_mss) == expected, sorted(syn_mss)
    for (tunnel, family), found in syn_mss.items():
        limit = mtu[tunnel] - (60 if family == "ipv6" else 40)
        # gretap/vxlan frames carry an inner Ethernet header that is not part of the MTU.
        assert len(found) >= 2 and max(found) <= limit, (tunnel, family, found, limit)
