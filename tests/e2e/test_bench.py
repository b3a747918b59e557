"""
ringkv-bench's --rate: a paced run issues no more SET+GET requests than the rate allows (plus
the one batch each thread may send ahead), on one thread or several; bad values are refused
(exit 2 with one line on stderr); and without --rate the run is unpaced, says rate_target 0
and does exactly the requests asked for.

bench/fullsync.py's paced probe (`fullsync.py --probe`): it sends GETs at its pace until its
standard input closes, then reports every latency, its priority and no error; a server that
goes away ends it with the error, not a hang.

bench/suite.py's placement (the preexec_fn every bench server starts with): it confines a
child to the CPUs asked for and, for bench/fullsync.py's FULLSYNC_REPLICA_SCHED=idle, puts it
in the SCHED_IDLE class; fullsync.py refuses any other value of that variable.

The load generator is $RINGKV_BENCH, else build/asan/ringkv-bench, else build/rel/ringkv-bench;
the tests are skipped when there is none.  Every run is bounded (1 s, or a few thousand
requests) and has a timeout.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

from harness import REPO, ServerTestCase, built_binary

sys.path.insert(0, os.path.join(REPO, "bench"))
import suite  # noqa: E402  (bench/suite.py: placement)

RATE = 5000
CLIENTS = 4
PIPELINE = 4


def bench_path():
    return built_binary("RINGKV_BENCH", "ringkv-bench")


class BenchTestCase(ServerTestCase):

    def setUp(self):
        self.bench = bench_path()
        if not self.bench or not os.path.exists(self.bench):
            self.skipTest("ringkv-bench is not built (set RINGKV_BENCH or run make)")

    def run_bench(self, args, timeout=30.0):
        """Run ringkv-bench to completion: (exit status, stdout, stderr)."""
        p = subprocess.run([self.bench] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def run_json(self, srv, args):
        """Run ringkv-bench against srv with --json to a file (stdout has the text report);
        fail unless it exits 0.  Returns (the JSON results, the text report)."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "run.json")
            rc, out, err = self.run_bench(
                ["--host", "127.0.0.1", "--port", str(srv.port), "--json", path] + list(args))
            self.assertEqual(rc, 0, "ringkv-bench %s: exit status %s\n%s%s" % (
                " ".join(args), rc, out, err))
            with open(path) as f:
                return json.load(f), out


