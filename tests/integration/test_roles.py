#!/usr/bin/env python3
"""PostgreSQL roles: each service logs in as itself, each role holds exactly the privileges
db/migrations/0006_roles.sql designs, a forbidden statement fails with insufficient_privilege
(42501), and the whole stack still dispatches calls, stores CDRs and outcomes, recomputes scores
and closes and exports payroll on those roles.

Supervisor, finance and agent logins are made here as a database administrator would make
them: a login role with a password, a member of its group role.
"""

import csv
import io
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HTTP_PORT, PORT_BILLING_CDRS, ROOT, SERVICES, expect,  # noqa: E402
                     expect_eq, run_tests, wait_until)

US = 1000000
GROUPS = ("ringbid_broker", "ringbid_presence", "ringbid_billing", "ringbid_supervisor",
          "ringbid_finance", "ringbid_agent")
SERVICE_LOGINS = {"broker": "ringbid_broker_login", "presence": "ringbid_presence_login",
                  "billing": "ringbid_billing_login"}
PEOPLE = ("supervisor", "finance", "agent")

AGENT_COLS = ("id", "name", "status", "secret_hash", "skills", "score", "score_pinned",
              "created_at", "updated_at")
ALL_BUT_SECRET = tuple(c for c in AGENT_COLS if c != "secret_hash")

# The designed privileges. Table privileges as letters: r SELECT, a INSERT, w UPDATE,
# d DELETE (TRUNCATE, REFERENCES and TRIGGER are nobody's). A table missing here fails the
# test: a new migration must decide who may do what with its tables (0006's header).
TABLES = {
    "roster.programs": {"ringbid_broker": "r", "ringbid_billing": "r",
                        "ringbid_supervisor": "rawd", "ringbid_finance": "r"},
    "roster.agents": {"ringbid_supervisor": "awd"},
    "billing.cdrs": {"ringbid_billing": "ra", "ringbid_supervisor": "r", "ringbid_finance": "r"},
    "billing.cdr_quarantine": {"ringbid_billing": "ra"},
    "billing.cdr_offers": {"ringbid_billing": "ra", "ringbid_supervisor": "r"},
    "billing.outcomes": {"ringbid_billing": "ra", "ringbid_supervisor": "r"},
    "billing.agent_scores": {"ringbid_billing": "rawd", "ringbid_supervisor": "r"},
    "billing.presence_scores": {"ringbid_presence": "r", "ringbid_supervisor": "r"},
    "billing.pay_periods": {"ringbid_billing": "ra", "ringbid_finance": "r"},
    "billing.pay_lines": {"ringbid_billing": "r", "ringbid_finance": "r"},
    "billing.pay_line_cdrs": {"ringbid_finance": "r"},
    "billing.rates": {"ringbid_billing": "r", "ringbid_supervisor": "raw", "ringbid_finance": "r"},
    "billing.api_tokens": {"ringbid_billing": "r"},
    "presence.sessions": {"ringbid_presence": "rad", "ringbid_billing": "r"},
}
# roster.agents is granted by column: who reads which columns, who updates which.
AGENT_SELECT = {
    "ringbid_broker": ("id", "name", "status", "skills", "score"),
    "ringbid_presence": ("id", "name", "status", "secret_hash", "skills", "score"),
    "ringbid_billing": ("id", "name", "status", "skills", "score", "score_pinned"),
    "ringbid_supervisor": ALL_BUT_SECRET,
    "ringbid_finance": ("id", "name", "status"),
}
AGENT_UPDATE = {"ringbid_billing": ("score",), "ringbid_supervisor": AGENT_COLS}
SEQUENCES = {"billing.cdr_quarantine_id_seq": ("ringbid_billing",),
             "billing.rates_id_seq": ("ringbid_supervisor",),
             "billing.api_tokens_id_seq": ()}
SCHEMAS = {"roster": ("ringbid_broker", "ringbid_presence", "ringbid_billing",
                      "ringbid_supervisor", "ringbid_finance"),
           "billing": ("ringbid_presence", "ringbid_billing", "ringbid_supervisor",
                       "ringbid_finance"),
           "presence": ("ringbid_presence", "ringbid_billing")}
