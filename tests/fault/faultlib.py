"""What the fault tests share: a stack whose links run through proxies that can be cut, steady
load from ringbid-sim and real agent clients, the broker's journal read back, and the checks
that must hold after any fault.

A FaultStack is a harness.Stack whose four service links and the agents' link each pass through
a small TCP proxy of the test (Proxy), so a test can cut a link (close every connection, refuse
new ones) and heal it again. Each service gets its own view of the link URLs through
tests/fault/svc_env.sh, which `ringbid up` runs as RINGBID_SERVICE_WRAPPER.

After a fault the same invariants are checked (check_invariants): from the broker's journal
(every call it took, read by JournalReader as the broker writes it) and PostgreSQL (billing.cdrs,
billing.cdr_offers, the payroll export). Python 3 standard library only.
"""

import asyncio
import ctypes
import decimal
import glob
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

FAULT_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(FAULT_DIR, "..", "integration"))

from harness import (BIN, ITEST, ROOT, Stack, TestFailure, _pid_alive, expect,  # noqa: E402
                     expect_eq, pay_oracle, pay_rows, wait_until)

SIM = os.path.join(BIN, "ringbid-sim")
D = decimal.Decimal

# The long form (make soak) when set: more rounds, longer load, the one-minute laptop sleep.
SOAK = os.environ.get("RINGBID_SOAK", "") not in ("", "0")


def say(fmt, *args):
    """A comment line in the test's output (the runner shows it when the file fails)."""
    print("# " + (fmt % args if args else fmt), flush=True)


# -- proxies ------------------------------------------------------------------------------

# Each proxied link: (name, proxy port offset, real port offset). Offsets are from the stack's
# RINGBID_PORT_BASE; the real ones are common/rb_config.h's.
LINKS = (
    ("broker-auction", 12, 2),    # the auction dials the broker
    ("broker-presence", 13, 3),   # presence dials the broker
    ("auction-presence", 14, 4),  # presence dials the auction
    ("agents", 15, 5),            # agents' clients (ringbid-agent, ringbid-sim) dial presence
    ("billing", 16, 6),           # the broker dials billing
)


def _p(off):
    return "tcp://127.0.0.1:{p[%d]}" % off


# Which URL each service dials through a proxy (svc_env.sh exports these for it alone).
# Presence also gets its own listening URL back, since every client's environment names the
# agents' proxy in RINGBID_PRESENCE_URL.
SERVICE_ENV = {
    "RINGBID_FAULT_AUCTION_ENV": "RINGBID_BROKER_AUCTION_URL=" + _p(12),
    "RINGBID_FAULT_PRESENCE_ENV": " ".join((
        "RINGBID_BROKER_PRESENCE_URL=" + _p(13), "RINGBID_AUCTION_URL=" + _p(14),
        "RINGBID_PRESENCE_URL=" + _p(5))),
    "RINGBID_FAULT_BROKER_ENV": "RINGBID_BILLING_URL=" + _p(16),
}


