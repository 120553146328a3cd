"""Pay: hand-computed pay lines, rate changes, commissions, period and time-zone boundaries,
late CDRs, closing, exports (quoting, formula neutralisation) and bad CDRs.

CDRs go in through billing's real CDR socket (rb_probe --cdrs); every expected amount below is
computed by hand in the comments. Each test uses weeks and programs of its own.
"""

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

sys.path.insert(0, os.path.dirname(__file__))
from harness import (PORT_BILLING_CDRS, PROBE, RINGBID, ROOT, expect, expect_eq,  # noqa: E402
                     run_tests)

US = 1000000
UTC = timezone.utc
NY = ZoneInfo("America/New_York")


def at(y, mo, d, h=10, mi=0, s=0, tz=UTC):
    """Unix microseconds of a wall-clock time in tz."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()) * US


def cdr(cid, program, agent, answered_us, talk_s, sale=False, **kw):
    c = {"cdr_id": cid, "program": program, "agent_id": agent,
         "arrived_us": answered_us - 7 * US, "offered_us": answered_us - 3 * US,
         "answered_us": answered_us, "ended_us": answered_us + talk_s * US + 250000,
         "talk_s": talk_s, "disposition": "completed", "sale": sale, "offers": 1}
    c.update(kw)
    return c


def send(st, cdrs):
    """One CdrBatch through billing's CDR socket; returns the probe's result with the ack."""
    path = os.path.join(st.home, "cdrs-%d.jsonl" % os.getpid())
    with open(path, "w") as f:
        for c in cdrs:
            f.write(json.dumps(c) + "\n")
    r = st.probe(st.url(PORT_BILLING_CDRS), "req", "--cdrs", path, timeout_ms=5000)
    expect(r.get("error_code") == 0 and "stored" in r, "CDR batch not acknowledged: %r", r)
    return r


def sql(st, query):
    """Rows of a query, as lists of text, via psql on the stack's database."""
    url = st.env_file()["RINGBID_DATABASE_URL"]
    r = subprocess.run(["psql", url, "-X", "-q", "-A", "-t", "-F", "\t", "-v",
                        "ON_ERROR_STOP=1", "-c", query], capture_output=True, text=True,
                       timeout=30)
    expect(r.returncode == 0, "psql failed: %s", r.stderr)
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def lines_of(st, agent, period, tz=None):
    env = {"RINGBID_PAY_TZ": tz} if tz else None
    j = st.ringbid_json("payroll", "explain", agent, period, "--json", env=env)
    return [(l["program"], l["code"], l["rate"], l["quantity"], l["amount"],
             l["original_period"], l["cdr_count"]) for l in j["lines"]], j


def export(st, period, fmt="csv", tz=None):
    env = {"RINGBID_PAY_TZ": tz} if tz else None
    r = st.ringbid_ok("payroll", "export", period, "--format", fmt, "--output", "-", env=env)
    return r.stdout, r.stderr


def setup(st, tag, programs, agents):
    for pid, opts in programs.items():
        st.add_program(pid, name="Program " + tag, **opts)
    for aid, name in agents.items():
        st.add_agent(aid, name=name)


