"""
Differential test: the same RESP2 request bytes to ringkv and to a real redis-server 7.0 give
the same reply bytes.

Both servers get each request of a script in the same order, on one connection each, so they
hold the same data all along.  Every reply is compared byte for byte, except where the two
legitimately differ, which the script marks:
  INT(lo, hi)  both integers in [lo, hi] (TTLs that may cross a second, PTTLs)
  SAME_TYPE    same RESP type (CLIENT ID, RANDOMKEY among many keys)
  SORTED       arrays with the same elements in any order (KEYS: hash order differs)
  HELLO        HELLO's map with the "id" value ignored
  TTL          equal, or both counting down from 1000 s within 2 s of each other
The random scripts (seeded) resynchronise both servers with FLUSHALL after a difference, so
that each reported difference is a new one.
Differences that are by design (ringkv is RESP2 only, one database) are asserted apart, on
ringkv alone.  The reference runs with --databases 1, which is what ringkv has, so SELECT
answers the same.  Each test reports every mismatching request at once.
"""

import random
import time
import unittest

from harness import (Conn, RedisServer, Server, ServerTestCase, parse, redis_server_binary,
                     resp)

EXACT = ("exact",)
SAME_TYPE = ("type",)
SORTED = ("sorted",)
HELLO = ("hello",)
TTL = ("ttl",)


def INT(lo, hi):
    return ("int", lo, hi)


I64MAX = 9223372036854775807
I64MIN = -9223372036854775808


