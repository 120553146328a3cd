#!/usr/bin/env python3
"""Faults under steady load: every service and PostgreSQL killed and restarted, links cut and
healed, an agent's laptop asleep, PostgreSQL slowed by a held lock, the journal's disk full.

Each test starts a stack of its own (faultlib.FaultStack: every service link through a proxy
the test can cut), loads it with ringbid-sim processes (simulated agents and Poisson callers)
and `ringbid call`s answered by real ringbid-agent clients, applies its faults, and then checks
the same promises from the broker's journal and PostgreSQL (faultlib.check_invariants): every
call ended as completed, abandoned or overflow and none vanished; no call connected to two
agents, no agent holding two calls; every CDR stored once and equal to the broker's record;
payroll equal to the oracle.

    python3 tests/fault/test_faults.py              the short form (what make check runs)
    RINGBID_SOAK=1 python3 tests/fault/test_faults.py   the long form (make soak)
    python3 tests/fault/test_faults.py kill          only tests whose name contains "kill"

RINGBID_TEST_SEED fixes the seed (printed at the start of each test).
"""

import contextlib
import decimal
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultlib import (D, ITEST, SOAK, FaultStack, SimLoad, TracerCalls,  # noqa: E402
                      add_sim_agents, check_invariants, say, wait_outbox_empty)
import harness  # noqa: E402
from harness import (TestFailure, expect, expect_eq, fresh_stack, no_stack,  # noqa: E402
                     run_tests, wait_until)

# Programs: the simulated agents' (one per ringbid-sim process, ft-sim-<k>: sales paid per
# second, with a commission per sale) and the tracer calls' (paid per started minute).
SIM_PAY = {"rate": D("0.2500"), "rounding": "per_second", "commission": D("1.50")}
TRACE_PROG = "ft-trace"
PROGRAMS = {
    TRACE_PROG: {"rate": D("0.3100"), "rounding": "per_started_minute", "commission": D("0")},
}
SIM_FIRST = 20001
TRACE_FIRST = 7001

# Short form (make check) and long form (make soak).
if SOAK:
    KILL_AGENTS, KILL_RATE, KILL_ROUNDS, KILL_GAP_S = 300, 30.0, 4, 8.0
    CUT_AGENTS, CUT_RATE, CUT_S = 120, 15.0, 20.0
    SLEEP_S = (8.0, 60.0)
    LOCK_S = 45.0
else:
    KILL_AGENTS, KILL_RATE, KILL_ROUNDS, KILL_GAP_S = 100, 20.0, 1, 5.0
    CUT_AGENTS, CUT_RATE, CUT_S = 40, 10.0, 4.0
    SLEEP_S = (6.0,)
    LOCK_S = 8.0
PER_PROC = 10      # simulated agents per ringbid-sim process (their logins come in turn)
STAGGER_S = 1.5    # between ringbid-sim starts


def _seed():
    seed = int(os.environ.get("RINGBID_TEST_SEED", str(int(time.time()) % 100000)))
    say("seed %d (RINGBID_TEST_SEED)", seed)
    return seed


@contextlib.contextmanager
def fault_stack(name, **kw):
    """A FaultStack for one test; its logs are checked for sanitizer reports at the end."""
    st = FaultStack("faults-" + name, **kw)
    ok = False
    try:
        st.start()
        yield st
        ok = True
    finally:
        st.stop()
        reports = st.sanitizer_reports()
        if reports and ok:
            raise TestFailure("sanitizer reports in the logs: %s" % reports[:5])


def _setup(st, sim_agents, trace_agents=4, max_wait=120):
    """Programs and agents (once per stack; several tests share one), then the tracer agents'
    clients. Returns the clients by agent id."""
    done = st.__dict__.setdefault("fault_setup", {"programs": False, "sim": 0, "trace": 0})
    if not done["programs"]:
        st.add_program(TRACE_PROG, skills=(TRACE_PROG,), ring_timeout=4, wrap_up=0,
                       max_wait=max_wait, rate=str(PROGRAMS[TRACE_PROG]["rate"]),
                       rounding="per_started_minute")
        done["programs"] = True
    while done["sim"] < sim_agents:
        k = done["sim"] // PER_PROC
        prog = _sim_prog(k)
        st.add_program(prog, skills=(prog,), ring_timeout=5, wrap_up=1, max_wait=max_wait,
                       rate=str(SIM_PAY["rate"]), rounding=SIM_PAY["rounding"],
                       commission=str(SIM_PAY["commission"]))
        PROGRAMS[prog] = SIM_PAY
        add_sim_agents(st, SIM_FIRST + done["sim"], PER_PROC, prog)
        done["sim"] += PER_PROC
    if trace_agents > done["trace"]:
        for aid in range(TRACE_FIRST + done["trace"], TRACE_FIRST + trace_agents):
            st.add_agent(aid, skills=(TRACE_PROG,), score=50 + aid % 7)
        done["trace"] = trace_agents
    return {aid: st.start_agent(aid, "--auto-answer", "60", timeout=30)
            for aid in range(TRACE_FIRST, TRACE_FIRST + trace_agents)}


