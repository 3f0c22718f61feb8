"""tunnelrouter's VXLAN against the host kernel's own VXLAN driver (a real, independent VTEP).

Namespace M1 runs tunnelrouter with one vxlan tunnel (VNI 42); namespace M2 has
a kernel ``vxlan`` device with the same VNI, flooding to M1. ARP and neighbour
discovery cross the tunnel, pings go both ways over IPv4 and IPv6, and a TCP
stream of about 1 MB goes each way. tunnelrouter must count what it sent and
received, drop nothing, and learn the kernel device's MAC in its FDB.

The kernel sends from a hashed source port and listens on 4789 only, so this
also checks that tunnelrouter answers to the configured port, not to the
datagram's source port.

With remote checksum offload agreed on both sides (the kernel's ``udpcsum
remcsumtx remcsumrx``, tunnelrouter's ``remote-checksum-tx/-rx``), the same
transfer goes with the inner checksums left to the receiver each way, as a
capture of the WAN shows, and each one tunnelrouter left is the one that
finishes into the checksum scapy computes.
"""

import hashlib
import json

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from encap.checksum import internet_checksum
from encap.vxlan import FLAG_REMOTE_CHECKSUM, remote_checksum

from tests.netns.routers import VENV_BIN, WAN, capture, show, start_router, wait_for, without_dad

pytestmark = pytest.mark.netns

INNER = {"m1": ("192.168.42.1", "fd00:42::1"), "m2": ("192.168.42.2", "fd00:42::2")}
TUNNEL = "vx42"
TRANSFER = 1 << 20

# Receives TRANSFER bytes, then sends TRANSFER bytes of its own back; prints the digest
# of what it received. Bounded by socket timeouts.
SERVER = r"""
import hashlib, socket, sys
size = int(sys.argv[2])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], 5001))
listener.listen(1)
listener.settimeout(15)
print("listening", flush=True)
conn, _ = listener.accept()
conn.settimeout(15)
digest, got = hashlib.sha256(), 0
while got < size:
    chunk = conn.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    got += len(chunk)
conn.sendall(bytes((i * 7) & 0xFF for i in range(size)))
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
print(got, digest.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, socket, sys
size = int(sys.argv[2])
data = bytes((i * 13) & 0xFF for i in range(size))
conn = socket.create_connection((sys.argv[1], 5001), timeout=15)
conn.sendall(data)
digest, got = hashlib.sha256(), 0
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    got += len(chunk)
conn.close()
print(hashlib.sha256(data).hexdigest(), got, digest.hexdigest(), flush=True)
"""


def kernel_vxlan_and_router(netns, tmp_path, remote_checksum: bool = False):
    m1, m2 = netns("m1"), netns("m2")
    wan = netns.veth(m1, m2)
    for ns, end, address in ((m1, wan.a_name, WAN["m1"]), (m2, wan.b_name, WAN["m2"])):
        ns.ip("addr", "add", f"{address}/24", "dev", end)
        without_dad(ns)
    # A kernel stack sending over veth leaves UDP checksums to "hardware": finish them
    # in software so what tunnelrouter's socket receives is exactly what a NIC would send.
    m2.run("ethtool", "-K", wan.b_name, "tx", "off")
    if remote_checksum:
        # A capture in M2 is to show datagrams as they crossed the wire: M1 sends them one
        # by one (no GSO datagrams over veth), and M2's GRO does not join them.
        m1.run("ethtool", "-K", wan.a_name, "tx", "off")
        m2.run("ethtool", "-K", wan.b_name, "gro", "off")

    m2.ip("link", "add", "vx0", "type", "vxlan", "id", "42", "local", WAN["m2"],
          "dstport", "4789", "srcport", "49152", "49160", "dev", wan.b_name,
          *(("udpcsum", "remcsumtx", "remcsumrx") if remote_checksum else ()))
    m2.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", WAN["m1"])
    m2.ip("addr", "add", f"{INNER['m2'][0]}/24", "dev", "vx0")
    m2.ip("addr", "add", f"{INNER['m2'][1]}/64", "dev", "vx0", "nodad")
    m2.ip("link", "set", "vx0", "up")

    process, control = start_router(m1, {"tunnels": {TUNNEL: {
        "mode": "vxlan", "id": 42, "local": WAN["m1"], "remotes": [WAN["m2"]],
        "addresses": [f"{INNER['m1'][0]}/24", f"{INNER['m1'][1]}/64"],
        "remote-checksum-tx": remote_checksum, "remote-checksum-rx": remote_checksum}}},
        tmp_path, "m1")
    wait_for(control, process)
    return m1, m2, process, control, wan


