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
# Then failover under load, with FAILOVER_CLIENTS clients bidding: the time from a kill -9 of
# the leader to the first acknowledged bid that a client sent after it (auction-bench --failover
# kill). The auction: 20 faults, on a 3-node cluster the bench starts. Redis and etcd: FAULTS
# faults each, on the clusters above, after their load runs. The bench finds and kills the
# leader (the primary the Sentinels name; the Raft leader); once a bid sent after the fault has
# been acknowledged it prints `restart HOST:PORT`, this script starts that server again with its
# original command line, and the bench waits until the cluster is whole before the next fault
# (the Sentinels turn the restarted old primary into a replica, which takes them ~10 s). A Redis
# client asks the Sentinels for the primary, and again after any error; a Redis bid waits for
# one replica (WAIT 1: two would be unreachable until the killed server returns). An etcd client
# knows all three members and moves to the next after any error.
#
# The auction runs twice: with the nodes' default options, and with --spin-us 0, which keeps the
# leader from busy-polling after runs of small batches (the default trades CPU for latency at
# light load).
#
# Multi-host mode: the auction with one local etcd deciding who leads and each node on its own
# loopback address (127.0.0.31 to .33), which auction-bench --multi-host starts for each run:
# its load at CLIENTS clients and at 1, beside the single-host auction and etcd alone (fsync on,
# and --unsafe-no-fsync), then its failover with FAILOVER_CLIENTS clients bidding, MH_FAULTS
# times each: after a kill -9 of the leader, and after a partition that cuts the leader off from
# the other nodes, etcd and the clients (auction-bench --failover partition: nftables inside a
# network namespace of the bench's own, so it needs root; the host's network is never touched).
# MULTI_HOST_ONLY=1 runs only what that section needs: the single-host auction's and etcd's load
# runs, and the multi-host runs (no floor, no Redis, no failover of Redis, etcd or the
# single-host auction).
#
# Usage: bench/compare.sh  (CLIENTS=64 SECS=10 FAILOVER_CLIENTS=16 FAULTS=5 MH_FAULTS=20
#        MULTI_HOST_ONLY=0 by default)
# Results: markdown tables on stdout (the side-by-side one, with a failover column and a line on
# the failover runs, unless MULTI_HOST_ONLY=1; then the multi-host one); every JSON result in
# target/compare/.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-64}
SECS=${SECS:-10}
FAILOVER_CLIENTS=${FAILOVER_CLIENTS:-16}
FAULTS=${FAULTS:-5}
MH_FAULTS=${MH_FAULTS:-20}
MULTI_HOST_ONLY=${MULTI_HOST_ONLY:-0}
# The nodes' --timeout-ms in the multi-host failover runs (auction-bench's default).
MH_TIMEOUT_MS=1000
OUT=target/compare
BIN=target/perf

if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null \
    || ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing redis-server, redis-sentinel, etcd-server and etcd-client" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    redis-server redis-sentinel etcd-server etcd-client >&2
fi
cargo build --profile perf --quiet --bin auction-node --bin auction-bench --bin auction-client

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
# failover NAME RESTART ARGS...: auction-bench --failover kill ARGS (--failover $FAULT if FAULT
# is set); for each `restart HOST:PORT` it prints, runs RESTART PORT. The JSON result goes to
# $OUT/NAME-failover.json; if the bench
# fails there is none (its error is on stderr) and the table says so. Bash reports every server
# the bench kills as "Killed", which is the point here: the loop's own stderr is discarded, the
# bench's goes to the script's (fd 3).
failover() {
  local name=$1 restart=$2 line
  shift 2
  echo "== $name failover" >&2
  {
    while read -r line; do
      case $line in
        "restart "*)
          "$restart" "${line##*:}" || { echo "cannot restart ${line#restart }" >&3; return 1; } ;;
        *) printf '%s\n' "$line" >"$OUT/$name-failover.json" ;;
      esac
    done < <("$BIN/auction-bench" --failover "${FAULT:-kill}" --clients "$FAILOVER_CLIENTS" "$@" \
      --json 2>&3)
  } 3>&2 2>/dev/null
}
# For the auction, whose bench restarts its own nodes.
no_restart() { return 1; }

# The transport floor.
if [ "$MULTI_HOST_ONLY" != 1 ]; then
  start "$BIN/auction-bench" --serve-echo 127.0.0.1:15500
  until_ok bash -c 'exec 3<>/dev/tcp/127.0.0.1/15500'
  bench echo-unary --server 127.0.0.1:15500 --target echo-unary
  bench echo-stream --server 127.0.0.1:15500 --target echo-stream
  stop_all
fi