def test_per_second_and_per_started_minute(st):
    setup(st, "rounding", {"rs": {"rate": "0.3000"},
                           "rm": {"rate": "0.2000", "rounding": "per_started_minute"}},
          {5101: "Ada Rounds", 5102: "Half Cent"})
    t = at(2025, 3, 4)
    talks = [0, 59, 60, 61, 7384]
    batch = [cdr("rs-%d" % i, "rs", 5101, t + i * 3600 * US, s) for i, s in enumerate(talks)]
    batch += [cdr("rm-%d" % i, "rm", 5101, t + i * 3600 * US, s) for i, s in enumerate(talks)]
    # one second at 0.30/min is 0.005: rounds half away from zero to 0.01
    batch.append(cdr("rs-half", "rs", 5102, t, 1))
    r = send(st, batch)
    expect_eq(len(r["stored"]), 11, "stored CDRs")
    got, j = lines_of(st, 5101, "2025-03-03")
    expect_eq(j["status"], "open", "an ended period not closed yet")
    # per_second: 0+59+60+61+7384 = 7564 s = 126.0667 min; 7564 * 0.30 / 60 = 37.82
    # per_started_minute: 0+1+1+2+124 = 128 min; 128 * 0.20 = 25.60
    expect_eq(got, [("rm", "TALK", "0.2000", "128.0000", "25.60", None, 5),
                    ("rs", "TALK", "0.3000", "126.0667", "37.82", None, 5)], "lines of 5101")
    shares = {c["cdr_id"]: c["quantity"] for l in j["lines"] for c in l["cdrs"]}
    expect_eq([shares["rm-%d" % i] for i in range(5)],
              ["0.0000", "1.0000", "1.0000", "2.0000", "124.0000"], "started minutes per call")
    got, _ = lines_of(st, 5102, "2025-03-03")
    expect_eq(got, [("rs", "TALK", "0.3000", "0.0167", "0.01", None, 1)], "half-cent line")
    out = st.ringbid_ok("payroll", "close", "2025-03-03").stdout
    expect("froze" in out and "2025-03-03" in out, "close output: %r", out)
    text, err = export(st, "2025-03-03")
    expect("PROVISIONAL" not in err, "closed export flagged provisional: %r", err)
    rows = list(csv.reader(io.StringIO(text)))
    expect_eq(rows[0], ["employee_id", "name", "period_start", "period_end", "earnings_code",
                        "quantity", "rate", "amount", "currency"], "csv header")
    mine = [r for r in rows[1:] if r[0] in ("5101", "5102")]
    expect_eq(mine, [
        ["5101", "Ada Rounds", "2025-03-03", "2025-03-09", "TALK", "128.0000", "0.2000",
         "25.60", "USD"],
        ["5101", "Ada Rounds", "2025-03-03", "2025-03-09", "TALK", "126.0667", "0.3000",
         "37.82", "USD"],
        ["5102", "Half Cent", "2025-03-03", "2025-03-09", "TALK", "0.0167", "0.3000",
         "0.01", "USD"]], "csv rows")
    raw = subprocess.run([RINGBID, "payroll", "export", "2025-03-03", "--format", "csv",
                          "--output", "-"], capture_output=True, env=st.env, cwd=ROOT,
                         timeout=30).stdout
    expect(raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n"),
           "csv lines end with CRLF: %r", raw[-80:])


def test_rate_changes_inside_a_period(st):
    setup(st, "rates", {"rc": {"rate": "0.2500"}}, {5201: "Cy Rates", 5202: "Di Rates"})
    # program-wide 0.30 from Wednesday, agent 5201's own 0.50 from Friday
    st.ringbid_ok("rate", "set", "rc", "0.3000", "--from", "2025-03-12T00:00:00Z")
    st.ringbid_ok("rate", "set", "rc", "0.5000", "--agent", "5201", "--from",
                  "2025-03-14T00:00:00Z")
    rates = st.ringbid_json("rate", "list", "--program", "rc", "--json")
    expect_eq(sorted((x["agent_id"] or 0, x["rate"]) for x in rates
                     if not x["program_default"]),
              [(0, "0.3000"), (5201, "0.5000")], "rate list")
    send(st, [cdr("rc-1", "rc", 5201, at(2025, 3, 10), 60),     # default 0.25
              cdr("rc-2", "rc", 5201, at(2025, 3, 13), 60),     # program 0.30
              cdr("rc-3", "rc", 5201, at(2025, 3, 15), 120),    # agent 0.50: 2 min = 1.00
              cdr("rc-4", "rc", 5202, at(2025, 3, 15), 60),     # program 0.30
              cdr("rc-5", "rc", 5201, at(2025, 3, 13, 23, 59, 59), 30)])  # 0.30: 0.15
    got, _ = lines_of(st, 5201, "2025-03-10")
    # 0.30 line: 90 s = 1.5 min = 0.45
    expect_eq(got, [("rc", "TALK", "0.2500", "1.0000", "0.25", None, 1),
                    ("rc", "TALK", "0.3000", "1.5000", "0.45", None, 2),
                    ("rc", "TALK", "0.5000", "2.0000", "1.00", None, 1)], "lines of 5201")
    got, _ = lines_of(st, 5202, "2025-03-10")
    expect_eq(got, [("rc", "TALK", "0.3000", "1.0000", "0.30", None, 1)], "lines of 5202")


