#!/usr/bin/env bash
# Persistent-session QoS 1 throughput with state on disk, in one comparison: coolpy7 in memory
# (the `coolpy7` column), coolpy7 with a data directory acknowledging after each fsync (`dd0`,
# `-dd -dfs 0`) and fsyncing every 100 ms (`dd100`, `-dfs 100`), Mosquitto in memory and with
# `persistence true` saving every second (`mosqsave1`: Mosquitto writes its whole state
# periodically and acknowledges before, so it keeps nothing of the last second after a crash).
# Each run starts each broker with a fresh data directory.
#
#   tests/bench/durable.sh [compare.sh options, e.g. --runs 3 --secs 5 --no-build]
#
# Scenarios: fanin-q1-persistent and fanout-q1-persistent (see compare.sh), and their
# clean-session forms for reference.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${COOLPY7_BIN:-$ROOT/target/release/coolpy7}"
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
coolpy7_dd() { # FSYNC_MS
    echo "d=\$(mktemp -d /tmp/coolpy7-dd-bench.XXXXXX); exec $BIN -l 127.0.0.1:\$PORT -hl nil -mq 100000 -msc 0 --log-level warn -dd=\$d -dfs $1"
}
mosquitto_saving() {
    # Mosquitto reads its files after switching to user mosquitto: the directory is theirs.
    echo "d=\$(mktemp -d /tmp/mosquitto-bench.XXXXXX); chmod 777 \$d; sed -e \"s/^listener .*/listener \$PORT 127.0.0.1/\" -e 's/^persistence false/persistence true/' $HERE/mosquitto.conf > \$d/m.conf; printf 'persistence_location %s/\nautosave_interval 1\n' \$d >> \$d/m.conf; exec $MOSQUITTO -c \$d/m.conf"
}
# The data directories of the runs go when the comparison ends.
trap 'rm -rf /tmp/coolpy7-dd-bench.* /tmp/mosquitto-bench.*' EXIT
"$HERE/compare.sh" --only coolpy7,mosquitto \
    --scenarios fanin-q1,fanin-q1-persistent,fanout-q1,fanout-q1-persistent \
    --peer "dd0=$(coolpy7_dd 0)" --peer "dd100=$(coolpy7_dd 100)" \
    --peer "mosqsave1=$(mosquitto_saving)" "$@"