# The auction: three nodes, with the default options, then with a leader that never busy-polls.
auction_cluster() {
  local args=(--client-port 15000 --leader-port 15400 --duration 36000 "$@")
  start "$BIN/auction-node" --port 5400 "${args[@]}"
  until_ok bash -c 'exec 3<>/dev/tcp/127.0.0.1/15000'
  start "$BIN/auction-node" --port 5401 "${args[@]}"
  start "$BIN/auction-node" --port 5402 "${args[@]}"
  until_ok bash -c "$BIN/auction-client --server 127.0.0.1:15000 --json status \
    | grep -q '\"members\":\[[0-9]*,[0-9]*,[0-9]*\]'"
}
auction_cluster
bench auction --server 127.0.0.1:15000 --target auction
stop_all
if [ "$MULTI_HOST_ONLY" != 1 ]; then
  auction_cluster --spin-us 0
  bench auction-nospin --server 127.0.0.1:15000 --target auction
  stop_all
  # The bench starts its own 3-node cluster for this.
  failover auction no_restart --faults 20
fi

# Multi-host mode: the bench starts one etcd and three nodes on 127.0.0.31-33 for each run.
bench auction-multi-host --multi-host
failover auction-multi-host no_restart --multi-host --faults "$MH_FAULTS" \
  --timeout-ms "$MH_TIMEOUT_MS"
FAULT=partition failover auction-multi-host-partition no_restart --faults "$MH_FAULTS" \
  --timeout-ms "$MH_TIMEOUT_MS"

# Redis: a primary, two replicas, three Sentinels; no persistence (the auction keeps memory too).
if [ "$MULTI_HOST_ONLY" != 1 ]; then
redis_start() {
  local port=$1
  mkdir -p "$WORK/redis-$port"
  local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis-$port")
  [ "$port" != 17001 ] && args+=(--replicaof 127.0.0.1 17001)
  start redis-server "${args[@]}"
}
for port in 17001 17002 17003; do redis_start "$port"; done
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
failover redis redis_start --target redis --faults "$FAULTS" \
  --sentinels 127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003
stop_all
fi

# etcd: three members, fsync on, then --unsafe-no-fsync.
ETCD_EXTRA=()
# etcd_member I: starts member eI with the current cluster's flags (ETCD_EXTRA).
etcd_member() {
  local i=$1 j cluster=""
  for j in 1 2 3; do cluster+="e$j=http://127.0.0.1:${j}2380,"; done
  start etcd --name "e$i" --data-dir "$WORK/etcd-$i-${#ETCD_EXTRA[@]}" \
    --listen-client-urls "http://127.0.0.1:${i}2379" \
    --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "${cluster%,}" --initial-cluster-state new \
    --initial-cluster-token "bench-${#ETCD_EXTRA[@]}" "${ETCD_EXTRA[@]}"
}
# etcd_restart PORT: the member whose client port is PORT (I2379).
etcd_restart() {
  case $1 in
    12379) etcd_member 1 ;;
    22379) etcd_member 2 ;;
    32379) etcd_member 3 ;;
    *) return 1 ;;
  esac
}
etcd_cluster() {
  ETCD_EXTRA=("$@")
  for i in 1 2 3; do etcd_member "$i"; done
  until_ok etcdctl --endpoints http://127.0.0.1:12379 put auction/probe 1
}
ETCD_ENDPOINTS=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
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
if [ "$MULTI_HOST_ONLY" != 1 ]; then
  failover etcd etcd_restart --target etcd --server "$ETCD_ENDPOINTS" --faults "$FAULTS"
fi
stop_all
etcd_cluster --unsafe-no-fsync
grep -q "unsafe-no-fsync" "$WORK/logs" || echo "warning: etcd did not echo --unsafe-no-fsync" >&2
bench etcd-nofsync --server "$(etcd_leader)" --target etcd
if [ "$MULTI_HOST_ONLY" != 1 ]; then
  failover etcd-nofsync etcd_restart --target etcd --server "$ETCD_ENDPOINTS" --faults "$FAULTS"
fi
stop_all

