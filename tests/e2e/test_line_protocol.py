"""
The line protocol on the RESP port: "SET k v\\n" -> "OK\\n", replies in plain lines, the
client's line ending echoed back, Redis's quoting rules, and both protocols mixed on one
connection.  Every reply is checked byte for byte.
"""

import time

from harness import SharedServerTestCase, resp


class LineProtocol(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def setUp(self):
        self.c = self.connect(self.srv)
        self.c.send(b"FLUSHALL\n")
        self.assertEqual(self.c.read_line(), b"OK\n")

    def exchange(self, req, nlines):
        """Send req, return exactly the next nlines lines joined."""
        self.c.send(req)
        return b"".join(self.c.read_line() for _ in range(nlines))

    def test_set_get_nil(self):
        self.assertEqual(self.exchange(b"SET k v\n", 1), b"OK\n")
        self.assertEqual(self.exchange(b"GET k\n", 1), b"v\n")
        self.assertEqual(self.exchange(b"GET missing\n", 1), b"(nil)\n")
        self.assertEqual(self.exchange(b"PING\n", 1), b"PONG\n")
        self.assertEqual(self.exchange(b"ping hello\n", 1), b"hello\n")
        self.assertEqual(self.exchange(b"SET k v\nGET k\nGET missing\n", 3),
                         b"OK\nv\n(nil)\n")
        # Tabs and runs of blanks separate words; blank lines are skipped without a reply.
        self.assertEqual(self.exchange(b"SET\tk2  \t w\n\n   \nGET k2\n", 2), b"OK\nw\n")

    def test_crlf_gets_crlf(self):
        self.assertEqual(self.exchange(b"SET k v\r\n", 1), b"OK\r\n")
        self.assertEqual(self.exchange(b"GET k\r\n", 1), b"v\r\n")
        self.assertEqual(self.exchange(b"GET missing\r\n", 1), b"(nil)\r\n")
        self.assertEqual(self.exchange(b"INCR n\r\n", 1), b"1\r\n")
        self.assertEqual(self.exchange(b"FOO\r\n", 1), b"ERR unknown command 'FOO'\r\n")
        # Each request's own ending decides its reply's.
        self.assertEqual(self.exchange(b"GET k\nGET k\r\nGET k\n", 3), b"v\nv\r\nv\n")
        self.assertEqual(self.exchange(b"MGET k missing\r\n", 2), b"v\r\n(nil)\r\n")
        self.assertEqual(self.exchange(b"KEYS nomatch*\r\n", 1), b"(empty array)\r\n")

    def test_errors(self):
        self.assertEqual(self.exchange(b"FOO\n", 1), b"ERR unknown command 'FOO'\n")
        self.assertEqual(self.exchange(b"FOO a b\n", 1), b"ERR unknown command 'FOO'\n")
        self.assertEqual(self.exchange(b"SET k\n", 1),
                         b"ERR wrong number of arguments for 'set' command\n")
        self.assertEqual(self.exchange(b"get\n", 1),
                         b"ERR wrong number of arguments for 'get' command\n")
        self.assertEqual(self.exchange(b"SET s abc\nINCR s\n", 2),
                         b"OK\nERR value is not an integer or out of range\n")
        self.assertEqual(self.exchange(b"SET k v EX abc\n", 1),
                         b"ERR value is not an integer or out of range\n")
        self.assertEqual(self.exchange(b"SET k v NX XX\n", 1), b"ERR syntax error\n")
        # An error does not close the connection.
        self.assertEqual(self.exchange(b"PING\n", 1), b"PONG\n")

    def test_integers_as_digits(self):
        self.assertEqual(self.exchange(b"INCR n\n", 1), b"1\n")
        self.assertEqual(self.exchange(b"INCRBY n 41\n", 1), b"42\n")
        self.assertEqual(self.exchange(b"DECRBY n 50\n", 1), b"-8\n")
        self.assertEqual(self.exchange(b"EXISTS n n missing\n", 1), b"2\n")
        self.assertEqual(self.exchange(b"TTL missing\n", 1), b"-2\n")
        self.assertEqual(self.exchange(b"TTL n\n", 1), b"-1\n")
        self.assertEqual(self.exchange(b"DBSIZE\n", 1), b"1\n")
        self.assertEqual(self.exchange(b"DEL n missing\n", 1), b"1\n")
        self.assertEqual(self.exchange(b"INCRBYFLOAT f 1.5\n", 1), b"1.5\n")

    def test_arrays(self):
        self.assertEqual(self.exchange(b"MSET a 1 b 2\n", 1), b"OK\n")
        self.assertEqual(self.exchange(b"MGET a missing b\n", 3), b"1\n(nil)\n2\n")
        self.assertEqual(self.exchange(b"MGET missing\n", 1), b"(nil)\n")
        self.assertEqual(self.exchange(b"KEYS nomatch*\n", 1), b"(empty array)\n")
        self.assertEqual(self.exchange(b"FLUSHALL\n", 1), b"OK\n")
        self.assertEqual(self.exchange(b"KEYS *\n", 1), b"(empty array)\n")
        self.assertEqual(self.exchange(b"SET only 1\nKEYS *\n", 2), b"OK\nonly\n")
        self.assertEqual(self.exchange(b"RANDOMKEY\n", 1), b"only\n")
        # Keys on different shards and workers still come back one per line, in key order.
        keys = [b"key:%d" % i for i in range(50)]
        self.c.send(b"MSET " + b" ".join(k + b" v" + k for k in keys) + b"\n")
        self.assertEqual(self.c.read_line(), b"OK\n")
        got = self.exchange(b"MGET " + b" ".join(keys) + b"\n", len(keys))
        self.assertEqual(got, b"".join(b"v" + k + b"\n" for k in keys))

    def test_quoting(self):
        self.assertEqual(self.exchange(b'SET k "a b"\n', 1), b"OK\n")
        self.assertEqual(self.exchange(b"GET k\n", 1), b"a b\n")
        self.assertEqual(self.exchange(b"SET k 'single quoted'\nGET k\n", 2),
                         b"OK\nsingle quoted\n")
        self.assertEqual(self.exchange(b'SET k "tab\\there"\nSTRLEN k\n', 2), b"OK\n8\n")
        self.assertEqual(self.exchange(b'SET k "\\x41\\x42\\\\\\""\nGET k\n', 2), b'OK\nAB\\"\n')
        self.assertEqual(self.exchange(b"SET k 'it\\'s'\nGET k\n", 2), b"OK\nit's\n")
        self.assertEqual(self.exchange(b'SET "" empty\nGET ""\n', 2), b"OK\nempty\n")
        self.assertEqual(self.exchange(b'SET k ""\nSTRLEN k\n', 2), b"OK\n0\n")
        # The same key written in RESP is the one read in line form.
        self.c.send(resp("SET", "sp ace", "x y"))
        self.assertEqual(self.c.read_reply(), b"+OK\r\n")
        self.assertEqual(self.exchange(b'GET "sp ace"\n', 1), b"x y\n")

    def test_unbalanced_quotes_close(self):
        # A protocol error in line form always ends in \r\n (docs/PROTOCOL.md 1.5), and
        # nothing after it is read.
        self.c.send(b'SET k "abc\nGET k\n')
        self.assertEqual(self.c.read_until_closed(5),
                         b"ERR Protocol error: unbalanced quotes in request\r\n")
        c2 = self.connect(self.srv)
        c2.send(b'SET k "a"b\n')
        self.assertEqual(c2.read_until_closed(5),
                         b"ERR Protocol error: unbalanced quotes in request\r\n")

    def test_mixed_protocols_one_connection(self):
        self.c.send(b"SET k v\n" + resp("GET", "k") + b"GET k\r\n" + resp("INCR", "n")
                    + b"INCR n\n" + resp("MGET", "k", "missing") + b"MGET k missing\n"
                    + resp("PING") + b"PING\n")
        self.assertEqual(self.c.read_line(), b"OK\n")
        self.assertEqual(self.c.read_reply(), b"$1\r\nv\r\n")
        self.assertEqual(self.c.read_line(), b"v\r\n")
        self.assertEqual(self.c.read_reply(), b":1\r\n")
        self.assertEqual(self.c.read_line(), b"2\n")
        self.assertEqual(self.c.read_reply(), b"*2\r\n$1\r\nv\r\n$-1\r\n")
        self.assertEqual(self.c.read_line() + self.c.read_line(), b"v\n(nil)\n")
        self.assertEqual(self.c.read_reply(), b"+PONG\r\n")
        self.assertEqual(self.c.read_line(), b"PONG\n")
        # Nothing more is sent.
        self.assertEqual(self.c.read_available(0.2), b"")

    def test_split_line_requests(self):
        # A line request arriving a few bytes at a time is still one request.
        for piece in (b"SE", b"T k", b"ey va", b"lue", b"\r", b"\nGET", b" key\n"):
            self.c.send(piece)
            time.sleep(0.01)
        self.assertEqual(self.c.read_line(), b"OK\r\n")
        self.assertEqual(self.c.read_line(), b"value\n")
