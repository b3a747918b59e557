#!/usr/bin/python3
"""
run: find and run every end-to-end test (tests/e2e/test_*.py) against the real ringkv-server.

    /usr/bin/python3 tests/e2e/run.py [PATTERN ...]

The server binary is $RINGKV_SERVER (default build/asan/ringkv-server, else
build/rel/ringkv-server).  Each test prints one line: PASS, FAIL or SKIP, its name, its time
(and a skip's reason).  The details of failures follow, then the closing line
"N passed, N failed" (", N skipped" when some were skipped).  Exit status 0 only if none
failed.  PATTERNs (substrings of "module.Class.test") select tests.

RINGKV_E2E_NO_SKIP=1 counts a skip as a failure: CI (.ci/run) sets it, since on the clean
Debian 12 machine it runs on, as root, `make test` has installed everything the tests need,
and a test that skipped there would be a test that proves nothing.
"""

import os
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

NO_SKIP = os.environ.get("RINGKV_E2E_NO_SKIP", "") not in ("", "0")


class LineResult(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.passed = 0
        self.failed = []   # (test id, what failed, traceback text)
        self.skipped_n = 0
        self.t0 = {}
        self.printed = set()

    @staticmethod
    def _name(test):
        return test.id()

    def startTest(self, test):
        super().startTest(test)
        self.t0[test.id()] = time.monotonic()

    def _took(self, test):
        t = self.t0.get(test.id())
        return time.monotonic() - t if t is not None else 0.0

    def _line(self, word, test, extra=""):
        # One line per test: a test that fails again (in its cleanup) is listed once; its
        # every failure is still printed in full at the end.
        name = self._name(test)
        if name in self.printed:
            return
        self.printed.add(name)
        print("%-4s %-70s %6.2fs%s" % (word, self._name(test), self._took(test), extra),
              flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line("PASS", test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.failed.append((test.id(), test.id(), self._exc_info_to_string(err, test)))
        self._line("FAIL", test)

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass/tearDownClass failures arrive here as an _ErrorHolder.
        if isinstance(err[1], unittest.SkipTest):
            self.addSkip(test, str(err[1]))
            return
        self.failed.append((test.id(), test.id(), self._exc_info_to_string(err, test)))
        self._line("FAIL", test, "  (error)")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if NO_SKIP:
            self.failed.append((test.id(), test.id(), "skipped (%s), and RINGKV_E2E_NO_SKIP=1 "
                                "counts a skip as a failure" % reason))
            self._line("FAIL", test, "  (skipped: %s)" % reason)
            return
        self.skipped_n += 1
        self._line("SKIP", test, "  (%s)" % reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line("PASS", test, "  (expected failure)")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.failed.append((test.id(), test.id(), "unexpected success"))
        self._line("FAIL", test, "  (unexpected success)")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            # Counted once, under its test's name.
            self.failed.append((test.id(), "%s %s" % (test.id(), subtest._subDescription()),
                                self._exc_info_to_string(err, test)))
            self._line("FAIL", test)


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def main(argv):
    patterns = [a for a in argv if not a.startswith("-")]
    os.chdir(harness.REPO)
    server = harness.server_path()
    print("ringkv e2e: server %s%s" % (server, " (ASan)" if harness.is_sanitized() else ""),
          flush=True)
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(flatten(suite))
    if patterns:
        tests = [t for t in tests if any(p in t.id() for p in patterns)]
    result = LineResult()
    t0 = time.monotonic()
    if not os.path.exists(server):
        print("ringkv-server not found at %s: build it first" % server)
        print("0 passed, 1 failed")
        return 1
    unittest.TestSuite(tests).run(result)
    for _, what, text in result.failed:
        print("\n==== FAIL: %s\n%s" % (what, text), flush=True)
    # A test that failed more than once (its body and its cleanup) counts once.
    nfailed = len({key for key, _, _ in result.failed})
    npassed = result.passed
    print("\n(%.1f s)" % (time.monotonic() - t0))
    line = "%d passed, %d failed" % (npassed, nfailed)
    if result.skipped_n:
        line += ", %d skipped" % result.skipped_n
    print(line, flush=True)
    return 0 if nfailed == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception:
        traceback.print_exc()
        print("0 passed, 1 failed")
        sys.exit(1)
