"""
Bad input and limits: malformed RESP gets Redis's protocol error and the connection is
closed; proto-max-bulk-len, client-query-buffer-limit, maxclients, requirepass and the idle
timeout each do what they say.  After each, the server still answers other clients.
"""

import socket
import time

from harness import ServerTestCase, SharedServerTestCase, info_field, resp


def send_and_read_until_closed(conn, data, timeout=5.0):
    conn.send(data)
    return conn.read_until_closed(timeout)


class MalformedResp(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def tearDown(self):
        # Whatever the test sent, the server still serves a new client.
        with self.srv.conn(5) as c:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")

    def closes_with(self, data, reply):
        c = self.connect(self.srv)
        self.assertEqual(send_and_read_until_closed(c, data), reply)

    def test_expected_dollar(self):
        self.closes_with(b"*2\r\n$3\r\nGET\r\nx\r\n",
                         b"-ERR Protocol error: expected '$', got 'x'\r\n")

    def test_invalid_multibulk_length(self):
        self.closes_with(b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n")
        self.closes_with(b"*1x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n")
        # More than 1024*1024 arguments is refused at once (proto.h: max_mbulk).
        self.closes_with(b"*1048577\r\n", b"-ERR Protocol error: invalid multibulk length\r\n")

    def test_invalid_bulk_length(self):
        for bad in (b"-1", b"abc", b"", b"1.5", b"536870913"):
            self.closes_with(b"*2\r\n$3\r\nGET\r\n$" + bad + b"\r\n",
                             b"-ERR Protocol error: invalid bulk length\r\n")

    def test_too_big_count_lines(self):
        self.closes_with(b"*" + b"1" * 70000, b"-ERR Protocol error: too big mbulk count string\r\n")
        self.closes_with(b"*1\r\n$" + b"1" * 70000,
                         b"-ERR Protocol error: too big bulk count string\r\n")

    def test_too_big_inline_request(self):
        # A line request (the line protocol) gets its error as a line: "ERR ...", no '-'.
        self.closes_with(b"A" * (65 * 1024), b"ERR Protocol error: too big inline request\r\n")
        self.closes_with(b"SET k " + b"v" * (64 * 1024 + 10) + b"\n",
                         b"ERR Protocol error: too big inline request\r\n")

    def test_unbalanced_quotes(self):
        c = self.connect(self.srv)
        self.assertEqual(send_and_read_until_closed(c, b'SET k "abc\n'),
                         b"ERR Protocol error: unbalanced quotes in request\r\n")
        c = self.connect(self.srv)
        data = send_and_read_until_closed(c, b"GET 'x\r\n")
        self.assertEqual(data, b"ERR Protocol error: unbalanced quotes in request\r\n")

    def test_requests_before_the_error_are_answered_after_it_none(self):
        self.closes_with(resp("SET", "pe", "1") + b"*2\r\n$3\r\nGET\r\nx\r\n" + resp("DEL", "pe"),
                         b"+OK\r\n-ERR Protocol error: expected '$', got 'x'\r\n")
        with self.srv.conn(5) as c:
            self.assertEqual(c.cmd("GET", "pe"), b"$1\r\n1\r\n")
            self.assertEqual(c.cmd("DEL", "pe"), b":1\r\n")

    def test_split_malformed_request(self):
        # The same error when the bad byte arrives on its own, later.
        c = self.connect(self.srv)
        c.send(b"*2\r\n$3\r\nGET\r\n")
        time.sleep(0.1)
        self.assertEqual(send_and_read_until_closed(c, b"?1\r\nk\r\n"),
                         b"-ERR Protocol error: expected '$', got '?'\r\n")


class ProtoMaxBulkLen(ServerTestCase):

    def test_bulk_over_proto_max_bulk_len(self):
        srv = self.start_server("--proto-max-bulk-len", "1mb", threads=2)
        c = self.connect(srv)
        self.assertEqual(send_and_read_until_closed(c, b"*2\r\n$3\r\nGET\r\n$2000000\r\n"),
                         b"-ERR Protocol error: invalid bulk length\r\n")
        c = self.connect(srv)
        self.assertEqual(c.cmd("SET", "k", b"x" * (1 << 20)), b"+OK\r\n")
        self.assertEqual(c.cmd("STRLEN", "k"), b":1048576\r\n")
        # Values built by APPEND and SETRANGE are held to the same limit.
        self.assertEqual(c.cmd("APPEND", "k", "y"),
                         b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n")
        self.assertEqual(c.cmd("SETRANGE", "k2", str(1 << 20), "y"),
                         b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n")
        self.assertEqual(send_and_read_until_closed(
            c, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048577\r\n"),
            b"-ERR Protocol error: invalid bulk length\r\n")


class ClientQueryBufferLimit(ServerTestCase):

    def test_query_buffer_over_limit_closes(self):
        srv = self.start_server("--client-query-buffer-limit", "1mb",
                                "--proto-max-bulk-len", "8mb", threads=2)
        c = self.connect(srv)
        header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n"
        closed = False
        try:
            c.send(header)
            payload = b"z" * 65536
            for _ in range(2000000 // len(payload) + 1):
                c.send(payload)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            try:
                rest = c.read_until_closed(5)
            except ConnectionResetError:
                rest = b""
            self.assertEqual(rest, b"", "the server replied instead of closing")
        with srv.conn(5) as c2:
            self.assertEqual(c2.cmd("EXISTS", "k"), b":0\r\n")
            self.assertEqual(c2.cmd("PING"), b"+PONG\r\n")
        # A value under the limit in one request goes through.
        with srv.conn(5) as c3:
            self.assertEqual(c3.cmd("SET", "k", b"y" * 900000), b"+OK\r\n")
            self.assertEqual(c3.cmd("STRLEN", "k"), b":900000\r\n")


class MaxClients(ServerTestCase):

    def test_sixth_client_is_refused(self):
        srv = self.start_server("--maxclients", "5", threads=2)
        first = self.connect(srv)
        # The readiness probe's connection may still be closing: wait until it is gone.
        deadline = time.monotonic() + 3
        while info_field(first, "clients", "connected_clients") != "1":
            self.assertLess(time.monotonic(), deadline, "connected_clients never went to 1")
            time.sleep(0.05)
        conns = [first] + [self.connect(srv) for _ in range(4)]
        for c in conns:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
        sixth = self.connect(srv)
        self.assertEqual(sixth.read_until_closed(5), b"-ERR max number of clients reached\r\n")
        for c in conns:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
        self.assertEqual(info_field(first, "clients", "maxclients"), "5")
        self.assertEqual(info_field(first, "stats", "rejected_connections"), "1")
        # Once one leaves, a new client gets in (the close is seen asynchronously: retry).
        conns.pop().close()
        deadline = time.monotonic() + 3
        while True:
            c = srv.conn(5)
            try:
                if c.cmd("PING") == b"+PONG\r\n":
                    break
            except (ConnectionError, OSError):
                pass
            finally:
                c.close()
            self.assertLess(time.monotonic(), deadline, "no client admitted after one left")
            time.sleep(0.1)


class RequirePass(ServerTestCase):

    def test_noauth_wrongpass_then_auth(self):
        srv = self.start_server("--requirepass", "secret", threads=2)
        c = self.connect(srv)
        self.assertEqual(c.cmd("GET", "a"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(c.cmd("SET", "a", "1"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(c.cmd("AUTH", "wrong"),
                         b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        self.assertEqual(c.cmd("AUTH", "default", "wrong"),
                         b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        self.assertEqual(c.cmd("AUTH", "someone", "secret"),
                         b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        self.assertEqual(c.cmd("GET", "a"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(c.cmd("AUTH", "secret"), b"+OK\r\n")
        self.assertEqual(c.cmd("GET", "a"), b"$-1\r\n")
        self.assertEqual(c.cmd("SET", "a", "1"), b"+OK\r\n")
        self.assertEqual(c.cmd("GET", "a"), b"$1\r\n1\r\n")
        # AUTH with the user name, and the line protocol.
        c2 = self.connect(srv)
        self.assertEqual(c2.cmd("AUTH", "default", "secret"), b"+OK\r\n")
        self.assertEqual(c2.cmd("GET", "a"), b"$1\r\n1\r\n")
        c3 = self.connect(srv)
        c3.send(b"GET a\n")
        self.assertEqual(c3.read_line(), b"NOAUTH Authentication required.\n")
        c3.send(b"AUTH secret\nGET a\n")
        self.assertEqual(c3.read_line() + c3.read_line(), b"OK\n1\n")
        # A refused request leaves the connection open; a new one starts unauthenticated.
        c4 = self.connect(srv)
        self.assertEqual(c4.cmd("PING"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(c4.cmd("AUTH", "secret"), b"+OK\r\n")
        self.assertEqual(c4.cmd("PING"), b"+PONG\r\n")


class IdleTimeout(ServerTestCase):

    def test_idle_client_closed(self):
        srv = self.start_server("--timeout", "1", threads=2)
        idle = self.connect(srv)
        busy = self.connect(srv)
        self.assertEqual(idle.cmd("PING"), b"+PONG\r\n")
        t0 = time.monotonic()
        # The busy client keeps talking every 0.3 s and must stay connected.
        closed_at = None
        while time.monotonic() - t0 < 2.5:
            self.assertEqual(busy.cmd("PING"), b"+PONG\r\n")
            if closed_at is None and idle.read_available(0.3) is None:
                closed_at = time.monotonic() - t0
        if closed_at is None:
            try:
                idle.read_until_closed(1.5)
                closed_at = time.monotonic() - t0
            except socket.timeout:
                self.fail("the idle client was not closed within 4 s (--timeout 1)")
        self.assertGreaterEqual(closed_at, 0.9, "closed too early")
        self.assertLessEqual(closed_at, 2.5, "closed too late")
        self.assertEqual(busy.cmd("PING"), b"+PONG\r\n")
