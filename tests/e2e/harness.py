"""
harness: what every end-to-end test needs to run the real ringkv-server and talk to it.

- server_path(): the binary under test, $RINGKV_SERVER, else build/asan, else build/rel.
- free_port(): a TCP port on 127.0.0.1 that nothing listens on right now.
- Server: starts ringkv-server on 127.0.0.1 and a free port, waits until it answers, and
  stops it by its pid (SIGTERM, then SIGKILL after a timeout).  stop() returns the exit
  status; check() fails the test if the exit status is not 0 or the captured stderr holds a
  sanitizer report.  Used as a context manager, it always stops the process.
- RedisServer: the same for a real redis-server, the reference for differential tests.
- Conn: a raw socket client with a timeout on every read, a RESP2 reader that returns each
  reply's exact bytes, and line readers for the line protocol.
- resp(): encodes a request as a RESP2 multibulk; parse(): decodes reply bytes.

Nothing here sleeps without a bound: every wait has a deadline.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# How long a server may take to exit after SIGTERM before it is killed (and the test fails).
STOP_TIMEOUT = 8.0

SANITIZER_MARKS = (b"ERROR: AddressSanitizer", b"ERROR: LeakSanitizer", b"runtime error:",
                   b"WARNING: ThreadSanitizer", b"ERROR: ThreadSanitizer")


def built_binary(env, name):
    """$env if set, else build/asan/<name>, else build/rel/<name>; None if none exists."""
    p = os.environ.get(env)
    if p:
        return os.path.abspath(p)
    for rel in ("build/asan/" + name, "build/rel/" + name):
        c = os.path.join(REPO, rel)
        if os.path.exists(c):
            return c
    return None


def server_path():
    return built_binary("RINGKV_SERVER", "ringkv-server") or \
        os.path.join(REPO, "build/asan/ringkv-server")


def is_sanitized():
    """True when the binary under test was built with ASan (it is slower: scale waits)."""
    try:
        with open(server_path(), "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    # Something may listen on 0.0.0.0 or accept on a wildcard with SO_REUSEPORT: try connecting.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def redis_server_binary():
    return shutil.which("redis-server")


def redis_cli_binary():
    return shutil.which("redis-cli")


# ---- processes -------------------------------------------------------------------------------


class _Process:
    """A server process with its stdout and stderr captured to files in a temp dir."""

    name = "server"
    host = "127.0.0.1"  # where wait_ready finds it

    def __init__(self):
        self.proc = None
        self.port = None
        self.tmpdir = None
        self.rc = None

    def _spawn(self, argv, env=None):
        self.tmpdir = tempfile.mkdtemp(prefix="ringkv-e2e-")
        self.out_path = os.path.join(self.tmpdir, "stdout")
        self.err_path = os.path.join(self.tmpdir, "stderr")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=self.tmpdir, env=env)

    @property
    def pid(self):
        return self.proc.pid

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read()

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=20.0):
        """Poll until the port accepts a connection and answers PING; raise if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s before it was ready:\n%s\n%s" % (
                    self.name, self.proc.returncode, self.stdout().decode(errors="replace"),
                    self.stderr().decode(errors="replace")))
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    s.settimeout(2.0)
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    # With requirepass, NOAUTH also says the server is up.
                    if s.recv(64)[:6] in (b"+PONG\r", b"-NOAUT"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("%s did not answer on %s:%d within %.0f s" % (
            self.name, self.host, self.port, timeout))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Signal the process by its pid, wait, SIGKILL after timeout.  Returns the exit status
        (negative: killed by that signal).  Safe to call twice."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_timeout = "%.0f s after %s" % (
                    timeout, signal.Signals(sig).name)
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.rc = self.proc.returncode
        return self.rc

    def wait_exit(self, timeout):
        """Wait for the process to exit on its own; returns its status or None on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def sanitizer_report(self):
        err = self.stderr() + self.stdout()
        for m in SANITIZER_MARKS:
            i = err.find(m)
            if i >= 0:
                return err[max(0, i - 200):i + 3000].decode(errors="replace")
        return None

    def check(self, tc=None, expect_rc=0):
        """After stop(): fail unless the exit status is expect_rc and stderr is clean."""
        self.checked = True
        problems = []
        if getattr(self, "killed_after_timeout", False):
            problems.append("%s (pid %d) had not exited %s: killed" % (
                self.name, self.proc.pid, self.killed_after_timeout))
        elif self.rc != expect_rc:
            problems.append("%s exited with status %s, expected %s" % (
                self.name, self.rc, expect_rc))
        rep = self.sanitizer_report()
        if rep:
            problems.append("sanitizer report in its output:\n" + rep)
        elif problems:
            problems.append("its output ends with:\n" +
                            (self.stdout() + self.stderr()).decode(errors="replace")[-2000:])
        if problems:
            msg = "\n".join(problems)
            if tc is not None:
                tc.fail(msg)
            raise AssertionError(msg)

    def cleanup(self):
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def conn(self, timeout=10.0):
        return Conn(self.port, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is None:
            self.check()
        self.cleanup()
        return False


class Server(_Process):
    """ringkv-server on 127.0.0.1:<free port>.  args are extra command-line words."""

    name = "ringkv-server"

    def __init__(self, *args, threads=2, shards=None, port=None, config_file=None,
                 loglevel="notice", start=True, ready_timeout=30.0, bare=False):
        """bare: the command line is only [config_file] args (no --port, --bind, --threads,
        --loglevel); port must then say where it will listen."""
        super().__init__()
        self.bare = bare
        self.args = list(args)
        self.threads = threads
        self.shards = shards
        self.config_file = config_file
        self.loglevel = loglevel
        self.fixed_port = port
        if start:
            self.start(ready_timeout)

    def argv(self):
        a = [server_path()]
        if self.config_file:
            a.append(self.config_file)
        if self.bare:
            return a + self.args
        a += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.threads is not None:
            a += ["--threads", str(self.threads)]
        if self.shards is not None:
            a += ["--shards", str(self.shards)]
        if self.loglevel:
            a += ["--loglevel", self.loglevel]
        return a + self.args

    def start(self, ready_timeout=30.0):
        # A port found free may be taken before the server binds it: try a few ports.
        for attempt in range(5):
            self.port = self.fixed_port or free_port()
            env = dict(os.environ)
            env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
            self._spawn(self.argv(), env=env)
            try:
                self.wait_ready(ready_timeout)
                return
            except RuntimeError:
                if (self.proc.poll() is not None and b"can't listen" in self.stderr()
                        and attempt < 4 and not self.fixed_port):
                    self.cleanup()
                    continue
                self.stop(signal.SIGKILL)
                self.cleanup()
                raise


class RedisServer(_Process):
    """A reference redis-server, no persistence, on 127.0.0.1:<free port>."""

    name = "redis-server"

    def __init__(self, *args):
        super().__init__()
        binary = redis_server_binary()
        if not binary:
            raise unittest.SkipTest("redis-server is not installed")
        for attempt in range(5):
            self.port = free_port()
            self._spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
                        + list(args))
            try:
                self.wait_ready(15)
                return
            except RuntimeError:
                self.stop(signal.SIGKILL)
                self.cleanup()
                if attempt == 4:
                    raise

    def check(self, tc=None, expect_rc=0):
        pass  # the reference's exit status is not what we test


def run_server_cmd(args, timeout=20.0):
    """Run ringkv-server with args to completion (for --help and bad options)."""
    p = subprocess.run([server_path()] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# ---- RESP ------------------------------------------------------------------------------------


def _b(x):
    if isinstance(x, bytes):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return str(x).encode()


def resp(*args):
    """One request as a RESP2 multibulk."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


