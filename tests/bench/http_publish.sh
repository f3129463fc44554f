#!/usr/bin/env bash
# HTTP publish (`POST /pub`, Coolpy7's HTTP API) measured with wrk: requests per second and
# latency percentiles, without authentication and with JWT (`-as 1 -jsk`, `Authorization: Basic
# <jwt>`), one fresh coolpy7 per run. Mosquitto has no HTTP publish, so there is no peer column.
#
#   tests/bench/http_publish.sh [--runs R] [--secs N] [--warmup N] [--threads T]
#                               [--connections C] [--qos 0|1] [--size BYTES] [--only none,jwt]
#                               [--no-build]
#
# Each run of each variant: start coolpy7 (`-l` and `-hl` on loopback, `-hmc` = 2 × C so that
# wrk's reconnects never wait for a slot, `-mq 100000`, warnings only), connect a subscriber to
# `bench/http` (mosquitto_sub, with the token as password under -as 1) and wait until the broker
# counts its subscription, run wrk for --warmup s (not measured), then `wrk -t T -c C -d N
# --latency -s http_publish.lua` on `POST /pub?clientid=bench&topic=bench/http&qos=Q` with a
# SIZE-byte body; read the broker's CPU time from /proc and its counters from /metrics
# (messages received over HTTP and sent to the subscriber). Every request is its own TCP
# connection: the broker answers `Connection: close`, so requests/s includes a TCP handshake.
#
# Defaults: --runs 3 (the table shows medians), --secs 10, --warmup 2, --threads 2,
# --connections 32, --qos 0, --size 64. Needs wrk (`apt-get install wrk`, done when missing and
# root), mosquitto_sub (mosquitto-clients) and python3.
#
# Results: target/bench/http-<timestamp>.jsonl (one line per run), target/bench/http-<timestamp>.md
# (the table), target/bench/http-logs-<timestamp>/ (broker and wrk output). Environment:
# COOLPY7_BIN (default target/release/coolpy7), BENCH_PORT_BASE (default 18830; MQTT on +41,
# HTTP on +42), COOLPY7_EXTRA_ARGS (appended to coolpy7's command line).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
OUT_DIR="$ROOT/target/bench"

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

RUNS=3
SECS=10
WARMUP=2
THREADS=2
CONNS=32
QOS=0
SIZE=64
BUILD=1
VARIANTS=(none jwt)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --runs) RUNS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --connections) CONNS="$2"; shift ;;
    --qos) QOS="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --only) mapfile -t VARIANTS < <(tr ', ' '\n\n' <<<"$2" | sed '/^$/d'); shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "http_publish.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
for n in "$RUNS" "$SECS" "$THREADS" "$CONNS" "$SIZE"; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || { echo "counts and durations want positive integers" >&2; exit 2; }
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || { echo "--warmup wants an integer" >&2; exit 2; }
[[ "$QOS" == 0 || "$QOS" == 1 ]] || { echo "--qos wants 0 or 1" >&2; exit 2; }
for v in "${VARIANTS[@]}"; do
    [[ "$v" == none || "$v" == jwt ]] || { echo "--only wants none and/or jwt" >&2; exit 2; }
done

