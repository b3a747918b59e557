"""
Replication over TCP, end to end: full sync of a preloaded master then streaming, links cut
under load (partial resyncs), the master SIGKILLed under load in sync, semi and async modes
and the replica promoted (no acknowledged write lost in sync and semi), promotion and the
partial resync of the other replicas (behind: partial; ahead: full), REPLICAOF at run time,
a master restart, a lapped replica, a replica behind a slow lossy link in a network namespace
(netem delay and loss; where the kernel has no netem, a token bucket with a short queue, which
delays and drops), garbage and truncated frames on the replication socket in both directions,
FAILOVER (FORCE, a target that refuses), the reconnect backoff, a replica kept 300 ms behind
(lag_us), and writes on several shards and WAIT with two replicas that each hold one shard.

Every replica is started with --repl-transport tcp (auto would pick shared memory on the same
host).  Every server runs on 127.0.0.1 and a free port, or in a network namespace this file
creates (removed at cleanup), and is stopped by its pid at cleanup (SIGCONT first); its exit
status and sanitizer output are checked.  The TCP proxy, the fake master and the fake replica
are Python threads bounded in time; every wait polls with a deadline.

The wire format (net/repl.h): each message is a 24-byte header, little endian
{u32 magic "REP2", u8 type, 3 pad, u64 pos, u32 shard, u32 len}; the log frames that DATA
carries are {u64 pos, u32 len, u8 type, u8 check[3]} + payload, padded to 16 bytes, where
check is the low 24 bits of XXH3-64 of the payload (none for a PAD frame) seeded with
pos ^ len << 32 ^ type << 24 (shm/ring.h); the tests compute it with the libxxhash the server
links.
"""

import collections
import ctypes
import ctypes.util
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest

from harness import Conn, Error, Server, is_sanitized, parse, resp, server_path
from test_replication import ReplicationCase, mixed_load, parse_slave, pipeline, wait_until

ASAN = is_sanitized()
SLOW = 3 if ASAN else 1  # ASan builds are several times slower: scale the waits

WIRE_MAGIC = 0x52455032  # "REP2"
WIRE = struct.Struct("<IB3xQII")
W_DATA, W_COMMIT, W_RESET, W_WALKEND, W_PING, W_ACK = 1, 2, 3, 4, 5, 16
FRAME = struct.Struct("<QIB3s")  # struct ring_frame
RING_SET_HDR = struct.Struct("<qII")  # struct ring_set: expire_ms, klen, vlen
RING_SET = 1


def wire(typ, shard=0, pos=0, length=0):
    return WIRE.pack(WIRE_MAGIC, typ, pos, shard, length)


_XXH = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
_XXH.XXH3_64bits_withSeed.restype = ctypes.c_uint64
_XXH.XXH3_64bits_withSeed.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64)


def frame_check(pos, length, typ, payload):
    """ring_frame_check (shm/ring.c): 3 bytes, little endian."""
    seed = (pos ^ (length << 32) ^ (typ << 24)) & (2 ** 64 - 1)
    c = _XXH.XXH3_64bits_withSeed(payload, len(payload), seed) & 0xFFFFFF
    return c.to_bytes(3, "little")


def set_frame(pos, key, val, stamp=None):
    """One SET record of the log at position pos (its pos stamp: `stamp`, default pos), with
    the check the stamp and payload give."""
    payload = RING_SET_HDR.pack(-1, len(key), len(val)) + key + val
    stamp = pos if stamp is None else stamp
    raw = FRAME.pack(stamp, len(payload), RING_SET, frame_check(stamp, len(payload), RING_SET,
                                                                payload)) + payload
    return raw + b"\0" * (-len(raw) % 16)


def info(conn, section="replication"):
    """INFO <section> as a dict of strings (fails with the raw reply if it is not text)."""
    raw = conn.call("INFO", section)
    try:
        txt = raw.decode()
    except UnicodeDecodeError as e:
        raise AssertionError("INFO %s is not valid UTF-8 at byte %d: %r" % (section, e.start, raw))
    out = {}
    for line in txt.split("\r\n"):
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def synced(conn):
    """True when a replica's link is up and its full sync is done."""
    i = info(conn)
    return (i.get("role") == "slave" and i.get("master_link_status") == "up"
            and i.get("master_sync_in_progress") == "0")


def tcp_args(port, host="127.0.0.1"):
    return ("--replicaof", host, str(port), "--repl-transport", "tcp")


def log_lines(s, pattern):
    return [ln for ln in (s.stdout() + s.stderr()).decode(errors="replace").splitlines()
            if re.search(pattern, ln)]


# ---- loopback peers: a TCP proxy whose links the test cuts, and a fake master -----------------


class Listener:
    """A listening socket on 127.0.0.1:<port> and a thread that accepts connections on it and
    hands each to self.on_accept(sock) until stop_listening(); threads the subclass starts go
    in self.threads (joined, with a timeout, by stop_listening)."""

    def __init__(self, backlog):
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(backlog)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True)]

    def start_listening(self):
        self.threads[0].start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.on_accept(c)

    def stop_listening(self, before_join=None, join_s=5):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        if before_join:
            before_join()
        for t in list(self.threads):
            t.join(join_s)


class Proxy(Listener):
    """Forwards every connection made to 127.0.0.1:<port> to 127.0.0.1:<target>, both ways.
    cut() breaks every forwarded connection (both ends see it closed); while `blocked` new
    connections are accepted and closed at once; while `hold` nothing is forwarded (the bytes
    wait in the sockets' buffers), though every connection stays open.  Threads: one accept loop and two pumps per
    connection, all ended by stop() (shutdown unblocks them) and joined with a timeout."""

    def __init__(self, target_port):
        super().__init__(32)
        self.target = target_port
        self.pairs = []
        self.blocked = False
        self.hold = False
        self.accepted = 0
        self.forwarded = 0
        self.start_listening()

    def on_accept(self, c):
        self.accepted += 1
        if self.blocked:
            c.close()
            return
        try:
            u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
        except OSError:
            c.close()
            return
        c.settimeout(None)
        u.settimeout(None)
        pair = {"socks": (c, u), "left": 2}
        with self.lock:
            if self.stopping.is_set():
                c.close()
                u.close()
                return
            self.pairs.append(pair)
            self.forwarded += 1
            for src, dst in ((c, u), (u, c)):
                t = threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, pair, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                for _ in range(6000):  # at most 60 s
                    if not self.hold or self.stopping.is_set():
                        break
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        self._break(pair)
        with self.lock:
            pair["left"] -= 1
            last = pair["left"] == 0
            if last and pair in self.pairs:
                self.pairs.remove(pair)
        if last:
            for s in pair["socks"]:
                s.close()

    @staticmethod
    def _break(pair):
        for s in pair["socks"]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def live(self):
        with self.lock:
            return len(self.pairs)

    def cut(self):
        """Break every forwarded connection; returns how many there were."""
        with self.lock:
            pairs = list(self.pairs)
        for p in pairs:
            self._break(p)
        return len(pairs)

    def stop(self):
        self.blocked = True
        self.stop_listening(before_join=self.cut, join_s=5)


# ---- a fake master and a fake replica --------------------------------------------------------


def recv_some(sock, deadline):
    """Bytes from sock, b"" when the peer closed (or the socket failed), None past the
    deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, 0.5))
        try:
            return sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return b""


def read_request(sock, buf, deadline):
    """One RESP multibulk request from sock (buf: bytearray of what was read before).
    Returns the list of arguments, or None on EOF / past the deadline."""
    while True:
        try:
            v = _parse_request(buf)
        except ValueError:
            return None
        if v is not None:
            return v
        chunk = recv_some(sock, deadline)
        if not chunk:
            return None
        buf += chunk


def _parse_request(buf):
    if not buf:
        return None
    if buf[:1] != b"*":
        raise ValueError("not a multibulk")
    nl = buf.find(b"\r\n")
    if nl < 0:
        return None
    n = int(buf[1:nl])
    p, args = nl + 2, []
    for _ in range(n):
        nl = buf.find(b"\r\n", p)
        if nl < 0:
            return None
        ln = int(buf[p + 1:nl])
        if len(buf) < nl + 2 + ln + 2:
            return None
        args.append(bytes(buf[nl + 2:nl + 2 + ln]))
        p = nl + 2 + ln + 2
    del buf[:p]
    return args


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


class FakeMaster(Listener):
    """Answers RINGKV.SHMINFO like a master with `nshards` shards of `ring` bytes and no Unix
    socket, PING and AUTH; for the i-th RINGKV.PSYNC it runs scenarios[i](sock, psync_args)
    (then closes), and past the last one answers -ERR.  Every connection has a thread; stop()
    ends them all (bounded)."""

    REPLID = "f" * 40

    def __init__(self, nshards, ring, scenarios):
        self.nshards, self.ring = nshards, ring
        self.scenarios = list(scenarios)
        self.psyncs = []      # the argument lists of the PSYNCs received
        self.results = []     # what each scenario reported
        self.refused = 0      # PSYNCs answered -ERR (after the scenarios)
        self.errors = []
        super().__init__(16)
        self.start_listening()

    def on_accept(self, c):
        t = threading.Thread(target=self._serve, args=(c,), daemon=True)
        t.start()
        self.threads.append(t)

    def _serve(self, c):
        buf = bytearray()
        try:
            while not self.stopping.is_set():
                req = read_request(c, buf, time.monotonic() + 5)
                if req is None:
                    return
                name = req[0].upper()
                if name == b"RINGKV.SHMINFO":
                    vals = [b"", boot_id().encode(), b"%d" % self.nshards, b"%d" % os.getpid(),
                            b"%d" % self.ring]
                    c.sendall(b"*5\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(v), v)
                                                     for v in vals))
                elif name == b"PING":
                    c.sendall(b"+PONG\r\n")
                elif name == b"AUTH":
                    c.sendall(b"+OK\r\n")
                elif name == b"RINGKV.PSYNC":
                    with self.lock:
                        i = len(self.psyncs)
                        self.psyncs.append(req)
                    if i >= len(self.scenarios):
                        with self.lock:
                            self.refused += 1
                        c.sendall(b"-ERR the fake master has nothing more to say\r\n")
                        return
                    c.settimeout(5)
                    res = self.scenarios[i](c, req, bytes(buf))
                    with self.lock:
                        self.results.append(res)
                    return
                else:
                    c.sendall(b"-ERR unknown command\r\n")
        except OSError as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            c.close()

    def stop(self):
        self.stop_listening(join_s=8)


def wait_closed_by_peer(sock, timeout):
    """Read (and drop) what the peer sends until it closes; the seconds that took, or None if
    it still had the connection open after timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        chunk = recv_some(sock, deadline)
        if chunk is None:
            return None
        if not chunk:
            return time.monotonic() - t0


