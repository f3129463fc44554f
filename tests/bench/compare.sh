#!/usr/bin/env bash
# Runs the same load scenarios (coolpy7-bench) against coolpy7, Mosquitto and rumqttd, one
# fresh broker per run, and prints a Markdown table of the figures with coolpy7's ratios.
#
#   tests/bench/compare.sh [--quick] [--secs N] [--runs R] [--only coolpy7,mosquitto,rumqttd]
#                          [--scenarios fanin-q0,latency-q1,...] [--mqtt 3|5|3,5]
#                          [--transport tcp,tls,ws,wss] [--peer NAME=COMMAND]... [--no-build]
#                          [--list]
#
# --peer NAME=COMMAND (repeatable; or EXTRA_PEERS, one NAME=COMMAND a line): one more broker,
# of any make, measured like Mosquitto. For each run the script starts `bash -c COMMAND` (in a
# session of its own, stdin from /dev/null, output to the run's broker log) with PORT set to
# the plain MQTT port it must listen on (127.0.0.1, BENCH_PORT_BASE+4 for the first peer, +5
# for the second, ..., at most 6), waits until that port accepts, runs the bench with the pid
# of the command and stops its session with SIGTERM afterwards. COMMAND should `exec` the
# broker, so that the pid is the broker's (its RSS and CPU; a warning says when the process is
# still bash), e.g.
#   --peer 'other=sed "s/@PORT@/$PORT/" /tmp/other.conf > /tmp/o.conf && exec /opt/other -c /tmp/o.conf'
# A peer runs only the MQTT 3.1.1 scenarios over TCP without access control (the others are
# skipped with a log line), whatever --only says; NAME (lower case letters, digits, `_`) is
# its column, with a coolpy7/NAME ratio column.
#
# --mqtt (or MQTT=...): which MQTT version each scenario runs with; 5 runs the `<id>-v5` variant
# (the same bench arguments plus `--mqtt 5`), 3,5 both (default 3). `-v5` ids may also be named
# in --scenarios. rumqttd is not run on v5 variants (its config opens a 3.1.1 listener only).
#
# --transport (or TRANSPORT=...): which transports each scenario runs over, comma-separated:
# tcp (default), tls (MQTT over TLS), ws (MQTT over WebSocket, path /mqtt, subprotocol mqtt),
# wss (WebSocket over TLS); a non-tcp one runs the `<id>-<transport>` variant, which may also be
# named in --scenarios (`p2p-q0-tls`, `conns-wss`, `fanin-q1-tls-v5`, ...). In such a run each
# broker keeps its plain listener and gets one more on port +10 (tls), +20 (ws) or +30 (wss) of
# its usual one: coolpy7 `-tl`/`-wl`/`-wsl`, Mosquitto a second `listener` with `certfile` and
# `keyfile` and/or `protocol websockets` (Mosquitto 2.0.11 does not start with a websockets
# listener alone, and binds it to every interface whatever address it is given). For tls and wss the script makes, once per invocation and
# with openssl, a CA and a server certificate for IP 127.0.0.1 / localhost (EC P-256, in the
# logs directory, the key world-readable because Mosquitto reads it after dropping root), and
# both brokers serve that same certificate; the bench trusts the CA (`--tls --ca`). rumqttd
# runs tcp only; Mosquitto runs ws/wss only when its build has websockets (checked once).
#
# 1,000 clients: `fanout-q1-1000` (one publisher, 1,000 subscribers) and `fanin-q1-1000` (1,000
# unthrottled publishers, each with its QoS 1 window of 64, one subscriber) run by default, their
# QoS 0 twins `fanout-q0-1000` and `fanin-q0-1000` only when named (README: 1,000 clients).
#
# `subs-sessions` (run by default): 100,000 clients (--quick 10,000) each leave a
# persistent session with 10 filters (`subs --persistent`: Clean Session 0, SUBSCRIBE, SUBACK,
# DISCONNECT), so that the broker holds them offline: its RSS per filter and per session.
# rumqttd is skipped (its slow accepts would take minutes).
#
# Not in the default list: `handshakes` (`--connectors 8` clients connect, CONNECT, CONNACK,
# DISCONNECT and wait for the close, over and over: cycles per second and the broker's CPU per
# cycle; run e.g. `--scenarios handshakes-tls`). Its TLS variants run the bench with
# `--tls-no-verify` rather than `--ca`: checking the chain and the handshake signature costs the
# client two ECDSA verifications, more than the broker's one signature, and on a small machine
# the bench would be the bottleneck. `conns-tls` and the like give the broker's RSS per idle
# TLS (WebSocket) connection.
#
# Access control (not in the default list either; each starts the brokers with authentication or
# rules, files made once per invocation in the logs directory; rumqttd is not run on them):
#   handshakes-jwt            coolpy7 `-as 1 -jsk <random secret>`, every CONNECT carrying user
#                             `bench` and an HS256 token (made here with python3, exp in 10 years)
#                             as password (`--password-file`); Mosquitto is skipped (no JWT
#                             without a plugin). Compare with `handshakes` of the same invocation.
#   handshakes-password       a password file, every CONNECT the same user and password: coolpy7
#                             `-as 3 -pwf` (argon2id line by `coolpy7 passwd -b`), Mosquitto
#                             `password_file` + `allow_anonymous false` (`$7$` PBKDF2-SHA512 line by
#                             `mosquitto_passwd -b`). coolpy7 remembers a verified password for 5
#                             minutes (a keyed digest), so it hashes once; Mosquitto every time.
#   handshakes-password-cold  the same files, but each CONNECT names another user (`--users
#                             AUTH_USERS`, bench0..benchN-1, all in both files with the same
#                             hash): every check is a first connect, the raw hash cost of each.
#   handshakes-pbkdf2-cold    as -cold, both brokers on Mosquitto's `$7$` file (coolpy7 reads it):
#                             the same hash on both sides.
#   fanin-q0-rules, fanin-q1-rules
#                             fan-in with 1,000 rules: coolpy7 `-acl` (default deny) with 999
#                             rules that do not match the bench's topics (bench/fanin/<p>: some
#                             start with bench/, some are user-qualified for other users, some
#                             use %c) and `allow all #` last; Mosquitto `acl_file` with the same
#                             anonymous `topic` lines, `topic readwrite #` last. Compare with
#                             fanin-q0 / fanin-q1 of the same invocation (the report's ratio rows).
#   fanin-q0-16topics[-rules], fanin-q1-16topics[-rules]
#                             the same with each publisher taking turns over 16 topics
#                             (bench/fanin/<p>/<j>, `--topics 16`): past coolpy7's per-connection
#                             cache of 8 decisions, so that with rules every PUBLISH is decided
#                             from the rules again (the cache never hits).
#   fanin-q1-persistent, fanout-q1-persistent
#                             fanin-q1 / fanout-q1 with subscribers that keep their sessions
#                             (Clean Session 0, `--session-expiry 3600`): what a broker with a data
#                             directory writes for every message. Pair with --peer for coolpy7
#                             `-dd` and Mosquitto `persistence true` (see tests/bench/durable.sh).
# e.g. `--scenarios handshakes,handshakes-jwt,handshakes-password,handshakes-password-cold,
# fanin-q0,fanin-q0-rules,fanin-q1,fanin-q1-rules`. AUTH_USERS (default 200000, --quick 20000):
# user names in the password files for the -cold scenarios; the bench reports `auth.users_reused`
# when it made more CONNECTs than that (a name used twice may hit coolpy7's cache).
#
# Results: target/bench/results-<timestamp>.jsonl (one line per run, the bench's JSON plus
# broker/scenario/run), target/bench/results-<timestamp>.md (the table) and
# target/bench/logs-<timestamp>/ (each broker's and bench's stderr).
#
# Environment: BENCH_BIN (load generator, default target/release/coolpy7-bench), COOLPY7_BIN
# (default target/release/coolpy7, e.g. a build of an older commit to compare with),
# BENCH_PORT_BASE (default 18830; coolpy7, mosquitto and rumqttd listen on +1, +2, +3, the
# --peer brokers on +4, +5, ...), COOLPY7_EXTRA_ARGS (appended to coolpy7's command line),
# RUMQTTD_BIN, MOSQUITTO_BIN, EXTRA_PEERS (see --peer).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

