"""``workers: 2`` with real devices and sockets: the kernel spreads flows over the workers, a
flow's two ways meet in one worker, the counters add up, and a reload changes the count.

M1 and M2 run tunnelrouter with vx1 (VXLAN), gre1 (GRE with a key) and seq1 (GRE with
sequence numbers: one queue). Sixteen UDP flows cross vx1 from M1 to a receiver on M2;
every datagram arrives, each router's tunnel counts them once whichever worker did, and
both workers of both routers carried some. The programs that choose a worker by inner
flow are judged by the kernel itself: frames of many flows, and their replies, sent to a
SO_REUSEPORT group; and the flows a TUN or TAP device's steering program gives to each
queue are the ones whose replies the socket group gives to the same worker.
"""

import json
import signal
import textwrap

import pytest
import yaml

from tests.netns.routers import WAN, join_wan, show, start_router, wait_for, wait_until

pytestmark = pytest.mark.netns

FLOWS, PER_FLOW = 16, 50
RECEIVER_PORT = 9000


def config(me: str, peer: str, side: int, workers: int) -> dict:
    return {"workers": workers, "tunnels": {
        "vx1": {"mode": "vxlan", "local": WAN[me], "remotes": [WAN[peer]], "id": 42,
                "addresses": [f"192.168.102.{side}/24"]},
        "gre1": {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 7,
                 "addresses": [f"192.168.101.{side}/24"]},
        "seq1": {"mode": "gre", "local": WAN[me], "remote": WAN[peer], "key": 8,
                 "sequence": True, "addresses": [f"192.168.103.{side}/24"]}}}


@pytest.fixture
def pair(netns, tmp_path):
    m1, m2 = netns("m1"), netns("m2")
    join_wan(netns, m1, m2)
    routers = {}
    for ns, me, peer, side in ((m1, "m1", "m2", 1), (m2, "m2", "m1", 2)):
        process, control = start_router(ns, config(me, peer, side, 2), tmp_path, me)
        routers[me] = (ns, process, control)
    for _, process, control in routers.values():
        wait_for(control, process)
    return routers


def queues(ns, device: str) -> int:
    (link,) = json.loads(ns.ip("-d", "-j", "link", "show", "dev", device).stdout)
    return link["linkinfo"]["info_data"].get("numqueues", 1) \
        if link["linkinfo"]["info_data"].get("multi_queue") else 1


SEND = textwrap.dedent(f"""
    import socket, time
    for flow in range({FLOWS}):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("192.168.102.1", 20000 + 2 * flow))   # even ports, as connect() gives
        for _ in range({PER_FLOW}):
            sock.sendto(bytes(100), ("192.168.102.2", {RECEIVER_PORT}))
            time.sleep(0.0005)   # counting, not a burst: no queue on the way may overflow
        sock.close()
""")

RECEIVE = textwrap.dedent(f"""
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("192.168.102.2", {RECEIVER_PORT}))
    sock.settimeout(5)
    print("ready", flush=True)
    got = 0
    try:
        while got < {FLOWS * PER_FLOW}:
            sock.recv(2048)
            got += 1
    except socket.timeout:
        pass
    print(got, flush=True)
""")


def test_flows_spread_over_both_workers_and_the_counters_add_up(pair):
    (m1, _, control1), (m2, _, control2) = pair["m1"], pair["m2"]
    assert [queues(m1, name) for name in ("vx1", "gre1", "seq1")] == [2, 2, 1]
    for ns, peer in ((m1, "192.168.102.2"), (m1, "192.168.101.2"), (m1, "192.168.103.2")):
        ns.run("ping", "-c", "1", "-W", "3", peer)   # every tunnel carries (ARP done, too)
    before = {name: show(control)["tunnels"]["vx1"]["counters"]
              for name, control in (("m1", control1), ("m2", control2))}
    receiver = m2.popen(str(__import__("sys").executable), "-c", RECEIVE)
    assert receiver.stdout.readline().strip() == "ready"
    m1.python(SEND)
    out, _ = receiver.communicate(timeout=30)
    assert int(out.split()[-1]) == FLOWS * PER_FLOW
    sent = show(control1)["tunnels"]["vx1"]["counters"]
    received = show(control2)["tunnels"]["vx1"]["counters"]
    assert sent["tx_packets"] - before["m1"]["tx_packets"] >= FLOWS * PER_FLOW
    assert received["rx_packets"] - before["m2"]["rx_packets"] >= FLOWS * PER_FLOW
    for control in (control1, control2):
        status = show(control)
        workers = status["workers"]
        assert len(workers) == 2 and status["internal_errors"] == 0
        # The sender's flows leave by both queues; the receiver's socket group gives them to
        # both workers (by inner flow: every datagram has the same outer ports).
        key = "device_packets" if control is control1 else "wire_datagrams"
        assert all(worker[key] >= FLOWS * PER_FLOW // 8 for worker in workers), workers


def test_a_reload_to_one_worker_remakes_the_devices_and_the_tunnels_carry_on(pair, tmp_path):
    for me, peer, side in (("m1", "m2", 1), ("m2", "m1", 2)):
        ns, process, control = pair[me]
        (tmp_path / f"{me}.yaml").write_text(yaml.safe_dump(config(me, peer, side, 1)))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: show(control)["config"]["generation"] == 2, 10, f"{me} reloaded")
        assert show(control)["config"]["last_reload"]["changes"][0] == "workers: 2 -> 1"
        assert len(show(control)["workers"]) == 1
    m1 = pair["m1"][0]
    assert [queues(m1, name) for name in ("vx1", "gre1", "seq1")] == [1, 1, 1]
    for peer in ("192.168.102.2", "192.168.101.2", "192.168.103.2"):
        assert m1.run("ping", "-c", "1", "-W", "3", peer, check=False).returncode == 0, peer


