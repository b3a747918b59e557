"""
Cross-worker ordering regression: "SET k v" followed at once by "GET k" in the same pipeline
must see v, wherever k's shard lives (about half the keys belong to the other worker, whose
reply comes back through the ring).
"""

from harness import ServerTestCase, resp, send_in_background

NKEYS = 2000


class CrossWorkerOrdering(ServerTestCase):

    def pipeline(self, c, data, nreplies):
        join = send_in_background(c, data)
        try:
            return [c.read_reply() for _ in range(nreplies)]
        finally:
            join()

    def test_set_then_get_in_one_pipeline_sees_the_value(self):
        srv = self.start_server(threads=2, shards=64)
        c = self.connect(srv, timeout=30)
        data = b"".join(resp("SET", "ord:%d" % i, "val:%d" % i) + resp("GET", "ord:%d" % i)
                        for i in range(NKEYS))
        replies = self.pipeline(c, data, 2 * NKEYS)
        wrong = []
        for i in range(NKEYS):
            v = b"val:%d" % i
            if replies[2 * i] != b"+OK\r\n" or replies[2 * i + 1] != b"$%d\r\n%s\r\n" % (len(v), v):
                wrong.append((i, replies[2 * i], replies[2 * i + 1]))
        self.assertEqual(wrong, [], "%d keys read back wrong, first: %r" % (
            len(wrong), wrong[:5]))
        # The reverse order too: DEL then GET sees nothing, INCR then GET sees the count.
        data = b"".join(resp("DEL", "ord:%d" % i) + resp("GET", "ord:%d" % i)
                        + resp("INCR", "ord:%d" % i) + resp("GET", "ord:%d" % i)
                        for i in range(0, NKEYS, 4))
        n = len(range(0, NKEYS, 4))
        replies = self.pipeline(c, data, 4 * n)
        self.assertEqual(replies, [b":1\r\n", b"$-1\r\n", b":1\r\n", b"$1\r\n1\r\n"] * n)

    def test_set_then_get_line_protocol(self):
        srv = self.start_server(threads=2, shards=64)
        c = self.connect(srv, timeout=30)
        data = b"".join(b"SET lk:%d v%d\nGET lk:%d\n" % (i, i, i) for i in range(500))
        c.send(data)
        got = b"".join(c.read_line() for _ in range(1000))
        self.assertEqual(got, b"".join(b"OK\nv%d\n" % i for i in range(500)))
