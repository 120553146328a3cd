"""Integration test harness: a private ringbid stack per test file, real agent clients, a tiny runner.

A Stack is one RINGBID_HOME under build/itest/<name> with its own port block, its own PostgreSQL
(started by `ringbid up`) and the four services. Tests drive it only through the shipped
programs (bin/ringbid, bin/ringbid-agent) and the raw socket probe (build/tools/rb_probe), so
what they check is what an operator and an agent would see.

Test files define functions named test_*; run_tests() runs them in file order, prints
"ok test_x (3.2 s)" or "FAIL test_x: reason", and ends with the line "N passed, M failed".
Python 3 standard library only.
"""

import calendar
import csv
import decimal
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import zlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "bin")
RINGBID = os.path.join(BIN, "ringbid")
AGENT = os.path.join(BIN, "ringbid-agent")
PROBE = os.path.join(ROOT, "build", "tools", "rb_probe")
ITEST = os.path.join(ROOT, "build", "itest")

SERVICES = ("billing", "auction", "presence", "broker")

# Port offsets from RINGBID_PORT_BASE (common/rb_config.h).
PORT_BROKER_CALLS = 1
PORT_BROKER_AUCTION = 2
PORT_BROKER_PRESENCE = 3
PORT_AUCTION_PRESENCE = 4
PORT_PRESENCE_AGENTS = 5
PORT_BILLING_CDRS = 6
HTTP_PORT = {"broker": 81, "auction": 82, "presence": 83, "billing": 84}
STACK_OFFSETS = (1, 2, 3, 4, 5, 6, 81, 82, 83, 84)

# Error codes (common/rb_err.h) the tests look for.
RB_EINVAL = -2
RB_ETOOBIG = -3
RB_EDECODE = -4
RB_EAUTH = -5
RB_ENOTFOUND = -6
RB_ESTATE = -7
RB_ESLOWDOWN = -17
RB_EFORBIDDEN = -18

SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error: ")

AGENT_STATES = ("OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP")

# Variables from the caller's environment that would point the stack somewhere else.
_SCRUB = ("RINGBID_DATABASE_URL", "RINGBID_SERVICE_TOKEN", "RINGBID_SERVICE_TOKEN_FILE",
          "RINGBID_PG_PORT", "RINGBID_BROKER_JOURNAL", "PGHOST", "PGPORT", "PGDATABASE",
          "PGUSER", "PGPASSWORD", "PGSERVICE", "RINGBID_AGENT_SECRET",
          "RINGBID_AGENT_SECRET_FILE")


class TestFailure(Exception):
    """An expectation did not hold; the message says what was expected and what was seen."""


def expect(cond, msg, *args):
    if not cond:
        raise TestFailure(msg % args if args else msg)


def expect_eq(got, want, what):
    if got != want:
        raise TestFailure("%s: expected %r, got %r" % (what, want, got))


