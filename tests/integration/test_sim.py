#!/usr/bin/env python3
"""ringbid-sim against a real stack: seeded runs repeat, counts add up and agree with the
broker's own KPIs, and callers abandon when nobody is free.

Each test uses its own program, which requires a skill only that test's agents have, so the
simulated agents of one test never take another test's calls.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, BIN, TestFailure, expect, expect_eq, fresh_stack,  # noqa: E402
                     no_stack, run_tests, wait_until)

SIM = os.path.join(BIN, "ringbid-sim")
SECRET = "sim-agent-secret"


def setup(st, tag, first, n, **program):
    st.add_program(tag, skills=[tag], **program)
    for aid in range(first, first + n):
        st.add_agent(aid, skills=[tag], score=50 + (aid % 40), secret=SECRET)


def run_sim(st, *args, timeout=180, expect_rc=0):
    """Runs ringbid-sim --json with the stack's environment; returns the summary object."""
    env = dict(st.env)
    env["RINGBID_SIM_SECRET_FILE"] = st.secret_file(SECRET)
    # The live lines go to stderr with --json; the test keeps them for a failure message.
    cmd = [SIM, "--json"] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise TestFailure("ringbid-sim %s did not finish within %d s" % (" ".join(cmd[1:]),
                                                                        timeout))
    expect_eq(r.returncode, expect_rc, "exit status of ringbid-sim %s (stderr: %s)"
              % (" ".join(cmd[1:]), r.stderr[-1500:]))
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    expect(len(lines) == 1, "ringbid-sim --json printed %d lines on stdout: %r",
           len(lines), r.stdout[-1000:])
    try:
        out = json.loads(lines[0])
    except ValueError:
        raise TestFailure("ringbid-sim printed no JSON: %r" % lines[0][:500])
    out["_stderr"] = r.stderr
    return out


def check_counts(s, what):
    """Every call the broker took is answered, abandoned, overflowed or still open."""
    total = s["calls_answered"] + s["calls_abandoned"] + s["calls_overflow"] + s["calls_open"]
    expect_eq(total, s["calls_offered"], "%s: answered + abandoned + overflow + open" % what)
    expect_eq(s["calls_completed"] + s["calls_connected_at_end"], s["calls_answered"],
              "%s: completed + still connected" % what)
    expect_eq(s["calls_offered"] + s["calls_refused"], s["calls_scheduled"],
              "%s: offered + refused" % what)
    expect(0.0 <= s["service_level"] <= 1.0, "%s: service level %r", what, s["service_level"])
    expect(0.0 <= s["occupancy"] <= 1.0, "%s: occupancy %r", what, s["occupancy"])


@no_stack
def test_usage_errors():
    for args, needle in ((["--agents", "0"], "--agents"), (["--rate", "fast"], "--rate"),
                         (["--secret", "x"], "--secret-file"), (["--bogus"], "unknown")):
        r = subprocess.run([SIM] + args, capture_output=True, text=True, timeout=10,
                           cwd=ROOT, env={"PATH": os.environ.get("PATH", "")})
        expect_eq(r.returncode, 2, "exit status for %s" % args)
        expect(needle in r.stderr, "stderr for %s should mention %s: %r", args, needle,
               r.stderr)
    r = subprocess.run([SIM, "--help"], capture_output=True, text=True, timeout=10, cwd=ROOT)
    expect(r.returncode == 0 and "--time-factor" in r.stdout, "--help: %r", r.stdout[:200])
    # No secret anywhere: refused before anything is started.
    env = {"PATH": os.environ.get("PATH", ""), "RINGBID_HOME": "/nonexistent"}
    r = subprocess.run([SIM], capture_output=True, text=True, timeout=10, cwd=ROOT, env=env)
    expect_eq(r.returncode, 2, "exit status without a secret")
    expect("RINGBID_SIM_SECRET_FILE" in r.stderr, "stderr without a secret: %r", r.stderr)


