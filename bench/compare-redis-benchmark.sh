#!/bin/bash
# compare-redis-benchmark.sh: is ringkv-bench ever the bottleneck?  Drive one redis-server with
# redis-benchmark and with ringkv-bench at the same clients, pipeline, request count, keyspace
# and value size, one client thread each, and record requests/s and the client's CPU seconds
# (user + system, from /usr/bin/time) for every run, plus the server's CPU seconds over the run
# (from /proc/PID/stat), which shows whether the server was saturated.
#
# Runs alternate which tool goes first in each repetition so that drift on a shared machine
# does not favour one side.  One unmeasured SET run of each tool first fills the keyspace, so
# every measured GET run sees the same hit rate.  The server listens on 127.0.0.1 only and is
# stopped by its pid at the end, whatever happens.
#
# Usage: bench/compare-redis-benchmark.sh [ringkv-bench binary]
# Environment: PORT (a free port the kernel picks), REPS (3), N1 (requests at pipeline 1, 1000000),
#              N16 (at pipeline 16, 2000000), KEYS (1000000), SIZE (32), CLIENTS (50),
#              OUT (directory for the raw results, /tmp/ringkv-compare)
set -u
LG=${1:-build/rel/ringkv-bench}
PORT=${PORT:-$(/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
REPS=${REPS:-3}
N1=${N1:-1000000}
N16=${N16:-2000000}
KEYS=${KEYS:-1000000}
SIZE=${SIZE:-32}
CLIENTS=${CLIENTS:-50}
OUT=${OUT:-/tmp/ringkv-compare}
mkdir -p "$OUT"
RAW=$OUT/raw.tsv

if ss -ltn | grep -q "[:.]$PORT "; then
    echo "port $PORT is in use; pick another with PORT=" >&2
    exit 1
fi
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$OUT/redis.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

server_cpu() {
    # utime + stime of the server, in clock ticks
    awk '{print $14 + $15}' "/proc/$SERVER/stat"
}
TICK=$(getconf CLK_TCK)

# run TOOL CMD P N: one measured run; appends a row to $RAW
run() {
    local tool=$1 cmd=$2 p=$3 n=$4 rps s0 s1
    s0=$(server_cpu)
    if [ "$tool" = redis-benchmark ]; then
        rps=$(timeout 900 /usr/bin/time -o "$OUT/time" -f '%U %S' \
            redis-benchmark -p "$PORT" -t "$cmd" -n "$n" -r "$KEYS" -d "$SIZE" -c "$CLIENTS" \
            -P "$p" -q 2>/dev/null | tr '\r' '\n' | awk '/requests per second/ {print $2}')
    else
        local ratio=1:0
        [ "$cmd" = get ] && ratio=0:1
        rps=$(timeout 900 /usr/bin/time -o "$OUT/time" -f '%U %S' \
            "$LG" --port "$PORT" --threads 1 --clients "$CLIENTS" --pipeline "$p" \
            --requests "$n" --keyspace "$KEYS" --value-size "$SIZE" --ratio "$ratio" \
            --quiet | awk -v c="${cmd^^}:" '$1 == c {print $2}')
    fi
    s1=$(server_cpu)
    local cpu
    cpu=$(awk '{printf "%.2f", $1 + $2}' "$OUT/time")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%.2f\n' "$tool" "$cmd" "$p" "$n" "$rps" "$cpu" \
        "$(echo "($s1 - $s0) / $TICK" | bc -l)" | tee -a "$RAW"
}

: >"$RAW"
echo "# tool cmd pipeline requests rps client_cpu_s server_cpu_s"
# Fill the keyspace (not measured).
redis-benchmark -p "$PORT" -t set -n "$N16" -r "$KEYS" -d "$SIZE" -c "$CLIENTS" -P 16 -q \
    >/dev/null 2>&1
"$LG" --port "$PORT" --clients "$CLIENTS" --pipeline 16 --requests "$N16" --keyspace "$KEYS" \
    --value-size "$SIZE" --quiet >/dev/null
for p in 1 16; do
    n=$N1
    [ "$p" = 16 ] && n=$N16
    for rep in $(seq "$REPS"); do
        for cmd in set get; do
            if [ $((rep % 2)) = 1 ]; then
                run redis-benchmark "$cmd" "$p" "$n"
                run ringkv-bench "$cmd" "$p" "$n"
            else
                run ringkv-bench "$cmd" "$p" "$n"
                run redis-benchmark "$cmd" "$p" "$n"
            fi
        done
    done
done

echo
echo "# medians over $REPS runs: tool cmd pipeline requests rps client_cpu_s us_cpu_per_request"
sort -k1,1 -k2,2 -k3,3n "$RAW" | awk -F'\t' '
    function median(list,   a, n, t, i, j) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++)
            for (j = i + 1; j <= n; j++)
                if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 "\t" $2 "\t" $3 "\t" $4; rps[k] = rps[k] " " $5; cpu[k] = cpu[k] " " $6
      if (!(k in seen)) { seen[k] = 1; keys[++nk] = k } }
    END { for (i = 1; i <= nk; i++) { k = keys[i]; split(k, f, "\t")
              m = median(cpu[k])
              printf "%s\t%.0f\t%.2f\t%.2f\n", k, median(rps[k]), m, m * 1e6 / f[4] } }'
