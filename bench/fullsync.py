#!/usr/bin/python3
"""
fullsync: how long a TCP replica takes to copy a loaded master, and what that costs the
master's clients.  `make bench` runs it after the suite (bench/suite.sh); it can run alone.

Setup.  One ringkv master (`ringkv-server --threads 2 --port P --bind 127.0.0.1`, as in the
suite, whose environment sets other thread counts and CPUs: see the end), preloaded with 1,000,000 pipelined `SET key:NNNNNNNNNNNN <32 bytes>` (16-byte keys,
32-byte values, the suite's preload) before any replica exists.  Every replica is
`ringkv-server --threads 1 --port P2 --bind 127.0.0.1 --replicaof 127.0.0.1 P
--repl-transport tcp`, a fresh process on a fresh port, stopped (SIGTERM, by its pid) after
its run; the next run waits until the master lists no replica.

1. Full sync time, no other load (FULLSYNC_RUNS runs of each, median):
   - "process": from just before the replica process is started until its INFO replication
     says master_link_status:up and master_sync_in_progress:0 (polled every 2 ms on one
     connection; before the replica listens, a connection attempt every 2 ms);
   - "REPLICAOF": the same replica command line without --replicaof, started and answering
     PING first; from sending `REPLICAOF 127.0.0.1 P` to the same INFO state.
   A run counts only if the replica's DBSIZE is 1,000,000 at that moment and the master's
   INFO sync_full grew by one (a full sync, not a partial one).

2. The master's latency during a full sync (FULLSYNC_LOAD_RUNS pairs, medians): a light
   closed-loop load on the master,
       ringkv-bench --port P --threads 1 --clients 4 --pipeline 1 --duration 60 \
           --keyspace 1000000 --value-size 32 --command get --quiet --json F
   stopped with SIGINT (ringkv-bench then finishes the requests in flight and writes its
   JSON), run twice per pair:
   - "during": the replica is started FULLSYNC_LEAD s after the load, and the load is stopped
     FULLSYNC_TAIL s after the replica reports the sync done, so the load window is the sync
     plus a little on each side;
   - "idle": no replica; the load stopped after the same wall time as the pair's "during" run.
   The order within a pair alternates.  Each run's p99 comes from ringkv-bench's histogram
   over every reply of the run (3% buckets); the ratio is during p99 / idle p99 per pair, and
   the table shows the medians.
   Beside the load, in both runs, two paced probes (PacedProbe) each send one GET every
   FULLSYNC_PROBE_GAP_MS (2) ms on a connection of their own and count each one's latency
   from when it was due.  A closed-loop client with 4 connections records a stall as 4 slow
   replies however long it lasts (it sends nothing meanwhile), so its p99 can hide a stall
   that a paced probe, like a client sending at a steady rate, sees as every request due
   during it.  Each probe is a Python process of its own (`fullsync.py --probe`); the "FIFO
   probe" is made SCHED_FIFO 1 where the system allows it, so that it runs as soon as its
   reply is in, the "normal probe" competes for a CPU like any client.  On a machine whose
   CPUs the load, the replica and the master keep busy, the two differ widely (docs/
   BENCHMARKS.md, "Full sync"), and every p99 and ratio is reported.

Output: a markdown table on stdout, and in BENCH_RESULTS (bench/results):
<stamp>-fullsync.json and <stamp>-fullsync.md; where <stamp>.md of the suite exists (same
BENCH_STAMP, which bench/suite.sh sets for both), the section is appended to it and to
latest.md.

The replica's scheduling.  On a machine with a few CPUs the replica shares them with the
master, and what it spends applying the copy is CPU the master's workers wait for; a replica on
a host of its own takes none.  FULLSYNC_REPLICA_SCHED=idle starts every replica in the
SCHED_IDLE class, so that it runs only on a CPU that nothing else wants: the master's latency
then shows what the sync costs the master itself, not what a neighbour takes.  It applies to
the replicas of part 2 only; part 1's timed syncs run like any process (a SCHED_IDLE replica
would be timed waiting for CPUs that a replica on a host of its own would have).  The default,
"normal", starts them all like any process.  The results name the setting.

Environment: the suite's BENCH_THREADS, BENCH_REPLICA_THREADS (master and replica worker
threads, 2 and 1) and BENCH_MASTER_CPUS, BENCH_REPLICA_CPUS, BENCH_CLIENT_CPUS (placement;
bench/suite.py), BENCH_QUICK=1 (one run of each), FULLSYNC_RUNS (3; quick 1), FULLSYNC_LOAD_RUNS
(5; quick 1), FULLSYNC_KEYS (1000000), FULLSYNC_CLIENTS (4), FULLSYNC_LEAD (0.2),
FULLSYNC_TAIL (0.2), FULLSYNC_PROBE_GAP_MS (2), FULLSYNC_REPLICA_SCHED (normal), BENCH_RESULTS, BENCH_STAMP, RINGKV_SERVER, RINGKV_BENCH.
"""

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402  (the RESP client, Server, preload and helpers)
from suite import Conn, RespError, env_float, env_int, info_fields, log, fmt_us  # noqa: E402

