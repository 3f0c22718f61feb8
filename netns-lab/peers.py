"""One line per peer from `tunnelrouter show --json` on stdin: what the router's keepalives
found (the state, the last round trip, answers) and when the peer's latest packet came.
Exits 1 if a peer is not up."""

import json
import sys
import time

router = sys.argv[1]
status, now = json.load(sys.stdin), time.time()
all_up = True
for tunnel, body in status["tunnels"].items():
    live = body["liveness"]
    all_up &= live["state"] == "up"
    rtt = "-" if live["rtt"] is None else f"{live['rtt'] * 1000:.2f} ms"
    for peer, heard in live["peers"].items():
        latest = "never" if heard["latest_rx"] is None else f"{now - heard['latest_rx']:.1f} s ago"
        print(f"{router}  {tunnel:<6} peer {peer:<10}  {live['state']:<7}  keepalive round trip "
              f"{rtt:<9}  {live['probes_answered']}/{live['probes_sent']} answered  "
              f"latest packet {latest}")
sys.exit(0 if all_up else 1)