def test_sales_and_the_period_boundary(st):
    setup(st, "sales", {"sl": {"rate": "0.2500", "commission": "2.5000"}},
          {5301: "Eve Sells"})
    send(st, [cdr("sl-1", "sl", 5301, at(2025, 3, 18), 60, sale=True),
              cdr("sl-2", "sl", 5301, at(2025, 3, 19), 120, sale=True),
              cdr("sl-3", "sl", 5301, at(2025, 3, 20), 60),
              # answered Sunday 23:59 UTC, ended Monday 00:09: belongs to the answer's week
              cdr("sl-4", "sl", 5301, at(2025, 3, 23, 23, 59), 600)])
    got, _ = lines_of(st, 5301, "2025-03-17")
    # talk 60+120+60+600 = 840 s = 14 min * 0.25 = 3.50; 2 sales * 2.50 = 5.00
    expect_eq(got, [("sl", "TALK", "0.2500", "14.0000", "3.50", None, 4),
                    ("sl", "SALE", "2.5000", "2.0000", "5.00", None, 2)], "lines of 5301")
    got, _ = lines_of(st, 5301, "2025-03-24")
    expect_eq(got, [], "the next week pays nothing of a call answered before it")


def test_time_zone_boundaries(st):
    setup(st, "tz", {"tz": {"rate": "0.6000"}}, {5401: "Fay Zones"})
    sunday = at(2025, 4, 13, 23, 30, tz=NY)   # 2025-04-14T03:30Z
    monday = at(2025, 4, 14, 0, 30, tz=NY)    # 2025-04-14T04:30Z
    send(st, [cdr("tz-sun", "tz", 5401, sunday, 60), cdr("tz-mon", "tz", 5401, monday, 120)])
    ny = "America/New_York"
    got, _ = lines_of(st, 5401, "2025-04-07", tz=ny)
    expect_eq(got, [("tz", "TALK", "0.6000", "1.0000", "0.60", None, 1)], "NY week of 04-07")
    got, _ = lines_of(st, 5401, "2025-04-14", tz=ny)
    expect_eq(got, [("tz", "TALK", "0.6000", "2.0000", "1.20", None, 1)], "NY week of 04-14")
    got, _ = lines_of(st, 5401, "2025-04-07")
    expect_eq(got, [], "in UTC both calls are on Monday")
    st.ringbid_ok("payroll", "close", "2025-04-07", env={"RINGBID_PAY_TZ": ny})
    row = sql(st, "SELECT tz, starts_at AT TIME ZONE 'UTC', ends_at AT TIME ZONE 'UTC', status"
                  " FROM billing.pay_periods WHERE start_date = '2025-04-07'")
    expect_eq(row, [[ny, "2025-04-07 04:00:00", "2025-04-14 04:00:00", "closed"]],
              "the closed period keeps its zone")
    # closed: read with another zone, it still pays exactly what it froze
    got, _ = lines_of(st, 5401, "2025-04-07")
    expect_eq(got, [("tz", "TALK", "0.6000", "1.0000", "0.60", None, 1)], "frozen lines")


def test_late_cdr_and_closing_twice(st):
    setup(st, "late", {"lt": {"rate": "0.3000", "commission": "1.0000"}}, {5501: "Gil Late"})
    send(st, [cdr("lt-1", "lt", 5501, at(2025, 5, 6), 60)])
    out = st.ringbid_ok("payroll", "close", "2025-05-05").stdout
    expect("closed pay period 2025-05-05" in out, "close output: %r", out)
    before, _ = export(st, "2025-05-05")
    out = st.ringbid_ok("payroll", "close", "2025-05-05").stdout
    expect("already closed" in out and "nothing changed" in out, "second close: %r", out)
    r = send(st, [cdr("lt-2", "lt", 5501, at(2025, 5, 7), 120, sale=True)])
    expect_eq(r["stored"], ["lt-2"], "late CDR stored")
    after, _ = export(st, "2025-05-05")
    expect_eq(after, before, "a closed period's export after a late CDR")
    got, j = lines_of(st, 5501, "current")
    expect_eq(got, [("lt", "LATE", "0.3000", "2.0000", "0.60", "2025-05-05", 1),
                    ("lt", "SALE", "1.0000", "1.0000", "1.00", "2025-05-05", 1)],
              "late lines in the current period")
    expect_eq(j["lines"][0]["cdrs"][0]["call_id"], "lt-2", "the CDR behind the LATE line")
    text, err = export(st, "current")
    expect("PROVISIONAL" in err, "open export not flagged: %r", err)
    expect(any(r[0] == "5501" and r[4] == "LATE" for r in csv.reader(io.StringIO(text))),
           "LATE line in the current export: %r", text)
    # frozen rows refuse changes even from SQL
    r = subprocess.run(["psql", st.env_file()["RINGBID_DATABASE_URL"], "-X", "-q", "-c",
                        "UPDATE billing.pay_lines SET amount = 0 WHERE period = '2025-05-05'"],
                       capture_output=True, text=True, timeout=30)
    expect(r.returncode != 0 and "closed" in r.stderr, "closed pay lines changed: %r", r)
    r = st.ringbid("payroll", "close", "current")
    expect(r.returncode == 1 and "has not ended yet" in r.stderr, "closing a running week: %r",
           (r.returncode, r.stderr))
    r = st.ringbid("payroll", "close", "2025-05-06")
    expect(r.returncode != 0 and "Monday" in r.stderr, "a Tuesday: %r", r.stderr)