# The only functions that run with their owner's rights, and who may call them.
DEFINERS = {"billing.agent_earnings(bigint,text)": ("ringbid_presence", "ringbid_billing"),
            "billing.close_period(date,text)": ("ringbid_finance",)}
PRIV_NAMES = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


# -- logins ---------------------------------------------------------------------------------

def people(st):
    """Logins of a supervisor, a finance clerk and an agent, made once per stack:
    {role: (url, password)}."""
    made = getattr(st, "_people", None)
    if made is not None:
        return made
    port = st.env_file()["RINGBID_PG_PORT"]
    made = {}
    for role in PEOPLE:
        user = "rt_%s" % role
        pw = secrets.token_hex(16)
        st.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN "
                "CREATE ROLE %s LOGIN; END IF; END $$; "
                "ALTER ROLE %s PASSWORD '%s'; GRANT ringbid_%s TO %s"
                % (user, user, user, pw, role, user))
        made[role] = ("postgresql://%s@127.0.0.1:%s/ringbid" % (user, port), pw)
    st._people = made
    return made


def login(st, who):
    """(url, password) of a service's login (password None: its pgpass file) or a person's."""
    if who in SERVICE_LOGINS:
        return st.env_file()["RINGBID_%s_DATABASE_URL" % who.upper()], None
    return people(st)[who]


def run_as(st, who, sql):
    url, pw = login(st, who)
    env = dict(st.env)
    env.pop("PGPASSWORD", None)
    if pw is not None:
        env["PGPASSWORD"] = pw
    r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                        "-v", "VERBOSITY=verbose", "-d", url, "-c", sql],
                       capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    return r


def allowed(st, who, sql):
    r = run_as(st, who, sql)
    expect(r.returncode == 0, "%s could not run %r: %s", who, sql, r.stderr.strip()[-500:])
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def denied(st, who, sql):
    """sql as who must fail with insufficient_privilege (42501) and change nothing."""
    r = run_as(st, who, "BEGIN; %s; COMMIT" % sql.rstrip("; "))
    expect(r.returncode != 0, "%s was allowed to run %r (got %r)", who, sql, r.stdout[-300:])
    expect("42501" in r.stderr, "%s running %r: expected insufficient_privilege (42501), got %s",
           who, sql, r.stderr.strip()[-400:])


def ringbid_as(st, who, *args, timeout=120):
    url, pw = login(st, who)
    env = {"RINGBID_DATABASE_URL": url}
    if pw is not None:
        env["PGPASSWORD"] = pw
    return st.ringbid(*args, env=env, timeout=timeout)


def ringbid_as_ok(st, who, *args, **kw):
    r = ringbid_as(st, who, *args, **kw)
    expect(r.returncode == 0, "`ringbid %s` as %s exited %d: %s", " ".join(map(str, args)), who,
           r.returncode, r.stderr.strip()[-600:])
    return r