@pytest.fixture
def vxlan_pair(netns, tmp_path):
    return kernel_vxlan_and_router(netns, tmp_path)[:4]


def ping(ns, address: str) -> None:
    result = ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", address, check=False, timeout=15)
    assert result.returncode == 0, f"{ns} -> {address}:\n{result.stdout}{result.stderr}"


def test_pings_both_ways_with_kernel_vxlan(vxlan_pair):
    m1, m2, process, control = vxlan_pair
    for v in (0, 1):
        ping(m1, INNER["m2"][v])
        ping(m2, INNER["m1"][v])
    assert process.poll() is None

    status = show(control)
    tunnel = status["tunnels"][TUNNEL]
    counters = tunnel["counters"]
    assert counters["tx_packets"] >= 12 and counters["rx_packets"] >= 12, counters
    assert not counters["drops"], counters["drops"]
    assert not status["unattributed"], status["unattributed"]
    # The kernel device's MAC was learnt behind M2's underlay address.
    kernel_mac = m2.mac("vx0")
    fdb = {entry["mac"]: entry for entry in tunnel["fdb"]}
    assert kernel_mac in fdb, (kernel_mac, tunnel["fdb"])
    assert fdb[kernel_mac]["remote"] == WAN["m2"] and not fdb[kernel_mac]["static"]

    # And the kernel learnt tunnelrouter's TAP MAC behind M1's underlay address.
    entries = json.loads(m2.run("bridge", "-j", "fdb", "show", "dev", "vx0").stdout)
    router_mac = m1.mac(TUNNEL)
    assert any(e.get("mac") == router_mac and e.get("dst") == WAN["m1"] for e in entries), entries


def transfer_megabyte_each_way(m1, m2, process, control):
    server = m2.popen(str(VENV_BIN / "python"), "-c", SERVER, INNER["m2"][0], str(TRANSFER))
    assert server.stdout.readline().strip() == "listening", server.stderr.read()
    client = m1.run(str(VENV_BIN / "python"), "-c", CLIENT, INNER["m2"][0], str(TRANSFER),
                    timeout=30)
    sent_digest, got, got_digest = client.stdout.split()
    out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    server_got, server_digest = out.split()
    assert int(server_got) == TRANSFER and server_digest == sent_digest
    expected = hashlib.sha256(bytes((i * 7) & 0xFF for i in range(TRANSFER))).hexdigest()
    assert int(got) == TRANSFER and got_digest == expected

    counters = show(control)["tunnels"][TUNNEL]["counters"]
    # ~1 MB each way in frames of at most 1450 bytes.
    assert counters["rx_bytes"] > TRANSFER and counters["tx_bytes"] > TRANSFER, counters
    assert not counters["drops"], counters["drops"]
    assert process.poll() is None


def test_tcp_megabyte_each_way_through_kernel_vxlan(vxlan_pair):
    # Server in M2 (behind the kernel VTEP), client in M1 (behind tunnelrouter).
    transfer_megabyte_each_way(*vxlan_pair)


def test_remote_checksum_offload_each_way_with_kernel_vxlan(netns, tmp_path):
    m1, m2, process, control, wan = kernel_vxlan_and_router(netns, tmp_path, True)
    with capture(m2, wan.b_name, tmp_path / "wan.pcap", "udp port 4789") as pcap:
        transfer_megabyte_each_way(m1, m2, process, control)
    left = {WAN["m1"]: 0, WAN["m2"]: 0}
    checked = 0
    for frame in rdpcap(str(pcap)):
        if VXLAN not in frame or TCP not in frame[VXLAN]:
            continue
        header = bytes(frame[VXLAN])[:8]
        if not int.from_bytes(header[:4], "big") & FLAG_REMOTE_CHECKSUM:
            continue
        left[frame[IP].src] += 1
        inner = bytes(frame[VXLAN].payload)
        start, offset = remote_checksum(header)
        segment = Ether(inner)
        assert start == len(inner) - len(bytes(segment[TCP])) and offset == 16, (start, offset)
        if frame[IP].src == WAN["m1"] and checked < 200:
            # What tunnelrouter left, finished as the kernel would (the sum from start on,
            # the field holding the pseudo-header sum), is what scapy computes.
            del segment[TCP].chksum
            assert internet_checksum(inner[start:]) == Ether(bytes(segment))[TCP].chksum
            assert frame[UDP].chksum   # the outer UDP checksum guards the whole
            checked += 1
    # Most of the megabyte went in segments whose checksum was left to the receiver.
    assert left[WAN["m1"]] > 300 and left[WAN["m2"]] > 300, left
    assert checked > 100
