#!/usr/bin/python3
"""
applylag: a same-host replica's apply lag at its master's peak SET rate and at half of it.
`make bench` runs it after the suite and bench/fullsync.py (bench/suite.sh); it can run alone.

What is measured.  A replica that reads its master's log through shared memory records, for
every catch-up, the time from the master publishing a shard's log tail (a CLOCK_MONOTONIC
stamp in the shared mapping) to the replica having applied up to it; INFO replication prints
the p50 and p99 of those samples (apply_lag_p50_us, apply_lag_p99_us; 10 us buckets below
1 ms) and CONFIG RESETSTAT starts them over.  Unlike the suite's lag probe, this sees below
one GET round trip to the replica.

Setup.  One master, `ringkv-server --threads 2 --port P --bind 127.0.0.1` (sync-mode async),
and one replica, `ringkv-server --threads 1 --port P2 --bind 127.0.0.1 --replicaof 127.0.0.1
P --repl-transport shm`; the suite's BENCH_THREADS, BENCH_REPLICA_THREADS, BENCH_CLIENT_THREADS
and BENCH_MASTER_CPUS, BENCH_REPLICA_CPUS, BENCH_CLIENT_CPUS change the thread counts and
place the processes (bench/suite.py).  The load is

    ringkv-bench --port P --threads T --clients 50 --pipeline 16 --duration D \
        --keyspace 1000000 --value-size 32 --command set [--rate R] --quiet --json F

1. Peak: APPLYLAG_RUNS runs without --rate (after one warm-up run that creates the keys);
   the peak is the median of their SET rates.
2. Half of peak: APPLYLAG_RUNS runs with --rate peak/2 (ringkv-bench paces each thread's
   batches to it; the achieved rate is reported beside the target).
Before every run the replica's statistics are reset (CONFIG RESETSTAT), and after it (once
the replica has applied up to the master's final offset) its apply_lag_* fields are read, so
each run's percentiles cover that run alone.  The table shows every run and the medians.

Output: a markdown table on stdout and, in BENCH_RESULTS (bench/results),
<stamp>-applylag.{json,md}; where <stamp>.md of the suite exists (same BENCH_STAMP), the
section is appended to it and to latest.md.

Environment: APPLYLAG_RUNS (3; BENCH_QUICK=1: 1), APPLYLAG_DURATION (3 s; quick 1),
BENCH_RESULTS, BENCH_STAMP, RINGKV_SERVER, RINGKV_BENCH, and the suite's thread and CPU
variables above.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402  (the RESP client, Server and helpers)
from suite import Conn, env_float, env_int, info_fields, log  # noqa: E402

REPO = suite.REPO
CLIENTS = 50
PIPELINE = 16
LINK_TIMEOUT = 15.0     # the replica must be attached and synced within this
CATCHUP_TIMEOUT = 10.0  # after a run, the replica must reach the master's offset within this


class ApplyLag:
    def __init__(self):
        self.quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        self.runs = env_int("APPLYLAG_RUNS", 1 if self.quick else 3)
        self.duration = env_float("APPLYLAG_DURATION", 1.0 if self.quick else 3.0)
        self.results = os.path.abspath(os.environ.get("BENCH_RESULTS") or
                                       os.path.join(REPO, "bench", "results"))
        self.stamp = os.environ.get("BENCH_STAMP") or \
            (time.strftime("%Y-%m-%d-%H%M") + ("-quick" if self.quick else ""))
        self.server = os.path.abspath(os.environ.get(
            "RINGKV_SERVER", os.path.join(REPO, "build/rel/ringkv-server")))
        self.bench = os.path.abspath(os.environ.get(
            "RINGKV_BENCH", os.path.join(REPO, "build/rel/ringkv-bench")))
        self.workdir = tempfile.mkdtemp(prefix="ringkv-bench-applylag-")
        self.master = self.replica = None
        self.rows = []          # one dict per run: phase, rate_target, rps, lag fields
        self.notes = []

    def master_argv(self, port):
        return [self.server, "--threads", str(suite.MASTER_THREADS), "--port", str(port),
                "--bind", "127.0.0.1"]

    def replica_argv(self, port):
        return [self.server, "--threads", str(suite.REPLICA_THREADS), "--port", str(port),
                "--bind", "127.0.0.1", "--replicaof", "127.0.0.1", str(self.master.port),
                "--repl-transport", "shm"]

    def info(self, port):
        c = Conn(port)
        try:
            return info_fields(c, "replication")
        finally:
            c.close()

    def start(self):
        self.master = suite.Server("applylag-master", self.master_argv, self.workdir,
                                   suite.MASTER_CPUS)
        why = self.master.start()
        if why:
            raise RuntimeError("master " + why)
        self.replica = suite.Server("applylag-replica", self.replica_argv, self.workdir,
                                    suite.REPLICA_CPUS)
        why = self.replica.start()
        if why:
            raise RuntimeError("replica " + why)
        deadline = time.monotonic() + LINK_TIMEOUT
        while time.monotonic() < deadline:
            f = self.info(self.replica.port)
            if f.get("master_link_status") == "up" and f.get("master_sync_in_progress") == "0":
                if f.get("master_link_transport") != "shm":
                    raise RuntimeError("the replica attached over %s, not shared memory"
                                       % f.get("master_link_transport"))
                return
            time.sleep(0.02)
        raise RuntimeError("the replica was not attached and synced within %.0f s: %s"
                           % (LINK_TIMEOUT, self.replica.log_tail()))

    def load_argv(self, rate, json_path, duration):
        argv = [self.bench, "--port", str(self.master.port), "--threads",
                str(suite.CLIENT_THREADS), "--clients", str(CLIENTS), "--pipeline",
                str(PIPELINE), "--duration", "%g" % duration, "--keyspace",
                str(suite.KEYSPACE), "--value-size", str(suite.VALUE_SIZE), "--command", "set"]
        if rate:
            argv += ["--rate", str(int(rate))]
        return argv + ["--quiet", "--json", json_path]

    def caught_up(self):
        """Wait until the replica has applied up to the master's offset; True if it did."""
        want = int(self.info(self.master.port).get("master_repl_offset", "0"))
        deadline = time.monotonic() + CATCHUP_TIMEOUT
        while time.monotonic() < deadline:
            if int(self.info(self.replica.port).get("slave_repl_offset", "0")) >= want:
                return True
            time.sleep(0.005)
        return False

    def one_run(self, phase, rate, duration=None):
        duration = duration or self.duration
        path = os.path.join(self.workdir, "run.json")
        if os.path.exists(path):
            os.unlink(path)
        c = Conn(self.replica.port)
        try:
            if c.cmd("CONFIG", "RESETSTAT") != "OK":
                raise RuntimeError("CONFIG RESETSTAT refused on the replica")
        finally:
            c.close()
        argv = self.load_argv(rate, path, duration)
        self.last_argv = argv
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=duration + 60)
        if p.returncode != 0:
            raise RuntimeError("ringkv-bench exited %d: %s" % (p.returncode, p.stderr.strip()))
        with open(path) as f:
            res = json.load(f)
        ok = self.caught_up()
        f = self.info(self.replica.port)
        row = {"phase": phase, "rate_target": int(rate or 0),
               "rps": res["rps"],
               "caught_up": ok,
               "lag_samples": int(f.get("apply_lag_samples", "0")),
               "lag_p50_us": int(f.get("apply_lag_p50_us", "0")),
               "lag_p99_us": int(f.get("apply_lag_p99_us", "0"))}
        log("applylag: %-5s target %s: %.0f SET/s, apply lag p50 %d us, p99 %d us (%d samples)"
            % (phase, row["rate_target"] or "-", row["rps"], row["lag_p50_us"],
               row["lag_p99_us"], row["lag_samples"]))
        return row

    def run(self):
        self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        t0 = time.monotonic()
        self.start()
        self.one_run("warm", 0, min(self.duration, 2.0))
        peak = [self.one_run("peak", 0) for _ in range(self.runs)]
        self.rows += peak
        self.peak = statistics.median(r["rps"] for r in peak)
        half = [self.one_run("half", self.peak / 2) for _ in range(self.runs)]
        self.rows += half
        self.elapsed = time.monotonic() - t0
        self.write()

    def summary(self):
        out = {"peak_rps": round(self.peak)}
        for phase in ("peak", "half"):
            rs = [r for r in self.rows if r["phase"] == phase]
            out[phase] = {"rps": round(statistics.median(r["rps"] for r in rs)),
                          "lag_p50_us": statistics.median(r["lag_p50_us"] for r in rs),
                          "lag_p99_us": statistics.median(r["lag_p99_us"] for r in rs),
                          "all_caught_up": all(r["caught_up"] for r in rs)}
        return out

    def commands(self):
        names = {str(self.master.port): "P", str(self.replica.port): "P2"}

        def show(argv):
            return " ".join(suite.shell_quote(names.get(a, a)) for a in suite.rel_argv(argv))
        load = list(self.last_argv)
        i = load.index("--rate")
        load[i + 1] = "R"
        load[load.index("--json") + 1] = "F"
        return {"master": show(self.master.argv), "replica": show(self.replica.argv),
                "load": show(load) + "   (peak runs: without --rate R)"}

    def markdown(self, s):
        cpu = suite.cpu_model()
        out = ["## Apply lag of a same-host replica (bench/applylag.py)\n",
               "Started %s; %s, %d CPUs, Linux %s; %s. Master %d worker threads, replica %d, "
               "ringkv-bench %d thread%s, %d clients, pipeline %d, %g s per run."
               % (self.started, cpu, os.cpu_count(), os.uname().release,
                  "quick run" if self.quick else "%d runs per load" % self.runs,
                  suite.MASTER_THREADS, suite.REPLICA_THREADS, suite.CLIENT_THREADS,
                  "" if suite.CLIENT_THREADS == 1 else "s", CLIENTS, PIPELINE, self.duration)]
        place = tuple(os.environ.get(v) or "any" for v in
                      ("BENCH_MASTER_CPUS", "BENCH_REPLICA_CPUS", "BENCH_CLIENT_CPUS"))
        if place != ("any", "any", "any"):
            out[-1] += " CPUs: master %s, replica %s, client %s." % place
        out.append("")
        out.append("| load | target SET/s | SET/s | share of peak | apply lag p50 | "
                   "apply lag p99 | samples | caught up |")
        out.append("|---|--:|--:|--:|--:|--:|--:|---|")
        for r in self.rows:
            out.append("| %s | %s | {:,.0f} | %.2f | %d us | %d us | {:,} | %s |".format(
                r["rps"], r["lag_samples"])
                % (r["phase"], "{:,}".format(r["rate_target"]) if r["rate_target"] else "–",
                   r["rps"] / self.peak, r["lag_p50_us"], r["lag_p99_us"],
                   "yes" if r["caught_up"] else "no"))
        out.append("")
        out.append("**Median at half of peak ({:,} SET/s target, {:,} achieved): apply lag p50 "
                   "{} us, p99 {} us.** At peak ({:,} SET/s): p50 {} us, p99 {} us.\n".format(
                       round(self.peak / 2), s["half"]["rps"], s["half"]["lag_p50_us"],
                       s["half"]["lag_p99_us"], s["peak"]["rps"], s["peak"]["lag_p50_us"],
                       s["peak"]["lag_p99_us"]))
        suite.notes_and_commands(out, self.notes, "P = the master's port, P2 the replica's, "
                                 "R the rate, F a JSON file", self.commands(), 9)
        return "\n".join(out)

    def write(self):
        s = self.summary()
        md = self.markdown(s)
        data = {"started": self.started, "elapsed_s": round(self.elapsed, 1),
                "machine": suite.machine_brief(),
                "settings": {"quick": self.quick, "runs": self.runs,
                             "duration_s": self.duration, "clients": CLIENTS,
                             "pipeline": PIPELINE, "master_threads": suite.MASTER_THREADS,
                             "replica_threads": suite.REPLICA_THREADS,
                             "client_threads": suite.CLIENT_THREADS,
                             "cpus": suite.placement_settings()},
                "commands": self.commands(), "summary": s, "runs": self.rows}
        suite.write_section(self.results, self.stamp, "applylag", md, data, "applylag")


def main():
    suite.run_main(ApplyLag())


if __name__ == "__main__":
    main()