REPO = suite.REPO
SYNC_TIMEOUT = 60.0      # a full sync not done within this fails the run
LOAD_CAP_S = 60          # ringkv-bench --duration: only an upper bound, SIGINT stops it
DETACH_TIMEOUT = 10.0    # the master must list no replica this long after one stopped
POLL_S = 0.002
PROBE_CAP_S = LOAD_CAP_S + 30  # a probe whose parent never stops it ends by itself
# The paced probes: result key, probe_main kind, table label.  Both run beside every load, the
# second half a gap after the first.
PROBES = (("paced", "fifo", "paced GET, FIFO probe"),
          ("paced_normal", "normal", "paced GET, normal probe"))


def probe_loop(port, keys, gap_s, stop, phase):
    """One GET every gap_s, the first phase * gap_s from now, on a connection of its own until
    stop(wait_s) says so; returns each GET's latency, counted from when it was due, and the
    error that ended it, if any."""
    lat, error, conn = [], None, None
    try:
        conn = Conn(port, timeout=30.0)
        t0 = time.monotonic() + phase * gap_s
        i = 0
        while True:
            due = t0 + i * gap_s
            if due - t0 > PROBE_CAP_S or stop(max(0.0, due - time.monotonic())):
                break
            key = b"key:%012d" % ((i * 7919) % keys)
            conn.cmd("GET", key)
            lat.append(time.monotonic() - due)
            i += 1
    except (OSError, RespError, ValueError, ConnectionError) as e:
        error = str(e)
    finally:
        if conn is not None:
            conn.close()
    return lat, error


def probe_main(port, keys, gap_ms, kind):
    """`fullsync.py --probe PORT KEYS GAP_MS fifo|normal`: a paced probe as a process of its
    own, so that what it times is the server, not this script's other threads (Python runs one
    thread at a time); "fifo" makes it SCHED_FIFO 1 where the system allows it.  It stops when
    its standard input closes and then writes its latencies, in seconds, as JSON on standard
    output."""
    def stop(wait_s):
        return bool(select.select([sys.stdin], [], [], wait_s)[0])
    priority = "normal"
    if kind == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            priority = "SCHED_FIFO 1"
        except OSError as e:
            priority = "normal (SCHED_FIFO refused: %s)" % e.strerror
    lat, error = probe_loop(int(port), int(keys), float(gap_ms) / 1000.0, stop,
                            0.0 if kind == "fifo" else 0.5)
    json.dump({"lat": lat, "error": error, "priority": priority}, sys.stdout)


