#!/usr/bin/env bash
# ringkv vs redis-server with the same client (redis-benchmark), same machine, same minute.
#
#   bench/vs-redis.sh [runs]        (default 3 runs; prints medians as a markdown table)
#
# For each run and each pipeline depth (16, then 1), both servers are measured back to back:
#   redis-benchmark -p PORT -t set,get -n $N -r 1000000 -d 32 -c 50 -P $P -q
# with ringkv-server --threads 2 and redis-server --save '' --appendonly no.  Server CPU
# seconds come from /proc/PID/stat (utime + stime) before and after, per million requests.
# Memory: RSS growth after loading 1,000,000 keys of 16 bytes with 32-byte values
# (redis-cli --pipe), measured once per run.  N defaults to 2,000,000; VS_N overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=${VS_N:-2000000}
SERVER=${RINGKV_SERVER:-./build/rel/ringkv-server}
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
wait_up() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

start() { # kind port -> pid
    if [ "$1" = ringkv ]; then
        "$SERVER" --port "$2" --threads 2 --unixsocket '' --loglevel warning >/dev/null 2>&1 &
    else
        redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    fi
    echo $!
}

/usr/bin/python3 - "$OUT/load.resp" <<'PY'
import sys
v = b"x" * 32
with open(sys.argv[1], "wb") as f:
    for i in range(1000000):
        f.write(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$32\r\n%s\r\n" % (i, v))
PY

TCK=$(getconf CLK_TCK)
for run in $(seq "$RUNS"); do
    for kind in redis ringkv; do
        port=$(free_port); pid=$(start $kind "$port"); pids+=("$pid"); wait_up "$port"
        r0=$(rss_kb "$pid")
        timeout 300 redis-cli -p "$port" --pipe < "$OUT/load.resp" >/dev/null
        sleep 0.5
        r1=$(rss_kb "$pid")
        echo "$run $kind mem_mb $(( (r1 - r0) / 1024 ))" >> "$OUT/rows"
        for P in 16 1; do
            c0=$(cpu "$pid")
            res=$(timeout 600 redis-benchmark -p "$port" -t set,get -n "$N" -r 1000000 -d 32 \
                  -c 50 -P "$P" -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second')
            c1=$(cpu "$pid")
            set_rps=$(echo "$res" | awk '/^SET/{print $2}')
            get_rps=$(echo "$res" | awk '/^GET/{print $2}')
            cpm=$(echo "($c1 - $c0) / $TCK / (2 * $N / 1000000)" | bc -l)
            echo "$run $kind P$P $set_rps $get_rps $cpm" >> "$OUT/rows"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done

/usr/bin/python3 - "$OUT/rows" "$N" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(kind, key, col):
    vals = [float(r[col]) for r in rows if r[1] == kind and r[2] == key]
    return statistics.median(vals), len(vals)
print("| measure | redis-server | ringkv (threads 2) | ringkv / redis |")
print("|---|---|---|---|")
for P in ("P16", "P1"):
    for name, col in (("SET rps", 3), ("GET rps", 4), ("server CPU s per 1M requests", 5)):
        r, n = med("redis", P, col)
        k, _ = med("ringkv", P, col)
        fmt = "{:,.0f}" if "rps" in name else "{:.3f}"
        print(f"| {name}, -P {P[1:]} | {fmt.format(r)} | {fmt.format(k)} | {k / r:.2f}x |")
r, n = med("redis", "mem_mb", 3)
k, _ = med("ringkv", "mem_mb", 3)
print(f"| RSS growth, 1M keys (MB) | {r:.0f} | {k:.0f} | {k / r:.2f}x |")
print(f"\nmedians of {n} runs, -n {sys.argv[2]}")
PY
