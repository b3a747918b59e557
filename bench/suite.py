#!/usr/bin/python3
"""
suite: the benchmark matrix behind `make bench` (bench/suite.sh runs it).

What it measures.  Every row is one ringkv-bench load (50 connections, one client thread
unless BENCH_CLIENT_THREADS says more, keys key:000000000000 .. key:000000999999 preloaded,
32-byte values) for a fixed duration against the master of one configuration:

    ringkv           ringkv-server alone
    ringkv+shm       ringkv master + one same-host replica reading the log in shared memory,
                     sync-mode async, semi and sync (CONFIG SET sync-mode on the master)
    ringkv+tcp       ringkv master + one replica over TCP, the same three modes
    redis            redis-server alone
    redis+replica    redis-server master + one replica: async (plain SET), and WAIT (each SET
                     followed by WAIT 1 0 on the same connection)

and the workloads SET, GET and a 10:90 SET:GET mix, each at pipeline 1 and 16.

How it runs.  All servers of the matrix are started at once, each on 127.0.0.1 and a port the
kernel picked as free, and each keyspace is preloaded once.  Then the rows run in rounds: one
round runs one workload and pipeline against every configuration back to back (the order
reversed on every other round), so a ringkv row and the Redis row it is compared with ran
within seconds of each other; that is what keeps the ratios meaningful on a shared, noisy
machine.  With BENCH_REPEAT=N every row runs N times in N different rounds and the table
shows the median run.

Not built.  A replica counts as working only once its INFO replication says
master_link_status:up and master_sync_in_progress:0 (ringkv and Redis print the same fields)
within 15 s.  A replica that exits, refuses its options, or never gets there marks its whole
configuration "not built"; a sync mode the master refuses in CONFIG SET marks that mode's
rows "not built".  Those rows never carry a number.

Replication lag.  In the replica rows a probe runs beside the load: it SETs a unique key on
the master (SET then WAIT 1 0 in the WAIT rows), takes the time of the reply, then GETs the
key from the replica in a tight loop (at most 1 s) until the value is there.  The lag is the
time from the master's reply to the reply of the first GET that sees the value, so it
includes at most one GET round trip to the replica (recorded as poll_rtt).  Probes are spread
evenly over the middle 80% of each run, one at a time.

Offset lag and catch-up.  In the SET and mix runs with a replica, a second watcher (OffsetWatch)
reads the master's master_repl_offset every 20 ms and polls the replica's slave_repl_offset
(applied) every millisecond until it gets there: that time is one offset-lag sample, the
distance at the first poll its backlog.  When the load process has exited it reads the
master's offset once more and times how long the replica takes to reach it.  The section
"Replication cost: SET at pipeline 16" under the table puts each replica configuration
against the same server alone and against its own async mode (paired by round), with those
figures; a replica "keeps up" when no offset-lag sample reached 1 s and it reached the final
offset within 1 s of the end in every run.

Output: bench/results/<stamp>.{md,json,png} and bench/results/latest.md, stamp =
<date>-<time>[-quick] or BENCH_STAMP.  bench/suite.sh then runs bench/fullsync.py, which
appends its section (a TCP replica's full sync) to the same files.

Environment:
  BENCH_QUICK=1        short runs (the same matrix in about a minute)
  BENCH_DURATION=S     seconds per run (2.5, quick 0.5)
  BENCH_REPEAT=N       runs per row, median shown (3, quick 1)
  BENCH_PROBES=N       lag probes per replica row, over all its runs (200, quick 60)
  BENCH_CONFIGS=a,b    only these configurations (ringkv, ringkv+shm, ringkv+tcp, redis,
                       redis+replica); the others print "skipped"
  BENCH_WORKLOADS=a,b  only these workloads (set, get, mix), BENCH_PIPELINES=1,16 only these
  BENCH_THREADS=N      ringkv master worker threads (2); BENCH_REPLICA_THREADS (1) for its
                       replica; BENCH_CLIENT_THREADS (1) for ringkv-bench
  BENCH_MASTER_CPUS, BENCH_REPLICA_CPUS, BENCH_CLIENT_CPUS=LIST
                       CPUs (taskset's list form: 0-3,8) for the masters (ringkv and Redis),
                       the replicas, and the client side (ringkv-bench and this script);
                       unset: no placement, the kernel's choice
  BENCH_RESULTS=DIR    where results go (bench/results)
  BENCH_STAMP=S        the results' file name (suite.sh sets it for suite.py and fullsync.py)
  RINGKV_SERVER, RINGKV_BENCH, REDIS_SERVER: the binaries (build/rel/..., redis-server)
"""

import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLIENTS = 50
KEYSPACE = 1_000_000
VALUE_SIZE = 32
WORKLOADS = [("set", "SET"), ("get", "GET"), ("mix", "mix 10:90")]
PIPELINES = [1, 16]
if os.environ.get("BENCH_WORKLOADS"):
    _only = os.environ["BENCH_WORKLOADS"].split(",")
    WORKLOADS = [w for w in WORKLOADS if w[0] in _only]
if os.environ.get("BENCH_PIPELINES"):
    PIPELINES = [p for p in PIPELINES if str(p) in os.environ["BENCH_PIPELINES"].split(",")]

LINK_TIMEOUT = 15.0      # a replica must be up and synced within this: else "not built"
ROLE_GRACE = 5.0         # a --replicaof server still saying role:master after this ignored it
START_TIMEOUT = 10.0     # a server must answer PING within this
STOP_TIMEOUT = 3.0       # SIGTERM, then SIGKILL after this
LAG_TIMEOUT_NS = 1_000_000_000   # a probe polls the replica for at most this long
CATCHUP_TIMEOUT = 60.0   # after preload, the replica must hold every key within this
BARRIER_TIMEOUT = 10.0   # after a write row, the replica must see a marker key within this
CATCHUP_WAIT = 10.0      # after a write run, the replica's offset is watched this long at most
OFFSET_GAP_S = 0.02      # during a write run, one replica offset-lag sample this often
OFFSET_LAG_CAP_S = 1.0   # an offset-lag sample gives up after this
KEEPUP_MS = 1000.0       # a replica "keeps up" when it reaches the master's offset within this

# Configurations, in table order: key, replica transport (None: no replica), modes.
CONFIGS = [
    ("ringkv", "ringkv", None, ["-"]),
    ("ringkv+shm", "ringkv", "shm", ["async", "semi", "sync"]),
    ("ringkv+tcp", "ringkv", "tcp", ["async", "semi", "sync"]),
    ("redis", "redis", None, ["-"]),
    ("redis+replica", "redis", "redis", ["async", "wait"]),
]
MODE_LABEL = {"-": "–", "async": "async", "semi": "semi", "sync": "sync", "wait": "WAIT 1 0"}


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v else default


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v else default


def cpu_list(name):
    """A CPU set from an environment variable in taskset's list form ("0-3,8"); None if unset."""
    v = os.environ.get(name, "").strip()
    if not v:
        return None
    cpus = set()
    for part in v.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def placement(cpus, idle=False):
    """A preexec_fn that confines a child to cpus (None: any) and, with idle, puts it in the
    SCHED_IDLE class (it runs only on a CPU that nothing else wants); None when neither."""
    if cpus is None and not idle:
        return None

    def place():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return place


MASTER_CPUS = cpu_list("BENCH_MASTER_CPUS")
REPLICA_CPUS = cpu_list("BENCH_REPLICA_CPUS")
CLIENT_CPUS = cpu_list("BENCH_CLIENT_CPUS")
MASTER_THREADS = env_int("BENCH_THREADS", 2)
REPLICA_THREADS = env_int("BENCH_REPLICA_THREADS", 1)
CLIENT_THREADS = env_int("BENCH_CLIENT_THREADS", 1)


def placement_settings():
    """The CPU placement from the environment, for a results file (None where unset)."""
    return {k: (os.environ.get(v) or None) for k, v in
            (("master", "BENCH_MASTER_CPUS"), ("replica", "BENCH_REPLICA_CPUS"),
             ("client", "BENCH_CLIENT_CPUS"))}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine_brief():
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": os.uname().release}


def notes_and_commands(out, notes, legend, commands, width):
    """Append a "Notes:" list (if any) and a fenced block of the command lines to out."""
    if notes:
        out.append("Notes:\n")
        out += ["- " + n for n in notes]
        out.append("")
    out.append("Commands (%s):\n" % legend)
    out.append("```")
    for k, v in commands.items():
        out.append("%-*s %s" % (width, k + ":", v))
    out.append("```\n")


