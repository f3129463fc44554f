#!/usr/bin/env bash
# The hand-over time of one session: two coolpy7 nodes in a cluster on loopback; a client with a
# persistent session subscribes on node 1 and leaves; QUEUED QoS 1 messages (default 1,000,
# 64-byte payloads) are published to it there; then it connects to node 2. Reports, over RUNS
# runs (default 5; a new client id each): CONNECT to CONNACK (the claim, the session's transfer
# and adoption; session present must be 1) and CONNACK to the last queued message received.
#
#   tests/bench/handover.sh [QUEUED] [RUNS]
#
# Environment: COOLPY7_BIN (default target/release/coolpy7), PORT_BASE (default 18900).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
QUEUED="${1:-1000}"
RUNS="${2:-5}"
BASE="${PORT_BASE:-18900}"
KEY="handover-bench-key-$RANDOM$RANDOM"
PIDS=()
LOGS="$(mktemp -d /tmp/coolpy7-handover.XXXXXX)"
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$LOGS"
}
trap cleanup EXIT

node() { # N
    local n=$1 other=$((3 - $1))
    "$BIN" -l "127.0.0.1:$((BASE + n))" -hl "127.0.0.1:$((BASE + 10 + n))" \
        -nid "n$n" -csk "$KEY" -crp "$((BASE + 20 + n))" -csp "$((BASE + 30 + n))" \
        -mbs "127.0.0.1:$((BASE + 20 + other))" -mq 100000 -syst "$KEY" --log-level warn \
        >"$LOGS/n$n.log" 2>&1 &
    PIDS+=($!)
}
node 1
node 2
for ((i = 0; i < 200; i++)); do
    members="$(curl -fsS "http://127.0.0.1:$((BASE + 11))/brokers?token=$KEY" 2>/dev/null | grep -o '"n[12]"' | sort -u | wc -l || true)"
    [[ "$members" -ge 2 ]] && break
    sleep 0.1
done
[[ "$members" -ge 2 ]] || { echo "the two nodes did not form a cluster" >&2; cat "$LOGS"/*.log >&2; exit 1; }
sleep 1

PYTHONPATH="$HERE" python3 - "$BASE" "$QUEUED" "$RUNS" <<'EOF'
import socket, statistics, struct, sys, time

from mqtt_wire import packet, s16

base, queued, runs = (int(a) for a in sys.argv[1:4])

class Client:
    def __init__(self, port, cid, clean):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        flags = 0x02 if clean else 0x00
        self.sent_at = time.perf_counter()
        self.sock.sendall(packet(0x10, b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + s16(cid)))
        first, body = self.read()
        assert first == 0x20, hex(first)
        self.connack_at = time.perf_counter()
        self.session_present = body[0] & 1

    def read(self):
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while True:
                    if i >= len(self.buf):
                        break
                    byte = self.buf[i]
                    n += (byte & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not byte & 0x80:
                        if len(self.buf) >= i + n:
                            first, body = self.buf[0], self.buf[i:i + n]
                            self.buf = self.buf[i + n:]
                            return first, body
                        break
            data = self.sock.recv(1 << 16)
            assert data, "connection closed"
            self.buf += data

    def send(self, first, body):
        self.sock.sendall(packet(first, body))

    def close(self):
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()

connects, deliveries = [], []
for run in range(runs):
    cid = b"handover-%d-%d" % (run, int(time.time() * 1000))
    topic = b"handover/" + cid
    sub = Client(base + 1, cid, clean=False)
    sub.send(0x82, b"\x00\x01" + s16(topic) + b"\x01")
    first, _ = sub.read()
    assert first == 0x90
    sub.close()
    pub = Client(base + 1, cid + b"-pub", clean=True)
    for i in range(queued):
        pub.send(0x32, s16(topic) + struct.pack(">H", i % 65535 + 1) + b"%064d" % i)
    acked = 0
    while acked < queued:
        first, _ = pub.read()
        if first == 0x40:
            acked += 1
    pub.close()
    time.sleep(0.2)
    moved = Client(base + 2, cid, clean=False)
    assert moved.session_present, "session present 0: the session did not move"
    got = set()
    while len(got) < queued:
        first, body = moved.read()
        if first & 0xF0 == 0x30:
            tlen = struct.unpack(">H", body[:2])[0]
            pid = body[2 + tlen:4 + tlen]
            got.add(int(body[4 + tlen:]))
            moved.send(0x40, pid)
    done_at = time.perf_counter()
    moved.close()
    connects.append((moved.connack_at - moved.sent_at) * 1000)
    deliveries.append((done_at - moved.connack_at) * 1000)

def summary(xs):
    return "median %.1f ms, min %.1f, max %.1f" % (statistics.median(xs), min(xs), max(xs))

print("session with %d queued QoS 1 messages moved node 1 -> node 2, %d runs" % (queued, runs))
print("  CONNECT -> CONNACK (session present 1): " + summary(connects))
print("  CONNACK -> last queued message received: " + summary(deliveries))
EOF