def test_same_seed_same_schedule(st):
    tag = "simseed"
    setup(st, tag, 3001, 4, ring_timeout=5, wrap_up=0, max_wait=60)
    common = ["--agents", 4, "--first-agent", 3001, "--programs", tag, "--rate", 3,
              "--duration", 4, "--time-factor", 60, "--talk-mean", 60, "--drain", 20,
              "--quiet"]
    a = run_sim(st, "--seed", 1234, *common)
    b = run_sim(st, "--seed", 1234, *common)
    c = run_sim(st, "--seed", 1235, *common)
    for k in ("seed", "schedule_digest", "calls_scheduled", "calls_offered"):
        expect_eq(b[k], a[k], "second run with the same seed: %s" % k)
    expect(c["schedule_digest"] != a["schedule_digest"],
           "another seed should draw another schedule (both %s)", a["schedule_digest"])
    expect(a["calls_scheduled"] > 0, "the schedule should hold callers: %s", a)
    for s, what in ((a, "run 1"), (b, "run 2"), (c, "run 3")):
        check_counts(s, what)
        expect_eq(s["agents_logged_in"], 4, "%s: agents logged in" % what)
        expect_eq(s["calls_refused"], 0, "%s: calls refused" % what)


@fresh_stack
def test_counts_agree_with_broker(st):
    tag = "simkpi"
    setup(st, tag, 3101, 6, ring_timeout=5, wrap_up=1, max_wait=60)
    before = st.status()
    expect_eq(before.get("calls_offered"), 0, "calls offered on a fresh stack")
    s = run_sim(st, "--agents", 6, "--first-agent", 3101, "--programs", tag, "--rate", 4,
                "--duration", 8, "--time-factor", 60, "--talk-mean", 120,
                "--patience-mean", 60, "--decline-rate", 0.1, "--drain", 30, "--seed", 99,
                "--every", 1)
    check_counts(s, "simulation")
    expect(s["calls_offered"] >= 10, "expected a busy run: %s", s)
    expect(s["calls_answered"] > 0, "some calls should be answered: %s", s)
    expect(s["dispatch_samples"] > 0 and s["dispatch_p50_ms"] > 0,
           "dispatch latency should be measured: %s", s)
    expect(s["dispatch_p50_ms"] <= s["dispatch_p99_ms"] <= s["dispatch_max_ms"],
           "dispatch percentiles out of order: %s", s)
    expect("calls" in s["_stderr"] and "answered" in s["_stderr"],
           "live lines on stderr expected: %r", s["_stderr"][-500:])
    k = st.wait_calls_settled(20)
    for sim_key, kpi_key in (("calls_offered", "calls_offered"),
                             ("calls_answered", "calls_answered"),
                             ("calls_abandoned", "calls_abandoned"),
                             ("calls_overflow", "calls_overflow"),
                             ("answered_within_20s", "answered_within_20s"),
                             ("asa_ms", "asa_ms")):
        expect_eq(s[sim_key], k.get(kpi_key), "simulator's %s against the broker's %s"
                  % (sim_key, kpi_key))
    expect_eq(s["calls_open"], 0, "calls left open after the drain")


def test_abandon_when_nobody_is_free(st):
    tag = "simabandon"
    setup(st, tag, 3201, 1, ring_timeout=5, wrap_up=0, max_wait=120)
    # One agent, long talks, callers who give up within a second or so: most calls that
    # arrive while the agent talks are abandoned.
    s = run_sim(st, "--agents", 1, "--first-agent", 3201, "--programs", tag, "--rate", 3,
                "--duration", 5, "--time-factor", 60, "--talk-mean", 600,
                "--talk-dist", "fixed", "--patience-mean", 30, "--decline-rate", 0,
                "--break-every", 0, "--drain", 2, "--seed", 5, "--quiet")
    check_counts(s, "abandon run")
    expect(s["calls_answered"] >= 1, "the one agent should answer a call: %s", s)
    expect(s["calls_abandoned"] >= 3, "callers should abandon while the agent talks: %s", s)
    # The talk outlasts the drain, so the simulator cut the agent's call short at the end.
    expect(s["calls_cut_short"] >= 1, "a call should have been cut short: %s", s)
    expect_eq(s["calls_open"], 0, "calls left open")


def import_agents(st, tag, first, n):
    """Imports agents first..first+n-1 with the simulator's secret: one CSV, one hash."""
    path = os.path.join(st.home, "agents-%s.csv" % tag)
    with open(path, "w") as f:
        f.write("id,name,skills,score\n")
        for aid in range(first, first + n):
            f.write("%d,Simulated agent %d,%s,%d\n" % (aid, aid, tag, 30 + aid % 60))
    st.ringbid_ok("agent", "import", path, "--secret-file", st.secret_file(SECRET),
                  timeout=120)


