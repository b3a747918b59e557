"""
The command line and the process's life: --help, bad options (exit 2 with one clear line on
stderr), a config file, SIGTERM / SIGINT / SHUTDOWN (exit 0, with a log line), the default
address 127.0.0.1:6379, and refusing a port that is already taken.
"""

import os
import signal
import socket
import tempfile
import time

from harness import Conn, ServerTestCase, free_port, port_is_free, run_server_cmd

OPTION_NAMES = ["port", "bind", "maxclients", "requirepass", "loglevel", "logfile", "timeout",
                "threads", "shards", "proto-max-bulk-len", "client-query-buffer-limit"]


class Help(ServerTestCase):

    def test_help_lists_every_option(self):
        rc, out, err = run_server_cmd(["--help"])
        self.assertEqual(rc, 0, err)
        text = out.decode()
        for name in OPTION_NAMES:
            self.assertIn("--" + name, text, "--help does not mention --%s" % name)
        self.assertEqual(err, b"")

    def test_version(self):
        rc, out, err = run_server_cmd(["--version"])
        self.assertEqual(rc, 0, err)
        self.assertIn(b"ringkv", out)


class BadOptions(ServerTestCase):

    def assert_refused(self, args, *words):
        rc, out, err = run_server_cmd(args)
        self.assertEqual(rc, 2, "%r: exit status %s, stderr %r" % (args, rc, err))
        text = err.decode()
        self.assertTrue(text.startswith("ringkv-server: "), text)
        self.assertEqual(text.count("\n"), 1, "not one line: %r" % text)
        for w in words:
            self.assertIn(w, text)
        self.assertNotIn(b"Ready to accept", out)

    def test_unknown_option(self):
        self.assert_refused(["--no-such-option", "1"], "unknown option", "--no-such-option")

    def test_bad_port(self):
        self.assert_refused(["--port", "abc"], "port", "abc")
        self.assert_refused(["--port", "70000"], "port", "70000")

    def test_shards_not_power_of_two(self):
        self.assert_refused(["--shards", "3"], "shards")

    def test_other_bad_values(self):
        self.assert_refused(["--threads", "0"], "threads")
        self.assert_refused(["--maxclients", "x"], "maxclients")
        self.assert_refused(["--loglevel", "loud"], "loglevel")
        self.assert_refused(["--proto-max-bulk-len", "1k"], "proto-max-bulk-len")

    def test_missing_config_file(self):
        rc, out, err = run_server_cmd([os.path.join(tempfile.gettempdir(), "no-such-ringkv.conf")])
        self.assertEqual(rc, 2, err)
        self.assertIn(b"no-such-ringkv.conf", err)

    def test_bad_config_file_line(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.conf")
            with open(path, "w") as f:
                f.write("# comment\nport 1234\nno-such-directive yes\n")
            rc, out, err = run_server_cmd([path])
            self.assertEqual(rc, 2, err)
            self.assertIn(b"bad.conf:3", err)

    def test_port_in_use(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            rc, out, err = run_server_cmd(["--port", str(port), "--bind", "127.0.0.1",
                                           "--threads", "1"])
            self.assertEqual(rc, 1, err)
            self.assertIn(b"can't listen on 127.0.0.1:%d" % port, err)


class ConfigFile(ServerTestCase):

    def test_config_file_is_honoured(self):
        d = tempfile.mkdtemp(prefix="ringkv-conf-")
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        port = free_port()
        path = os.path.join(d, "ringkv.conf")
        with open(path, "w") as f:
            f.write("# ringkv test config\nport %d\nthreads 1\nshards 16\n"
                    "maxclients 77\nrequirepass \"s3cret\"\nbind 127.0.0.1\n" % port)
        # Only the file: no --port on the command line.
        srv = self.start_server(config_file=path, port=port, bare=True)
        c = self.connect(srv)
        self.assertEqual(c.cmd("AUTH", "s3cret"), b"+OK\r\n")
        self.assertEqual(c.call("CONFIG", "GET", "threads"), [b"threads", b"1"])
        self.assertEqual(c.call("CONFIG", "GET", "shards"), [b"shards", b"16"])
        self.assertEqual(c.call("CONFIG", "GET", "maxclients"), [b"maxclients", b"77"])
        self.assertEqual(c.call("CONFIG", "GET", "port"), [b"port", b"%d" % port])
        info = c.call("INFO", "server").decode()
        self.assertIn("worker_threads:1\r\n", info)
        self.assertIn("tcp_port:%d\r\n" % port, info)
        self.assertIn("config_file:%s\r\n" % os.path.realpath(path), info)

    def test_command_line_overrides_file(self):
        d = tempfile.mkdtemp(prefix="ringkv-conf-")
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        path = os.path.join(d, "ringkv.conf")
        with open(path, "w") as f:
            f.write("port 1\nthreads 1\nmaxclients 50\n")
        srv = self.start_server("--maxclients", "60", config_file=path, threads=None)
        c = self.connect(srv)
        self.assertEqual(c.call("CONFIG", "GET", "maxclients"), [b"maxclients", b"60"])
        self.assertEqual(c.call("CONFIG", "GET", "threads"), [b"threads", b"1"])


class Stopping(ServerTestCase):

    def stop_with(self, sig, name):
        srv = self.start_server(threads=2)
        with srv.conn(5) as c:
            self.assertEqual(c.cmd("SET", "k", "v"), b"+OK\r\n")
        t0 = time.monotonic()
        rc = srv.stop(sig)
        took = time.monotonic() - t0
        srv.check(self)
        self.assertEqual(rc, 0)
        self.assertLess(took, 3.0, "took %.1f s to stop" % took)
        log = srv.stdout().decode(errors="replace")
        self.assertIn("Received %s" % name, log)
        self.assertIn("bye", log)

    def test_sigterm(self):
        self.stop_with(signal.SIGTERM, "SIGTERM")

    def test_sigint(self):
        self.stop_with(signal.SIGINT, "SIGINT")

    def test_sigterm_with_clients_connected(self):
        srv = self.start_server(threads=2)
        conns = [self.connect(srv) for _ in range(10)]
        for c in conns:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
        rc = srv.stop(signal.SIGTERM)
        srv.check(self)
        self.assertEqual(rc, 0)
        for c in conns:
            self.assertEqual(c.read_until_closed(2), b"")

    def test_shutdown_command(self):
        srv = self.start_server(threads=2)
        other = self.connect(srv)
        c = self.connect(srv)
        c.send(b"*1\r\n$8\r\nSHUTDOWN\r\n")
        c.read_until_closed(5)
        rc = srv.wait_exit(2.0)
        self.assertIsNotNone(rc, "still running 2 s after SHUTDOWN")
        srv.stop()
        srv.check(self)
        self.assertEqual(rc, 0)
        self.assertIn("User requested shutdown", srv.stdout().decode(errors="replace"))
        self.assertEqual(other.read_until_closed(2), b"")

    def test_shutdown_syntax_error_keeps_running(self):
        srv = self.start_server(threads=1)
        c = self.connect(srv)
        self.assertEqual(c.cmd("SHUTDOWN", "BOGUS"), b"-ERR syntax error\r\n")
        self.assertEqual(c.cmd("PING"), b"+PONG\r\n")

    def test_logfile(self):
        d = tempfile.mkdtemp(prefix="ringkv-log-")
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        log = os.path.join(d, "server.log")
        srv = self.start_server("--logfile", log, threads=1)
        srv.stop()
        srv.check(self)
        with open(log) as f:
            text = f.read()
        self.assertIn("Ready to accept connections", text)
        self.assertIn("Received SIGTERM", text)
        self.assertNotIn("Ready to accept", srv.stdout().decode(errors="replace"))


class Defaults(ServerTestCase):

    def test_default_address_is_127_0_0_1_6379(self):
        if not port_is_free(6379):
            self.skipTest("port 6379 is in use on this machine")
        try:
            self.start_server(port=6379, bare=True)
        except RuntimeError as e:
            if "can't listen" in str(e):
                self.skipTest("port 6379 was taken while the test started")
            raise
        with Conn(6379, timeout=5) as c:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
            self.assertEqual(c.call("CONFIG", "GET", "bind"), [b"bind", b"127.0.0.1"])
            self.assertEqual(c.call("CONFIG", "GET", "port"), [b"port", b"6379"])
            ncpu = len(os.sched_getaffinity(0))
            self.assertIn("worker_threads:%d\r\n" % ncpu, c.call("INFO", "server").decode())


class CpuPlacement(ServerTestCase):
    """Workers are pinned among the CPUs the process was allowed (taskset, a cpuset), never
    outside them: a master and a same-host replica given disjoint CPU sets don't share one."""

    def start_on(self, cpus, **kw):
        # The server inherits this process's affinity mask, as it would taskset's.
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
        try:
            return self.start_server(**kw)
        finally:
            os.sched_setaffinity(0, saved)

    @staticmethod
    def task_cpus(pid):
        out = {}
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out[int(tid)] = line.split(":", 1)[1].strip()
        return out

    def test_workers_stay_inside_the_affinity_mask(self):
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            self.skipTest("needs 2 CPUs to leave one out; this process may use %d" % len(allowed))
        cpu = allowed[-1]
        # Default thread count: the CPUs allowed (1 here), not the CPUs online.
        srv = self.start_on({cpu}, threads=None)
        with Conn(srv.port) as c:
            self.assertIn("worker_threads:1\r\n", c.call("INFO", "server").decode())
            self.assertEqual(c.cmd("SET", "k", "v"), b"+OK\r\n")
        tasks = self.task_cpus(srv.pid)
        self.assertGreaterEqual(len(tasks), 2, tasks)
        for tid, lst in tasks.items():
            self.assertEqual(lst, str(cpu), "thread %d may run on %s" % (tid, lst))
        self.assertIn("workers pinned to CPUs %d (of 1 this process may use)" % cpu,
                      srv.stdout().decode())

    def test_more_workers_than_allowed_cpus_share_them(self):
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            self.skipTest("needs 2 CPUs to leave one out; this process may use %d" % len(allowed))
        cpu = allowed[0]
        srv = self.start_on({cpu}, threads=3)
        with Conn(srv.port) as c:
            self.assertIn("worker_threads:3\r\n", c.call("INFO", "server").decode())
            for i in range(20):
                self.assertEqual(c.cmd("SET", "k%d" % i, "v"), b"+OK\r\n")
            self.assertEqual(c.cmd("DBSIZE"), b":20\r\n")
        for tid, lst in self.task_cpus(srv.pid).items():
            self.assertEqual(lst, str(cpu), "thread %d may run on %s" % (tid, lst))
        self.assertIn("workers pinned to CPUs %d,%d,%d " % (cpu, cpu, cpu), srv.stdout().decode())

    def test_replication_thread_runs_below_the_workers(self):
        # Where the replication thread shares CPUs with the workers, requests come first.
        srv = self.start_server()
        nice = {}
        for tid in os.listdir("/proc/%d/task" % srv.pid):
            with open("/proc/%d/task/%s/stat" % (srv.pid, tid)) as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            nice[comm] = nice.get(comm, []) + [int(stat[stat.rindex(")") + 2:].split()[16])]
        self.assertEqual(nice.get("ringkv-repl"), [10], nice)
        others = [n for comm, ns in nice.items() if comm != "ringkv-repl" for n in ns]
        self.assertTrue(others and all(n == 0 for n in others), nice)
