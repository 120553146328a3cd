#!/usr/bin/env python3
"""The ringbid CLI against a real database: roster round trips, validation, secrets, migrations."""

import glob
import os
import subprocess
import sys
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (AGENT, RB_EFORBIDDEN, RINGBID, ROOT, TestFailure, expect,  # noqa: E402
                     expect_eq, no_stack, run_tests)


def money(v):
    return Decimal(str(v))


def show(st, what, oid):
    obj = st.ringbid_json(what, "show", str(oid), "--json")
    expect(isinstance(obj, dict), "`%s show %s --json` is not an object: %r", what, oid, obj)
    return obj


def listing(st, what):
    got = st.ringbid_json(what, "list", "--json")
    if isinstance(got, dict):  # tolerate {"programs": [...]} as well as a bare list
        lists = [v for v in got.values() if isinstance(v, list)]
        got = lists[0] if lists else []
    expect(isinstance(got, list), "`%s list --json` is not a list: %r", what, got)
    return {str(o.get("id")): o for o in got}


def all_output(r):
    return (r.stdout or "") + (r.stderr or "")


@no_stack
def test_version_help_and_usage_errors():
    def run(*args):
        return subprocess.run([RINGBID] + list(args), capture_output=True, text=True,
                              timeout=30, cwd=ROOT)
    r = run("--version")
    expect_eq(r.returncode, 0, "exit code of --version")
    expect(any(ch.isdigit() for ch in r.stdout), "--version prints no version: %r", r.stdout)
    r = run("--help")
    expect_eq(r.returncode, 0, "exit code of --help")
    for word in ("program", "agent", "call", "status", "up", "down"):
        expect(word in r.stdout, "--help does not mention %r", word)
    expect_eq(run("program", "list", "--no-such-option").returncode, 2,
              "exit code of an unknown option")
    expect_eq(run("no-such-command").returncode, 2, "exit code of an unknown command")


def test_program_round_trip(st):
    st.ringbid_ok("program", "add", "sales", "--name", "Sales Line", "--skills", "sales,en",
                  "--ring-timeout", "12", "--wrap-up", "5", "--max-wait", "300",
                  "--max-talk", "1800", "--rate", "0.3125", "--rounding", "per_started_minute",
                  "--commission", "1.50", "--priority", "3")
    st.ringbid_ok("program", "add", "support", "--name", "Support")
    p = show(st, "program", "sales")
    expect_eq(p.get("id"), "sales", "id")
    expect_eq(p.get("name"), "Sales Line", "name")
    expect_eq(sorted(p.get("required_skills") or []), ["en", "sales"], "required_skills")
    for key, want in (("ring_timeout_s", 12), ("wrap_up_s", 5), ("max_wait_s", 300),
                      ("max_talk_s", 1800), ("priority", 3)):
        expect_eq(int(p.get(key)), want, key)
    expect_eq(money(p.get("default_rate")), Decimal("0.3125"), "default_rate")
    expect_eq(money(p.get("sale_commission")), Decimal("1.5"), "sale_commission")
    expect_eq(p.get("rounding"), "per_started_minute", "rounding")

    d = show(st, "program", "support")
    for key, want in (("ring_timeout_s", 15), ("wrap_up_s", 30), ("max_wait_s", 600),
                      ("max_talk_s", 7200), ("priority", 0)):
        expect_eq(int(d.get(key)), want, "default " + key)
    expect_eq(money(d.get("default_rate")), Decimal("0.25"), "default rate")
    expect_eq(d.get("rounding"), "per_second", "default rounding")
    expect_eq(d.get("required_skills") or [], [], "default skills")

    st.ringbid_ok("program", "set", "sales", "--ring-timeout", "20", "--rate", "0.2750")
    p2 = show(st, "program", "sales")
    expect_eq(int(p2.get("ring_timeout_s")), 20, "ring_timeout_s after set")
    expect_eq(money(p2.get("default_rate")), Decimal("0.275"), "rate after set")
    for key in ("name", "wrap_up_s", "max_wait_s", "max_talk_s", "priority", "rounding",
                "sale_commission", "required_skills"):
        expect_eq(p2.get(key), p.get(key), "%s unchanged by an unrelated set" % key)

    progs = listing(st, "program")
    expect("sales" in progs and "support" in progs, "program list: %s", sorted(progs))
    r = st.ringbid_ok("program", "list")
    expect("sales" in r.stdout and "support" in r.stdout, "human program list: %r", r.stdout)

    expect(st.ringbid("program", "add", "sales", "--name", "Again").returncode != 0,
           "adding an existing program succeeded")
    expect(st.ringbid("program", "show", "no-such-program").returncode != 0,
           "showing an unknown program succeeded")