# ---- servers in a network namespace ----------------------------------------------------------


class HostServer(Server):
    """ringkv-server listening on `host` (an address of a veth this file set up), optionally
    started inside network namespace `netns` (ip netns exec, which execs: the pid is the
    server's)."""

    def __init__(self, *args, host, netns=None, **kw):
        self.host = host
        self.netns = netns
        super().__init__(*args, **kw)

    def argv(self):
        a = super().argv()
        a[a.index("--bind") + 1] = self.host
        if self.netns:
            a = ["ip", "netns", "exec", self.netns] + a
        return a

    def conn(self, timeout=10.0):
        return Conn(self.port, timeout=timeout, host=self.host)


def sh(*argv):
    """Run a command (bounded: 20 s); (exit status, its output)."""
    try:
        p = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return p.returncode, p.stdout.decode(errors="replace").strip()


# ---- the tests ---------------------------------------------------------------------------------


class TcpCase(ReplicationCase):

    def tcp_replica(self, master_port, *args, host="127.0.0.1", **kw):
        return self.start(*(tcp_args(master_port, host) + args), **kw)

    def proxy(self, target_port):
        p = Proxy(target_port)
        self.addCleanup(p.stop)
        return p

    def wait_synced(self, rconn, timeout=20):
        wait_until(lambda: synced(rconn), timeout, "the replica's link up and sync done")

    def wait_caught_up(self, mc, rcs, timeout=20):
        """Digests equal and every replica's applied offset equal to the master's."""
        d = self.wait_equal(mc, rcs, timeout * SLOW)
        # The master's offset is read again on every poll: keys set with PX go on expiring
        # (DEL records) after the load has stopped.
        wait_until(lambda: all(info(c)["slave_repl_offset"] == info(mc)["master_repl_offset"]
                               for c in rcs),
                   5 * SLOW, "replica offsets equal to the master's")
        return d

    def promote(self, rc):
        self.assertEqual(rc.call("REPLICAOF", "NO", "ONE"), "OK")
        wait_until(lambda: info(rc)["role"] == "master", 5 * SLOW, "role:master after NO ONE")


