#!/bin/bash
# lagab.sh ROUNDS RATE BIN_A BIN_B
cd "$(dirname "$0")/../../.."
port=${LAG_PORT:-7700}
for r in $(seq $1); do for v in A B; do
  if [ $v = A ]; then S=$3; else S=$4; fi
  port=$((port+2)); D=$(mktemp -d)
  $S --port $port --threads 2 --unixsocket $D/m.sock --loglevel warning >$D/m.log 2>&1 & M=$!
  sleep 0.3
  $S --port $((port+1)) --threads 1 --unixsocket $D/r.sock --loglevel warning --replicaof 127.0.0.1 $port --repl-transport shm >$D/r.log 2>&1 & R=$!
  for i in $(seq 50); do redis-cli -p $port info replication | grep -q state=online && break; sleep 0.1; done
  ${RINGKV_BENCH:-build/rel/ringkv-bench} --port $port --clients 50 --pipeline 16 --duration 1 --keyspace 1000000 --command set --quiet >/dev/null
  redis-cli -p $((port+1)) config resetstat >/dev/null
  m0=$(awk '{print $14+$15}' /proc/$M/stat)
  out=$(${RINGKV_BENCH:-build/rel/ringkv-bench} --port $port --threads 1 --clients 50 --pipeline 16 --duration 3 --keyspace 1000000 --command set --rate $2 --quiet | tail -1)
  m1=$(awk '{print $14+$15}' /proc/$M/stat)
  sleep 0.3
  echo "$v: $(echo $out | sed 's/.*second[s]*, //' | cut -c1-40) master cpu $((m1-m0)) $(redis-cli -p $((port+1)) info replication | tr -d '\r' | grep -E 'apply_lag_p(50|99)' | tr '\n' ' ')"
  kill $M $R; wait $M $R 2>/dev/null; rm -rf $D
done; done