def write_section(results, stamp, kind, md, data, tag):
    """Write <stamp>-<kind>.{json,md} under results and append md to <stamp>.md (the suite's
    results of the same stamp) and latest.md when the suite's file exists; print md."""
    os.makedirs(results, exist_ok=True)
    base = os.path.join(results, stamp)
    with open("%s-%s.json" % (base, kind), "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    with open("%s-%s.md" % (base, kind), "w") as f:
        f.write(md)
    appended = []
    if os.path.exists(base + ".md"):
        for path in (base + ".md", os.path.join(results, "latest.md")):
            with open(path, "a") as f:
                f.write("\n" + md)
            appended.append(os.path.relpath(path, REPO))
    print()
    print(md)
    log("%s: wrote %s-%s.{md,json}%s" % (tag, os.path.relpath(base, REPO), kind,
                                         " and appended to " + ", ".join(appended)
                                         if appended else ""))


def run_main(obj):
    """The main of a bench script: placement, signals, obj.run(), and every server stopped
    and obj.workdir removed however it ends."""
    if CLIENT_CPUS is not None:
        os.sched_setaffinity(0, CLIENT_CPUS)   # ringkv-bench and the probes inherit it
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        obj.run()
    finally:
        stop_all()
        shutil.rmtree(obj.workdir, ignore_errors=True)


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_vals:
        return None
    i = max(0, math.ceil(q * len(sorted_vals)) - 1)
    return sorted_vals[i]


# ---- a small RESP2 client ------------------------------------------------------------------


class RespError(Exception):
    pass


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One blocking connection with a timeout on every read; replies parsed one at a time.
    Error replies come back as RespError instances (cmd() raises them)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            v = bytes(self.buf[:n])
            del self.buf[:n + 2]
            return v
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnectionError("bad reply line %r" % line[:40])

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, *args):
        self.send(encode(*args))
        r = self.read()
        if isinstance(r, RespError):
            raise r
        return r


def info_fields(conn, section):
    text = conn.cmd("INFO", section)
    fields = {}
    for line in text.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


# ---- servers --------------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLK_TCK = os.sysconf("SC_CLK_TCK")


class Server:
    """A server process on 127.0.0.1; stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name, argv_fn, workdir, cpus=None, idle=False):
        self.name = name
        self.argv_fn = argv_fn  # port -> argv
        self.cpus = cpus        # the CPUs it may run on (None: any)
        self.idle = idle        # SCHED_IDLE (see placement)
        self.workdir = workdir
        self.proc = None
        self.port = None
        self.argv = None
        self.logpath = os.path.join(workdir, name.replace("+", "_") + ".log")
        self.killed = False

    def start(self):
        """Start and wait for PING.  Returns None when it answers, else why it did not."""
        for _ in range(3):
            self.port = free_port()
            self.argv = self.argv_fn(self.port)
            with open(self.logpath, "ab") as logf:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=subprocess.STDOUT, cwd=self.workdir,
                                             start_new_session=True,
                                             preexec_fn=placement(self.cpus, self.idle))
            LIVE.append(self)
            why = self._wait_ping()
            if why is None:
                return None
            self.stop()
            if "in use" not in self.log_tail():   # another process took the port: retry
                return why
        return why

    def _wait_ping(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited at start (status %d): %s" % (self.proc.returncode,
                                                            self.log_tail() or "no output")
            try:
                c = Conn(self.port, timeout=1.0)
                try:
                    if c.cmd("PING") == "PONG":
                        return None
                finally:
                    c.close()
            except (OSError, RespError, ValueError):
                pass
            time.sleep(0.05)
        return "did not answer PING within %.0f s" % START_TIMEOUT

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=2):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-n:])

    def cpu_s(self):
        """User + system seconds of the whole process so far (None once it is gone)."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        if self in LIVE:
            LIVE.remove(self)


LIVE = []   # every server started and not yet stopped


def stop_all():
    for s in list(LIVE):
        s.stop()


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


# ---- one configuration ----------------------------------------------------------------------


