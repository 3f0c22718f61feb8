"""Micro-benchmark of the receive path's core: ``Demux.decapsulate`` on a full batch.

What the router does per datagram from the wire between the socket read and the device
write (the demultiplexer's key, the codec's checks, RFC 6040, the MSS check, and the
tunnel's receive policy: ``allowed-ips`` and ``rate-limit``), timed per datagram for
64-datagram batches of 100-byte inner packets, with each policy off and on. The datagrams
are made by a second endpoint, the peer, so the bytes are what a peer sends.

Timing: ``time.perf_counter_ns`` around a loop of calls, calibrated to ~0.2 s a repeat,
garbage collection off, best of 7 repeats, the rows interleaved repeat by repeat so that
machine noise hits them alike. Read the ratios to the ``off`` row of the same run; runs
on this shared machine differ by 10-20 %.

Usage: ``scripts/bench_decap.py [--quick]``. Rows whose keys this tree does not know
(an older tree, for a before/after comparison) are left out.
"""

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnelrouter.config import ConfigError, parse_config  # noqa: E402
from tunnelrouter.modes import Underlay  # noqa: E402
from tunnelrouter.tunnel.endpoints import endpoint_for  # noqa: E402
from tunnelrouter.tunnel.batch import Batch  # noqa: E402
from tunnelrouter.tunnel.demux import Demux  # noqa: E402

LOCAL, REMOTE = "10.0.0.1", "10.0.0.2"
BATCH = 64
HOST_A, HOST_B = bytes([192, 168, 1, 10]), bytes([192, 168, 2, 20])
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")

BODIES = {
    "gre": {"mode": "gre", "key": 42},
    "ipip": {"mode": "ipip"},
    "vxlan": {"mode": "vxlan", "id": 42},
}
POLICIES = {
    "off": {},
    "allowed-ips 0.0.0.0/0": {"allowed-ips": ["0.0.0.0/0"]},
    "allowed-ips 1 prefix": {"allowed-ips": ["192.168.1.0/24"]},
    "allowed-ips 8 prefixes": {"allowed-ips": [f"192.168.{n}.0/24" for n in range(15, 0, -2)]},
    "allowed-ips 1000 prefixes": {"allowed-ips": [f"172.{16 + n // 256}.{n % 256}.0/24"
                                                  for n in range(999)] + ["192.168.1.0/24"]},
    "rate-limit": {"rate-limit": {"packets": 10 ** 9, "bytes": 10 ** 12}},
    "both (1 prefix)": {"allowed-ips": ["192.168.1.0/24"],
                        "rate-limit": {"packets": 10 ** 9, "bytes": 10 ** 12}},
}


def ipv4_packet(size: int = 100) -> bytes:
    header = bytearray(b"\x45\x00" + size.to_bytes(2, "big") + b"\x00\x07\x40\x00\x40\x11"
                       + b"\x00\x00" + HOST_A + HOST_B)
    checksum = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2))
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    header[10:12] = (~checksum & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + b"\x00\x01\x00\x02" + (size - 24).to_bytes(2, "big") + bytes(size - 26)


def config(mode: str, policy: dict, local: str, remote: str):
    body = dict(BODIES[mode], local=local, **policy)
    body["remotes" if mode == "vxlan" else "remote"] = [remote] if mode == "vxlan" else remote
    return parse_config({"tunnels": {"t0": body}}).tunnels["t0"]


def wire_batch(mode: str):
    """64 datagrams as the receiving socket leaves them, made by the peer's endpoint."""
    peer = endpoint_for(config(mode, {}, REMOTE, LOCAL))
    packet = ipv4_packet()
    if peer.ethernet:
        packet = MAC_B + MAC_A + b"\x08\x00" + packet
    sending = Batch(BATCH).fill_from_device([packet] * BATCH)
    peer.encapsulate(sending, 0.0)
    datagrams = [bytes(sending.packets[i]) for i in range(BATCH)]
    raw = peer.mode.underlay is Underlay.RAW
    return Batch(BATCH).fill_from_wire(datagrams, [REMOTE] * BATCH,
                                       [20 if raw else 0] * BATCH)


def timer(mode: str, policy: dict):
    try:
        receiver = config(mode, policy, LOCAL, REMOTE)
    except ConfigError:
        return None   # a key this tree does not have
    demux = Demux(receiver.kind)
    demux.add(endpoint_for(receiver))
    batch = wire_batch(mode)
    decapsulate = demux.decapsulate
    decapsulate(batch, 1.0)
    if sum(1 for target in batch.endpoints[:BATCH] if target is not None) != BATCH:
        raise SystemExit(f"{mode} {policy}: not every datagram was delivered")

    def run(loops: int, clock: list) -> int:
        now = clock[0]
        start = time.perf_counter_ns()
        for _ in range(loops):
            now += 0.001
            decapsulate(batch, now)
        clock[0] = now
        return time.perf_counter_ns() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of ~0.05 s")
    args = parser.parse_args()
    repeats, target = (3, 0.05e9) if args.quick else (7, 0.2e9)
    rows = {}
    for mode in BODIES:
        for name, policy in POLICIES.items():
            run = timer(mode, policy)
            if run is not None:
                rows[mode, name] = [run, [0.0], 1, []]
    gc.disable()
    try:
        for row in rows.values():
            while row[0](row[2], row[1]) < target / 4:
                row[2] *= 2
            row[2] *= 4
        for _ in range(repeats):
            for row in rows.values():
                row[3].append(row[0](row[2], row[1]) / (row[2] * BATCH))
    finally:
        gc.enable()
    print(f"{'mode':6} {'policy':26} {'ns/datagram':>12} {'x off':>7}")
    for (mode, name), row in rows.items():
        best = min(row[3])
        off = min(rows[mode, "off"][3])
        print(f"{mode:6} {name:26} {best:12.0f} {best / off:7.3f}")


if __name__ == "__main__":
    main()