RUMQTTD_VERSION=0.20.0
PEERS_DIR="$ROOT/target/peers"
OUT_DIR="$ROOT/target/bench"

usage() {
    # The header comment, up to the first line that is not a comment.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
    echo
    echo "Scenarios: ${ALL_SCENARIOS[*]}; also ${EXTRA_SCENARIOS[*]}"
}

# ---------------------------------------------------------------------------------------------
# Scenarios: id -> bench arguments (the payload size, durations and --pid are added per run).
declare -A SCENARIO_ARGS=(
    [fanin-q0]="fanin --qos 0 --publishers 4"
    [fanin-q1]="fanin --qos 1 --publishers 4"
    [fanout-q0]="fanout --qos 0 --subscribers 8"
    [fanout-q1]="fanout --qos 1 --subscribers 8"
    # 1,000 clients on one side: one publisher to 1,000 subscribers, 1,000 publishers (each
    # unthrottled, QoS 1 with its window of 64) to one subscriber. 30 s to set up, for rumqttd's
    # slow accepts.
    [fanout-q1-1000]="fanout --qos 1 --subscribers 1000 --connect-timeout 30"
    [fanin-q1-1000]="fanin --qos 1 --publishers 1000 --connect-timeout 30"
    [fanout-q0-1000]="fanout --qos 0 --subscribers 1000 --connect-timeout 30"
    [fanin-q0-1000]="fanin --qos 0 --publishers 1000 --connect-timeout 30"
    [p2p-q0]="p2p --qos 0 --pairs 8"
    [p2p-q1]="p2p --qos 1 --pairs 8"
    [latency-q0]="latency --qos 0 --rate 1000"
    [latency-q1]="latency --qos 1 --rate 1000"
    # rumqttd needs more than the bench's default 10 s to accept 10000 connections. RSS is read
    # after 5 s of idleness: coolpy7's connections sleep after 1-2 s idle and their memory goes
    # back to the system a second or so later (README: Behaviour worth knowing).
    [conns]="conns --conns @CONNS@ --connect-timeout 60 --settle 5"
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
    # Offline persistent sessions: each client connects with Clean Session 0, subscribes 10
    # filters, disconnects; the broker's RSS per filter and per session (no disconnect phase).
    [subs-sessions]="subs --persistent --clients @SUBS_SESSIONS@ --filters @SUBS_SESSION_FILTERS@"
    # Connections set up and torn down per second by 8 clients at once (not run by default).
    [handshakes]="handshakes --connectors 8"
    # Access control (not run by default): the credentials and the brokers' flags and files are
    # added per run (see auth_of, auth_bench_args, start_broker).
    [handshakes-jwt]="handshakes --connectors 8"
    [handshakes-password]="handshakes --connectors 8"
    [handshakes-password-cold]="handshakes --connectors 8 --users @AUTH_USERS@"
    [handshakes-pbkdf2-cold]="handshakes --connectors 8 --users @AUTH_USERS@"
    [fanin-q0-rules]="fanin --qos 0 --publishers 4"
    [fanin-q1-rules]="fanin --qos 1 --publishers 4"
    # Each publisher takes turns over 16 topics: more than coolpy7's per-connection cache of 8
    # decisions, so that with rules every PUBLISH is decided from the rules again.
    [fanin-q0-16topics]="fanin --qos 0 --publishers 4 --topics 16"
    [fanin-q0-16topics-rules]="fanin --qos 0 --publishers 4 --topics 16"
    [fanin-q1-16topics]="fanin --qos 1 --publishers 4 --topics 16"
    [fanin-q1-persistent]="fanin --qos 1 --publishers 4 --session-expiry 3600"
    [fanout-q1-persistent]="fanout --qos 1 --subscribers 8 --session-expiry 3600"
    [fanin-q1-16topics-rules]="fanin --qos 1 --publishers 4 --topics 16"
)
ALL_SCENARIOS=(fanin-q0 fanin-q1 fanout-q0 fanout-q1 fanout-q1-1000 fanin-q1-1000 p2p-q0 p2p-q1
    latency-q0 latency-q1 conns fanin-extra-subs fanout-stalled-q0 fanout-stalled-q1 subs-1m
    subs-200k subs-clients subs-sessions)