class TcpReplication(TcpCase):

    def test_01_full_sync_of_a_preloaded_master_then_streaming(self):
        m = self.start()
        mc = self.connect(m)
        rng = random.Random(101)
        cmds = []
        for i in range(50000):
            k = "k:%d" % i
            kind = i % 10
            if kind == 0:
                cmds.append(("SET", k, "ex-%d" % i, "EX", "3600"))
            elif kind == 1:
                cmds += [("SET", k, str(i)), ("INCR", k)]
            elif kind == 2:
                cmds += [("SET", k, "gone"), ("DEL", k)]
            elif kind == 3:
                cmds += [("SET", k, "a"), ("APPEND", k, "-%d" % i)]
            elif kind == 4:
                cmds.append(("SET", k, "x" * rng.randrange(100, 3000)))
            else:
                cmds.append(("SET", k, "v-%d" % i))
        for rep in pipeline(mc, cmds, chunk=2000):
            self.assertNotIsInstance(rep, Error)
        self.assertEqual(mc.call("DBSIZE"), 45000)

        # Writes go on (another connection) while the replica attaches and syncs.
        stop = threading.Event()
        problems, wrote = [], []

        def writer():
            try:
                with m.conn(10) as wc:
                    wrng = random.Random(102)
                    for b in range(400):  # bounded
                        if stop.is_set():
                            break
                        batch = mixed_load(wrng, "live", 100, 500)
                        for rep in pipeline(wc, batch):
                            if isinstance(rep, Error):
                                problems.append(rep)
                        wrote.append(len(batch))
                        time.sleep(0.005)
            except Exception as e:  # reported below
                problems.append(repr(e))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            # Other shard count and ring size: the replica adopts the master's.
            r = self.tcp_replica(m.port, "--repl-ring-size", "64kb", shards=8)
            rc = self.connect(r)
            self.wait_synced(rc, 30 * SLOW)
        finally:
            stop.set()
            t.join(30)
        self.assertFalse(t.is_alive(), "the writer thread did not finish")
        self.assertEqual(problems, [])
        self.assertGreater(sum(wrote), 0)
        self.wait_caught_up(mc, [rc])
        self.assertEqual(info(rc, "server")["shards"], "64")
        self.assertTrue(log_lines(r, "adopting the master's repl-ring-size: 1048576"),
                        "the replica did not adopt the master's ring size")

        # Streaming after the sync.
        pipeline(mc, [("SET", "after", "1"), ("INCR", "after"), ("APPEND", "after", "x"),
                      ("SET", "k:5", "changed"), ("DEL", "k:6"), ("SET", "px", "p", "PX", "150"),
                      ("SET", "after:ex", "e", "EX", "1000")])
        self.wait_caught_up(mc, [rc])
        self.assertEqual(rc.call("GET", "after"), b"2x")
        self.assertEqual(rc.call("GET", "k:5"), b"changed")
        self.assertIsNone(rc.call("GET", "k:6"))
        self.assertEqual(rc.call("GET", "k:11"), b"12")
        self.assertIsNone(rc.call("GET", "k:12"))
        self.assertEqual(rc.call("GET", "k:13"), b"a-13")
        self.assertEqual(rc.call("GET", "k:10"), b"ex-10")
        self.assertTrue(0 < rc.call("TTL", "k:10") <= 3600)
        self.assertTrue(0 < rc.call("TTL", "after:ex") <= 1000)
        # The PX key expires on the master; its DEL reaches the replica.
        wait_until(lambda: rc.call("EXISTS", "px") == 0 and mc.call("EXISTS", "px") == 0,
                   5 * SLOW, "the PX key gone on both")
        self.wait_caught_up(mc, [rc])
        self.assertEqual(rc.call("DBSIZE"), mc.call("DBSIZE"))
        self.assertIsInstance(rc.call("SET", "w", "1"), Error)

        mi, ri = info(mc), info(rc)
        self.assertEqual(mi["role"], "master")
        self.assertEqual(mi["connected_slaves"], "1")
        for f in ("ip=127.0.0.1", "port=%d" % r.port, "state=online", "transport=tcp",
                  "offset=%s" % mi["master_repl_offset"]):
            self.assertIn(f, mi["slave0"].split(","), mi["slave0"])
        self.assertEqual((mi["sync_full"], mi["sync_partial_ok"], mi["sync_partial_err"]),
                         ("1", "0", "0"))
        self.assertRegex(mi["master_replid"], r"^[0-9a-f]{40}$")
        self.assertEqual(mi["master_failover_state"], "no-failover")
        self.assertEqual(ri["role"], "slave")
        self.assertEqual((ri["master_host"], ri["master_port"]), ("127.0.0.1", str(m.port)))
        self.assertEqual(ri["master_link_status"], "up")
        self.assertEqual(ri["master_sync_in_progress"], "0")
        self.assertEqual(ri["master_link_transport"], "tcp")
        self.assertEqual(ri["master_replid"], mi["master_replid"])
        self.assertEqual(ri["slave_repl_offset"], mi["master_repl_offset"])
        self.assertEqual(ri["slave_read_repl_offset"], mi["master_repl_offset"])
        self.assertEqual((ri["replica_full_syncs"], ri["replica_partial_syncs"]), ("1", "0"))
        self.assertGreater(int(ri["apply_lag_samples"]), 0)
        self.assertLessEqual(int(ri["apply_lag_p50_us"]), int(ri["apply_lag_p99_us"]))
        role = rc.call("ROLE")
        self.assertEqual(role[:4], [b"slave", b"127.0.0.1", m.port, b"connected"])

    def test_02_links_cut_every_two_seconds_under_load(self):
        m = self.start()
        mc = self.connect(m)
        pipeline(mc, [("SET", "pre:%d" % i, "p%d" % i) for i in range(5000)], 1000)
        px = self.proxy(m.port)
        r = self.tcp_replica(px.port)
        rc = self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        self.wait_caught_up(mc, [rc])

        stop = threading.Event()
        problems, wrote = [], [0]

        def writer():
            try:
                with m.conn(15) as wc:
                    wrng = random.Random(202)
                    for b in range(100000):  # bounded; stopped by the event long before
                        if stop.is_set():
                            break
                        batch = mixed_load(wrng, "load", 150, 3000)
                        if b % 5 == 0:
                            batch.append(("SET", "load:px:%d" % b, "x", "PX",
                                          str(wrng.randrange(50, 2000))))
                        for rep in pipeline(wc, batch):
                            if isinstance(rep, Error):
                                problems.append(rep)
                        wrote[0] += len(batch)
                        time.sleep(0.005)
            except Exception as e:  # reported below
                problems.append(repr(e))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        duration = 30.0
        cuts, skipped = 0, 0
        t_end = time.monotonic() + duration
        try:
            for _ in range(int(duration / 2) + 2):
                time.sleep(max(0.0, min(2.0, t_end - time.monotonic())))
                if time.monotonic() >= t_end - 0.05:
                    break
                # Cut only a link that is up (the replica backs off between tries).
                if info(rc)["master_link_status"] == "up" and px.cut():
                    cuts += 1
                else:
                    skipped += 1
                self.assertTrue(t.is_alive() or stop.is_set(), "the writer stopped: %s"
                                % problems[:3])
        finally:
            stop.set()
            t.join(30)
        self.assertFalse(t.is_alive(), "the writer thread did not finish")
        self.assertEqual(problems, [])
        self.assertGreaterEqual(cuts, 6, "too few cuts (%d; %d skipped)" % (cuts, skipped))
        self.wait_synced(rc, 20 * SLOW)
        self.wait_caught_up(mc, [rc], 30)
        mi, ri = info(mc), info(rc)
        msg = "cuts %d (skipped %d), writes %d; master %s; replica %s" % (
            cuts, skipped, wrote[0],
            {k: mi[k] for k in ("sync_full", "sync_partial_ok", "sync_partial_err")},
            {k: ri[k] for k in ("replica_full_syncs", "replica_partial_syncs")})
        self.assertEqual(mi["sync_full"], "1", msg)
        self.assertEqual(ri["replica_full_syncs"], "1", msg)
        self.assertGreaterEqual(int(mi["sync_partial_ok"]), cuts - 1, msg)
        self.assertEqual(mi["sync_partial_err"], "0", msg)
        self.assertEqual(ri["replica_partial_syncs"], mi["sync_partial_ok"], msg)
        self.assertEqual(mi["connected_slaves"], "1", msg)
        self.assertEqual(ri["master_link_transport"], "tcp")
        self.assertIn("transport=tcp", mi["slave0"])
        self.assertEqual(rc.call("GET", "pre:4999"), b"p4999")
        print("\n    %s" % msg, flush=True)

    # -- 3: the master SIGKILLed under load, the replica promoted ------------------------------

    def _kill_rounds(self, mode, rounds, seed):
        """Per round: a fresh master and TCP replica, writers with acknowledged writes, SIGKILL
        of the master at a random moment, REPLICAOF NO ONE.  Returns per round (acked, lost)
        and the details of the first losses."""
        rng = random.Random(seed)
        report, details = [], []
        for rnd in range(rounds):
            m = self.start(shards=8)
            r = self.tcp_replica(m.port)
            mc, rc = self.connect(m), self.connect(r)
            self.wait_synced(rc, 20 * SLOW)
            for k, v in (("sync-mode", mode), ("sync-timeout", "10000"),
                         ("sync-fallback", "error")):
                self.assertEqual(mc.call("CONFIG", "SET", k, v), "OK")
            stop = threading.Event()
            acked = [dict() for _ in range(3)]   # key -> value, per writer
            counters = [0] * 3                   # largest acknowledged INCR, per writer
            refused = []

            def writer(tid):
                seq = 0
                inflight = collections.deque()
                try:
                    c = Conn(m.port, timeout=15)
                except OSError:
                    return
                try:
                    for _ in range(200000):  # bounded; the kill ends it
                        while len(inflight) < 8 and not stop.is_set():
                            seq += 1
                            if seq % 4 == 0:
                                cmd = ("INCR", "ctr:%d" % tid)
                            else:
                                cmd = ("SET", "w:%d:%d" % (tid, seq), "v%d.%d" % (seq, tid))
                            c.send(resp(*cmd))
                            inflight.append(cmd)
                        if not inflight:
                            break
                        rep = parse(c.read_reply())
                        cmd = inflight.popleft()
                        if isinstance(rep, Error):
                            refused.append(rep)
                        elif cmd[0] == "SET" and rep == "OK":
                            acked[tid][cmd[1]] = cmd[2]
                        elif cmd[0] == "INCR" and isinstance(rep, int):
                            counters[tid] = max(counters[tid], rep)
                except (OSError, ConnectionError, ValueError):
                    pass  # the master died
                finally:
                    c.close()

            ts = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(3)]
            for t in ts:
                t.start()
            time.sleep(rng.uniform(0.03, 0.35))
            mc.close()
            self.kill(m)
            stop.set()
            for t in ts:
                t.join(20)
            self.assertFalse(any(t.is_alive() for t in ts), "a writer did not finish")
            self.assertTrue(r.alive(), "the replica died with its master")
            if rng.random() < 0.5:
                wait_until(lambda: info(rc)["master_link_status"] == "down", 5 * SLOW,
                           "master_link_status:down after the master's death")
            self.promote(rc)
            lost = []
            for tid in range(3):
                keys = sorted(acked[tid])
                for i in range(0, len(keys), 500):
                    part = keys[i:i + 500]
                    for k, got in zip(part, rc.call("MGET", *part)):
                        if got != acked[tid][k].encode():
                            lost.append((k, acked[tid][k], got))
                have = int(rc.call("GET", "ctr:%d" % tid) or 0)
                if have < counters[tid]:
                    lost.append(("ctr:%d" % tid, counters[tid], have))
            nacked = sum(len(a) for a in acked) + sum(counters)
            report.append((nacked, len(lost)))
            if lost and len(details) < 3:
                details.append("round %d (seed %d): %d of %d acknowledged writes lost, e.g. %s;"
                               " refused %s; replica log:\n%s" % (
                                   rnd, seed, len(lost), nacked, lost[:5], refused[:3],
                                   "\n".join(self.log_of(r).splitlines()[-8:])))
            self.assertEqual(rc.call("SET", "after-promotion", "1"), "OK")
            rc.close()
            # Stopped and checked now (its cleanup checks it again and removes its files).
            r.stop()
            r.check(self, expect_rc=0)
        return report, details

    def _kill_test(self, mode, seed):
        report, details = self._kill_rounds(mode, 20, seed)
        self.assertGreater(sum(a for a, _ in report), 0, "no write was acknowledged")
        self.assertEqual(details, [], "%s mode lost acknowledged writes: per round "
                         "(acknowledged, lost) %s\n%s" % (mode, report, "\n".join(details)))

    def test_03a_master_killed_in_sync_mode_loses_no_acknowledged_write(self):
        self._kill_test("sync", 301)

    def test_03b_master_killed_in_semi_mode_loses_no_acknowledged_write(self):
        self._kill_test("semi", 302)

    def test_03c_master_killed_in_async_mode_reports_losses(self):
        report, _ = self._kill_rounds("async", 20, 303)
        acked = sum(a for a, _ in report)
        lost = sum(n for _, n in report)
        print("\n    async mode: %d of %d acknowledged writes lost over %d master kills "
              "(per round: %s)" % (lost, acked, len(report), [n for _, n in report]),
              flush=True)
        self.assertGreater(acked, 0)

    # -- 4: promotion, and the other replicas continue from the promoted one -----------------

    def test_04_remaining_replica_resyncs_partially_after_a_promotion(self):
        m = self.start()
        r1 = self.tcp_replica(m.port)
        r2 = self.tcp_replica(m.port)
        mc, c1, c2 = self.connect(m), self.connect(r1), self.connect(r2)
        for c in (c1, c2):
            self.wait_synced(c, 20 * SLOW)
        pipeline(mc, mixed_load(random.Random(401), "p", 20000, 2000), 1000)
        self.wait_caught_up(mc, [c1, c2])
        old_id = info(mc)["master_replid"]
        moff = int(info(mc)["master_repl_offset"])
        mc.close()
        self.kill(m)
        self.promote(c1)
        i1 = info(c1)
        self.assertEqual(i1["master_replid2"], old_id)
        self.assertNotEqual(i1["master_replid"], old_id)
        self.assertEqual(int(i1["second_repl_offset"]), moff + 1)
        self.assertEqual(i1["master_repl_offset"], str(moff))
        before = int(info(c2)["replica_partial_syncs"])
        self.assertEqual(c2.call("REPLICAOF", "127.0.0.1", str(r1.port)), "OK")
        wait_until(lambda: int(info(c2)["replica_partial_syncs"]) > before, 10 * SLOW,
                   "a partial resync of R2 from R1")
        self.wait_synced(c2, 10 * SLOW)
        i1 = info(c1)
        self.assertGreaterEqual(int(i1["sync_partial_ok"]), 1)
        self.assertEqual(i1["sync_full"], "0", "R2 should not have needed a full sync")
        i2 = info(c2)
        self.assertEqual(i2["replica_full_syncs"], "1")
        self.assertEqual(i2["master_replid"], i1["master_replid"])
        self.assertEqual(i2["master_port"], str(r1.port))
        self.assertEqual(i2["master_link_transport"], "tcp")
        pipeline(c1, mixed_load(random.Random(402), "q", 5000, 1000), 1000)
        self.assertEqual(c1.call("SET", "on-r1", "yes"), "OK")
        self.wait_caught_up(c1, [c2])
        self.assertEqual(c2.call("GET", "on-r1"), b"yes")
        self.assertEqual(info(c1)["connected_slaves"], "1")

    def test_05_promotion_with_replicas_behind_and_ahead(self):
        # R1 will be promoted.  R2 is behind it (its link cut before batch A): it continues
        # partially.  R3 is ahead (it got batch B, R1 did not): it must be refused a partial
        # resync and full-sync, losing B, to end equal to R1.
        m = self.start()
        p1, p2 = self.proxy(m.port), self.proxy(m.port)
        r1, r2 = self.tcp_replica(p1.port), self.tcp_replica(p2.port)
        r3 = self.tcp_replica(m.port)
        mc = self.connect(m)
        c1, c2, c3 = self.connect(r1), self.connect(r2), self.connect(r3)
        for c in (c1, c2, c3):
            self.wait_synced(c, 20 * SLOW)
        pipeline(mc, [("SET", "base:%d" % i, "b") for i in range(3000)], 1000)
        self.wait_caught_up(mc, [c1, c2, c3])

        off2 = int(info(c2)["slave_repl_offset"])
        p2.blocked = True
        p2.cut()
        wait_until(lambda: info(c2)["master_link_status"] == "down", 5 * SLOW, "R2 down")
        pipeline(mc, [("SET", "a:%d" % i, "A") for i in range(2000)], 1000)
        wait_until(lambda: info(c1)["slave_repl_offset"] == info(mc)["master_repl_offset"],
                   10 * SLOW, "R1 to get batch A")
        p1.blocked = True
        p1.cut()
        wait_until(lambda: info(c1)["master_link_status"] == "down", 5 * SLOW, "R1 down")
        pipeline(mc, [("SET", "b:%d" % i, "B") for i in range(2000)], 1000)
        self.wait_caught_up(mc, [c3])
        off3 = int(info(c3)["slave_repl_offset"])
        mc.close()
        self.kill(m)
        self.promote(c1)
        off1 = int(info(c1)["master_repl_offset"])
        self.assertLess(off2, off1)
        self.assertGreater(off3, off1)
        self.assertIsNone(c1.call("GET", "b:0"))
        self.assertEqual(c3.call("GET", "b:0"), b"B")

        p2_before = int(info(c2)["replica_partial_syncs"])
        for c in (c2, c3):
            self.assertEqual(c.call("REPLICAOF", "127.0.0.1", str(r1.port)), "OK")
        wait_until(lambda: int(info(c2)["replica_partial_syncs"]) > p2_before, 10 * SLOW,
                   "R2 (behind) to continue with a partial resync")
        wait_until(lambda: info(c3)["replica_full_syncs"] == "2", 10 * SLOW,
                   "R3 (ahead) to be refused a partial resync and full-sync")
        for c in (c2, c3):
            self.wait_synced(c, 15 * SLOW)
        i1 = info(c1)
        self.assertEqual(i1["sync_partial_ok"], "1", i1)
        self.assertEqual(i1["sync_full"], "1", i1)
        self.assertEqual(i1["sync_partial_err"], "1", i1)
        self.assertEqual(c1.call("SET", "after", "x"), "OK")
        self.wait_caught_up(c1, [c2, c3])
        self.assertEqual(c2.call("GET", "a:1999"), b"A")
        self.assertIsNone(c3.call("GET", "b:0"), "R3 kept a write its new master never had")
        self.assertEqual(info(c2)["replica_full_syncs"], "1")

    def test_06_replicaof_at_run_time_over_tcp_and_no_one(self):
        m = self.start()
        s = self.start("--repl-transport", "tcp")
        mc, sc = self.connect(m), self.connect(s)
        pipeline(mc, [("SET", "m:%d" % i, "v%d" % i) for i in range(2000)], 1000)
        self.assertEqual(sc.call("SET", "mine", "only-here"), "OK")
        self.assertEqual(info(sc)["role"], "master")
        self.assertEqual(sc.call("REPLICAOF", "127.0.0.1", str(m.port)), "OK")
        self.wait_synced(sc, 20 * SLOW)
        self.wait_caught_up(mc, [sc])
        self.assertIsNone(sc.call("GET", "mine"))
        si = info(sc)
        self.assertEqual(si["master_link_transport"], "tcp")
        self.assertIn("transport=tcp", info(mc)["slave0"])
        mi = info(mc)
        self.promote(sc)
        si = info(sc)
        self.assertEqual(si["master_replid2"], mi["master_replid"])
        self.assertEqual(int(si["second_repl_offset"]), int(mi["master_repl_offset"]) + 1)
        self.assertNotEqual(si["master_replid"], mi["master_replid"])
        self.assertEqual(sc.call("SET", "w", "1"), "OK")
        self.assertEqual(mc.call("SET", "m:0", "changed"), "OK")
        wait_until(lambda: info(mc)["connected_slaves"] == "0", 5 * SLOW,
                   "the old master to drop it")
        self.assertEqual(sc.call("GET", "m:0"), b"v0")
        # Back under the old master (its replid is not the one the log holds now): full.
        self.assertEqual(sc.call("REPLICAOF", "127.0.0.1", str(m.port)), "OK")
        wait_until(lambda: info(sc).get("replica_full_syncs") == "2" and synced(sc),
                   10 * SLOW, "a second full sync")
        self.wait_caught_up(mc, [sc])
        self.assertIsNone(sc.call("GET", "w"))

    def test_06b_config_set_repl_transport_tcp(self):
        # CONFIG SET repl-transport tcp, then REPLICAOF at run time: a TCP link (auto would
        # pick shared memory on this host).
        m = self.start()
        s = self.start()
        mc, sc = self.connect(m), self.connect(s)
        self.assertEqual(mc.call("SET", "k", "v"), "OK")
        self.assertEqual(sc.call("CONFIG", "SET", "repl-transport", "tcp"), "OK")
        self.assertEqual(sc.call("CONFIG", "GET", "repl-transport"), [b"repl-transport", b"tcp"])
        self.assertEqual(sc.call("REPLICAOF", "127.0.0.1", str(m.port)), "OK")
        self.wait_synced(sc, 20 * SLOW)
        self.wait_caught_up(mc, [sc])
        self.assertEqual(info(sc)["master_link_transport"], "tcp")
        self.assertIn("transport=tcp", info(mc)["slave0"])

    def test_07_master_restart_and_reconnect(self):
        # The master dies: the replica serves reads, reports the link down, keeps trying;
        # a new master on the same port (another replid) gets a full sync.
        m = self.start()
        port = m.port
        r = self.tcp_replica(port)
        mc, rc = self.connect(m), self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        pipeline(mc, [("SET", "old:%d" % i, "o") for i in range(500)])
        self.wait_caught_up(mc, [rc])
        mc.close()
        self.kill(m)
        wait_until(lambda: info(rc)["master_link_status"] == "down", 5 * SLOW, "link down")
        self.assertEqual(info(rc)["master_link_transport"], "none")
        self.assertEqual(rc.call("GET", "old:499"), b"o")
        self.assertEqual(rc.call("PING"), "PONG")
        m2 = self.start(port=port)
        mc2 = self.connect(m2)
        pipeline(mc2, [("SET", "new:%d" % i, "n") for i in range(300)])
        wait_until(lambda: info(rc)["replica_full_syncs"] == "2" and synced(rc), 10 * SLOW,
                   "the replica to reconnect to the new master")
        self.wait_caught_up(mc2, [rc])
        self.assertIsNone(rc.call("GET", "old:0"))

    def test_08_lapped_replica_is_cut_and_full_syncs(self):
        # A replica stopped for longer than a ring's worth of writes is cut by the master
        # and comes back with a full sync.
        m = self.start("--repl-ring-size", "64kb", shards=2)
        r = self.tcp_replica(m.port)
        mc, rc = self.connect(m), self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        pipeline(mc, [("SET", "pre:%d" % i, "p") for i in range(200)])
        self.wait_caught_up(mc, [rc])
        self.sigstop(r)
        try:
            val = "x" * 1000
            reps = pipeline(mc, [("SET", "big:%d" % i, val + str(i)) for i in range(1500)], 100)
            self.assertEqual(set(reps), {"OK"})
            wait_until(lambda: info(mc)["connected_slaves"] == "0", 10 * SLOW,
                       "the master to cut the lapped replica")
        finally:
            self.sigcont(r)
        wait_until(lambda: int(info(rc)["replica_full_syncs"]) >= 2 and synced(rc), 20 * SLOW,
                   "a full sync after the cut")
        self.wait_caught_up(mc, [rc])
        self.assertEqual(rc.call("GET", "big:1499"), (val + "1499").encode())
        self.assertEqual(info(mc)["sync_full"], "2")
        # Cut because it fell behind (or, if the socket buffers held it all, for its silence).
        self.assertTrue(log_lines(m, "Connection with replica .* lost: (it fell a whole log "
                                     "behind|no acknowledgement for 3 s)"),
                        log_lines(m, "Connection with replica"))


    def test_09_offsets_are_kept_while_the_link_is_down(self):
        # A replica whose master died still holds (and serves) everything it received and
        # applied; INFO keeps reporting those offsets, as Redis does (its cached master's):
        # they are what tells which replica to promote.
        m = self.start()
        r = self.tcp_replica(m.port)
        mc, rc = self.connect(m), self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        pipeline(mc, [("SET", "o:%d" % i, "v") for i in range(1000)])
        self.wait_caught_up(mc, [rc])
        moff = info(mc)["master_repl_offset"]
        mc.close()
        self.kill(m)
        wait_until(lambda: info(rc)["master_link_status"] == "down", 5 * SLOW, "link down")
        ri = info(rc)
        self.assertEqual(rc.call("DBSIZE"), 1000)
        self.assertEqual((ri["slave_repl_offset"], ri["slave_read_repl_offset"]), (moff, moff),
                         "offsets of a replica whose link is down")