if [ "$MULTI_HOST_ONLY" != 1 ]; then
python3 - "$OUT" "$CLIENTS" "$FAILOVER_CLIENTS" <<'EOF'
import json, sys
out, clients, failover_clients = sys.argv[1:4]
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
# (label, load result, failover result or None where none is measured)
rows = [
    ("auction (3 nodes)", "auction", "auction"),
    ("auction, --spin-us 0", "auction-nospin", None),
    ("auction, multi-host (3 nodes + etcd)", "auction-multi-host", "auction-multi-host"),
    ("Redis 7, Lua + WAIT 2", "redis", "redis"),
    ("etcd 3.4, fsync", "etcd", "etcd"),
    ("etcd 3.4, --unsafe-no-fsync", "etcd-nofsync", "etcd-nofsync"),
    ("floor: tonic echo, unary", "echo-unary", None),
    ("floor: tonic echo, stream", "echo-stream", None),
]
faults = {}
def failover(name):
    if name is None:
        return "n/a"
    try:
        r = load(name + "-failover")
    except (OSError, ValueError):
        return "failed"
    faults[name] = r["faults"]
    ms = r["median_ms"]
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms"
ours = load("auction")
print(f"| system | bids/s ({clients} clients) | auction ÷ this | p50 | p99 | p50, 1 client | errors "
      "| failover, median |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for label, name, fail in rows:
    r, r1 = load(name), load(name + "-1")
    ratio = ours["bids_per_s"] / r["bids_per_s"] if r["bids_per_s"] else float("nan")
    print(f"| {label} | {r['bids_per_s']:,.0f} | {ratio:.2f}× | {r['p50_us']/1000:.2f} ms "
          f"| {r['p99_us']/1000:.2f} ms | {r1['p50_us']/1000:.3f} ms | {r['errors'] + r1['errors']} "
          f"| {failover(fail)} |")
counts = ", ".join(f"{n} {k}" for k, n in faults.items())
print(f"\nFailover: the time from a kill -9 of the leader to the first acknowledged bid sent after "
      f"it, {failover_clients} clients bidding; faults per system: {counts or 'none measured'}. "
      "A Redis bid waits for one replica there (WAIT 1).")
EOF
fi

# The multi-host section: its own table, with 1 and CLIENTS clients, and its failovers.
python3 - "$OUT" "$CLIENTS" "$FAILOVER_CLIENTS" "$MH_TIMEOUT_MS" <<'EOF'
import json, sys
out, clients, failover_clients, timeout_ms = sys.argv[1:5]
timeout_ms = int(timeout_ms)
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
rows = [
    ("auction, multi-host (3 nodes on 127.0.0.31-33 + 1 etcd)", "auction-multi-host"),
    ("auction, single host (3 nodes)", "auction"),
    ("etcd 3.4 alone, fsync", "etcd"),
    ("etcd 3.4 alone, --unsafe-no-fsync", "etcd-nofsync"),
]
mh = load("auction-multi-host")
def ms(us):
    return f"{us / 1000:.2f} ms"
print(f"\n**Multi-host mode** (bids/s and latency at {clients} clients and at 1):\n")
print(f"| system | bids/s ({clients}) | p50 | p99 | bids/s (1) | p50 | p99 "
      "| multi-host ÷ this | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for label, name in rows:
    r, r1 = load(name), load(name + "-1")
    ratio = mh["bids_per_s"] / r["bids_per_s"] if r["bids_per_s"] else float("nan")
    print(f"| {label} | {r['bids_per_s']:,.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} "
          f"| {r1['bids_per_s']:,.0f} | {ms(r1['p50_us'])} | {ms(r1['p99_us'])} | {ratio:.2f}× "
          f"| {r['errors'] + r1['errors']} |")
def failover(name):
    try:
        return load(name + "-failover")
    except (OSError, ValueError):
        return None
print(f"\nFailover of the multi-host cluster, {failover_clients} clients bidding, nodes' "
      f"--timeout-ms {timeout_ms}: the time from the fault to the first acknowledged bid sent "
      "after it.\n")
print("| fault | faults | median | p99 | max | target (median) |")
print("| --- | ---: | ---: | ---: | ---: | --- |")
for label, name, target in [
    ("kill -9 of the leader", "auction-multi-host", 50.0),
    ("leader cut off by a partition", "auction-multi-host-partition", timeout_ms + 200.0),
]:
    r = failover(name)
    if r is None:
        print(f"| {label} | failed | | | | ≤ {target:,.0f} ms |")
        continue
    met = "met" if r["median_ms"] <= target else "**not met**"
    print(f"| {label} | {r['faults']} | {r['median_ms']:,.1f} ms | {r['p99_ms']:,.1f} ms "
          f"| {r['max_ms']:,.1f} ms | ≤ {target:,.0f} ms: {met} |")
single, nofsync = load("auction"), load("etcd-nofsync")
def target(label, ratio, want):
    met = "met" if ratio >= want else "**not met**"
    print(f"- {label}: {ratio:.2f}× (target ≥ {want}×: {met})")
print(f"\nTargets at {clients} clients:")
target("multi-host ÷ single-host, bids/s", mh["bids_per_s"] / single["bids_per_s"], 0.8)
target("multi-host ÷ etcd --unsafe-no-fsync, bids/s", mh["bids_per_s"] / nofsync["bids_per_s"], 10)
EOF