# Scenarios run only when named.
EXTRA_SCENARIOS=(fanout-q0-1000 fanin-q0-1000 handshakes handshakes-jwt handshakes-password handshakes-password-cold
    handshakes-pbkdf2-cold fanin-q0-rules fanin-q1-rules fanin-q0-16topics fanin-q0-16topics-rules
    fanin-q1-16topics fanin-q1-16topics-rules fanin-q1-persistent fanout-q1-persistent)
ALL_BROKERS=(coolpy7 mosquitto rumqttd)
ALL_TRANSPORTS=(tcp tls ws wss)

# `<id>[-tls|-ws|-wss][-v5]`: scenario <id> over that transport (default tcp) and MQTT 5.0.
transport_of() {
    local s="${1%-v5}"
    case "$s" in
    *-tls) echo tls ;;
    *-wss) echo wss ;;
    *-ws) echo ws ;;
    *) echo tcp ;;
    esac
}
base_scenario() {
    local s="${1%-v5}" t
    t="$(transport_of "$1")"
    [[ $t == tcp ]] || s="${s%-"$t"}"
    echo "$s"
}
# What a scenario asks of the brokers' access control: none, jwt, password (coolpy7's argon2id
# file, Mosquitto's $7$ file), pbkdf2 (Mosquitto's file for both) or rules.
auth_of() {
    case "$(base_scenario "$1")" in
    handshakes-jwt) echo jwt ;;
    handshakes-password | handshakes-password-cold) echo password ;;
    handshakes-pbkdf2-cold) echo pbkdf2 ;;
    *-rules) echo rules ;;
    *) echo none ;;
    esac
}
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
SUBS_SESSIONS=100000
AUTH_USERS="${AUTH_USERS:-}"
RUNS=1
QUICK=0
BUILD=1
BROKERS=("${ALL_BROKERS[@]}")
SCENARIOS=("${ALL_SCENARIOS[@]}")
SECS_SET=0
MQTT="${MQTT:-3}"
TRANSPORT="${TRANSPORT:-tcp}"
# --peer and EXTRA_PEERS: names in order, and each one's command.
PEER_NAMES=()
declare -A PEER_COMMANDS=()
add_peer() { # NAME=COMMAND
    local name="${1%%=*}" command="${1#*=}"
    [[ "$1" == *=* && "$name" =~ ^[a-z][a-z0-9_]*$ ]] ||
        { echo "--peer wants NAME=COMMAND with NAME of lower case letters, digits and _, not '$1'" >&2; exit 2; }
    [[ " ${ALL_BROKERS[*]} ${PEER_NAMES[*]} " != *" $name "* ]] ||
        { echo "--peer: '$name' is already a broker's name" >&2; exit 2; }
    [[ -n "${command//[[:space:]]/}" ]] || { echo "--peer $name: the command is empty" >&2; exit 2; }
    [[ ${#PEER_NAMES[@]} -lt 6 ]] || { echo "--peer: at most 6 peers (ports +4 to +9)" >&2; exit 2; }
    PEER_NAMES+=("$name")
    PEER_COMMANDS[$name]="$command"
}
if [[ -n "${EXTRA_PEERS:-}" ]]; then
    while IFS= read -r peer; do
        [[ -z "${peer//[[:space:]]/}" ]] || add_peer "$peer"
    done <<<"$EXTRA_PEERS"
fi
is_peer() { [[ -n "${PEER_COMMANDS[$1]+x}" ]]; }

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
    --transport) TRANSPORT="$2"; shift ;;
    --transport=*) TRANSPORT="${1#*=}" ;;
    --peer) [[ $# -ge 2 ]] || { echo "--peer wants NAME=COMMAND" >&2; exit 2; }; add_peer "$2"; shift ;;
    --peer=*) add_peer "${1#*=}" ;;
    --no-build) BUILD=0 ;;
    --list)
        for t in "" -tls -ws -wss; do
            for s in "${ALL_SCENARIOS[@]}" "${EXTRA_SCENARIOS[@]}"; do printf '%s\n' "$s$t" "$s$t-v5"; done
        done
        exit 0
        ;;
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
    SUBS_SESSIONS=10000
    AUTH_USERS="${AUTH_USERS:-20000}"