def _sim_prog(k):
    return "ft-sim-%d" % k


def _sim_progs(n):
    return [_sim_prog(k) for k in range((n + PER_PROC - 1) // PER_PROC)]


def _all_agents(st):
    """Every agent _setup created on this stack (the payroll check covers them all)."""
    done = st.fault_setup
    return list(range(SIM_FIRST, SIM_FIRST + done["sim"])) + \
        list(range(TRACE_FIRST, TRACE_FIRST + done["trace"]))


def _answered(st):
    try:
        return int(st.status().get("calls_answered", 0))
    except TestFailure:
        return -1


def _wait_progress(st, what, timeout=45.0, calls=5):
    """Waits until `calls` more calls were answered than now: the platform works again.
    Returns the seconds it took."""
    t0 = time.monotonic()
    base = wait_until(lambda: (lambda n: n if n >= 0 else None)(_answered(st)), timeout,
                      "`ringbid status` to answer after %s" % what, 0.25)
    wait_until(lambda: _answered(st) >= base + calls, timeout,
               "%d more calls answered after %s" % (calls, what), 0.25)
    return time.monotonic() - t0


def _wait_logged_in(st, n, timeout):
    """Waits until at least n agents are logged in (any state but OFFLINE)."""
    def count():
        try:
            a = st.status().get("agents") or {}
        except TestFailure:
            return None
        k = sum(int(v) for s, v in a.items() if s != "OFFLINE")
        return k if k >= n else None
    t0 = time.monotonic()
    wait_until(count, timeout, "%d agents logged in" % n, 0.5)
    return time.monotonic() - t0


def _logged_in(st):
    try:
        a = st.status().get("agents") or {}
    except TestFailure:
        return -1
    return sum(int(v) for s, v in a.items() if s != "OFFLINE")


@fresh_stack
def test_kill_each_service_under_load(st):
    """SIGKILL presence, the broker, the auction, billing and PostgreSQL in turn (several
    rounds in the long form) while ringbid-sim keeps tens of calls per second flowing."""
    seed = _seed()
    _setup(st, KILL_AGENTS)
    before = set(st.journal.snapshot()[0])
    sims = SimLoad(st, _sim_progs(KILL_AGENTS), SIM_FIRST, KILL_AGENTS, PER_PROC, KILL_RATE, seed, stagger_s=STAGGER_S)
    tracer = TracerCalls(st, TRACE_PROG, 0.5, seed)
    try:
        t_login = _wait_logged_in(st, KILL_AGENTS * 9 // 10, 90)
        say("%d simulated agents logging in, 90%% in after %.1f s", KILL_AGENTS, t_login)
        _wait_progress(st, "the start")
        log = []
        for rnd in range(KILL_ROUNDS):
            for victim in ("presence", "broker", "auction", "billing", "postgres"):
                time.sleep(KILL_GAP_S)
                in_before = _logged_in(st)
                if victim == "postgres":
                    took = st.crash_postgres()
                else:
                    took = st.restart(victim)
                back = _wait_progress(st, "%s restarted" % victim)
                log.append({"round": rnd + 1, "killed": victim, "restart_s": round(took, 1),
                            "calls_flow_again_s": round(back, 1),
                            "agents_logged_in_before": in_before})
                say("round %d: %s SIGKILLed, ready again after %.1f s, calls answered "
                    "again %.1f s later", rnd + 1, victim, took, back)
        # Presence forgot every session when it restarted: every agent logs in again.
        t_back = _wait_logged_in(st, KILL_AGENTS * 9 // 10, 120)
        say("90%% of the agents logged in again %.1f s after the last fault", t_back)
    except BaseException:
        sims.kill()
        raise
    finally:
        tracer.stop()
    sims.finish()
    t = sims.totals()
    say("simulators: %s", json.dumps(t, sort_keys=True))
    for s in ("broker", "auction", "presence", "billing"):
        expect(st.service_alive(s), "%s is not running at the end", s)
    check_invariants(st, PROGRAMS, _all_agents(st), tracer=tracer, sims=sims, before=before)
    expect(t["calls_answered"] >= t["calls_offered"] // 2,
           "only %d of %d simulated calls were answered", t["calls_answered"],
           t["calls_offered"])


def test_network_cuts_heal(st):
    """Each link cut for a while (every connection closed, new ones refused) and healed, then
    all links at once: calls flow again with no manual step, and nothing is lost."""
    seed = _seed()
    agents = _setup(st, CUT_AGENTS)
    links = ("broker-presence", "broker-auction", "auction-presence", "billing", "agents")
    before = set(st.journal.snapshot()[0])
    sims = SimLoad(st, _sim_progs(CUT_AGENTS), SIM_FIRST, CUT_AGENTS, PER_PROC, CUT_RATE, seed, stagger_s=STAGGER_S)
    tracer = TracerCalls(st, TRACE_PROG, 0.5, seed)
    try:
        _wait_logged_in(st, CUT_AGENTS, 60)
        _wait_progress(st, "the start")
        for cut in links + ("all",):
            names = links if cut == "all" else (cut,)
            for n in names:
                st.proxies[n].cut()
            time.sleep(CUT_S)
            for n in names:
                st.proxies[n].heal()
            back = _wait_progress(st, "the %s link healed" % cut, timeout=60)
            t_in = _wait_logged_in(st, CUT_AGENTS + len(agents), 60)
            say("link %s cut for %.0f s: calls answered again %.1f s after healing, every "
                "agent logged in after %.1f s", cut, CUT_S, back, t_in)
        for a in agents.values():
            expect(a.proc.poll() is None, "agent client %d exited during the cuts",
                   a.agent_id)
    except BaseException:
        sims.kill()
        raise
    finally:
        tracer.stop()
    sims.finish()
    say("simulators: %s", json.dumps(sims.totals(), sort_keys=True))
    check_invariants(st, PROGRAMS, _all_agents(st), tracer=tracer, sims=sims, before=before)


def _presence_lines(st):
    """How many lines presence's log has now (a mark for _presence_said)."""
    path = os.path.join(st.home, "log", "presence.log")
    with open(path, errors="replace") as f:
        return sum(1 for _ in f)


def _presence_said(st, agent_id, text, after_line):
    """True when presence logged text about agent_id after line after_line."""
    path = os.path.join(st.home, "log", "presence.log")
    needle = '"agent_id":%d}' % agent_id
    with open(path, errors="replace") as f:
        for i, line in enumerate(f):
            if i >= after_line and text in line and needle in line:
                return True
    return False


def test_laptop_sleep_resumes(st):
    """An agent's client stopped (SIGSTOP: the laptop sleeps) while available, and while on a
    call; on SIGCONT it resumes: AVAILABLE again, or its call still shown, and pay is right."""
    agents = _setup(st, 0, trace_agents=2)
    a, b = agents[TRACE_FIRST], agents[TRACE_FIRST + 1]
    timeout_ms = int(st.env["RINGBID_HEARTBEAT_TIMEOUT_MS"])
    for sleep_s in SLEEP_S:
        # 1. Asleep while AVAILABLE: presence marks it OFFLINE; awake, it is AVAILABLE again.
        mark = a.mark()
        a.kill(signal.SIGSTOP)
        try:
            st.wait_agent_count("AVAILABLE", 1, timeout=timeout_ms / 1000 + 5)
            left = sleep_s - timeout_ms / 1000 - 1
            if left > 0:
                time.sleep(left)
        finally:
            a.kill(signal.SIGCONT)
        ev = a.wait_event("resumed", timeout=20, after=mark) if not a.find(
            "login", after=mark) else a.find("login", after=mark)[0]
        a.wait_state("AVAILABLE", timeout=20, after=mark)
        st.wait_agent_count("AVAILABLE", 2, timeout=20)
        say("available agent slept %.0f s: came back with %s, AVAILABLE again", sleep_s,
            ev.get("event"))
        st.stop_agents([b])
        r = st.place_call(TRACE_PROG, talk=1, timeout=20)
        expect_eq(r.get("_rc"), 0, "a call after the sleep (%s)" % r.get("_stderr", "")[-200:])
        expect_eq(int(r.get("agent_id") or 0), a.agent_id, "agent of the call after waking")

        # 2. Asleep while ON_CALL: the call runs on (voice is not the data link); awake, the
        # client shows the call, and the caller's hang-up ends it with the right talk time.
        talk = sleep_s + 6
        mark = a.mark()
        cid = st.unique("sleep")
        call = st.place_call(TRACE_PROG, background=True, id=cid, talk=talk, timeout=30)
        a.wait_event("call_connected", lambda e: e.get("call_id") == cid, timeout=20,
                     after=mark)
        seen = _presence_lines(st)
        a.kill(signal.SIGSTOP)
        try:
            time.sleep(min(sleep_s, talk - 3))
            info = st.call_info(cid)
            expect_eq((info.get("state"), int(info.get("agent_id") or 0)),
                      ("connected", a.agent_id), "call %s while its agent sleeps" % cid)
        finally:
            a.kill(signal.SIGCONT)
        # Presence saw the silence, and took the session back with its call.
        wait_until(lambda: _presence_said(st, a.agent_id, "session resumed (state ON_CALL)",
                                          seen), 20, "presence to resume agent %d's session "
                   "with its call" % a.agent_id)
        expect(_presence_said(st, a.agent_id, "link lost: no heartbeat", seen),
               "presence never noticed that agent %d's client was silent", a.agent_id)
        for ev in a.find("resumed", after=mark):
            expect_eq(ev.get("call_id"), cid, "the call the resumed session shows")
        if not a.find("resumed", after=mark):
            say("note: the client showed no 'resumed' event after its session was resumed on "
                "a call (docs/agent-client.md promises one)")
        res = call.result(talk + 60)
        expect_eq(res.get("_rc"), 0, "the call of the sleeping agent (%s)"
                  % res.get("_stderr", "")[-200:])
        a.wait_event("call_ended", lambda e: e.get("call_id") == cid, timeout=20,
                     after=mark)
        a.wait_state("AVAILABLE", timeout=20, after=mark)
        say("agent on a call slept %.0f s: the call ran on and ended after %.0f s of talk",
            sleep_s, talk)
        b = st.start_agent(TRACE_FIRST + 1, "--auto-answer", "60", timeout=30)
    check_invariants(st, PROGRAMS, _all_agents(st))


def test_slow_postgres_lags_never_loses(st):
    """billing.cdrs locked (ACCESS EXCLUSIVE, held by another session) while calls end: the
    broker's outbox grows, billing lags, nothing is lost, and the outbox drains afterwards."""
    seed = _seed()
    _setup(st, 20)
    before = set(st.journal.snapshot()[0])
    sims = SimLoad(st, _sim_progs(20), SIM_FIRST, 20, PER_PROC, 6.0, seed,
                   stagger_s=STAGGER_S)
    tracer = TracerCalls(st, TRACE_PROG, 0.4, seed)
    holder = None
    try:
        _wait_progress(st, "the start")
        url = st.env_file()["RINGBID_DATABASE_URL"]
        holder = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c",
             "BEGIN; LOCK TABLE billing.cdrs IN ACCESS EXCLUSIVE MODE;"
             " SELECT pg_sleep(%s); COMMIT;" % LOCK_S],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=st.env)
        t_lock = time.monotonic()
        wait_until(lambda: st.psql(
            "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'cdrs' AND l.mode = 'AccessExclusiveLock' AND l.granted"),
            10, "the lock on billing.cdrs", 0.2)
        peak = 0
        answered0 = _answered(st)
        while holder.poll() is None:
            peak = max(peak, int(st.status().get("cdr_outbox", 0)))
            time.sleep(0.5)
        held = time.monotonic() - t_lock
        expect_eq(holder.returncode, 0, "the psql holding the lock (%s)"
                  % holder.stderr.read().decode()[-300:])
        answered = _answered(st) - answered0
        say("billing.cdrs locked %.1f s: %d calls answered meanwhile, outbox peaked at %d "
            "CDRs", held, answered, peak)
        expect(answered > 0, "calls should still be answered while billing is slow")
        expect(peak > 0, "the broker's outbox should have grown while billing was stuck")
        drained = wait_outbox_empty(st, 60)
        say("outbox drained %.1f s after the lock was released", drained)
    except BaseException:
        sims.kill()
        raise
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        tracer.stop()
    sims.finish()
    check_invariants(st, PROGRAMS, _all_agents(st), tracer=tracer, sims=sims, before=before)


def _try_call(st, **opts):
    """`ringbid call` in the foreground: its JSON, or {"_rc": 1, "_error": text} when it
    printed none (the broker refused the call)."""
    try:
        return st.place_call(TRACE_PROG, **opts)
    except TestFailure as e:
        return {"_rc": 1, "_error": str(e)}


def _call_state(st, cid):
    """The call's state, None while the broker does not know it yet."""
    r = st.ringbid("call-info", cid, "--json", timeout=15)
    try:
        return json.loads(r.stdout).get("state") if r.returncode == 0 else None
    except ValueError:
        return None


def _fill(path):
    """Writes zeros to path until the disk is full; returns the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
        # The last partial page too.
        for size in (4096, 512, 1):
            while True:
                try:
                    n += f.write(chunk[:size])
                except OSError:
                    break
    return n


@no_stack
def test_full_journal_disk_is_loud():
    """The broker's journal on a small tmpfs that fills up: the broker logs errors, /readyz
    turns 503, new calls are refused, calls already taken are not lost; once space is freed it
    recovers by itself, and a restart replays a clean journal."""
    jdir = os.path.join(ITEST, "faults-disk.journal-fs")
    os.makedirs(jdir, exist_ok=True)
    subprocess.run(["umount", jdir], capture_output=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", jdir],
                       capture_output=True, text=True)
    expect(r.returncode == 0, "cannot mount a tmpfs for the journal (the fault tests run as "
           "root): %s", r.stderr.strip())
    filler = os.path.join(jdir, "filler")
    try:
        with fault_stack("disk", proxies=False,
                         extra_env={"RINGBID_BROKER_JOURNAL": os.path.join(jdir, "journal")}
                         ) as st:
            agents = _setup(st, 0, trace_agents=3)
            # Calls taken before the disk fills: two long ones still connected when it does.
            early = [st.place_call(TRACE_PROG, talk=1, id=st.unique("pre"), timeout=20)
                     for _ in range(3)]
            for res in early:
                expect_eq(res.get("_rc"), 0, "a call before the disk fills")
            long_ids = [st.unique("long") for _ in range(2)]
            longs = [st.place_call(TRACE_PROG, background=True, id=c, talk=8, timeout=20)
                     for c in long_ids]
            for c in long_ids:
                wait_until(lambda c=c: _call_state(st, c) == "connected", 20,
                           "call %s connected" % c)
            filled = _fill(filler)
            say("journal disk full: %d bytes of filler", filled)
            # The journal's last page may still take a few records: calls go on being placed
            # (in the background: a taken call's later changes wait for the disk) until the
            # broker notices. Every call taken until then must survive.
            during = []
            for k in range(40):
                if st.readyz("broker") == 503:
                    break
                during.append(st.place_call(TRACE_PROG, background=True,
                                            id=st.unique("fill%d" % k), talk=0.2, timeout=60))
                time.sleep(0.5)
            wait_until(lambda: st.readyz("broker") == 503, 15, "the broker's /readyz 503")
            say("the broker noticed the full disk after %d more calls", len(during))
            m = st.metrics("broker")
            expect_eq(m.get("ringbid_journal_writable"), 0.0, "ringbid_journal_writable")
            errors = [l for l in st.log_tail("broker", 400).splitlines()
                      if '"level":"error"' in l and "journal" in l]
            expect(errors, "no error line about the journal in the broker's log")
            say("loud: %d error lines, e.g. %s", len(errors), errors[-1][:200])
            for _ in range(3):
                r2 = _try_call(st, talk=1, id=st.unique("full"), timeout=10)
                expect(r2.get("_rc") != 0, "a call was taken on a full journal disk: %s", r2)
            time.sleep(2)
            os.unlink(filler)
            wait_until(lambda: st.readyz("broker") == 200, 20,
                       "the broker's /readyz back to 200 once space is free")
            for res in [c.result(90) for c in longs + during]:
                expect(res.get("_rc") in (0, 4), "a call taken before the disk filled up: %s",
                       {k: v for k, v in res.items() if k != "_stderr"})
            after = st.place_call(TRACE_PROG, talk=1, id=st.unique("post"), timeout=20)
            expect_eq(after.get("_rc"), 0, "a call after space was freed")
            # The journal written through the episode replays cleanly.
            st.restart("broker")
            st.wait_calls_settled(30)
            log = st.log_tail("broker", 60)
            expect("corrupt" not in log, "the journal replayed with a corrupt record: %s",
                   log[-1500:])
            check_invariants(st, PROGRAMS, _all_agents(st))
            for a in agents.values():
                expect(a.proc.poll() is None, "agent %d exited", a.agent_id)
    finally:
        try:
            os.unlink(filler)
        except OSError:
            pass
        r = subprocess.run(["umount", jdir], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", jdir], capture_output=True)


def main():
    # Every stack run_tests starts (the shared one and fresh ones) is a FaultStack.
    harness.Stack = FaultStack
    run_tests(globals(), "faults")


if __name__ == "__main__":
    main()