class Config:
    def __init__(self, key, family, transport, modes, suite):
        self.key = key
        self.family = family        # "ringkv" or "redis"
        self.transport = transport  # None, "shm", "tcp" or "redis"
        self.modes = modes
        self.suite = suite
        self.status = "ok"          # "ok", "not built", "failed", "skipped"
        self.reason = ""
        self.mode_status = {m: ("ok", "") for m in modes}
        self.master = None
        self.replica = None
        self.link_transport = None  # the replica's INFO master_link_transport, once up

    def servers(self):
        return [s for s in (self.master, self.replica) if s is not None]

    def master_argv(self, port):
        s = self.suite
        if self.family == "redis":
            return [s.redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no"]
        argv = [s.server, "--threads", str(MASTER_THREADS), "--port", str(port), "--bind",
                "127.0.0.1"]
        if self.transport is None:
            argv += ["--unixsocket", ""]   # no replica: no Unix socket
        return argv

    def replica_argv(self, port):
        s = self.suite
        mport = str(self.master.port)
        if self.family == "redis":
            return [s.redis, "--port", str(port), "--bind", "127.0.0.1", "--replicaof",
                    "127.0.0.1", mport, "--save", "", "--appendonly", "no"]
        # One worker thread, like Redis's replica: on a small host the replica shares the
        # cores with its master and the client (docs/BENCHMARKS.md, "What each row runs").
        return [s.server, "--threads", str(REPLICA_THREADS), "--port", str(port), "--bind",
                "127.0.0.1", "--replicaof", "127.0.0.1", mport, "--repl-transport",
                self.transport]

    def start(self):
        wd = self.suite.workdir
        self.master = Server(self.key + "-master", self.master_argv, wd, MASTER_CPUS)
        why = self.master.start()
        if why:
            self.fail("failed", "master " + why)
            return
        if self.transport is None:
            return
        self.replica = Server(self.key + "-replica", self.replica_argv, wd, REPLICA_CPUS)
        why = self.replica.start()
        if why:
            self.fail("not built", "replica " + why)

    def fail(self, status, reason):
        self.status = status
        self.reason = reason
        for s in self.servers():
            s.stop()

    def wait_link(self):
        """Wait until the replica reports its link up and no sync in progress."""
        if self.status != "ok" or self.replica is None:
            return
        t0 = time.monotonic()
        last = {}
        while time.monotonic() - t0 < LINK_TIMEOUT:
            if not self.replica.alive():
                self.fail("not built", "replica exited (status %s): %s"
                          % (self.replica.proc.returncode, self.replica.log_tail()))
                return
            try:
                c = Conn(self.replica.port, timeout=1.0)
                try:
                    last = info_fields(c, "replication")
                finally:
                    c.close()
            except (OSError, RespError, ValueError):
                last = {}
            if last.get("master_link_status") == "up" and \
                    last.get("master_sync_in_progress") == "0":
                # The transport asked for is the one in use (ringkv's INFO names it).
                got = last.get("master_link_transport")
                self.link_transport = got
                if self.family == "ringkv" and got is not None and got != self.transport:
                    self.fail("not built", "asked for --repl-transport %s, the replica reports "
                              "master_link_transport:%s" % (self.transport, got))
                return
            if last.get("role") == "master" and time.monotonic() - t0 > ROLE_GRACE:
                self.fail("not built", "the --replicaof server reports role:master")
                return
            time.sleep(0.1)
        self.fail("not built", "replica not up within %.0f s (role:%s master_link_status:%s "
                  "master_sync_in_progress:%s)" % (LINK_TIMEOUT, last.get("role", "?"),
                                                   last.get("master_link_status", "?"),
                                                   last.get("master_sync_in_progress", "?")))

    def check_modes(self):
        """A sync mode the master refuses is not built."""
        if self.status != "ok" or self.family != "ringkv" or self.transport is None:
            return
        c = Conn(self.master.port)
        try:
            for m in self.modes:
                try:
                    c.cmd("CONFIG", "SET", "sync-mode", m)
                except RespError as e:
                    self.mode_status[m] = ("not built", "CONFIG SET sync-mode %s: %s" % (m, e))
            try:
                c.cmd("CONFIG", "SET", "sync-mode", "async")
            except RespError:
                pass
        finally:
            c.close()

    def preload(self):
        """SET every key of the keyspace once on the master, pipelined."""
        if self.status != "ok":
            return
        t0 = time.monotonic()
        size = preload_keys(self.master.port)
        log("%s: preloaded %d keys in %.1f s" % (self.key, size, time.monotonic() - t0))
        if self.replica is None:
            return
        t0 = time.monotonic()
        rsize = -1
        while time.monotonic() - t0 < CATCHUP_TIMEOUT:
            try:
                rc = Conn(self.replica.port)
                try:
                    rsize = rc.cmd("DBSIZE")
                finally:
                    rc.close()
            except (OSError, RespError):
                pass
            if rsize == size:
                log("%s: replica caught up in %.1f s" % (self.key, time.monotonic() - t0))
                return
            if not self.replica.alive():
                break
            time.sleep(0.2)
        self.fail("failed", "replica held %d of %d keys %.0f s after the preload"
                  % (rsize, size, CATCHUP_TIMEOUT))

    def set_mode(self, mode):
        if self.family != "ringkv" or self.transport is None:
            return
        c = Conn(self.master.port)
        try:
            c.cmd("CONFIG", "SET", "sync-mode", mode)
        finally:
            c.close()

    def sync_timeouts(self):
        """The ringkv master's INFO sync_timeouts: writes answered at sync-timeout by the
        fallback instead of by their acks (None where there is no such field)."""
        if self.family != "ringkv" or self.replica is None:
            return None
        try:
            c = Conn(self.master.port)
            try:
                v = info_fields(c, "replication").get("sync_timeouts")
            finally:
                c.close()
            return int(v) if v is not None else None
        except (OSError, RespError, ValueError):
            return None

    def barrier(self):
        """Wait until the replica has applied everything the master acknowledged so far."""
        if self.replica is None:
            return True
        key = b"bench:barrier"
        val = b"%d" % time.monotonic_ns()
        m = Conn(self.master.port)
        r = Conn(self.replica.port)
        try:
            m.cmd("SET", key, val)
            deadline = time.monotonic() + BARRIER_TIMEOUT
            while time.monotonic() < deadline:
                if r.cmd("GET", key) == val:
                    return True
                time.sleep(0.002)
            return False
        finally:
            m.close()
            r.close()


_PRELOAD = []


def preload_keys(port, limit=None):
    """Send the preload (or its first chunks, up to at least `limit` keys) to the server on
    port, pipelined, checking every reply; returns its DBSIZE after."""
    c = Conn(port, timeout=30.0)
    sent = 0
    try:
        for n, data in preload_chunks():
            if limit is not None and sent >= limit:
                break
            c.send(data)
            want = b"+OK\r\n" * n
            while len(c.buf) < len(want):
                c._fill()
            if bytes(c.buf[:len(want)]) != want:
                raise RuntimeError("preload: unexpected reply %r" % bytes(c.buf[:60]))
            del c.buf[:len(want)]
            sent += n
        return c.cmd("DBSIZE")
    finally:
        c.close()


def preload_chunks():
    """The preload as (commands, bytes) chunks of 10,000 pipelined SETs, made once: SET
    key:000000000000 .. key:000000999999 (ringkv-bench's key shape) to VALUE_SIZE bytes."""
    if not _PRELOAD:
        chunk = 10000
        fmt = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$" + b"%d\r\n" % VALUE_SIZE + \
            b"v" * VALUE_SIZE + b"\r\n"
        for base in range(0, KEYSPACE, chunk):
            n = min(chunk, KEYSPACE - base)
            _PRELOAD.append((n, b"".join([fmt % k for k in range(base, base + n)])))
    return _PRELOAD


# ---- catch-up after a write run ------------------------------------------------------------


class OffsetWatch(threading.Thread):
    """Beside one write run, on two connections of its own: how far the replica's applied
    offset (INFO slave_repl_offset) trails the master's (master_repl_offset).

    During the load, every OFFSET_GAP_S: read the master's offset M, then poll the replica's
    every millisecond until it reaches M; the time that takes is one "offset lag" sample (at
    most OFFSET_LAG_CAP_S, counted as a timeout), and the replica's distance from M at the
    first poll is its backlog in bytes.  After the load ends (catch_up(), on a second pair of
    connections, so that a sample in progress does not delay it): the master's offset once
    more, and the time from the end of the load until the replica reaches it."""

    def __init__(self, master_port, replica_port):
        super().__init__(daemon=True)
        self.conns = []
        try:
            self.m, self.r, self.m2, self.r2 = [self._conn(p) for p in (
                master_port, replica_port, master_port, replica_port)]
            self.off0 = self._offset(self.m2, "master_repl_offset")
        except (OSError, RespError, ValueError, ConnectionError):
            self.close()
            raise
        self.stop_flag = threading.Event()
        self.samples = []   # (lag s or None on timeout, backlog bytes)
        self.error = None

    def _conn(self, port):
        c = Conn(port)
        self.conns.append(c)
        return c

    @staticmethod
    def _offset(conn, field):
        v = info_fields(conn, "replication").get(field)
        if v is None:
            raise ValueError("INFO replication has no %s" % field)
        return int(v)

    def _reach(self, replica, target, t0, cap):
        """Poll the replica until its offset reaches target; (seconds since t0 or None,
        backlog at the first poll)."""
        first = None
        while True:
            got = self._offset(replica, "slave_repl_offset")
            now = time.monotonic()
            if first is None:
                first = max(0, target - got)
            if got >= target:
                return now - t0, first
            if now - t0 > cap:
                return None, first
            time.sleep(0.001)

    def run(self):
        try:
            while not self.stop_flag.wait(OFFSET_GAP_S):
                target = self._offset(self.m, "master_repl_offset")
                t0 = time.monotonic()
                self.samples.append(self._reach(self.r, target, t0, OFFSET_LAG_CAP_S))
        except (OSError, RespError, ValueError, ConnectionError) as e:
            self.error = str(e)

    def close(self):
        for c in self.conns:
            c.close()

    def catch_up(self, t_stop, seconds):
        """After the load: t_stop, when the load process ended; seconds, its duration."""
        self.stop_flag.set()
        target = self._offset(self.m2, "master_repl_offset")
        took, behind = self._reach(self.r2, target, t_stop, CATCHUP_WAIT)
        self.join(OFFSET_LAG_CAP_S + 5)
        if self.error:
            raise ValueError(self.error)
        out = {"repl_bytes": target - self.off0}
        rate = out["repl_bytes"] / seconds if seconds else 0
        out["behind_bytes"] = behind
        out["behind_ms"] = round(1000.0 * behind / rate, 3) if rate > 0 else None
        out["catchup_ms"] = round(1000.0 * took, 3) if took is not None else None
        lags = sorted(v * 1000.0 for v, _ in self.samples if v is not None)
        out["offset_lag"] = {
            "samples": len(self.samples),
            "timeouts": sum(1 for v, _ in self.samples if v is None),
            "p50_ms": round(percentile(lags, 0.5), 3) if lags else None,
            "max_ms": round(lags[-1], 3) if lags else None,
            "backlog_max_bytes": max((b for _, b in self.samples), default=None),
        }
        return out


# ---- the lag probe --------------------------------------------------------------------------


class LagProbe(threading.Thread):
    """Beside one run: n probes, one at a time, spread evenly over [start, start + span)."""

    def __init__(self, master_port, replica_port, n, start_s, span_s, wait, tag):
        super().__init__(daemon=True)
        self.m = Conn(master_port)
        self.r = Conn(replica_port)
        self.n = n
        self.start_s = start_s
        self.span_s = span_s
        self.wait = wait
        self.tag = tag
        self.stop_flag = threading.Event()
        self.samples = []       # (lag ns or None on timeout, GET polls, last poll rtt ns)
        self.error = None

    def run(self):
        try:
            self._run()
        except (OSError, RespError, ConnectionError, ValueError) as e:
            self.error = str(e)
        finally:
            self.m.close()
            self.r.close()

    def _run(self):
        t_begin = time.monotonic()
        gap = self.span_s / max(1, self.n)
        for i in range(self.n):
            due = t_begin + self.start_s + i * gap
            while not self.stop_flag.is_set():
                left = due - time.monotonic()
                if left <= 0:
                    break
                self.stop_flag.wait(min(left, 0.05))
            if self.stop_flag.is_set():
                return
            key = b"lag:%s:%d" % (self.tag, i)
            val = b"%s:%d:%d" % (self.tag, i, time.monotonic_ns())
            req = encode(b"SET", key, val)
            if self.wait:
                req += encode(b"WAIT", b"1", b"0")
            get = encode(b"GET", key)
            self.m.send(req)
            for _ in range(2 if self.wait else 1):
                rep = self.m.read()
                if isinstance(rep, RespError):
                    raise rep
            t0 = time.perf_counter_ns()
            polls = 0
            lag = None
            rtt = 0
            while True:
                ts = time.perf_counter_ns()
                self.r.send(get)
                got = self.r.read()
                t1 = time.perf_counter_ns()
                polls += 1
                rtt = t1 - ts
                if got == val:
                    lag = t1 - t0
                    break
                if t1 - t0 > LAG_TIMEOUT_NS:
                    break
            self.samples.append((lag, polls, rtt))


def lag_summary(samples):
    if not samples:
        return None
    seen = sorted(s[0] for s in samples if s[0] is not None)
    timeouts = sum(1 for s in samples if s[0] is None)
    # A timed-out probe counts as longer than any seen lag.
    ranked = seen + [math.inf] * timeouts

    def us(v):
        return None if v is None else (v / 1000.0 if v != math.inf else math.inf)

    rtts = sorted(s[2] for s in samples)
    return {
        "probes": len(samples),
        "timeouts": timeouts,
        "p50_us": us(percentile(ranked, 0.50)),
        "p99_us": us(percentile(ranked, 0.99)),
        "max_us": us(ranked[-1]),
        "first_get_misses": sum(1 for s in samples if s[0] is None or s[1] > 1),
        "poll_rtt_p50_us": us(percentile(rtts, 0.50)),
    }


# ---- the suite ------------------------------------------------------------------------------


class Suite:
    def __init__(self):
        self.quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        self.duration = env_float("BENCH_DURATION", 0.5 if self.quick else 2.5)
        self.repeat = env_int("BENCH_REPEAT", 1 if self.quick else 3)
        self.probes = env_int("BENCH_PROBES", 60 if self.quick else 200)
        self.results = os.path.abspath(os.environ.get("BENCH_RESULTS",
                                                      os.path.join(REPO, "bench/results")))
        self.server = os.path.abspath(os.environ.get("RINGKV_SERVER",
                                                     os.path.join(REPO, "build/rel/ringkv-server")))
        self.bench = os.path.abspath(os.environ.get("RINGKV_BENCH",
                                                    os.path.join(REPO, "build/rel/ringkv-bench")))
        self.redis = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or \
            "redis-server"
        only = os.environ.get("BENCH_CONFIGS", "")
        self.only = set(x.strip() for x in only.split(",") if x.strip())
        self.workdir = tempfile.mkdtemp(prefix="ringkv-bench-suite-")
        self.configs = [Config(k, f, t, list(m), self) for k, f, t, m in CONFIGS]
        self.rows = {}   # (config, mode, workload, pipeline) -> row dict
        self.notes = []
        self.stamp = os.environ.get("BENCH_STAMP") or \
            (time.strftime("%Y-%m-%d-%H%M") + ("-quick" if self.quick else ""))

    # -- machine --

    def machine(self):
        cpu = cpu_model()

        def run(argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                      cwd=REPO).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return ""

        commit = run(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
        if run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]):
            commit += " (with uncommitted changes)"
        mem_gib = None
        try:
            with open("/proc/meminfo") as f:
                mem_gib = round(int(f.readline().split()[1]) / 1048576, 1)
        except (OSError, ValueError, IndexError):
            pass
        return {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "memory_gib": mem_gib,
            "kernel": platform.release(),
            "ringkv_commit": commit,
            "ringkv_version": run([self.server, "--version"]),
            "redis_version": run([self.redis, "--version"]),
        }

    # -- rows --

    def row_key(self, cfg, mode, wl, p):
        return (cfg.key, mode, wl, p)

    def new_row(self, cfg, mode, wl, p):
        row = {"config": cfg.key, "mode": mode, "workload": wl, "pipeline": p,
               "status": "ok", "reason": "", "runs": [], "lag_samples": []}
        self.rows[self.row_key(cfg, mode, wl, p)] = row
        return row

    def bench_argv(self, port, wl, p, wait, json_path):
        argv = [self.bench, "--port", str(port), "--threads", str(CLIENT_THREADS),
                "--clients", str(CLIENTS),
                "--pipeline", str(p), "--duration", "%g" % self.duration,
                "--keyspace", str(KEYSPACE), "--value-size", str(VALUE_SIZE),
                "--command", wl]
        if wait:
            argv += ["--wait", "1"]
        return argv + ["--quiet", "--json", json_path]

    def run_once(self, cfg, mode, wl, p, rep):
        row = self.rows[self.row_key(cfg, mode, wl, p)]
        wait = mode == "wait"
        if mode not in ("-", "wait"):
            cfg.set_mode(mode)
        json_path = os.path.join(self.workdir, "run.json")
        if os.path.exists(json_path):
            os.unlink(json_path)
        argv = self.bench_argv(cfg.master.port, wl, p, wait, json_path)
        probe = None
        if cfg.replica is not None and self.probes > 0:
            n = math.ceil(self.probes / self.repeat)
            tag = b"%s-%s-%s-%d-%d" % (cfg.key.encode(), mode.encode(), wl.encode(), p, rep)
            probe = LagProbe(cfg.master.port, cfg.replica.port, n, 0.1 * self.duration,
                             0.8 * self.duration, wait, tag)
        watch = None
        if cfg.replica is not None and wl != "get":
            try:
                watch = OffsetWatch(cfg.master.port, cfg.replica.port)
                watch.start()
            except (OSError, RespError, ValueError, ConnectionError) as e:
                row.setdefault("catchup_errors", []).append("before the run: %s" % e)
        st0 = cfg.sync_timeouts()
        cpu0 = {s.name: s.cpu_s() for s in cfg.servers()}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if probe:
            probe.start()
        try:
            out, err = proc.communicate(timeout=self.duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        t_stop = time.monotonic()
        if probe:
            probe.stop_flag.set()
        catch = None
        if watch is not None:
            try:
                catch = watch.catch_up(t_stop, self.duration)
            except (OSError, RespError, ValueError, ConnectionError) as e:
                row.setdefault("catchup_errors", []).append("after the run: %s" % e)
            finally:
                watch.close()
        if probe:
            probe.join(LAG_TIMEOUT_NS / 1e9 + 10)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = {s.name: s.cpu_s() for s in cfg.servers()}
        st1 = cfg.sync_timeouts()
        run = {"rep": rep, "exit": proc.returncode, "stderr": err.strip()[-300:],
               "client_cpu_s": round((ru1.ru_utime + ru1.ru_stime)
                                     - (ru0.ru_utime + ru0.ru_stime), 3),
               "server_cpu_s": {k: (round(cpu1[k] - cpu0[k], 3)
                                    if cpu0[k] is not None and cpu1[k] is not None else None)
                                for k in cpu0}}
        if st0 is not None and st1 is not None:
            run["sync_timeouts"] = st1 - st0
        if catch is not None:
            run.update(catch)
        try:
            with open(json_path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = None
        if res is not None:
            lat = res["all"]["latency_us"]
            if wait and wl == "set" and "WAIT" in res["commands"]:
                lat = res["commands"]["WAIT"]["latency_us"]
            errors = sum(c.get("errors", 0) for c in res["commands"].values())
            run.update({"ok": bool(res.get("ok")) and proc.returncode == 0,
                        "rps": res["rps"], "requests": res["requests"],
                        "seconds": res["duration_s"], "p50": lat["p50"], "p99": lat["p99"],
                        "p999": lat["p99.9"], "errors": errors,
                        "wait_below_n": res["commands"].get("WAIT", {}).get("below_n", 0)})
        else:
            run["ok"] = False
        row["runs"].append(run)
        if probe:
            row["lag_samples"].extend(probe.samples)
            if probe.error:
                row.setdefault("probe_errors", []).append(probe.error)
        if wl != "get" and cfg.replica is not None and cfg.status == "ok":
            if not cfg.barrier():
                self.notes.append("%s %s: the replica had not caught up %.0f s after a %s run"
                                  % (cfg.key, mode, BARRIER_TIMEOUT, wl))
        for s in cfg.servers():
            if not s.alive():
                cfg.fail("failed", "%s exited during a run (status %s): %s"
                         % (s.name, s.proc.returncode, s.log_tail()))
        return run

    def summarise(self, row):
        ok = [r for r in row["runs"] if r.get("ok")]
        if row["status"] != "ok":
            return
        if not ok:
            row["status"] = "failed"
            first = row["runs"][0] if row["runs"] else {}
            row["reason"] = "ringkv-bench exit %s: %s" % (first.get("exit"),
                                                         first.get("stderr", "")[:160])
            return
        row["ops"] = statistics.median(r["rps"] for r in ok)
        # The median run by throughput supplies the latencies, so a row's numbers
        # all come from one run.
        mid = sorted(ok, key=lambda r: r["rps"])[(len(ok) - 1) // 2]
        row["p50"], row["p99"], row["p999"] = mid["p50"], mid["p99"], mid["p999"]
        row["errors"] = sum(r.get("errors", 0) for r in ok)
        if len(ok) > 1 and min(r["rps"] for r in ok) > 0:
            row["ops_spread"] = max(r["rps"] for r in ok) / min(r["rps"] for r in ok)
        if any("sync_timeouts" in r for r in ok):
            row["sync_timeouts"] = sum(r.get("sync_timeouts", 0) for r in ok)
        if len(ok) < len(row["runs"]):
            row["reason"] = "%d of %d runs failed" % (len(row["runs"]) - len(ok),
                                                      len(row["runs"]))
        if row["lag_samples"]:
            row["lag"] = lag_summary(row["lag_samples"])
        watched = [r for r in ok if "catchup_ms" in r]
        if watched:
            done = sorted(r["catchup_ms"] for r in watched if r["catchup_ms"] is not None)
            row["catchup"] = {
                "runs": len(watched),
                "within_keepup": sum(1 for v in done if v <= KEEPUP_MS),
                "never": len(watched) - len(done),
                "median_ms": statistics.median(done) if done else None,
                "max_ms": (done[-1] if len(done) == len(watched) else math.inf) if done
                else math.inf,
                "behind_bytes_median": statistics.median(r["behind_bytes"] for r in watched),
                "behind_ms_median": statistics.median(
                    r["behind_ms"] for r in watched if r.get("behind_ms") is not None)
                if any(r.get("behind_ms") is not None for r in watched) else None,
            }
            ol = [r["offset_lag"] for r in watched if r.get("offset_lag")]
            p50s = [o["p50_ms"] for o in ol if o["p50_ms"] is not None]
            maxs = [o["max_ms"] for o in ol if o["max_ms"] is not None]
            row["catchup"]["offset_lag"] = {
                "samples": sum(o["samples"] for o in ol),
                "timeouts": sum(o["timeouts"] for o in ol),
                "p50_ms_median": statistics.median(p50s) if p50s else None,
                "max_ms": max(maxs) if maxs else None,
                "backlog_max_bytes": max((o["backlog_max_bytes"] for o in ol
                                          if o["backlog_max_bytes"] is not None), default=None),
            }
            c = row["catchup"]
            c["kept_up"] = (c["within_keepup"] == c["runs"] and
                            c["offset_lag"]["timeouts"] == 0 and c["offset_lag"]["samples"] > 0)

    def match(self, row):
        """The Redis row a ringkv row is compared with."""
        if row["config"] == "ringkv":
            return ("redis", "-", row["workload"], row["pipeline"])
        if row["config"] in ("ringkv+shm", "ringkv+tcp"):
            m = "async" if row["mode"] == "async" else "wait"
            return ("redis+replica", m, row["workload"], row["pipeline"])
        return None

    # -- the run --

    def plan(self):
        """Rounds: (workload, pipeline) x repeat; each round runs every configuration."""
        order = []
        for cfg in self.configs:
            for m in cfg.modes:
                order.append((cfg, m))
        # Each ringkv row beside its Redis row: alone, then async, then semi/sync vs WAIT.
        by = {(c.key, m): (c, m) for c, m in order}
        seq = [by[k] for k in [("ringkv", "-"), ("redis", "-"),
                               ("ringkv+shm", "async"), ("ringkv+tcp", "async"),
                               ("redis+replica", "async"),
                               ("ringkv+shm", "semi"), ("ringkv+tcp", "semi"),
                               ("redis+replica", "wait"),
                               ("ringkv+shm", "sync"), ("ringkv+tcp", "sync")]]
        rounds = []
        i = 0
        for rep in range(self.repeat):
            for wl, _ in WORKLOADS:
                for p in PIPELINES:
                    rounds.append((rep, wl, p, seq if i % 2 == 0 else list(reversed(seq))))
                    i += 1
        return rounds

    def runnable(self, cfg, mode):
        return cfg.status == "ok" and cfg.mode_status[mode][0] == "ok"

    def run(self):
        self.t_start = time.monotonic()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.load_start = os.getloadavg()
        self.mach = self.machine()
        for path, what in ((self.server, "ringkv-server"), (self.bench, "ringkv-bench")):
            if not os.access(path, os.X_OK):
                sys.exit("suite: %s not found at %s (run `make` first)" % (what, path))
        log("machine: %s, %s cores, Linux %s, ringkv %s"
            % (self.mach["cpu"], self.mach["cores"], self.mach["kernel"],
               self.mach["ringkv_commit"]))

        for cfg in self.configs:
            if self.only and cfg.key not in self.only:
                cfg.status, cfg.reason = "skipped", "not selected (BENCH_CONFIGS)"
        # Start everything, then wait for the replica links (in threads) while the
        # configurations without a replica preload.
        for cfg in self.configs:
            if cfg.status == "ok":
                cfg.start()
                log("%s: %s" % (cfg.key, "started, ports " + " ".join(
                    str(s.port) for s in cfg.servers()) if cfg.status == "ok"
                    else cfg.status + ": " + cfg.reason))
        waiters = [threading.Thread(target=c.wait_link) for c in self.configs
                   if c.status == "ok" and c.replica is not None]
        for t in waiters:
            t.start()
        for cfg in self.configs:
            if cfg.status == "ok" and cfg.replica is None:
                self.guarded(cfg, "preload", cfg.preload)
        for t in waiters:
            t.join()
        for cfg in self.configs:
            if cfg.replica is not None and cfg.status == "not built":
                log("%s: not built: %s" % (cfg.key, cfg.reason))
            if cfg.status == "ok" and cfg.replica is not None:
                log("%s: replica link up" % cfg.key)
                self.guarded(cfg, "sync modes", cfg.check_modes)
                self.guarded(cfg, "preload", cfg.preload)
        self.idle_check()

        for cfg in self.configs:
            for m in cfg.modes:
                for wl, _ in WORKLOADS:
                    for p in PIPELINES:
                        self.new_row(cfg, m, wl, p)
        rounds = self.plan()
        nruns = sum(1 for _, _, _, seq in rounds for c, m in seq if self.runnable(c, m))
        log("%d runs of %g s each (%d per row), about %.0f s"
            % (nruns, self.duration, self.repeat, nruns * (self.duration + 0.4)))
        for rep, wl, p, seq in rounds:
            for cfg, mode in seq:
                if not self.runnable(cfg, mode):
                    continue
                r = self.guarded(cfg, "%s %s P=%d" % (mode, wl, p), self.run_once,
                                 cfg, mode, wl, p, rep)
                if r is None:
                    log("%s: failed: %s" % (cfg.key, cfg.reason))
                    continue
                log("%-14s %-5s %-4s P=%-2d run %d: %s" % (
                    cfg.key, mode, wl, p, rep + 1,
                    "%.0f ops/s, p99 %.0f us" % (r["rps"], r["p99"]) if r.get("ok")
                    else "failed (exit %s) %s" % (r["exit"], r.get("stderr", "")[:120])))

        for cfg in self.configs:
            for s in cfg.servers():
                s.stop()
                if s.killed:
                    self.notes.append("%s did not exit within %.0f s of SIGTERM and was killed"
                                      % (s.name, STOP_TIMEOUT))
        self.load_end = os.getloadavg()
        self.elapsed = time.monotonic() - self.t_start
        self.finish()

    @staticmethod
    def guarded(cfg, what, fn, *args):
        """fn(*args); a server that stops answering marks its configuration failed instead of
        ending the suite."""
        try:
            return fn(*args)
        except (OSError, RespError, ValueError, RuntimeError) as e:
            cfg.fail("failed", "%s: %s: %s" % (what, type(e).__name__, e))
            return None

    def idle_check(self):
        """Every server is up during every run: make sure the idle ones cost nothing."""
        servers = [s for c in self.configs if c.status == "ok" for s in c.servers()]
        c0 = {s.name: s.cpu_s() for s in servers}
        time.sleep(1.0)
        self.idle_cpu = {}
        for s in servers:
            c1 = s.cpu_s()
            if c0[s.name] is None or c1 is None:
                continue
            pct = 100.0 * (c1 - c0[s.name])
            self.idle_cpu[s.name] = round(pct, 1)
            if pct > 5.0:
                self.notes.append("%s used %.0f%% of a CPU while idle (it stays up during the "
                                  "other configurations' runs)" % (s.name, pct))

    # -- results --

    def finish(self):
        for cfg in self.configs:
            for m in cfg.modes:
                mst, mwhy = cfg.mode_status[m]
                for wl, _ in WORKLOADS:
                    for p in PIPELINES:
                        row = self.rows[self.row_key(cfg, m, wl, p)]
                        if cfg.status != "ok" and not (cfg.status == "failed" and row["runs"]):
                            row["status"], row["reason"] = cfg.status, cfg.reason
                        elif mst != "ok":
                            row["status"], row["reason"] = mst, mwhy
                        self.summarise(row)
        for row in self.rows.values():
            mk = self.match(row)
            other = self.rows.get(mk) if mk else None
            if row.get("ops") and other and other.get("ops"):
                # Paired: each run against the Redis run of the same round (seconds apart),
                # then the median of those ratios; the ratio of the medians is kept too.
                mine = {r["rep"]: r["rps"] for r in row["runs"] if r.get("ok")}
                theirs = {r["rep"]: r["rps"] for r in other["runs"] if r.get("ok")}
                pairs = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k] > 0]
                row["ratio_of_medians"] = row["ops"] / other["ops"]
                row["ratio"] = statistics.median(pairs) if pairs else row["ratio_of_medians"]
                row["ratio_to"] = other["config"] + ("" if other["mode"] == "-"
                                                     else " " + MODE_LABEL[other["mode"]])
            lag = row.get("lag")
            if lag and row["mode"] in ("sync", "wait") and lag["first_get_misses"]:
                self.notes.append(
                    "%s %s %s P=%d: %d of %d probes did not see their value on the first "
                    "GET after the acknowledgement" % (row["config"], MODE_LABEL[row["mode"]],
                                                       row["workload"], row["pipeline"],
                                                       lag["first_get_misses"], lag["probes"]))
            if row.get("errors"):
                self.notes.append("%s %s %s P=%d: %d error replies"
                                  % (row["config"], MODE_LABEL[row["mode"]], row["workload"],
                                     row["pipeline"], row["errors"]))
            if row.get("sync_timeouts"):
                self.notes.append("%s %s %s P=%d: %d writes reached sync-timeout and were "
                                  "answered by the fallback, not by the replica's ack"
                                  % (row["config"], MODE_LABEL[row["mode"]], row["workload"],
                                     row["pipeline"], row["sync_timeouts"]))
            if row.get("probe_errors"):
                self.notes.append("%s %s %s P=%d: lag probe: %s"
                                  % (row["config"], MODE_LABEL[row["mode"]], row["workload"],
                                     row["pipeline"], row["probe_errors"][0]))
            for e in row.get("catchup_errors", [])[:1]:
                self.notes.append("%s %s %s P=%d: replication offsets: %s"
                                  % (row["config"], MODE_LABEL[row["mode"]], row["workload"],
                                     row["pipeline"], e))
        self.replsum = self.repl_summary()
        os.makedirs(self.results, exist_ok=True)
        base = os.path.join(self.results, self.stamp)
        png = self.chart(base + ".png")
        md = self.markdown(os.path.basename(png) if png else None)
        with open(base + ".md", "w") as f:
            f.write(md)
        with open(os.path.join(self.results, "latest.md"), "w") as f:
            f.write(md)
        with open(base + ".json", "w") as f:
            json.dump(self.as_json(), f, indent=1, default=self._json_default)
            f.write("\n")
        print()
        print(md)
        log("wrote %s.{md,json%s} and %s/latest.md in %.0f s"
            % (os.path.relpath(base, REPO), ",png" if png else "",
               os.path.relpath(self.results, REPO), self.elapsed))

    @staticmethod
    def _json_default(v):
        return str(v)

    # -- the cost of a replica, SET at pipeline 16 --

    SUMMARY_WL, SUMMARY_P = "set", 16

    def paired(self, a, b):
        """Median over rounds of (a's run ÷ b's run of the same round); None without pairs."""
        ra = {r["rep"]: r["rps"] for r in a["runs"] if r.get("ok")}
        rb = {r["rep"]: r["rps"] for r in b["runs"] if r.get("ok")}
        pairs = [ra[k] / rb[k] for k in ra if k in rb and rb[k] > 0]
        return (statistics.median(pairs), len(pairs)) if pairs else (None, 0)

    def repl_summary(self):
        """Per replica configuration and mode, SET at pipeline 16: ops/s against the same
        server alone and against its own async mode (paired by round), and how far behind the
        replica was when the load stopped and how long it took to reach the master's offset."""
        wl, p = self.SUMMARY_WL, self.SUMMARY_P
        alone = {"ringkv": self.rows.get(("ringkv", "-", wl, p)),
                 "redis": self.rows.get(("redis", "-", wl, p))}
        out = {"workload": wl, "pipeline": p, "keepup_ms": KEEPUP_MS, "rows": []}
        for cfg in self.configs:
            if cfg.transport is None:
                continue
            base = alone[cfg.family]
            asyn = self.rows.get((cfg.key, "async", wl, p))
            for m in cfg.modes:
                row = self.rows.get((cfg.key, m, wl, p))
                if row is None:
                    continue
                e = {"config": cfg.key, "mode": m, "status": row["status"],
                     "ops": row.get("ops"), "alone_ops": base.get("ops") if base else None,
                     "async_ops": asyn.get("ops") if asyn else None}
                if row.get("ops") is not None:
                    if base and base.get("ops"):
                        e["x_alone"], e["x_alone_pairs"] = self.paired(row, base)
                    if m != "async" and asyn and asyn.get("ops"):
                        e["x_async"], e["x_async_pairs"] = self.paired(row, asyn)
                    e["catchup"] = row.get("catchup")
                out["rows"].append(e)
        by = {(e["config"], e["mode"]): e for e in out["rows"]}
        tcp_async = by.get(("ringkv+tcp", "async"))
        tcp_sync = by.get(("ringkv+tcp", "sync"))
        if tcp_async and tcp_async.get("ops") is not None:
            c = tcp_async.get("catchup") or {}
            kept = bool(c) and c["kept_up"]
            out["tcp_keeps_up"] = {"x_alone": tcp_async.get("x_alone"),
                                   "ops": tcp_async["ops"], "alone_ops": tcp_async["alone_ops"],
                                   "catchup": c or None, "kept_up": kept}
        if tcp_sync and tcp_sync.get("x_async") is not None:
            out["tcp_sync_vs_async"] = {"x_async": tcp_sync["x_async"], "ops": tcp_sync["ops"],
                                        "async_ops": tcp_sync["async_ops"], "target": 0.7,
                                        "met": tcp_sync["x_async"] >= 0.7}
        return out

    def summary_markdown(self):
        sm = self.replsum
        wl_label = dict(WORKLOADS)
        out = ["## Replication cost: %s at pipeline %d\n" % (wl_label[sm["workload"]],
                                                              sm["pipeline"])]
        pairing = ("median over the %d rounds of the ratio of two runs made seconds apart"
                   % self.repeat if self.repeat > 1 else "runs made seconds apart")
        out.append("× alone: ops/s over the same server without a replica (ringkv or Redis); "
                   "× async: over the same configuration in async mode (Redis: SET + WAIT 1 0 "
                   "over plain SET); both the %s. Offset lag: every %.0f ms during the load, "
                   "the master's master_repl_offset is read and the replica's applied offset "
                   "(slave_repl_offset) polled every millisecond until it gets there; the time "
                   "that takes (median of the runs' medians / largest of all; a sample gives up "
                   "at %.0f s). At the end: how far behind the replica was when the load "
                   "process had exited, and how long from then until it reached the master's "
                   "final offset (median / largest over the row's runs). A replica keeps up "
                   "when no lag sample reached %.0f s and it reached the final offset within "
                   "%.0f ms of the end in every run.\n"
                   % (pairing, OFFSET_GAP_S * 1000, OFFSET_LAG_CAP_S, OFFSET_LAG_CAP_S,
                      sm["keepup_ms"]))
        out.append("| config | mode | ops/s | × alone | × async | offset lag p50 / max ms | "
                   "largest backlog | behind at end | caught up after end, median / max ms | "
                   "kept up |")
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")

        def ratio(v):
            return "%.2f" % v if v is not None else "–"

        def ms(v):
            if v is None:
                return "–"
            if v == math.inf:
                return "> %.0f s" % CATCHUP_WAIT
            return "%.1f" % v if v < 100 else "{:,.0f}".format(v)

        def nbytes(v):
            if v is None:
                return "–"
            if v >= 1 << 20:
                return "%.1f MiB" % (v / 1048576.0)
            if v >= 1024:
                return "%.0f KiB" % (v / 1024.0)
            return "%d B" % v
        for e in sm["rows"]:
            cells = [e["config"], MODE_LABEL[e["mode"]]]
            if e.get("ops") is None:
                out.append("| " + " | ".join(cells + [e["status"]] + ["–"] * 7) + " |")
                continue
            c = e.get("catchup")
            cells += ["{:,.0f}".format(e["ops"]), ratio(e.get("x_alone")),
                      ratio(e.get("x_async")) if e["mode"] != "async" else "1"]
            if c:
                ol = c["offset_lag"]
                lag = "%s / %s" % (ms(ol["p50_ms_median"]), ms(ol["max_ms"]))
                if ol["timeouts"]:
                    lag += " (%d of %d > %.0f s)" % (ol["timeouts"], ol["samples"],
                                                     OFFSET_LAG_CAP_S)
                beh = nbytes(c["behind_bytes_median"])
                if c.get("behind_ms_median") is not None:
                    beh += " (%s ms)" % ms(c["behind_ms_median"])
                cells += [lag, nbytes(ol["backlog_max_bytes"]), beh,
                          "%s / %s" % (ms(c["median_ms"]), ms(c["max_ms"])),
                          "yes" if c["kept_up"] else "**no**"]
            else:
                cells += ["–"] * 5
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        ku = sm.get("tcp_keeps_up")
        if ku:
            c = ku.get("catchup")
            if c:
                ol = c["offset_lag"]
                lagtxt = ("during the load the replica's applied offset reached the master's "
                          "within %s ms (median; largest %s ms, %d samples%s, largest backlog "
                          "%s); when the load had ended it was %s behind and reached the "
                          "master's final offset %s ms later (median; largest %s ms, %d of %d "
                          "runs within %.0f ms)"
                          % (ms(ol["p50_ms_median"]), ms(ol["max_ms"]), ol["samples"],
                             ", %d over %.0f s" % (ol["timeouts"], OFFSET_LAG_CAP_S)
                             if ol["timeouts"] else "", nbytes(ol["backlog_max_bytes"]),
                             nbytes(c["behind_bytes_median"]), ms(c["median_ms"]),
                             ms(c["max_ms"]), c["within_keepup"], c["runs"],
                             sm["keepup_ms"]))
            else:
                lagtxt = "the replica's offsets could not be read (see the notes)"
            out.append("- **A TCP replica and the master's full SET rate:** ringkv+tcp async "
                       "ran at %s× ringkv alone ({:,.0f} against {:,.0f} ops/s); %s: %s.".format(
                           ku["ops"], ku["alone_ops"] or 0)
                       % (ratio(ku.get("x_alone")), lagtxt,
                          "the replica kept up" if ku["kept_up"] else
                          "**the replica did not keep up**"))
        sv = sm.get("tcp_sync_vs_async")
        if sv:
            out.append("- **Sync mode with one TCP replica:** %.2f× ringkv+tcp async "
                       "({:,.0f} against {:,.0f} ops/s); target ≥ 0.7×: %s.".format(
                           sv["ops"], sv["async_ops"])
                       % (sv["x_async"], "met" if sv["met"] else "**not met**"))
        if ku or sv:
            out.append("")
        return "\n".join(out)

    def ordered_rows(self):
        for cfg in self.configs:
            for m in cfg.modes:
                for wl, _ in WORKLOADS:
                    for p in PIPELINES:
                        yield self.rows[self.row_key(cfg, m, wl, p)]

    def settings(self):
        return {"quick": self.quick, "duration_s": self.duration, "repeat": self.repeat,
                "lag_probes_per_row": self.probes, "clients": CLIENTS,
                "client_threads": CLIENT_THREADS, "master_threads": MASTER_THREADS,
                "replica_threads": REPLICA_THREADS,
                "cpus": placement_settings(),
                "keyspace": KEYSPACE, "value_size": VALUE_SIZE, "preloaded": True}

    def commands(self):
        """The command lines, with P for the master's port and P2 for the replica's."""
        out = {}
        for cfg in self.configs:
            names = {}
            if cfg.master and cfg.master.port:
                names[str(cfg.master.port)] = "P"
            if cfg.replica and cfg.replica.port:
                names[str(cfg.replica.port)] = "P2"
            for s in cfg.servers():
                if s.argv:
                    out[s.name] = " ".join(shell_quote(names.get(a, a))
                                           for a in rel_argv(s.argv))
        load = " ".join(shell_quote(a) for a in rel_argv(
            self.bench_argv("P", "set|get|mix", "1|16", False, "row.json")))
        out["load"] = load.replace("'set|get|mix'", "set|get|mix").replace("'1|16'", "1|16")
        out["load, WAIT rows"] = out["load"].replace(" --quiet", " --wait 1 --quiet")
        out["sync mode"] = "CONFIG SET sync-mode async|semi|sync (on the ringkv master)"
        return out

    def as_json(self):
        rows = []
        for row in self.ordered_rows():
            r = {k: v for k, v in row.items() if k != "lag_samples"}
            for k in ("p50", "p99", "p999"):
                if k in r:
                    r[k + "_us"] = r.pop(k)
            rows.append(r)
        return {
            "started": self.started,
            "elapsed_s": round(self.elapsed, 1),
            "machine": self.mach,
            "load_average": {"start": self.load_start, "end": self.load_end},
            "settings": self.settings(),
            "commands": self.commands(),
            "configs": [{"config": c.key, "status": c.status, "reason": c.reason,
                         "master_link_transport": c.link_transport,
                         "modes": {m: {"status": s, "reason": w}
                                   for m, (s, w) in c.mode_status.items()}}
                        for c in self.configs],
            "idle_cpu_pct": getattr(self, "idle_cpu", {}),
            "replication_summary": getattr(self, "replsum", None),
            "rows": rows,
            "notes": self.notes,
        }

    def markdown(self, png):
        m = self.mach
        out = []
        out.append("# ringkv benchmark, %s%s\n" % (self.started,
                                                   " (quick run)" if self.quick else ""))
        out.append("Machine: %s, %s cores, %s GiB, Linux %s. ringkv %s; %s.\n"
                   % (m["cpu"], m["cores"], m["memory_gib"], m["kernel"], m["ringkv_commit"],
                      m["redis_version"].split(" sha=")[0] or "redis-server"))
        place = ""
        if any(c is not None for c in (MASTER_CPUS, REPLICA_CPUS, CLIENT_CPUS)):
            place = (" CPUs: masters %s, replicas %s, client %s."
                     % tuple(os.environ.get(v) or "any" for v in
                             ("BENCH_MASTER_CPUS", "BENCH_REPLICA_CPUS", "BENCH_CLIENT_CPUS")))
        out.append("Load: ringkv-bench, %d thread%s, %d clients, keyspace %s preloaded, %d-byte "
                   "values, %g s per run, %s. ringkv masters run %d worker threads, ringkv "
                   "replicas %d.%s Load average %.1f at the start, %.1f at the "
                   "end; the run took %.0f s.\n"
                   % (CLIENT_THREADS, "" if CLIENT_THREADS == 1 else "s", CLIENTS,
                      "{:,}".format(KEYSPACE), VALUE_SIZE, self.duration,
                      "median of %d runs per row" % self.repeat if self.repeat > 1
                      else "one run per row", MASTER_THREADS, REPLICA_THREADS, place,
                      self.load_start[0], self.load_end[0], self.elapsed))
        out.append("ops/s is SETs + GETs per second; latencies are per request (in the "
                   "WAIT 1 0 SET rows, SET+WAIT until the WAIT reply); × Redis is ops/s over "
                   "the matching Redis row%s; lag is from the master's reply to the first "
                   "replica GET that sees the value; stale 1st GET counts the lag probes whose "
                   "first GET on the replica did not see the value yet. Method: "
                   "docs/BENCHMARKS.md.\n"
                   % (" (the median of the ratios of runs made in the same round)"
                      if self.repeat > 1 else ", run seconds apart"))
        out.append("| config | mode | workload | P | ops/s | p50 µs | p99 µs | p99.9 µs | "
                   "× Redis | lag p50 µs | lag p99 µs | stale 1st GET |")
        out.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        wl_label = dict(WORKLOADS)
        for row in self.ordered_rows():
            cells = [row["config"], MODE_LABEL[row["mode"]], wl_label[row["workload"]],
                     str(row["pipeline"])]
            if row.get("ops") is None:
                cells += [row["status"]] + ["–"] * 7
            else:
                cells += ["{:,.0f}".format(row["ops"]), fmt_us(row["p50"]),
                          fmt_us(row["p99"]), fmt_us(row["p999"]),
                          "%.2f" % row["ratio"] if row.get("ratio") else "–"]
                lag = row.get("lag")
                cells += ([fmt_us(lag["p50_us"]), fmt_us(lag["p99_us"]),
                           "%d/%d" % (lag["first_get_misses"], lag["probes"])] if lag
                          else ["–", "–", "–"])
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        notes = []
        for c in self.configs:
            if c.status != "ok":
                notes.append("%s: %s (%s)" % (c.key, c.status, c.reason))
            for mname, (st, why) in c.mode_status.items():
                if c.status == "ok" and st != "ok":
                    notes.append("%s %s: %s (%s)" % (c.key, mname, st, why))
        for row in self.ordered_rows():
            if row["status"] == "ok" and row.get("reason"):
                notes.append("%s %s %s P=%d: %s" % (row["config"], MODE_LABEL[row["mode"]],
                                                    row["workload"], row["pipeline"],
                                                    row["reason"]))
            if row["status"] == "failed" and row.get("runs"):
                notes.append("%s %s %s P=%d: failed: %s" % (
                    row["config"], MODE_LABEL[row["mode"]], row["workload"], row["pipeline"],
                    row["reason"]))
            lag = row.get("lag")
            if lag and lag["timeouts"]:
                notes.append("%s %s %s P=%d: %d of %d lag probes saw no value within 1 s"
                             % (row["config"], MODE_LABEL[row["mode"]], row["workload"],
                                row["pipeline"], lag["timeouts"], lag["probes"]))
        if row_lag := [r["lag"]["poll_rtt_p50_us"] for r in self.ordered_rows() if r.get("lag")]:
            notes.append("one replica GET round trip of the lag probe (its resolution): "
                         "median %s–%s µs across rows" % (fmt_us(min(row_lag)),
                                                          fmt_us(max(row_lag))))
        spreads = sorted((r["ops_spread"], r) for r in self.ordered_rows()
                         if r.get("ops_spread"))
        if spreads:
            worst = spreads[-1][1]
            notes.append("run-to-run spread of a row's ops/s (fastest run ÷ slowest): median "
                         "%.2f, largest %.2f (%s %s %s P=%d)"
                         % (statistics.median(x for x, _ in spreads), spreads[-1][0],
                            worst["config"], MODE_LABEL[worst["mode"]], worst["workload"],
                            worst["pipeline"]))
        busy = sorted((sum(v for v in r["server_cpu_s"].values() if v) + r["client_cpu_s"])
                      / r["seconds"] for row in self.ordered_rows() for r in row["runs"]
                      if r.get("ok") and r.get("seconds"))
        if busy:
            notes.append("CPU the servers and ringkv-bench used during a run, in CPUs: median "
                         "%.2f, range %.2f–%.2f of the machine's %s (the rest was idle or went "
                         "to other processes; the JSON has each server's and the client's CPU "
                         "seconds)"
                         % (statistics.median(busy), busy[0], busy[-1], self.mach["cores"]))
        notes += self.notes
        if notes:
            out.append("Notes:\n")
            out += ["- " + n for n in notes]
            out.append("")
        if png:
            out.append("![throughput and p99 per configuration](%s)\n" % png)
        out.append("Commands (P = the port each server got):\n")
        out.append("```")
        for k, v in self.commands().items():
            out.append("%-22s %s" % (k + ":", v))
        out.append("```\n")
        out.append(self.summary_markdown())
        return "\n".join(out)

    def chart(self, path):
        if PIPELINES != [1, 16]:
            self.notes.append("no chart: it needs both pipelines (BENCH_PIPELINES left one out)")
            return None
        gp = shutil.which("gnuplot")
        if not gp:
            self.notes.append("no chart: gnuplot is not installed (apt-get install gnuplot-nox)")
            return None
        series = [(c, m) for c in self.configs for m in c.modes
                  if any(self.rows[self.row_key(c, m, wl, p)].get("ops") is not None
                         for wl, _ in WORKLOADS for p in PIPELINES)]
        if not series:
            return None
        colors = {("ringkv", "-"): "#1f4e9c", ("ringkv+shm", "async"): "#2a9d3c",
                  ("ringkv+shm", "semi"): "#7cc47f", ("ringkv+shm", "sync"): "#0b5d1e",
                  ("ringkv+tcp", "async"): "#7b4fb0", ("ringkv+tcp", "semi"): "#b39ad8",
                  ("ringkv+tcp", "sync"): "#4a2377", ("redis", "-"): "#c0392b",
                  ("redis+replica", "async"): "#ee8a2a", ("redis+replica", "wait"): "#8a5a2b"}
        names = ['"%s"' % (c.key if m == "-" else "%s %s" % (c.key, MODE_LABEL[m]))
                 for c, m in series]
        lines = ['set terminal pngcairo size 1500,980 font "DejaVu Sans,10"',
                 'set output "%s"' % path,
                 'set datafile missing "?"',
                 "set style data histograms",
                 "set style histogram clustered gap 1",
                 "set style fill solid 0.9 border rgb '#333333'",
                 "set grid ytics lc rgb '#dddddd'",
                 "set format y '%.0s%c'",
                 'colors = "%s"' % " ".join(colors.get((c.key, m), "#777777") for c, m in series)]
        for metric, label in (("ops", "ops/s"), ("p99", "p99 µs")):
            for p in PIPELINES:
                lines.append("$%s%d << EOD" % (metric.upper(), p))
                lines.append("workload " + " ".join(names))
                for wl, wname in WORKLOADS:
                    vals = []
                    for c, m in series:
                        v = self.rows[self.row_key(c, m, wl, p)].get(metric)
                        vals.append("%.1f" % v if v is not None else "?")
                    lines.append('"%s" %s' % (wname, " ".join(vals)))
                lines.append("EOD")
        n = len(series)
        title = "ringkv vs Redis, %s%s: %s, %s cores; %d clients, %d client thread%s" % (
            self.started.split(" ")[0], " (quick)" if self.quick else "", self.mach["cpu"],
            self.mach["cores"], CLIENTS, CLIENT_THREADS, "" if CLIENT_THREADS == 1 else "s")
        missing = [c.key for c in self.configs if c.status != "ok" and c.status != "skipped"]
        if missing:
            title += "\\n(%s: %s)" % (", ".join(missing),
                                      "/".join(sorted(set(c.status for c in self.configs
                                                          if c.key in missing))))
        lines += ['set multiplot title "%s" font ",12"' % title,
                  "set lmargin 10",
                  "set rmargin 3"]
        panels = [("OPS", 1, 0.05, "throughput (ops/s), pipeline 1", False),
                  ("OPS", 16, 0.53, "throughput (ops/s), pipeline 16", False),
                  ("P99", 1, 0.05, "p99 latency (µs, log scale), pipeline 1", True),
                  ("P99", 16, 0.53, "p99 latency (µs, log scale), pipeline 16", True)]
        for i, (metric, p, x, ptitle, logy) in enumerate(panels):
            y = 0.53 if metric == "OPS" else 0.15
            lines += ["set origin %g,%g" % (x, y), "set size 0.45,0.37",
                      'set title "%s"' % ptitle]
            lines.append("set logscale y" if logy else "unset logscale y")
            if logy:
                vals = [self.rows[self.row_key(c, m, wl, p)].get("p99") for c, m in series
                        for wl, _ in WORKLOADS]
                vals = [v for v in vals if v]
                low = 10 ** (math.floor(math.log10(min(vals))) - 1) if vals else 1
                lines.append("set yrange [%g:*]" % low)
            else:
                lines.append("set yrange [0:*]")
            if i == 0:
                lines.append("set key at screen 0.5,0.07 center center vertical maxrows 4 "
                             "width 1 samplen 2 box")
            else:
                lines.append("unset key")
            lines.append("plot for [i=2:%d] $%s%d using i:xtic(1) title columnheader(i) "
                         "lc rgb word(colors, i-1)" % (n + 1, metric, p))
        lines.append("unset multiplot")
        script = os.path.join(self.workdir, "chart.gp")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        r = subprocess.run([gp, script], capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or not os.path.exists(path):
            self.notes.append("no chart: gnuplot failed: %s" % r.stderr.strip()[-200:])
            return None
        return path


def fmt_us(v):
    if v is None:
        return "–"
    if v == math.inf:
        return "> 1 s"
    if v >= 100:
        return "{:,.0f}".format(v)
    return "%.1f" % v


def rel_argv(argv):
    out = []
    for a in argv:
        if os.path.isabs(a) and a.startswith(REPO + "/"):
            a = os.path.relpath(a, REPO)
        out.append(a)
    return out


def shell_quote(a):
    if a == "":
        return "''"
    if all(ch.isalnum() or ch in "-_./:+=" for ch in a):
        return a
    return "'" + a.replace("'", "'\\''") + "'"


def main():
    run_main(Suite())


if __name__ == "__main__":
    main()
