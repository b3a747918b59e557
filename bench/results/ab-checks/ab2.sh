#!/bin/bash
# ab2.sh ROUNDS TRANSPORT MODE BIN_A BIN_B : CPU per SET of master and replica, alternating builds
# (The runs recorded here used the ringkv-bench of the A build, /tmp/exp/base/build/rel; its code is
# the same as main's.)  RINGKV_BENCH picks the load generator; every server is on 127.0.0.1 and
# stopped by its pid.
cd "$(dirname "$0")/../../.."
ROUNDS=$1; T=$2; MODE=$3; BA=$4; BB=$5; port=${AB_PORT:-7500}; SECS=${AB_SECS:-4}
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for r in $(seq $ROUNDS); do for v in A B; do
  port=$((port+2)); D=$(mktemp -d)
  if [ $v = B ]; then S=$BB; else S=$BA; fi
  $S --port $port --threads 2 --unixsocket $D/m.sock --loglevel warning >$D/m.log 2>&1 & M=$!
  R=
  sleep 0.3
  if [ $T != none ]; then
    $S --port $((port+1)) --threads 1 --unixsocket $D/r.sock --loglevel warning --replicaof 127.0.0.1 $port --repl-transport $T >$D/r.log 2>&1 & R=$!
    for i in $(seq 50); do redis-cli -p $port info replication | grep -q state=online && break; sleep 0.1; done
    redis-cli -p $port config set sync-mode $MODE >/dev/null
  fi
  ${RINGKV_BENCH:-build/rel/ringkv-bench} --port $port --clients 50 --pipeline 16 --duration 2 --keyspace 1000000 --command set --quiet >/dev/null
  m0=$(cpu $M); r0=0; [ -n "$R" ] && r0=$(cpu $R)
  out=$(${RINGKV_BENCH:-build/rel/ringkv-bench} --port $port --clients 50 --pipeline 16 --duration $SECS --keyspace 1000000 --command set --quiet | tail -1)
  m1=$(cpu $M); r1=0; [ -n "$R" ] && r1=$(cpu $R)
  rps=$(echo "$out" | sed 's/.*SET: \([0-9.]*\).*/\1/')
  if [ -n "$R" ]; then dig=$(redis-cli -p $port debug digest); rdig=$(redis-cli -p $((port+1)) debug digest); sleep 0.2; rdig=$(redis-cli -p $((port+1)) debug digest); [ "$dig" = "$rdig" ] && eq=eq || eq=DIFF; else eq=-; fi
  awk -v v=$v -v rps=$rps -v m=$((m1-m0)) -v r=$((r1-r0)) -v s=$SECS -v eq=$eq 'BEGIN {n=rps*s; printf "%s rps %8.0f master ns/SET %6.0f replica ns/SET %6.0f digest %s\n", v, rps, m*1e7/n, r*1e7/n, eq}'
  kill $M $R 2>/dev/null; wait $M $R 2>/dev/null; rm -rf $D
done; done