class Status(str):
    pass


class Error(str):
    pass


class Incomplete(Exception):
    pass


def _reply_end(buf, pos):
    """The end offset of the reply starting at pos, or raise Incomplete."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        raise Incomplete()
    t = buf[pos:pos + 1]
    if t in (b"+", b"-", b":"):
        return nl + 2
    if t == b"$":
        n = int(buf[pos + 1:nl])
        if n < 0:
            return nl + 2
        end = nl + 2 + n + 2
        if len(buf) < end:
            raise Incomplete()
        return end
    if t == b"*":
        n = int(buf[pos + 1:nl])
        p = nl + 2
        for _ in range(max(n, 0)):
            p = _reply_end(buf, p)
        return p
    raise ValueError("not a RESP2 reply at offset %d: %r" % (pos, bytes(buf[pos:pos + 60])))


def parse(raw):
    """Decode one RESP2 reply: bytes for bulk, None for nil, int, Status, Error, list."""
    v, end = _parse_at(raw, 0)
    if end != len(raw):
        raise ValueError("trailing bytes after reply: %r" % raw[end:end + 40])
    return v


def _parse_at(buf, pos):
    nl = buf.index(b"\r\n", pos)
    t, line = buf[pos:pos + 1], buf[pos + 1:nl]
    if t == b"+":
        return Status(line.decode()), nl + 2
    if t == b"-":
        return Error(line.decode()), nl + 2
    if t == b":":
        return int(line), nl + 2
    if t == b"$":
        n = int(line)
        if n < 0:
            return None, nl + 2
        return bytes(buf[nl + 2:nl + 2 + n]), nl + 2 + n + 2
    if t == b"*":
        n = int(line)
        if n < 0:
            return None, nl + 2
        out, p = [], nl + 2
        for _ in range(n):
            v, p = _parse_at(buf, p)
            out.append(v)
        return out, p
    raise ValueError("bad reply type %r" % t)


class Conn:
    """A raw client.  Every read has a timeout (socket.timeout is raised past it)."""

    def __init__(self, port, timeout=10.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed by the server; unread: %r"
                                  % bytes(self.buf[:200]))
        self.buf += chunk

    def read_reply(self):
        """The exact bytes of the next RESP2 reply."""
        while True:
            if self.buf:
                try:
                    end = _reply_end(self.buf, 0)
                    out = bytes(self.buf[:end])
                    del self.buf[:end]
                    return out
                except Incomplete:
                    pass
            self._fill()

    def read_replies(self, n):
        return [self.read_reply() for _ in range(n)]

    def read_line(self):
        """Bytes up to and including the next \\n."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def cmd(self, *args):
        """Send one RESP request, return the raw reply bytes."""
        self.send(resp(*args))
        return self.read_reply()

    def call(self, *args):
        """Send one RESP request, return the decoded reply."""
        return parse(self.cmd(*args))

    def read_until_closed(self, timeout=5.0):
        """Read until EOF (or a reset); returns what came.  Raises socket.timeout if the server
        keeps the connection open past timeout."""
        deadline = time.monotonic() + timeout
        data = bytes(self.buf)
        self.buf.clear()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("server kept the connection open; got %r" % data[:300])
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                raise socket.timeout("server kept the connection open; got %r" % data[:300])
            if not chunk:
                self.sock.settimeout(self.timeout)
                return data
            data += chunk

    def read_available(self, wait=0.05):
        """Whatever arrives within `wait` seconds (b'' if nothing); None on EOF."""
        self.sock.settimeout(wait)
        data = bytes(self.buf)
        self.buf.clear()
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return data if data else None
                data += chunk
        except (socket.timeout, BlockingIOError):
            return data
        except ConnectionResetError:
            return data if data else None
        finally:
            self.sock.settimeout(self.timeout)


