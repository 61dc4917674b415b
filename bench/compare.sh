#!/usr/bin/env bash
# Side by side on loopback, in one run, with the same auction-bench clients and duration:
#   - the auction (3 real nodes),
#   - the transport floor (a tonic echo service: unary, and one stream per client),
#   - Redis 7: a primary and 2 replicas, with 3 Sentinels (down-after-milliseconds 1000);
#     a bid is a Lua script that accepts only a higher amount, then WAIT 2,
#   - etcd 3.4: three members; a bid is a Txn that puts only if the stored value is lower;
#     once with fsync on, once with --unsafe-no-fsync.
# Installs redis-server, redis-sentinel, etcd-server and etcd-client (for etcdctl) from Debian's
# packages if missing.
#
# Usage: bench/compare.sh            (CLIENTS=64 SECS=10 by default)
# Results: a markdown table on stdout; every JSON result in target/compare/.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-64}
SECS=${SECS:-10}
OUT=target/compare
BIN=target/release

if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null \
    || ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing redis-server, redis-sentinel, etcd-server and etcd-client" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    redis-server redis-sentinel etcd-server etcd-client >&2
fi
cargo build --release --quiet --bin auction-node --bin auction-bench --bin auction-client

rm -rf "$OUT" && mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start() { "$@" >>"$WORK/logs" 2>&1 & PIDS+=($!); }
# Polls a command until it succeeds, for at most 30 s.
until_ok() {
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $*" >&2
  return 1
}
stop_all() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
# bench NAME ARGS...: 64 clients (or CLIENTS), then 1 client, same duration.
bench() {
  local name=$1; shift
  echo "== $name" >&2
  "$BIN/auction-bench" "$@" --clients "$CLIENTS" --secs "$SECS" --json >"$OUT/$name.json"
  "$BIN/auction-bench" "$@" --clients 1 --secs "$SECS" --json >"$OUT/$name-1.json"
}

# The transport floor.
start "$BIN/auction-bench" --serve-echo 127.0.0.1:15500
until_ok bash -c 'exec 3<>/dev/tcp/127.0.0.1/15500'
bench echo-unary --server 127.0.0.1:15500 --target echo-unary
bench echo-stream --server 127.0.0.1:15500 --target echo-stream
stop_all

# The auction: three nodes.
NODE_ARGS=(--client-port 15000 --leader-port 15400 --duration 36000)
start "$BIN/auction-node" --port 5400 "${NODE_ARGS[@]}"
until_ok bash -c 'exec 3<>/dev/tcp/127.0.0.1/15000'
start "$BIN/auction-node" --port 5401 "${NODE_ARGS[@]}"
start "$BIN/auction-node" --port 5402 "${NODE_ARGS[@]}"
until_ok bash -c "$BIN/auction-client --server 127.0.0.1:15000 --json status \
  | grep -q '\"members\":\[[0-9]*,[0-9]*,[0-9]*\]'"
bench auction --server 127.0.0.1:15000 --target auction
stop_all

# Redis: a primary, two replicas, three Sentinels; no persistence (the auction keeps memory too).
for port in 17001 17002 17003; do
  mkdir -p "$WORK/redis-$port"
  args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis-$port")
  [ "$port" != 17001 ] && args+=(--replicaof 127.0.0.1 17001)
  start redis-server "${args[@]}"
done
for port in 27001 27002 27003; do
  cat >"$WORK/sentinel-$port.conf" <<EOF
port $port
bind 127.0.0.1
sentinel monitor auction 127.0.0.1 17001 2
sentinel down-after-milliseconds auction 1000
sentinel failover-timeout auction 3000
EOF
  start redis-sentinel "$WORK/sentinel-$port.conf"
done
until_ok bash -c "[ \$(redis-cli -p 17001 info replication | grep -c state=online) = 2 ]"
bench redis --server 127.0.0.1:17001 --target redis
stop_all

# etcd: three members, fsync on, then --unsafe-no-fsync.
etcd_cluster() {
  local extra=("$@") cluster=""
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:${i}2380,"; done
  for i in 1 2 3; do
    start etcd --name "e$i" --data-dir "$WORK/etcd-$i-${#extra[@]}" \
      --listen-client-urls "http://127.0.0.1:${i}2379" \
      --advertise-client-urls "http://127.0.0.1:${i}2379" \
      --listen-peer-urls "http://127.0.0.1:${i}2380" \
      --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new \
      --initial-cluster-token "bench-${#extra[@]}" "${extra[@]}"
  done
  until_ok etcdctl --endpoints http://127.0.0.1:12379 put auction/probe 1
}
# The leader's client address, so no request pays a forwarding hop.
etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 \
    endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"].removeprefix("http://"))'
}
etcd_cluster
bench etcd --server "$(etcd_leader)" --target etcd
stop_all
etcd_cluster --unsafe-no-fsync
grep -q "unsafe-no-fsync" "$WORK/logs" || echo "warning: etcd did not echo --unsafe-no-fsync" >&2
bench etcd-nofsync --server "$(etcd_leader)" --target etcd
stop_all

python3 - "$OUT" "$CLIENTS" <<'EOF'
import json, sys
out, clients = sys.argv[1], sys.argv[2]
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
rows = [
    ("auction (3 nodes)", "auction"),
    ("Redis 7, Lua + WAIT 2 0", "redis"),
    ("etcd 3.4, fsync", "etcd"),
    ("etcd 3.4, --unsafe-no-fsync", "etcd-nofsync"),
    ("floor: tonic echo, unary", "echo-unary"),
    ("floor: tonic echo, stream", "echo-stream"),
]
ours = load("auction")
ours1 = load("auction-1")
print(f"| system | bids/s ({clients} clients) | auction ÷ this | p50 | p99 | p50, 1 client | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for label, name in rows:
    r, r1 = load(name), load(name + "-1")
    ratio = ours["bids_per_s"] / r["bids_per_s"] if r["bids_per_s"] else float("nan")
    print(f"| {label} | {r['bids_per_s']:,.0f} | {ratio:.2f}× | {r['p50_us']/1000:.2f} ms "
          f"| {r['p99_us']/1000:.2f} ms | {r1['p50_us']/1000:.3f} ms | {r['errors'] + r1['errors']} |")
EOF