def test_program_validation(st):
    bad = [
        ["program", "add", "bad id!", "--name", "X"],
        ["program", "add", "p-ring0", "--name", "X", "--ring-timeout", "0"],
        ["program", "add", "p-ring301", "--name", "X", "--ring-timeout", "301"],
        ["program", "add", "p-wrap", "--name", "X", "--wrap-up", "-1"],
        ["program", "add", "p-rate", "--name", "X", "--rate", "0.12345"],
        ["program", "add", "p-rate2", "--name", "X", "--rate", "abc"],
        ["program", "add", "p-rate3", "--name", "X", "--rate", "-1"],
        ["program", "add", "p-round", "--name", "X", "--rounding", "per_hour"],
        ["program", "add", "p-skill", "--name", "X", "--skills", "ok,not ok"],
        ["program", "add", "p-noname"],
        ["program", "add", "p-prio", "--name", "X", "--priority", "12x"],
    ]
    for args in bad:
        r = st.ringbid(*args)
        expect(r.returncode != 0, "`ringbid %s` was accepted", " ".join(args))
        expect(r.stderr.strip(), "`ringbid %s` failed without saying why", " ".join(args))
    progs = listing(st, "program")
    for args in bad:
        expect(args[2] not in progs, "refused program %r exists anyway", args[2])


def test_agent_round_trip(st):
    secret = "correct horse battery staple"
    r = st.add_agent(5001, name="Ann Agent", skills=["sales", "en"], score=77.5, secret=secret)
    expect(secret not in all_output(r), "agent add printed the secret")
    a = show(st, "agent", 5001)
    expect_eq(int(a.get("id")), 5001, "id")
    expect_eq(a.get("name"), "Ann Agent", "name")
    expect_eq(sorted(a.get("skills") or []), ["en", "sales"], "skills")
    expect_eq(money(a.get("score")), Decimal("77.5"), "score")
    expect_eq(a.get("status"), "active", "status")
    shown = st.ringbid_ok("agent", "show", "5001", "--json").stdout
    expect(secret not in shown and "$argon2" not in shown,
           "agent show exposes the secret or its hash")

    st.ringbid_ok("agent", "set", "5001", "--score", "60", "--status", "suspended")
    a2 = show(st, "agent", 5001)
    expect_eq(money(a2.get("score")), Decimal("60"), "score after set")
    expect_eq(a2.get("status"), "suspended", "status after set")
    expect_eq(a2.get("name"), "Ann Agent", "name unchanged by set")
    expect_eq(sorted(a2.get("skills") or []), ["en", "sales"], "skills unchanged by set")
    st.ringbid_ok("agent", "set", "5001", "--status", "active", "--skills", "support")
    a3 = show(st, "agent", 5001)
    expect_eq((a3.get("status"), a3.get("skills")), ("active", ["support"]), "after second set")

    agents = listing(st, "agent")
    expect("5001" in agents, "agent list: %s", sorted(agents))
    for args in (["agent", "add", "0", "--name", "Zero"],
                 ["agent", "add", "-4", "--name", "Negative"],
                 ["agent", "add", "5005", "--name", "Too good", "--score", "101"],
                 ["agent", "add", "5006", "--name", "Bad skill", "--skills", "a b"]):
        r = st.ringbid(*args, "--secret-file", st.secret_file(secret))
        expect(r.returncode != 0, "`ringbid %s` was accepted", " ".join(args))
    agents = listing(st, "agent")
    for aid in ("0", "-4", "5005", "5006"):
        expect(aid not in agents, "refused agent %s exists anyway", aid)
    expect(st.ringbid("agent", "add", "5001", "--name", "Dup", "--secret-file",
                      st.secret_file(secret)).returncode != 0, "duplicate agent accepted")


