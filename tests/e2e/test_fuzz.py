"""
Fuzz: 300 seeded random byte strings (up to 4 KiB), mixing valid RESP and line requests,
truncated and corrupted ones, extreme counts and plain garbage, each on a fresh connection.
The server may answer or close as it likes, but afterwards it must still answer PING, and it
must exit cleanly (status 0, no sanitizer report) at the end.

Connections go in batches of 30 at once; half of them half-close their side after sending,
so the server also sees EOF in the middle of a request.  Only commands that cannot change
the server's settings or stop it are generated (no CONFIG, SHUTDOWN, DEBUG).
"""

import random
import socket
import time

from harness import ServerTestCase, resp

SEED = 20241126
NCASES = 300
MAXLEN = 4096
BATCH = 30

COMMANDS = [
    ("GET", 1), ("SET", 2), ("SET", 4), ("SETNX", 2), ("SETEX", 3), ("PSETEX", 3),
    ("GETSET", 2), ("GETDEL", 1), ("GETEX", 3), ("MGET", 3), ("MSET", 4), ("MSETNX", 4),
    ("DEL", 2), ("UNLINK", 2), ("EXISTS", 3), ("TOUCH", 1), ("TYPE", 1), ("INCR", 1),
    ("DECR", 1), ("INCRBY", 2), ("DECRBY", 2), ("INCRBYFLOAT", 2), ("APPEND", 2),
    ("STRLEN", 1), ("GETRANGE", 3), ("SETRANGE", 3), ("EXPIRE", 2), ("PEXPIRE", 3),
    ("EXPIREAT", 2), ("PEXPIREAT", 2), ("TTL", 1), ("PTTL", 1), ("PERSIST", 1),
    ("DBSIZE", 0), ("KEYS", 1), ("SCAN", 3), ("RANDOMKEY", 0), ("PING", 1), ("ECHO", 1),
    ("SELECT", 1), ("AUTH", 1), ("HELLO", 2), ("CLIENT", 2), ("INFO", 1), ("COMMAND", 1),
    ("QUIT", 0), ("FLUSHALL", 0), ("NOSUCH", 2),
]

ARGS = [b"k", b"key:1", b"", b"0", b"1", b"-1", b"10", b"100000", b"9223372036854775807",
        b"-9223372036854775808", b"1.5", b"inf", b"nan", b"EX", b"PX", b"NX", b"XX", b"GET",
        b"KEEPTTL", b"PERSIST", b"*", b"a*b?[c]", b"\x00\r\n", b"SETNAME", b"ID", b"COUNT",
        b"MATCH", b"x" * 300, b"\xff" * 7, b"\"quoted\"", b"'q'"]


def random_request(rnd):
    name, n = rnd.choice(COMMANDS)
    args = [rnd.choice(ARGS) if rnd.random() < 0.8 else
            bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 20)))
            for _ in range(rnd.randint(0, n + 1))]
    if rnd.random() < 0.6:
        return resp(name, *args)
    words = []
    for a in [name.encode()] + args:
        if rnd.random() < 0.2:
            words.append(b'"' + a.replace(b'"', b'\\"') + b'"')
        else:
            words.append(a)
    return b" ".join(words) + rnd.choice([b"\n", b"\r\n"])


def random_garbage(rnd):
    kinds = [
        lambda: bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 200))),
        lambda: b"*" + str(rnd.choice([-5, 0, 1, 2, 3, 1048576, 1048577, 2**31, 2**63])).encode()
        + b"\r\n",
        lambda: b"$" + str(rnd.choice([-2, -1, 0, 5, 536870912, 2**40])).encode() + b"\r\n",
        lambda: b"*2\r\n$3\r\nGET\r\n" + rnd.choice([b"x", b"$", b":", b"*1"]) + b"\r\n",
        lambda: b"\r\n" * rnd.randint(1, 20),
        lambda: b'SET k "unterminated\n',
        lambda: b"SET k 'a\\'\n",
        lambda: b'ECHO "\\x' + bytes([rnd.randrange(256)]) + b'"\n',
        lambda: b"\x00" * rnd.randint(1, 100),
        lambda: b"*1\r\n$" + b"9" * rnd.randint(1, 30) + b"\r\n",
        lambda: b"*" + b"9" * rnd.randint(15, 40) + b"\r\n",
    ]
    return rnd.choice(kinds)()


def make_case(rnd):
    parts = []
    size = rnd.choice([16, 64, 256, 1024, MAXLEN])
    while sum(map(len, parts)) < size:
        r = rnd.random()
        if r < 0.5:
            parts.append(random_request(rnd))
        elif r < 0.8:
            parts.append(random_garbage(rnd))
        else:
            # A request cut short, or with some bytes flipped.
            req = bytearray(random_request(rnd))
            if rnd.random() < 0.5 and len(req) > 1:
                req = req[:rnd.randrange(1, len(req))]
            else:
                for _ in range(rnd.randint(1, 3)):
                    req[rnd.randrange(len(req))] = rnd.randrange(256)
            parts.append(bytes(req))
        if rnd.random() < 0.3:
            break
    return b"".join(parts)[:MAXLEN]


class Fuzz(ServerTestCase):

    def test_random_inputs_do_not_hurt_the_server(self):
        srv = self.start_server(threads=2, shards=64)
        rnd = random.Random(SEED)
        cases = [make_case(rnd) for _ in range(NCASES)]
        half_close = [rnd.random() < 0.5 for _ in range(NCASES)]
        for start in range(0, NCASES, BATCH):
            socks = []
            try:
                for i in range(start, min(start + BATCH, NCASES)):
                    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                    socks.append((i, s))
                for i, s in socks:
                    try:
                        s.sendall(cases[i])
                        if half_close[i]:
                            s.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass  # the server may close first: that is allowed
                time.sleep(0.05)
                deadline = time.monotonic() + 1.0
                for i, s in socks:
                    s.settimeout(max(0.01, min(0.05, deadline - time.monotonic())))
                    try:
                        while s.recv(65536):
                            pass
                    except OSError:
                        pass
            finally:
                for _, s in socks:
                    s.close()
            self.assertTrue(srv.alive(), "the server died during batch %d; case %r" % (
                start // BATCH, [cases[i][:80] for i, _ in socks]))
        self.assertTrue(srv.alive(), "the server died")
        with srv.conn(10) as c:
            self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
            self.assertEqual(c.cmd("SET", "after-fuzz", "ok"), b"+OK\r\n")
            self.assertEqual(c.cmd("GET", "after-fuzz"), b"$2\r\nok\r\n")
