"""
Real clients against ringkv: redis-cli (commands, stdin, INFO, --scan) and redis-py (the
common calls, a non-transactional pipeline, scan_iter, INFO, CONFIG GET, client names).
"""

import subprocess
import sys

from harness import SharedServerTestCase, redis_cli_binary

try:
    import redis
except ImportError:  # pragma: no cover - depends on the machine
    redis = None


class RedisCli(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def setUp(self):
        if not redis_cli_binary():
            self.skipTest("redis-cli is not installed")
        self.assertEqual(self.cli("FLUSHALL"), b"OK\n")

    def cli(self, *args, stdin=None):
        p = subprocess.run([redis_cli_binary(), "-h", "127.0.0.1", "-p", str(self.srv.port)]
                           + list(args), input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, b"")
        return p.stdout

    def test_basic_commands(self):
        self.assertEqual(self.cli("SET", "a", "b"), b"OK\n")
        self.assertEqual(self.cli("GET", "a"), b"b\n")
        self.assertEqual(self.cli("GET", "missing"), b"\n")
        self.assertEqual(self.cli("INCR", "n"), b"1\n")
        self.assertEqual(self.cli("MGET", "a", "missing", "n"), b"b\n\n1\n")
        self.assertEqual(self.cli("SET", "e", "v", "EX", "100"), b"OK\n")
        self.assertIn(self.cli("TTL", "e"), (b"100\n", b"99\n"))
        self.assertEqual(self.cli("DBSIZE"), b"3\n")
        self.assertEqual(self.cli("PING"), b"PONG\n")
        self.assertEqual(self.cli("DEL", "a", "n", "missing"), b"2\n")
        self.assertEqual(self.cli("EXISTS", "a"), b"0\n")

    def test_commands_on_stdin(self):
        out = self.cli(stdin=b"SET x 1\nINCR x\nGET x\nAPPEND x 0\nGET x\n")
        self.assertEqual(out, b"OK\n2\n2\n2\n20\n")

    def test_info(self):
        out = self.cli("INFO").decode()
        self.assertIn("# Server\r\n", out)
        self.assertIn("redis_version:", out)
        self.assertIn("tcp_port:%d\r\n" % self.srv.port, out)
        self.assertIn("# Clients\r\n", out)
        self.assertIn("connected_clients:", out)
        self.assertIn("# Keyspace", out)
        self.cli("SET", "k", "v")
        self.assertIn("db0:keys=1,", self.cli("INFO", "keyspace").decode())

    def test_scan_lists_every_key(self):
        keys = ["scan:%d" % i for i in range(700)] + ["other:%d" % i for i in range(100)]
        # Load through redis-cli's stdin: one process for all of them.
        stdin = "".join("SET %s v\n" % k for k in keys).encode()
        self.assertEqual(self.cli(stdin=stdin), b"OK\n" * len(keys))
        out = self.cli("--scan").decode().split("\n")
        self.assertEqual(out[-1], "")
        listed = out[:-1]
        self.assertEqual(sorted(set(listed)), sorted(keys))
        out = self.cli("--scan", "--pattern", "other:*").decode().split("\n")[:-1]
        self.assertEqual(sorted(set(out)), sorted(k for k in keys if k.startswith("other:")))


class RedisPy(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def setUp(self):
        if redis is None:
            self.skipTest("the python redis module is not installed for %s" % sys.executable)
        self.r = redis.Redis(host="127.0.0.1", port=self.srv.port, socket_timeout=30,
                             socket_connect_timeout=10)
        self.addCleanup(self.r.close)
        self.assertTrue(self.r.flushall())

    def test_strings_and_expiry(self):
        r = self.r
        self.assertTrue(r.set("a", "1"))
        self.assertEqual(r.get("a"), b"1")
        self.assertIsNone(r.get("missing"))
        self.assertTrue(r.mset({"b": "2", "c": b"\x00\xff"}))
        self.assertEqual(r.mget("a", "b", "c", "missing"), [b"1", b"2", b"\x00\xff", None])
        self.assertEqual(r.incr("a"), 2)
        self.assertEqual(r.incr("a", 10), 12)
        self.assertEqual(r.decr("a"), 11)
        self.assertAlmostEqual(r.incrbyfloat("f", 1.5), 1.5)
        self.assertEqual(r.ttl("a"), -1)
        self.assertTrue(r.expire("a", 100))
        self.assertIn(r.ttl("a"), (99, 100))
        self.assertTrue(0 < r.pttl("a") <= 100000)
        self.assertTrue(r.persist("a"))
        self.assertEqual(r.ttl("a"), -1)
        self.assertEqual(r.ttl("missing"), -2)
        self.assertTrue(r.set("nx", "1", nx=True))
        self.assertIsNone(r.set("nx", "2", nx=True))
        self.assertEqual(r.getset("nx", "3"), b"1")
        self.assertEqual(r.append("nx", "4"), 2)
        self.assertEqual(r.strlen("nx"), 2)
        self.assertEqual(r.getrange("nx", 0, 0), b"3")
        self.assertEqual(r.exists("a", "b", "missing"), 2)
        self.assertEqual(r.type("a"), b"string")
        self.assertEqual(r.delete("a", "b", "missing"), 2)
        self.assertEqual(r.dbsize(), 3)
        r.set("s", "x")
        with self.assertRaises(redis.ResponseError) as cm:
            r.incr("s")
        self.assertIn("not an integer", str(cm.exception))

    def test_pipeline_1000(self):
        p = self.r.pipeline(transaction=False)
        for i in range(500):
            p.set("p:%d" % i, "v%d" % i)
            p.incr("cnt")
        out = p.execute()
        self.assertEqual(out[0::2], [True] * 500)
        self.assertEqual(out[1::2], list(range(1, 501)))
        p = self.r.pipeline(transaction=False)
        for i in range(1000):
            p.get("p:%d" % (i % 500))
        out = p.execute()
        self.assertEqual(out, [b"v%d" % (i % 500) for i in range(1000)])

    def test_scan_iter_every_key_once(self):
        keys = {b"it:%d" % i for i in range(1500)}
        p = self.r.pipeline(transaction=False)
        for k in keys:
            p.set(k, b"x")
        p.execute()
        self.assertEqual(set(self.r.scan_iter(count=100)), keys)
        self.assertEqual(set(self.r.scan_iter()), keys)
        self.assertEqual(set(self.r.scan_iter(match="it:1*", count=50)),
                         {k for k in keys if k.startswith(b"it:1")})
        self.assertEqual(self.r.dbsize(), len(keys))

    def test_info_config_client(self):
        info = self.r.info()
        self.assertIn("redis_version", info)
        self.assertIsInstance(info["connected_clients"], int)
        self.assertGreaterEqual(info["connected_clients"], 1)
        self.assertEqual(info["tcp_port"], self.srv.port)
        self.assertIn("used_memory", self.r.info("memory"))
        self.assertEqual(self.r.config_get("maxclients"), {"maxclients": "10000"})
        allconf = self.r.config_get()
        self.assertEqual(allconf.get("port"), str(self.srv.port))
        self.assertTrue(self.r.client_setname("py-client"))
        self.assertEqual(self.r.client_getname(), "py-client")
        self.assertIsInstance(self.r.client_id(), int)

    def test_flushall_dbsize(self):
        self.r.mset({"k%d" % i: i for i in range(100)})
        self.assertEqual(self.r.dbsize(), 100)
        self.assertTrue(self.r.flushall())
        self.assertEqual(self.r.dbsize(), 0)
        self.assertEqual(self.r.keys("*"), [])
