"""
SCAN as docs/PROTOCOL.md 2.4 describes it: cursors name a shard in their low bits, a full
iteration returns every key present throughout, MATCH / COUNT / TYPE filter, and bad cursors
or options get Redis's errors.
"""

from harness import SharedServerTestCase, resp, send_in_background


class Scan(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 16}

    def setUp(self):
        self.c = self.connect(self.srv)
        self.assertEqual(self.c.cmd("FLUSHALL"), b"+OK\r\n")

    def scan_all(self, *opts, limit=100000):
        cursor, seen, calls = b"0", [], 0
        while True:
            reply = self.c.call("SCAN", cursor, *opts)
            self.assertIsInstance(reply, list)
            cursor, keys = reply
            seen += keys
            calls += 1
            self.assertLess(calls, limit, "SCAN did not finish")
            if cursor == b"0":
                return seen, calls

    def test_empty_keyspace_walks_every_shard(self):
        seen, calls = self.scan_all()
        self.assertEqual(seen, [])
        self.assertEqual(calls, 16)
        self.assertEqual(self.c.call("SCAN", "0"), [b"1", []])
        self.assertEqual(self.c.call("SCAN", "15"), [b"0", []])

    def test_every_key_once(self):
        keys = {b"sc:%d" % i for i in range(3000)} | {b"other:%d" % i for i in range(50)}
        join = send_in_background(self.c, b"".join(resp("SET", k, "v") for k in sorted(keys)))
        self.assertEqual(set(self.c.read_replies(len(keys))), {b"+OK\r\n"})
        join()
        seen, _ = self.scan_all("COUNT", "100")
        self.assertEqual(set(seen), keys)
        seen, _ = self.scan_all("MATCH", "other:*", "COUNT", "1000")
        self.assertEqual(set(seen), {k for k in keys if k.startswith(b"other:")})
        seen, _ = self.scan_all("TYPE", "string", "COUNT", "1000")
        self.assertEqual(set(seen), keys)
        seen, _ = self.scan_all("TYPE", "list")
        self.assertEqual(seen, [])

    def test_errors(self):
        c = self.c
        self.assertEqual(c.cmd("SCAN", "abc"), b"-ERR invalid cursor\r\n")
        self.assertEqual(c.cmd("SCAN", "-1"), b"-ERR invalid cursor\r\n")
        self.assertEqual(c.cmd("SCAN", "01"), b"-ERR invalid cursor\r\n")
        self.assertEqual(c.cmd("SCAN", "0", "COUNT", "0"), b"-ERR syntax error\r\n")
        self.assertEqual(c.cmd("SCAN", "0", "COUNT", "x"),
                         b"-ERR value is not an integer or out of range\r\n")
        self.assertEqual(c.cmd("SCAN", "0", "MATCH"), b"-ERR syntax error\r\n")
        self.assertEqual(c.cmd("SCAN", "0", "BOGUS", "1"), b"-ERR syntax error\r\n")
        self.assertEqual(c.cmd("SCAN"), b"-ERR wrong number of arguments for 'scan' command\r\n")
        self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