def info_field(conn, section, field):
    """A field of INFO <section> as a string, or None."""
    raw = conn.call("INFO", section)
    for line in raw.decode().split("\r\n"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1]
    return None


class ServerTestCase(unittest.TestCase):
    """A test case with helpers to run servers that are always stopped and checked."""

    def start_server(self, *args, **kw):
        """Start a server stopped (and checked: exit 0, no sanitizer report) at cleanup."""
        s = Server(*args, **kw)
        self.addCleanup(self._finish, s)
        return s

    def _finish(self, s):
        try:
            if s.rc is None:
                s.stop()
            if not getattr(s, "checked", False):
                s.check(self)
        finally:
            s.cleanup()

    def connect(self, srv, timeout=10.0):
        """A Conn to srv, closed at cleanup.  If srv has died (an earlier test of a shared
        server may have crashed it), fail with why rather than with "connection refused"."""
        if srv.proc is not None and srv.proc.poll() is not None:
            self.fail("%s is not running (exit status %s); its output ends with:\n%s" % (
                srv.name, srv.proc.returncode, srv.sanitizer_report()
                or (srv.stdout() + srv.stderr()).decode(errors="replace")[-2000:]))
        c = srv.conn(timeout)
        self.addCleanup(c.close)
        return c


class SharedServerTestCase(ServerTestCase):
    """One server for every test of the class (started in setUpClass, stopped and checked in
    tearDownClass): for tests that need no special options and clean up after themselves."""

    server_args = ()
    server_kw = {}

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(*cls.server_args, **cls.server_kw)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.srv.stop()
            cls.srv.check()
        finally:
            cls.srv.cleanup()


def send_in_background(conn, data, timeout=60.0):
    """Send data from another thread, so that replies can be read meanwhile (a big pipeline
    would otherwise fill both sides' socket buffers and stall).  Returns a function that
    waits for the send to finish (up to timeout) and raises what it raised."""
    err = []

    def run():
        try:
            conn.send(data)
        except BaseException as e:  # reported to the caller by join()
            err.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(timeout)
        if t.is_alive():
            raise AssertionError("sending %d bytes did not finish within %.0f s" % (
                len(data), timeout))
        if err:
            raise err[0]

    return join
