#!/bin/bash
# threadstat.sh: where the threads of a master and its replica spend a SET load.
#
#   bench/threadstat.sh [shm|tcp|none] [async|semi|sync] [seconds]     (tcp sync 3 by default)
#
# Starts a master (`ringkv-server --threads 2`) and, unless "none", one replica
# (`--threads 1 --repl-transport shm|tcp`), both on 127.0.0.1, sets the master's sync-mode,
# and runs `ringkv-bench --clients 50 --pipeline 16 --keyspace 1000000 --command set` against
# the master for the given seconds.  It prints ringkv-bench's summary, then per thread of
# both servers what /proc/PID/task/TID/{schedstat,status} counted during the load: CPU time,
# time spent runnable but waiting for a CPU ("waited"), and voluntary and involuntary context
# switches.  Both servers are stopped by their pids on exit.
#
# Environment: RINGKV_SERVER, RINGKV_BENCH (default build/rel/...), THREADSTAT_PORT (the
# master's port, 7301; the replica takes the next one).
set -eu
cd "$(dirname "$0")/.."
TRANSPORT=${1:-tcp}
MODE=${2:-sync}
SECS=${3:-3}
SERVER=${RINGKV_SERVER:-build/rel/ringkv-server}
BENCH=${RINGKV_BENCH:-build/rel/ringkv-bench}
PORT=${THREADSTAT_PORT:-7301}
RPORT=$((PORT + 1))
case "$TRANSPORT" in shm|tcp|none) ;; *) echo "threadstat.sh: transport: shm, tcp or none" >&2; exit 2;; esac
case "$MODE" in async|semi|sync) ;; *) echo "threadstat.sh: mode: async, semi or sync" >&2; exit 2;; esac
case "$SECS" in ''|*[!0-9]*) echo "threadstat.sh: seconds: a whole number" >&2; exit 2;; esac
for bin in "$SERVER" "$BENCH"; do
    [ -x "$bin" ] || { echo "threadstat.sh: $bin is missing; build it with make" >&2; exit 1; }
done
command -v redis-cli >/dev/null || { echo "threadstat.sh: redis-cli is missing" >&2; exit 1; }

DIR=$(mktemp -d /tmp/ringkv-threadstat-XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

"$SERVER" --port "$PORT" --threads 2 --unixsocket "$DIR/m.sock" --loglevel warning \
    >"$DIR/master.log" 2>&1 &
M=$!
PIDS="$M"
# Up: the server on port $1 answers, and it is process $2 (not another one on that port).
up() { redis-cli -p "$1" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$2"; }
for _ in $(seq 100); do up "$PORT" "$M" && break; sleep 0.05; done
up "$PORT" "$M" || { echo "threadstat.sh: the master did not start on port $PORT:" >&2
                     cat "$DIR/master.log" >&2; exit 1; }
if [ "$TRANSPORT" != none ]; then
    "$SERVER" --port "$RPORT" --threads 1 --unixsocket "$DIR/r.sock" --loglevel warning \
        --replicaof 127.0.0.1 "$PORT" --repl-transport "$TRANSPORT" >"$DIR/replica.log" 2>&1 &
    R=$!
    PIDS="$PIDS $R"
    for _ in $(seq 100); do up "$RPORT" "$R" && break; sleep 0.05; done
    up "$RPORT" "$R" || { echo "threadstat.sh: the replica did not start on port $RPORT:" >&2
                          cat "$DIR/replica.log" >&2; exit 1; }
    for _ in $(seq 100); do
        redis-cli -p "$PORT" info replication 2>/dev/null | grep -q 'state=online' && break
        sleep 0.1
    done
    redis-cli -p "$PORT" info replication 2>/dev/null | grep -q 'state=online' || {
        echo "threadstat.sh: the replica did not come online:" >&2
        cat "$DIR/replica.log" >&2
        exit 1
    }
fi
redis-cli -p "$PORT" config set sync-mode "$MODE" >/dev/null

snap() {
    for p in $PIDS; do
        role=master
        [ "$p" = "$M" ] || role=replica
        for t in /proc/"$p"/task/*; do
            printf '%s %s %s %s %s %s\n' "$role" "${t##*/}" "$(tr ' ' _ <"$t/comm")" \
                "$(cut -d' ' -f1,2 "$t/schedstat")" \
                "$(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' \
                   "$t/status")"
        done
    done | sort -k2,2
}
snap >"$DIR/before"
"$BENCH" --port "$PORT" --clients 50 --pipeline 16 --duration "$SECS" --keyspace 1000000 \
    --command set --quiet | tail -1
snap >"$DIR/after"
printf '%-8s %-8s %-14s %9s %9s %9s %9s\n' role tid thread "cpu ms" "waited ms" voluntary involuntary
join -j2 "$DIR/before" "$DIR/after" | awk '{
    printf "%-8s %-8s %-14s %9.0f %9.0f %9d %9d\n", $2, $1, $3, ($10 - $4) / 1e6,
           ($11 - $5) / 1e6, $12 - $6, $13 - $7 }'
