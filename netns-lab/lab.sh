#!/usr/bin/env bash
# The tunnelrouter namespace lab:  hostA — M1 — WAN1 ==middle== WAN2 — M2 — hostB
#
#   lab.sh up [MTU]  tear down any old lab, build a new one whose middle WAN link has this
#                    MTU (default 1500), start both routers, test it
#   lab.sh test      ping, measure and load every tunnel of a running lab again
#   lab.sh mtu N     set the middle WAN link's MTU on the running lab (the routers are
#                    not told: they learn it from ICMP, and forget it after pmtu-timeout)
#   lab.sh down      stop every lab process and delete every trt-lab-* namespace
#
# Everything lives in namespaces named trt-lab-*; every veth is created inside them, so
# deleting the namespaces removes every link. Nothing outside them is touched.
# Run as root. See netns-lab/README.md for the addressing plan.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/.." && pwd)
RUN="$LAB_DIR/run"
TR="$REPO/.venv/bin/tunnelrouter"
PREFIX=trt-lab
NAMESPACES=("$PREFIX-hosta" "$PREFIX-m1" "$PREFIX-wan1" "$PREFIX-wan2" "$PREFIX-m2" "$PREFIX-hostb")
FULL_MTU=1500          # every link but the middle one
TRANSFER=10M           # bytes each way per tunnel in the black-hole check
TRANSFER_TIMEOUT=20    # seconds: a transfer that takes longer counts as a black hole
METRICS=127.0.0.1:9477 # metrics: in m1.yaml and m2.yaml, each on its namespace's loopback

# mode | tunnel device | hostA source | hostB destination | encapsulation overhead
# (gre1 has key, checksum and sequence: 24 + 3 * 4)
TESTS=(
  "gre   gre1  10.1.1.1 10.2.1.1 36"
  "vxlan vx1   10.1.2.1 10.2.2.1 50"
  "ipip  ipip1 10.1.3.1 10.2.3.1 20"
  "sit   six1  fd01::1  fd02::1  20"
)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
in_ns() { local ns="$PREFIX-$1"; shift; ip netns exec "$ns" "$@"; }
sysctl_ns() { in_ns "$1" sysctl -qw "$2=$3"; }

