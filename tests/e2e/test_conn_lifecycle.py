"""
A connection's end while work for it is still away on another worker: QUIT and protocol
errors after pipelined cross-worker requests still deliver every earlier reply, in order,
then close; clients that reset the connection mid-pipeline or never read their replies do
not hurt the server (which must stay up and exit clean).
"""

import socket
import struct
import time

from harness import SharedServerTestCase, info_field, resp

KEYS = ["lc%d" % i for i in range(40)]  # with 64 shards on 2 workers: both workers


def bulk(s):
    s = s.encode() if isinstance(s, str) else s
    return b"$%d\r\n%s\r\n" % (len(s), s)


class ConnLifecycle(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def setUp(self):
        self.c = self.connect(self.srv)
        self.c.send(resp("FLUSHALL") + resp("MSET", *[x for k in KEYS for x in (k, k)]))
        self.assertEqual(self.c.read_replies(2), [b"+OK\r\n", b"+OK\r\n"])
        self.gets = b"".join(bulk(k) for k in KEYS)

    def test_quit_after_cross_worker_requests(self):
        c = self.connect(self.srv)
        c.send(b"".join(resp("GET", k) for k in KEYS) + resp("QUIT") + resp("DEL", "lc1"))
        self.assertEqual(c.read_until_closed(5), self.gets + b"+OK\r\n")
        self.assertEqual(self.c.cmd("EXISTS", "lc1"), b":1\r\n", "a request after QUIT ran")

    def test_protocol_error_after_cross_worker_requests(self):
        c = self.connect(self.srv)
        c.send(b"".join(resp("GET", k) for k in KEYS) + b"*2\r\n$3\r\nGET\r\nx\r\n")
        self.assertEqual(c.read_until_closed(5),
                         self.gets + b"-ERR Protocol error: expected '$', got 'x'\r\n")
        c = self.connect(self.srv)
        c.send(b"".join(b"GET %s\n" % k.encode() for k in KEYS) + b'GET "x\n')
        self.assertEqual(c.read_until_closed(5),
                         b"".join(k.encode() + b"\n" for k in KEYS)
                         + b"ERR Protocol error: unbalanced quotes in request\r\n")

    def test_reset_with_work_in_flight(self):
        linger = struct.pack("ii", 1, 0)  # close() sends RST at once
        mset = resp("MSET", *[x for k in KEYS for x in (k, k)])
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
            try:
                s.sendall(resp("MGET", *KEYS) * 10 + mset + resp("DEL", "nokey")
                          + (resp("DBSIZE") if i % 2 else resp("KEYS", "lc1*")))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            finally:
                s.close()
        self.assertTrue(self.srv.alive())
        self.assertEqual(self.c.cmd("DBSIZE"), b":%d\r\n" % len(KEYS))
        self.assertEqual(self.c.call("MGET", *KEYS), [k.encode() for k in KEYS])

    def test_client_that_never_reads(self):
        self.assertEqual(self.c.cmd("SET", "big", b"x" * 1000000), b"+OK\r\n")
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(resp("GET", "big") * 40)
            time.sleep(0.3)
            # Others are still served meanwhile.
            self.assertEqual(self.c.cmd("GET", "lc0"), bulk("lc0"))
        finally:
            s.close()
        deadline = time.monotonic() + 3
        while info_field(self.c, "clients", "connected_clients") != "1":
            self.assertLess(time.monotonic(), deadline, "the closed client is still counted")
            time.sleep(0.05)

    def test_maxclients_changed_at_run_time(self):
        deadline = time.monotonic() + 3
        while info_field(self.c, "clients", "connected_clients") != "1":
            self.assertLess(time.monotonic(), deadline, "other clients still connected")
            time.sleep(0.05)
        self.assertEqual(self.c.cmd("CONFIG", "SET", "maxclients", "1"), b"+OK\r\n")
        try:
            extra = self.connect(self.srv)
            self.assertEqual(extra.read_until_closed(5),
                             b"-ERR max number of clients reached\r\n")
        finally:
            self.assertEqual(self.c.cmd("CONFIG", "SET", "maxclients", "10000"), b"+OK\r\n")
        self.assertEqual(self.connect(self.srv).cmd("PING"), b"+PONG\r\n")
