"""
Expiry: a key set with PX is gone once its time has passed (lazily, on access), and keys
nobody touches are removed by the active sweep: DBSIZE alone, polled, drops to the number of
keys without a deadline.
"""

import time

from harness import SharedServerTestCase, info_field, resp, send_in_background


class Expiry(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def setUp(self):
        self.c = self.connect(self.srv)
        self.assertEqual(self.c.cmd("FLUSHALL"), b"+OK\r\n")

    def test_px_key_gone_after_its_time(self):
        c = self.c
        self.assertEqual(c.cmd("SET", "k", "v", "PX", "100"), b"+OK\r\n")
        self.assertEqual(c.cmd("GET", "k"), b"$1\r\nv\r\n")
        time.sleep(0.3)
        self.assertEqual(c.cmd("GET", "k"), b"$-1\r\n")
        self.assertEqual(c.cmd("EXISTS", "k"), b":0\r\n")
        self.assertEqual(c.cmd("TTL", "k"), b":-2\r\n")
        # The other ways to give a key a deadline expire the same way.
        now_ms = int(time.time() * 1000)
        c.send(resp("SET", "a", "1", "PXAT", str(now_ms + 150)) + resp("PSETEX", "b", "150", "1")
               + resp("SET", "c", "1") + resp("PEXPIRE", "c", "150")
               + resp("SET", "d", "1") + resp("GETEX", "d", "PX", "150")
               + resp("SET", "e", "1", "PX", "150") + resp("SET", "e", "2", "KEEPTTL"))
        self.assertEqual(c.read_replies(8), [b"+OK\r\n", b"+OK\r\n", b"+OK\r\n", b":1\r\n",
                                             b"+OK\r\n", b"$1\r\n1\r\n", b"+OK\r\n",
                                             b"+OK\r\n"])
        self.assertEqual(c.cmd("EXISTS", "a", "b", "c", "d", "e"), b":5\r\n")
        time.sleep(0.4)
        self.assertEqual(c.cmd("EXISTS", "a", "b", "c", "d", "e"), b":0\r\n")
        self.assertEqual(c.call("MGET", "a", "b", "c", "d", "e"), [None] * 5)

    def test_persist_keeps_a_key(self):
        c = self.c
        self.assertEqual(c.cmd("SET", "k", "v", "PX", "150"), b"+OK\r\n")
        self.assertEqual(c.cmd("PERSIST", "k"), b":1\r\n")
        time.sleep(0.3)
        self.assertEqual(c.cmd("GET", "k"), b"$1\r\nv\r\n")
        self.assertEqual(c.cmd("TTL", "k"), b":-1\r\n")

    def test_active_sweep_without_access(self):
        c = self.c
        n, keep = 2000, 100
        before = int(info_field(c, "stats", "expired_keys"))
        data = b"".join(resp("SET", "exp:%d" % i, "v", "PX", "50") for i in range(n))
        data += b"".join(resp("SET", "keep:%d" % i, "v") for i in range(keep))
        join = send_in_background(c, data)
        replies = c.read_replies(n + keep)
        join()
        self.assertEqual(set(replies), {b"+OK\r\n"})
        t0 = time.monotonic()
        size = None
        while time.monotonic() - t0 < 1.5:
            size = c.call("DBSIZE")
            if size == keep:
                break
            time.sleep(0.05)
        self.assertEqual(size, keep, "DBSIZE still %s 1.5 s after 2,000 keys expired" % size)
        # Nothing touched them: the sweep counted them.
        self.assertGreaterEqual(int(info_field(c, "stats", "expired_keys")) - before, n)
        self.assertEqual(c.call("EXISTS", "keep:0", "keep:99"), 2)