fi
AUTH_USERS="${AUTH_USERS:-200000}"
SUBS_SESSION_FILTERS=$((SUBS_SESSIONS * 10))
[[ "$AUTH_USERS" =~ ^[0-9]+$ && "$AUTH_USERS" -gt 0 ]] || { echo "AUTH_USERS wants a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -gt 0 ]] || { echo "--secs wants a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -gt 0 ]] || { echo "--runs wants a positive integer" >&2; exit 2; }
for b in "${BROKERS[@]}"; do
    [[ " ${ALL_BROKERS[*]} ${PEER_NAMES[*]} " == *" $b "* ]] ||
        { echo "unknown broker '$b' (${ALL_BROKERS[*]}${PEER_NAMES[*]:+ ${PEER_NAMES[*]}})" >&2; exit 2; }
done
# Every peer runs, named in --only or not.
for b in "${PEER_NAMES[@]}"; do
    [[ " ${BROKERS[*]} " == *" $b "* ]] || BROKERS+=("$b")
done
for s in "${SCENARIOS[@]}"; do
    [[ -n "${SCENARIO_ARGS[$(base_scenario "$s")]+x}" ]] ||
        { echo "unknown scenario '$s' (${ALL_SCENARIOS[*]} ${EXTRA_SCENARIOS[*]}, each also with -tls, -ws or -wss and -v5)" >&2; exit 2; }
done
mapfile -t MQTT_VERSIONS < <(split_list "$MQTT")
for m in "${MQTT_VERSIONS[@]}"; do
    [[ "$m" == 3 || "$m" == 5 ]] || { echo "--mqtt wants 3, 5 or 3,5, not '$MQTT'" >&2; exit 2; }
