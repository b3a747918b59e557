"""
Regression tests, each named for what broke.
"""

import signal
import time

from harness import ServerTestCase, info_field


class Regressions(ServerTestCase):

    def test_fan_out_with_empty_remote_replies_on_a_fresh_server(self):
        # FLUSHALL's parts on the other worker reply nothing; copying that empty reply from a
        # never-allocated scratch buffer was memcpy(dst, NULL, 0): undefined behaviour, which
        # UBSan aborts on.  Also CLIENT LIST when the other worker has no clients.
        srv = self.start_server(threads=2, shards=64)
        c = self.connect(srv)
        self.assertEqual(c.cmd("FLUSHALL"), b"+OK\r\n")
        self.assertEqual(c.cmd("PING"), b"+PONG\r\n")
        srv2 = self.start_server(threads=3, shards=8)
        c2 = self.connect(srv2)
        # The readiness probe's connection may still be closing: wait until only we are left,
        # so that the workers other than ours have no client to list.
        deadline = time.monotonic() + 3
        while info_field(c2, "clients", "connected_clients") != "1":
            self.assertLess(time.monotonic(), deadline, "connected_clients never went to 1")
            time.sleep(0.05)
        listing = c2.call("CLIENT", "LIST")
        self.assertEqual(listing.count(b"\n"), 1, listing)
        self.assertEqual(c2.cmd("PING"), b"+PONG\r\n")

    def test_sigterm_stops_an_idle_server(self):
        # Workers noticed the stop flag on their timer tick, then went back to sleep waiting
        # for a completion that no longer came (the timer is not re-armed once stopping).
        for threads in (1, 2):
            srv = self.start_server(threads=threads)
            time.sleep(0.3)
            t0 = time.monotonic()
            rc = srv.stop(signal.SIGTERM)
            took = time.monotonic() - t0
            srv.check(self)
            self.assertEqual(rc, 0)
            self.assertLess(took, 2.0, "threads %d: %.1f s to stop" % (threads, took))
