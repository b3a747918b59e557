"""
Large values: a 5 MB value SET in RESP and read back byte for byte, from a fast writer (one
send) and from a slow one (7-byte pieces with short sleeps, so the server sees the request
arrive in thousands of fragments; bounded to about 1.5 s, after which the rest goes in 64 KiB
pieces), on keys of both workers.
"""

import random
import time

from harness import SharedServerTestCase, resp, send_in_background

SIZE = 5 * 1000 * 1000


def make_value(seed):
    rnd = random.Random(seed)
    # Random bytes, with CR LF and '$' among them so that no reader can resync on them.
    return rnd.randbytes(SIZE - 7) + b"\r\n$-1\r\n"


class LargeValues(SharedServerTestCase):
    server_kw = {"threads": 2, "shards": 64}

    def get_back(self, c, key, value):
        c.send(resp("GET", key))
        head = c.read_line()
        self.assertEqual(head, b"$%d\r\n" % len(value))
        body = c.read_exact(len(value) + 2)
        self.assertTrue(body[:-2] == value, "the value read back differs")
        self.assertEqual(body[-2:], b"\r\n")

    def test_fast_writer(self):
        c = self.connect(self.srv, timeout=60)
        for key in ("big:a", "big:b", "big:c"):
            value = make_value(key)
            join = send_in_background(c, resp("SET", key, value))
            self.assertEqual(c.read_reply(), b"+OK\r\n")
            join()
            self.assertEqual(c.cmd("STRLEN", key), b":%d\r\n" % SIZE)
            self.get_back(c, key, value)
        # MGET of two of them in one reply.
        a, b = make_value("big:a"), make_value("big:b")
        c.send(resp("MGET", "big:a", "missing", "big:b"))
        self.assertEqual(c.read_line(), b"*3\r\n")
        self.assertEqual(c.read_line(), b"$%d\r\n" % SIZE)
        self.assertTrue(c.read_exact(SIZE + 2) == a + b"\r\n")
        self.assertEqual(c.read_line(), b"$-1\r\n")
        self.assertEqual(c.read_line(), b"$%d\r\n" % SIZE)
        self.assertTrue(c.read_exact(SIZE + 2) == b + b"\r\n")
        self.assertEqual(c.cmd("DEL", "big:a", "big:b", "big:c"), b":3\r\n")

    def test_slow_writer(self):
        c = self.connect(self.srv, timeout=60)
        for key in ("slow:x", "slow:y"):
            value = make_value(key)
            data = resp("SET", key, value) + resp("GET", key)
            pos, pieces, t0 = 0, 0, time.monotonic()
            while pos < len(data) and time.monotonic() - t0 < 1.5 and pieces < 200000:
                c.send(data[pos:pos + 7])
                pos += 7
                pieces += 1
                if pieces % 200 == 0:
                    time.sleep(0.001)
            while pos < len(data):
                c.send(data[pos:pos + 65536])
                pos += 65536
            self.assertGreater(pieces, 1000)
            self.assertEqual(c.read_reply(), b"+OK\r\n")
            self.assertEqual(c.read_line(), b"$%d\r\n" % SIZE)
            self.assertTrue(c.read_exact(SIZE + 2) == value + b"\r\n")
            self.assertEqual(c.cmd("DEL", key), b":1\r\n")

    def test_slow_writer_whole_request_in_small_pieces(self):
        # A smaller value sent entirely in 7-byte pieces, header and trailer included.
        c = self.connect(self.srv, timeout=60)
        value = random.Random(5).randbytes(50000)
        data = resp("SET", "slow:z", value)
        for i in range(0, len(data), 7):
            c.send(data[i:i + 7])
            if i % 1400 == 0:
                time.sleep(0.0005)
        self.assertEqual(c.read_reply(), b"+OK\r\n")
        self.assertEqual(c.cmd("GET", "slow:z"), b"$50000\r\n" + value + b"\r\n")