class TcpNetworkNamespace(TcpCase):

    def setup_netns(self):
        """A network namespace and a veth pair: host side 10.200.N.1/24, namespace side
        10.200.N.2/24, with delay and loss on both ends (netem; where the kernel has no netem,
        a token bucket with a short queue, which delays and drops under load).  Removed at
        cleanup.  Returns (namespace, host address, namespace address, impairment)."""
        if os.geteuid() != 0:
            self.skipTest("needs root for ip netns")
        for tool in ("ip", "tc"):
            if not shutil.which(tool):
                self.skipTest("%s is not installed" % tool)
        tag = "%d%02d" % (os.getpid() % 100000, random.randrange(100))
        ns, vh, vn = "rkv%s" % tag, "rkvh%s" % tag, "rkvn%s" % tag
        rc, out = sh("ip", "netns", "add", ns)
        if rc != 0:
            self.skipTest("ip netns add failed: %s" % out)
        self.addCleanup(sh, "ip", "netns", "del", ns)
        rc, out = sh("ip", "link", "add", vh, "type", "veth", "peer", "name", vn)
        if rc != 0:
            self.skipTest("can't create a veth pair: %s" % out)
        self.addCleanup(sh, "ip", "link", "del", vh)
        _, used = sh("ip", "-o", "-4", "addr", "show")
        subnet = None
        for n in [os.getpid() % 250 + 1] + random.sample(range(1, 251), 30):
            if "10.200.%d." % n not in used:
                subnet = n
                break
        self.assertIsNotNone(subnet, "no free 10.200.N.0/24 subnet")
        host, nsaddr = "10.200.%d.1" % subnet, "10.200.%d.2" % subnet
        steps = [("ip", "link", "set", vn, "netns", ns),
                 ("ip", "addr", "add", host + "/24", "dev", vh),
                 ("ip", "link", "set", vh, "up"),
                 ("ip", "netns", "exec", ns, "ip", "addr", "add", nsaddr + "/24", "dev", vn),
                 ("ip", "netns", "exec", ns, "ip", "link", "set", vn, "up"),
                 ("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")]
        for st in steps:
            rc, out = sh(*st)
            self.assertEqual(rc, 0, "%s: %s" % (" ".join(st), out))
        impairment = None
        for qdisc in (("netem", "delay", "5ms", "1ms", "loss", "1%"),
                      ("tbf", "rate", "10mbit", "burst", "16kb", "limit", "20kb")):
            ok = True
            for pre, dev in (((), vh), (("ip", "netns", "exec", ns), vn)):
                rc, out = sh(*(pre + ("tc", "qdisc", "add", "dev", dev, "root") + qdisc))
                if rc != 0:
                    ok = False
                    sh(*(pre + ("tc", "qdisc", "del", "dev", dev, "root")))
                    break
            if ok:
                impairment = " ".join(qdisc)
                break
        if impairment is None:
            self.skipTest("neither netem nor tbf can be set on a veth: %s" % out)
        self.devs = ((), vh), (("ip", "netns", "exec", ns), vn)
        return ns, host, nsaddr, impairment

    def qdisc_drops(self):
        """Packets the two ends' qdiscs dropped so far."""
        n = 0
        for pre, dev in self.devs:
            _, out = sh(*(pre + ("tc", "-s", "qdisc", "show", "dev", dev)))
            n += sum(int(x) for x in re.findall(r"dropped (\d+)", out))
        return n

    def start_on(self, *args, host, netns=None, **kw):
        kw.setdefault("threads", 2)
        s = HostServer(*args, host=host, netns=netns, **kw)
        s.expect_rc = 0
        self.addCleanup(self._stop_checked, s)
        return s

    def retrans(self, ns=None):
        """TCP segments retransmitted in namespace ns, or on the host (/proc/net/snmp)."""
        pre = ("ip", "netns", "exec", ns) if ns else ()
        rc, out = sh(*(pre + ("cat", "/proc/net/snmp")))
        lines = [ln.split() for ln in out.splitlines() if ln.startswith("Tcp:")]
        if rc != 0 or len(lines) < 2:
            return -1
        return int(dict(zip(lines[0], lines[1]))["RetransSegs"])

    def test_replica_behind_a_slow_lossy_link_converges(self):
        ns, host, nsaddr, impairment = self.setup_netns()
        m = self.start_on(host=host)
        mc = self.connect(m)
        pipeline(mc, [("SET", "pre:%d" % i, "v" * 200) for i in range(5000)], 1000)
        r = self.start_on(*tcp_args(m.port, host), host=nsaddr, netns=ns)
        rc = self.connect(r, timeout=20)
        self.assertEqual(os.path.realpath("/proc/%d/exe" % r.pid), os.path.realpath(server_path()),
                         "ip netns exec did not exec the server")
        rx0, hx0, d0 = self.retrans(ns), self.retrans(), self.qdisc_drops()
        rng = random.Random(501)
        for b in range(20):
            pipeline(mc, mixed_load(rng, "l", 1000, 3000)
                     + [("SET", "big:%d" % b, "z" * rng.randrange(1000, 20000))], 500)
            time.sleep(0.05)
        self.wait_synced(rc, 30 * SLOW)
        self.wait_caught_up(mc, [rc], 60)
        mi, ri = info(mc), info(rc)
        self.assertIn("ip=%s" % nsaddr, mi["slave0"])
        self.assertIn("transport=tcp", mi["slave0"])
        self.assertEqual(ri["master_link_transport"], "tcp")
        self.assertEqual(ri["master_host"], host)
        rx, hx, d = self.retrans(ns), self.retrans(), self.qdisc_drops()
        print("\n    netns link (%s): %d packets dropped by the qdiscs, TCP segments "
              "retransmitted: %d on the host side, %d in the namespace; master sync_full %s, "
              "sync_partial_ok %s, zero-copy sends %s" % (
                  impairment, d - d0, hx - hx0, rx - rx0, mi["sync_full"],
                  mi["sync_partial_ok"], mi["repl_zerocopy_sends"]), flush=True)
        # The link was impaired: packets were dropped, or segments resent.
        self.assertGreater((d - d0) + (hx - hx0) + (rx - rx0), 0,
                           "the %s link dropped and resent nothing" % impairment)
        # Not loopback: large batches (the full sync's) go out by IORING_OP_SENDMSG_ZC.
        self.assertGreater(int(mi["repl_zerocopy_sends"]), 0)


