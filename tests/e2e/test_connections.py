"""
1,000 concurrent connections: each sends a SET and a GET and gets both replies right, all
are closed, and INFO's connected_clients goes back to 1 (the INFO connection itself).
"""

import resource
import socket
import time

from harness import ServerTestCase, info_field, resp

NCONN = 1000
NEED_FDS = 2100


def raise_nofile(need):
    """Raise this process's soft RLIMIT_NOFILE to need (children inherit it).  Returns the
    resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                v = line.split()[3]
                return float("inf") if v == "unlimited" else int(v)
    return 0


class ManyConnections(ServerTestCase):

    def test_1000_concurrent_connections(self):
        if raise_nofile(NEED_FDS) < NEED_FDS:
            self.skipTest("RLIMIT_NOFILE is below %d and cannot be raised" % NEED_FDS)
        srv = self.start_server(threads=2, shards=64)
        if proc_nofile(srv.pid) < NEED_FDS:
            self.skipTest("the server's open-file limit is below %d" % NEED_FDS)
        socks = []
        try:
            for i in range(NCONN):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
                s.settimeout(20)
                socks.append(s)
            for i, s in enumerate(socks):
                s.sendall(resp("SET", "conn:%d" % i, "value-%d" % i) + resp("GET", "conn:%d" % i))
            for i, s in enumerate(socks):
                v = b"value-%d" % i
                want = b"+OK\r\n$%d\r\n%s\r\n" % (len(v), v)
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(len(want) - len(got))
                    if not chunk:
                        break
                    got += chunk
                self.assertEqual(got, want, "connection %d" % i)
        finally:
            for s in socks:
                s.close()
        c = self.connect(srv)
        self.assertEqual(c.cmd("DBSIZE"), b":%d\r\n" % NCONN)
        deadline = time.monotonic() + 2.0
        n = None
        while time.monotonic() < deadline:
            n = info_field(c, "clients", "connected_clients")
            if n == "1":
                break
            time.sleep(0.05)
        self.assertEqual(n, "1", "connected_clients did not go back to 1 within 2 s")
        self.assertEqual(info_field(c, "stats", "rejected_connections"), "0")
