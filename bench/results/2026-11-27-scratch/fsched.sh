#!/bin/bash
# fsched.sh SERVER TAG: full sync under a 4-client GET load with perf sched recording; prints
# the master repl thread's longest runs and the master workers' longest scheduling delays.
cd "$(dirname "$0")/../../.."
S=$1; TAG=$2; port=${FS_PORT:-7800}
D=$(mktemp -d)
$S --port $port --threads 2 --bind 127.0.0.1 --loglevel warning >$D/m.log 2>&1 & M=$!
sleep 0.3
python3 -c "import sys; sys.path.insert(0,'bench'); import suite; print('preloaded', suite.preload_keys($port))"
${RINGKV_BENCH:-build/rel/ringkv-bench} --port $port --threads 1 --clients 4 --pipeline 1 --duration 60 --keyspace 1000000 --value-size 32 --command get --quiet --json $D/load.json & L=$!
sleep 0.3
perf sched record -o $D/sched.data -- sleep 5 >/dev/null 2>&1 & P=$!
sleep 0.2
t0=$(date +%s.%N)
R=
if [ "$TAG" != idle ]; then
  $PREFIX $S --port $((port+1)) --threads 1 --bind 127.0.0.1 --replicaof 127.0.0.1 $port --repl-transport tcp --loglevel warning >$D/r.log 2>&1 &
  R=$!
  for i in $(seq 1000); do
    x=$(redis-cli -p $((port+1)) info replication 2>/dev/null | tr -d '\r')
    echo "$x" | grep -q "master_sync_in_progress:0" && echo "$x" | grep -q "link_status:up" && break
    sleep 0.01
  done
fi
t1=$(date +%s.%N)
wait $P
kill -INT $L; wait $L
echo "$TAG sync $(echo "$t1 - $t0" | bc) s; load: $(python3 -c "import json; d=json.load(open('$D/load.json')); print({k: d[k] for k in d if 'p99' in k or k in ('rps','max_us','p999_us')})" 2>/dev/null)"
perf sched timehist -i $D/sched.data 2>/dev/null > $D/th.txt
REPL=$(ls /proc/$M/task | while read t; do [ "$(cat /proc/$M/task/$t/comm)" = ringkv-repl ] && echo $t; done)
awk -v m=$M -v r=$REPL '$3 ~ "\\[" r "/" m "\\]" {if ($6+0 > mx) mx=$6+0; if ($6+0 > 2) n2++} END {printf "master repl thread: longest run %.2f ms, runs over 2 ms: %d\n", mx, n2}' $D/th.txt
awk -v m=$M '$3 ~ "ringkv-server\\[[0-9]+/" m "\\]" {if ($5+0 > mx) mx=$5+0; if ($5+0 > 2) n2++} END {printf "master workers: longest sch delay %.2f ms, delays over 2 ms: %d\n", mx, n2}' $D/th.txt
sort -k6 -n -r $D/th.txt | head -5
kill $M $R; wait $M $R 2>/dev/null; ps -p $R >/dev/null 2>&1 && echo STRAY
rm -rf $D