def wait_until(fn, timeout, what, interval=0.1):
    """Polls fn() until it returns something truthy; returns that value or fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1f s waiting for %s (last: %r)"
                              % (timeout, what, last))
        time.sleep(interval)


def _port_free(port):
    for family, addr in ((socket.AF_INET, "127.0.0.1"),):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def pick_port_base(name, lo=10000, step=100):
    """A port block whose stack ports are free, starting from a slot chosen by name.

    Blocks stay below the kernel's ephemeral port range: a port there can be taken at any
    moment as the local end of some outgoing connection, and a service then cannot listen.
    """
    hi = min(_ephemeral_range()[0], 65400) - step
    slots = max(1, (hi - lo) // step)
    first = zlib.crc32(name.encode()) % slots
    for i in range(slots):
        base = lo + ((first + i) % slots) * step
        if all(_port_free(base + off) for off in STACK_OFFSETS):
            return base
    raise TestFailure("no free port block between %d and %d" % (lo, hi))


def _pid_alive(pid):
    """True when pid runs and is not a zombie (services are reparented, maybe never reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return False


# -- /metrics ---------------------------------------------------------------------------------

def parse_metrics(text):
    """Prometheus text format: {family: {"type": t, "samples": [(name, labels, value)]}}."""
    fams = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            fams.setdefault(name, {"type": typ, "samples": []})["type"] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        expect(m is not None, "unparsable metrics line: %r", line)
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        lab = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        fam = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[:-len(suffix)] in fams:
                fam = name[:-len(suffix)]
        fams.setdefault(fam, {"type": "untyped", "samples": []})["samples"].append(
            (name, lab, value))
    return fams


def value(fams, name, labels=None):
    """The first sample called name (a histogram's _bucket/_sum/_count too) with labels."""
    for fam in fams.values():
        for n, lab, v in fam["samples"]:
            if n == name and all(lab.get(k) == w for k, w in (labels or {}).items()):
                return v
    return None


class AgentProc:
    """One `ringbid-agent --json` client; its events are read on a thread into a list."""

    def __init__(self, stack, agent_id, flags, secret_file):
        self.stack = stack
        self.agent_id = int(agent_id)
        self.flags = list(flags)
        self.events = []
        self._cond = threading.Condition()
        self._closed = False
        env = dict(stack.env)
        env["RINGBID_AGENT_SECRET_FILE"] = secret_file
        logdir = os.path.join(stack.home, "log", "agents")
        os.makedirs(logdir, exist_ok=True)
        self.stdout_path = os.path.join(logdir, "%d.events" % self.agent_id)
        self.stderr_path = os.path.join(logdir, "%d.log" % self.agent_id)
        self._stderr = open(self.stderr_path, "ab")
        self._stdout_log = open(self.stdout_path, "a")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [AGENT, "--agent", str(self.agent_id), "--json"] + self.flags,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=env, cwd=ROOT, bufsize=0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._stdout_log.write(line + "\n")
            self._stdout_log.flush()
            try:
                ev = json.loads(line)
                if not isinstance(ev, dict):
                    raise ValueError("not an object")
            except ValueError:
                ev = {"event": "_raw", "line": line}
            ev["_t"] = time.monotonic()
            with self._cond:
                ev["_i"] = len(self.events)
                self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- events ---------------------------------------------------------------------------

    def mark(self):
        """The index the next event will get: pass as after= to look only at later events."""
        with self._cond:
            return len(self.events)

    def find_all(self, after=0):
        with self._cond:
            return list(self.events[after:])

    def find(self, kind, pred=None, after=0):
        with self._cond:
            return [e for e in self.events[after:]
                    if e.get("event") == kind and (pred is None or pred(e))]

    def wait_event(self, kind, pred=None, timeout=10.0, after=0):
        """The first event of kind (with index >= after) for which pred holds; fails on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if e.get("event") == kind and (pred is None or pred(e)):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self._closed and self.proc.poll() is not None):
                    break
                self._cond.wait(min(left, 0.2))
        raise TestFailure("agent %d: no %r event%s within %.1f s (rc=%r); events: %s"
                          % (self.agent_id, kind, " matching" if pred else "", timeout,
                             self.proc.poll(), self.summary(after)))

    def wait_state(self, state, timeout=10.0, after=0):
        """Waits for any event reporting this agent state (login, resumed or state)."""
        def has(e):
            return e.get("state") == state
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if e.get("event") in ("login", "resumed", "state") and has(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self._closed and self.proc.poll() is not None):
                    break
                self._cond.wait(min(left, 0.2))
        raise TestFailure("agent %d: never reported state %s within %.1f s (rc=%r); events: %s"
                          % (self.agent_id, state, timeout, self.proc.poll(),
                             self.summary(after)))

    def state(self):
        """The last state the client reported (None before login)."""
        with self._cond:
            for e in reversed(self.events):
                if e.get("event") in ("login", "resumed", "state") and "state" in e:
                    return e["state"]
        return None

    def expect_no_event(self, kind, duration, pred=None, after=0, why=""):
        """Watches for duration seconds; fails if an event of kind (matching pred) shows up."""
        time.sleep(duration)
        got = self.find(kind, pred, after)
        expect(not got, "agent %d got unexpected %s event(s)%s: %s",
               self.agent_id, kind, (" (" + why + ")") if why else "", got)

    def summary(self, after=0, limit=40):
        with self._cond:
            evs = self.events[after:]
        out = []
        for e in evs[-limit:]:
            out.append({k: v for k, v in e.items() if not k.startswith("_") and k != "ts"})
        return json.dumps(out)

    # -- control --------------------------------------------------------------------------

    def send(self, cmd):
        """Writes one command line (ready, pause, accept, decline, end, status, logout, quit)."""
        try:
            self.proc.stdin.write((cmd + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise TestFailure("agent %d: cannot send %r: %s" % (self.agent_id, cmd, e))

    def accept(self, call_id, timeout=10.0):
        """Accepts the offer of call_id ringing now and returns its `call_connected` event.

        `accepted` only says presence took the answer: the agent is connecting until the broker
        confirms the connection, and only then is the call the agent's (talk time, `end`)."""
        after = self.mark()
        self.send("accept")
        acc = self.wait_event("accepted", lambda e: e.get("call_id") == call_id, timeout, after)
        con = self.wait_event("call_connected", lambda e: e.get("call_id") == call_id, timeout,
                              after)
        expect(acc["_i"] < con["_i"], "agent %d: call %s connected before its accept was "
               "answered: %s", self.agent_id, call_id, self.summary(after))
        return con

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout=10.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("agent %d did not exit within %.1f s; events: %s"
                              % (self.agent_id, timeout, self.summary()))

    def stop(self, timeout=5.0):
        """SIGTERM (the client logs out first), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()
        self._stdout_log.close()


class CallProc:
    """A `ringbid call ... --json` running in the background."""

    def __init__(self, stack, args, started):
        self.stack = stack
        self.args = args
        self.started = started
        self.proc = subprocess.Popen([RINGBID] + args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=stack.env, cwd=ROOT)
        self._result = None

    def result(self, timeout=90.0):
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise TestFailure("`ringbid %s` still running after %.0f s"
                                  % (" ".join(self.args), timeout))
            self._result = _parse_call(self.args, self.proc.returncode, out, err)
            self._result["_elapsed"] = time.monotonic() - self.started
        return self._result


def _parse_call(args, rc, out, err):
    text = out.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else ""
    try:
        res = json.loads(last)
    except ValueError:
        raise TestFailure("`ringbid %s` exited %d without JSON; stdout: %r stderr: %r"
                          % (" ".join(args), rc, text[-400:],
                             err.decode("utf-8", "replace")[-400:]))
    if not isinstance(res, dict):
        raise TestFailure("`ringbid %s` printed %r, not an object" % (" ".join(args), res))
    res["_rc"] = rc
    res["_stderr"] = err.decode("utf-8", "replace")
    return res


class Stack:
    """A private ringbid installation: home, ports, PostgreSQL and the four services."""

    def __init__(self, name, extra_env=None):
        self.name = name
        self.base_name = name
        self.extra_env = dict(extra_env or {})
        self.home = os.path.join(ITEST, name)
        self._lock = None
        self.agents = []
        self.calls = []
        self.call_ids = []
        self.secrets = {}
        self.port_base = None
        self.env = None
        self.started = False
        self._seq = 0

    # -- life cycle -----------------------------------------------------------------------

    def _claim_home(self):
        """Locks build/itest/<name>; if another run of the same file holds it, uses a home of
        its own (<name>.<pid>) so that neither wipes the other's stack."""
        os.makedirs(ITEST, exist_ok=True)
        for name in (self.name, "%s.%d" % (self.name, os.getpid())):
            f = open(os.path.join(ITEST, name + ".lock"), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._lock = f
            self.name = name
            self.home = os.path.join(ITEST, name)
            return
        raise TestFailure("cannot lock a home for stack %s" % self.name)

    def start(self):
        if self._lock is None:
            self._claim_home()
        shutil.rmtree(self.home, ignore_errors=True)
        os.makedirs(os.path.join(self.home, "log"), exist_ok=True)
        os.makedirs(os.path.join(self.home, "secrets"), exist_ok=True)
        # PostgreSQL runs as the postgres user when we are root: it must reach its directory.
        for d in (ITEST, self.home):
            os.chmod(d, 0o755)
        self.port_base = pick_port_base(self.name)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update({
            "RINGBID_HOME": self.home,
            "RINGBID_PORT_BASE": str(self.port_base),
            "RINGBID_LOG_LEVEL": "debug",
            "RINGBID_HEARTBEAT_MS": "500",
            "RINGBID_HEARTBEAT_TIMEOUT_MS": "3000",
        })
        # A value may name a port of this stack's block: "tcp://127.0.0.1:{p[5]}".
        ports = {i: self.port_base + i for i in range(100)}
        env.update({k: (v.format(p=ports) if "{p[" in v else v)
                    for k, v in self.extra_env.items()})
        self.env = env
        print("# stack %s home=%s port_base=%d" % (self.name, self.home, self.port_base),
              flush=True)
        self.started = True
        r = self.ringbid("up", timeout=180)
        if r.returncode != 0:
            raise TestFailure("`ringbid up` exited %d:\n%s%s"
                              % (r.returncode, r.stdout[-2000:], r.stderr[-3000:]))
        self.token = self.env_file().get("RINGBID_SERVICE_TOKEN", "")
        return self

    def up_again(self):
        """`ringbid up` once more: restarts whichever services are missing (idempotent)."""
        r = self.ringbid("up", timeout=120)
        expect(r.returncode == 0, "`ringbid up` (again) exited %d: %s %s",
               r.returncode, r.stdout[-1000:], r.stderr[-2000:])
        return r

    def stop(self):
        for a in self.agents:
            try:
                a.stop(timeout=3)
            except Exception:  # a broken client must not keep the stack up
                a.kill()
        for c in self.calls:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(5)
        if self.started:
            try:
                r = self.ringbid("down", timeout=90)
                if r.returncode != 0:
                    print("# ringbid down exited %d: %s" % (r.returncode, r.stderr[-500:]),
                          flush=True)
            except Exception as e:
                print("# ringbid down failed: %s" % e, flush=True)
            # Anything still running from this home (a service ringbid down missed).
            for name in SERVICES:
                pid = self.service_pid(name)
                if pid and _pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self.started = False
        if self._lock is not None:
            if self.name != self.base_name:
                # A side home of a concurrent run: keep its logs, drop its database files and
                # its lock so that such homes do not pile up.
                shutil.rmtree(os.path.join(self.home, "pg"), ignore_errors=True)
                try:
                    os.unlink(os.path.join(ITEST, self.name + ".lock"))
                except OSError:
                    pass
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def sanitizer_reports(self):
        """Lines where a sanitizer build of a service or client reported an error (address,
        leak or undefined behaviour): such a run fails even if every test passed."""
        found = []
        logs = glob.glob(os.path.join(self.home, "log", "*.log"))
        logs += glob.glob(os.path.join(self.home, "log", "agents", "*.log"))
        for path in sorted(logs):
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        if SANITIZER_RE.search(line):
                            found.append("%s: %s" % (os.path.relpath(path, self.home),
                                                     line.strip()[:300]))
            except OSError:
                pass
        return found

    def env_file(self):
        vals = {}
        try:
            with open(os.path.join(self.home, "env")) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and "=" in line:
                        k, v = line.split("=", 1)
                        vals[k] = v
        except OSError:
            pass
        return vals

    def unique(self, prefix):
        self._seq += 1
        return "%s-%d-%d" % (prefix, os.getpid() % 10000, self._seq)

    # -- running the CLI -----------------------------------------------------------------

    def ringbid(self, *args, timeout=60, input=None, env=None):
        """Runs bin/ringbid with the stack's environment; returns the CompletedProcess (text)."""
        e = dict(self.env)
        if env:
            e.update(env)
        try:
            return subprocess.run([RINGBID] + [str(a) for a in args], capture_output=True,
                                  text=True, timeout=timeout, env=e, cwd=ROOT, input=input)
        except subprocess.TimeoutExpired as ex:
            raise TestFailure("`ringbid %s` timed out after %s s (output so far: %r)"
                              % (" ".join(map(str, args)), timeout, ex.stdout))

    def ringbid_ok(self, *args, **kw):
        r = self.ringbid(*args, **kw)
        if r.returncode != 0:
            raise TestFailure("`ringbid %s` exited %d: %s %s"
                              % (" ".join(map(str, args)), r.returncode, r.stdout[-500:],
                                 r.stderr[-1000:]))
        return r

    def ringbid_json(self, *args, **kw):
        r = self.ringbid_ok(*args, **kw)
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise TestFailure("`ringbid %s` printed no JSON: %r"
                              % (" ".join(map(str, args)), r.stdout[-500:]))

    def secret_file(self, secret):
        """Writes secret to a private file and returns its path (secrets never go on argv)."""
        path = self.secrets.get(secret)
        if path is None:
            path = os.path.join(self.home, "secrets", "s%d" % len(self.secrets))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            self.secrets[secret] = path
        return path

    def add_program(self, pid, name=None, skills=(), ring_timeout=None, wrap_up=None,
                    max_wait=None, max_talk=None, **extra):
        args = ["program", "add", pid, "--name", name or ("Program " + pid)]
        if skills:
            args += ["--skills", ",".join(skills)]
        for flag, val in (("--ring-timeout", ring_timeout), ("--wrap-up", wrap_up),
                          ("--max-wait", max_wait), ("--max-talk", max_talk)):
            if val is not None:
                args += [flag, str(val)]
        for k, v in extra.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        return self.ringbid_ok(*args)

    def add_agent(self, aid, name=None, skills=(), score=None, secret="s3cret-pass"):
        args = ["agent", "add", str(aid), "--name", name or ("Agent %s" % aid),
                "--secret-file", self.secret_file(secret)]
        if skills:
            args += ["--skills", ",".join(skills)]
        if score is not None:
            args += ["--score", str(score)]
        logs = self._presence_logs() if self.service_alive("presence") else []
        marks = {path: os.path.getsize(path) for path in logs}
        out = self.ringbid_ok(*args)
        # Presence loads a new agent when PostgreSQL notifies it; a login that starts before
        # that is checked against no secret and refused, as for an unknown agent. Wait (a
        # while, quietly) until every running presence instance has it.
        needle = re.compile(r'"roster: agent reloaded","agent_id":%d[,}]' % int(aid))
        deadline = time.monotonic() + 10.0
        for path, off in marks.items():
            while time.monotonic() < deadline:
                with open(path, errors="replace") as f:
                    f.seek(off)
                    if needle.search(f.read()):
                        break
                time.sleep(0.05)
        return out

    def _presence_logs(self):
        return sorted(glob.glob(os.path.join(self.home, "log", "presence*.log")))

    def start_agent(self, aid, *flags, secret="s3cret-pass", wait="auto", timeout=15.0):
        """Starts a client. wait: "auto" waits for AVAILABLE (or NOT_READY with --no-ready),
        "login" waits for the login event, None returns at once."""
        a = AgentProc(self, aid, flags, self.secret_file(secret))
        self.agents.append(a)
        if wait == "auto":
            a.wait_state("NOT_READY" if "--no-ready" in flags else "AVAILABLE", timeout)
        elif wait == "login":
            a.wait_event("login", timeout=timeout)
        return a

    def stop_agents(self, agents=None):
        for a in list(agents if agents is not None else self.agents):
            a.stop()
            if a in self.agents:
                self.agents.remove(a)

    def _call_args(self, program, skills=None, talk=None, priority=None, id=None,
                   abandon_after=None, timeout=None, caller=None):
        args = ["call", program, "--json"]
        if skills:
            args += ["--skills", ",".join(skills)]
        for flag, val in (("--talk", talk), ("--priority", priority), ("--id", id),
                          ("--abandon-after", abandon_after), ("--timeout", timeout),
                          ("--caller", caller)):
            if val is not None:
                args += [flag, str(val)]
        return args

    def place_call(self, program, background=False, **opts):
        """`ringbid call PROGRAM ... --json`: the parsed JSON (with "_rc"), or a CallProc."""
        args = self._call_args(program, **opts)
        if opts.get("id"):
            self.call_ids.append(opts["id"])
        if background:
            c = CallProc(self, args, time.monotonic())
            self.calls.append(c)
            return c
        t0 = time.monotonic()
        limit = float(opts.get("timeout") or 60) + 30
        try:
            r = subprocess.run([RINGBID] + args, capture_output=True, env=self.env, cwd=ROOT,
                               timeout=limit)
        except subprocess.TimeoutExpired:
            raise TestFailure("`ringbid %s` did not return within %.0f s" % (" ".join(args),
                                                                             limit))
        res = _parse_call(args, r.returncode, r.stdout, r.stderr)
        res["_elapsed"] = time.monotonic() - t0
        return res

    def clean_up_calls(self):
        """After a failed test: stops its `ringbid call`s and hangs up calls still open, so the
        next test starts with no call waiting or connected."""
        for c in self.calls:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(5)
        self.calls = []
        for cid in self.call_ids:
            try:
                r = self.ringbid("call-info", cid, "--json", timeout=15)
                if r.returncode == 0 and json.loads(r.stdout).get("state") != "ended":
                    self.ringbid("hangup", cid, timeout=15)
            except (TestFailure, ValueError):
                pass
        self.call_ids = []

    def status(self):
        return self.ringbid_json("status", "--json")

    def explain(self, call_id):
        return self.ringbid_json("explain", call_id, "--json")

    def call_info(self, call_id):
        return self.ringbid_json("call-info", call_id, "--json")

    def agent_count(self, state, st=None):
        st = st if st is not None else self.status()
        return int((st.get("agents") or {}).get(state, 0))

    def wait_agent_count(self, state, n, timeout=10.0):
        """Waits until presence's statistics (via the broker) show n agents in state."""
        return wait_until(lambda: self.status() if self.agent_count(state) == n else None,
                          timeout, "%d agents %s in `ringbid status`" % (n, state), 0.25)

    def wait_calls_settled(self, timeout=20.0):
        """Waits until no call is waiting, ringing or connected."""
        def idle():
            st = self.status()
            if (st.get("calls_waiting", 0) == 0 and st.get("calls_offering", 0) == 0
                    and st.get("calls_connected", 0) == 0):
                return st
            return None
        return wait_until(idle, timeout, "no calls waiting, offering or connected", 0.25)

    # -- services ------------------------------------------------------------------------

    def service_pid(self, name):
        try:
            with open(os.path.join(self.home, "run", name + ".pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def service_alive(self, name):
        pid = self.service_pid(name)
        return bool(pid) and _pid_alive(pid)

    def kill_service(self, name, sig=signal.SIGKILL, timeout=15.0):
        pid = self.service_pid(name)
        expect(pid is not None, "no pid file for %s", name)
        expect(_pid_alive(pid), "%s (pid %d) is not running", name, pid)
        os.kill(pid, sig)
        wait_until(lambda: not _pid_alive(pid), timeout, "%s (pid %d) to exit" % (name, pid))
        return pid

    def port(self, offset):
        return self.port_base + offset

    def url(self, offset):
        return "tcp://127.0.0.1:%d" % self.port(offset)

    def http_get(self, port_offset, path, timeout=5.0):
        """GET on a service's admin port: (status, body text); status 0 when unreachable."""
        url = "http://127.0.0.1:%d%s" % (self.port(port_offset), path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as e:
            return 0, str(e)

    def metric(self, name_or_offset, metric, labels=None):
        """One sample of a service's /metrics (service name or admin port offset), or None."""
        off = HTTP_PORT.get(name_or_offset, name_or_offset)
        code, body = self.http_get(off, "/metrics")
        expect_eq(code, 200, "GET /metrics on %s" % name_or_offset)
        return value(parse_metrics(body), metric, labels)

    def healthz(self, name):
        return self.http_get(HTTP_PORT[name], "/healthz")[0]

    def probe(self, url, proto, *args, timeout_ms=2000):
        """Runs rb_probe once; returns its JSON result (with "_rc")."""
        cmd = [PROBE, "--url", url, "--proto", proto, "--timeout-ms", str(timeout_ms)]
        cmd += [str(a) for a in args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=ROOT,
                           timeout=timeout_ms / 1000.0 + 20)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        try:
            res = json.loads(line)
        except ValueError:
            raise TestFailure("rb_probe %s exited %d without JSON: %r %r"
                              % (" ".join(cmd[1:]), r.returncode, r.stdout, r.stderr))
        res["_rc"] = r.returncode
        return res

    def log_tail(self, name, lines=30):
        path = os.path.join(self.home, "log", name + ".log")
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- PostgreSQL ---------------------------------------------------------------------

    def psql(self, sql, timeout=60):
        """Runs sql with psql on the stack's database; returns the rows as lists of strings
        (NULL as None). Fails on any SQL error."""
        url = self.env_file().get("RINGBID_DATABASE_URL")
        expect(url, "no RINGBID_DATABASE_URL in %s/env", self.home)
        try:
            r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                                "-F", "\t", "-P", "null=\\N", "-d", url, "-c", sql],
                               capture_output=True, text=True, timeout=timeout, env=self.env,
                               cwd=ROOT)
        except subprocess.TimeoutExpired:
            raise TestFailure("psql timed out after %s s on: %s" % (timeout, sql[:200]))
        expect(r.returncode == 0, "psql exited %d on %s: %s", r.returncode, sql[:200],
               r.stderr[-1000:])
        rows = []
        for line in r.stdout.splitlines():
            if line:
                rows.append([None if f == "\\N" else f for f in line.split("\t")])
        return rows

    def pg_restart(self, timeout=120):
        """Restarts the stack's private PostgreSQL with `pg_ctl restart` (fast shutdown: open
        connections are cut, as in a crash of the database's clients' view), as the postgres
        user when we are root. It comes back on the same port (postmaster.opts)."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                       key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        expect(found, "no /usr/lib/postgresql/*/bin/pg_ctl")
        cmd = [found[-1], "-s", "-w", "-t", "60", "-D", os.path.join(self.home, "pg"),
               "-l", os.path.join(self.home, "log", "postgres.log"), "-m", "fast", "restart"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        except subprocess.TimeoutExpired:
            raise TestFailure("pg_ctl restart did not return within %s s" % timeout)
        expect(r.returncode == 0, "pg_ctl restart exited %d: %s %s", r.returncode,
               r.stdout[-500:], r.stderr[-1000:])

    # -- pay --------------------------------------------------------------------------------

    def payroll_export(self, period="current", fmt="csv"):
        """`ringbid payroll export PERIOD --format FMT --output FILE`: the file's rows as
        dicts (csv header as keys)."""
        path = os.path.join(self.home, "export-%d.csv" % time.monotonic_ns())
        self.ringbid_ok("payroll", "export", period, "--format", fmt, "--output", path,
                        timeout=120)
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


def iso_us(text):
    """Microseconds since the epoch of an ISO time as the CLI prints it
    ("2026-11-23T01:25:00.123456Z"); None for null."""
    if text is None:
        return None
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z$", text)
    expect(m, "not an ISO UTC time: %r", text)
    secs = calendar.timegm(tuple(int(x) for x in m.groups()[:6]))
    frac = int((m.group(7) or "0").ljust(6, "0"))
    return secs * 1000000 + frac


def call_talk_s(info):
    """Paid seconds of a call as the broker has it: whole seconds from answer to end."""
    a, e = iso_us(info.get("answered_at")), iso_us(info.get("ended_at"))
    if a is None or e is None or info.get("disposition") != "completed":
        return 0
    return (e - a) // 1000000


def _cents(x):
    return x.quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP)


def pay_oracle(calls, programs):
    """The pay lines the rules (DESIGN §5) give for calls of one period.

    calls: dicts with agent_id, program, talk_s, sale (bool); only completed calls.
    programs: id -> {"rate": Decimal, "rounding": "per_second"|"per_started_minute",
    "commission": Decimal}. Rates are the programs' defaults (no effective-dated rate rows).
    Returns the sorted lines as (agent_id, code, rate, quantity, amount) tuples of Decimals,
    one TALK line per (agent, program, rate) and one SALE line per (agent, program), the shape
    pay_rows() gives an export (which has no program column) in.
    """
    D = decimal.Decimal
    talk = {}
    sales = {}
    for c in calls:
        prog = programs[c["program"]]
        key = (int(c["agent_id"]), c["program"], prog["rate"])
        talk.setdefault(key, []).append(int(c["talk_s"]))
        if c.get("sale"):
            sales[(int(c["agent_id"]), c["program"])] = sales.get(
                (int(c["agent_id"]), c["program"]), 0) + 1
    lines = []
    for (agent, program, rate), secs in sorted(talk.items()):
        if programs[program]["rounding"] == "per_second":
            total = sum(secs)
            qty = (D(total) / D(60)).quantize(D("0.0001"), rounding=decimal.ROUND_HALF_UP)
            amount = _cents(D(total) * rate / D(60))
        else:
            qty = D(sum((s + 59) // 60 for s in secs))
            amount = _cents(qty * rate)
        lines.append((agent, "TALK", rate, qty, amount))
    for (agent, program), n in sorted(sales.items()):
        comm = programs[program]["commission"]
        if comm > 0:
            lines.append((agent, "SALE", comm, D(n), _cents(D(n) * comm)))
    return sorted(lines)


def pay_rows(rows, agents):
    """The CSV export's rows of these agents as sorted (agent, code, rate, quantity, amount)
    tuples with Decimal values, comparable with pay_oracle()."""
    D = decimal.Decimal
    out = []
    wanted = {int(a) for a in agents}
    for r in rows:
        try:
            agent = int(r["employee_id"])
        except (KeyError, TypeError, ValueError):
            raise TestFailure("export row without a numeric employee_id: %r" % (r,))
        if agent not in wanted:
            continue
        out.append((agent, r["earnings_code"], D(r["rate"]), D(r["quantity"]), D(r["amount"])))
    return sorted(out)


# -- the runner ---------------------------------------------------------------------------

def fresh_stack(fn):
    """Marks a test that needs a stack of its own instead of the file's shared one."""
    fn.fresh_stack = True
    return fn


def no_stack(fn):
    """Marks a test that needs no running stack."""
    fn.no_stack = True
    return fn


def _tests_in(module_globals):
    tests = [(name, fn) for name, fn in module_globals.items()
             if name.startswith("test_") and callable(fn)]
    tests.sort(key=lambda t: t[1].__code__.co_firstlineno)
    return tests


def _report_sanitizer(stack):
    """Counts one failure for a stack whose programs reported sanitizer errors."""
    reports = stack.sanitizer_reports()
    if not reports:
        return 0
    print("FAIL stack %s: %d sanitizer report(s) in its logs" % (stack.name, len(reports)),
          flush=True)
    for line in reports[:20]:
        print("#   " + line, flush=True)
    return 1


def run_tests(module_globals, stack_name, stack_env=None):
    """Runs the file's test_* functions in order; each gets a Stack (shared unless marked).

    Command-line arguments, if any, select tests by substring. Exits 0 only if all passed.
    """
    wanted = sys.argv[1:]
    tests = [t for t in _tests_in(module_globals)
             if not wanted or any(w in t[0] for w in wanted)]
    passed = failed = 0
    shared = None
    shared_error = None

    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        for name, fn in tests:
            t0 = time.monotonic()
            own = None
            st = None
            ok = False
            try:
                if getattr(fn, "no_stack", False):
                    pass
                elif getattr(fn, "fresh_stack", False):
                    own = Stack("%s-%s" % (stack_name, name[5:].replace("_", "-")[:40]))
                    own.start()
                    st = own
                else:
                    if shared_error is not None:
                        raise TestFailure("the shared stack did not start: " + shared_error)
                    if shared is None:
                        shared = Stack(stack_name, extra_env=stack_env)
                        try:
                            shared.start()
                        except Exception as e:
                            shared_error = str(e).splitlines()[0] if str(e) else repr(e)
                            raise
                    st = shared
                fn(st) if st is not None else fn()
                passed += 1
                print("ok %s (%.1f s)" % (name, time.monotonic() - t0), flush=True)
            except KeyboardInterrupt:
                failed += 1
                print("FAIL %s: interrupted" % name, flush=True)
                break
            except TestFailure as e:
                failed += 1
                ok = False
                print("FAIL %s: %s (%.1f s)" % (name, e, time.monotonic() - t0), flush=True)
            except Exception:
                failed += 1
                ok = False
                tb = traceback.format_exc()
                print("FAIL %s: %s" % (name, tb.strip().splitlines()[-1]), flush=True)
                print("\n".join("#   " + l for l in tb.rstrip().splitlines()), flush=True)
            else:
                ok = True
            finally:
                if own is not None:
                    own.stop()
                    failed += _report_sanitizer(own)
                elif st is not None:
                    # A test leaves no client or call behind for the next one.
                    try:
                        st.stop_agents()
                        if not ok:
                            st.clean_up_calls()
                        st.calls, st.call_ids = [], []
                    except Exception:
                        pass
    finally:
        if shared is not None:
            shared.stop()
            failed += _report_sanitizer(shared)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(0 if failed == 0 and passed > 0 else 1)
