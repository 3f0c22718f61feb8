"""Does the kernel's GRO join GRE datagrams before a raw socket reads them? (It does.)

Two namespaces joined by a veth pair: the receiving end has GRO on and threaded NAPI, and
the sender and the NAPI thread share one CPU, so that datagrams wait for the poll together
as they do behind a busy NIC. A raw socket in the sender's namespace sends 40 GRE datagrams
(with and without a key) of one TCP stream, 1400 bytes of payload each; a raw GRE socket
in the receiver's namespace prints the sizes it reads. Joined datagrams are why the router
takes a long inner TCP packet whose checksum field holds the pseudo-header sum as a
super-packet (tunnelrouter/tunnel/endpoint.py, ``_merged_by_gro``).

Usage, as root: ``.venv/bin/python scripts/raw_gro_merge.py``. Prints, for example,
``no key: 1476 46276 1476 ...`` (a 46 KB datagram: 31 datagrams joined) or ``key: 1480
2880 1480 ...`` (two joined): how many the poll finds together varies from run to run.
"""

import os
import subprocess
import sys
import time

SENDER, RECEIVER = f"trt-gro-send-{os.getpid()}", f"trt-gro-recv-{os.getpid()}"

SEND = r'''
import socket, sys
from scapy.layers.inet import GRE, IP, TCP
keyed = sys.argv[1] == "1"
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
seq = 1000
for k in range(40):
    inner = (IP(src="10.1.1.1", dst="10.2.1.1", id=k, flags="DF")
             / TCP(sport=4000, dport=5201, seq=seq, ack=1, flags="A",
                   options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
             / (bytes([k]) * 1400))
    seq += 1400
    gre = GRE(key_present=1, key=7, proto=0x0800) if keyed else GRE(proto=0x0800)
    sock.sendto(bytes(IP(src="10.77.0.1", dst="10.77.0.2", id=k, flags="DF", proto=47)
                      / gre / inner), ("10.77.0.2", 0))
'''

RECEIVE = r'''
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
sock.settimeout(2)
sizes = []
try:
    while True:
        sizes.append(len(sock.recv(1 << 17)))
except socket.timeout:
    pass
print(" ".join(map(str, sizes)))
'''


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def main() -> int:
    run("ip", "netns", "add", SENDER)
    try:
        run("ip", "netns", "add", RECEIVER)
        run("ip", "link", "add", "gro-s", "netns", SENDER, "type", "veth", "peer", "gro-r",
            "netns", RECEIVER)
        for ns, dev, address in ((SENDER, "gro-s", "10.77.0.1/24"),
                                 (RECEIVER, "gro-r", "10.77.0.2/24")):
            run("ip", "-n", ns, "addr", "add", address, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "netns", "exec", SENDER, "ethtool", "-K", "gro-s", "tso", "off", "gso", "off")
        run("ip", "netns", "exec", RECEIVER, "ethtool", "-K", "gro-r", "gro", "on")
        run("ip", "netns", "exec", RECEIVER, "sh", "-c", "echo 1 > /sys/class/net/gro-r/threaded")
        threads = subprocess.run(["pgrep", "napi/gro-r"], capture_output=True, text=True)
        for pid in threads.stdout.split():
            subprocess.run(["taskset", "-p", "1", pid], check=True, capture_output=True)
        for keyed in ("0", "1"):
            receiver = subprocess.Popen(["ip", "netns", "exec", RECEIVER, sys.executable, "-c",
                                         RECEIVE], stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            run("taskset", "1", "ip", "netns", "exec", SENDER, sys.executable, "-c", SEND, keyed)
            print("key:" if keyed == "1" else "no key:", receiver.communicate()[0].strip())
    finally:
        for ns in (SENDER, RECEIVER):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