lab_down() {
  say "tearing down the lab"
  # Routers first, by pid file, gracefully: they remove their own devices and sockets.
  local pidfile pid
  for pidfile in "$RUN"/*.pid; do
    [[ -e $pidfile ]] || continue
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  # Then anything else still running inside a lab namespace (iperf3 servers, shells
  # left over from a crashed run): `ip netns pids` names exactly those processes.
  local ns pids
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
  done
  rm -f "$RUN"/*.sock
}

set_middle_mtu() {  # set_middle_mtu N: both ends of the wan1—wan2 link
  local ns
  for ns in wan1 wan2; do ip -n "$PREFIX-$ns" link set mid mtu "$1"; done
}

middle_mtu() { in_ns wan1 cat /sys/class/net/mid/mtu; }

build_topology() {  # build_topology MIDDLE_MTU
  local middle_mtu=$1
  say "building namespaces: ${NAMESPACES[*]} (middle WAN link MTU $middle_mtu)"
  local ns
  for ns in "${NAMESPACES[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No duplicate address detection: addresses are usable at once.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  done
  for ns in m1 wan1 wan2 m2; do
    sysctl_ns "$ns" net.ipv4.ip_forward 1
    sysctl_ns "$ns" net.ipv6.conf.all.forwarding 1
  done

  # Links are born inside their namespaces:  hostA:eth0—m1:lan  m1:wan—wan1:to-m1
  # wan1:mid—wan2:mid  wan2:to-m2—m2:wan  m2:lan—hostB:eth0
  ip -n $PREFIX-hosta link add eth0 type veth peer name lan netns $PREFIX-m1
  ip -n $PREFIX-m1 link add wan type veth peer name to-m1 netns $PREFIX-wan1
  ip -n $PREFIX-wan1 link add mid type veth peer name mid netns $PREFIX-wan2
  ip -n $PREFIX-wan2 link add to-m2 type veth peer name wan netns $PREFIX-m2
  ip -n $PREFIX-m2 link add lan type veth peer name eth0 netns $PREFIX-hostb

  # The WAN: IPv4 only. Two plain routers, wan1 and wan2, one /24 on each side and one
  # between them: M1's and M2's own links stay at 1500, only the middle link gets
  # $middle_mtu, so the tunnelrouters can learn it from ICMP only.
  ip -n $PREFIX-wan1 addr add 10.99.1.254/24 dev to-m1
  ip -n $PREFIX-wan1 addr add 10.99.12.1/24 dev mid
  ip -n $PREFIX-wan2 addr add 10.99.12.2/24 dev mid
  ip -n $PREFIX-wan2 addr add 10.99.2.254/24 dev to-m2
  ip -n $PREFIX-m1 addr add 10.99.1.1/24 dev wan
  ip -n $PREFIX-m2 addr add 10.99.2.1/24 dev wan
  set_middle_mtu "$middle_mtu"
  for ns in wan1 wan2 m1 m2; do
    # The WAN carries no IPv6 at all, not even link-local.
    for dev in $(ip -n $PREFIX-$ns -br link show type veth | awk '{sub(/@.*/, "", $1); print $1}'); do
      [[ $dev == lan ]] || sysctl_ns "$ns" "net.ipv6.conf.$dev.disable_ipv6" 1
    done
  done

  # The LANs: one /24 per IPv4 tunnel on each side (n = 1 gre, 2 vxlan, 3 ipip), the
  # router at .254, the host at .1; one IPv6 /64 per side for the sit tunnel.
  local side host router n
  for side in 1:hosta:m1 2:hostb:m2; do
    IFS=: read -r s host router <<<"$side"
    for n in 1 2 3; do
      ip -n $PREFIX-$host addr add "10.$s.$n.1/24" dev eth0
      ip -n $PREFIX-$router addr add "10.$s.$n.254/24" dev lan
    done
    ip -n $PREFIX-$host addr add "fd0$s::1/64" dev eth0 nodad
    ip -n $PREFIX-$router addr add "fd0$s::fe/64" dev lan nodad
  done
  for ns in "${NAMESPACES[@]}"; do
    for dev in $(ip -n "$ns" -br link show type veth | awk '{sub(/@.*/, "", $1); print $1}'); do
      ip -n "$ns" link set "$dev" up
    done
  done
  ip -n $PREFIX-m1 route add 10.99.2.0/24 via 10.99.1.254
  ip -n $PREFIX-m2 route add 10.99.1.0/24 via 10.99.2.254
  ip -n $PREFIX-wan1 route add 10.99.2.0/24 via 10.99.12.2
  ip -n $PREFIX-wan2 route add 10.99.1.0/24 via 10.99.12.1

  # Hosts: each far prefix through the near router, from the matching local address, so
  # hostA's 10.1.n.1 talks to hostB's 10.2.n.1 and the reply comes back the same tunnel.
  for n in 1 2 3; do
    ip -n $PREFIX-hosta route add "10.2.$n.0/24" via "10.1.$n.254" src "10.1.$n.1"
    ip -n $PREFIX-hostb route add "10.1.$n.0/24" via "10.2.$n.254" src "10.2.$n.1"
  done
  ip -n $PREFIX-hosta -6 route add fd02::/64 via fd01::fe
  ip -n $PREFIX-hostb -6 route add fd01::/64 via fd02::fe
  # M1's port forwards reach hostB from M1's gre1 address: the answers go back through M2.
  ip -n $PREFIX-hostb route add 192.168.101.0/30 via 10.2.1.254
}

