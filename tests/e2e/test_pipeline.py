"""
Pipelines whose keys span every shard: 5,000 mixed SET/GET/INCR/MGET/DEL requests over many
keys, sent in one go, and every reply checked in order against a model (a dict), for several
worker/shard layouts.  Replies made on other workers must still come back in request order.
"""

import random

from harness import ServerTestCase, resp, send_in_background

NREQ = 5000
NKEYS = 400
NCOUNTERS = 100


def build_pipeline(seed):
    """(request bytes, expected reply bytes for each request) from a seeded model run."""
    rnd = random.Random(seed)
    model = {}
    keys = [b"key:%d" % i for i in range(NKEYS)]
    counters = [b"ctr:%d" % i for i in range(NCOUNTERS)]
    reqs, want = [], []

    def bulk(v):
        return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)

    def is_int(v):
        # Redis's string2ll: optional '-', no leading zeros or '+', no blanks, fits int64.
        if not v or len(v) > 20:
            return False
        s = v[1:] if v[:1] == b"-" else v
        if not s.isdigit() or (len(s) > 1 and s[:1] == b"0") or v == b"-0":
            return False
        return -2**63 <= int(v) < 2**63

    for _ in range(NREQ):
        op = rnd.random()
        k = rnd.choice(keys if rnd.random() < 0.7 else counters)
        if op < 0.30:
            if k.startswith(b"ctr") and rnd.random() < 0.8:
                v = str(rnd.randint(-1000, 1000)).encode()
            else:
                n = rnd.choice((0, 1, 5, 20, 60, 300))
                v = bytes(rnd.choice(b"abcxyz 0123456789\r\n\x00\xff") for _ in range(n))
            reqs.append(resp(b"SET", k, v))
            want.append(b"+OK\r\n")
            model[k] = v
        elif op < 0.55:
            reqs.append(resp(b"GET", k))
            want.append(bulk(model.get(k)))
        elif op < 0.75:
            cur = model.get(k, b"0")
            reqs.append(resp(b"INCR", k))
            if is_int(cur) and int(cur) < 2**63 - 1:
                model[k] = str(int(cur) + 1).encode()
                want.append(b":%s\r\n" % model[k])
            else:
                want.append(b"-ERR value is not an integer or out of range\r\n")
        elif op < 0.90:
            ks = [rnd.choice(keys + counters) for _ in range(rnd.randint(1, 12))]
            reqs.append(resp(b"MGET", *ks))
            want.append(b"*%d\r\n" % len(ks) + b"".join(bulk(model.get(x)) for x in ks))
        else:
            ks = [rnd.choice(keys + counters) for _ in range(rnd.randint(1, 6))]
            n = 0
            for x in ks:
                if x in model:
                    del model[x]
                    n += 1
            reqs.append(resp(b"DEL", *ks))
            want.append(b":%d\r\n" % n)
    return reqs, want, model


class Pipeline(ServerTestCase):

    def run_pipeline(self, seed, **layout):
        srv = self.start_server(**layout)
        c = self.connect(srv, timeout=30)
        reqs, want, model = build_pipeline(seed)
        join = send_in_background(c, b"".join(reqs))
        try:
            for i, w in enumerate(want):
                got = c.read_reply()
                if got != w:
                    self.fail("reply %d of %d differs\n  request %r\n  want %r\n  got  %r" % (
                        i, len(want), reqs[i][:200], w[:200], got[:200]))
        finally:
            join()
        # Nothing extra came back, and the final state matches the model.
        self.assertEqual(c.read_available(0.1), b"")
        self.assertEqual(c.cmd("DBSIZE"), b":%d\r\n" % len(model))
        ks = sorted(model)
        self.c_check_mget(c, ks, model)

    def c_check_mget(self, c, ks, model):
        got = c.call("MGET", *ks) if ks else []
        self.assertEqual(got, [model[k] for k in ks])

    def test_threads2_shards64(self):
        self.run_pipeline(1, threads=2, shards=64)

    def test_threads1(self):
        self.run_pipeline(2, threads=1)

    def test_threads3_shards8(self):
        self.run_pipeline(3, threads=3, shards=8)
