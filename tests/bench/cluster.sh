#!/usr/bin/env bash
# Cross-node throughput and latency of a two-node coolpy7 cluster against one node, on loopback:
# for each scenario, the same coolpy7-bench run with publishers and subscribers on node 1
# ("single"), then with the publishers on node 1 (127.0.0.1) and the subscribers on node 2
# (127.0.0.2, --sub-host) ("cross"). Prints a Markdown table with the cross/single ratio.
#
#   tests/bench/cluster.sh [--secs N] [--runs R] [--scenarios fanin-q1,p2p-q0,...] [--no-build]
#
# Scenario ids: <fanin|p2p|fanout|latency>-q<0|1|2>. Environment: COOLPY7_BIN (default
# target/release/coolpy7, e.g. an older build to compare with), BENCH_BIN (default
# target/release/coolpy7-bench), CLUSTER_ARGS (extra flags for both nodes, e.g. "-csb 33554432").
# Both nodes and the load generator share the machine's cores, as the single node and its load
# generator do: the ratio is what forwarding costs, not what a second machine would add.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SECS=5
RUNS=1
BUILD=1
SCENARIOS=(fanin-q1 p2p-q1 fanin-q0 p2p-q0 fanout-q1 latency-q1 latency-q0)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --secs) SECS="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    --scenarios) IFS=, read -r -a SCENARIOS <<<"$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $BUILD == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p coolpy7 -p coolpy7-tests >&2)
fi
COOLPY7_BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/coolpy7-bench}"
WORK="$(mktemp -d)"
PIDS=()
stop_nodes() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK"' EXIT

# Starts nodes n1 (127.0.0.1) and n2 (127.0.0.2) on fresh ports and waits (at most 10 s) until
# each sees the other.
start_nodes() {
    local key base=$((21000 + RANDOM % 20000))
    key="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    MQTT_PORT=$base
    for n in 1 2; do
        local seed=()
        [[ $n == 2 ]] && seed=(-mbs "127.0.0.1:$((base + 1))")
        # shellcheck disable=SC2086
        "$COOLPY7_BIN" -l "127.0.0.$n:$base" -hl nil -nid "n$n" -csk "$key" \
            -crp $((base + 1)) -csp $((base + 2)) -cad "127.0.0.$n" "${seed[@]}" \
            -mq 100000 -msc 0 --log-level info ${CLUSTER_ARGS:-} >"$WORK/n$n.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 100); do
        if grep -q "member up" "$WORK/n1.log" && grep -q "member up" "$WORK/n2.log"; then
            return 0
        fi
        sleep 0.1
    done
    echo "the two nodes did not see each other within 10 s:" >&2
    cat "$WORK/n1.log" "$WORK/n2.log" >&2
    exit 1
}

# Runs one bench; prints "<delivered/s> <lost> <p50> <p99>" from its JSON line.
bench() { # scenario qos [extra bench args]
    local scenario=$1 qos=$2
    shift 2
    "$BENCH_BIN" "$scenario" --qos "$qos" --host 127.0.0.1 --port "$MQTT_PORT" --secs "$SECS" \
        "$@" 2>/dev/null | tail -1 | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
lat = d.get("latency_us") or {}
print(d.get("delivered_per_sec", 0), d.get("lost", 0), lat.get("p50", "-"), lat.get("p99", "-"))'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

echo "| scenario | single node | across 2 nodes | cross / single | lost (single, cross) |"
echo "|---|---:|---:|---:|---:|"
for id in "${SCENARIOS[@]}"; do
    scenario="${id%-q*}"
    qos="${id##*-q}"
    singles=() crosses=() lost=""
    for _ in $(seq "$RUNS"); do
        start_nodes
        single="$(bench "$scenario" "$qos")"
        cross="$(bench "$scenario" "$qos" --sub-host 127.0.0.2 --sub-port "$MQTT_PORT")"
        stop_nodes
        if [[ $scenario == latency ]]; then
            singles+=("$(awk '{print $3 "/" $4}' <<<"$single")")
            crosses+=("$(awk '{print $3 "/" $4}' <<<"$cross")")
        else
            singles+=("$(awk '{print $1}' <<<"$single")")
            crosses+=("$(awk '{print $1}' <<<"$cross")")
        fi
        lost+="$(awk '{print $2}' <<<"$single"),$(awk '{print $2}' <<<"$cross") "
    done
    if [[ $scenario == latency ]]; then
        # p50/p99 µs of each run, as measured.
        echo "| $id p50/p99 µs | ${singles[*]} | ${crosses[*]} | | $lost |"
    else
        s="$(printf '%s\n' "${singles[@]}" | median)"
        c="$(printf '%s\n' "${crosses[@]}" | median)"
        ratio="$(awk -v s="$s" -v c="$c" 'BEGIN {printf (s > 0 ? "%.2f" : "-"), c / s}')"
        printf '| %s delivered/s | %.0f | %.0f | %s | %s|\n' "$id" "$s" "$c" "$ratio" "$lost"
    fi
done