start_router() {  # start_router m1|m2
  local name=$1 sock="$RUN/$1.sock" log="$RUN/$1.log"
  rm -f "$sock"
  # `ip netns exec` execs the router, so $! is the router's own pid.
  setsid ip netns exec "$PREFIX-$name" "$TR" run "$LAB_DIR/$name.yaml" \
    --control-socket "$sock" >"$log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

wait_router() {  # wait_router m1|m2
  local name=$1 pid
  pid=$(<"$RUN/$1.pid")
  for _ in $(seq 100); do
    [[ -S $RUN/$name.sock ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "router $name exited; its log ($RUN/$name.log):" >&2
      cat "$RUN/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "router $name did not open its control socket in 10 s; see $RUN/$name.log" >&2
  return 1
}

start_routers() {
  say "starting tunnelrouter in $PREFIX-m1 and $PREFIX-m2"
  "$TR" check "$LAB_DIR/m1.yaml" >/dev/null
  "$TR" check "$LAB_DIR/m2.yaml" >/dev/null
  start_router m1
  start_router m2
  wait_router m1
  wait_router m2
}

# What each router knows of its peers (`show --json`): the state its keepalives found, the
# round trip of the last one, and how long ago the last packet came.
peer_states() {
  local name failed=0
  for name in m1 m2; do
    ip netns exec "$PREFIX-$name" "$TR" show --json --socket "$RUN/$name.sock" \
      | "$REPO/.venv/bin/python" "$LAB_DIR/peers.py" "$name" || failed=1
  done
  return $failed
}

# What a sender on hostA must be told is the largest packet through a tunnel, when the
# middle link takes MIDDLE bytes: the device MTU or the path minus the overhead, whichever
# is smaller, and never less than 1280 for IPv6 (RFC 8200 §5).
told_mtu() {  # told_mtu MIDDLE OVERHEAD FAMILY
  local middle=$1 overhead=$2 family=$3 mtu
  mtu=$(( (middle < FULL_MTU ? middle : FULL_MTU) - overhead ))
  (( family == 6 && mtu < 1280 )) && mtu=1280
  echo "$mtu"
}

# A DF ping from hostA of the largest packet the tunnel device takes. A narrower path must
# answer it with fragmentation-needed / packet-too-big naming the MTU WANT; a full one
# must carry it. Prints the table cell; fails if the answer is wrong.
df_ping() {  # df_ping SRC DST DEVICE_MTU WANT
  local src=$1 dst=$2 device_mtu=$3 want=$4 headers=28 out told
  [[ $dst == *:* ]] && headers=48
  in_ns hosta ip route flush cache; in_ns hosta ip -6 route flush cache  # forget old PMTUs
  out=$(in_ns hosta ping -M do -s $((device_mtu - headers)) -c 4 -i 0.2 -W 1 -I "$src" "$dst" 2>&1) || true
  if (( want == device_mtu )); then
    if grep -q ' 4 received' <<<"$out"; then echo "$device_mtu passes"; return 0; fi
    echo "$device_mtu LOST"; echo "DF ping $src -> $dst:" >&2; echo "$out" >&2; return 1
  fi
  told=$(grep -oE 'Frag needed and DF set \(mtu = [0-9]+|Packet too big: mtu=[0-9]+' <<<"$out" \
    | grep -oE '[0-9]+$' | sort -u | paste -sd, -)
  if [[ $told == "$want" ]]; then echo "told $told"; return 0; fi
  echo "told ${told:-nothing} FAIL"
  echo "DF ping $src -> $dst: expected mtu $want:" >&2; echo "$out" >&2
  return 1
}

transfer() {  # transfer SRC DST [-R]: $TRANSFER bytes cross within $TRANSFER_TIMEOUT s
  in_ns hosta timeout "$TRANSFER_TIMEOUT" iperf3 -c "$2" -B "$1" -n "$TRANSFER" "${@:3}" >/dev/null 2>&1
}

ROW='%-6s | %-5s | %-21s | %-8s | %-8s | %-6s | %-7s | %-7s | %s'

# M1's port forwards (m1.yaml): hostA asks M1's LAN address, hostB's services answer
# (services.py) through gre1.
test_forwards() {
  local page="forwarded by tunnelrouter $$" web udp
  mkdir -p "$RUN/www"
  echo "$page" >"$RUN/www/hello.txt"
  in_ns hostb python3 "$LAB_DIR/services.py" 10.2.1.1 8000 5353 "$RUN/www" \
    >"$RUN/services.log" 2>&1 &
  local services=$!
  sleep 0.5
  web=$(in_ns hosta python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' \
    http://10.1.1.254:8080/hello.txt 2>&1) || true
  udp=$(in_ns hosta python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"ping", ("10.1.1.254", 5353)); print(s.recv(100).decode())' 2>&1) || true
  kill "$services" 2>/dev/null || true
  local failed=0
  if [[ $web == "$page" ]]; then echo "forward web  tcp 10.1.1.254:8080 -> 10.2.1.1:8000  ok"
  else echo "forward web  tcp 10.1.1.254:8080 -> 10.2.1.1:8000  FAIL: $web"; failed=1; fi
  if [[ $udp == PING ]]; then echo "forward echo udp 10.1.1.254:5353 -> 10.2.1.1:5353  ok"
  else echo "forward echo udp 10.1.1.254:5353 -> 10.2.1.1:5353  FAIL: $udp"; failed=1; fi
  return $failed
}

# A few of M1's metrics, as Prometheus scrapes them: each tunnel's traffic both ways,
# the drops that happened, peer state where keepalives report it.
metrics_excerpt() {
  local text
  if ! text=$(in_ns m1 python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")' \
      "http://$METRICS/metrics" 2>&1); then
    echo "metrics of M1: no answer from http://$METRICS/metrics: ${text##*$'\n'}"
    return 1
  fi
  echo "metrics of M1 (http://$METRICS/metrics in $PREFIX-m1): $(grep -vc '^#' <<<"$text") series; a few:"
  grep -E '^tunnelrouter_(tunnel_(rx|tx)_bytes_total|peer_up)[{ ]' <<<"$text"
  grep -E '^tunnelrouter_(tunnel|demux)_drops_total\{.*\} [1-9]' <<<"$text" || true
}

run_tests() {
  if ! [[ -S $RUN/m1.sock && -S $RUN/m2.sock ]]; then
    echo "the lab is not running (no control sockets in $RUN); run: $0 up" >&2
    return 1
  fi
  local middle
  middle=$(middle_mtu)
  say "testing every tunnel (middle WAN link MTU $middle): ping -c 3, iperf3 -t 2 from hostA" \
    "to hostB, $TRANSFER each way (iperf3 -n, ${TRANSFER_TIMEOUT} s timeout), a DF ping of the device MTU"
  in_ns hostb pkill -F "$RUN/iperf3-hostb.pid" 2>/dev/null || true
  : >"$RUN/iperf3-hostb.log"
  in_ns hostb iperf3 -s -D --pidfile "$RUN/iperf3-hostb.pid" --logfile "$RUN/iperf3-hostb.log"
  sleep 0.3

  local failed=0 rows=() mode dev src dst overhead out loss rtt json mbit there back df family
  for t in "${TESTS[@]}"; do
    read -r mode dev src dst overhead <<<"$t"
    if out=$(in_ns hosta ping -c 3 -i 0.2 -W 2 -I "$src" "$dst" 2>&1); then
      loss=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
      loss="ok $loss/3"
      rtt=$(sed -n 's|^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
    else
      failed=1
      echo "$mode: ping $dst from $src failed:" >&2; echo "$out" >&2
      # No point measuring a tunnel that does not answer pings.
      rows+=("$(printf "$ROW" "$mode" "$dev" "$src -> $dst" FAIL - - - - -)")
      continue
    fi
    if json=$(in_ns hosta timeout 15 iperf3 -c "$dst" -B "$src" -t 2 -J 2>&1); then
      mbit=$(python3 -c 'import json, sys
print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))' \
        <<<"$json") || { mbit="FAIL"; failed=1; }
    else
      mbit="FAIL"; failed=1
      echo "$mode: iperf3 to $dst failed: $(grep '"error"' <<<"$json" || tail -3 <<<"$json")" >&2
    fi
    there=ok; back=ok
    transfer "$src" "$dst" || { there=FAIL; failed=1; echo "$mode: $TRANSFER hostA -> hostB did not complete" >&2; }
    transfer "$src" "$dst" -R || { back=FAIL; failed=1; echo "$mode: $TRANSFER hostB -> hostA did not complete" >&2; }
    family=4; [[ $dst == *:* ]] && family=6
    df=$(df_ping "$src" "$dst" $((FULL_MTU - overhead)) "$(told_mtu "$middle" "$overhead" $family)") || failed=1
    rows+=("$(printf "$ROW" "$mode" "$dev" "$src -> $dst" "$loss" "$rtt" "$mbit" "$there" "$back" "$df")")
  done
  in_ns hostb pkill -F "$RUN/iperf3-hostb.pid" 2>/dev/null || true
  rm -f "$RUN/iperf3-hostb.pid"

  echo
  printf "$ROW\n" mode dev path ping "rtt avg" Mbit/s "$TRANSFER ->" "$TRANSFER <-" "DF ping (middle MTU $middle)"
  printf '%s\n' "-------+-------+-----------------------+----------+----------+--------+---------+---------+-----------------"
  printf '%s\n' "${rows[@]}"
  echo
  test_forwards || failed=1
  echo
  say "peers, as each router's keepalives find them"
  peer_states || failed=1
  metrics_excerpt || failed=1
  echo
  return $failed
}

set_mtu() {  # set_mtu N: the middle link of a running lab
  local mtu=$1
  [[ $mtu =~ ^[0-9]+$ ]] && (( mtu >= 576 && mtu <= FULL_MTU )) \
    || { echo "mtu: give a number from 576 to $FULL_MTU" >&2; return 2; }
  ip netns list | grep -q "^$PREFIX-wan1\b" || { echo "the lab is not running; run: $0 up" >&2; return 1; }
  say "middle WAN link (wan1 mid — wan2 mid): MTU $(middle_mtu) -> $mtu"
  set_middle_mtu "$mtu"
  cat <<EOF
The routers learn a narrower path from the ICMP answering the next oversized DF packet,
and try the full MTU again after pmtu-timeout (30 s in m1.yaml and m2.yaml). Watch:
  ip netns exec $PREFIX-m1 $TR show --socket $RUN/m1.sock
EOF
}

explore_hint() {
  cat <<EOF
The lab is up. Explore it (from $REPO):
  ip netns exec $PREFIX-m1 .venv/bin/tunnelrouter show --socket netns-lab/run/m1.sock
  ip netns exec $PREFIX-hosta bash            # then: ping 10.2.1.1, ping fd02::1, ...
  ip netns exec $PREFIX-wan1 tcpdump -ni to-m1 # the encapsulated traffic on the WAN
  ip netns exec $PREFIX-m1 python3 -c 'import urllib.request as u; print(u.urlopen("http://$METRICS/metrics").read().decode())'
  bash netns-lab/lab.sh test                   # ping, measure and load every tunnel again
  bash netns-lab/lab.sh mtu 1400               # narrow the middle WAN link; 1500 widens it
Router logs: netns-lab/run/m1.log, netns-lab/run/m2.log.  Tear down: make lab-down
EOF
}

main() {
  [[ $(id -u) == 0 ]] || { echo "the lab needs root" >&2; exit 1; }
  mkdir -p "$RUN"
  case "${1:-}" in
    up)
      [[ -x $TR ]] || { echo "$TR missing: run 'make deps' first" >&2; exit 1; }
      local mtu=${2:-$FULL_MTU}
      [[ $mtu =~ ^[0-9]+$ ]] && (( mtu >= 576 && mtu <= FULL_MTU )) \
        || { echo "up: the middle WAN link MTU must be a number from 576 to $FULL_MTU" >&2; exit 2; }
      lab_down
      build_topology "$mtu"
      start_routers
      local rc=0
      run_tests || rc=$?
      explore_hint
      [[ $rc == 0 ]] || echo "SOME TUNNELS FAILED (the lab is left up for inspection)" >&2
      exit $rc
      ;;
    test) run_tests ;;
    mtu) set_mtu "${2:-}" ;;
    down) lab_down ;;
    *) echo "usage: $0 up [MTU]|test|mtu N|down" >&2; exit 2 ;;
  esac
}

main "$@"
