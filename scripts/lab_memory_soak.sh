#!/usr/bin/env bash
# Memory soak: 64-byte UDP through the running lab's ipip1 (make lab first) until M1 has sent
# 10 million packets; prints both routers' RSS every 30 s. The target: no growth.
# Another tunnel: TUNNEL=vx1 (or gre1), which carries hostB's 10.2.2.0/24 (10.2.1.0/24).
set -u
cd "$(dirname "$0")/.."
P=trt-lab
TUNNEL=${TUNNEL:-ipip1}
case $TUNNEL in gre1) n=1;; vx1) n=2;; ipip1) n=3;; *) echo "TUNNEL: gre1, vx1 or ipip1" >&2; exit 2;; esac
M1=$(cat netns-lab/run/m1.pid); M2=$(cat netns-lab/run/m2.pid)
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
tx() { ip netns exec $P-m1 .venv/bin/tunnelrouter show --json --socket netns-lab/run/m1.sock | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tunnels"]["'"$TUNNEL"'"]["counters"]["tx_packets"])'; }
echo "start: m1 $(rss $M1) kB, m2 $(rss $M2) kB, $TUNNEL tx $(tx)"
ip netns exec $P-hostb iperf3 -s -D -p 5301 >/dev/null 2>&1; sleep 0.3
for i in $(seq 1 40); do
  ip netns exec $P-hosta iperf3 -c 10.2.$n.1 -B 10.1.$n.1 -p 5301 -u -l 64 -b 0 -t 30 >/dev/null 2>&1
  sent=$(tx); echo "round $i: m1 $(rss $M1) kB, m2 $(rss $M2) kB, $TUNNEL tx $sent"
  [ "$sent" -gt 10000000 ] && break
done
pkill -f "iperf3 -s -D -p 5301"