def test_open_export_is_provisional(st):
    setup(st, "prov", {"pv": {"rate": "0.2500"}}, {5601: "Hal Open"})
    now = int(datetime.now(UTC).timestamp()) * US
    send(st, [cdr("pv-1", "pv", 5601, now - 5 * 60 * US, 60)])
    outdir = os.path.join(st.home, "exports")
    os.makedirs(outdir, exist_ok=True)
    r = subprocess.run([RINGBID, "payroll", "export", "current", "--format", "csv"],
                       capture_output=True, text=True, env=st.env, cwd=outdir, timeout=30)
    expect(r.returncode == 0, "export failed: %s", r.stderr)
    expect("PROVISIONAL" in r.stderr, "stderr does not say provisional: %r", r.stderr)
    files = os.listdir(outdir)
    expect(len(files) == 1 and files[0].endswith(".provisional.csv"), "files: %r", files)
    with open(os.path.join(outdir, files[0]), newline="") as f:
        rows = list(csv.reader(f))
    expect_eq(rows[0][0], "employee_id", "an importable file starts with its header")
    expect(any(r[0] == "5601" for r in rows[1:]), "agent 5601 in the export: %r", rows)


def test_csv_quoting_and_formula_neutralisation(st):
    setup(st, "names", {"nm": {"rate": "1.0000", "commission": "1.0000"}},
          {5701: "placeholder", 5702: '"quoted, name"', 5703: "placeholder"})
    evil = "=cmd|' /C calc'!A0"
    sql(st, "UPDATE roster.agents SET name = $$%s$$ WHERE id = 5701" % evil)
    sql(st, "UPDATE roster.agents SET name = E'two\\nlines' WHERE id = 5703")
    send(st, [cdr("nm-1", "nm", 5701, at(2025, 5, 13), 60, sale=True),
              cdr("nm-2", "nm", 5702, at(2025, 5, 13), 60),
              cdr("nm-3", "nm", 5703, at(2025, 5, 13), 60)])
    st.ringbid_ok("payroll", "close", "2025-05-12")
    text, _ = export(st, "2025-05-12")
    rows = {r[0]: r for r in csv.reader(io.StringIO(text))}
    expect_eq(rows["5701"][1], "'" + evil, "formula neutralised")
    expect_eq(rows["5702"][1], '"quoted, name"', "quotes and comma survive")
    expect_eq(rows["5703"][1], "two\nlines", "newline survives inside quotes")
    expect('"""quoted, name"""' in text, "RFC 4180 quoting: %r", text)
    for fmt in ("adp", "paychex", "gusto"):
        text, _ = export(st, "2025-05-12", fmt)
        parsed = list(csv.reader(io.StringIO(text)))
        expect(len(parsed) >= 2, "%s export empty: %r", fmt, text)
        for row in parsed:
            for cell_ in row:
                expect(not cell_ or cell_[0] not in "=+-@\t\r", "%s cell %r", fmt, cell_)
    text, _ = export(st, "2025-05-12", "gusto")
    g = list(csv.reader(io.StringIO(text)))
    expect_eq(g[0], ["first_name", "last_name", "title", "regular_hours", "commission",
                     "personal_note"], "gusto header (Gusto's own column titles)")
    mine = [r for r in g[1:] if "ringbid 5701:" in r[5]]
    expect_eq(len(mine), 1, "one gusto row for agent 5701: %r" % g)
    # 60 s of talk = 1/60 h at the job's hourly rate; the commission rides on the same row.
    expect_eq(mine[0][2:5], ["nm", "0.016667", "1.00"], "gusto title, hours and commission")
    expect("talk pay 1.00" in mine[0][5], "gusto note carries ringbid's amount: %r", mine[0])
    text, _ = export(st, "2025-05-12", "paychex")
    p = [r for r in csv.reader(io.StringIO(text)) if r[1] == "5701"]
    expect_eq([(r[4], r[8], r[10]) for r in p],
              [("Talk Time", "1.0000", "1.00"), ("Commission", "1.0000", "1.00")], "paychex")