@unittest.skipUnless(redis_server_binary(), "redis-server is not installed")
class Differential(ServerTestCase):

    @classmethod
    def setUpClass(cls):
        cls.rk = Server(threads=2, shards=64)
        try:
            cls.ref = RedisServer("--databases", "1")
        except BaseException:
            cls.rk.stop()
            cls.rk.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.ref.stop()
        cls.ref.cleanup()
        cls.rk.stop()
        try:
            cls.rk.check()
        finally:
            cls.rk.cleanup()

    def setUp(self):
        self.a = self.connect(self.rk)
        self.b = self.connect(self.ref)
        for c in (self.a, self.b):
            self.assertEqual(c.cmd("FLUSHALL"), b"+OK\r\n")

    # ---- the comparison ------------------------------------------------------------------

    def _match(self, mode, got, want):
        if mode[0] == "exact":
            return got == want
        g, w = parse(got), parse(want)
        if mode[0] == "int":
            return (isinstance(g, int) and isinstance(w, int)
                    and mode[1] <= g <= mode[2] and mode[1] <= w <= mode[2])
        if mode[0] == "ttl":
            # Equal, or both counting down from 1000 s and a second apart at most.
            return got == want or (isinstance(g, int) and isinstance(w, int)
                                   and 990 <= min(g, w) and abs(g - w) <= 2)
        if mode[0] == "type":
            return got[:1] == want[:1]
        if mode[0] == "sorted":
            return isinstance(g, list) and isinstance(w, list) and sorted(g) == sorted(w)
        if mode[0] == "hello":
            if not (isinstance(g, list) and isinstance(w, list) and len(g) == len(w)):
                return False
            gd = dict(zip(g[::2], g[1::2]))
            wd = dict(zip(w[::2], w[1::2]))
            gd.pop(b"id", None)
            wd.pop(b"id", None)
            return gd == wd and isinstance(dict(zip(g[::2], g[1::2])).get(b"id"), int)
        raise ValueError(mode)

    def run_script(self, script, resync=False):
        """script: list of (request, mode); request is a tuple of args or raw bytes.
        resync: after a difference, FLUSHALL both, so that later differences are new ones
        rather than echoes of the first."""
        bad, notes, sent = [], [], []
        for item in script:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], tuple):
                req, mode = item
            else:
                req, mode = item, EXACT
            raw = req if isinstance(req, bytes) else resp(*req)
            sent.append((raw, None))
            self.a.send(raw)
            self.b.send(raw)
            got = self.a.read_reply()
            want = self.b.read_reply()
            sent[-1] = (raw, got)
            if not self._match(mode, got, want):
                if not bad:
                    context = self._history(sent[:-1], req)
                    if context:
                        notes.append("  before the first difference, the requests on its key "
                                     "(with ringkv's replies):\n" + context)
                bad.append("  request %r\n    ringkv: %r\n    redis:  %r" % (
                    raw if len(raw) < 200 else raw[:200] + b"...", got[:300], want[:300]))
                if resync:
                    for c in (self.a, self.b):
                        self.assertEqual(c.cmd("FLUSHALL"), b"+OK\r\n")
        if bad:
            self.fail("%d of %d replies differ from redis-server's:\n%s" % (
                len(bad), len(script), "\n".join(bad + notes)))

    @staticmethod
    def _history(sent, req):
        """The last 20 requests that named req's key (its second word), as text."""
        if isinstance(req, bytes) or len(req) < 2:
            return ""
        key = req[1] if isinstance(req[1], bytes) else str(req[1]).encode()
        mark = b"$%d\r\n%s\r\n" % (len(key), key)
        hits = [(r, g) for r, g in sent if mark in r][-20:]
        return "\n".join("    %r -> %r" % (r[:120], g[:80]) for r, g in hits)

    # ---- scripts -------------------------------------------------------------------------

    def test_connection_commands(self):
        self.run_script([
            ("PING",), ("ping",), ("PING", "hello"), ("PING", ""), ("PING", "a", "b"),
            ("ECHO", "hi"), ("ECHO", ""), ("ECHO",), ("ECHO", "a", "b"),
            ("ECHO", b"bin\x00\r\nary"),
            ("SELECT", "0"), ("SELECT", "1"), ("SELECT", "15"), ("SELECT", "-1"),
            ("SELECT", "abc"), ("SELECT",), ("SELECT", "0", "1"),
            ("CLIENT", "SETNAME", "conn1"), ("CLIENT", "GETNAME"),
            ("CLIENT", "SETNAME", "a b"), ("CLIENT", "SETNAME", "a\nb"),
            ("CLIENT", "SETNAME", ""), ("CLIENT", "GETNAME"),
            ("CLIENT", "SETNAME"), ("CLIENT", "GetName", "x"), ("CLIENT", "id", "x"),
            ("CLIENT", "NOSUCH"), ("CLIENT",),
            (("CLIENT", "ID"), SAME_TYPE),
            (("HELLO",), HELLO), (("HELLO", "2"), HELLO),
            (("HELLO", "2", "SETNAME", "viahello"), HELLO), ("CLIENT", "GETNAME"),
            ("HELLO", "abc"), ("HELLO", "2", "FOO"), ("HELLO", "2", "SETNAME", "a b"),
            ("HELLO", "1"), ("HELLO", "-1"), ("HELLO", "4"),
            (("HELLO", "2", "AUTH", "default", "anything"), HELLO),
            ("HELLO", "2", "AUTH", "someone", "x"),
            ("AUTH", "x"), ("AUTH", "default", "x"), ("AUTH", "nobody", "x"), ("AUTH",),
            ("AUTH", "a", "b", "c"),
            ("FOO",), ("FOO", "a", "b"), ("foo", "a b", ""), ("",),
            ("GET",), ("GET", "a", "b"), ("SET", "k"), ("get",), ("InCr",),
            ("GeT", "nokey"),
        ])

    def test_set_options(self):
        now = int(time.time())
        self.run_script([
            ("GET", "k"), ("SET", "k", "v"), ("GET", "k"), ("TYPE", "k"), ("TYPE", "nokey"),
            ("SET", "k", "v2", "NX"), ("GET", "k"), ("SET", "k", "v3", "XX"), ("GET", "k"),
            ("SET", "nx", "1", "XX"), ("GET", "nx"), ("SET", "nx", "1", "NX"), ("GET", "nx"),
            ("SET", "k", "v", "NX", "XX"), ("SET", "k", "v", "EX", "10", "PX", "100"),
            ("SET", "k", "v", "EX"), ("SET", "k", "v", "EX", "0"), ("SET", "k", "v", "EX", "-5"),
            ("SET", "k", "v", "EX", "abc"), ("SET", "k", "v", "PX", "0"),
            ("SET", "k", "v", "PX", "1.5"), ("SET", "k", "v", "EX", "9999999999999999"),
            ("SET", "k", "v", "PX", str(I64MAX)), ("SET", "k", "v", "EXAT", "0"),
            ("SET", "k", "v", "PXAT", "-1"), ("SET", "k", "v", "FOO"),
            ("SET", "k", "v", "KEEPTTL", "EX", "10"), ("SET", "k", "v", "EX", "10", "KEEPTTL"),
            ("SET", "k", "v", "EX", "10", "EXAT", str(now + 100)),
            ("SET", "e", "v", "EX", "100"), (("TTL", "e"), INT(95, 100)),
            (("PTTL", "e"), INT(95000, 100000)),
            ("SET", "e", "w", "KEEPTTL"), (("TTL", "e"), INT(95, 100)), ("GET", "e"),
            ("SET", "e", "x"), ("TTL", "e"),
            ("SET", "p", "v", "PX", "100000"), (("PTTL", "p"), INT(95000, 100000)),
            ("SET", "a", "v", "EXAT", str(now + 1000)), (("TTL", "a"), INT(995, 1000)),
            ("SET", "a", "v", "PXAT", str((now + 1000) * 1000)), (("TTL", "a"), INT(995, 1000)),
            ("SET", "a", "v", "EXAT", str(now - 10)), ("GET", "a"), ("EXISTS", "a"),
            ("SET", "g", "old"), ("SET", "g", "new", "GET"), ("GET", "g"),
            ("SET", "g2", "new", "GET"), ("GET", "g2"),
            ("SET", "g", "newer", "NX", "GET"), ("GET", "g"),
            ("SET", "g", "newest", "XX", "GET"), ("SET", "g3", "v", "XX", "GET"),
            ("SET", "g", "v", "GET", "EX", "100"), (("TTL", "g"), INT(95, 100)),
            ("SET", "g", "v", "get", "px", "50000", "xx"), (("TTL", "g"), INT(45, 50)),
            ("set", "lower", "case", "ex", "10", "nx"), (("ttl", "lower"), INT(5, 10)),
            ("SET", "", ""), ("GET", ""), ("EXISTS", ""), ("STRLEN", ""),
            ("SET", b"bin\x00\r\nkey", b"bin\x00\r\nvalue"), ("GET", b"bin\x00\r\nkey"),
            ("SET", "big", "x" * 100000), ("GET", "big"), ("STRLEN", "big"),
            ("SETNX", "snx", "1"), ("SETNX", "snx", "2"), ("GET", "snx"), ("SETNX", "snx"),
            ("SETEX", "se", "100", "v"), (("TTL", "se"), INT(95, 100)), ("GET", "se"),
            ("SETEX", "se", "0", "v"), ("SETEX", "se", "-1", "v"), ("SETEX", "se", "x", "v"),
            ("SETEX", "se", "10"), ("SETEX", "se", "9999999999999999", "v"),
            ("PSETEX", "pse", "100000", "v"), (("PTTL", "pse"), INT(95000, 100000)),
            ("PSETEX", "pse", "0", "v"), ("PSETEX", "pse", "abc", "v"), ("PSETEX", "pse"),
            ("GETSET", "gs", "1"), ("GETSET", "gs", "2"), ("GET", "gs"), ("GETSET", "gs"),
            ("SET", "gse", "v", "EX", "100"), ("GETSET", "gse", "w"), ("TTL", "gse"),
            ("GETDEL", "gs"), ("GETDEL", "gs"), ("EXISTS", "gs"), ("GETDEL",),
            ("GETDEL", "a", "b"),
            ("SET", "gx", "v"), ("GETEX", "gx"), ("TTL", "gx"), ("GETEX", "gx", "EX", "100"),
            (("TTL", "gx"), INT(95, 100)), ("GETEX", "gx", "PERSIST"), ("TTL", "gx"),
            ("GETEX", "gx", "PX", "100000"), (("PTTL", "gx"), INT(95000, 100000)),
            ("GETEX", "gx", "EXAT", str(now + 1000)), (("TTL", "gx"), INT(995, 1000)),
            ("GETEX", "gx", "PXAT", str((now + 1000) * 1000)), (("TTL", "gx"), INT(995, 1000)),
            ("GETEX", "gx", "EX", "100", "PX", "100"), ("GETEX", "gx", "EX"),
            ("GETEX", "gx", "EX", "0"), ("GETEX", "gx", "EX", "-1"), ("GETEX", "gx", "EX", "a"),
            ("GETEX", "gx", "FOO"), ("GETEX", "gx", "PERSIST", "EX", "10"),
            ("GETEX", "gx", "KEEPTTL"), ("GETEX", "nokey"), ("GETEX", "nokey", "EX", "10"),
            ("GETEX", "gx", "EXAT", str(now - 10)), ("EXISTS", "gx"), ("GETEX",),
        ])

    def test_multi_key(self):
        keys = ["mk%d" % i for i in range(40)]
        self.run_script([
            ("MSET", "a", "1", "b", "2", "c", "3"), ("MGET", "a", "b", "c", "nokey", "a"),
            ("MGET", "nokey"), ("MGET",), ("MSET", "a"), ("MSET", "a", "1", "b"), ("MSET",),
            ("MSET",) + tuple(x for k in keys for x in (k, k + "-v")),
            ("MGET",) + tuple(keys) + ("missing",), ("DBSIZE",),
            ("MSET", "dup", "1", "dup", "2"), ("GET", "dup"),
            ("MSETNX", "n1", "1", "n2", "2"), ("MGET", "n1", "n2"),
            ("MSETNX", "n2", "x", "n3", "3"), ("MGET", "n2", "n3"), ("EXISTS", "n3"),
            ("MSETNX", "n1"), ("MSETNX", "n1", "1", "n4"), ("MSETNX",),
            ("MSETNX", "dupnx", "first", "dupnx", "last"), ("GET", "dupnx"),
            ("EXISTS", "a", "b", "nokey", "a"), ("EXISTS",), ("EXISTS", "nokey"),
            ("DEL", "a", "b", "nokey", "a"), ("DEL", "a"), ("DEL",), ("EXISTS", "a", "b"),
            ("UNLINK", "c", "nokey"), ("UNLINK",), ("EXISTS", "c"),
            ("DEL",) + tuple(keys[:20]), ("UNLINK",) + tuple(keys[10:]),
            ("TOUCH", "n1", "n2", "nokey"), ("TOUCH",),
            ("DBSIZE",), ("DBSIZE", "x"),
            (("KEYS", "*"), SORTED), ("KEYS", "n1"), (("KEYS", "n?"), SORTED),
            (("KEYS", "n[12]"), SORTED), (("KEYS", "n[^1]"), SORTED), ("KEYS", "zz*"),
            (("KEYS", "*1*"), SORTED), ("KEYS", "n\\1"), ("KEYS",), ("KEYS", "a", "b"),
            ("FLUSHDB",), ("DBSIZE",), ("KEYS", "*"), ("RANDOMKEY",), ("RANDOMKEY", "x"),
            ("SET", "only", "1"), ("RANDOMKEY",),
            ("MSET", "r1", "1", "r2", "2", "r3", "3"), (("RANDOMKEY",), SAME_TYPE),
            ("FLUSHALL", "ASYNC"), ("DBSIZE",), ("SET", "x", "1"), ("FLUSHALL", "SYNC"),
            ("DBSIZE",), ("FLUSHALL", "FOO"), ("FLUSHALL", "ASYNC", "SYNC"), ("FLUSHDB", "x"),
            ("FLUSHDB", "async"), ("FLUSHALL",),
        ])

    def test_counters(self):
        self.run_script([
            ("INCR", "n"), ("INCR", "n"), ("GET", "n"), ("DECR", "n"), ("DECR", "n"),
            ("DECR", "n"), ("GET", "n"), ("INCRBY", "n", "10"), ("INCRBY", "n", "-20"),
            ("DECRBY", "n", "5"), ("DECRBY", "n", "-5"), ("GET", "n"),
            ("INCRBY", "n", "abc"), ("INCRBY", "n", "1.5"), ("INCRBY", "n", ""),
            ("INCRBY", "n", " 1"), ("INCRBY", "n", "+1"), ("INCRBY", "n", "01"),
            ("INCRBY", "n", "-0"), ("INCRBY", "n", str(I64MAX) + "0"),
            ("DECRBY", "n", "abc"), ("INCR",), ("INCR", "a", "b"), ("INCRBY", "n"),
            ("DECRBY", "n", str(I64MIN)), ("INCRBY", "n", str(I64MIN)),
            ("SET", "s", "hello"), ("INCR", "s"), ("DECR", "s"), ("INCRBY", "s", "1"),
            ("INCRBYFLOAT", "s", "1"),
            ("SET", "sp", " 1"), ("INCR", "sp"), ("SET", "lz", "007"), ("INCR", "lz"),
            ("SET", "ng", "-0"), ("INCR", "ng"), ("SET", "emp", ""), ("INCR", "emp"),
            ("SET", "max", str(I64MAX)), ("INCR", "max"), ("INCRBY", "max", "1"),
            ("DECR", "max"), ("GET", "max"),
            ("SET", "min", str(I64MIN)), ("DECR", "min"), ("DECRBY", "min", "1"),
            ("INCRBY", "min", "-1"), ("INCR", "min"), ("GET", "min"),
            ("SET", "ex", "5", "EX", "100"), ("INCR", "ex"), (("TTL", "ex"), INT(95, 100)),
            ("INCRBYFLOAT", "f", "0.1"), ("INCRBYFLOAT", "f", "0.2"), ("GET", "f"),
            ("INCRBYFLOAT", "f", "10.5"), ("INCRBYFLOAT", "f", "-10.8"), ("GET", "f"),
            ("INCRBYFLOAT", "f2", "3.0e3"), ("INCRBYFLOAT", "f2", "1e-5"),
            ("INCRBYFLOAT", "f3", "5"), ("INCRBYFLOAT", "f3", "-5"),
            ("INCRBYFLOAT", "f4", "1.0000000000000001"), ("INCRBYFLOAT", "f5", "-0.0"),
            ("INCRBYFLOAT", "f6", "123456789012345678"), ("INCRBYFLOAT", "f7", "0.1e1"),
            ("INCRBYFLOAT", "f", "abc"), ("INCRBYFLOAT", "f", ""), ("INCRBYFLOAT", "f", "1 "),
            ("INCRBYFLOAT", "f", "inf"), ("INCRBYFLOAT", "f", "-inf"),
            ("INCRBYFLOAT", "f", "nan"), ("INCRBYFLOAT", "f", "1e400"),
            ("INCRBYFLOAT", "f", "1e5000"), ("INCRBYFLOAT", "f"),
            ("SET", "fi", "10"), ("INCRBYFLOAT", "fi", "0.5"), ("GET", "fi"),
            ("SET", "fx", "1.5"), ("INCR", "fx"), ("INCRBYFLOAT", "fx", "1"), ("GET", "fx"),
            ("SET", "fe", "1e3"), ("INCRBYFLOAT", "fe", "1"),
            ("SET", "fh", "0x10"), ("INCRBYFLOAT", "fh", "1"),
            ("SET", "fw", " 1.5"), ("INCRBYFLOAT", "fw", "1"),
            ("SET", "fe2", "5.0e3"), ("INCRBYFLOAT", "fe2", "5.0e3"), ("GET", "fe2"),
        ])

    def test_string_ops(self):
        self.run_script([
            ("APPEND", "s", "hello"), ("APPEND", "s", " world"), ("GET", "s"),
            ("APPEND", "s", ""), ("STRLEN", "s"), ("STRLEN", "nokey"), ("APPEND", "s"),
            ("STRLEN",), ("STRLEN", "a", "b"),
            ("SET", "ae", "1", "EX", "100"), ("APPEND", "ae", "2"), ("GET", "ae"),
            (("TTL", "ae"), INT(95, 100)),
            ("GETRANGE", "s", "0", "4"), ("GETRANGE", "s", "-5", "-1"),
            ("GETRANGE", "s", "0", "-1"), ("GETRANGE", "s", "5", "3"),
            ("GETRANGE", "s", "-100", "100"), ("GETRANGE", "s", "100", "200"),
            ("GETRANGE", "s", "0", "0"), ("GETRANGE", "s", "-1", "-5"),
            ("GETRANGE", "s", str(I64MIN), str(I64MAX)), ("GETRANGE", "nokey", "0", "-1"),
            ("GETRANGE", "s", "a", "1"), ("GETRANGE", "s", "0"), ("GETRANGE", "s", "1.0", "2"),
            ("SET", "e", ""), ("GETRANGE", "e", "0", "-1"), ("GETRANGE", "e", "0", "0"),
            ("SETRANGE", "s", "6", "WORLD"), ("GET", "s"), ("SETRANGE", "s", "15", "!"),
            ("GET", "s"), ("STRLEN", "s"), ("SETRANGE", "s", "0", ""), ("GET", "s"),
            ("SETRANGE", "new", "3", "abc"), ("GET", "new"), ("SETRANGE", "new2", "0", ""),
            ("EXISTS", "new2"), ("SETRANGE", "new3", "5", ""), ("EXISTS", "new3"),
            ("SETRANGE", "s", "-1", "x"), ("SETRANGE", "s", "abc", "x"),
            ("SETRANGE", "s", "536870912", "x"), ("SETRANGE", "s", str(I64MAX), "x"),
            ("SETRANGE", "s", "0"), ("GET", "s"),
            ("SET", "n", "12"), ("APPEND", "n", "3"), ("INCR", "n"), ("SETRANGE", "n", "0", "9"),
            ("INCR", "n"), ("GET", "n"),
        ])

    def test_expiry_commands(self):
        now = int(time.time())
        self.run_script([
            ("SET", "k", "v"), ("TTL", "k"), ("PTTL", "k"), ("TTL", "nokey"), ("PTTL", "nokey"),
            ("EXPIRE", "k", "100"), (("TTL", "k"), INT(95, 100)), ("PERSIST", "k"),
            ("TTL", "k"), ("PERSIST", "k"), ("PERSIST", "nokey"), ("EXPIRE", "nokey", "10"),
            ("EXPIRE", "k", "abc"), ("EXPIRE", "k", "1.5"), ("EXPIRE", "k"), ("PERSIST",),
            ("EXPIRE", "k", "9999999999999999"), ("PEXPIRE", "k", str(I64MAX)),
            ("EXPIRE", "k", str(I64MAX)), ("EXPIREAT", "k", str(I64MAX)),
            ("PEXPIREAT", "k", str(I64MAX)), ("EXPIRE", "k", str(I64MIN)),
            ("TTL", "k"), ("PERSIST", "k"),
            ("EXPIRE", "k", "100", "NX"), ("EXPIRE", "k", "200", "NX"),
            (("TTL", "k"), INT(95, 100)), ("EXPIRE", "k", "200", "XX"),
            (("TTL", "k"), INT(195, 200)), ("EXPIRE", "k", "100", "GT"),
            ("EXPIRE", "k", "300", "GT"), (("TTL", "k"), INT(295, 300)),
            ("EXPIRE", "k", "400", "LT"), ("EXPIRE", "k", "50", "LT"),
            (("TTL", "k"), INT(45, 50)), ("EXPIRE", "k", "10", "NX", "XX"),
            ("EXPIRE", "k", "10", "GT", "LT"), ("EXPIRE", "k", "10", "FOO"),
            ("EXPIRE", "k", "10", "XX", "GT"), ("EXPIRE", "k", "10", "NX", "GT"),
            ("PERSIST", "k"), ("EXPIRE", "k", "100", "XX"), ("EXPIRE", "k", "100", "GT"),
            ("EXPIRE", "k", "100", "LT"), (("TTL", "k"), INT(95, 100)),
            ("PEXPIRE", "k", "100000"), (("PTTL", "k"), INT(95000, 100000)),
            ("PEXPIRE", "k", "abc"), ("PEXPIRE", "k", "10", "NX"),
            ("EXPIREAT", "k", str(now + 1000)), (("TTL", "k"), INT(995, 1000)),
            ("PEXPIREAT", "k", str((now + 500) * 1000)), (("TTL", "k"), INT(495, 500)),
            ("EXPIREAT", "k", "abc"), ("PEXPIREAT", "k"),
            ("EXPIRE", "k", "0"), ("EXISTS", "k"), ("GET", "k"),
            ("SET", "k", "v"), ("EXPIRE", "k", "-1"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("PEXPIRE", "k", "-100"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("EXPIREAT", "k", str(now - 100)), ("EXISTS", "k"),
            ("SET", "k", "v"), ("PEXPIREAT", "k", "1"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("EXPIREAT", "k", "0"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("EXPIRE", "k", "0", "XX"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("EXPIRE", "k", "-1", "GT"), ("EXISTS", "k"),
            ("SET", "k", "v"), ("EXPIRE", "k", "-1", "LT"), ("EXISTS", "k"),
            ("SET", "k", "v", "PX", "1"),
        ] + [(("PING",), EXACT)] * 1)
        time.sleep(0.05)
        self.run_script([("GET", "k"), ("EXISTS", "k"), ("TTL", "k"), ("DBSIZE",)])

    def test_wrong_arity_everywhere(self):
        # Each command with one argument too few and, for fixed arity, one too many.
        fixed = {"get": 2, "setnx": 3, "setex": 4, "psetex": 4, "getset": 3, "getdel": 2,
                 "type": 2, "incr": 2, "decr": 2, "incrby": 3, "decrby": 3,
                 "incrbyfloat": 3, "append": 3, "strlen": 2, "getrange": 4, "setrange": 4,
                 "ttl": 2, "pttl": 2, "persist": 2, "dbsize": 1, "keys": 2, "randomkey": 1,
                 "echo": 2, "select": 2}
        varargs = {"set": 3, "getex": 2, "mget": 2, "mset": 3, "msetnx": 3, "del": 2,
                   "unlink": 2, "exists": 2, "touch": 2, "expire": 3, "pexpire": 3,
                   "expireat": 3, "pexpireat": 3, "auth": 2, "client": 2, "config": 2}
        script = []
        for name, n in fixed.items():
            args = ("1",) * n
            if n > 1:
                script.append((name.upper(),) + args[:n - 2])
            script.append((name,) + args[:n - 1] + ("x",))
        for name, n in varargs.items():
            if n > 1:
                script.append((name.upper(),) + ("1",) * (n - 2))
        self.run_script(script)

    def test_random_sequence(self):
        # 4,000 seeded random string commands over a small key pool, so that they collide:
        # every reply must be the reference's.  Deadlines are long (EX 1000), so TTL is
        # compared as a range.
        rnd = random.Random(7)
        keys = ["r%d" % i for i in range(12)]
        vals = ["", "0", "1", "-1", "10", "007", "3.5", "-2.25", "1e3", "abc", "x y",
                "9223372036854775806", "-9223372036854775807", "0.1", "inf"]

        def k():
            return rnd.choice(keys)

        def v():
            return rnd.choice(vals) if rnd.random() < 0.8 else "%d" % rnd.randint(-999, 999)

        def n():
            return str(rnd.choice([0, 1, -1, 2, 5, -5, 100, 3, -100]))

        set_opts = [("NX",), ("XX",), ("GET",), ("KEEPTTL",), ("EX", "1000")]

        gens = [
            lambda: ("SET", k(), v()) + sum(rnd.sample(set_opts, rnd.randint(0, 2)), ()),
            lambda: ("GET", k()), lambda: ("GETSET", k(), v()), lambda: ("GETDEL", k()),
            lambda: ("GETEX", k()) + rnd.choice([(), ("PERSIST",), ("EX", "1000")]),
            lambda: ("MGET",) + tuple(k() for _ in range(rnd.randint(1, 4))),
            lambda: ("MSET",) + sum(((k(), v()) for _ in range(rnd.randint(1, 3))), ()),
            lambda: ("MSETNX",) + sum(((k(), v()) for _ in range(rnd.randint(1, 3))), ()),
            lambda: ("DEL",) + tuple(k() for _ in range(rnd.randint(1, 3))),
            lambda: ("EXISTS",) + tuple(k() for _ in range(rnd.randint(1, 3))),
            lambda: ("SETNX", k(), v()), lambda: ("INCR", k()), lambda: ("DECR", k()),
            lambda: ("INCRBY", k(), n()), lambda: ("DECRBY", k(), n()),
            lambda: ("INCRBYFLOAT", k(), rnd.choice(["0.5", "-1.25", "3", "1e2", "0.1",
                                                      "-0.1", "abc", "7.0"])),
            lambda: ("APPEND", k(), v()), lambda: ("STRLEN", k()),
            lambda: ("GETRANGE", k(), n(), n()), lambda: ("SETRANGE", k(), str(rnd.randint(0, 6)), v()),
            lambda: ("EXPIRE", k(), "1000") + rnd.choice([(), ("NX",), ("XX",), ("GT",), ("LT",)]),
            lambda: ("PERSIST", k()), lambda: ("TYPE", k()), lambda: ("TTL", k()),
            lambda: ("DBSIZE",),
        ]
        script = []
        for _ in range(4000):
            req = rnd.choice(gens)()
            script.append((req, TTL) if req[0] == "TTL" else req)
        self.run_script(script, resync=True)

    def test_random_floats(self):
        # INCRBYFLOAT's parsing and printing (long double, Redis's format) over 1,500
        # seeded increments of every magnitude and notation, and odd stored values.
        rnd = random.Random(3)
        odd = ["0", "1.5", "-0", "1e10", "3.0", "0.1", "-1.1e-3", "1234567890123456789",
               "5e-324", "1.7976931348623157e308", "  1", "1.", ".5", "0x1p3", "+5", "1_0",
               "nan", "1e", "-.5e1", "inf"]
        script = []
        for _ in range(1500):
            k = "f%d" % rnd.randint(0, 5)
            if rnd.random() < 0.1:
                script.append(("SET", k, rnd.choice(odd)))
                continue
            fmt = rnd.choice(["%d", "%.1f", "%.3f", "%.17g", "%e", "%.2e", "%g"])
            v = rnd.uniform(-1e6, 1e6) * rnd.choice([1, 1e-9, 1e9, 1e-300, 1e300])
            script.append(("INCRBYFLOAT", k, "%d" % int(v) if fmt == "%d" else fmt % v))
        self.run_script(script, resync=True)

    def test_random_glob_patterns(self):
        # KEYS with 2,000 seeded patterns built from glob syntax (* ? [ ] ^ - \\) over keys
        # that hold those characters too.
        keys = ["", "a", "b", "ab", "abc", "a*c", "a?c", "a[c", "a]c", "a\\c", "hello", "hallo",
                "hxllo", "h^llo", "x-y", "-", "]", "[", "\\", "*", "?", "aaa", "abab", "\x00a"]
        script = [("MSET",) + tuple(x for k in keys for x in (k, "1"))]
        rnd = random.Random(4)
        alphabet = "abchlo*?[]^-\\xy"
        for _ in range(2000):
            pat = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 7)))
            script.append((("KEYS", pat), SORTED))
        self.run_script(script)

    def _exchanges(self, port, cases):
        """Send each case on its own fresh connection, all at once; then collect, for each,
        (bytes received, closed by the server) once the server has had time to answer."""
        conns = [Conn(port, timeout=5) for _ in cases]
        try:
            for c, raw in zip(conns, cases):
                c.send(raw)
            time.sleep(0.5)
            out = []
            for c in conns:
                data, closed = b"", False
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    got = c.read_available(0.02)
                    if got is None:
                        closed = True
                        break
                    if got == b"":
                        break
                    data += got
                out.append((data, closed))
            return out
        finally:
            for c in conns:
                c.close()

    def test_raw_framing(self):
        # Each request on a fresh connection, compared with what redis sends, and whether it
        # closes the connection (protocol errors do).  Redis's leniencies are mirrored:
        # "*0" and negative counts are skipped, the two bytes after a payload and the byte
        # after a count line's \r are not checked.
        cases = [
            b"*0\r\n*1\r\n$4\r\nPING\r\n",
            b"*-1\r\n*-5\r\n*1\r\n$4\r\nPING\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n",
            b"*1\rX$4\r\nPING\r\n",
            b"*2\r\n$4\r\nECHO\r\n$000003\r\nabc\r\n",
            b"*002\r\n$4\r\nECHO\r\n$1\r\nz\r\n",
            b"*2\r\n$3\r\nGET\r\nx\r\n",
            b"*1\r\n:4\r\nPING\r\n",
            b"*abc\r\n",
            b"*1x\r\n",
            b"*\r\n",
            b"*2\r\n$3\r\nGET\r\n$-1\r\n",
            b"*2\r\n$3\r\nGET\r\n$abc\r\n",
            b"*2\r\n$3\r\nGET\r\n$\r\n",
            b"*2\r\n$3\r\nGET\r\n$536870913\r\n",
            b"*2\r\n$3\r\nGET\r\n$9999999999999999999999\r\n",
            b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nECHO\r\n*1\r\n$4\r\nPING\r\n",
            b"*1\r\n$4\r\nPING\r\n*x\r\n*1\r\n$4\r\nPING\r\n",
            b"*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n",
            b"*2\r\n$4\r\nPING\r\n$0\r\n\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        ]
        bad = []
        for raw, got, want in zip(cases, self._exchanges(self.rk.port, cases),
                                  self._exchanges(self.ref.port, cases)):
            if got != want:
                bad.append("  request %r\n    ringkv: %r\n    redis:  %r" % (raw, got, want))
        if bad:
            self.fail("%d of %d exchanges differ from redis-server's:\n%s" % (
                len(bad), len(cases), "\n".join(bad)))

    # ---- by design: ringkv differs, assert ringkv alone ------------------------------------

    def test_hello3_is_noproto(self):
        # ringkv speaks RESP2 only; redis 7 would switch this connection to RESP3.
        self.assertEqual(self.a.cmd("HELLO", "3"), b"-NOPROTO unsupported protocol version\r\n")
        self.assertEqual(self.a.cmd("PING"), b"+PONG\r\n")

    def test_documented_differences(self):
        # docs/PROTOCOL.md 2.6: COMMAND INFO of an unknown name is a null array.
        self.assertEqual(self.a.cmd("COMMAND", "INFO", "nosuch"), b"*1\r\n*-1\r\n")
        # docs/PROTOCOL.md 2.5: HELLO 3 is NOPROTO even before authentication.
        self.assertEqual(self.a.cmd("CONFIG", "SET", "requirepass", "pw"), b"+OK\r\n")
        try:
            with Conn(self.rk.port) as c:
                self.assertEqual(c.cmd("HELLO", "3"), b"-NOPROTO unsupported protocol version\r\n")
        finally:
            self.assertEqual(self.a.cmd("CONFIG", "SET", "requirepass", ""), b"+OK\r\n")
        # docs/PROTOCOL.md 2.1: SET with a past EXAT deletes at once (Redis keeps it until
        # its sweep), so DBSIZE does not count it.
        self.assertEqual(self.a.cmd("SET", "past", "v", "EXAT", "1"), b"+OK\r\n")
        self.assertEqual(self.a.cmd("DBSIZE"), b":0\r\n")

    def test_requirepass_at_runtime(self):
        # CONFIG SET requirepass on both, then compare what new connections get.
        for c in (self.a, self.b):
            self.assertEqual(c.cmd("CONFIG", "SET", "requirepass", "pw"), b"+OK\r\n")
        try:
            a = Conn(self.rk.port)
            b = Conn(self.ref.port)
            saved = (self.a, self.b)
            self.a, self.b = a, b
            try:
                self.run_script([
                    ("GET", "x"), ("PING",), ("SET", "x", "1"), ("FOO",), ("GET",),
                    ("HELLO", "2", "SETNAME", "x"), ("HELLO",), ("CLIENT", "SETNAME", "x"),
                    ("AUTH", "wrong"), ("AUTH", "default", "wrong"), ("AUTH", "x", "y", "z"),
                    ("HELLO", "2", "AUTH", "default", "wrong"),
                    (("HELLO", "2", "AUTH", "default", "pw"), HELLO), ("GET", "x"),
                    ("AUTH", "wrong"), ("GET", "x"), ("AUTH", "pw"), ("AUTH", "default", "pw"),
                    ("SET", "x", "1"), ("GET", "x"),
                ])
            finally:
                self.a, self.b = saved
                a.close()
                b.close()
        finally:
            for c in (self.a, self.b):
                c.cmd("AUTH", "pw")
                self.assertEqual(c.cmd("CONFIG", "SET", "requirepass", ""), b"+OK\r\n")


if __name__ == "__main__":
    unittest.main()
