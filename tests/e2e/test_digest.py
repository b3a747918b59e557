"""
DEBUG DIGEST: a fingerprint of the data that does not depend on the worker/shard layout or on
the order the data was written in, and changes with any change to a key, value or deadline.
The empty dataset's digest is forty zeros.
"""

import random
import time

from harness import ServerTestCase, resp

ZERO = b"+" + b"0" * 40 + b"\r\n"


def digest(c):
    raw = c.cmd("DEBUG", "DIGEST")
    assert raw.startswith(b"+") and len(raw) == 43, raw
    return raw


class Digest(ServerTestCase):

    def load(self, c, items):
        data = b"".join(resp(*req) for req in items)
        c.send(data)
        replies = c.read_replies(len(items))
        self.assertEqual(set(replies), {b"+OK\r\n"})

    def test_digest_independent_of_layout_and_order(self):
        one = self.start_server(threads=1, shards=1)
        many = self.start_server(threads=2, shards=64)
        a, b = self.connect(one), self.connect(many)
        self.assertEqual(digest(a), ZERO)
        self.assertEqual(digest(b), ZERO)

        rnd = random.Random(8)
        deadline_ms = int(time.time() * 1000) + 3600 * 1000
        items = []
        for i in range(1000):
            key = b"dg:%d" % i
            val = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
            if i % 5 == 0:
                items.append((b"SET", key, val, b"PXAT", str(deadline_ms + i).encode()))
            else:
                items.append((b"SET", key, val))
        self.load(a, items)
        shuffled = items[:]
        rnd.shuffle(shuffled)
        # The second server gets the same data in another order, some keys first written with
        # other values that are then overwritten.
        self.load(b, [(k[0], k[1], b"junk") for k in shuffled[:100]] + shuffled)
        da, db = digest(a), digest(b)
        self.assertNotEqual(da, ZERO)
        self.assertEqual(da, db)
        self.assertEqual(digest(a), da, "two digests of the same data differ")

        # One changed value, a deleted key, a changed deadline: each makes it differ.
        self.assertEqual(b.cmd("SET", "dg:7", "changed"), b"+OK\r\n")
        self.assertNotEqual(digest(b), da)
        self.assertEqual(b.cmd("SET", "dg:7", items[7][2]), b"+OK\r\n")
        self.assertEqual(digest(b), da)
        self.assertEqual(b.cmd("DEL", "dg:3"), b":1\r\n")
        self.assertNotEqual(digest(b), da)
        self.assertEqual(b.cmd("SET", "dg:3", items[3][2]), b"+OK\r\n")
        self.assertEqual(digest(b), da)
        self.assertEqual(b.cmd("PEXPIREAT", "dg:0", str(deadline_ms + 12345)), b":1\r\n")
        self.assertNotEqual(digest(b), da)
        self.assertEqual(b.cmd("PEXPIREAT", "dg:0", str(deadline_ms)), b":1\r\n")
        self.assertEqual(digest(b), da)
        self.assertEqual(b.cmd("PERSIST", "dg:5"), b":1\r\n")
        self.assertNotEqual(digest(b), da)
        # Moving bytes between a key and its value is a different dataset.
        self.assertEqual(a.cmd("FLUSHALL"), b"+OK\r\n")
        self.assertEqual(b.cmd("FLUSHALL"), b"+OK\r\n")
        self.assertEqual(digest(a), ZERO)
        self.assertEqual(digest(b), ZERO)
        self.assertEqual(a.cmd("SET", "ab", "c"), b"+OK\r\n")
        self.assertEqual(b.cmd("SET", "a", "bc"), b"+OK\r\n")
        self.assertNotEqual(digest(a), digest(b))

    def test_digest_errors(self):
        srv = self.start_server(threads=1)
        c = self.connect(srv)
        self.assertTrue(c.cmd("DEBUG", "DIGEST", "x").startswith(b"-ERR "))
        self.assertTrue(c.cmd("DEBUG", "NOSUCH").startswith(b"-ERR "))
        self.assertEqual(c.cmd("DEBUG"),
                         b"-ERR wrong number of arguments for 'debug' command\r\n")