class Rate(BenchTestCase):

    def assert_paced(self, res, threads):
        secs = res["duration_s"]
        self.assertEqual(res["rate_target"], RATE)
        self.assertTrue(res["ok"], res)
        self.assertGreater(secs, 0)
        # Each thread issues at most its share of the rate times the time so far, plus one
        # batch ahead; the last reply comes after the last batch was issued.  The slack of a
        # batch per connection covers rounding and is still far below an unpaced run.
        bound = RATE * secs + CLIENTS * PIPELINE + threads * PIPELINE
        self.assertLessEqual(res["requests"], bound,
                             "%d requests in %.3f s at --rate %d" % (res["requests"], secs, RATE))
        # Not a speed test: only that pacing does not hold the run far below the rate.
        self.assertGreaterEqual(res["requests"], RATE // 2)

    def test_one_thread(self):
        srv = self.start_server()
        res, out = self.run_json(srv, ["--rate", str(RATE), "--duration", "1", "--clients",
                                       str(CLIENTS), "--pipeline", str(PIPELINE)])
        self.assert_paced(res, 1)
        self.assertIn("(target %d)" % RATE, out)

    def test_two_threads(self):
        srv = self.start_server()
        res, _ = self.run_json(srv, ["--rate", str(RATE), "--duration", "1", "--clients",
                                     str(CLIENTS), "--pipeline", str(PIPELINE), "--threads", "2"])
        self.assert_paced(res, 2)

    def test_unpaced_by_default(self):
        srv = self.start_server()
        res, out = self.run_json(srv, ["--requests", "2000", "--clients", str(CLIENTS),
                                       "--pipeline", str(PIPELINE)])
        self.assertEqual(res["rate_target"], 0)
        self.assertEqual(res["requests"], 2000)
        self.assertTrue(res["ok"], res)
        self.assertNotIn("target", out)


class BadRate(BenchTestCase):

    def assert_refused(self, value):
        rc, out, err = self.run_bench(["--rate", value, "--requests", "1"], timeout=10.0)
        self.assertEqual(rc, 2, "--rate %r: exit status %s, stderr %r" % (value, rc, err))
        self.assertTrue(err.startswith("ringkv-bench: "), err)
        self.assertEqual(err.count("\n"), 1, "not one line: %r" % err)
        self.assertIn("--rate", err)
        self.assertIn(value, err)
        self.assertEqual(out, "")

    def test_negative(self):
        self.assert_refused("-1")

    def test_not_a_number(self):
        self.assert_refused("abc")


class FullSyncProbe(ServerTestCase):
    """The paced probe of bench/fullsync.py, a process of its own."""

    def start_probe(self, port, kind):
        p = subprocess.Popen([sys.executable, os.path.join(REPO, "bench/fullsync.py"), "--probe",
                              str(port), "100", "2", kind], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p

    def finish(self, p):
        out, err = p.communicate(input="", timeout=30)
        self.assertEqual(p.returncode, 0, err)
        return json.loads(out)

    def test_paces_and_stops_when_told(self):
        srv = self.start_server()
        for kind in ("fifo", "normal"):
            p = self.start_probe(srv.port, kind)
            time.sleep(0.5)
            t0 = time.monotonic()
            res = self.finish(p)
            self.assertLess(time.monotonic() - t0, 5.0, "the probe did not stop on EOF")
            self.assertIsNone(res["error"])
            # One GET every 2 ms for about 0.5 s (after Python's start-up): never more than
            # the pace allows, and not stalled.
            self.assertGreater(len(res["lat"]), 10, res)
            self.assertLessEqual(len(res["lat"]), 300, res)
            self.assertTrue(all(x >= 0 for x in res["lat"]))
            if kind == "normal":
                self.assertEqual(res["priority"], "normal")
            else:
                self.assertTrue(res["priority"] == "SCHED_FIFO 1" or
                                res["priority"].startswith("normal (SCHED_FIFO refused"),
                                res["priority"])

    def test_server_gone_is_an_error(self):
        srv = self.start_server()
        p = self.start_probe(srv.port, "normal")
        time.sleep(0.3)
        srv.stop()
        time.sleep(0.2)
        res = self.finish(p)
        self.assertIsNotNone(res["error"])
        self.assertGreater(len(res["lat"]), 0)


class Placement(unittest.TestCase):
    """bench/suite.py's placement, on a child that sleeps until it is looked at."""

    def child(self, preexec):
        p = subprocess.Popen(["sleep", "30"], preexec_fn=preexec)
        self.addCleanup(lambda: (p.kill(), p.wait()))
        return p

    def test_idle_class_and_cpus(self):
        cpu = min(os.sched_getaffinity(0))
        p = self.child(suite.placement({cpu}, idle=True))
        self.assertEqual(os.sched_getscheduler(p.pid), os.SCHED_IDLE)
        self.assertEqual(os.sched_getaffinity(p.pid), {cpu})
        p = self.child(suite.placement(None, idle=True))
        self.assertEqual(os.sched_getscheduler(p.pid), os.SCHED_IDLE)
        self.assertEqual(os.sched_getaffinity(p.pid), os.sched_getaffinity(0))

    def test_default_is_no_change(self):
        self.assertIsNone(suite.placement(None))
        p = self.child(suite.placement({min(os.sched_getaffinity(0))}))
        self.assertEqual(os.sched_getscheduler(p.pid), os.sched_getscheduler(0))

    def test_fullsync_refuses_other_values(self):
        env = dict(os.environ, FULLSYNC_REPLICA_SCHED="fifo")
        r = subprocess.run([sys.executable, os.path.join(REPO, "bench/fullsync.py")], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("FULLSYNC_REPLICA_SCHED must be normal or idle", r.stderr)