def test_secret_never_on_argv(st):
    r = st.ringbid("agent", "add", "5002", "--name", "Argv", "--secret", "hunter2")
    expect(r.returncode != 0, "`agent add --secret` was accepted")
    r = st.ringbid("agent", "add", "5003", "--name", "No secret")
    expect(r.returncode != 0, "`agent add` without any secret was accepted")
    agents = listing(st, "agent")
    expect("5002" not in agents and "5003" not in agents, "refused agents exist: %s",
           sorted(agents))
    r = subprocess.run([AGENT, "--agent", "5001", "--secret", "hunter2", "--json"],
                       capture_output=True, text=True, env=st.env, timeout=20,
                       stdin=subprocess.DEVNULL)
    expect_eq(r.returncode, 2, "exit code of ringbid-agent --secret")
    # The secret from the environment works (no file, no argv), and that secret logs in.
    st.ringbid_ok("agent", "add", "5004", "--name", "Env", "--skills", "x",
                  env={"RINGBID_AGENT_SECRET": "from-the-environment"})
    a = st.start_agent(5004, "--no-ready", secret="from-the-environment", wait="login")
    st.stop_agents([a])


def test_agent_import(st):
    path = os.path.join(st.home, "agents.csv")
    with open(path, "w") as f:
        f.write("6001,Imp One,sales;en,81\n6002,Imp Two,support,62.5\n6003,Imp Three,,40\n")
    st.ringbid_ok("agent", "import", path, "--secret-file", st.secret_file("shared-import"))
    agents = listing(st, "agent")
    for aid, name, skills, score in (("6001", "Imp One", ["en", "sales"], "81"),
                                     ("6002", "Imp Two", ["support"], "62.5"),
                                     ("6003", "Imp Three", [], "40")):
        expect(aid in agents, "imported agent %s missing: %s", aid, sorted(agents))
        a = agents[aid]
        expect_eq(a.get("name"), name, "name of %s" % aid)
        expect_eq(sorted(a.get("skills") or []), skills, "skills of %s" % aid)
        expect_eq(money(a.get("score")), Decimal(score), "score of %s" % aid)
    a = st.start_agent(6002, "--no-ready", secret="shared-import", wait="login")
    st.stop_agents([a])
    bad = os.path.join(st.home, "bad.csv")
    with open(bad, "w") as f:
        f.write("6101,Fine,sales,50\n6102,Broken,sales,500\n")
    r = st.ringbid("agent", "import", bad, "--secret-file", st.secret_file("shared-import"))
    expect(r.returncode != 0, "an import with a score of 500 was accepted")
    agents = listing(st, "agent")
    expect("6102" not in agents, "the invalid row was imported")


def test_suspension_locks_an_agent_out(st):
    st.add_agent(5010, skills=["x"], score=50, secret="pw-5010")
    st.ringbid_ok("agent", "set", "5010", "--status", "suspended")
    a = st.start_agent(5010, "--auto-answer", "1", secret="pw-5010", wait=None)
    expect_eq(a.wait_exit(20), 3, "exit code of a suspended agent's client")
    errs = a.find("error")
    expect(errs and errs[0].get("code") == RB_EFORBIDDEN,
           "a suspended agent should get RB_EFORBIDDEN: %s", a.summary())
    st.stop_agents([a])
    st.ringbid_ok("agent", "set", "5010", "--status", "active")
    b = st.start_agent(5010, "--auto-answer", "1", secret="pw-5010", timeout=20)
    st.wait_agent_count("AVAILABLE", 1)
    # Suspending a logged-in agent takes it off the market at once.
    st.ringbid_ok("agent", "set", "5010", "--status", "suspended")
    st.wait_agent_count("AVAILABLE", 0)
    st.stop_agents([b])


def psql(st, sql):
    url = st.env_file().get("RINGBID_DATABASE_URL")
    expect(url, "no RINGBID_DATABASE_URL in %s/env", st.home)
    r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise TestFailure("psql %r failed: %s" % (sql, r.stderr))
    return r.stdout.strip()


def test_migrate_twice_is_a_no_op(st):
    q = "SELECT version || ' ' || applied_at FROM public.schema_migrations ORDER BY version"
    st.ringbid_ok("program", "add", "kept", "--name", "Kept across migrations")
    st.ringbid_ok("db", "migrate")
    rows = psql(st, q)
    files = sorted(os.path.basename(p)[:-4]
                   for p in glob.glob(os.path.join(ROOT, "db", "migrations", "*.sql")))
    expect_eq([line.split(" ")[0] for line in rows.splitlines()], files,
              "versions recorded in schema_migrations")
    st.ringbid_ok("db", "migrate")
    # Same versions with the same applied_at: nothing was applied again.
    expect_eq(psql(st, q), rows, "schema_migrations after a second migrate")
    expect_eq(psql(st, "SELECT count(*) FROM roster.programs WHERE id = 'kept'"), "1",
              "roster kept across migrations")


if __name__ == "__main__":
    run_tests(globals(), "cli")
