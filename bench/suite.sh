#!/bin/bash
# suite.sh: the benchmark suite behind `make bench`.  ringkv and Redis, alone and with one
# replica (same-host shared memory and TCP for ringkv; WAIT for Redis's sync rows), under SET,
# GET and a 10:90 mix at pipeline 1 and 16, driven by ringkv-bench; replication lag measured
# beside the load.  bench/suite.py runs the matrix and writes bench/results/ (markdown, JSON,
# a gnuplot chart, latest.md); its docstring lists the environment it reads.  Then
# bench/fullsync.py measures a TCP replica's full sync of 1,000,000 keys and the master's p99
# during it, and bench/applylag.py a same-host replica's apply lag at peak and half-peak SET
# rates; both append their sections to the same results.
#
#   make bench                    # about 8 minutes on 2 cores, then about 40 s of full syncs
#                                 # and 30 s of apply lag
#   BENCH_QUICK=1 make bench      # the same matrix with short runs, about a minute
#
# Every server listens on 127.0.0.1 on a port the kernel picked as free and is stopped by
# its pid when the suite exits, however it exits.  Method: docs/BENCHMARKS.md.
set -eu
cd "$(dirname "$0")/.."
export RINGKV_SERVER=${RINGKV_SERVER:-build/rel/ringkv-server}
export RINGKV_BENCH=${RINGKV_BENCH:-build/rel/ringkv-bench}
for bin in "$RINGKV_SERVER" "$RINGKV_BENCH"; do
    if [ ! -x "$bin" ]; then
        echo "suite.sh: $bin is missing; build it with make" >&2
        exit 1
    fi
done
if ! command -v redis-server >/dev/null; then
    echo "suite.sh: redis-server is missing (apt-get install redis-server)" >&2
    exit 1
fi
command -v gnuplot >/dev/null || echo "suite.sh: gnuplot missing: no chart (apt-get install gnuplot-nox)" >&2
# One stamp for both parts, so bench/fullsync.py appends its section to the suite's results.
quick=""
case "${BENCH_QUICK:-}" in ""|0) ;; *) quick=-quick ;; esac
export BENCH_STAMP=${BENCH_STAMP:-$(date +%Y-%m-%d-%H%M)$quick}
/usr/bin/python3 bench/suite.py "$@"
# Full sync of a TCP replica (1,000,000 keys) and the master's p99 during it; BENCH_FULLSYNC=0
# skips it.
case "${BENCH_FULLSYNC:-1}" in
    0) ;;
    *) /usr/bin/python3 bench/fullsync.py ;;
esac
# A same-host replica's apply lag at the master's peak SET rate and at half of it;
# BENCH_APPLYLAG=0 skips it.
case "${BENCH_APPLYLAG:-1}" in
    0) ;;
    *) /usr/bin/python3 bench/applylag.py ;;
esac
