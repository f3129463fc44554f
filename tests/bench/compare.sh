#!/usr/bin/env bash
# Runs the same load scenarios (coolpy7-bench) against coolpy7, Mosquitto and rumqttd, one
# fresh broker per run, and prints a Markdown table of the figures with coolpy7's ratios.
#
#   tests/bench/compare.sh [--quick] [--secs N] [--runs R] [--only coolpy7,mosquitto,rumqttd]
#                          [--scenarios fanin-q0,latency-q1,...] [--mqtt 3|5|3,5] [--no-build]
#                          [--list]
#
# --mqtt (or MQTT=...): which MQTT version each scenario runs with; 5 runs the `<id>-v5` variant
# (the same bench arguments plus `--mqtt 5`), 3,5 both (default 3). `-v5` ids may also be named
# in --scenarios. rumqttd is not run on v5 variants (its config opens a 3.1.1 listener only).
#
# Results: target/bench/results-<timestamp>.jsonl (one line per run, the bench's JSON plus
# broker/scenario/run), target/bench/results-<timestamp>.md (the table) and
# target/bench/logs-<timestamp>/ (each broker's and bench's stderr).
#
# Environment: BENCH_BIN (load generator, default target/release/coolpy7-bench), COOLPY7_BIN
# (default target/release/coolpy7, e.g. a build of an older commit to compare with),
# BENCH_PORT_BASE (default 18830; coolpy7, mosquitto and rumqttd listen on +1, +2, +3),
# COOLPY7_EXTRA_ARGS (appended to coolpy7's command line), RUMQTTD_BIN, MOSQUITTO_BIN.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

RUMQTTD_VERSION=0.20.0
PEERS_DIR="$ROOT/target/peers"
OUT_DIR="$ROOT/target/bench"

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo
    echo "Scenarios: ${ALL_SCENARIOS[*]}"
}

# ---------------------------------------------------------------------------------------------
# Scenarios: id -> bench arguments (the payload size, durations and --pid are added per run).
declare -A SCENARIO_ARGS=(
    [fanin-q0]="fanin --qos 0 --publishers 4"
    [fanin-q1]="fanin --qos 1 --publishers 4"
    [fanout-q0]="fanout --qos 0 --subscribers 8"
    [fanout-q1]="fanout --qos 1 --subscribers 8"
    [p2p-q0]="p2p --qos 0 --pairs 8"
    [p2p-q1]="p2p --qos 1 --pairs 8"
    [latency-q0]="latency --qos 0 --rate 1000"
    [latency-q1]="latency --qos 1 --rate 1000"
    # rumqttd needs more than the bench's default 10 s to accept 10000 connections.
    [conns]="conns --conns @CONNS@ --connect-timeout 60"
    [fanin-extra-subs]="fanin --qos 0 --publishers 4 --extra-subs @EXTRA_SUBS@"
    [fanout-stalled-q0]="fanout --qos 0 --subscribers 8 --stalled 2"
    [fanout-stalled-q1]="fanout --qos 1 --subscribers 8 --stalled 2"
    # One client subscribes this many filters (half `s/<k>/x`, half `s/+/<k>`): the broker's RSS
    # per filter; then it disconnects while an unrelated QoS 0 pair runs at 1 msg/ms: the pair's
    # longest gap and the slowest CONNECT meanwhile.
    [subs-1m]="subs --filters @SUBS_FILTERS@"
    [subs-200k]="subs --filters 200000"
    # The same spread over many clients (each needs a file descriptor on both sides).
    [subs-clients]="subs --filters @SUBS_FILTERS@ --clients @SUBS_CLIENTS@ --connect-timeout 60"
)
ALL_SCENARIOS=(fanin-q0 fanin-q1 fanout-q0 fanout-q1 p2p-q0 p2p-q1 latency-q0 latency-q1
    conns fanin-extra-subs fanout-stalled-q0 fanout-stalled-q1 subs-1m subs-200k subs-clients)