log() { printf '[http_publish %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

BROKER_PID=""
SUB_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_sub
    stop_broker
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null || die "python3 is required"
if ! command -v wrk >/dev/null; then
    [[ $(id -u) == 0 ]] || die "wrk is missing: apt-get install wrk"
    log "installing wrk (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >&2
fi
if ! command -v mosquitto_sub >/dev/null; then
    [[ $(id -u) == 0 ]] || die "mosquitto_sub is missing: apt-get install mosquitto-clients"
    log "installing mosquitto-clients (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto-clients >&2
fi
if [[ $BUILD == 1 ]]; then
    log "building coolpy7 (release)"
    cargo build --release -p coolpy7 >&2
fi
COOLPY7_BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
[[ -x "$COOLPY7_BIN" ]] || die "no coolpy7 binary at $COOLPY7_BIN"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT_BASE="${BENCH_PORT_BASE:-18830}"
MQTT_PORT=$((PORT_BASE + 41))
HTTP_PORT=$((PORT_BASE + 42))
STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/http-$STAMP.jsonl"
TABLE="$OUT_DIR/http-$STAMP.md"
LOGS="$OUT_DIR/http-logs-$STAMP"
mkdir -p "$LOGS"
: >"$RESULTS"

# A random HMAC secret and an HS256 token for user bench (exp in 10 years).
python3 - "$LOGS" <<'PY' || die "python3 could not make the JWT"
import base64, hashlib, hmac, json, os, secrets, sys, time
d = sys.argv[1]
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")
secret = secrets.token_hex(32)
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
claims = {"sub": "bench", "iat": int(time.time()), "exp": int(time.time()) + 10 * 365 * 86400}
payload = b64(json.dumps(claims, separators=(",", ":")).encode())
signature = b64(hmac.new(secret.encode(), header + b"." + payload, hashlib.sha256).digest())
for name, text in (("jwt.secret", secret), ("token.jwt", (header + b"." + payload + b"." + signature).decode())):
    with open(os.path.join(d, name), "w") as f:
        f.write(text + "\n")
PY
JWT_SECRET="$(cat "$LOGS/jwt.secret")"
TOKEN="$(cat "$LOGS/token.jwt")"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# GET /metrics; prints the value of one series (its name with labels, as the broker writes
# it), or nothing.
metric() { # series
    python3 - "$HTTP_PORT" "$1" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
except Exception:
    sys.exit(0)
for line in text.splitlines():
    if line.startswith(name + " "):
        print(line.rsplit(" ", 1)[1])
        break
PY
}

cpu_ticks() { # pid: utime + stime in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

start_broker() { # variant logfile
    local access=()
    [[ $1 != jwt ]] || access=(-as 1 -jsk "$JWT_SECRET")
    if port_open "$MQTT_PORT" || port_open "$HTTP_PORT"; then
        log "port $MQTT_PORT or $HTTP_PORT is already in use"
        return 1
    fi
    # shellcheck disable=SC2086
    "$COOLPY7_BIN" -l "127.0.0.1:$MQTT_PORT" -hl "127.0.0.1:$HTTP_PORT" -hmc $((2 * CONNS)) \
        -mq 100000 --log-level warn "${access[@]}" ${COOLPY7_EXTRA_ARGS:-} >"$2" 2>&1 &
    BROKER_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$BROKER_PID" 2>/dev/null || { log "coolpy7 exited on start:"; tail -n 20 "$2" >&2; BROKER_PID=""; return 1; }
        if port_open "$HTTP_PORT" && port_open "$MQTT_PORT"; then return 0; fi
        sleep 0.05
    done
    log "coolpy7 does not accept after 10 s"
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
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

start_sub() { # variant logfile
    local creds=()
    [[ $1 != jwt ]] || creds=(-u bench -P "$TOKEN")
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -i bench-http-sub -q "$QOS" -t bench/http \
        "${creds[@]}" >/dev/null 2>"$2" &
    SUB_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ "$(metric coolpy7_subscriptions)" != 1 ]] || return 0
        kill -0 "$SUB_PID" 2>/dev/null || { log "mosquitto_sub exited:"; cat "$2" >&2; SUB_PID=""; return 1; }
        sleep 0.1
    done
    log "the subscriber did not subscribe within 10 s"
    return 1
}

stop_sub() {
    [[ -n "$SUB_PID" ]] || return 0
    kill -TERM "$SUB_PID" 2>/dev/null || true
    wait "$SUB_PID" 2>/dev/null || true
    SUB_PID=""
}

URL="http://127.0.0.1:$HTTP_PORT/pub?clientid=bench&topic=bench/http&qos=$QOS"
HZ="$(getconf CLK_TCK)"

run_one() { # variant run
    local variant="$1" run="$2" tag="$1-r$2"
    local auth=""
    [[ $variant != jwt ]] || auth="Basic $TOKEN"
    start_broker "$variant" "$LOGS/$tag.broker.log" || die "coolpy7 did not start"
    start_sub "$variant" "$LOGS/$tag.sub.log" || die "the subscriber did not start"
    if [[ $WARMUP -gt 0 ]]; then
        HTTP_PUB_SIZE="$SIZE" HTTP_PUB_AUTH="$auth" HTTP_PUB_JSON="" \
            wrk -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" -s "$HERE/http_publish.lua" "$URL" \
            >"$LOGS/$tag.warmup.out" 2>&1 || die "wrk failed (warm-up; see $LOGS/$tag.warmup.out)"
    fi
    local received0 sent0 cpu0 cpu1 received1 sent1
    received0="$(metric 'coolpy7_messages_received_total{qos="'"$QOS"'"}')"
    sent0="$(metric 'coolpy7_messages_sent_total{qos="'"$QOS"'"}')"
    cpu0="$(cpu_ticks "$BROKER_PID")"
    HTTP_PUB_SIZE="$SIZE" HTTP_PUB_AUTH="$auth" HTTP_PUB_JSON="$LOGS/$tag.json" \
        wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --latency -s "$HERE/http_publish.lua" "$URL" \
        >"$LOGS/$tag.wrk.out" 2>&1 || die "wrk failed (see $LOGS/$tag.wrk.out)"
    cpu1="$(cpu_ticks "$BROKER_PID")"
    # Let the last deliveries reach the subscriber before counting them.
    sleep 1
    received1="$(metric 'coolpy7_messages_received_total{qos="'"$QOS"'"}')"
    sent1="$(metric 'coolpy7_messages_sent_total{qos="'"$QOS"'"}')"
    local alive=1
    kill -0 "$BROKER_PID" 2>/dev/null || alive=0
    stop_sub
    stop_broker
    [[ $alive == 1 ]] || die "coolpy7 died during the run (see $LOGS/$tag.broker.log)"
    python3 - "$LOGS/$tag.json" "$variant" "$run" "$QOS" "$SIZE" "$THREADS" "$CONNS" \
        "${received0:-}" "${received1:-}" "${sent0:-}" "${sent1:-}" "$cpu0" "$cpu1" "$HZ" \
        >>"$RESULTS" <<'PY'
import json, sys
path, variant, run, qos, size, threads, conns, r0, r1, s0, s1, c0, c1, hz = sys.argv[1:15]
rec = json.load(open(path))
num = lambda v: float(v) if v else None
rec.update({"variant": variant, "run": int(run), "qos": int(qos), "size": int(size),
            "threads": int(threads), "connections": int(conns)})
secs = rec["duration_us"] / 1e6
ok = rec["requests"] - rec["status_errors"]
rec["ok_requests"] = ok
if num(r0) is not None and num(r1) is not None:
    rec["broker_received"] = int(num(r1) - num(r0))
if num(s0) is not None and num(s1) is not None:
    rec["delivered"] = int(num(s1) - num(s0))
cpu = (int(c1) - int(c0)) / int(hz)
rec["broker_cpu_pct"] = round(cpu / secs * 100, 1)
if rec["requests"]:
    rec["broker_cpu_us_per_request"] = round(cpu / rec["requests"] * 1e6, 1)
print(json.dumps(rec, sort_keys=True))
PY
    log "  $variant run $run: $(tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
l = r["latency_us"]
errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
print("{:.0f} req/s, p50 {} us, p99 {} us, non-2xx {}, socket errors {}, published {}, "
      "delivered {}, broker CPU {}%".format(r["requests_per_sec"], l["p50"], l["p99"],
      r["status_errors"], errors, r.get("broker_received"), r.get("delivered"),
      r["broker_cpu_pct"]))')"
}

log "results: $RESULTS; logs: $LOGS"
log "wrk -t $THREADS -c $CONNS -d ${SECS}s (after ${WARMUP}s), POST /pub qos $QOS, $SIZE-byte body; variants: ${VARIANTS[*]}; runs: $RUNS"
for ((run = 1; run <= RUNS; run++)); do
    for variant in "${VARIANTS[@]}"; do
        run_one "$variant" "$run"
    done
done

python3 - "$RESULTS" "$(uptime)" "$("$COOLPY7_BIN" --version 2>&1 | head -n 1)" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)" <<'PY' | tee "$TABLE"
import json, statistics, sys
path, load, version, commit = sys.argv[1:5]
recs = [json.loads(l) for l in open(path) if l.strip()]
by = {}
for r in recs:
    by.setdefault(r["variant"], []).append(r)
