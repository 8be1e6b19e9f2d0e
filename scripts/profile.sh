#!/usr/bin/env bash
# Profiles one kvbench workload against one fresh single-member server, on the member and on the
# client, and prints per-request figures and the hottest frames (docs/performance.md).
#
#   scripts/profile.sh "put, 64"                                  # kvstore, 64 clients' puts
#   scripts/profile.sh "range linearizable" /usr/bin/etcd         # the same on etcd 3.4
#   scripts/profile.sh "put, 1 client" /opt/etcd-3.5.1/etcd-3.5.1 --requests 20000
#   scripts/profile.sh "put, 64" floor                           # kvbench's floor server
#
# The workload is one of kvbench's (--only matches by substring); the server defaults to the
# release kvstore (build it first: cargo build --release -p kvstore --bins, then --examples). Extra
# arguments go to kvbench. Three passes over the same server, after one pass to warm it:
#   1. perf stat on the member and on the client: CPU ms, context switches, syscalls and
#      fdatasyncs, each divided by the requests made;
#   2. the same with a uprobe on libc's malloc: allocations per request (the probe slows every
#      call, so it gets a pass of its own, not timed);
#   3. perf record (DWARF call graphs) on the member: the hottest frames, self and with children
#      (NO_RECORD=1 skips it; its report takes a minute or two).
# Everything lands in ${OUT:-target/profile}/<server>-<workload>/. Needs root and perf
# (`scripts/install-deps.sh bench`).
set -euo pipefail

workload=${1:?usage: scripts/profile.sh WORKLOAD [SERVER] [kvbench args...]}
root=$(cd "$(dirname "$0")/.." && pwd)
server=${2:-$root/target/release/kvstore}
shift $(( $# >= 2 ? 2 : 1 ))
kvbench=$root/target/release/examples/kvbench
[ "$server" = floor ] && server=$kvbench
for f in "$server" "$kvbench"; do
  [ -x "$f" ] || { echo "profile: $f not found (cargo build --release -p kvstore --bins, then --examples)" >&2; exit 1; }
done
if "$server" --version 2>/dev/null | grep -q failpoints; then
  echo "profile: $server was built with failpoints; build it on its own: cargo build --release -p kvstore --bins" >&2
  exit 1
fi
command -v perf >/dev/null || { echo "profile: perf not found (scripts/install-deps.sh bench)" >&2; exit 1; }

# The requests a pass makes, as kvbench counts them (its defaults unless --requests is given).
requests=20000
args=("$@")
for i in "${!args[@]}"; do
  [ "${args[$i]}" = --requests ] && requests=${args[$((i + 1))]}
done
case "$workload" in
  "put, 1"*) made=2000 ;;
  put*) made=$requests ;;
  range*) made=$((requests * 2)) ;;
  watch*) made=2000 ;;
  *) echo "profile: unknown workload '$workload' (put, 1 client | put, 64 | range linearizable | range serializable | watch)" >&2; exit 2 ;;
esac

name=$( [ "$server" = "$kvbench" ] && echo floor || basename "$server")-$(echo "$workload" | tr -c 'a-z0-9\n' '-' | tr -s '-')
out=${OUT:-$root/target/profile}/$name
rm -rf "$out" && mkdir -p "$out"
data=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ "$server" = "$kvbench" ]; then
  # The floor server says its port on its first line.
  mkfifo "$data/port"
  "$kvbench" --floor-server "$data" >"$data/port" 2>"$out/server.log" &
  pid=$!
  read -r _ _ p <"$data/port"
  client=http://127.0.0.1:$p
else
  client=http://127.0.0.1:$(port)
  peer=http://127.0.0.1:$(port)
  "$server" --name prof --data-dir "$data/data" --listen-client-urls "$client" \
    --advertise-client-urls "$client" --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" --initial-cluster "prof=$peer" >"$out/server.log" 2>&1 &
  pid=$!
fi
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$kvbench" --endpoint "$client" --only "$workload" --rounds 1 --requests 64 "${args[@]}" >/dev/null 2>&1 && break
  sleep 0.2
done

bench() { "$kvbench" --endpoint "$client" --only "$workload" --rounds 1 "${args[@]}"; }
# perf stat on the member lasts as long as its `sleep`; killing the sleep ends it.
attach() {
  perf "$1" "${@:2}" -p "$pid" -- sleep 3600 2>/dev/null &
  sleep 0.5
}
detach() { pkill -f -P "$1" 'sleep 3600' || true; wait "$1" 2>/dev/null || true; }
# perf report's lines, without its padding.
report() { perf report -i "$out/perf.data" --sort symbol --stdio -q -g none "$@" 2>/dev/null \
  | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | grep -v '^$'; }

echo "profile: warming $name" >&2
bench >/dev/null 2>&1
events=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync
echo "profile: pass 1 (perf stat)" >&2
attach stat -x, -e "$events" -o "$out/member.stat"
p=$!
perf stat -x, -e "$events" -o "$out/client.stat" -- "$kvbench" --endpoint "$client" --only "$workload" \
  --rounds 1 "${args[@]}" >"$out/bench.txt" 2>/dev/null
detach $p

echo "profile: pass 2 (allocations)" >&2
libc=$(ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}')
perf probe -q -x "$libc" malloc 2>/dev/null || true
attach stat -x, -e probe_libc:malloc -o "$out/member.malloc"
p=$!
perf stat -x, -e probe_libc:malloc -o "$out/client.malloc" -- "$kvbench" --endpoint "$client" \
  --only "$workload" --rounds 1 "${args[@]}" >/dev/null 2>&1
detach $p

if [ -z "${NO_RECORD:-}" ]; then
  echo "profile: pass 3 (perf record)" >&2
  attach record --call-graph dwarf,32768 -F 999 -o "$out/perf.data" -q
  p=$!
  bench >/dev/null 2>&1
  detach $p
fi

# Per-request figures: a counter's value over the requests of the pass.
per() { # file event [decimals]
  awk -F, -v ev="$2" -v n="$made" -v d="${3:-2}" \
    '$3 == ev || index($3, ev) == 1 { printf "%.*f", d, $1 / n; exit }' "$1"
}
{
  echo "server: $server"
  echo "workload: $workload ($made requests a pass)"
  grep '^|' "$out/bench.txt" | tail -1
  printf '%-8s %12s %12s %12s %12s %12s\n' side "cpu ms/req" "ctxsw/req" "syscalls/req" "fsyncs/req" "mallocs/req"
  for side in member client; do
    cpu=$(per "$out/$side.stat" task-clock 3)
    fsyncs=$(awk -F, -v n="$made" '$3 ~ /sys_enter_f(data)?sync/ { s += $1 } END { printf "%.3f", s / n }' "$out/$side.stat")
    printf '%-8s %12s %12s %12s %12s %12s\n' "$side" "$cpu" "$(per "$out/$side.stat" context-switches)" \
      "$(per "$out/$side.stat" raw_syscalls:sys_enter)" "$fsyncs" "$(per "$out/$side.malloc" probe_libc:malloc)"
  done
  [ -z "${NO_RECORD:-}" ] || exit 0
  echo
  echo "hottest frames on the member, self time:"
  report --no-children --percent-limit 1.5 | head -25
  echo
  echo "hottest frames on the member, with children:"
  report --children --percent-limit 4 | head -40
} | tee "$out/summary.txt"