# A SO_REUSEPORT group of three sockets on 127.0.0.1:4789, spread by inner flow as a
# router's are, and which of them takes a VXLAN datagram carrying an IP packet.
SOCKET_GROUP = textwrap.dedent("""
    import os, socket, struct, subprocess, time
    from tunnelrouter.io.udp_socket import UdpSocket
    WORKERS = 3
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    group = [UdpSocket.open("127.0.0.1", 4789, link_header=22, ethernet=True, shared=True)
             for _ in range(WORKERS)]
    group[0].spread(WORKERS)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def socket_of(packet):
        ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
        sender.sendto(b"\\x08\\0\\0\\0\\0\\0\\x2a\\0" + bytes(12) + struct.pack("!H", ethertype)
                      + packet, ("127.0.0.1", 4789))
        time.sleep(0.002)
        for index, sock in enumerate(group):
            try:
                sock.sock.recv(2048)
                return index
            except BlockingIOError:
                pass
""")

INNER_FLOW_CHOICE = SOCKET_GROUP + textwrap.dedent("""
    def packet(src, dst, sport, dport, v6):
        if v6:
            ip = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + src + dst
        else:
            ip = struct.pack("!BBHHHBBH", 0x45, 0, 28, 0, 0, 64, 17, 0) + src + dst
        return ip + struct.pack("!HHHH", sport, dport, 8, 0)

    choices = []
    for v6 in (False, True):
        a = bytes(range(16)) if v6 else bytes([10, 0, 0, 1])
        b = bytes(range(16, 32)) if v6 else bytes([10, 0, 0, 2])
        for flow in range(48):
            port = 32768 + 2 * flow   # even: what connect() gives
            choices.append((socket_of(packet(a, b, port, 443, v6)),
                            socket_of(packet(b, a, 443, port, v6))))
    print(choices)
""")


def test_the_kernel_gives_each_inner_flow_and_its_replies_to_one_socket(netns):
    ns = netns("bpf")
    out = ns.python(INNER_FLOW_CHOICE).stdout
    choices = eval(out)   # noqa: S307 - our own script's repr of a list of pairs
    assert all(there == back and there is not None for there, back in choices), choices
    for family in (choices[:48], choices[48:]):
        taken = [there for there, _ in family]
        assert all(taken.count(index) >= 6 for index in range(3)), taken


DEVICE_AND_SOCKET_AGREE = SOCKET_GROUP + textwrap.dedent("""
    from tunnelrouter.io.device import TunTapDevice
    from tunnelrouter.io.steering import load_steering

    def reply_to(packet):
        # Addresses and ports swapped: what the far end answers.
        if packet[0] >> 4 == 4:
            return packet[:12] + packet[16:20] + packet[12:16] + packet[22:24] + \\
                packet[20:22] + packet[24:28]
        return packet[:8] + packet[24:40] + packet[8:24] + packet[42:44] + packet[40:42] + \\
            packet[44:48]

    pairs = []
    for ethernet, name, ours, far, family in (
            (False, "st0", "10.8.0.1", "10.8.0.2", socket.AF_INET),
            (False, "st0", "fd08::1", "fd08::2", socket.AF_INET6),
            (True, "st1", "10.9.0.1", "10.9.0.2", socket.AF_INET)):
        if name == "st0" and family == socket.AF_INET6:
            queues = tun
        else:
            queues = TunTapDevice.open(name, ethernet, False, WORKERS)
            queues[0].steer(load_steering(14 if ethernet else 0, WORKERS, ethernet))
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
            if ethernet:
                subprocess.run(["ip", "neigh", "add", far, "lladdr", "02:00:00:00:00:02",
                                "dev", name], check=True)
            else:
                tun = queues
        prefix = "64" if family == socket.AF_INET6 else "24"
        subprocess.run(["ip", "addr", "add", f"{ours}/{prefix}", "dev", name, "nodad"],
                       check=True)
        for flow in range(48):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((ours, 32768 + 2 * flow))
            sock.sendto(b"x", (far, 443))
            sock.close()
        time.sleep(0.2)
        link = 14 if ethernet else 0
        for index, queue in enumerate(queues):
            while True:
                try:
                    data = os.read(queue.fd, 65536)[10 + link:]   # behind the virtio-net header
                except BlockingIOError:
                    break
                header = 20 if data[0] >> 4 == 4 else 40
                if data[header + 2:header + 4] == struct.pack("!H", 443):
                    pairs.append((name, data[0] >> 4, index, socket_of(reply_to(data))))
    print(pairs)
""")


def test_a_device_gives_a_flow_to_the_queue_whose_worker_takes_its_replies(netns):
    ns = netns("steer")
    pairs = eval(ns.python(DEVICE_AND_SOCKET_AGREE).stdout)   # noqa: S307 - our own output
    assert len(pairs) == 3 * 48, pairs
    assert all(queue == taker for _, _, queue, taker in pairs), pairs
    for kind in {(name, version) for name, version, _, _ in pairs}:
        queues = [queue for name, version, queue, _ in pairs if (name, version) == kind]
        assert all(queues.count(index) >= 6 for index in range(3)), (kind, queues)