ALL_BROKERS=(coolpy7 mosquitto rumqttd)

# `<id>-v5`: scenario <id> over MQTT 5.0.
base_scenario() { echo "${1%-v5}"; }
scenario_args() {
    local args="${SCENARIO_ARGS[$(base_scenario "$1")]}"
    [[ "$1" != *-v5 ]] || args+=" --mqtt 5"
    echo "$args"
}

# ---------------------------------------------------------------------------------------------
SECS=10
WARMUP=2
DRAIN=5
SIZE=64
CONNS=10000
EXTRA_SUBS=10000
SUBS_FILTERS=1000000
SUBS_CLIENTS=10000
RUNS=1
QUICK=0
BUILD=1
BROKERS=("${ALL_BROKERS[@]}")
SCENARIOS=("${ALL_SCENARIOS[@]}")
SECS_SET=0
MQTT="${MQTT:-3}"

split_list() { # "a,b c" -> one per line
    tr ', ' '\n\n' <<<"$1" | sed '/^$/d'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --secs) SECS="$2"; SECS_SET=1; shift ;;
    --secs=*) SECS="${1#*=}"; SECS_SET=1 ;;
    --runs) RUNS="$2"; shift ;;
    --runs=*) RUNS="${1#*=}" ;;
    --only) mapfile -t BROKERS < <(split_list "$2"); shift ;;
    --only=*) mapfile -t BROKERS < <(split_list "${1#*=}") ;;
    --scenarios) mapfile -t SCENARIOS < <(split_list "$2"); shift ;;
    --scenarios=*) mapfile -t SCENARIOS < <(split_list "${1#*=}") ;;
    --mqtt) MQTT="$2"; shift ;;
    --mqtt=*) MQTT="${1#*=}" ;;
    --no-build) BUILD=0 ;;
    --list) printf '%s\n' "${ALL_SCENARIOS[@]}" "${ALL_SCENARIOS[@]/%/-v5}"; exit 0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [[ $QUICK == 1 ]]; then
    [[ $SECS_SET == 1 ]] || SECS=2
    WARMUP=1
    # --drain stays 5: the bench stops draining as soon as everything arrived, and a shorter
    # drain counts a backlog that is still being delivered as lost.
    CONNS=1000
    EXTRA_SUBS=1000
    SUBS_FILTERS=100000
    SUBS_CLIENTS=1000