class Proxy:
    """A TCP relay from 127.0.0.1:listen_port to 127.0.0.1:target_port, run on its own asyncio
    thread. cut() closes every connection at once (RST) and stops listening, so a peer's dial
    is refused; heal() listens again. The services notice only what a real cut shows them."""

    def __init__(self, name, listen_port, target_port):
        self.name = name
        self.listen_port = listen_port
        self.target_port = target_port
        self.cuts = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._open = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="proxy-" + name)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self):
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1",
                                                      self.listen_port, reuse_address=True)

    async def _pipe(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass

    async def _accept(self, creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.transport.abort()
            return
        self.connections += 1
        pair = (cwriter, uwriter)
        self._open.add(pair)
        try:
            await asyncio.gather(self._pipe(creader, uwriter), self._pipe(ureader, cwriter))
        finally:
            self._open.discard(pair)

    async def _cut(self):
        if self._server is not None:
            self._server.close()
            self._server = None
        for cw, uw in list(self._open):
            cw.transport.abort()
            uw.transport.abort()
        self._open.clear()

    def cut(self):
        self.cuts += 1
        self._call(self._cut())

    def heal(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                self._call(self._listen())
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self):
        try:
            self._call(self._cut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


class FaultStack(Stack):
    """A Stack whose service links and agents' link pass through Proxy objects (self.proxies,
    by link name), started just before the first `ringbid up`. Further env: extra_env."""

    def __init__(self, name, extra_env=None, proxies=True):
        env = {"RINGBID_SERVICE_WRAPPER": "/bin/sh " + os.path.join(FAULT_DIR, "svc_env.sh")}
        if proxies:
            env.update(SERVICE_ENV)
            env["RINGBID_PRESENCE_URL"] = _p(15)
        env.update(extra_env or {})
        super().__init__(name, extra_env=env)
        self.use_proxies = proxies
        self.proxies = {}
        self.journal = None

    def ringbid(self, *args, **kw):
        if args and args[0] == "up" and self.use_proxies and not self.proxies:
            for name, off, real in LINKS:
                self.proxies[name] = Proxy(name, self.port(off), self.port(real))
        return super().ringbid(*args, **kw)

    def journal_path(self):
        return self.env.get("RINGBID_BROKER_JOURNAL") or os.path.join(self.home, "broker",
                                                                       "journal")

    def start(self):
        _become_subreaper()
        super().start()
        self.journal = JournalReader(self.journal_path())
        return self

    def stop(self):
        try:
            super().stop()
        finally:
            for p in self.proxies.values():
                p.close()
            self.proxies = {}
            if self.journal is not None:
                self.journal.close()

    def metrics(self, service):
        """A service's /metrics as {name_with_labels: float}; {} when unreachable."""
        from harness import HTTP_PORT
        code, body = self.http_get(HTTP_PORT[service], "/metrics")
        out = {}
        if code != 200:
            return out
        for line in body.splitlines():
            if line and not line.startswith("#"):
                parts = line.rsplit(" ", 1)
                try:
                    out[parts[0]] = float(parts[1])
                except (IndexError, ValueError):
                    pass
        return out

    def readyz(self, service):
        from harness import HTTP_PORT
        return self.http_get(HTTP_PORT[service], "/readyz")[0]

    def restart(self, service, sig=signal.SIGKILL):
        """Kills a service (SIGKILL by default) and starts it again with `ringbid up`; returns
        the seconds from the kill until `ringbid up` said every service is ready."""
        t0 = time.monotonic()
        self.kill_service(service, sig)
        self.up_again()
        expect(self.service_alive(service), "%s is not running after `ringbid up`", service)
        return time.monotonic() - t0

    def crash_postgres(self):
        """SIGKILLs the stack's postmaster (no shutdown checkpoint: crash recovery on the next
        start), waits for its backends to go, and starts it with `ringbid up`. Returns the
        seconds from the kill to ready."""
        pidfile = os.path.join(self.home, "pg", "postmaster.pid")
        with open(pidfile) as f:
            pid = int(f.readline().strip())
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    children.append(int(stat.split("/")[2]))
            except (OSError, ValueError, IndexError):
                pass
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _pid_alive(pid) and not any(_pid_alive(c) for c in children),
                   30, "PostgreSQL's postmaster (pid %d) and its %d backends to exit"
                   % (pid, len(children)))
        # Dead, but a zombie still passes kill(pid, 0), and both `ringbid up` and PostgreSQL
        # would take its pid file for a running server. The test is its reaper (see
        # _become_subreaper); where it is not, the pid file of the dead server goes.
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            if os.path.exists("/proc/%d" % pid):
                say("postmaster %d is a zombie we cannot reap: removing its pid file", pid)
                os.unlink(pidfile)
        self.up_again()
        return time.monotonic() - t0


def _become_subreaper():
    """Makes this process the reaper of its orphaned descendants (prctl
    PR_SET_CHILD_SUBREAPER), so that a killed postmaster, which pg_ctl left to init, can be
    reaped here: in a container whose init never reaps, it would stay a zombie."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# -- the broker's journal ----------------------------------------------------------------

def _varint(b, i):
    shift = val = 0
    while True:
        c = b[i]
        i += 1
        val |= (c & 0x7F) << shift
        if c < 0x80:
            return val, i
        shift += 7


def pb_fields(b):
    """The fields of one protobuf message: a list of (number, value), value an int for
    varints and fixed ints, bytes for length-delimited fields."""
    out = []
    i = 0
    n = len(b)
    while i < n:
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v = struct.unpack_from("<Q", b, i)[0]
            i += 8
        elif wt == 2:
            ln, i = _varint(b, i)
            v = bytes(b[i:i + ln])
            i += ln
        elif wt == 5:
            v = struct.unpack_from("<I", b, i)[0]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        out.append((num, v))
    return out


def _pb_dict(b, names, repeated=()):
    d = {name: ([] if name in repeated else None) for name in names.values()}
    for num, v in pb_fields(b):
        name = names.get(num)
        if name is None:
            continue
        if name in repeated:
            d[name].append(v)
        else:
            d[name] = v
    return d


CALL_INFO = {1: "call_id", 2: "program", 3: "state", 4: "disposition", 5: "agent_id",
             6: "arrived_us", 7: "offered_us", 8: "answered_us", 9: "ended_us", 10: "version",
             11: "offers", 15: "sale", 16: "resolved", 14: "review"}
CDR = {1: "cdr_id", 2: "call_id", 3: "program", 4: "agent_id", 5: "arrived_us",
       7: "answered_us", 8: "ended_us", 9: "talk_s", 10: "disposition", 11: "sale",
       13: "offers", 16: "offer_log"}
STATE_CONNECTED, STATE_ENDED = 4, 5
DISPOSITIONS = {1: "completed", 2: "abandoned", 3: "overflow"}


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")


def _num(v):
    return int(v or 0)


def decode_call(body):
    rec = _pb_dict(body, {1: "info"})
    info = _pb_dict(rec["info"] or b"", CALL_INFO)
    for k in ("call_id", "program"):
        info[k] = _text(info[k])
    for k in ("state", "disposition", "agent_id", "arrived_us", "offered_us", "answered_us",
              "ended_us", "version", "offers", "sale", "resolved", "review"):
        info[k] = _num(info[k])
    return info


def decode_cdr(body):
    c = _pb_dict(body, CDR, repeated=("offer_log",))
    for k in ("cdr_id", "call_id", "program"):
        c[k] = _text(c[k])
    for k in ("agent_id", "arrived_us", "answered_us", "ended_us", "talk_s", "disposition",
              "sale", "offers"):
        c[k] = _num(c[k])
    c["offer_log"] = len(c["offer_log"])
    return c


def crc32c(data, crc=0):
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_TABLE = _crc_table()


class JournalReader:
    """Follows the broker's journal (docs/delivery.md: 4-byte little-endian length, 4-byte
    CRC-32C, a JournalEntry) on a thread, from the broker's first record to the last, across
    broker restarts (a torn tail cut off) and compactions (a new file renamed over the old:
    the old one is read to its end first). It keeps what a check needs:

      calls:       call_id -> the last CallRecord's CallInfo (dict)
      connected:   call_id -> set of agent ids the call was ever CONNECTED to
      cdrs:        call_id -> list of the Cdr entries queued in the outbox (dicts)
      acked:       set of CDR ids billing acknowledged
    """

    def __init__(self, path):
        self.path = path
        self.calls = {}
        self.connected = {}
        self.cdrs = {}
        self.acked = set()
        self.records = 0
        self.bad = []  # (offset, reason) of records that did not check out
        self._fd = None
        self._ino = None
        self._off = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="journal")
        self._thread.start()

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self._off = 0
        return True

    def _read_available(self):
        """Reads every whole record after self._off; leaves a partial one for later."""
        size = os.fstat(self._fd).st_size
        if size < self._off:
            # The broker cut a torn tail at replay: what we read beyond it never counted.
            self._off = size
        while True:
            head = os.pread(self._fd, 8, self._off)
            if len(head) < 8:
                return
            ln, crc = struct.unpack("<II", head)
            if ln == 0 or ln > 16 * 1024 * 1024:
                self.bad.append((self._off, "length %d" % ln))
                return
            body = os.pread(self._fd, ln, self._off + 8)
            if len(body) < ln:
                return
            if crc32c(body) != crc:
                # A record being written right now reads as torn; try again later.
                return
            self._entry(body)
            self._off += 8 + ln

    def _entry(self, body):
        with self._lock:
            self.records += 1
            for num, v in pb_fields(body):
                if num == 1:
                    info = decode_call(v)
                    cid = info["call_id"]
                    self.calls[cid] = info
                    if info["state"] == STATE_CONNECTED or (
                            info["state"] == STATE_ENDED and info["disposition"] == 1):
                        self.connected.setdefault(cid, set()).add(info["agent_id"])
                elif num == 2:
                    c = decode_cdr(v)
                    lst = self.cdrs.setdefault(c["call_id"], [])
                    # A compaction rewrites unacknowledged CDRs: the same one is not another.
                    if c not in lst:
                        lst.append(c)
                elif num == 3:
                    self.acked.add(_text(v))

    def _poll(self):
        if self._fd is None and not self._open():
            return
        self._read_available()
        try:
            ino = os.stat(self.path).st_ino
        except OSError:
            return
        if ino != self._ino:
            # Compacted: the old file is complete now; the new one starts with the live state.
            self._read_available()
            os.close(self._fd)
            self._fd = None
            if self._open():
                self._read_available()

    def _run(self):
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as e:  # reported through self.bad
                self.bad.append((self._off, repr(e)))
            self._stop.wait(0.2)

    def sync(self):
        """Reads everything written so far (the thread does it too, every 0.2 s)."""
        time.sleep(0.3)
        with self._lock:
            return self.records

    def close(self):
        self._stop.set()
        self._thread.join(5)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def snapshot(self):
        with self._lock:
            return (dict(self.calls), {k: set(v) for k, v in self.connected.items()},
                    {k: list(v) for k, v in self.cdrs.items()}, set(self.acked))


# -- load ---------------------------------------------------------------------------------

SIM_SECRET = "fault-sim-secret"


def add_sim_agents(st, first, n, program):
    """Imports agents first..first+n-1 with one secret (one CSV, one hash)."""
    path = os.path.join(st.home, "sim-agents-%d.csv" % first)
    with open(path, "w") as f:
        f.write("id,name,skills,score\n")
        for aid in range(first, first + n):
            f.write("%d,Simulated agent %d,%s,%d\n" % (aid, aid, program, 30 + aid % 60))
    st.ringbid_ok("agent", "import", path, "--secret-file", st.secret_file(SIM_SECRET),
                  timeout=120)


class SimLoad:
    """Simulated agents and callers: several ringbid-sim processes of `per_proc` agents each,
    started `stagger_s` apart so that their logins (an argon2 check each) reach presence a few
    at a time. Process k's agents and callers use programs[k] alone: a simulator waits until
    all its agents are AVAILABLE at once before its callers start, which another process's
    calls would prevent. Callers arrive until finish() (or `duration` seconds after the last start).
    Each process's JSON summary is kept (summaries) and its stderr in the stack's log
    directory."""

    def __init__(self, st, programs, first, agents, per_proc, rate, seed,
                 time_factor=60, talk_mean=150, patience_mean=1200, stagger_s=2.0, drain=20,
                 duration=3600):
        self.st = st
        self.procs = []
        self.summaries = []
        self.first = first
        self.agents = agents
        nproc = max(1, (agents + per_proc - 1) // per_proc)
        self.end_at = time.monotonic() + nproc * stagger_s + duration
        env = dict(st.env)
        env["RINGBID_SIM_SECRET_FILE"] = st.secret_file(SIM_SECRET)
        env["RINGBID_LOG_LEVEL"] = "info"
        for k in range(nproc):
            n = min(per_proc, agents - k * per_proc)
            left = self.end_at - time.monotonic()
            args = [SIM, "--json", "--every", "0", "--agents", n,
                    "--first-agent", first + k * per_proc, "--programs", programs[k],
                    "--rate", "%.3f" % (rate * n / agents), "--duration", "%.1f" % max(1, left),
                    "--time-factor", time_factor, "--talk-mean", talk_mean,
                    "--patience-mean", patience_mean, "--drain", drain,
                    "--login-wait", 120, "--seed", seed * 1000 + k]
            errpath = os.path.join(st.home, "log", "sim-%d.log" % k)
            err = open(errpath, "ab")
            p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=err,
                                 env=env, cwd=ROOT)
            err.close()
            self.procs.append(p)
            if k + 1 < nproc:
                time.sleep(stagger_s)

    def wait(self, timeout=300):
        """Waits for every process; returns the summaries. Fails on a bad exit or no JSON."""
        deadline = time.monotonic() + timeout
        for k, p in enumerate(self.procs):
            try:
                out, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                raise TestFailure("ringbid-sim #%d still running after %d s" % (k, timeout))
            text = out.decode("utf-8", "replace").strip()
            expect(p.returncode == 0, "ringbid-sim #%d exited %d: %s (log %s)", k,
                   p.returncode, text[-300:], os.path.join(self.st.home, "log",
                                                           "sim-%d.log" % k))
            try:
                self.summaries.append(json.loads(text.splitlines()[-1]))
            except (ValueError, IndexError):
                raise TestFailure("ringbid-sim #%d printed no JSON: %r" % (k, text[-300:]))
        return self.summaries

    def finish(self, timeout=120):
        """Ends the run now (SIGTERM: arrivals stop, calls in progress are closed, the summary
        is printed) and returns the summaries."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self):
        """After a failure: no simulator outlives its test."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)

    def totals(self):
        keys = ("calls_scheduled", "calls_offered", "calls_refused", "calls_answered",
                "calls_abandoned", "calls_overflow", "calls_open", "calls_completed",
                "calls_connected_at_end", "calls_cut_short", "agents", "agents_logged_in")
        return {k: sum(int(s.get(k, 0)) for s in self.summaries) for k in keys}


class TracerCalls:
    """Calls placed one by one with `ringbid call --talk S` on a thread (as telephony would,
    each one's fate known exactly: taken, refused, or no answer), answered by real
    ringbid-agent clients. results() maps call id -> (program, talk, parsed JSON or the
    failure text)."""

    def __init__(self, st, program, every_s, seed, talk=(0.5, 3.0), abandon_share=0.1):
        self.st = st
        self.program = program
        self.every_s = every_s
        self.rng = random.Random(seed)
        self.talk = talk
        self.abandon_share = abandon_share
        self.placed = {}
        self.problems = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tracer")
        self._thread.start()

    def _run(self):
        n = 0
        try:
            while not self._stop.is_set():
                cid = self.st.unique("tr%d" % n)
                talk = round(self.rng.uniform(*self.talk), 2)
                opts = {"id": cid, "talk": talk, "timeout": 90}
                if self.rng.random() < self.abandon_share:
                    opts["abandon_after"] = 0.2  # a caller who gives up at once
                self.placed[cid] = (self.program, talk,
                                    self.st.place_call(self.program, background=True, **opts))
                n += 1
                self._stop.wait(self.every_s)
        except Exception as e:
            self.problems.append(e)

    def stop(self):
        self._stop.set()
        self._thread.join(30)

    def results(self, timeout=150):
        """call id -> result dict, or the text of the failure ("cannot reach the broker")."""
        out = {}
        for cid, (_, _, proc) in list(self.placed.items()):
            try:
                out[cid] = proc.result(timeout)
            except TestFailure as e:
                out[cid] = str(e)
        return out


# -- checks -------------------------------------------------------------------------------

def _sql_list(ids):
    for i in ids:
        expect(re.match(r"^[A-Za-z0-9._:-]{1,64}$", i), "unexpected call id %r", i)
    return ",".join("'%s'" % i for i in ids)


def pg_cdrs(st):
    """Every row of billing.cdrs: call_id -> list of dicts."""
    rows = st.psql(
        "SELECT cdr_id, call_id, program, coalesce(agent_id, 0), disposition, talk_s, sale,"
        " coalesce((extract(epoch FROM answered_at) * 1000000)::bigint, 0),"
        " (extract(epoch FROM ended_at) * 1000000)::bigint, offers"
        " FROM billing.cdrs", timeout=120)
    out = {}
    for r in rows:
        out.setdefault(r[1], []).append({
            "cdr_id": r[0], "program": r[2], "agent_id": int(r[3]), "disposition": r[4],
            "talk_s": int(r[5]), "sale": r[6] == "t", "answered_us": int(r[7]),
            "ended_us": int(r[8]), "offers": int(r[9])})
    return out


def wait_outbox_empty(st, timeout=90):
    """Waits until billing acknowledged every CDR the broker holds; returns the seconds."""
    t0 = time.monotonic()

    def empty():
        try:
            return st.status().get("cdr_outbox") == 0
        except TestFailure:
            return False
    wait_until(empty, timeout, "cdr_outbox 0 in `ringbid status`", 0.5)
    return time.monotonic() - t0


def wait_all_ended(st, timeout=90):
    """Waits until the journal shows every call ENDED; returns the calls still open if any."""
    def none_open():
        calls = st.journal.snapshot()[0]
        still = [c for c, i in calls.items() if i["state"] != STATE_ENDED]
        return None if still else True
    try:
        wait_until(none_open, timeout, "every call in the journal to end", 0.5)
        return []
    except TestFailure:
        calls = st.journal.snapshot()[0]
        return sorted(c for c, i in calls.items() if i["state"] != STATE_ENDED)


def check_invariants(st, programs, agents, tracer=None, sims=None, payroll=True, before=()):
    """The promises of issue 7, checked from the broker's journal and PostgreSQL:

    - every call the broker took ended as completed, abandoned or overflow; none vanished
      (every call a caller was told was taken is in the journal, and every journaled call has
      its CDR in billing);
    - no call was connected to two agents, no agent held two calls at once;
    - every CDR is stored exactly once, equal to the broker's record, none quarantined, its
      offer log complete;
    - the payroll export equals the pay the rules give for the broker's calls (pay_oracle).

    programs: id -> {"rate", "rounding", "commission"} of every program the calls used.
    agents: every agent id that may have taken a call. before: call ids journaled before
    this test's load (other tests' calls on a shared stack). Returns a dict of figures.
    """
    open_calls = wait_all_ended(st, 120)
    expect(not open_calls, "%d calls never ended: %s", len(open_calls), open_calls[:10])
    drain_s = wait_outbox_empty(st, 120)
    st.journal.sync()
    calls, connected, jcdrs, acked = st.journal.snapshot()
    expect(not st.journal.bad, "journal records that did not check out: %s",
           st.journal.bad[:5])
    expect(calls, "the journal holds no call")

    # Every journaled call ended with a disposition, and the outbox queued one CDR for it.
    bad = {c: (i["state"], i["disposition"]) for c, i in calls.items()
           if i["state"] != STATE_ENDED or i["disposition"] not in DISPOSITIONS}
    expect(not bad, "calls not ended with completed/abandoned/overflow: %s",
           list(bad.items())[:10])
    no_cdr = sorted(c for c in calls if c not in jcdrs)
    expect(not no_cdr, "%d ended calls never got a CDR in the outbox: %s", len(no_cdr),
           no_cdr[:10])
    two = {c: len(v) for c, v in jcdrs.items() if len(v) != 1}
    expect(not two, "calls whose CDR the broker queued twice with different content: %s",
           list(two.items())[:5])
    unacked = sorted(c for c in jcdrs if jcdrs[c][0]["cdr_id"] not in acked)
    expect(not unacked, "%d CDRs billing never acknowledged: %s", len(unacked), unacked[:10])

    # None vanished: every call a caller was told was taken is journaled.
    refused_tr = 0
    if tracer is not None:
        res = tracer.results()
        expect(not tracer.problems, "placing tracer calls failed: %s", tracer.problems)
        for cid, r in res.items():
            if isinstance(r, dict) and r.get("_rc") in (0, 4):
                expect(cid in calls, "call %s was taken (ringbid call said %s) but the broker's "
                       "journal does not have it", cid, r.get("state") or r.get("disposition"))
            elif isinstance(r, dict):
                raise TestFailure("`ringbid call` for %s exited %s: %s"
                                  % (cid, r.get("_rc"), r.get("_stderr", "")[-300:]))
            else:
                refused_tr += 1
                expect("cannot reach the broker" in r or "refused" in r or "journal" in r,
                       "`ringbid call` for %s failed: %s", cid, r[-300:])
    before = set(before)
    sim_calls = [c for c in calls if re.match(r"^s[0-9a-f]+-\d+$", c) and c not in before]
    if sims is not None:
        t = sims.totals()
        expect_eq(t["calls_open"], 0, "calls the simulators left open")
        expect_eq(t["calls_connected_at_end"], 0, "calls the simulators left connected")
        expect_eq(len(sim_calls), t["calls_offered"],
                  "simulated calls in the journal vs the simulators' calls the broker took")

    # Each call at most one agent; each agent at most one call at a time.
    multi = {c: sorted(a) for c, a in connected.items() if len(a) > 1 or 0 in a}
    expect(not multi, "calls connected to more than one agent: %s", list(multi.items())[:5])

    # PostgreSQL: one CDR per call, as the broker has it.
    pg = pg_cdrs(st)
    missing = sorted(c for c in calls if c not in pg)
    expect(not missing, "%d calls have no CDR in billing.cdrs: %s", len(missing), missing[:10])
    extra = sorted(c for c in pg if c not in calls)
    expect(not extra, "%d CDRs in billing.cdrs for calls the broker never had: %s", len(extra),
           extra[:10])
    doubled = {c: len(v) for c, v in pg.items() if len(v) != 1}
    expect(not doubled, "calls with more than one CDR row: %s", list(doubled.items())[:10])
    q = st.psql("SELECT cdr_id, reason FROM billing.cdr_quarantine")
    expect(not q, "%d CDRs quarantined: %s", len(q), q[:5])
    mismatch = []
    for cid, info in calls.items():
        row = pg[cid][0]
        disp = DISPOSITIONS[info["disposition"]]
        done = disp == "completed"
        talk = (info["ended_us"] - info["answered_us"]) // 1000000 if done else 0
        want = {"cdr_id": cid, "program": info["program"], "disposition": disp,
                "agent_id": info["agent_id"] if done else row["agent_id"], "talk_s": talk,
                "sale": bool(info["sale"]) and done,
                "answered_us": info["answered_us"] if done else 0,
                "ended_us": info["ended_us"]}
        got = {k: row[k] for k in want}
        if got != want:
            mismatch.append((cid, want, got))
    expect(not mismatch, "%d CDRs differ from the broker's journal: %s", len(mismatch),
           mismatch[:3])
    offers = dict(st.psql("SELECT call_id, count(*) FROM billing.cdr_offers GROUP BY 1"))
    short = [(c, v[0]["offer_log"], int(offers.get(c, 0))) for c, v in jcdrs.items()
             if v[0]["offer_log"] != int(offers.get(c, 0))]
    expect(not short, "offer logs stored differently from the CDRs' (call, sent, stored): %s",
           short[:5])
    overlap = st.psql(
        "SELECT agent_id, call_id, prev_call FROM ("
        " SELECT agent_id, call_id, answered_at,"
        "  lag(ended_at) OVER w AS prev_end, lag(call_id) OVER w AS prev_call"
        " FROM billing.cdrs WHERE disposition = 'completed'"
        " WINDOW w AS (PARTITION BY agent_id ORDER BY answered_at, ended_at)) x"
        " WHERE answered_at < prev_end")
    expect(not overlap, "agents holding two calls at once (agent, call, earlier call): %s",
           overlap[:5])

    # Pay: the payroll export against the rules applied to the broker's own records.
    completed = [i for i in calls.values() if i["disposition"] == 1]
    if payroll:
        want = pay_oracle([{"agent_id": i["agent_id"], "program": i["program"],
                            "talk_s": (i["ended_us"] - i["answered_us"]) // 1000000,
                            "sale": bool(i["sale"])} for i in completed], programs)
        got = pay_rows(st.payroll_export("current"), agents)
        if got != want:
            gd = {(r[0], r[1]): r for r in got}
            wd = {(r[0], r[1]): r for r in want}
            diff = [(k, wd.get(k), gd.get(k)) for k in sorted(set(gd) | set(wd))
                    if gd.get(k) != wd.get(k)]
            raise TestFailure("payroll export differs from the oracle on %d lines "
                              "(key, oracle, export): %s" % (len(diff), diff[:5]))
    figures = {
        "calls": len(calls), "completed": len(completed),
        "abandoned": sum(1 for i in calls.values() if i["disposition"] == 2),
        "overflow": sum(1 for i in calls.values() if i["disposition"] == 3),
        "cdrs": sum(len(v) for v in pg.values()), "sim_calls": len(sim_calls),
        "tracer_refused": refused_tr, "outbox_drain_s": round(drain_s, 1),
        "journal_records": st.journal.records,
    }
    say("invariants hold: %s", json.dumps(figures, sort_keys=True))
    return figures