def test_bad_cdrs_change_nothing(st):
    setup(st, "bad", {"bd": {"rate": "0.3000"}}, {5801: "Ivy Bad"})
    t = at(2025, 5, 20)
    send(st, [cdr("bd-ok", "bd", 5801, t, 60)])
    before = sql(st, "SELECT count(*) FROM billing.cdrs")
    lines_before, _ = lines_of(st, 5801, "2025-05-19")
    bad = [cdr("bd-end", "bd", 5801, t, 0, ended_us=t - US),
           cdr("bd-long", "bd", 5801, t, 200000),
           cdr("bd-agent", "bd", 999999, t, 60),
           cdr("bd-prog", "no-such-program", 5801, t, 60),
           cdr("bd-ok", "bd", 5801, t, 61)]  # same id, other content
    r = send(st, bad)
    expect_eq(sorted(r["refused"]), ["bd-agent", "bd-end", "bd-long", "bd-prog"], "refused")
    expect_eq(r["quarantined"], ["bd-ok"], "quarantined")
    expect_eq(r["stored"], [], "stored")
    reasons = dict((k, v) for k, v in sql(
        st, "SELECT cdr_id, reason FROM billing.cdr_quarantine WHERE cdr_id LIKE 'bd-%'"))
    expect_eq(reasons, {"bd-end": "ends before it was answered",
                        "bd-long": "talk time absurd",
                        "bd-agent": "unknown agent",
                        "bd-prog": "unknown program",
                        "bd-ok": "same cdr id with different content"}, "reasons")
    expect_eq(sql(st, "SELECT count(*) FROM billing.cdrs"), before, "CDR count")
    lines_after, _ = lines_of(st, 5801, "2025-05-19")
    expect_eq(lines_after, lines_before, "pay lines")



def test_close_current_week_early(st):
    # Last in the file: it closes the current week for the shared stack.
    setup(st, "early", {"ea": {"rate": "0.6000"}}, {5901: "Ida Early"})
    now = int(datetime.now(UTC).timestamp()) * US
    send(st, [cdr("ea-1", "ea", 5901, now - 120 * US, 60)])
    r = st.ringbid("payroll", "close", "current")
    expect(r.returncode == 1 and "has not ended yet" in r.stderr and "--early" in r.stderr,
           "closing a running week without --early: %r", (r.returncode, r.stderr))
    this_week = sql(st, "SELECT billing.period_start_of(now(), 'UTC')")[0][0]
    expect_eq(sql(st, "SELECT count(*) FROM billing.pay_periods WHERE status = 'closed' "
                      "AND start_date = '%s'" % this_week), [["0"]], "week still open")
    out = st.ringbid_ok("payroll", "close", "current", "--early").stdout
    expect("closed pay period %s" % this_week in out, "early close output: %r", out)
    got, _ = lines_of(st, 5901, this_week)
    expect_eq(got, [("ea", "TALK", "0.6000", "1.0000", "0.60", None, 1)],
              "the early-closed week's line")
    # A call answered later the same week is paid next week, on a LATE line naming this one.
    send(st, [cdr("ea-2", "ea", 5901, now - 30 * US, 30)])
    next_week = sql(st, "SELECT billing.period_start_of(now() + interval '7 days', 'UTC')")[0][0]
    got, _ = lines_of(st, 5901, next_week)
    expect_eq(got, [("ea", "LATE", "0.6000", "0.5000", "0.30", this_week, 1)],
              "next week's LATE line")
    got, _ = lines_of(st, 5901, this_week)
    expect_eq(got, [("ea", "TALK", "0.6000", "1.0000", "0.60", None, 1)],
              "the closed week after the later call")

if __name__ == "__main__":
    run_tests(globals(), "payroll")