done
[[ ${#MQTT_VERSIONS[@]} -gt 0 ]] || { echo "--mqtt wants 3, 5 or 3,5" >&2; exit 2; }
mapfile -t TRANSPORTS < <(split_list "$TRANSPORT")
for t in "${TRANSPORTS[@]}"; do
    [[ " ${ALL_TRANSPORTS[*]} " == *" $t "* ]] ||
        { echo "--transport wants some of ${ALL_TRANSPORTS[*]}, not '$TRANSPORT'" >&2; exit 2; }
done
[[ ${#TRANSPORTS[@]} -gt 0 ]] || { echo "--transport wants some of ${ALL_TRANSPORTS[*]}" >&2; exit 2; }
# Each scenario over each transport and in each version asked for (a suffix given in the id pins
# that one), v3 and v5 of one next to each other.
RUN_SCENARIOS=()
for s in "${SCENARIOS[@]}"; do
    base="$(base_scenario "$s")"
    if [[ "$s" == *-v5 ]]; then versions=(5); else versions=("${MQTT_VERSIONS[@]}"); fi
    if [[ "${s%-v5}" != "$base" ]]; then transports=("$(transport_of "$s")"); else transports=("${TRANSPORTS[@]}"); fi
    for t in "${transports[@]}"; do
        for m in "${versions[@]}"; do
            id="$base"
            [[ $t == tcp ]] || id+="-$t"
            [[ $m == 3 ]] || id+="-v5"
            RUN_SCENARIOS+=("$id")
        done
    done
done
# rumqttd runs only v3 over tcp: with nothing else asked of it, it is not even installed.
ANY_RUMQTTD=0
for s in "${RUN_SCENARIOS[@]}"; do
    [[ "$s" == *-v5 || $(transport_of "$s") != tcp ]] || ANY_RUMQTTD=1
done
if [[ $ANY_RUMQTTD == 0 && " ${BROKERS[*]} " == *" rumqttd "* ]]; then
    mapfile -t BROKERS < <(printf '%s\n' "${BROKERS[@]}" | grep -vx rumqttd)
fi
ANY_TLS=0
ANY_AUTH=0
for s in "${RUN_SCENARIOS[@]}"; do
    case "$(transport_of "$s")" in tls | wss) ANY_TLS=1 ;; esac
    [[ "$(auth_of "$s")" == none ]] || ANY_AUTH=1
done

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every broker this script starts is stopped on exit, whatever the exit.
BROKER_PID=""
# The process group of a --peer's command (started with setsid), stopped as a whole.
BROKER_GROUP=""
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
for i in "${!PEER_NAMES[@]}"; do PORTS[${PEER_NAMES[$i]}]=$((PORT_BASE + 4 + i)); done
declare -A TRANSPORT_PORT_OFFSET=([tcp]=0 [tls]=10 [ws]=20 [wss]=30)
port_for() { echo $((PORTS[$1] + TRANSPORT_PORT_OFFSET[$2])); } # broker transport

STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results-$STAMP.jsonl"
TABLE="$OUT_DIR/results-$STAMP.md"
LOGS="$OUT_DIR/logs-$STAMP"
mkdir -p "$LOGS"
: >"$RESULTS"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# TLS: one CA and one server certificate (127.0.0.1, localhost) per invocation, used by both
# brokers; nothing of it outlives the logs directory.
TLS_DIR="$LOGS/tls"
TLS_CA="$TLS_DIR/ca.crt"
TLS_CERT="$TLS_DIR/server.crt"
TLS_KEY="$TLS_DIR/server.key"
make_tls() {
    command -v openssl >/dev/null || die "openssl is required for the tls and wss scenarios"
    mkdir -p "$TLS_DIR"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$TLS_DIR/ca.key" -out "$TLS_CA" -days 2 \
        -subj "/CN=coolpy7 bench CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" >"$TLS_DIR/openssl.log" 2>&1 ||
        die "openssl could not make the CA (see $TLS_DIR/openssl.log)"
    openssl req "${ec[@]}" -keyout "$TLS_KEY" -out "$TLS_DIR/server.csr" -subj "/CN=127.0.0.1" \
        >>"$TLS_DIR/openssl.log" 2>&1 || die "openssl could not make the server key"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" >"$TLS_DIR/server.ext"
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_CA" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -out "$TLS_CERT" -days 2 -extfile "$TLS_DIR/server.ext" \
        >>"$TLS_DIR/openssl.log" 2>&1 || die "openssl could not sign the server certificate"
    # Mosquitto, started as root, reads its key after switching to user mosquitto.
    chmod 755 "$TLS_DIR"
    chmod 644 "$TLS_KEY"
}

# ---------------------------------------------------------------------------------------------
# Access control: a JWT secret and token, password files and rules files, once per invocation.
AUTH_DIR="$LOGS/auth"
JWT_SECRET=""
make_auth() {
    mkdir -p "$AUTH_DIR"
    # Mosquitto, started as root, reads its files after switching to user mosquitto.
    chmod 755 "$AUTH_DIR"
    local need_coolpy7_file=0 need_mosquitto_file=0 need_rules=0 s
    for s in "${RUN_SCENARIOS[@]}"; do
        case "$(auth_of "$s")" in
        password)
            want_broker coolpy7 && need_coolpy7_file=1
            want_broker mosquitto && need_mosquitto_file=1
            ;;
        pbkdf2) need_mosquitto_file=1 ;;
        rules) need_rules=1 ;;
        esac
    done
    # The secret, the token and the password: random, never reused across invocations.
    python3 - "$AUTH_DIR" <<'PY' || die "python3 could not make the JWT"
import base64, hashlib, hmac, json, os, secrets, sys, time
d = sys.argv[1]
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")
secret = secrets.token_hex(32)
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
claims = {"sub": "bench", "iat": int(time.time()), "exp": int(time.time()) + 10 * 365 * 86400}
payload = b64(json.dumps(claims, separators=(",", ":")).encode())
signature = b64(hmac.new(secret.encode(), header + b"." + payload, hashlib.sha256).digest())
for name, text in (("jwt.secret", secret), ("token.jwt", (header + b"." + payload + b"." + signature).decode()),
                   ("password", secrets.token_urlsafe(18))):
    with open(os.path.join(d, name), "w") as f:
        f.write(text + "\n")
PY
    JWT_SECRET="$(cat "$AUTH_DIR/jwt.secret")"
    local password
    password="$(cat "$AUTH_DIR/password")"
    # One hash per file (user bench), then the same hash for bench0 .. bench<AUTH_USERS-1>: a
    # hash does not depend on the user name, and hashing 200,000 times would take hours.
    if [[ $need_coolpy7_file == 1 ]]; then
        # coolpy7's order is `passwd [-c] [-b PASSWORD] FILE USER` (not mosquitto_passwd's).
        "$COOLPY7_BIN" passwd -c -b "$password" "$AUTH_DIR/coolpy7.passwd.one" bench \
            >"$AUTH_DIR/passwd.log" 2>&1 || die "coolpy7 passwd failed (see $AUTH_DIR/passwd.log)"
        widen_password_file "$AUTH_DIR/coolpy7.passwd.one" "$AUTH_DIR/coolpy7.passwd"
    fi
    if [[ $need_mosquitto_file == 1 ]]; then
        command -v mosquitto_passwd >/dev/null ||
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto >&2
        mosquitto_passwd -c -b "$AUTH_DIR/mosquitto.passwd.one" bench "$password" \
            >>"$AUTH_DIR/passwd.log" 2>&1 ||
            die "mosquitto_passwd failed (see $AUTH_DIR/passwd.log)"
        widen_password_file "$AUTH_DIR/mosquitto.passwd.one" "$AUTH_DIR/mosquitto.passwd"
    fi
    if [[ $need_rules == 1 ]]; then
        make_rules "$AUTH_DIR/coolpy7.acl" "$AUTH_DIR/mosquitto.acl"
    fi
    chmod 644 "$AUTH_DIR"/*
    if [[ $need_coolpy7_file == 1 || $need_mosquitto_file == 1 ]]; then
        log "access control files in $AUTH_DIR ($AUTH_USERS users per password file)"
    else
        log "access control files in $AUTH_DIR"
    fi
}

widen_password_file() { # one-user file, output: bench and bench0 .. bench<AUTH_USERS-1>
    python3 - "$1" "$2" "$AUTH_USERS" <<'PY' || die "could not write $2"
import sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
line = next(l.strip() for l in open(src) if l.startswith("bench:"))
hash_ = line.split(":", 1)[1]
with open(dst, "w") as f:
    f.write(f"bench:{hash_}\n")
    for k in range(n):
        f.write(f"bench{k}:{hash_}\n")
PY
}

# 1,000 rules where the bench's topics (bench/fanin/<p>, subscribed as bench/fanin/+) match only
# the last: 999 that a realistic deployment could have (per-device trees, rules sharing the
# bench's first level, rules for other users, %c placeholders), then `allow all #`; default deny.
# Mosquitto's file: the same filters as anonymous `topic` lines (its ACL walk for a client
# without a user name), `topic readwrite #` last, then the user-qualified ones under their
# `user` lines and the %c ones as `pattern` lines (neither walked for the bench's anonymous
# clients: Mosquitto checks a client's topic lines before any pattern).
make_rules() { # coolpy7-file mosquitto-file
    python3 - "$1" "$2" <<'PY' || die "could not write the rules files"
import sys
c7, mq = sys.argv[1], sys.argv[2]
rules, topics, users, patterns = [], [], [], []
for n in range(999):
    kind = n % 5
    if kind == 0:
        rules.append(f"allow publish devices/{n}/#")
        topics.append(f"topic write devices/{n}/#")
    elif kind == 1:
        rules.append(f"allow all sensors/{n}/+/data")
        topics.append(f"topic readwrite sensors/{n}/+/data")
    elif kind == 2:
        rules.append(f"allow publish bench/other{n}/#")
        topics.append(f"topic write bench/other{n}/#")
    elif kind == 3:
        rules.append(f"allow all bench/# user user{n}")
        users.append((f"user{n}", "topic readwrite bench/#"))
    else:
        rules.append(f"allow publish devices/%c/{n}/#")
        patterns.append(f"pattern write devices/%c/{n}/#")
rules.append("allow all #")
topics.append("topic readwrite #")
assert len(rules) == 1000
with open(c7, "w") as f:
    f.write("# 1,000 rules: the bench's topics match only the last one (compare.sh)\n")
    f.write("\n".join(rules) + "\n")
with open(mq, "w") as f:
    f.write("# compare.sh: anonymous clients first, then users, then patterns\n")
    f.write("\n".join(topics) + "\n")
    for user, line in users:
        f.write(f"user {user}\n{line}\n")
    f.write("\n".join(patterns) + "\n")
PY
}

# Whether this Mosquitto was built with websockets: it refuses a `protocol websockets` listener
# otherwise.
mosquitto_has_websockets() {
    local conf="$LOGS/mosquitto-ws-check.conf" port pid i ok=1
    port="$(port_for mosquitto ws)"
    printf '%s\n' "listener $(port_for mosquitto tcp) 127.0.0.1" "listener $port 127.0.0.1" \
        "protocol websockets" "allow_anonymous true" "log_dest stderr" >"$conf"
    "$MOSQUITTO_BIN" -c "$conf" >"$LOGS/mosquitto-ws-check.log" 2>&1 &
    pid=$!
    for ((i = 0; i < 40; i++)); do
        if port_open "$port"; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return $ok
}

# start_broker NAME LOGFILE TRANSPORT AUTH: starts it with its plain listener and one for
# TRANSPORT, and the access control AUTH asks for (see auth_of); sets BROKER_PID, waits until the
# TRANSPORT one accepts.
start_broker() {
    local name="$1" logf="$2" transport="${3:-tcp}" auth="${4:-none}" port conf
    port="$(port_for "$name" "$transport")"
    local plain="${PORTS[$name]}"
    if port_open "$plain" || port_open "$port"; then
        log "port $plain or $port is already in use (a broker left over?)"
        return 1
    fi
    case "$name" in
    coolpy7)
        local listen=(-l "127.0.0.1:$plain")
        case "$transport" in
        tls) listen+=(-tl "127.0.0.1:$port" -tc "$TLS_CERT" -tk "$TLS_KEY") ;;
        ws) listen+=(-wl "127.0.0.1:$port") ;;
        wss) listen+=(-wsl "127.0.0.1:$port" -tc "$TLS_CERT" -tk "$TLS_KEY") ;;
        esac
        local access=()
        case "$auth" in
        jwt) access=(-as 1 -jsk "$JWT_SECRET") ;;
        password) access=(-as 3 -pwf "$AUTH_DIR/coolpy7.passwd") ;;
        pbkdf2) access=(-as 3 -pwf "$AUTH_DIR/mosquitto.passwd") ;;
        rules) access=(-acl "$AUTH_DIR/coolpy7.acl") ;;
        esac
        # Queues as large as Mosquitto's max_queued_messages, and like Mosquitto no cap on
        # subscriptions per client; HTTP API off; warnings only.
        # shellcheck disable=SC2086
        "$COOLPY7_BIN" "${listen[@]}" -hl nil -mq 100000 -msc 0 --log-level warn \
            "${access[@]}" ${COOLPY7_EXTRA_ARGS:-} >"$logf" 2>&1 &
        ;;
    mosquitto)
        conf="$LOGS/mosquitto.conf"
        # The measured listener right after the plain one, its own options under it, so that
        # the listener options of the file (max_connections) apply to it.
        local extra=()
        case "$transport" in
        tls) extra=("listener $port 127.0.0.1" "certfile $TLS_CERT" "keyfile $TLS_KEY") ;;
        ws) extra=("listener $port 127.0.0.1" "protocol websockets") ;;
        wss) extra=("listener $port 127.0.0.1" "protocol websockets" "certfile $TLS_CERT"
            "keyfile $TLS_KEY") ;;
        esac
        # Access control is global (per_listener_settings false): appended at the end.
        local access=()
        case "$auth" in
        password | pbkdf2) access=("password_file $AUTH_DIR/mosquitto.passwd") ;;
        rules) access=("acl_file $AUTH_DIR/mosquitto.acl") ;;
        esac
        awk -v plain="listener $plain 127.0.0.1" -v extra="$(printf '%s\n' "${extra[@]}")" \
            -v anon="$([[ ${#access[@]} -gt 0 && $auth != rules ]] && echo false || echo true)" '
            /^listener / { print plain; if (extra != "") print extra; next }
            /^allow_anonymous / { print "allow_anonymous " anon; next } { print }
        ' "$HERE/mosquitto.conf" >"$conf"
        [[ ${#access[@]} == 0 ]] || printf '%s\n' "${access[@]}" >>"$conf"
        "$MOSQUITTO_BIN" -c "$conf" >"$logf" 2>&1 &
        ;;
    rumqttd)
        conf="$LOGS/rumqttd.toml"
        sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$HERE/rumqttd.toml" >"$conf"
        "$RUMQTTD_BIN" -q -c "$conf" >"$logf" 2>&1 &
        ;;
    *)
        # A --peer: its command, in a session of its own so that whatever it starts is
        # stopped with it (setsid execs in place: the pid stays the command's).
        if command -v setsid >/dev/null; then
            PORT="$plain" setsid bash -c "${PEER_COMMANDS[$name]}" >"$logf" 2>&1 </dev/null &
            BROKER_GROUP=$!
        else
            PORT="$plain" bash -c "${PEER_COMMANDS[$name]}" >"$logf" 2>&1 </dev/null &
        fi
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
        if port_open "$port"; then
            if is_peer "$name" && [[ "$(cat "/proc/$BROKER_PID/comm" 2>/dev/null)" == bash ]]; then
                log "  $name: its command did not exec the broker: RSS and CPU are those of bash"
            fi
            return 0
        fi
        sleep 0.05
    done
    log "$name does not accept on port $port after 10 s"
    stop_broker
    return 1
}

stop_broker() {
    [[ -n "$BROKER_PID" ]] || return 0
    local pid="$BROKER_PID" target="$BROKER_PID" i
    # A peer's whole session (the group setsid made), not only its first process.
    [[ -z "$BROKER_GROUP" ]] || target="-$BROKER_GROUP"
    BROKER_PID=""
    BROKER_GROUP=""
    kill -TERM -- "$target" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for 10 s; killing it"
    kill -KILL -- "$target" 2>/dev/null || true
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
    local broker="$1" scen="$2" run="$3" transport port
    transport="$(transport_of "$scen")"
    port="$(port_for "$broker" "$transport")"
    local tag="$scen-$broker-r$run"
    local blog="$LOGS/$tag.broker.log" elog="$LOGS/$tag.bench.log" out="$LOGS/$tag.bench.out"
    local args
    args="$(scenario_args "$scen")"
    args="${args//@CONNS@/$CONNS}"
    args="${args//@EXTRA_SUBS@/$EXTRA_SUBS}"
    args="${args//@SUBS_FILTERS@/$SUBS_FILTERS}"
    args="${args//@SUBS_CLIENTS@/$SUBS_CLIENTS}"
    args="${args//@SUBS_SESSIONS@/$SUBS_SESSIONS}"
    args="${args//@SUBS_SESSION_FILTERS@/$SUBS_SESSION_FILTERS}"
    args="${args//@AUTH_USERS@/$AUTH_USERS}"
    local auth
    auth="$(auth_of "$scen")"
    case "$auth" in
    jwt) args+=" --username bench --password-file $AUTH_DIR/token.jwt" ;;
    password | pbkdf2) args+=" --username bench --password-file $AUTH_DIR/password" ;;
    esac
    # The transport's flags; handshakes do not verify the certificate (see the header).
    local verify=(--ca "$TLS_CA")
    [[ "$(base_scenario "$scen")" != handshakes* ]] || verify=(--tls-no-verify)
    case "$transport" in
    tls) args+=" --tls ${verify[*]}" ;;
    ws) args+=" --ws" ;;
    wss) args+=" --ws --tls ${verify[*]}" ;;
    esac

    if ! start_broker "$broker" "$blog" "$transport" "$auth"; then
        record "$broker" "$scen" "$run" "" "broker did not start"
        return 0
    fi
    local pid="$BROKER_PID"
    # Bounded: load + warmup + drain, plus time to connect up to 10000 clients, to subscribe
    # a million filters and to leave 100,000 persistent sessions.
    local limit=$((WARMUP + SECS + DRAIN + 90 + CONNS / 100 + SUBS_FILTERS / 5000 + SUBS_SESSIONS / 500))
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
keys=["delivered_per_sec","lost","unread","gaps","duplicates","errors","rss_per_conn_bytes","connected",
      "handshakes_per_sec","broker_cpu_us_per_handshake","broker_cpu_pct","sessions",
      "sessions_per_sec","rss_per_filter_bytes","rss_per_session_bytes","sessions_present"]
# unread and gaps only when not 0: most runs have neither.
s=" ".join(f"{k}={r[k]}" for k in keys if k in r and (r[k] or k not in ("unread","gaps")))
l=r.get("latency_us")
if isinstance(l,dict): s+=" p50={} p99={}".format(l.get("p50"),l.get("p99"))
a=r.get("auth")
if isinstance(a,dict) and a.get("users_reused"): s+=" (user names reused: {} CONNECTs over {})".format(a.get("connects"),a.get("users"))
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
[[ $ANY_TLS == 0 ]] || make_tls
[[ $ANY_AUTH == 0 ]] || make_auth
MOSQUITTO_WS=1
for s in "${RUN_SCENARIOS[@]}"; do
    if [[ $(transport_of "$s") == ws* ]] && want_broker mosquitto; then
        if ! mosquitto_has_websockets; then
            MOSQUITTO_WS=0
            log "this Mosquitto has no websockets: its ws and wss runs are skipped"
        fi
        break
    fi
done

log "results: $RESULTS; logs: $LOGS"
log "brokers: ${BROKERS[*]}; scenarios: ${RUN_SCENARIOS[*]}; runs: $RUNS; secs: $SECS, warmup $WARMUP, drain $DRAIN; conns $CONNS"
MACHINE="$(machine_json "$(want_broker coolpy7 && echo "$COOLPY7_BIN")" \
    "$(want_broker mosquitto && echo "$MOSQUITTO_BIN")" \
    "$(want_broker rumqttd && echo "$RUMQTTD_BIN")" "$ROOT" "$NOFILE")"
SETTINGS="$(printf '{"secs":%s,"warmup":%s,"drain":%s,"size":%s,"conns":%s,"extra_subs":%s,"subs_filters":%s,"subs_clients":%s,"subs_sessions":%s,"subs_session_filters":%s,"auth_users":%s,"runs":%s,"quick":%s,"mqtt":"%s","transport":"%s"}' \
    "$SECS" "$WARMUP" "$DRAIN" "$SIZE" "$CONNS" "$EXTRA_SUBS" "$SUBS_FILTERS" "$SUBS_CLIENTS" "$SUBS_SESSIONS" "$SUBS_SESSION_FILTERS" "$AUTH_USERS" "$RUNS" "$QUICK" "$MQTT" "$TRANSPORT")"

for ((run = 1; run <= RUNS; run++)); do
    for scen in "${RUN_SCENARIOS[@]}"; do
        log "run $run/$RUNS: $scen ($(scenario_args "$scen"), over $(transport_of "$scen"))"
        for broker in "${BROKERS[@]}"; do
            if [[ $broker == rumqttd && "$scen" == *-v5 ]]; then
                log "  rumqttd: skipped (MQTT 5 listener not configured)"
                continue
            fi
            if [[ $broker == rumqttd && $(transport_of "$scen") != tcp ]]; then
                log "  rumqttd: skipped (TLS and WebSocket listeners not configured)"
                continue
            fi
            if [[ $broker == rumqttd && $(base_scenario "$scen") == subs-sessions ]]; then
                log "  rumqttd: skipped (its accepts are slow: $SUBS_SESSIONS sessions would take minutes)"
                continue
            fi
            if [[ $broker == rumqttd && $(auth_of "$scen") != none ]]; then
                log "  rumqttd: skipped (access control not configured)"
                continue
            fi
            if is_peer "$broker" && [[ "$scen" == *-v5 || $(transport_of "$scen") != tcp ||
                $(auth_of "$scen") != none ]]; then
                log "  $broker: skipped (a --peer runs only MQTT 3.1.1 over TCP without access control)"
                continue
            fi
            if [[ $broker == mosquitto && $(auth_of "$scen") == jwt ]]; then
                log "  mosquitto: skipped (no JWT authentication without a plugin)"
                continue
            fi
            if [[ $broker == mosquitto && $MOSQUITTO_WS == 0 && $(transport_of "$scen") == ws* ]]; then
                log "  mosquitto: skipped (built without websockets)"
                continue
            fi
            run_one "$broker" "$scen" "$run"
        done
    done
done

# The peers' commands, for the table's header: {"NAME": "COMMAND", ...}.
PEER_ARGS=()
for p in "${PEER_NAMES[@]}"; do PEER_ARGS+=("$p" "${PEER_COMMANDS[$p]}"); done
PEERS_JSON="$(python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
    "${PEER_ARGS[@]}")"
python3 "$HERE/report.py" "$RESULTS" --machine "$MACHINE" --settings "$SETTINGS" \
    --brokers "$(IFS=,; echo "${BROKERS[*]}")" --peers "$PEERS_JSON" --logs "$LOGS" | tee "$TABLE"
log "table: $TABLE"
