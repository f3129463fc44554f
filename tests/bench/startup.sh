#!/usr/bin/env bash
# Start-up with a large data directory (-dd): fills one with RETAINED retained messages (default
# 1,000,000, QoS 0, 64-byte payloads on topics bench/r/<i/1000>/<i>) and SESSIONS offline
# persistent sessions with one filter each (default 100,000, made by `coolpy7-bench subs
# --persistent`), stops the broker (SIGTERM), starts it again on the same directory and reports
# how long reading it back took (the broker's own "data directory read back" line), how long
# until /healthz answered, the directory's size and the broker's RSS after the start.
#
#   tests/bench/startup.sh [RETAINED] [SESSIONS]
#
# Environment: COOLPY7_BIN, BENCH_BIN (default target/release/...), PORT (default 18890).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
BENCH="${BENCH_BIN:-$ROOT/target/release/coolpy7-bench}"
RETAINED="${1:-1000000}"
SESSIONS="${2:-100000}"
PORT="${PORT:-18890}"
HTTP=$((PORT + 1))
DIR="$(mktemp -d /tmp/coolpy7-startup.XXXXXX)"
LOG="$DIR.log"
PID=""
cleanup() {
    [[ -z "$PID" ]] || kill -9 "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

start() {
    "$BIN" -l "127.0.0.1:$PORT" -hl "127.0.0.1:$HTTP" -dd="$DIR" -mq 100000 -msc 0 \
        --log-level info,lsm_tree=warn,fjall=warn >"$LOG" 2>&1 &
    PID=$!
    local started=$SECONDS i
    for ((i = 0; i < 6000; i++)); do
        if curl -fsS "http://127.0.0.1:$HTTP/healthz" >/dev/null 2>&1; then
            READY_S=$((SECONDS - started))
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; echo "coolpy7 exited" >&2; exit 1; }
        sleep 0.05
    done
    echo "coolpy7 not ready after 300 s" >&2
    exit 1
}

stop() {
    kill -TERM "$PID"
    local i
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$PID" 2>/dev/null || { PID=""; return 0; }
        sleep 0.1
    done
    echo "coolpy7 did not stop within 120 s" >&2
    exit 1
}

start
echo "filling: $RETAINED retained messages" >&2
PYTHONPATH="$HERE" python3 - "$PORT" "$RETAINED" <<'EOF'
import socket, sys

from mqtt_wire import packet, s16

port, count = int(sys.argv[1]), int(sys.argv[2])

s = socket.create_connection(("127.0.0.1", port))
cid = b"startup-filler"
connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + s16(cid)
s.sendall(packet(0x10, connect))
assert s.recv(4)[:2] == b"\x20\x02", "no CONNACK"
payload = b"p" * 64
chunk = bytearray()
for i in range(count):
    topic = b"bench/r/%d/%d" % (i // 1000, i)
    chunk += packet(0x31, s16(topic) + payload)
    if len(chunk) > 1 << 20:
        s.sendall(chunk)
        chunk = bytearray()
s.sendall(chunk + b"\xc0\x00")  # PINGREQ: its PINGRESP comes after every PUBLISH was handled
buf = b""
while b"\xd0\x00" not in buf:
    data = s.recv(65536)
    assert data, "connection closed"
    buf += data
s.sendall(b"\xe0\x00")
s.close()
EOF
echo "filling: $SESSIONS persistent sessions" >&2
"$BENCH" subs --persistent --clients "$SESSIONS" --filters "$SESSIONS" --port "$PORT" \
    --pid "$PID" >/dev/null
stop
SIZE="$(du -sh "$DIR" | cut -f1)"
start
LINE="$(grep "data directory read back" "$LOG" | tail -1)"
RSS="$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")"
echo "retained=$RETAINED sessions=$SESSIONS directory=$SIZE ready_after_s=$READY_S rss_kb=$RSS"
echo "$LINE" | sed 's/.*data directory read back/read back:/'
stop