def proc_env(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        return dict(kv.split("=", 1) for kv in f.read().decode("utf-8", "replace").split("\0")
                    if "=" in kv)


# -- CDRs through billing's socket, as the broker sends them ---------------------------------

def at(y, mo, d, h=10, mi=0):
    return int(datetime(y, mo, d, h, mi, tzinfo=timezone.utc).timestamp()) * US


def cdr(cid, program, agent, answered_us, talk_s, sale=False):
    return {"cdr_id": cid, "call_id": cid, "program": program, "agent_id": agent,
            "arrived_us": answered_us - 7 * US, "offered_us": answered_us - 3 * US,
            "answered_us": answered_us, "ended_us": answered_us + talk_s * US + 250000,
            "talk_s": talk_s, "disposition": "completed", "sale": sale, "offers": 1}


def send_cdrs(st, cdrs):
    path = os.path.join(st.home, "roles-cdrs-%d.jsonl" % time.monotonic_ns())
    with open(path, "w") as f:
        for c in cdrs:
            f.write(json.dumps(c) + "\n")
    r = st.probe(st.url(PORT_BILLING_CDRS), "req", "--cdrs", path, timeout_ms=5000)
    expect(r.get("error_code") == 0 and "stored" in r, "CDR batch not acknowledged: %r", r)
    return r


def http_get(st, path, token):
    url = "http://127.0.0.1:%d%s" % (st.port(HTTP_PORT["billing"]), path)
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def privilege_errors(st):
    """Lines of the services' logs that report a refused privilege."""
    found = []
    for name in SERVICES:
        path = os.path.join(st.home, "log", "%s.log" % name)
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if "42501" in line or "permission denied" in line:
                        found.append("%s: %s" % (name, line.strip()[:300]))
        except OSError:
            pass
    return found


# -- the tests ------------------------------------------------------------------------------

def test_each_service_logs_in_as_itself(st):
    env = st.env_file()
    owner = env["RINGBID_DATABASE_URL"]
    expect(owner.startswith("postgresql://postgres@127.0.0.1:"), "owner URL: %r", owner)
    for svc, user in SERVICE_LOGINS.items():
        url = env.get("RINGBID_%s_DATABASE_URL" % svc.upper(), "")
        expect(url.startswith("postgresql://%s@127.0.0.1:" % user), "%s URL: %r", svc, url)
        expect(":" not in url.split("//", 1)[1].split("@", 1)[0],
               "%s URL carries a password: %r", svc, url)
        # The running service got that URL, not the owner's.
        pid = st.service_pid(svc)
        expect(pid, "no pid for %s", svc)
        expect_eq(proc_env(pid).get("RINGBID_DATABASE_URL"), url, "%s's database URL" % svc)
        rows = allowed(st, svc, "SELECT current_user, r.rolsuper, r.rolcreaterole, "
                                "r.rolcreatedb, r.rolbypassrls FROM pg_roles r "
                                "WHERE r.rolname = current_user")
        expect_eq(rows, [[user, "f", "f", "f", "f"]], "%s's login" % svc)
        groups = allowed(st, svc, "SELECT g.rolname FROM pg_auth_members m "
                                  "JOIN pg_roles g ON g.oid = m.roleid "
                                  "WHERE m.member = (SELECT oid FROM pg_roles "
                                  "WHERE rolname = current_user)")
        expect_eq(groups, [["ringbid_%s" % svc]], "%s's memberships" % svc)
    # The auction never touches the database: it gets no URL at all.
    expect_eq(proc_env(st.service_pid("auction")).get("RINGBID_DATABASE_URL"), "",
              "the auction's database URL")
    # Passwords only in private pgpass files; the cluster asks every login for one.
    pgpass = os.path.join(st.home, "pgpass")
    expect_eq(stat.S_IMODE(os.stat(pgpass).st_mode), 0o700, "mode of %s" % pgpass)
    for user in ("postgres",) + tuple(SERVICE_LOGINS.values()):
        path = os.path.join(pgpass, user)
        expect_eq(stat.S_IMODE(os.stat(path).st_mode), 0o600, "mode of %s" % path)
        with open(path) as f:
            expect(re.match(r"^\*:\*:\*:%s:[0-9a-f]{64}\n$" % user, f.read()),
                   "%s is not a pgpass line for %s", path, user)
    with open(os.path.join(st.home, "pg", "pg_hba.conf")) as f:
        rules = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    expect(rules and all(r[-1] == "scram-sha-256" for r in rules),
           "pg_hba.conf must ask every login for a password: %r", rules)
    with open(os.path.join(st.home, "env")) as f:
        expect("PASSWORD" not in f.read().upper().replace("PASSFILE", ""),
               "a password in %s/env", st.home)
    for user in ("postgres", "ringbid_billing_login"):
        e = dict(st.env)
        e.pop("PGPASSWORD", None)
        r = subprocess.run(["psql", "-X", "-w", "-d", "postgresql://%s@127.0.0.1:%s/ringbid"
                            % (user, env["RINGBID_PG_PORT"]), "-c", "SELECT 1"],
                           capture_output=True, text=True, timeout=30, env=e)
        expect(r.returncode != 0 and "password" in r.stderr,
               "%s logged in without a password: %r", user, (r.returncode, r.stderr))


def test_privileges_are_the_designed_ones(st):
    rows = st.psql("SELECT n.nspname || '.' || c.relname FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname IN ('roster', 'billing', 'presence') "
                   "AND c.relkind IN ('r', 'v', 'm', 'p', 'f') ORDER BY 1")
    tables = [r[0] for r in rows]
    unknown = sorted(set(tables) - set(TABLES))
    expect(not unknown, "tables without designed privileges (grant them in a migration and "
                        "add them to TABLES here): %s", unknown)
    expect_eq(sorted(set(TABLES) - set(tables)), [], "designed tables that do not exist")
    def arr(items):
        return "ARRAY[%s]::text[]" % ", ".join("'%s'" % i for i in items)

    letters = (("SELECT", "r"), ("INSERT", "a"), ("UPDATE", "w"), ("DELETE", "d"),
               ("TRUNCATE", "D"), ("REFERENCES", "x"), ("TRIGGER", "t"))
    got = st.psql("SELECT t, g, concat(%s) FROM unnest(%s) t CROSS JOIN unnest(%s) g"
                  % (", ".join("CASE WHEN has_table_privilege(g, t, '%s') THEN '%s' END" % pl
                               for pl in letters), arr(tables), arr(GROUPS)))
    problems = []
    for t, g, have in got:
        want = TABLES[t].get(g, "")
        if (have or "") != want:
            problems.append("%s on %s: has %r, designed %r" % (g, t, have or "", want))
    # xmax: `ringbid agent import` tells an added agent from an updated one by it.
    checks = [(col, "SELECT", AGENT_SELECT) for col in AGENT_COLS]
    checks += [(col, "UPDATE", AGENT_UPDATE) for col in AGENT_COLS]
    checks.append(("xmax", "SELECT", {"ringbid_supervisor": ("xmax",)}))
    for col, priv, design in checks:
        rows = st.psql("SELECT g, has_column_privilege(g, 'roster.agents', '%s', '%s') "
                       "FROM unnest(%s) g" % (col, priv, arr(GROUPS)))
        for g, have in rows:
            if (have == "t") != (col in design.get(g, ())):
                problems.append("%s %s of roster.agents.%s: %s" % (
                    g, priv, col, "granted, not designed" if have == "t" else "missing"))
    for seq, holders in SEQUENCES.items():
        for g in GROUPS:
            have = st.psql("SELECT has_sequence_privilege('%s', '%s', 'USAGE')"
                           % (g, seq))[0][0] == "t"
            if have != (g in holders):
                problems.append("%s USAGE on %s: %s" % (g, seq, have))
    for schema, holders in SCHEMAS.items():
        for g in GROUPS:
            have = st.psql("SELECT has_schema_privilege('%s', '%s', 'USAGE'), "
                           "has_schema_privilege('%s', '%s', 'CREATE')" % (g, schema, g, schema))[0]
            if have != ["t" if g in holders else "f", "f"]:
                problems.append("%s on schema %s: usage/create %s" % (g, schema, have))
    for g in GROUPS:
        conn = st.psql("SELECT has_database_privilege('%s', current_database(), 'CONNECT'), "
                       "has_database_privilege('%s', current_database(), 'TEMP')" % (g, g))[0]
        if conn != ["f" if g == "ringbid_agent" else "t", "f"]:
            problems.append("%s connect/temp on the database: %s" % (g, conn))
    expect(not problems, "privileges differ from the design:\n  %s", "\n  ".join(problems))


def test_definer_functions_are_few_pinned_and_granted(st):
    rows = st.psql("SELECT p.oid::regprocedure::text, coalesce(array_to_string(p.proconfig, ','), '') "
                   "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                   "WHERE n.nspname IN ('roster', 'billing', 'presence', 'public') "
                   "AND p.prosecdef ORDER BY 1")
    expect_eq(sorted(r[0] for r in rows), sorted(DEFINERS), "SECURITY DEFINER functions")
    for fn, config in rows:
        expect_eq(config, "search_path=pg_catalog, pg_temp", "search_path of %s" % fn)
        public = st.psql("SELECT has_function_privilege('public', '%s', 'EXECUTE')" % fn)
        expect_eq(public, [["f"]], "PUBLIC may call %s" % fn)
        for g in GROUPS:
            have = st.psql("SELECT has_function_privilege('%s', '%s', 'EXECUTE')" % (g, fn))
            expect_eq(have[0][0] == "t", g in DEFINERS[fn], "%s may call %s" % (g, fn))


def test_broker_reads_the_roster_and_nothing_else(st):
    st.add_program("rb-b", skills=("x",))
    st.add_agent(8101, skills=("x",))
    expect_eq(allowed(st, "broker", "SELECT id, name, status, score FROM roster.agents "
                                    "WHERE id = 8101"),
              [["8101", "Agent 8101", "active", "50.00"]], "the broker reading an agent")
    allowed(st, "broker", "SELECT * FROM roster.programs")
    for sql in ("SELECT count(*) FROM billing.pay_lines",
                "SELECT count(*) FROM billing.cdrs",
                "INSERT INTO billing.cdrs (cdr_id) VALUES ('forged')",
                "SELECT * FROM billing.ingest_cdrs('[]')",
                "SELECT secret_hash FROM roster.agents",
                "SELECT * FROM roster.agents",
                "UPDATE roster.agents SET score = 99",
                "UPDATE roster.programs SET priority = 5",
                "DELETE FROM roster.programs",
                "INSERT INTO presence.sessions (token_hash, agent_id, expires_at) "
                "VALUES ('\\x00', 1, now())",
                "CREATE TABLE roster.mine (x int)"):
        denied(st, "broker", sql)


def test_presence_keeps_sessions_and_reads_one_agents_earnings(st):
    st.add_program("rb-p", skills=("x",))
    st.add_agent(8201, skills=("x",))
    rows = allowed(st, "presence", "SELECT secret_hash LIKE '$argon2id$%' FROM roster.agents "
                                   "WHERE id = 8201")
    expect_eq(rows, [["t"]], "presence reading the secret hash")
    allowed(st, "presence", "SELECT * FROM billing.presence_scores LIMIT 1")
    rows = allowed(st, "presence", "SELECT period_calls FROM billing.agent_earnings(8201, 'UTC')")
    expect_eq(rows, [["0"]], "presence reading an agent's earnings")
    allowed(st, "presence", "BEGIN; INSERT INTO presence.sessions (token_hash, agent_id, "
                            "expires_at) VALUES (decode(repeat('ab', 32), 'hex'), 8201, "
                            "now() + interval '1 hour'); DELETE FROM presence.sessions "
                            "WHERE agent_id = 8201; ROLLBACK")
    for sql in ("UPDATE roster.agents SET score = 99 WHERE id = 8201",
                "UPDATE roster.agents SET secret_hash = secret_hash",
                "INSERT INTO roster.agents (id, name, secret_hash) VALUES (1, 'x', '$argon2id$x')",
                "SELECT count(*) FROM billing.pay_lines",
                "SELECT * FROM billing.pay_lines_for(billing.period_start_of(now(), 'UTC'), "
                "'UTC')",
                "SELECT count(*) FROM billing.cdrs",
                "SELECT count(*) FROM billing.api_tokens",
                "SELECT * FROM billing.close_period('2020-01-06', 'UTC')",
                "UPDATE presence.sessions SET agent_id = 1"):
        denied(st, "presence", sql)


def test_billing_stores_but_never_rewrites(st):
    for sql in ("UPDATE billing.cdrs SET talk_s = talk_s + 60",
                "DELETE FROM billing.cdrs",
                "UPDATE billing.pay_lines SET amount = amount + 1",
                "INSERT INTO billing.pay_lines (period, agent_id, program, code, rate, quantity, "
                "amount, cdr_count) VALUES ('2020-01-06', 1, 'p', 'TALK', 1, 1, 1, 1)",
                "DELETE FROM billing.pay_line_cdrs",
                "UPDATE billing.pay_periods SET status = 'closed', closed_at = now()",
                "SELECT * FROM billing.close_period('2020-01-06', 'UTC')",
                "INSERT INTO billing.rates (program, rate, effective_from) "
                "VALUES ('p', 9, now())",
                "INSERT INTO billing.api_tokens (role, token_hash) "
                "VALUES ('finance', decode(repeat('ab', 32), 'hex'))",
                "UPDATE roster.agents SET name = 'x'",
                "UPDATE roster.agents SET score_pinned = true",
                "SELECT secret_hash FROM roster.agents",
                "UPDATE roster.programs SET default_rate = 9",
                "DELETE FROM presence.sessions",
                "DELETE FROM billing.cdr_quarantine",
                "TRUNCATE billing.outcomes"):
        denied(st, "billing", sql)


def test_supervisor_keeps_roster_and_rates_but_sees_no_pay(st):
    ringbid_as_ok(st, "supervisor", "program", "add", "rb-sup", "--name", "Supervised")
    ringbid_as_ok(st, "supervisor", "agent", "add", "8301", "--name", "Sup Agent",
                  "--skills", "x", "--secret-file", st.secret_file("sup-secret"))
    ringbid_as_ok(st, "supervisor", "agent", "set", "8301", "--score", "77")
    # Importing a roster file (new agents and an update of 8301) needs no secret hash read.
    roster = os.path.join(st.home, "sup-import.csv")
    with open(roster, "w") as f:
        f.write("8302,Imported One,x,60\n8301,Sup Agent Renamed,x,\n")
    ringbid_as_ok(st, "supervisor", "agent", "import", roster, "--secret-file",
                  st.secret_file("sup-secret"))
    expect_eq(st.psql("SELECT id, name, score::text FROM roster.agents WHERE id IN (8301, 8302)"
                      " ORDER BY id"),
              [["8301", "Sup Agent Renamed", "77.00"], ["8302", "Imported One", "60.00"]],
              "agents after a supervisor's import")
    listing = ringbid_as_ok(st, "supervisor", "agent", "list").stdout
    expect("Sup Agent" in listing, "agent list as supervisor: %r", listing)
    ringbid_as_ok(st, "supervisor", "rate", "set", "rb-sup", "0.4")
    ringbid_as_ok(st, "supervisor", "agent", "score", "8301")
    allowed(st, "supervisor", "SELECT * FROM billing.presence_scores LIMIT 1")
    allowed(st, "supervisor", "SELECT * FROM billing.lift_report('rb-sup')")
    for sql in ("SELECT count(*) FROM billing.pay_lines",
                "SELECT count(*) FROM billing.pay_line_cdrs",
                "SELECT count(*) FROM billing.pay_periods",
                "SELECT * FROM billing.payroll_export('2020-01-06', 'UTC', 'csv')",
                "SELECT * FROM billing.agent_earnings(8301, 'UTC')",
                "SELECT * FROM billing.close_period('2020-01-06', 'UTC')",
                "SELECT count(*) FROM billing.api_tokens",
                "SELECT secret_hash FROM roster.agents",
                "INSERT INTO billing.cdrs (cdr_id) VALUES ('forged')",
                "UPDATE billing.agent_scores SET score = 100",
                "SELECT count(*) FROM presence.sessions"):
        denied(st, "supervisor", sql)
    r = ringbid_as(st, "supervisor", "payroll", "export", "current", "--format", "csv",
                   "--output", "-")
    expect(r.returncode != 0 and "permission denied" in r.stderr,
           "payroll export as supervisor: %r", (r.returncode, r.stderr))


def test_finance_reads_and_closes_but_changes_nothing(st):
    tables = [r[0] for r in st.psql(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('billing', 'roster', 'presence') AND c.relkind = 'r' ORDER BY 1")]
    for t in tables:
        col = st.psql("SELECT attname FROM pg_attribute WHERE attrelid = '%s'::regclass "
                      "AND attnum = 1" % t)[0][0]
        denied(st, "finance", "INSERT INTO %s DEFAULT VALUES" % t)
        denied(st, "finance", "UPDATE %s SET %s = %s" % (t, col, col))
        denied(st, "finance", "DELETE FROM %s" % t)
        denied(st, "finance", "TRUNCATE %s" % t)
    denied(st, "finance", "SELECT * FROM billing.ingest_cdrs('[]')")
    denied(st, "finance", "SELECT secret_hash FROM roster.agents")
    denied(st, "finance", "SELECT count(*) FROM billing.api_tokens")
    denied(st, "finance", "SELECT * FROM billing.agent_earnings(1, 'UTC')")


def test_agent_role_has_nothing(st):
    r = run_as(st, "agent", "SELECT 1")
    expect(r.returncode != 0 and "permission denied for database" in r.stderr,
           "an agent login connected to the database: %r", (r.returncode, r.stderr[-300:]))
    rows = st.psql("SELECT count(*) FROM (SELECT n.nspname FROM pg_namespace n "
                   "WHERE n.nspname IN ('roster', 'billing', 'presence') "
                   "AND has_schema_privilege('ringbid_agent', n.oid, 'USAGE')) x")
    expect_eq(rows, [["0"]], "schemas ringbid_agent may use")
    rows = st.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                   "WHERE n.nspname = 'billing' AND p.prosecdef "
                   "AND has_function_privilege('ringbid_agent', p.oid, 'EXECUTE')")
    expect_eq(rows, [["0"]], "money functions ringbid_agent may call")


def test_the_stack_works_on_its_roles(st):
    # Calls dispatched: the broker reads programs, presence logs agents in by their hashes.
    st.add_program("rb-e2e", skills=("e2e",), ring_timeout=5, wrap_up=0, rate="6.0000")
    st.add_agent(8401, skills=("e2e",), score=60)
    a = st.start_agent(8401, "--json", "--auto-answer", "1", "--sale-every", "1")
    res = st.place_call("rb-e2e", skills=["e2e"], talk=3, id="roles-call-1")
    expect_eq(res.get("agent_id"), 8401, "the call's agent (%r)" % res)
    # CDR ingested by billing on its own login.
    wait_until(lambda: st.psql("SELECT sale FROM billing.cdrs WHERE cdr_id = 'roles-call-1'")
               == [["t"]], 20, "the call's CDR stored by billing")
    wait_until(lambda: st.psql("SELECT count(*) > 0 FROM billing.cdr_offers "
                               "WHERE call_id = 'roles-call-1'") == [["t"]], 10,
               "the call's offer log stored")
    # An outcome through broker and billing.
    st.ringbid_ok("outcome", "roles-call-1", "--survey", "5", "--resolved", "yes")
    expect_eq(st.psql("SELECT count(*) FROM billing.outcomes WHERE call_id = 'roles-call-1'"),
              [["2"]], "outcomes stored by billing")
    # The agent's own earnings through presence (billing.agent_earnings as presence).
    mark = a.mark()
    a.send("earnings")
    ev = a.wait_event("earnings", after=mark, timeout=10)
    expect_eq(ev["today_calls"], 1, "the agent's calls today")
    a.stop()
    # Billing's scheduled recompute (every 2 s here) writes scores on its own login.
    wait_until(lambda: st.psql("SELECT count(*) > 0 FROM billing.agent_scores "
                               "WHERE agent_id = 8401") == [["t"]], 20,
               "scores recomputed by billing")
    st.psql("UPDATE roster.agents SET score = 42.42, score_pinned = false WHERE id = 8401")
    wait_until(lambda: st.psql("SELECT score <> 42.42 FROM roster.agents WHERE id = 8401")
               == [["t"]], 20, "the agent's overall score rewritten by billing's recompute")

    # A week that has ended: CDRs in, closed by finance, exported by finance.
    week = "2025-03-03"
    send_cdrs(st, [cdr("roles-old-1", "rb-e2e", 8401, at(2025, 3, 4), 90),
                   cdr("roles-old-2", "rb-e2e", 8401, at(2025, 3, 5), 30, sale=True)])
    out = ringbid_as_ok(st, "finance", "payroll", "close", week).stdout
    expect("closed pay period %s" % week in out, "close as finance: %r", out)
    expect_eq(st.psql("SELECT status FROM billing.pay_periods WHERE start_date = '%s'" % week),
              [["closed"]], "the period's status")
    text = ringbid_as_ok(st, "finance", "payroll", "export", week, "--format", "csv",
                         "--output", "-").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    # 120 s at 6.00 a minute, no commission configured: 12.00 on one TALK line.
    expect_eq([(r["employee_id"], r["earnings_code"], r["amount"]) for r in rows],
              [("8401", "TALK", "12.00")], "finance's export of %s" % week)
    owner = st.ringbid_ok("payroll", "export", week, "--format", "csv", "--output", "-").stdout
    expect_eq(text, owner, "finance's export against the owner's")
    # The HTTP download, answered by billing on its login, is the same file.
    tok = st.ringbid_ok("token", "create", "--role", "finance", "--name", "roles").stdout.strip()
    status, body = http_get(st, "/payroll/export?period=%s&format=csv" % week, tok)
    expect_eq(status, 200, "HTTP payroll download status (%s)" % body[:200])
    expect_eq(body, text, "the HTTP download against finance's export")
    # Closing again changes nothing, and finance still cannot touch the frozen lines.
    out = ringbid_as_ok(st, "finance", "payroll", "close", week).stdout
    expect("already closed" in out, "second close: %r", out)
    denied(st, "finance", "UPDATE billing.pay_lines SET amount = 0 WHERE period = '%s'" % week)
    found = privilege_errors(st)
    expect(not found, "services refused a privilege:\n  %s", "\n  ".join(found[:10]))


def test_up_again_keeps_logins(st):
    before = {}
    for user in SERVICE_LOGINS.values():
        with open(os.path.join(st.home, "pgpass", user)) as f:
            before[user] = f.read()
    st.kill_service("broker")
    st.up_again()
    for user, text in before.items():
        with open(os.path.join(st.home, "pgpass", user)) as f:
            expect_eq(f.read(), text, "pgpass file of %s after `ringbid up` again" % user)
    for svc in SERVICE_LOGINS:
        allowed(st, svc, "SELECT 1")
    st.add_program("rb-again", skills=("ag",), ring_timeout=5, wrap_up=0)
    st.add_agent(8501, skills=("ag",))
    a = st.start_agent(8501, "--json", "--auto-answer", "1")
    res = st.place_call("rb-again", skills=["ag"], talk=1, id="roles-again-1")
    expect_eq(res.get("agent_id"), 8501, "a call after `ringbid up` again (%r)" % res)
    a.stop()


def test_a_trusting_cluster_is_made_to_ask_for_passwords(st):
    """A private cluster made before ringbid used passwords (trust on loopback, no pgpass
    files) gets the owner's password and password-only rules on the next `ringbid up`."""
    r = st.ringbid("down", timeout=90)
    expect(r.returncode == 0, "ringbid down: %s", r.stderr[-500:])
    with open(os.path.join(st.home, "pg", "pg_hba.conf"), "w") as f:
        f.write("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n")
    os.unlink(os.path.join(st.home, "pgpass", "postgres"))
    st.up_again()
    with open(os.path.join(st.home, "pg", "pg_hba.conf")) as f:
        text = f.read()
    expect("trust" not in text and "scram-sha-256" in text, "pg_hba.conf after up: %r", text)
    expect(os.path.exists(os.path.join(st.home, "pgpass", "postgres")), "no owner pgpass file")
    expect_eq(st.psql("SELECT current_user"), [["postgres"]], "the owner logging in")
    for svc in SERVICE_LOGINS:
        allowed(st, svc, "SELECT 1")
    expect_eq(st.status().get("error"), None, "ringbid status after the upgrade")


if __name__ == "__main__":
    run_tests(globals(), "roles", stack_env={"RINGBID_SCORE_INTERVAL_S": "2"})
