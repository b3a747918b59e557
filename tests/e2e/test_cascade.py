"""
Cascading replicas, end to end: a TCP replica with replicas of its own, over TCP and through
shared memory, two levels deep, synced from nothing while the top master takes writes; the
same chain after the top master is gone and the middle replica is promoted; and a replica's
replica that continues with a partial resync when repointed at the top master (positions
mean the same all the way down).

Every server runs on 127.0.0.1 and a free port and is stopped by its pid at cleanup; every
wait polls with a deadline.
"""

import random
import threading
import time

from harness import Conn, is_sanitized
from test_replication import ReplicationCase, info, pipeline, wait_until

# Sanitized builds are several times slower, and each level's full sync waits for the one above.
SYNC_TIMEOUT = 90 if is_sanitized() else 30


def tcp(master):
    return ("--replicaof", "127.0.0.1", str(master.port), "--repl-transport", "tcp")


class Cascade(ReplicationCase):
    def load(self, conn, prefix, n, seed):
        rng = random.Random(seed)
        cmds = []
        for i in range(n):
            k = "%s:%d" % (prefix, rng.randrange(n // 2 + 1))
            if rng.random() < 0.1:
                cmds.append(("DEL", k))
            else:
                cmds.append(("SET", k, "v%d-%d" % (i, rng.randrange(1 << 30))))
        pipeline(conn, cmds)

    def writer(self, port, prefix, stop, seconds):
        """SETs on the master until stop is set or `seconds` pass (bounded)."""
        c = Conn(port)
        deadline = time.monotonic() + seconds
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 200000:
            pipeline(c, [("SET", "%s:%d" % (prefix, (i + j) % 5000), "w%d" % (i + j))
                         for j in range(50)])
            i += 50
        c.close()

    def synced_or_logs(self, conn, servers):
        """wait_synced, failing with the last lines of every server's log."""
        try:
            self.wait_synced(conn, SYNC_TIMEOUT)
        except AssertionError as e:
            logs = "\n".join("--- %s:\n%s" % (n, "\n".join(self.log_of(s).splitlines()[-15:]))
                             for n, s in servers)
            raise AssertionError("%s\n%s" % (e, logs))

    def test_01_chain_of_tcp_and_shm_replicas_under_writes(self):
        m = self.start()
        mc = Conn(m.port)
        self.load(mc, "pre", 20000, 1)
        r1 = self.start(*tcp(m))
        r1c = Conn(r1.port)
        self.wait_synced(r1c, SYNC_TIMEOUT)
        stop = threading.Event()
        t = threading.Thread(target=self.writer, args=(m.port, "live", stop, SYNC_TIMEOUT))
        t.start()
        try:
            r2 = self.start(*tcp(r1))          # TCP replica of a replica
            r3 = self.start("--replicaof", "127.0.0.1", str(r1.port))  # same host: shm
            r2c, r3c = Conn(r2.port), Conn(r3.port)
            servers = [("master", m), ("r1", r1), ("r2", r2), ("r3", r3)]
            self.synced_or_logs(r2c, servers)
            self.synced_or_logs(r3c, servers)
            r4 = self.start(*tcp(r2))          # two levels below the top
            r4c = Conn(r4.port)
            self.synced_or_logs(r4c, servers + [("r4", r4)])
        finally:
            stop.set()
            t.join(30)
        self.assertEqual(info(r2c)["master_link_transport"], "tcp")
        self.assertEqual(info(r3c)["master_link_transport"], "shm")
        self.assertEqual(info(r1c)["connected_slaves"], "2")
        self.wait_equal(mc, [r1c, r2c, r3c, r4c])
        # The replicas' full syncs were walks of the top master: nobody synced twice.
        for c in (r2c, r3c, r4c):
            self.assertEqual(info(c)["replica_full_syncs"], "1")
        # Writes keep flowing down the chain.
        pipeline(mc, [("SET", "after:%d" % i, "x%d" % i) for i in range(1000)])
        self.wait_equal(mc, [r1c, r2c, r3c, r4c])
        for c in (mc, r1c, r2c, r3c, r4c):
            c.close()

    def chain(self, prefix, seed):
        """A preloaded master, a TCP replica of it and a TCP replica of that, all in sync:
        (master, its connection, r1's, r2's)."""
        m = self.start()
        mc = Conn(m.port)
        self.load(mc, prefix, 10000, seed)
        r1 = self.start(*tcp(m))
        r1c = Conn(r1.port)
        self.wait_synced(r1c, SYNC_TIMEOUT)
        r2 = self.start(*tcp(r1))
        r2c = Conn(r2.port)
        self.wait_synced(r2c, SYNC_TIMEOUT)
        self.wait_equal(mc, [r1c, r2c])
        return m, mc, r1c, r2c

    def test_02_promoted_middle_keeps_its_replicas(self):
        m, mc, r1c, r2c = self.chain("a", 2)
        self.kill(m)
        wait_until(lambda: info(r1c)["master_link_status"] == "down", 10, "r1's link down")
        r1c.call("REPLICAOF", "NO", "ONE")
        wait_until(lambda: info(r1c)["role"] == "master", 5, "r1 promoted")
        # Its replica follows on, without a new sync, and sees writes made on it.
        pipeline(r1c, [("SET", "b:%d" % i, "y%d" % i) for i in range(2000)])
        self.wait_equal(r1c, [r2c])
        self.assertEqual(info(r2c)["replica_full_syncs"], "1")
        self.assertEqual(info(r2c)["master_link_status"], "up")
        r1c.close()
        r2c.close()

    def test_03_replicas_replica_continues_at_the_top(self):
        """Positions are the top master's all the way down: a replica of a replica,
        repointed at the top master, continues with a partial resync."""
        m, mc, r1c, r2c = self.chain("c", 3)
        before = int(info(mc)["sync_partial_ok"])
        r2c.call("REPLICAOF", "127.0.0.1", str(m.port))
        wait_until(lambda: int(info(r2c)["replica_partial_syncs"]) >= 1, 10,
                   "r2's partial resync with the top master")
        self.assertEqual(int(info(mc)["sync_partial_ok"]), before + 1)
        pipeline(mc, [("SET", "d:%d" % i, "z%d" % i) for i in range(2000)])
        self.wait_equal(mc, [r1c, r2c])
        self.assertEqual(info(r2c)["replica_full_syncs"], "1")
        for c in (mc, r1c, r2c):
            c.close()