fi
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -gt 0 ]] || { echo "--secs wants a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -gt 0 ]] || { echo "--runs wants a positive integer" >&2; exit 2; }
for b in "${BROKERS[@]}"; do
    [[ " ${ALL_BROKERS[*]} " == *" $b "* ]] || { echo "unknown broker '$b' (${ALL_BROKERS[*]})" >&2; exit 2; }
done
for s in "${SCENARIOS[@]}"; do
    [[ -n "${SCENARIO_ARGS[$(base_scenario "$s")]+x}" ]] ||
        { echo "unknown scenario '$s' (${ALL_SCENARIOS[*]}, each also with -v5)" >&2; exit 2; }
done
mapfile -t MQTT_VERSIONS < <(split_list "$MQTT")
for m in "${MQTT_VERSIONS[@]}"; do
    [[ "$m" == 3 || "$m" == 5 ]] || { echo "--mqtt wants 3, 5 or 3,5, not '$MQTT'" >&2; exit 2; }
done
[[ ${#MQTT_VERSIONS[@]} -gt 0 ]] || { echo "--mqtt wants 3, 5 or 3,5" >&2; exit 2; }
# Each scenario in each version asked for (a -v5 id as given), v3 and v5 of one next to each other.
RUN_SCENARIOS=()
for s in "${SCENARIOS[@]}"; do
    if [[ "$s" == *-v5 ]]; then
        RUN_SCENARIOS+=("$s")
        continue
    fi
    for m in "${MQTT_VERSIONS[@]}"; do
        if [[ $m == 3 ]]; then RUN_SCENARIOS+=("$s"); else RUN_SCENARIOS+=("$s-v5"); fi
    done
done
# rumqttd runs no v5 variant: with nothing else asked of it, it is not even installed.
ANY_V3=0
for s in "${RUN_SCENARIOS[@]}"; do [[ "$s" == *-v5 ]] || ANY_V3=1; done
if [[ $ANY_V3 == 0 && " ${BROKERS[*]} " == *" rumqttd "* ]]; then
    mapfile -t BROKERS < <(printf '%s\n' "${BROKERS[@]}" | grep -vx rumqttd)
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every broker this script starts is stopped on exit, whatever the exit.
BROKER_PID=""
BENCH_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # `timeout` passes SIGTERM on to the bench; it dies with it.
    if [[ -n "$BENCH_PID" ]]; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    stop_broker
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools and peers.
as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

command -v python3 >/dev/null || die "python3 is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"

# Raise the open-file limit to the hard limit: 10000 connections on each side of loopback.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"

if [[ $BUILD == 1 ]]; then
    log "building coolpy7 and coolpy7-bench (release)"
    cargo build --release -p coolpy7 -p coolpy7-tests >&2
fi
COOLPY7_BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
BENCH_BIN="${BENCH_BIN:-$ROOT/target/release/coolpy7-bench}"
[[ -x "$BENCH_BIN" ]] || die "no load generator at $BENCH_BIN"

want_broker() { [[ " ${BROKERS[*]} " == *" $1 "* ]]; }

if want_broker coolpy7; then
    [[ -x "$COOLPY7_BIN" ]] || die "no coolpy7 binary at $COOLPY7_BIN"
fi

MOSQUITTO_BIN="${MOSQUITTO_BIN:-}"
if want_broker mosquitto && [[ -z "$MOSQUITTO_BIN" ]]; then
    MOSQUITTO_BIN="$(command -v mosquitto || true)"
    [[ -n "$MOSQUITTO_BIN" ]] || { [[ -x /usr/sbin/mosquitto ]] && MOSQUITTO_BIN=/usr/sbin/mosquitto; }
    if [[ -z "$MOSQUITTO_BIN" ]]; then
        log "installing mosquitto (apt-get)"
        as_root apt-get update >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto >&2
        MOSQUITTO_BIN="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    fi
    [[ -x "$MOSQUITTO_BIN" ]] || die "mosquitto not found"
fi

RUMQTTD_BIN="${RUMQTTD_BIN:-$PEERS_DIR/bin/rumqttd}"
if want_broker rumqttd; then
    if [[ ! -x "$RUMQTTD_BIN" ]]; then
        log "installing rumqttd $RUMQTTD_VERSION into $PEERS_DIR (takes a few minutes)"
        # Not --locked: its lock file pins metrics 0.22.1, which current Rust rejects (E0521).
        cargo install rumqttd --version "$RUMQTTD_VERSION" --root "$PEERS_DIR" >&2
        RUMQTTD_BIN="$PEERS_DIR/bin/rumqttd"
    fi
    [[ -x "$RUMQTTD_BIN" ]] || die "rumqttd not found at $RUMQTTD_BIN"
fi

# ---------------------------------------------------------------------------------------------
# Brokers.
PORT_BASE="${BENCH_PORT_BASE:-18830}"
declare -A PORTS=([coolpy7]=$((PORT_BASE + 1)) [mosquitto]=$((PORT_BASE + 2)) [rumqttd]=$((PORT_BASE + 3)))

STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results-$STAMP.jsonl"
TABLE="$OUT_DIR/results-$STAMP.md"
LOGS="$OUT_DIR/logs-$STAMP"
mkdir -p "$LOGS"
: >"$RESULTS"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_broker NAME LOGFILE: starts it on its port, sets BROKER_PID, waits until it accepts.
start_broker() {
    local name="$1" logf="$2" port="${PORTS[$1]}" conf
    if port_open "$port"; then
        log "port $port is already in use (a broker left over?)"
        return 1
    fi
    case "$name" in
    coolpy7)
        # Queues as large as Mosquitto's max_queued_messages, and like Mosquitto no cap on
        # subscriptions per client; HTTP API off; warnings only.
        # shellcheck disable=SC2086
        "$COOLPY7_BIN" -l "127.0.0.1:$port" -hl nil -mq 100000 -msc 0 --log-level warn \
            ${COOLPY7_EXTRA_ARGS:-} >"$logf" 2>&1 &
        ;;
    mosquitto)
        conf="$LOGS/mosquitto.conf"
        sed "s/^listener .*/listener $port 127.0.0.1/" "$HERE/mosquitto.conf" >"$conf"
        "$MOSQUITTO_BIN" -c "$conf" >"$logf" 2>&1 &
        ;;
    rumqttd)
        conf="$LOGS/rumqttd.toml"
        sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$HERE/rumqttd.toml" >"$conf"
        "$RUMQTTD_BIN" -q -c "$conf" >"$logf" 2>&1 &
        ;;
    esac
    BROKER_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$name exited on start; its log:"
            tail -n 20 "$logf" >&2 || true
            BROKER_PID=""
            return 1
        fi
        if port_open "$port"; then return 0; fi
        sleep 0.05
    done
    log "$name does not accept on port $port after 10 s"
    stop_broker
    return 1
}

stop_broker() {
    [[ -n "$BROKER_PID" ]] || return 0
    local pid="$BROKER_PID" i
    BROKER_PID=""
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# One run: fresh broker, one bench invocation, one JSON line appended to $RESULTS.
record() { # broker scenario run json-or-empty error-or-empty
    python3 - "$@" >>"$RESULTS" <<'PY'
import json, sys
broker, scenario, run, line, error = sys.argv[1:6]
rec = {}
if line:
    try:
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise ValueError("not an object")
    except ValueError as e:
        rec, error = {}, f"unparsable bench output: {e}: {line[:200]}"
rec.update({"broker": broker, "scenario_id": scenario, "run": int(run)})
if error:
    rec["error"] = error
print(json.dumps(rec, sort_keys=True))
PY
}

run_one() { # broker scenario run
    local broker="$1" scen="$2" run="$3"
    local tag="$scen-$broker-r$run" port="${PORTS[$1]}"
    local blog="$LOGS/$tag.broker.log" elog="$LOGS/$tag.bench.log" out="$LOGS/$tag.bench.out"
    local args
    args="$(scenario_args "$scen")"
    args="${args//@CONNS@/$CONNS}"
    args="${args//@EXTRA_SUBS@/$EXTRA_SUBS}"
    args="${args//@SUBS_FILTERS@/$SUBS_FILTERS}"
    args="${args//@SUBS_CLIENTS@/$SUBS_CLIENTS}"

    if ! start_broker "$broker" "$blog"; then
        record "$broker" "$scen" "$run" "" "broker did not start"
        return 0
    fi
    local pid="$BROKER_PID"
    # Bounded: load + warmup + drain, plus time to connect up to 10000 clients and to subscribe
    # a million filters.
    local limit=$((WARMUP + SECS + DRAIN + 90 + CONNS / 100 + SUBS_FILTERS / 5000))
    local rc=0
    # shellcheck disable=SC2086
    timeout -k 5 "$limit" "$BENCH_BIN" $args --host 127.0.0.1 --port "$port" --size "$SIZE" \
        --secs "$SECS" --warmup "$WARMUP" --drain "$DRAIN" --keepalive 600 --pid "$pid" \
        >"$out" 2>"$elog" </dev/null &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""

    local alive=1
    kill -0 "$pid" 2>/dev/null || alive=0
    stop_broker

    local line error=""
    line="$(grep '^[[:space:]]*{' "$out" | tail -n 1 || true)"
    if [[ $rc == 124 || $rc == 137 ]]; then
        error="timed out after ${limit}s"
    elif [[ $rc != 0 ]]; then
        error="bench exit $rc: $(tail -n 3 "$elog" | tr '\n' ' ' | cut -c1-300)"
    elif [[ -z "$line" ]]; then
        error="no JSON from bench"
    fi
    [[ $alive == 1 ]] || error="${error:+$error; }$broker died during the run"
    if [[ -n "$error" ]]; then line=""; fi
    record "$broker" "$scen" "$run" "$line" "$error"
    if [[ -n "$error" ]]; then
        log "  $broker: ERROR $error"
    else
        log "  $broker: $(python3 -c 'import json,sys
r=json.loads(sys.argv[1])
keys=["delivered_per_sec","lost","duplicates","errors","rss_per_conn_bytes","connected"]
s=" ".join(f"{k}={r[k]}" for k in keys if k in r)
l=r.get("latency_us")
if isinstance(l,dict): s+=" p50={} p99={}".format(l.get("p50"),l.get("p99"))
print(s)' "$line" 2>/dev/null || echo ok)"
    fi
}

machine_json() {
    python3 - "$@" <<'PY'
import json, os, platform, subprocess, sys, datetime
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
cpu = ""
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip(); break
except OSError:
    pass
mem = ""
try:
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"):
            mem = f"{int(l.split()[1]) // 1024} MiB"; break
except OSError:
    pass
print(json.dumps({
    "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    "nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
    "coolpy7": sh(f"{sys.argv[1]} --version 2>&1 | head -n1") if sys.argv[1] else "",
    "commit": sh(f"git -C {sys.argv[4]} rev-parse --short HEAD 2>/dev/null"),
    "mosquitto": sh(f"{sys.argv[2]} -h 2>&1 | head -n1") if sys.argv[2] else "",
    "rumqttd": sh(f"{sys.argv[3]} --version 2>&1 | head -n1") if sys.argv[3] else "",
    "nofile": sys.argv[5],
}))
PY
}

# ---------------------------------------------------------------------------------------------
log "results: $RESULTS; logs: $LOGS"
log "brokers: ${BROKERS[*]}; scenarios: ${RUN_SCENARIOS[*]}; runs: $RUNS; secs: $SECS, warmup $WARMUP, drain $DRAIN; conns $CONNS"
MACHINE="$(machine_json "$(want_broker coolpy7 && echo "$COOLPY7_BIN")" \
    "$(want_broker mosquitto && echo "$MOSQUITTO_BIN")" \
    "$(want_broker rumqttd && echo "$RUMQTTD_BIN")" "$ROOT" "$NOFILE")"
SETTINGS="$(printf '{"secs":%s,"warmup":%s,"drain":%s,"size":%s,"conns":%s,"extra_subs":%s,"subs_filters":%s,"subs_clients":%s,"runs":%s,"quick":%s,"mqtt":"%s"}' \
    "$SECS" "$WARMUP" "$DRAIN" "$SIZE" "$CONNS" "$EXTRA_SUBS" "$SUBS_FILTERS" "$SUBS_CLIENTS" "$RUNS" "$QUICK" "$MQTT")"

for ((run = 1; run <= RUNS; run++)); do
    for scen in "${RUN_SCENARIOS[@]}"; do
        log "run $run/$RUNS: $scen ($(scenario_args "$scen"))"
        for broker in "${BROKERS[@]}"; do
            if [[ $broker == rumqttd && "$scen" == *-v5 ]]; then
                log "  rumqttd: skipped (MQTT 5 listener not configured)"
                continue
            fi
            run_one "$broker" "$scen" "$run"
        done
    done
done

python3 "$HERE/report.py" "$RESULTS" --machine "$MACHINE" --settings "$SETTINGS" \
    --brokers "$(IFS=,; echo "${BROKERS[*]}")" --logs "$LOGS" | tee "$TABLE"
log "table: $TABLE"