class TcpGarbage(TcpCase):
    """Garbage on the replication socket, each direction: the receiver drops the link and
    stays up."""

    NSH, RING = 4, 65536

    def test_fake_master_sends_garbage_and_truncated_frames(self):
        # Four fake masters, each with its own replica (in parallel: a replica backs off
        # 100 ms, 200 ms, 400 ms... between links that did not live).  Each fake master answers
        # the replica's successive PSYNCs with +FULLRESYNC and one bad stream each; the last
        # group ends with a control: the same SET frame as the bad ones, valid, is applied.
        rng = random.Random(601)
        KEY, VAL = b"fake-key", b"fake-value"

        def then_wait(payload, close_ourselves=False):
            def run(c, args, rest):
                c.sendall(b"+FULLRESYNC %s\r\n" % FakeMaster.REPLID.encode())
                c.sendall(payload)
                if close_ourselves:
                    c.shutdown(socket.SHUT_WR)
                    return ("closed by us", None)
                return ("closed by the replica after", wait_closed_by_peer(c, 2.5 * SLOW))
            return run

        reset0 = wire(W_RESET, 0, 0)
        good = set_frame(0, KEY, VAL)
        groups = [
            [  # random bytes; a DATA header with a huge length; a truncated frame, then EOF;
               # half a header, then EOF
                then_wait(bytes(rng.randrange(256) for _ in range(4096))),
                then_wait(reset0 + wire(W_DATA, 0, 0, 0xFFFFFFF0) + b"x" * 100),
                then_wait(reset0 + wire(W_DATA, 0, 0, len(good)) + good[:20],
                          close_ourselves=True),
                then_wait(reset0 + wire(W_DATA, 0, 0, 64)[:11], close_ourselves=True),
            ],
            [  # a bad magic; an unknown type; a shard out of range; DATA before RESET
                then_wait(reset0 + struct.pack("<IB3xQII", 0x12345678, W_DATA, 0, 0, 16)
                          + b"y" * 16),
                then_wait(reset0 + wire(99, 0, 0, 0)),
                then_wait(wire(W_RESET, self.NSH, 0)),
                then_wait(wire(W_DATA, 1, 0, len(good)) + good),
            ],
            [  # COMMIT past what was received; DATA at an unaligned position; DATA that wraps
               # the ring; a second RESET of a shard
                then_wait(reset0 + wire(W_COMMIT, 0, 4096)),
                then_wait(reset0 + wire(W_DATA, 0, 0, 16) + b"\0" * 16 + wire(W_DATA, 0, 24, 16)),
                then_wait(wire(W_RESET, 0, self.RING - 32) + wire(W_DATA, 0, self.RING - 32, 64)),
                then_wait(reset0 + reset0),
            ],
            [  # committed frames that fail their checks: a wrong pos stamp, bad SET lengths,
               # one value byte changed (only the frame's check finds it); then the control
                then_wait(reset0 + wire(W_DATA, 0, 0, len(good))
                          + set_frame(0, KEY, VAL, stamp=16) + wire(W_COMMIT, 0, len(good))),
                then_wait(reset0 + wire(W_DATA, 0, 0, len(good))
                          + good[:32 + len(KEY)] + bytes([good[32 + len(KEY)] ^ 1])
                          + good[33 + len(KEY):] + wire(W_COMMIT, 0, len(good))),
                then_wait(reset0 + wire(W_DATA, 0, 0, len(good))
                          + good[:16] + RING_SET_HDR.pack(-1, 200, 3) + good[32:]
                          + wire(W_COMMIT, 0, len(good))),
                then_wait(reset0 + wire(W_DATA, 0, 0, len(good)) + good
                          + wire(W_COMMIT, 0, len(good)) + wire(W_PING)
                          + bytes(rng.randrange(256) for _ in range(64))),
            ],
        ]
        nbad = [len(g) for g in groups]
        nbad[-1] -= 1  # the control
        fakes, reps, conns = [], [], []
        for g in groups:
            fake = FakeMaster(self.NSH, self.RING, g)
            self.addCleanup(fake.stop)
            r = self.tcp_replica(fake.port, "--repl-ring-size", "64kb", shards=self.NSH)
            fakes.append(fake)
            reps.append(r)
            conns.append(self.connect(r))
        dbsizes = []
        deadline = time.monotonic() + 30 * SLOW
        for _ in range(3000):
            served = [len(f.results) for f in fakes]
            if all(n >= k for n, k in zip(served, nbad)) or time.monotonic() > deadline:
                break
            for i, (r, c) in enumerate(zip(reps, conns)):
                self.assertTrue(r.alive(), "replica %d died: %s" % (i, r.sanitizer_report()))
                if served[i] < nbad[i]:
                    dbsizes.append(c.call("DBSIZE"))
            time.sleep(0.02)
        served = [len(f.results) for f in fakes]
        self.assertTrue(all(n >= k for n, k in zip(served, nbad)),
                        "the replicas stopped retrying: served %s of %s" % (served, nbad))
        self.assertEqual(set(dbsizes), {0}, "something of an invalid stream was applied")
        for gi, f in enumerate(fakes):
            for si, (how, took) in enumerate(f.results[:nbad[gi]]):
                if how.startswith("closed by the replica"):
                    self.assertIsNotNone(took, "group %d scenario %d: the replica kept the "
                                         "connection open" % (gi, si))
        # After the last scenario every PSYNC gets -ERR: the replicas go on trying.
        wait_until(lambda: all(f.refused >= 2 for f in fakes), 15 * SLOW,
                   "the replicas to retry after the end")
        self.assertEqual([len(f.results) for f in fakes], [len(g) for g in groups])
        for i, (r, c) in enumerate(zip(reps, conns)):
            self.assertTrue(r.alive())
            self.assertEqual(c.call("PING"), "PONG")
            ri = info(c)
            self.assertEqual((ri["role"], ri["master_link_status"]), ("slave", "down"))
            self.assertEqual(c.call("DBSIZE"), 1 if i == len(groups) - 1 else 0,
                             "replica %d: the control frame (only) is applied" % i)
            for a in fakes[i].psyncs:
                self.assertEqual(len(a), 5 + self.NSH, a)
                self.assertEqual(a[2:5], [b"%d" % self.NSH, b"%d" % self.RING, b"%d" % r.port])
        reasons = sum((log_lines(r, "Connection with master lost") for r in reps), [])
        for want in ("garbage", "does not follow", "not whole, valid frames", "unknown message",
                     "unexpected RESET"):
            self.assertTrue(any(want in ln for ln in reasons), "no %r in %s" % (want, reasons))

    def test_fake_replica_sends_garbage_instead_of_acks(self):
        m = self.start(shards=self.NSH)
        mc = self.connect(m)
        pipeline(mc, [("SET", "g:%d" % i, "v%d" % i) for i in range(2000)], 1000)
        ring = 1 << 20

        def psync(replid="?", pos=None, nsh=None, ring_size=ring):
            s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            nsh = self.NSH if nsh is None else nsh
            pos = pos or [0] * nsh
            s.sendall(resp("RINGKV.PSYNC", replid, nsh, ring_size, 1, *pos))
            line = b""
            while not line.endswith(b"\r\n") and len(line) < 200:
                ch = s.recv(1)
                if not ch:
                    break
                line += ch
            return s, line

        # Refused requests: another shard count, another ring size.
        for kw in ({"nsh": 8}, {"ring_size": 65536}):
            s, line = psync(**kw)
            self.assertTrue(line.startswith(b"-ERR"), (kw, line))
            s.close()
        self.assertEqual(info(mc)["connected_slaves"], "0")

        def ack(rcv, app, nsh=self.NSH, length=None):
            body = b"".join(struct.pack("<QQ", a, b) for a, b in zip(rcv, app))
            return wire(W_ACK, nsh, 0, 16 * nsh if length is None else length) + body

        zeros = [0] * self.NSH
        cases = [
            ("random bytes", bytes(random.Random(602).randrange(256) for _ in range(512))),
            ("an ACK with the wrong shard count", ack(zeros, zeros, nsh=2)),
            ("an ACK with the wrong length", ack(zeros, zeros, length=8)),
            ("an ACK past what was sent", ack([1 << 40] * self.NSH, zeros)),
            ("an ACK with applied > received", ack(zeros, [16] * self.NSH)),
            ("another message type", wire(W_DATA, 0, 0, 0)),
            ("a bad magic", b"\0" * 24 + b"\0" * 16 * self.NSH),
        ]
        for what, payload in cases:
            s, line = psync()
            try:
                self.assertTrue(line.startswith(b"+FULLRESYNC "), (what, line))
                wait_until(lambda: info(mc)["connected_slaves"] == "1", 5 * SLOW,
                           "the fake replica to count (%s)" % what)
                s.sendall(payload)
                took = wait_closed_by_peer(s, 2.5 * SLOW)
                self.assertIsNotNone(took, "the master kept a replica that sent %s" % what)
            finally:
                s.close()
            wait_until(lambda: info(mc)["connected_slaves"] == "0", 5 * SLOW,
                       "the master to drop the replica that sent %s" % what)
            self.assertEqual(mc.call("PING"), "PONG")
        # A truncated ACK, then the fake replica goes away.
        s, line = psync()
        self.assertTrue(line.startswith(b"+FULLRESYNC "), line)
        s.sendall(ack(zeros, zeros)[:30])
        s.close()
        wait_until(lambda: info(mc)["connected_slaves"] == "0", 5 * SLOW, "the slot freed")
        # A PSYNC with a made-up id is a full resync, counted as a refused partial.
        err_before = int(info(mc)["sync_partial_err"])
        s, line = psync(replid="a" * 40, pos=[16] * self.NSH)
        self.assertTrue(line.startswith(b"+FULLRESYNC "), line)
        s.close()
        self.assertEqual(int(info(mc)["sync_partial_err"]), err_before + 1)
        wait_until(lambda: info(mc)["connected_slaves"] == "0", 5 * SLOW, "the slot freed")
        # A silent replica is cut after its acknowledgements stop (3 s).
        s, line = psync()
        try:
            self.assertTrue(line.startswith(b"+FULLRESYNC "), line)
            took = wait_closed_by_peer(s, 6 * SLOW)
            self.assertIsNotNone(took, "the master kept a replica that never acknowledged")
        finally:
            s.close()
        wait_until(lambda: info(mc)["connected_slaves"] == "0", 5 * SLOW, "the slot freed")
        # The master is fine: writes, and a real replica syncs.
        self.assertEqual(mc.call("SET", "after", "1"), "OK")
        r = self.tcp_replica(m.port)
        rc = self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        self.wait_caught_up(mc, [rc])
        reasons = log_lines(m, "Connection with replica")
        for want in ("garbage from the replica", "past what was sent",
                     "no acknowledgement for 3 s"):
            self.assertTrue(any(want in ln for ln in reasons), "no %r in %s" % (want, reasons))