def presence_lines(st, needle):
    with open(os.path.join(st.home, "log", "presence.log"), errors="replace") as f:
        return sum(1 for line in f if needle in line)


@fresh_stack
def test_mass_login_under_load(st):
    """200 simulated agents log in at once while two busy processes hold the machine's cores:
    presence's argon2id checks (one per core at a time) queue for longer than a client's five
    resends, yet every agent logs in, each with exactly one session, within a bounded time."""
    tag = "simmass"
    n = 200
    st.add_program(tag, skills=[tag], ring_timeout=5, wrap_up=0, max_wait=60)
    import_agents(st, tag, 4001, n)
    # Presence loads imported agents one notification at a time; a login before its agent's
    # row is loaded is checked against the dummy hash and refused.
    wait_until(lambda: presence_lines(st, "roster: agent reloaded") >= n, 60,
               "presence to load the %d imported agents" % n, 0.25)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        t0 = time.monotonic()
        s = run_sim(st, "--agents", n, "--first-agent", 4001, "--programs", tag, "--rate", 1,
                    "--duration", 2, "--time-factor", 60, "--talk-mean", 60,
                    "--break-every", 0, "--drain", 10, "--login-wait", 150, "--seed", 11,
                    "--quiet", timeout=400)
        took = time.monotonic() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    expect_eq(s["agents_logged_in"], n, "agents logged in")
    # The run itself is short (2 s of arrivals, at most 10 s of drain): the rest is logins.
    expect(took < 120, "200 logins under load took too long: the whole run took %.0f s", took)
    check_counts(s, "mass login run")
    # One session per agent: no login was answered to a client that had stopped waiting.
    expect_eq(presence_lines(st, '"logged in (state'), n, "sessions opened by presence")
    expect_eq(presence_lines(st, "login dropped"), 0, "logins dropped by presence")
    print("# %d agents logged in under load; the run took %.1f s" % (n, took), flush=True)


def test_callers_start_while_others_keep_agents_busy(st):
    """Calls placed with `ringbid call` on the simulator's own program keep two of its three
    agents talking for 15 s: its callers still start as soon as each agent has logged in and
    gone ready, not when all three happen to be AVAILABLE at once."""
    tag = "simshare"
    setup(st, tag, 3401, 3, ring_timeout=5, wrap_up=0, max_wait=120)
    calls = [st.place_call(tag, background=True, talk=15) for _ in range(2)]
    env = dict(st.env)
    env["RINGBID_SIM_SECRET_FILE"] = st.secret_file(SECRET)
    args = [SIM, "--json", "--agents", 3, "--first-agent", 3401, "--programs", tag,
            "--rate", 2, "--duration", 3, "--time-factor", 60, "--talk-mean", 3000,
            "--decline-rate", 0, "--break-every", 0, "--drain", 2, "--login-wait", 60,
            "--seed", 21, "--every", 0]
    t0 = time.monotonic()
    p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    started = None
    err = []
    for line in p.stderr:
        err.append(line)
        if started is None and "agents logged in;" in line:
            started = time.monotonic() - t0
    out, _ = p.communicate(timeout=120)
    expect_eq(p.returncode, 0, "exit status of ringbid-sim (stderr: %s)" % "".join(err)[-1500:])
    expect(started is not None, "the simulator never started its callers: %s",
           "".join(err)[-1500:])
    s = json.loads(out.strip().splitlines()[-1])
    expect(started < 10, "callers started %.1f s after the simulator, while other calls "
           "kept its agents busy for 15 s" % started)
    expect_eq(s["agents_logged_in"], 3, "agents logged in")
    expect(s["calls_offered"] > 0, "the simulator's callers should have arrived: %s" % s)
    check_counts(s, "shared program run")
    for c in calls:
        r = c.result(60)
        expect_eq(r.get("_rc"), 0, "the other calls (%s)" % r.get("_stderr", "")[-300:])
    print("# callers started %.1f s after the simulator" % started, flush=True)


if __name__ == "__main__":
    run_tests(globals(), "sim")