def med(rs, f):
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None
first = recs[0]
print(f"## HTTP publish (POST /pub), wrk -t{first['threads']} -c{first['connections']}, "
      f"{first['size']}-byte body, qos {first['qos']}")
print()
print(f"- {version} ({commit}); median of {max(len(v) for v in by.values())} run(s) of "
      f"{first['duration_us'] / 1e6:.0f} s; load when done: {load.strip()}")
print("- every request is a new TCP connection (the broker answers `Connection: close`); "
      "one subscriber (mosquitto_sub) on bench/http")
print("- Mosquitto has no HTTP publish: no peer column")
print()
names = {"none": "no auth", "jwt": "JWT (-as 1, Basic <jwt>)"}
rows = [
    ("requests/s ↑", lambda r: r["requests_per_sec"], "{:,.0f}"),
    ("latency p50 µs ↓", lambda r: r["latency_us"]["p50"], "{:,.0f}"),
    ("latency p90 µs ↓", lambda r: r["latency_us"]["p90"], "{:,.0f}"),
    ("latency p99 µs ↓", lambda r: r["latency_us"]["p99"], "{:,.0f}"),
    ("latency p99.9 µs ↓", lambda r: r["latency_us"]["p999"], "{:,.0f}"),
    ("broker CPU µs per request ↓", lambda r: r.get("broker_cpu_us_per_request"), "{:,.1f}"),
    ("broker CPU % ↓", lambda r: r.get("broker_cpu_pct"), "{:,.0f}"),
    ("non-2xx answers (sum) ↓", None, "{:,.0f}"),
    ("socket errors (sum) ↓", None, "{:,.0f}"),
    ("published / delivered to the subscriber (sum)", None, None),
]
variants = [v for v in ("none", "jwt") if v in by]
head = ["figure"] + [names[v] for v in variants]
if len(variants) == 2:
    head.append("JWT / no auth")
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|" * (len(head) - 1))
for label, f, form in rows:
    cells, vals = [], []
    for v in variants:
        rs = by[v]
        if label.startswith("non-2xx"):
            val = sum(r["status_errors"] for r in rs)
        elif label.startswith("socket"):
            val = sum(r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] for r in rs)
        elif label.startswith("published"):
            p = sum(r.get("broker_received", 0) for r in rs)
            d = sum(r.get("delivered", 0) for r in rs)
            cells.append(f"{p:,} / {d:,}")
            vals.append(None)
            continue
        else:
            val = med(rs, f)
        vals.append(val)
        cells.append("–" if val is None else form.format(val))
    if len(variants) == 2:
        a, b = vals[1], vals[0]
        cells.append(f"{a / b:.2f}" if a is not None and b and f is not None else "")
    print(f"| {label} | " + " | ".join(cells) + " |")
print()
PY
log "table: $TABLE"