# ---- FAILOVER ----------------------------------------------------------------------------------


class FakeReplica:
    """A replica speaking the TCP protocol on a thread: RINGKV.PSYNC for a full sync, then it
    reads the stream and every 20 ms acknowledges, as received and applied, everything sent
    on the shards in self.covered, and only where each shard began on the others.  So the
    master sees a replica that holds some shards' writes and not the others'.  Bounded by
    stop() (and a 60 s cap)."""

    def __init__(self, port, nshards, covered, delay_s=0.0, listen_port=1):
        self.covered = set(covered)
        self.delay_s = delay_s  # acknowledge what it had received this long ago
        self.cap = None         # acknowledge no position past this one (one shard's log)
        self.nsh = nshards
        self.base = [0] * nshards
        self.sent = [0] * nshards
        self.error = None
        self.stopping = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(resp("RINGKV.PSYNC", "?", nshards, 1 << 20, listen_port,
                               *([0] * nshards)))
        line = b""
        while not line.endswith(b"\r\n") and len(line) < 200:
            ch = self.sock.recv(1)
            if not ch:
                break
            line += ch
        if not line.startswith(b"+FULLRESYNC"):
            raise AssertionError("PSYNC answered %r" % line)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        self.sock.settimeout(0.02)
        t_end = time.monotonic() + 60
        seen = collections.deque()  # (time, sent positions then), for delay_s
        try:
            while not self.stopping.is_set() and time.monotonic() < t_end:
                try:
                    d = self.sock.recv(1 << 20)
                    if not d:
                        return
                    buf += d
                except socket.timeout:
                    pass
                while len(buf) >= WIRE.size:
                    _, typ, pos, sh, ln = WIRE.unpack_from(buf)
                    body = ln if typ == W_DATA else 0
                    if len(buf) < WIRE.size + body:
                        break
                    if typ == W_RESET:
                        self.base[sh] = self.sent[sh] = pos
                    elif typ == W_DATA:
                        self.sent[sh] = pos + ln
                    buf = buf[WIRE.size + body:]
                now = time.monotonic()
                seen.append((now, list(self.sent)))
                sent = self.base
                while seen and seen[0][0] <= now - self.delay_s:
                    sent = seen.popleft()[1]
                    if not seen or seen[0][0] > now - self.delay_s:
                        seen.appendleft((now - self.delay_s, sent))
                        break
                acks = [sent[k] if k in self.covered else self.base[k]
                        for k in range(self.nsh)]
                if self.cap is not None:
                    acks = [min(a, self.cap) for a in acks]
                body = b"".join(struct.pack("<QQ", a, a) for a in acks)
                self.sock.sendall(wire(W_ACK, self.nsh, 0, 16 * self.nsh) + body)
        except OSError as e:
            if not self.stopping.is_set():
                self.error = e

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


class SameReplicasForEveryPart(TcpCase):
    """A write's parts on several shards, and WAIT, count only replicas that hold every part:
    two replicas that each hold one shard's part are no replica that holds the write."""

    NSH = 2

    def setUp(self):
        super().setUp()
        self.m = self.start(shards=self.NSH, threads=1)
        self.mc = self.connect(self.m)
        # Two fake replicas: one acknowledges shard 0 only, the other shard 1 only.
        self.fakes = [FakeReplica(self.m.port, self.NSH, {k}) for k in range(self.NSH)]
        for f in self.fakes:
            self.addCleanup(f.stop)
        wait_until(lambda: info(self.mc).get("connected_slaves") == "2", 5 * SLOW,
                   "both fake replicas attached")
        # Writes on both shards (20 keys cover two shards), then each fake has caught up
        # with its own shard.
        pipeline(self.mc, [("SET", "w:%d" % i, "v") for i in range(20)], 20)
        wait_until(lambda: all(f.sent[k] > f.base[k] for k, f in enumerate(self.fakes)),
                   5 * SLOW, "each fake replica received its shard's writes")

    def mset(self):
        t0 = time.monotonic()
        rep = self.mc.call("MSET", *[x for i in range(20) for x in ("m:%d" % i, "x")])
        return rep, time.monotonic() - t0

    def test_wait_counts_replicas_holding_every_shard(self):
        t0 = time.monotonic()
        self.assertEqual(self.mc.call("WAIT", "1", "300"), 0)
        self.assertGreaterEqual(time.monotonic() - t0, 0.25, "WAIT 1 300 did not wait")
        self.assertEqual(self.mc.call("WAIT", "0", "0"), 0)
        # Once one fake holds both shards, it counts, and WAIT answers as soon as it does.
        self.fakes[0].covered = {0, 1}
        t0 = time.monotonic()
        self.assertEqual(self.mc.call("WAIT", "1", "0"), 1)
        self.assertLess(time.monotonic() - t0, 5 * SLOW)
        self.assertEqual(self.mc.call("WAIT", "2", "200"), 1)

    def test_sync_write_on_two_shards_needs_one_replica_holding_both(self):
        for mode in ("sync", "semi"):
            self.mc.call("CONFIG", "SET", "sync-mode", mode)
            self.mc.call("CONFIG", "SET", "sync-timeout", "400")
            self.mc.call("CONFIG", "SET", "sync-fallback", "async")
            before = int(info(self.mc)["sync_timeouts"])
            rep, secs = self.mset()
            self.assertEqual(rep, "OK")
            self.assertGreaterEqual(secs, 0.35, "%s: MSET was not held until sync-timeout" % mode)
            self.assertEqual(int(info(self.mc)["sync_timeouts"]), before + 1, mode)
            self.mc.call("CONFIG", "SET", "sync-fallback", "error")
            rep, secs = self.mset()
            self.assertIsInstance(rep, Error)
            self.assertTrue(rep.startswith("NOREPL"), rep)
            self.assertEqual(int(info(self.mc)["sync_timeouts"]), before + 2, mode)
            # A DEL of keys on both shards too: the error, not a count.
            rep = self.mc.call("DEL", *["m:%d" % i for i in range(20)])
            self.assertIsInstance(rep, Error)
            self.assertTrue(rep.startswith("NOREPL"), rep)
        # One replica holding both shards: confirmed at once, nothing timed out.
        self.fakes[1].covered = {0, 1}
        before = int(info(self.mc)["sync_timeouts"])
        rep, secs = self.mset()
        self.assertEqual(rep, "OK")
        self.assertLess(secs, 0.35 * SLOW)
        self.assertEqual(int(info(self.mc)["sync_timeouts"]), before)
        for f in self.fakes:
            self.assertIsNone(f.error)