class PacedProbe:
    """One GET every gap_s on a connection of its own, its latency counted from when it was
    due, not when it was sent: a closed-loop client with a few connections records one slow
    reply per stalled connection, this records every request a client sending at a steady
    rate would have waited on (no coordinated omission).  It runs as a process of its own
    (probe_main)."""

    def __init__(self, port, keys, gap_s, kind):
        self.gap = gap_s
        self.lat = []
        self.error = None
        self.priority = None
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--probe", str(port), str(keys),
             str(gap_s * 1000.0), kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)

    def tell_stop(self):
        """Close its input: it sends no GET after this (stop() then collects)."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.stdin = None  # communicate() must not flush it

    def stop(self):
        try:
            out, _ = self.proc.communicate(timeout=35)
            res = json.loads(out)
            self.lat, self.error, self.priority = res["lat"], res["error"], res["priority"]
        except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
            self.proc.kill()
            self.proc.communicate()
            self.error = "probe: %s (exit status %s)" % (e, self.proc.returncode)

    def result(self):
        v = sorted(self.lat)
        pct = suite.percentile
        return {"requests": len(v), "gap_ms": self.gap * 1000, "error": self.error,
                "priority": self.priority,
                "p50_us": pct(v, 0.5) * 1e6 if v else None,
                "p99_us": pct(v, 0.99) * 1e6 if v else None,
                "p999_us": pct(v, 0.999) * 1e6 if v else None,
                "max_us": v[-1] * 1e6 if v else None,
                "over_100ms": sum(1 for x in v if x > 0.1)}


class FullSync:
    def __init__(self):
        self.quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        self.runs = env_int("FULLSYNC_RUNS", 1 if self.quick else 3)
        self.load_runs = env_int("FULLSYNC_LOAD_RUNS", 1 if self.quick else 5)
        self.keys = env_int("FULLSYNC_KEYS", suite.KEYSPACE)
        self.clients = env_int("FULLSYNC_CLIENTS", 4)
        self.lead = env_float("FULLSYNC_LEAD", 0.2)
        self.tail = env_float("FULLSYNC_TAIL", 0.2)
        self.probe_gap = env_float("FULLSYNC_PROBE_GAP_MS", 2.0) / 1000.0
        self.replica_sched = os.environ.get("FULLSYNC_REPLICA_SCHED") or "normal"
        if self.replica_sched not in ("normal", "idle"):
            raise SystemExit("fullsync: FULLSYNC_REPLICA_SCHED must be normal or idle, not %r"
                             % self.replica_sched)
        self.replica_idle = self.replica_sched == "idle"
        self.results = os.path.abspath(os.environ.get("BENCH_RESULTS",
                                                      os.path.join(REPO, "bench/results")))
        self.stamp = os.environ.get("BENCH_STAMP") or \
            (time.strftime("%Y-%m-%d-%H%M") + ("-quick" if self.quick else ""))
        self.server = os.path.abspath(os.environ.get(
            "RINGKV_SERVER", os.path.join(REPO, "build/rel/ringkv-server")))
        self.bench = os.path.abspath(os.environ.get(
            "RINGKV_BENCH", os.path.join(REPO, "build/rel/ringkv-bench")))
        self.workdir = tempfile.mkdtemp(prefix="ringkv-bench-fullsync-")
        self.master = None
        self.nrep = 0
        self.notes = []
        self.sync_runs = []     # dicts: how, seconds, ...
        self.load_pairs = []    # dicts: idle, during (ringkv-bench summaries), sync_s, ...

    # -- servers --

    def master_argv(self, port):
        return [self.server, "--threads", str(suite.MASTER_THREADS), "--port", str(port),
                "--bind", "127.0.0.1"]

    def replica_argv(self, port, follow=True):
        argv = [self.server, "--threads", str(suite.REPLICA_THREADS), "--port", str(port),
                "--bind", "127.0.0.1"]
        if follow:
            argv += ["--replicaof", "127.0.0.1", str(self.master.port)]
        return argv + ["--repl-transport", "tcp"]

    def master_info(self):
        c = Conn(self.master.port)
        try:
            return info_fields(c, "replication")
        finally:
            c.close()

    def preload(self):
        t0 = time.monotonic()
        size = suite.preload_keys(self.master.port, self.keys)
        self.keys = size
        log("fullsync: master preloaded %d keys in %.1f s" % (size, time.monotonic() - t0))

    def new_replica(self, follow, idle=False):
        """Start a replica process without waiting for it (idle: in the SCHED_IDLE class);
        returns (server, t_start)."""
        self.nrep += 1
        s = suite.Server("fullsync-replica-%d" % self.nrep,
                         lambda p: self.replica_argv(p, follow), self.workdir,
                         suite.REPLICA_CPUS, idle)
        s.port = suite.free_port()
        s.argv = s.argv_fn(s.port)
        with open(s.logpath, "ab") as logf:
            t0 = time.monotonic()
            s.proc = subprocess.Popen(s.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, cwd=self.workdir,
                                      start_new_session=True,
                                      preexec_fn=suite.placement(s.cpus, s.idle))
        suite.LIVE.append(s)
        return s, t0

    def wait_synced(self, rep, t0):
        """Poll the replica's INFO until the link is up and no sync is in progress.
        Returns (seconds since t0, the last INFO fields, why not) ."""
        conn = None
        last = {}
        seen_sync = False
        try:
            while time.monotonic() - t0 < SYNC_TIMEOUT:
                if not rep.alive():
                    return None, last, "replica exited (status %s): %s" % (
                        rep.proc.returncode, rep.log_tail())
                if conn is None:
                    try:
                        conn = Conn(rep.port, timeout=5.0)
                    except OSError:
                        time.sleep(POLL_S)
                        continue
                try:
                    last = info_fields(conn, "replication")
                except (OSError, RespError, ValueError, ConnectionError):
                    conn.close()
                    conn = None
                    continue
                now = time.monotonic()
                if last.get("master_sync_in_progress") == "1":
                    seen_sync = True
                if last.get("role") == "slave" and last.get("master_link_status") == "up" \
                        and last.get("master_sync_in_progress") == "0":
                    last["_seen_sync_in_progress"] = seen_sync
                    return now - t0, last, None
                time.sleep(POLL_S)
            return None, last, "not synced within %.0f s (master_link_status:%s " \
                "master_sync_in_progress:%s)" % (SYNC_TIMEOUT, last.get("master_link_status"),
                                                 last.get("master_sync_in_progress"))
        finally:
            if conn is not None:
                conn.close()

    def dbsize(self, port):
        c = Conn(port)
        try:
            return c.cmd("DBSIZE")
        finally:
            c.close()

    def stop_replica(self, rep):
        rep.stop()
        if rep.killed:
            self.notes.append("%s did not exit within %.0f s of SIGTERM and was killed"
                              % (rep.name, suite.STOP_TIMEOUT))
        t0 = time.monotonic()
        while time.monotonic() - t0 < DETACH_TIMEOUT:
            if self.master_info().get("connected_slaves", "0") == "0":
                return
            time.sleep(0.02)
        self.notes.append("the master still listed a replica %.0f s after %s stopped"
                          % (DETACH_TIMEOUT, rep.name))

    def sync_full(self):
        try:
            return int(self.master_info().get("sync_full", "-1"))
        except ValueError:
            return -1

    def one_sync(self, how, rep=None, t0=None):
        """One full sync with nothing else running; how = "process" or "replicaof"."""
        full0 = self.sync_full()
        if how == "process":
            rep, t0 = self.new_replica(True, self.replica_idle)
        else:
            rep = suite.Server("fullsync-replica-%d" % (self.nrep + 1),
                               lambda p: self.replica_argv(p, False), self.workdir,
                               suite.REPLICA_CPUS)
            self.nrep += 1
            why = rep.start()
            if why:
                return {"how": how, "ok": False, "why": "replica " + why}
            c = Conn(rep.port)
            try:
                t0 = time.monotonic()
                c.cmd("REPLICAOF", "127.0.0.1", str(self.master.port))
            finally:
                c.close()
        secs, info, why = self.wait_synced(rep, t0)
        run = {"how": how, "ok": why is None, "seconds": secs, "why": why}
        if why is None:
            run["replica_dbsize"] = self.dbsize(rep.port)
            run["master_sync_full_delta"] = self.sync_full() - full0
            run["saw_sync_in_progress"] = info.get("_seen_sync_in_progress")
            run["slave_repl_offset"] = info.get("slave_repl_offset")
            if run["replica_dbsize"] != self.keys:
                run["ok"] = False
                run["why"] = "replica reported the sync done holding %d of %d keys" % (
                    run["replica_dbsize"], self.keys)
            elif run["master_sync_full_delta"] != 1:
                run["why"] = "master sync_full grew by %d, not 1" % run["master_sync_full_delta"]
        run["replica_log"] = rep.log_tail(3)
        self.stop_replica(rep)
        return run

    # -- the load --

    def load_argv(self, json_path):
        return [self.bench, "--port", str(self.master.port), "--threads", "1", "--clients",
                str(self.clients), "--pipeline", "1", "--duration", str(LOAD_CAP_S),
                "--keyspace", str(self.keys), "--value-size", str(suite.VALUE_SIZE),
                "--command", "get", "--quiet", "--json", json_path]

    def start_load(self, tag):
        path = os.path.join(self.workdir, "load-%s.json" % tag)
        if os.path.exists(path):
            os.unlink(path)
        proc = subprocess.Popen(self.load_argv(path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.probes = {name: PacedProbe(self.master.port, self.keys, self.probe_gap, kind)
                       for name, kind, _ in PROBES}
        return proc, path, time.monotonic()

    def end_load(self, proc, path):
        # The probes stop first, both at once, so that none of their GETs falls after the load.
        for probe in self.probes.values():
            probe.tell_stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        res = None
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            pass
        paced = {}
        for name, probe in self.probes.items():
            probe.stop()
            paced[name] = probe.result()
        probes_ok = all(r["error"] is None and r["requests"] > 0 for r in paced.values())
        if res is None:
            return dict(paced, ok=False, exit=proc.returncode, stderr=err.strip()[-300:])
        lat = res["all"]["latency_us"]
        errors = sum(c.get("errors", 0) for c in res["commands"].values())
        return {**paced, "ok": bool(res.get("ok")) and errors == 0 and probes_ok,
                "exit": proc.returncode,
                "rps": res["rps"], "requests": res["requests"], "seconds": res["duration_s"],
                "p50_us": lat["p50"], "p90_us": lat["p90"], "p99_us": lat["p99"],
                "p999_us": lat["p99.9"], "max_us": lat["max"], "errors": errors,
                "stderr": err.strip()[-300:]}

    def idle_run(self, wall_s, tag):
        proc, path, t0 = self.start_load(tag)
        while time.monotonic() - t0 < wall_s and proc.poll() is None:
            time.sleep(0.01)
        r = self.end_load(proc, path)
        r["wall_s"] = round(time.monotonic() - t0, 3)
        return r

    def during_run(self, tag):
        full0 = self.sync_full()
        proc, path, t_load = self.start_load(tag)
        time.sleep(self.lead)
        rep, t0 = self.new_replica(True, self.replica_idle)
        secs, info, why = self.wait_synced(rep, t0)
        if why is None:
            time.sleep(self.tail)
        r = self.end_load(proc, path)
        r["wall_s"] = round(time.monotonic() - t_load, 3)
        r["sync_s"] = secs
        r["sync_why"] = why
        if why is None:
            n = self.dbsize(rep.port)
            r["replica_dbsize"] = n
            r["master_sync_full_delta"] = self.sync_full() - full0
            if n != self.keys:
                r["sync_why"] = "replica reported the sync done holding %d of %d keys" % (
                    n, self.keys)
        r["replica_log"] = rep.log_tail(3)
        self.stop_replica(rep)
        return r

    # -- the run --

    def run(self):
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        t_start = time.monotonic()
        for path, what in ((self.server, "ringkv-server"), (self.bench, "ringkv-bench")):
            if not os.access(path, os.X_OK):
                sys.exit("fullsync: %s not found at %s (run `make` first)" % (what, path))
        self.load_start = os.getloadavg()
        self.master = suite.Server("fullsync-master", self.master_argv, self.workdir,
                                   suite.MASTER_CPUS)
        why = self.master.start()
        if why:
            sys.exit("fullsync: master " + why)
        self.preload()

        for i in range(self.runs):
            for how in (("process", "replicaof") if i % 2 == 0 else ("replicaof", "process")):
                r = self.one_sync(how)
                self.sync_runs.append(r)
                log("fullsync: sync %d (%s): %s" % (i + 1, how, "%.3f s" % r["seconds"]
                                                    if r["ok"] else "failed: %s" % r["why"]))
        # The first "during" run sets the wall time of its pair's idle run; with idle
        # first, the previous "during" run's wall time (or the unloaded sync's median).
        ok_proc = [r["seconds"] for r in self.sync_runs if r["ok"] and r["how"] == "process"]
        guess = (statistics.median(ok_proc) if ok_proc else 1.0) + self.lead + self.tail
        for i in range(self.load_runs):
            pair = {"rep": i}
            if i % 2 == 0:
                pair["during"] = self.during_run("d%d" % i)
                wall = pair["during"]["wall_s"]
                pair["idle"] = self.idle_run(wall, "i%d" % i)
                pair["order"] = "during, idle"
            else:
                pair["idle"] = self.idle_run(guess, "i%d" % i)
                pair["during"] = self.during_run("d%d" % i)
                pair["order"] = "idle, during"
            guess = pair["during"]["wall_s"]
            d, idl = pair["during"], pair["idle"]
            pair["ok"] = d.get("ok") and idl.get("ok") and d.get("sync_why") is None
            if pair["ok"]:
                pair["p99_ratio"] = d["p99_us"] / idl["p99_us"]
            self.load_pairs.append(pair)
            log("fullsync: load %d: idle p99 %s us, during p99 %s us, sync %s"
                % (i + 1, fmt_us(idl.get("p99_us")), fmt_us(d.get("p99_us")),
                   "%.3f s" % d["sync_s"] if d.get("sync_s") else d.get("sync_why")))
        self.master.stop()
        self.load_end = os.getloadavg()
        self.elapsed = time.monotonic() - t_start
        self.write()

    # -- results --

    def summary(self):
        s = {}
        for how in ("process", "replicaof"):
            ok = sorted(r["seconds"] for r in self.sync_runs if r["ok"] and r["how"] == how)
            s["sync_" + how] = {"runs": len(ok), "of": sum(1 for r in self.sync_runs
                                                           if r["how"] == how),
                                "median_s": statistics.median(ok) if ok else None,
                                "min_s": ok[0] if ok else None, "max_s": ok[-1] if ok else None}
        pairs = [p for p in self.load_pairs if p["ok"]]
        s["load_pairs"] = len(pairs)
        s["load_pairs_of"] = len(self.load_pairs)
        if pairs:
            def med(f):
                return statistics.median(f(p) for p in pairs)
            s["idle_p99_us"] = med(lambda p: p["idle"]["p99_us"])
            s["during_p99_us"] = med(lambda p: p["during"]["p99_us"])
            s["p99_ratio"] = med(lambda p: p["p99_ratio"])
            s["p99_ratio_range"] = [min(p["p99_ratio"] for p in pairs),
                                    max(p["p99_ratio"] for p in pairs)]
            s["idle_p999_us"] = med(lambda p: p["idle"]["p999_us"])
            s["during_p999_us"] = med(lambda p: p["during"]["p999_us"])
            s["idle_max_us"] = med(lambda p: p["idle"]["max_us"])
            s["during_max_us"] = med(lambda p: p["during"]["max_us"])
            s["during_max_us_worst"] = max(p["during"]["max_us"] for p in pairs)
            s["idle_p50_us"] = med(lambda p: p["idle"]["p50_us"])
            for n, _, _ in PROBES:
                for k in ("p99_us", "p999_us", "max_us", "over_100ms"):
                    s[n + "_idle_" + k] = med(lambda p: p["idle"][n][k])
                    s[n + "_during_" + k] = med(lambda p: p["during"][n][k])
                s[n + "_p99_ratio"] = med(lambda p: p["during"][n]["p99_us"]
                                          / p["idle"][n]["p99_us"])
                s[n + "_during_max_us_worst"] = max(p["during"][n]["max_us"] for p in pairs)
            s["during_p50_us"] = med(lambda p: p["during"]["p50_us"])
            s["idle_rps"] = med(lambda p: p["idle"]["rps"])
            s["during_rps"] = med(lambda p: p["during"]["rps"])
            s["sync_under_load_s"] = med(lambda p: p["during"]["sync_s"])
            s["sync_share_of_window"] = med(lambda p: p["during"]["sync_s"]
                                            / p["during"]["wall_s"])
        return s

    def commands(self):
        names = {str(self.master.port): "P"}
        def q(argv):
            return " ".join(suite.shell_quote(names.get(a, a)) for a in suite.rel_argv(argv))
        return {
            "master": q(self.master_argv(self.master.port)),
            "preload": "%s pipelined SET key:NNNNNNNNNNNN <%d bytes> (bench/suite.py's preload)"
                       % ("{:,}".format(self.keys), suite.VALUE_SIZE),
            "replica (process)": q(self.replica_argv(0)).replace("--port 0", "--port P2"),
            "replica (REPLICAOF)": q(self.replica_argv(0, False)).replace("--port 0",
                                                                          "--port P2")
                                   + "; then REPLICAOF 127.0.0.1 P",
            "load": q(self.load_argv("F")) +
                    "  (stopped with SIGINT)",
            **({"replica (beside the load)": "chrt -i 0 " + q(self.replica_argv(0)).replace(
                "--port 0", "--port P2")} if self.replica_idle else {}),
        }

    def probe_priority(self, name):
        seen = sorted({r[k][name].get("priority") or "unknown" for r in self.load_pairs
                       for k in ("idle", "during") if name in r.get(k, {})})
        return " and ".join(seen) or "none"

    def markdown(self, s, heading="##"):
        out = []
        out.append("%s Full sync of a TCP replica, %s%s\n"
                   % (heading, self.started, " (quick run)" if self.quick else ""))
        out.append("bench/fullsync.py: a ringkv master holding %s keys (16-byte keys, %d-byte "
                   "values), loaded before any replica; each run starts a fresh TCP replica. "
                   "Sync time: until the replica's INFO says master_link_status:up and "
                   "master_sync_in_progress:0 (and it holds every key). Latency: ringkv-bench "
                   "GET, %d clients, pipeline 1, on the master, stopped %.1f s after the sync "
                   "ended (the replica started %.1f s after the load), against the same load "
                   "for the same time with no replica; medians over the pairs of runs. Beside "
                   "it, two paced probes, each a process of its own sending a GET every %g ms "
                   "on its own connection, its latency counted from when it was due (a "
                   "closed-loop client's p99 hides a stall: each of its connections records "
                   "one slow reply however long the stall): the FIFO probe at %s priority, "
                   "the normal probe at %s priority. %s Load "
                   "average %.1f at the start, %.1f at the end; %.0f s in all.\n"
                   % ("{:,}".format(self.keys), suite.VALUE_SIZE, self.clients, self.tail,
                      self.lead, self.probe_gap * 1000, self.probe_priority("paced"),
                      self.probe_priority("paced_normal"),
                      "The replicas synced beside the load ran in the SCHED_IDLE class "
                      "(FULLSYNC_REPLICA_SCHED=idle): only on a CPU nothing else wanted, so "
                      "the master's latency shows what the sync costs the master, not a "
                      "neighbour's use of its CPUs; the timed syncs ran like any process."
                      if self.replica_idle else "Every replica ran like any process.",
                      self.load_start[0], self.load_end[0],
                      self.elapsed))
        sp, sr = s["sync_process"], s["sync_replicaof"]

        def secs(v):
            return "–" if v is None else "%.3f" % v

        def verdict(ok):
            return "met" if ok else "**not met**"
        out.append("| measure | median | range | runs | target |")
        out.append("|---|--:|--:|--:|---|")
        out.append("| full sync, from starting the replica process (s) | %s | %s–%s | %d/%d | "
                   "< 2 s: %s |" % (secs(sp["median_s"]), secs(sp["min_s"]), secs(sp["max_s"]),
                                    sp["runs"], sp["of"],
                                    verdict(sp["median_s"] is not None and sp["median_s"] < 2)))
        out.append("| full sync, from REPLICAOF (s) | %s | %s–%s | %d/%d | < 2 s: %s |"
                   % (secs(sr["median_s"]), secs(sr["min_s"]), secs(sr["max_s"]), sr["runs"],
                      sr["of"], verdict(sr["median_s"] is not None and sr["median_s"] < 2)))
        if s.get("load_pairs"):
            out.append("| full sync under the GET load (s) | %s | | %d/%d | |"
                       % (secs(s["sync_under_load_s"]), s["load_pairs"], s["load_pairs_of"]))
            out.append("| master GET p99, idle (µs) | %s | | %d | |"
                       % (fmt_us(s["idle_p99_us"]), s["load_pairs"]))
            out.append("| master GET p99, during the full sync (µs) | %s | | %d | |"
                       % (fmt_us(s["during_p99_us"]), s["load_pairs"]))
            lo, hi = s["p99_ratio_range"]
            out.append("| p99 during ÷ idle (per pair) | %.2f× | %.2f–%.2f× | %d/%d | < 2×: %s |"
                       % (s["p99_ratio"], lo, hi, s["load_pairs"], s["load_pairs_of"],
                          verdict(s["p99_ratio"] < 2)))
            out.append("| master GET p50, idle / during (µs) | %s / %s | | | |"
                       % (fmt_us(s["idle_p50_us"]), fmt_us(s["during_p50_us"])))
            out.append("| master GET p99.9, idle / during (µs) | %s / %s | | | |"
                       % (fmt_us(s["idle_p999_us"]), fmt_us(s["during_p999_us"])))
            out.append("| master GET max, idle / during (µs) | %s / %s | largest during: %s | | |"
                       % (fmt_us(s["idle_max_us"]), fmt_us(s["during_max_us"]),
                          fmt_us(s["during_max_us_worst"])))
            out.append("| master GET ops/s idle / during | {:,.0f} / {:,.0f} | | | |".format(
                s["idle_rps"], s["during_rps"]))
            for n, _, label in PROBES:
                out.append("| %s (one every %g ms) p99, idle / during (µs) | %s / %s | | | |"
                           % (label, self.probe_gap * 1000, fmt_us(s[n + "_idle_p99_us"]),
                              fmt_us(s[n + "_during_p99_us"])))
                out.append("| %s p99 during ÷ idle | %.2f× | | %d | < 2×: %s |"
                           % (label, s[n + "_p99_ratio"], s["load_pairs"],
                              verdict(s[n + "_p99_ratio"] < 2)))
                out.append("| %s p99.9 / max during (µs) | %s / %s | largest max: %s | | |"
                           % (label, fmt_us(s[n + "_during_p999_us"]),
                              fmt_us(s[n + "_during_max_us"]),
                              fmt_us(s[n + "_during_max_us_worst"])))
                out.append("| %s over 100 ms, idle / during | %g / %g | | | |"
                           % (label, s[n + "_idle_over_100ms"], s[n + "_during_over_100ms"]))
        else:
            out.append("| master GET p99 during ÷ idle | no valid pair | | 0/%d | < 2× |"
                       % s["load_pairs_of"])
        out.append("")
        notes = list(self.notes)
        if any(os.environ.get(v) for v in ("BENCH_MASTER_CPUS", "BENCH_REPLICA_CPUS",
                                           "BENCH_CLIENT_CPUS")):
            notes.append("CPUs: master %s, replicas %s, load and probe %s"
                         % tuple(os.environ.get(v) or "any" for v in
                                 ("BENCH_MASTER_CPUS", "BENCH_REPLICA_CPUS",
                                  "BENCH_CLIENT_CPUS")))
        if s.get("load_pairs"):
            notes.append("the sync took a median %.0f%% of each \"during\" load window (the rest "
                         "is the %.1f s before the replica started, its start-up, and the %.1f s "
                         "after), so the during p99 is over a window that is not all sync"
                         % (100 * s["sync_share_of_window"], self.lead, self.tail))
        if s.get("load_pairs") and s["paced_during_max_us"] > 100000:
            notes.append("during the full sync the master left a GET unanswered for %s ms "
                         "(median over the pairs of the paced probe's longest wait; largest "
                         "%s ms; idle: %s ms); ringkv-bench's ops/s fell from {:,.0f} to "
                         "{:,.0f}".format(s["idle_rps"], s["during_rps"])
                         % (fmt_us(s["paced_during_max_us"] / 1000),
                            fmt_us(s["paced_during_max_us_worst"] / 1000),
                            fmt_us(s["paced_idle_max_us"] / 1000)))
        for r in self.sync_runs:
            if not r["ok"] or r.get("why"):
                notes.append("sync run (%s): %s; replica log: %s"
                             % (r["how"], r["why"], r.get("replica_log", "")))
        for p in self.load_pairs:
            if not p["ok"]:
                notes.append("load pair %d: idle %s, during %s, sync: %s; replica log: %s" % (
                    p["rep"] + 1, "ok" if p["idle"].get("ok") else "failed (%s)"
                    % p["idle"].get("stderr"), "ok" if p["during"].get("ok") else
                    "failed (%s)" % p["during"].get("stderr"), p["during"].get("sync_why"),
                    p["during"].get("replica_log", "")))
        suite.notes_and_commands(out, notes, "P = the master's port, P2 the replica's, F a "
                                 "JSON file", self.commands(), 21)
        return "\n".join(out)

    def write(self):
        s = self.summary()
        md = self.markdown(s)
        data = {"started": self.started, "elapsed_s": round(self.elapsed, 1),
                "machine": suite.machine_brief(),
                "load_average": {"start": self.load_start, "end": self.load_end},
                "settings": {"quick": self.quick, "keys": self.keys,
                             "value_size": suite.VALUE_SIZE, "sync_runs": self.runs,
                             "load_pairs": self.load_runs, "load_clients": self.clients,
                             "lead_s": self.lead, "tail_s": self.tail,
                             "replica_sched": self.replica_sched,
                             "cpus": suite.placement_settings()},
                "commands": self.commands(), "summary": s, "sync_runs": self.sync_runs,
                "load_pairs": self.load_pairs, "notes": self.notes}
        suite.write_section(self.results, self.stamp, "fullsync", md, data, "fullsync")


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        probe_main(*sys.argv[2:])
        return
    suite.run_main(FullSync())


if __name__ == "__main__":
    main()