class ReconnectBackoff(TcpCase):
    """A replica whose master hangs up on it at once tries again after 100 ms, then twice as
    long each time, up to 2 s (net/repl_replica.c), on the main thread's 100 ms tick."""

    def test_reconnects_back_off_exponentially(self):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        ls.settimeout(0.05)
        self.addCleanup(ls.close)
        times = []
        r = self.tcp_replica(ls.getsockname()[1])
        rc = self.connect(r)
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end and len(times) < 9:  # bounded in time and count
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            times.append(time.monotonic())
            c.close()
        # The first two connections come together: the start-up's question (RINGKV.SHMINFO,
        # for the shard count) and the first attach.
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        self.assertGreaterEqual(len(gaps), 6, "attempts at %s" % times)
        # 100, 200, 400, 800, 1600, then 2000 ms, each give or take a tick (and the
        # attempt's own time).
        want = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
        for i, g in enumerate(gaps):
            self.assertGreater(g, want[i] - 0.06, "gaps %s" % gaps)
            self.assertLess(g, want[i] + 0.35 * SLOW, "gaps %s" % gaps)
        self.assertEqual(info(rc)["master_link_status"], "down")


class WaitBehindQueuedCommands(TcpCase):
    """WAIT counts the writes of the commands before it on its connection, even those still
    waiting in a shard's queue when the WAIT arrives (sync mode: an INCR queued behind a held
    SET)."""

    def test_wait_after_a_queued_incr_counts_the_incr(self):
        m = self.start(shards=1, threads=1)
        mc = self.connect(m)
        fake = FakeReplica(m.port, 1, {0})
        self.addCleanup(fake.stop)
        wait_until(lambda: "state=online" in info(mc).get("slave0", ""), 5 * SLOW,
                   "the fake replica online")
        for k, v in (("sync-mode", "sync"), ("sync-timeout", "1000"), ("sync-fallback", "async")):
            self.assertEqual(mc.call("CONFIG", "SET", k, v), "OK")
        self.assertEqual(mc.call("SET", "k", "1"), "OK")
        off = int(info(mc)["master_repl_offset"])
        # One shard: the offset is its log's end.  "SET k 2" is one 48-byte frame (16-byte
        # header, 16-byte SET header, key and value, padded to 16); the replica holds it and
        # nothing after.
        fake.cap = off + 48
        before = int(info(mc)["sync_timeouts"])
        t0 = time.monotonic()
        mc.send(resp("SET", "k", "2") + resp("INCR", "k") + resp("WAIT", "1", "3000"))
        self.assertEqual(parse(mc.read_reply()), "OK")
        self.assertEqual(parse(mc.read_reply()), 3)  # at sync-timeout, by the fallback
        # The INCR's write is past what the replica holds: WAIT waits out its timeout and
        # answers 0.  (Taking the log's end when it arrived, before the INCR had run, it
        # answered 1.)
        self.assertEqual(parse(mc.read_reply()), 0)
        self.assertGreaterEqual(time.monotonic() - t0, 2.9)
        self.assertEqual(int(info(mc)["sync_timeouts"]), before + 1)
        self.assertIsNone(fake.error)


class LagOfAReplicaAlwaysBehind(TcpCase):
    """INFO's lag_us is the age of the oldest write a replica has not applied: for a replica
    that stays 300 ms behind a steady stream of writes, about 300 ms, however long the stream
    lasts (not the time since it was last seen fully caught up, which grows with the stream)."""

    def test_lag_us_of_a_replica_300_ms_behind(self):
        m = self.start(shards=2, threads=1)
        mc = self.connect(m)
        fake = FakeReplica(m.port, 2, {0, 1}, delay_s=0.3)
        self.addCleanup(fake.stop)
        wait_until(lambda: info(mc).get("connected_slaves") == "1", 5 * SLOW, "attached")
        lags = []
        t_end = time.monotonic() + 2.5
        for i in range(5000):  # bounded: 2.5 s of writes, one every 5 ms
            if time.monotonic() > t_end:
                break
            self.assertEqual(mc.call("SET", "k:%d" % (i % 100), "v"), "OK")
            if i % 40 == 39:
                lags.append(int(parse_slave(info(mc)["slave0"])["lag_us"]))
            time.sleep(0.005)
        self.assertIsNone(fake.error)
        late = sorted(lags[len(lags) // 2:])  # the second half of the stream
        self.assertGreater(len(late), 3, lags)
        median = late[len(late) // 2]
        self.assertGreater(median, 150000, "lag_us samples: %s" % lags)
        self.assertLess(median, 1000000, "lag_us samples: %s" % lags)


class FailoverTests(TcpCase):
    """FAILOVER [TO host port] [TIMEOUT ms] [FORCE] and FAILOVER ABORT, as in Redis: skipped
    while the server answers "unknown command"."""

    def failover_abort(self, conn):
        """FAILOVER ABORT with nothing in progress: the error Redis gives."""
        rep = conn.call("FAILOVER", "ABORT")
        self.assertEqual(rep, "ERR No failover in progress.")
        return rep

    def pair(self):
        m = self.start()
        r = self.tcp_replica(m.port)
        mc, rc = self.connect(m), self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        # The master counts it online once an ACK says the walk is applied (up to ~250 ms
        # after the replica itself says its sync is done); FAILOVER picks only online ones.
        wait_until(lambda: "state=online" in info(mc).get("slave0", ""), 5 * SLOW,
                   "the replica online on the master")
        return m, r, mc, rc

    def test_errors(self):
        m = self.start()
        mc = self.connect(m)
        rep = self.failover_abort(mc)
        self.assertEqual(rep, "ERR No failover in progress.")
        self.assertEqual(mc.call("FAILOVER"), "ERR FAILOVER requires connected replicas.")
        self.assertEqual(info(mc)["master_failover_state"], "no-failover")
        self.assertEqual(mc.call("SET", "k", "v"), "OK")

    def test_failover_with_only_a_syncing_replica_is_not_silently_dropped(self):
        # A replica that is connected but still in its full sync (a fake one that never
        # acknowledges: state=wait_bgsave).  FAILOVER must either refuse with an error or
        # visibly try (waiting-for-sync, then roll back at its TIMEOUT); answering +OK and
        # then doing nothing leaves the client believing a switchover is under way.
        m = self.start(shards=4)
        mc = self.connect(m)
        self.failover_abort(mc)
        s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(resp("RINGKV.PSYNC", "?", 4, 1 << 20, 1, 0, 0, 0, 0))
        self.assertEqual(s.recv(12), b"+FULLRESYNC ")
        wait_until(lambda: "state=wait_bgsave" in info(mc).get("slave0", ""), 2 * SLOW,
                   "the fake replica counted, syncing")
        rep = mc.call("FAILOVER", "TIMEOUT", "1000")
        if rep != "OK":
            self.assertIsInstance(rep, Error)
            return
        states = set()
        t_end = time.monotonic() + 0.8
        for _ in range(400):
            states.add(info(mc)["master_failover_state"])
            if time.monotonic() > t_end:
                break
            time.sleep(0.005)
        self.assertIn("waiting-for-sync", states,
                      "FAILOVER answered +OK but no failover ran (states seen: %s; log: %s)"
                      % (sorted(states), log_lines(m, "FAILOVER")))
        wait_until(lambda: info(mc)["master_failover_state"] == "no-failover", 5 * SLOW,
                   "the rollback at TIMEOUT")
        self.assertEqual(mc.call("SET", "after", "1"), "OK")

    def test_switchover_under_light_load(self):
        m, r, mc, rc = self.pair()
        self.failover_abort(mc)
        pipeline(mc, [("SET", "pre:%d" % i, "p") for i in range(3000)], 1000)
        self.wait_caught_up(mc, [rc])
        old_id = info(mc)["master_replid"]
        stop = threading.Event()
        acked, errors, moved = {}, [], []

        def writer():
            target = m
            c = Conn(m.port, timeout=10)
            try:
                for i in range(20000):  # bounded; stopped by the event
                    if stop.is_set():
                        break
                    k, v = "f:%d" % i, "v%d" % i
                    rep = c.call("SET", k, v)
                    if rep == "OK":
                        acked[k] = v
                    else:
                        errors.append(rep)
                        if isinstance(rep, Error) and rep.startswith("READONLY") and \
                                target is m:
                            # The client follows the switchover to the new master.
                            c.close()
                            target = r
                            c = Conn(r.port, timeout=10)
                            moved.append(i)
                    time.sleep(0.003)
            except Exception as e:  # reported below
                errors.append(repr(e))
            finally:
                c.close()

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        states = []
        try:
            time.sleep(0.3)
            self.assertEqual(mc.call("FAILOVER", "TO", "127.0.0.1", str(r.port),
                                     "TIMEOUT", "5000"), "OK")

            def done():
                st = info(mc).get("master_failover_state")
                if not states or states[-1] != st:
                    states.append(st)
                return info(rc)["role"] == "master" and info(mc)["role"] == "slave"
            wait_until(done, 10 * SLOW, "the switchover", interval=0.005)
            wait_until(lambda: moved or not t.is_alive(), 5 * SLOW,
                       "the writer to see READONLY on the old master")
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(20)
        self.assertFalse(t.is_alive())
        bad = [e for e in errors if not (isinstance(e, Error) and
                                         (e.startswith("TRYAGAIN") or e.startswith("READONLY")))]
        self.assertEqual(bad, [], "unexpected errors during the switchover")
        wait_until(lambda: info(mc)["master_failover_state"] == "no-failover", 5 * SLOW,
                   "master_failover_state:no-failover (seen: %s)" % states)
        self.assertTrue(set(states) <= {"no-failover", "waiting-for-sync",
                                        "failover-in-progress", None}, states)
        ri = info(rc)
        self.assertEqual(ri["role"], "master")
        self.assertEqual(ri["master_replid2"], old_id)
        self.wait_synced(mc, 10 * SLOW)
        mi = info(mc)
        self.assertEqual((mi["master_host"], mi["master_port"]), ("127.0.0.1", str(r.port)))
        self.assertEqual(mi["master_link_transport"], "tcp")
        self.assertGreaterEqual(int(mi["replica_partial_syncs"]), 1,
                                "the old master should continue with a partial resync")
        self.assertGreaterEqual(int(info(rc)["sync_partial_ok"]), 1)
        self.assertIsInstance(mc.call("SET", "x", "1"), Error)
        self.assertEqual(rc.call("SET", "on-new-master", "1"), "OK")
        self.wait_caught_up(rc, [mc])
        keys = sorted(acked)
        self.assertGreater(len(keys), 0)
        lost = []
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            for k, got in zip(part, rc.call("MGET", *part)):
                if got != acked[k].encode():
                    lost.append((k, got))
        self.assertEqual(lost, [], "acknowledged writes lost by the switchover")

    def test_failover_already_in_progress_and_abort(self):
        m, r, mc, rc = self.pair()
        self.failover_abort(mc)
        self.sigstop(r)
        try:
            # A write the stopped replica has not got: the switchover waits for it.
            self.assertEqual(mc.call("SET", "unsynced", "1"), "OK")
            self.assertEqual(mc.call("FAILOVER", "TIMEOUT", "5000"), "OK")
            self.assertEqual(mc.call("FAILOVER"), "ERR FAILOVER already in progress.")
            wait_until(lambda: info(mc)["master_failover_state"] == "waiting-for-sync",
                       2 * SLOW, "master_failover_state:waiting-for-sync")
            self.assertEqual(mc.call("FAILOVER"), "ERR FAILOVER already in progress.")
            rep = mc.call("SET", "paused", "1")
            self.assertIsInstance(rep, Error)
            self.assertTrue(rep.startswith("TRYAGAIN"), rep)
            self.assertEqual(mc.call("GET", "paused"), None, "reads go on during the pause")
            self.assertEqual(mc.call("FAILOVER", "ABORT"), "OK")
            wait_until(lambda: info(mc)["master_failover_state"] == "no-failover", 5 * SLOW,
                       "no-failover after ABORT")
            self.assertEqual(info(mc)["role"], "master")
            self.assertEqual(mc.call("SET", "after-abort", "1"), "OK")
        finally:
            self.sigcont(r)
        self.wait_synced(rc, 10 * SLOW)
        self.wait_caught_up(mc, [rc])
        self.assertEqual(info(rc)["role"], "slave")

    def test_failover_to_a_stopped_replica_rolls_back(self):
        m, r, mc, rc = self.pair()
        self.failover_abort(mc)
        pipeline(mc, [("SET", "pre:%d" % i, "p") for i in range(500)])
        self.wait_caught_up(mc, [rc])
        self.sigstop(r)
        try:
            # A write the stopped replica has not got: the target can't catch up.
            self.assertEqual(mc.call("SET", "unsynced", "1"), "OK")
            t0 = time.monotonic()
            self.assertEqual(mc.call("FAILOVER", "TO", "127.0.0.1", str(r.port),
                                     "TIMEOUT", "500"), "OK")
            # The request is taken up by the main thread's next tick (within ~100 ms).
            wait_until(lambda: info(mc)["master_failover_state"] == "waiting-for-sync",
                       1 * SLOW, "master_failover_state:waiting-for-sync", interval=0.005)
            other = self.connect(m)
            rep = other.call("SET", "during", "x")
            self.assertIsInstance(rep, Error)
            self.assertTrue(rep.startswith("TRYAGAIN"), rep)
            wait_until(lambda: info(mc)["master_failover_state"] == "no-failover", 5 * SLOW,
                       "the switchover to roll back", interval=0.005)
            took = time.monotonic() - t0
            self.assertGreaterEqual(took, 0.45, "rolled back before its TIMEOUT")
            self.assertLess(took, 0.5 + 1.0 * SLOW, "rolled back long after its TIMEOUT")
            self.assertEqual(info(mc)["role"], "master")
            self.assertEqual(mc.call("SET", "after-rollback", "1"), "OK")
            self.assertIsNone(mc.call("GET", "during"))
            self.assertIn("rolled back", "\n".join(log_lines(m, "FAILOVER")))
        finally:
            self.sigcont(r)
        self.wait_synced(rc, 10 * SLOW)
        self.wait_caught_up(mc, [rc])
        self.assertEqual(info(rc)["role"], "slave")
        self.assertEqual(rc.call("GET", "after-rollback"), b"1")

    def test_failover_force_hands_over_to_a_replica_behind_at_timeout(self):
        m = self.start()
        mc = self.connect(m)
        px = self.proxy(m.port)
        r = self.tcp_replica(px.port)
        rc = self.connect(r)
        self.wait_synced(rc, 20 * SLOW)
        wait_until(lambda: "state=online" in info(mc).get("slave0", ""), 5 * SLOW,
                   "the replica online on the master")
        pipeline(mc, [("SET", "pre:%d" % i, "p") for i in range(500)])
        self.wait_caught_up(mc, [rc])
        px.hold = True  # the link stays up, but the replica gets nothing more
        try:
            self.assertEqual(mc.call("SET", "unsynced", "1"), "OK")
            t0 = time.monotonic()
            self.assertEqual(mc.call("FAILOVER", "TO", "127.0.0.1", str(r.port), "TIMEOUT",
                                     "500", "FORCE"), "OK")
            wait_until(lambda: info(rc)["role"] == "master", 5 * SLOW,
                       "the replica promoted at the TIMEOUT, FORCE")
            self.assertGreaterEqual(time.monotonic() - t0, 0.45, "handed over before TIMEOUT")
            wait_until(lambda: info(mc)["role"] == "slave", 5 * SLOW,
                       "the old master a replica of the new one")
        finally:
            px.hold = False
        self.assertIn("FORCE", "\n".join(log_lines(m, "FAILOVER")))
        # What the target had not got is lost, as FORCE says; the rest is there, and the old
        # master follows the new one.
        self.assertIsNone(rc.call("GET", "unsynced"))
        self.assertEqual(rc.call("GET", "pre:499"), b"p")
        self.assertEqual(rc.call("SET", "on-new-master", "1"), "OK")
        wait_until(lambda: mc.call("GET", "on-new-master") == b"1", 10 * SLOW,
                   "the old master to follow the new one")
        self.wait_equal(rc, [mc])

    def test_failover_rolls_back_when_the_target_refuses(self):
        # A fake replica, caught up, whose "server" answers every command with an error: the
        # switchover can't promote it and rolls back.
        m = self.start(shards=2, threads=1)
        mc = self.connect(m)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        ls.settimeout(0.1)
        self.addCleanup(ls.close)
        stop = threading.Event()
        asked = []

        def refuse():
            t_end = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < t_end:
                try:
                    c, _ = ls.accept()
                except (socket.timeout, OSError):
                    continue
                c.settimeout(2)
                try:
                    data = c.recv(4096)
                    asked.append(data)
                    c.sendall(b"-ERR refused by the test\r\n" * max(1, data.count(b"*")))
                    time.sleep(0.2)
                except OSError:
                    pass
                finally:
                    c.close()

        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        self.addCleanup(lambda: (stop.set(), t.join(5)))
        fake = FakeReplica(m.port, 2, {0, 1}, listen_port=ls.getsockname()[1])
        self.addCleanup(fake.stop)
        self.assertEqual(mc.call("SET", "k", "v"), "OK")
        wait_until(lambda: "state=online" in info(mc).get("slave0", ""), 5 * SLOW,
                   "the fake replica online")
        self.assertEqual(mc.call("FAILOVER", "TO", "127.0.0.1", str(ls.getsockname()[1]),
                                 "TIMEOUT", "3000"), "OK")
        wait_until(lambda: any(b"NO" in a.upper() for a in asked), 5 * SLOW,
                   "REPLICAOF NO ONE sent to the target")
        wait_until(lambda: info(mc)["master_failover_state"] == "no-failover", 5 * SLOW,
                   "the switchover to roll back")
        self.assertEqual(info(mc)["role"], "master")
        self.assertEqual(mc.call("SET", "after", "1"), "OK")
        self.assertIn("rolled back", "\n".join(log_lines(m, "FAILOVER")))
        self.assertIsNone(fake.error)


if __name__ == "__main__":
    unittest.main()
