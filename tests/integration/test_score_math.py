"""Scores: every part, weights, normalisation, thresholds, provisional scores, pinning, a window
edge, outcomes (duplicate, conflict, unknown call), the lift report and the weights check, all
computed by billing's SQL in a real PostgreSQL and compared with numbers worked out by hand.

Programs, agents, CDRs (through billing.ingest_cdrs, as billing stores them), offers and outcomes
go in with psql; billing.recompute_scores runs with a fixed p_at in the past, so each test has a
window of its own and the live schedule (off in this file's stack) never touches it. Each
expected number is computed in the comments beside it, not by running the SQL again.
"""

import decimal
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(__file__))
from harness import (HTTP_PORT, PORT_BILLING_CDRS, expect, expect_eq, run_tests,  # noqa: E402
                     wait_until)

# The stack's billing must not recompute on its own while a test reads the stored rows; the
# last test turns the schedule on to see it run.
os.environ["RINGBID_SCORE_INTERVAL_S"] = "0"

D = decimal.Decimal
US = 1000000
SECRET_HASH = "$argon2id$v=19$m=65536,t=2,p=1$c2NvcmVtYXRo$c2NvcmVtYXRoc2NvcmVtYXRo"


def at(y, mo, d, h=0, mi=0, s=0):
    """Unix microseconds of a UTC wall-clock time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp()) * US


def iso(us):
    return datetime.fromtimestamp(us / US, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def q(text):
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def run_sql(st, sql):
    """(returncode, stdout, stderr) of psql on the stack's database; never fails by itself."""
    url = st.env_file()["RINGBID_DATABASE_URL"]
    r = subprocess.run(["psql", "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                        "-d", url, "-c", sql], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def refused(st, sql, pattern):
    """Runs sql, expects PostgreSQL to refuse it with a message matching pattern."""
    rc, out, err = run_sql(st, sql)
    expect(rc != 0, "expected a refusal matching %r, but it ran: %r", pattern, out)
    expect(re.search(pattern, err), "refusal %r does not match %r", err.strip(), pattern)
    return err


def program(st, pid, **cols):
    names = ["id", "name"] + list(cols)
    vals = [q(pid), q("Program " + pid)]
    for v in cols.values():
        if isinstance(v, bool):
            vals.append("true" if v else "false")
        elif isinstance(v, (list, tuple)):
            vals.append("ARRAY[%s]::text[]" % ",".join(q(x) for x in v))
        elif v is None:
            vals.append("NULL")
        else:
            vals.append(str(v))
    st.psql("INSERT INTO roster.programs (%s) VALUES (%s)" % (", ".join(names), ", ".join(vals)))


def agent(st, aid, skills=()):
    st.psql("INSERT INTO roster.agents (id, name, secret_hash, skills) VALUES (%d, %s, %s, "
            "ARRAY[%s]::text[])" % (aid, q("Agent %d" % aid), q(SECRET_HASH),
                                    ",".join(q(s) for s in skills)))


def cdr(cid, prog, agent_id, answered_us, talk_s, sale=False, resolved=False,
        exploratory=False, offer_log=None, **extra):
    """One CDR as billing hands it to billing.ingest_cdrs (ingest.c's JSON), with a hash of its
    content. offer_log: (agent, offered_us, result) tuples; default: this agent accepted."""
    if offer_log is None:
        offer_log = [(agent_id, answered_us - 3 * US, "accepted")]
    c = {"cdr_id": cid, "call_id": cid, "program": prog, "agent_id": agent_id,
         "arrived_us": answered_us - 7 * US, "offered_us": answered_us - 3 * US,
         "answered_us": answered_us, "ended_us": answered_us + talk_s * US + 250000,
         "talk_s": talk_s, "disposition": "completed", "sale": sale, "review": False,
         "resolved": resolved, "offers": max(1, len(offer_log)), "exploratory": exploratory,
         "offer_log": [{"agent_id": a, "offered_us": o, "result": r} for a, o, r in offer_log],
         "reason": None}
    c.update(extra)
    c["hash"] = hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()
    return c


def ingest(st, cdrs):
    """billing.ingest_cdrs on a batch: {cdr_id: outcome}."""
    rows = st.psql("SELECT cdr_id, outcome, reason FROM billing.ingest_cdrs($j$%s$j$::jsonb)"
                   % json.dumps(cdrs))
    return {r[0]: r[1] for r in rows}


def outcome(call_id, kind, value, reviewer="", call_known=False, recorded_us=0):
    return {"call_id": call_id, "kind": kind, "value": value, "reviewer": reviewer,
            "recorded_us": recorded_us, "call_known": call_known}


def record(st, outcomes):
    """billing.record_outcomes: [(kind, reviewer, duplicate)] in request order."""
    rows = st.psql("SELECT call_id, kind, reviewer, duplicate FROM billing.record_outcomes("
                   "$j$%s$j$::jsonb)" % json.dumps(outcomes))
    return [(r[1], r[2], r[3] == "t") for r in rows]


def recompute(st, p_at_us, days=30, min_calls=20):
    rows = st.psql("SELECT billing.recompute_scores(interval '%d days', %s::timestamptz, %d)"
                   % (days, q(iso(p_at_us)), min_calls))
    return int(rows[0][0])


def scores(st, agent_id):
    """{program: (score, provisional, calls, parts)} of an agent's stored rows."""
    rows = st.psql("SELECT program, score, provisional, calls, parts::text FROM "
                   "billing.agent_score_parts(%d)" % agent_id)
    return {r[0] or "": (D(r[1]), r[2] == "t", int(r[3]), json.loads(r[4], parse_float=D))
            for r in rows}


def parts_of(parts):
    """{part: (raw, normalised, weight, n)} with Decimals (None where null)."""
    out = {}
    for p in parts:
        conv = [None if p[k] is None else D(str(p[k])) for k in ("raw", "normalised", "weight")]
        out[p["part"]] = (conv[0], conv[1], conv[2], int(p["n"]))
    return out


def r4(x):
    """A fraction rounded to 4 places, half away from zero, as the stored parts show it."""
    return (D(x.numerator) / D(x.denominator)).quantize(D("0.0001"), decimal.ROUND_HALF_UP)


def expect_parts(got_parts, want, what):
    got = parts_of(got_parts)
    expect_eq(sorted(got), sorted(want), what + ": parts present")
    for name, (raw, norm, weight, n) in want.items():
        g = got[name]
        expect(g[0] == (None if raw is None else D(str(raw))),
               "%s %s raw: expected %s, got %s", what, name, raw, g[0])
        expect(g[1] == (None if norm is None else D(str(norm))),
               "%s %s normalised: expected %s, got %s", what, name, norm, g[1])
        expect(g[2] == D(str(weight)), "%s %s weight: expected %s, got %s", what, name,
               weight, g[2])
        expect_eq(g[3], n, "%s %s n" % (what, name))


def roster_score(st, aid):
    return D(st.psql("SELECT score FROM roster.agents WHERE id = %d" % aid)[0][0])


# ---------------------------------------------------------------------------------------------

def test_parts_weights_and_normalisation(st):
    # Program sm-a sells, default weights S .30 R .25 C .15 A .15 H .15, 2 calls for a program
    # score. Window: 30 days before 2025-02-01.
    program(st, "sm-a", sells=True, min_calls=2)
    agent(st, 7101)
    agent(st, 7102)
    t = at(2025, 1, 10, 9)
    m = 60 * US
    batch = [
        # agent 7101: four calls of 60, 120, 180, 240 s
        cdr("sa-1", "sm-a", 7101, t, 60, sale=True, resolved=True),
        cdr("sa-2", "sm-a", 7101, t + 10 * m, 120, resolved=False),
        cdr("sa-3", "sm-a", 7101, t + 20 * m, 180, resolved=True),
        cdr("sa-4", "sm-a", 7101, t + 30 * m, 240, resolved=False),
        # agent 7102: two calls of 300 and 600 s. 7101 declined the first and, on the second,
        # let one offer time out and was refused another (not AVAILABLE: not counted)
        cdr("sa-5", "sm-a", 7102, t + 40 * m, 300,
            offer_log=[(7101, t + 40 * m - 6 * US, "declined"),
                       (7102, t + 40 * m - 3 * US, "accepted")]),
        cdr("sa-6", "sm-a", 7102, t + 50 * m, 600,
            offer_log=[(7101, t + 50 * m - 6 * US, "timeout"),
                       (7101, t + 50 * m - 5 * US, "refused"),
                       (7102, t + 50 * m - 3 * US, "accepted")]),
    ]
    expect_eq(set(ingest(st, batch).values()), {"stored"}, "CDRs stored")
    expect_eq(st.psql("SELECT count(*) FROM billing.cdr_offers WHERE call_id LIKE 'sa-%'"),
              [["9"]], "offer rows (1+1+1+1+2+3)")
    # outcomes: surveys 5 and 4 (7101), 2 (7102); sa-2 resolved after all; sa-3 sold after all;
    # QA: sa-1 reviewed 80 and 90, sa-4 reviewed 70
    record(st, [outcome("sa-1", "survey", 5), outcome("sa-1", "qa", 80, "sup-1"),
                outcome("sa-1", "qa", 90, "sup-2")])
    record(st, [outcome("sa-2", "survey", 4), outcome("sa-2", "resolved", 1)])
    record(st, [outcome("sa-3", "sale", 1)])
    record(st, [outcome("sa-4", "qa", 70, "sup-1")])
    record(st, [outcome("sa-5", "survey", 2)])

    recompute(st, at(2025, 2, 1), 30, 3)
    a = scores(st, 7101)
    # Program norms over all six sm-a calls: sold sa-1 (CDR) and sa-3 (outcome): 2/6 = 1/3;
    # median talk of 60 120 180 240 300 600 = (180 + 240) / 2 = 210 s.
    # 7101: satisfaction mean(5, 4) = 4.5 -> (4.5 - 1) / 4 = 0.875; QA per call: sa-1 (80+90)/2
    # = 85, sa-4 70 -> mean 77.5 -> 0.775; both present: each half of .30 = .15.
    # resolution: sa-1 yes, sa-2 yes (outcome over the CDR's no), sa-3 yes, sa-4 no -> 3/4.
    # conversion: 2/4 = 0.5 -> least(1, 0.5 / (2 * 1/3)) = 0.75.
    # answer rate: accepted 4 of offered 6 (4 accepted + 1 declined + 1 timeout; the refused one
    # not counted) = 0.6667.
    # handle time: mean 150 s -> least(1, greatest(0, 2 - 150/210)) = least(1, 1.2857) = 1.
    expect_parts(a["sm-a"][3], {
        "satisfaction": ("4.5", "0.875", "0.15", 2),
        "qa": ("77.5", "0.775", "0.15", 2),
        "resolution": ("0.75", "0.75", "0.25", 4),
        "conversion": ("0.5", "0.75", "0.15", 4),
        "answer_rate": ("0.6667", "0.6667", "0.15", 6),
        "handle_time": ("150", "1", "0.15", 4)}, "7101 in sm-a")
    # .15*.875 + .15*.775 + .25*.75 + .15*.75 + .15*(2/3) + .15*1
    # = .13125 + .11625 + .1875 + .1125 + .1 + .15 = .7975 over weights 1.0 -> 79.75
    expect_eq(a["sm-a"][:3], (D("79.75"), False, 4), "7101's sm-a row (score, provisional, calls)")
    # 4 calls >= 3: established; overall = the calls-weighted mean of one program = 79.75
    expect_eq(a[""][:3], (D("79.75"), False, 4), "7101's overall row")
    expect_eq(roster_score(st, 7101), D("79.75"), "7101's roster score")
    # the overall row lists the program's parts, each naming it
    expect_eq({p.get("program") for p in a[""][3]}, {"sm-a"}, "overall parts' program")
    expect_eq(len(a[""][3]), 6, "overall parts")

    b = scores(st, 7102)
    # 7102: satisfaction 2 -> (2-1)/4 = 0.25, no QA so the whole .30 (QA shows its weight alone
    # too, without data); resolution 0/2 = 0; conversion 0/2 -> 0 / (2/3) = 0; answer rate 2/2
    # = 1; handle time mean (300+600)/2 = 450 -> 2 - 450/210 = -0.1429 -> 0.
    expect_parts(b["sm-a"][3], {
        "satisfaction": ("2", "0.25", "0.3", 1),
        "qa": (None, None, "0.3", 0),
        "resolution": ("0", "0", "0.25", 2),
        "conversion": ("0", "0", "0.15", 2),
        "answer_rate": ("1", "1", "0.15", 2),
        "handle_time": ("450", "0", "0.15", 2)}, "7102 in sm-a")
    # .3*.25 + .25*0 + .15*0 + .15*1 + .15*0 = .225 over weights 1.0 (QA has no data: left out)
    # -> 22.50; 2 calls >= the program's 2: a program row of its own
    expect_eq(b["sm-a"][:3], (D("22.50"), False, 2), "7102's sm-a row")
    # overall: 2 calls < 3: new, provisional = median of the established overall scores
    # {79.75} = 79.75
    expect_eq(b[""][:3], (D("79.75"), True, 2), "7102's provisional overall row")
    expect_eq(roster_score(st, 7102), D("79.75"), "7102's roster score")
    # nothing changed since: the same recompute changes no agent
    expect_eq(recompute(st, at(2025, 2, 1), 30, 3), 0, "agents changed by a second recompute")

    # Weights moved to answer rate and handle time only: 7101 = 100 * (.5*(2/3) + .5*1) / 1
    # = 83.333.. -> 83.33; 7102 = 100 * (.5*1 + .5*0) = 50.00. A program that does not sell
    # shows no conversion part at all.
    st.psql("UPDATE roster.programs SET w_satisfaction = 0, w_resolution = 0, w_conversion = 0,"
            " w_answer_rate = 0.5, w_handle_time = 0.5, sells = false WHERE id = 'sm-a'")
    expect(recompute(st, at(2025, 2, 1), 30, 3) >= 2, "both agents changed")
    a, b = scores(st, 7101), scores(st, 7102)
    expect_eq(a["sm-a"][0], D("83.33"), "7101 with weights A .5 H .5")
    expect_eq(b["sm-a"][0], D("50.00"), "7102 with weights A .5 H .5")
    expect("conversion" not in parts_of(a["sm-a"][3]), "no conversion part when not selling")


def test_thresholds_provisional_and_pinning(st):
    # Two programs scored on resolution alone (weight 1), both needing skill smx:
    #   sm-b: 3 calls for a program score, newcomers start at the program's median;
    #   sm-c: 1 call, newcomers start at 42.50.
    # Window: 30 days before 2025-04-01; 2 calls for an overall score.
    w = dict(w_satisfaction=0, w_resolution=1, w_conversion=0, w_answer_rate=0, w_handle_time=0,
             required_skills=["smx"])
    program(st, "sm-b", min_calls=3, **w)
    program(st, "sm-c", min_calls=1, provisional_score=42.5, **w)
    for aid in (7201, 7202, 7203, 7204, 7205):
        agent(st, aid, skills=["smx"])
    agent(st, 7206)  # no skills: takes calls of neither program
    t = at(2025, 3, 15, 8)
    m = 60 * US
    calls = [("b1", "sm-b", 7201, True), ("b2", "sm-b", 7201, True), ("b3", "sm-b", 7201, True),
             ("b4", "sm-b", 7202, True), ("b5", "sm-b", 7202, False),
             ("b6", "sm-b", 7202, False),
             ("b7", "sm-b", 7203, True), ("b8", "sm-b", 7203, True),
             ("b9", "sm-b", 7204, False),
             ("c1", "sm-c", 7205, True), ("c2", "sm-c", 7205, False)]
    batch = [cdr("st-" + cid, prog, aid, t + i * m, 30, resolved=res)
             for i, (cid, prog, aid, res) in enumerate(calls)]
    expect_eq(set(ingest(st, batch).values()), {"stored"}, "CDRs stored")
    recompute(st, at(2025, 4, 1), 30, 2)
    s = {aid: scores(st, aid) for aid in (7201, 7202, 7203, 7204, 7205, 7206)}
    # 7201: 3/3 resolved = 100.00, 3 calls >= 3: a sm-b row; overall 100.00
    expect_eq(s[7201]["sm-b"][:3], (D("100.00"), False, 3), "7201 sm-b")
    # 7202: 1/3 = 0.3333.. -> 33.33
    expect_eq(s[7202]["sm-b"][:3], (D("33.33"), False, 3), "7202 sm-b")
    # 7203: 2/2 = 100 but 2 calls < 3: no sm-b row; 2 calls >= 2: established, overall 100.00
    expect("sm-b" not in s[7203], "7203 below sm-b's threshold has no sm-b row: %r", s[7203])
    expect_eq(s[7203][""][:3], (D("100.00"), False, 2), "7203 overall")
    # 7205: 1/2 in sm-c = 50.00 (1 call needed there); overall 50.00
    expect_eq(s[7205]["sm-c"][:3], (D("50.00"), False, 2), "7205 sm-c")
    expect_eq(s[7205][""][:3], (D("50.00"), False, 2), "7205 overall")
    # established agents get no row in a program they have no calls in
    expect("sm-c" not in s[7201] and "sm-b" not in s[7205], "no rows without calls")
    # 7204: 1 call < 2: new. Overall = median of established overall {100, 33.33, 100, 50}:
    # sorted 33.33 50 100 100 -> (50 + 100) / 2 = 75.00
    expect_eq(s[7204][""][:3], (D("75.00"), True, 1), "7204 provisional overall")
    # sm-b: 1 call < 3 -> sm-b's median of {100, 33.33} = 66.665 -> 66.67 (exact, half up)
    expect_eq(s[7204]["sm-b"][:3], (D("66.67"), True, 1), "7204 provisional sm-b")
    expect_parts(s[7204]["sm-b"][3], {
        "satisfaction": (None, None, "0", 0), "qa": (None, None, "0", 0),
        "resolution": ("0", "0", "1", 1), "answer_rate": ("1", "1", "0", 1),
        "handle_time": ("30", "1", "0", 1)}, "7204's progress in sm-b")
    # sm-c: no call -> the configured 42.50
    expect_eq(s[7204]["sm-c"][:3], (D("42.50"), True, 0), "7204 provisional sm-c")
    # 7206: new, overall 75.00; no skill smx: no provisional rows in sm-b or sm-c
    expect_eq(s[7206][""][:3], (D("75.00"), True, 0), "7206 provisional overall")
    expect("sm-b" not in s[7206] and "sm-c" not in s[7206], "7206 rows: %r", s[7206])

    # sm-c's provisional score back to its median: {50} -> 50.00
    st.psql("UPDATE roster.programs SET provisional_score = NULL WHERE id = 'sm-c'")
    recompute(st, at(2025, 4, 1), 30, 2)
    expect_eq(scores(st, 7204)["sm-c"][:2], (D("50.00"), True), "7204 sm-c at the median")

    # A supervisor pins 7202 at 90: recompute keeps 90 in the roster, stores no program row for
    # it, and presence gets 90 and no sm-b score. Its record still counts for the medians:
    # 7204's sm-b start stays 66.67.
    st.psql("UPDATE roster.agents SET score = 90, score_pinned = true WHERE id = 7202")
    recompute(st, at(2025, 4, 1), 30, 2)
    s2 = scores(st, 7202)
    expect_eq(roster_score(st, 7202), D("90.00"), "pinned roster score")
    expect("sm-b" not in s2, "a pinned agent has no program rows: %r", s2)
    expect_eq(s2[""][:2], (D("33.33"), False), "the pinned agent's computed overall row")
    expect_eq(st.psql("SELECT program, score FROM billing.presence_scores WHERE agent_id = 7202"),
              [["", "90.00"]], "presence's scores of the pinned agent")
    expect_eq(scores(st, 7204)["sm-b"][0], D("66.67"), "7204 provisional sm-b with 7202 pinned")
    rows = st.psql("SELECT pinned, roster_score FROM billing.agent_score_parts(7202) LIMIT 1")
    expect_eq(rows, [["t", "90.00"]], "agent_score_parts says pinned")
    # Unpinned, the computed 33.33 comes back at the next recompute.
    st.psql("UPDATE roster.agents SET score_pinned = false WHERE id = 7202")
    recompute(st, at(2025, 4, 1), 30, 2)
    expect_eq(roster_score(st, 7202), D("33.33"), "unpinned roster score")
    expect_eq(sorted(st.psql("SELECT program, score FROM billing.presence_scores "
                             "WHERE agent_id = 7202")),
              [["", "33.33"], ["sm-b", "33.33"]], "presence's scores after unpinning")


def test_window_edge(st):
    # Window [2025-05-01T00:00Z, 2025-05-31T00:00Z): one call answered exactly at the start
    # (inside), one a microsecond before it (outside), one a microsecond before the end
    # (inside), one exactly at the end (outside). Only the inside ones are resolved, so the
    # resolution-only score is 100.00 from exactly 2 calls if the edges are right.
    program(st, "sm-d", min_calls=1, w_satisfaction=0, w_resolution=1, w_conversion=0,
            w_answer_rate=0, w_handle_time=0)
    agent(st, 7301)
    start, end = at(2025, 5, 1), at(2025, 5, 31)
    batch = [cdr("we-in-start", "sm-d", 7301, start, 10, resolved=True),
             cdr("we-out-start", "sm-d", 7301, start - 1, 10),
             cdr("we-in-end", "sm-d", 7301, end - 1, 10, resolved=True),
             cdr("we-out-end", "sm-d", 7301, end, 10)]
    expect_eq(set(ingest(st, batch).values()), {"stored"}, "CDRs stored")
    recompute(st, end, 30, 1)
    s = scores(st, 7301)
    expect_eq(s["sm-d"][:3], (D("100.00"), False, 2), "7301 sm-d over the window")
    # offers count by their own time: we-in-start's offer was at start - 3 s (outside), the
    # others' at their answer - 3 s: we-out-start outside, we-in-end and we-out-end inside
    # (end - 3 s) -> 2 offered, 2 accepted
    expect_eq(parts_of(s["sm-d"][3])["answer_rate"], (D(1), D(1), D(0), 2), "offers in window")
    stored = st.psql("SELECT extract(epoch FROM window_start)::bigint, "
                     "extract(epoch FROM window_end)::bigint FROM billing.agent_scores "
                     "WHERE agent_id = 7301 AND program = 'sm-d'")
    expect_eq(stored, [[str(start // US), str(end // US)]], "stored window")


def test_record_outcomes(st):
    program(st, "sm-o")
    agent(st, 7401)
    t = at(2025, 6, 2, 12)
    ingest(st, [cdr("oc-1", "sm-o", 7401, t, 40)])
    # first time stored, then the same again is a duplicate and changes nothing
    expect_eq(record(st, [outcome("oc-1", "survey", 4), outcome("oc-1", "qa", 88, "sup-9")]),
              [("survey", "", False), ("qa", "sup-9", False)], "first recording")
    before = st.psql("SELECT kind, reviewer, value, received_at FROM billing.outcomes "
                     "WHERE call_id = 'oc-1' ORDER BY kind")
    expect_eq(record(st, [outcome("oc-1", "qa", 88, "sup-9"), outcome("oc-1", "survey", 4)]),
              [("qa", "sup-9", True), ("survey", "", True)], "recorded twice")
    # another reviewer's QA of the same call is its own outcome
    expect_eq(record(st, [outcome("oc-1", "qa", 60, "sup-10")]), [("qa", "sup-10", False)],
              "a second reviewer")
    # the same survey with another value: refused whole, the resolution beside it not stored
    refused(st, "SELECT * FROM billing.record_outcomes($j$%s$j$)" % json.dumps(
        [outcome("oc-1", "resolved", 1), outcome("oc-1", "survey", 2)]),
        r"survey for call oc-1 already recorded as 4")
    expect_eq(st.psql("SELECT kind, reviewer, value, received_at FROM billing.outcomes "
                      "WHERE call_id = 'oc-1' AND reviewer <> 'sup-10' ORDER BY kind"), before,
              "outcomes after the refused batch")
    refused(st, "SELECT * FROM billing.record_outcomes($j$%s$j$)" % json.dumps(
        [outcome("oc-1", "qa", 89, "sup-9")]),
        r"QA review by sup-9 for call oc-1 already recorded as 88")
    # an unknown call is refused unless the broker knows it (its CDR is on the way)
    refused(st, "SELECT * FROM billing.record_outcomes($j$%s$j$)" % json.dumps(
        [outcome("oc-nope", "survey", 5)]), r"unknown call oc-nope")
    expect_eq(record(st, [outcome("oc-early", "resolved", 1, call_known=True)]),
              [("resolved", "", False)], "outcome before its CDR, call known to the broker")
    # then its CDR arrives and the outcome counts
    ingest(st, [cdr("oc-early", "sm-o", 7401, t + 60 * US, 40, resolved=False)])
    rows = st.psql("SELECT resolved FROM billing.scored_calls(%s, %s) WHERE cdr_id = 'oc-early'"
                   % (q(iso(t)), q(iso(t + 3600 * US))))
    expect_eq(rows, [["t"]], "the late-recorded resolution overrides the CDR's flag")
    # fields out of range, refused with the reason (billing checks what the broker checked)
    for bad, why in (([outcome("oc-1", "survey", 6)], r"survey score must be 1-5 \(got 6\)"),
                     ([outcome("oc-1", "survey", 0)], r"survey score must be 1-5 \(got 0\)"),
                     ([outcome("oc-1", "qa", 101, "sup-1")], r"QA score must be 0-100"),
                     ([outcome("oc-1", "qa", 50)], r"a QA review needs a reviewer"),
                     ([outcome("oc-1", "sale", 2)], r"sale must be 0 or 1"),
                     ([outcome("oc-1", "nps", 9)], r"unknown kind"),
                     ([outcome("oc-1", "survey", 3, "sup-1")], r"only a QA review"),
                     ([outcome("oc-1", "survey", 3), outcome("oc-2", "survey", 3)],
                      r"must be for one call"),
                     ([outcome("oc-1", "survey", 3, recorded_us=at(2020, 1, 1))],
                      r"more than 400 days ago"),
                     ([], r"between 1 and 16 outcomes"),
                     ([outcome("oc-1", "survey", 3)] * 17, r"between 1 and 16 outcomes")):
        refused(st, "SELECT * FROM billing.record_outcomes($j$%s$j$)" % json.dumps(bad), why)
    expect_eq(st.psql("SELECT count(*) FROM billing.outcomes WHERE call_id = 'oc-1'"), [["3"]],
              "oc-1's outcomes after every refusal")


def test_lift_report(st):
    # sm-e over [2025-07-01, 2025-07-31): 3 calls routed by score, 2 by exploration; one
    # exploratory call just outside the window and one abandoned call do not count.
    program(st, "sm-e", sells=True)
    agent(st, 7501)
    agent(st, 7502)
    t = at(2025, 7, 10, 10)
    m = 60 * US
    batch = [cdr("lf-1", "sm-e", 7501, t, 100, sale=True, resolved=True),
             cdr("lf-2", "sm-e", 7501, t + m * 5, 200, resolved=True),
             cdr("lf-3", "sm-e", 7502, t + m * 10, 301, resolved=False),
             cdr("lf-4", "sm-e", 7502, t + m * 15, 50, exploratory=True, resolved=False),
             cdr("lf-5", "sm-e", 7501, t + m * 20, 75, exploratory=True, sale=True,
                 resolved=True),
             cdr("lf-6", "sm-e", 7501, at(2025, 7, 31), 10, exploratory=True),
             cdr("lf-7", "sm-e", None, t, 0, disposition="abandoned", offered_us=None,
                 ended_us=t + 20 * US, arrived_us=t, offer_log=[])]
    batch[-1]["answered_us"] = None
    expect_eq(set(ingest(st, batch).values()), {"stored"}, "CDRs stored")
    expect_eq(st.psql("SELECT cdr_id FROM billing.cdrs WHERE exploratory AND program = 'sm-e' "
                      "ORDER BY 1"), [["lf-4"], ["lf-5"], ["lf-6"]], "exploratory CDRs")
    record(st, [outcome("lf-1", "survey", 5)])
    record(st, [outcome("lf-2", "survey", 4)])
    record(st, [outcome("lf-4", "survey", 2), outcome("lf-4", "resolved", 1)])
    rows = st.psql("SELECT * FROM billing.lift_report('sm-e', interval '30 days', %s)"
                   % q(iso(at(2025, 7, 31))))
    # auction: lf-1 lf-2 lf-3; surveyed 2, satisfaction (5+4)/2 = 4.50; resolved 2/3 = 0.6667;
    # sold 1/3 = 0.3333; talk (100+200+301)/3 = 200.33.. -> 200.3
    # exploration: lf-4 lf-5; surveyed 1 (2.00); resolved lf-4 (outcome) and lf-5 = 2/2 =
    # 1.0000; sold 1/2 = 0.5000; talk (50+75)/2 = 62.5
    expect_eq(rows, [["auction", "3", "2", "4.50", "0.6667", "0.3333", "200.3"],
                     ["exploration", "2", "1", "2.00", "1.0000", "0.5000", "62.5"]],
              "lift report")
    # a window with nothing in it: both routes, no averages
    rows = st.psql("SELECT * FROM billing.lift_report('sm-e', interval '1 day', %s)"
                   % q(iso(at(2025, 1, 1))))
    expect_eq(rows, [["auction", "0", "0", None, None, None, None],
                     ["exploration", "0", "0", None, None, None, None]], "empty lift report")
    refused(st, "SELECT * FROM billing.lift_report('sm-nope')", r"unknown program sm-nope")


def test_program_settings_refused(st):
    # weights must add up to 1: the sum check names itself so the CLI can say so
    refused(st, "INSERT INTO roster.programs (id, name, w_satisfaction) VALUES ('sm-w', 'W', 0.2)",
            r"programs_weights_sum")
    program(st, "sm-w")
    refused(st, "UPDATE roster.programs SET w_resolution = 0.1 WHERE id = 'sm-w'",
            r"programs_weights_sum")
    refused(st, "UPDATE roster.programs SET w_resolution = 1.1, w_satisfaction = -0.1 "
            "WHERE id = 'sm-w'", r"programs_w_(satisfaction|resolution)_range")
    refused(st, "UPDATE roster.programs SET explore_share = 1.5 WHERE id = 'sm-w'",
            r"programs_explore_share_range")
    refused(st, "UPDATE roster.programs SET min_calls = 0 WHERE id = 'sm-w'",
            r"programs_min_calls_range")
    refused(st, "UPDATE roster.programs SET provisional_score = 100.5 WHERE id = 'sm-w'",
            r"programs_provisional_score_range")
    expect_eq(st.psql("SELECT w_satisfaction, w_resolution, w_conversion, w_answer_rate, "
                      "w_handle_time, sells, min_calls, provisional_score, explore_share "
                      "FROM roster.programs WHERE id = 'sm-w'"),
              [["0.300", "0.250", "0.150", "0.150", "0.150", "f", "20", None, "0.000"]],
              "defaults, unchanged by the refusals")
    refused(st, "SELECT billing.recompute_scores(interval '0 days')", r"score window")
    refused(st, "SELECT billing.recompute_scores(interval '30 days', now(), 0)",
            r"minimum calls")


def test_offer_log_and_resends(st):
    program(st, "sm-f")
    agent(st, 7601)
    agent(st, 7602)
    t = at(2025, 8, 4, 9)
    first = cdr("of-1", "sm-f", 7601, t, 20,
                offer_log=[(7602, t - 5 * US, "agent_lost"), (7601, t - 3 * US, "accepted")])
    expect_eq(ingest(st, [first]), {"of-1": "stored"}, "first copy")
    offers = "SELECT seq, agent_id, (extract(epoch FROM offered_at) * 1000000)::bigint, " \
             "result FROM billing.cdr_offers WHERE call_id = 'of-1' ORDER BY seq"
    want = [["1", "7602", str(t - 5 * US), "agent_lost"],
            ["2", "7601", str(t - 3 * US), "accepted"]]
    expect_eq(st.psql(offers), want, "offer log, oldest first")
    # an identical resend stores nothing more
    expect_eq(ingest(st, [first]), {"of-1": "stored"}, "resend")
    expect_eq(st.psql(offers), want, "offer log after the resend")
    # the same id with another offer log is other content: quarantined, offers untouched
    other = cdr("of-1", "sm-f", 7601, t, 20, offer_log=[(7601, t - 3 * US, "accepted")])
    expect_eq(ingest(st, [other]), {"of-1": "quarantined"}, "other offer log")
    expect_eq(st.psql(offers), want, "offer log after the conflicting copy")
    # a CDR from a broker that sends neither field is stored, not exploratory, without offers
    old = cdr("of-2", "sm-f", 7601, t + 60 * US, 20)
    del old["exploratory"], old["offer_log"]
    expect_eq(ingest(st, [old]), {"of-2": "stored"}, "a CDR without the new fields")
    expect_eq(st.psql("SELECT exploratory, (SELECT count(*) FROM billing.cdr_offers "
                      "WHERE call_id = 'of-2') FROM billing.cdrs WHERE cdr_id = 'of-2'"),
              [["f", "0"]], "old-style CDR")
    # through billing's real socket, as today's broker sends it (rb_probe sends no offer log)
    path = os.path.join(st.home, "of-3.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"cdr_id": "of-3", "program": "sm-f", "agent_id": 7601,
                            "arrived_us": t, "offered_us": t + US, "answered_us": t + 2 * US,
                            "ended_us": t + 12 * US, "talk_s": 10,
                            "disposition": "completed", "offers": 1}) + "\n")
    r = st.probe(st.url(PORT_BILLING_CDRS), "req", "--cdrs", path, timeout_ms=5000)
    expect(r.get("error_code") == 0 and r.get("stored") == ["of-3"], "probe CDR: %r", r)
    expect_eq(st.psql("SELECT exploratory, talk_s FROM billing.cdrs WHERE cdr_id = 'of-3'"),
              [["f", "10"]], "CDR through the socket")


def test_one_notification_per_recompute(st):
    program(st, "sm-n", min_calls=1)
    agent(st, 7701)
    agent(st, 7702)
    t = at(2025, 9, 3, 9)
    ingest(st, [cdr("nt-1", "sm-n", 7701, t, 30, resolved=True),
                cdr("nt-2", "sm-n", 7702, t + US * 60, 30)])
    url = st.env_file()["RINGBID_DATABASE_URL"]

    def notes(*sql):
        args = ["psql", "-X", "-A", "-t", "-d", url, "-c", "LISTEN ringbid_roster"]
        for s in sql:
            args += ["-c", s]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        expect(r.returncode == 0, "psql: %s", r.stderr)
        return re.findall(r'notification "ringbid_roster" with payload "([^"]*)"', r.stdout)

    got = notes("SELECT billing.recompute_scores(interval '30 days', %s, 1)"
                % q(iso(at(2025, 9, 30))))
    # every active agent's roster score changed, yet one notification says so
    expect_eq(got, ["scores"], "notifications of a recompute")
    expect_eq(notes("SELECT billing.recompute_scores(interval '30 days', %s, 1)"
                    % q(iso(at(2025, 9, 30)))), [], "notifications of a recompute that "
              "changed nothing")
    # a single-row change still names its row, and the bulk switch does not leak
    expect_eq(notes("UPDATE roster.agents SET name = 'Renamed' WHERE id = 7701",
                    "SELECT coalesce(current_setting('ringbid.bulk', true), '')"),
              ["agent:7701"], "notification of a roster edit")


def test_scheduled_recompute(st):
    # The last test: billing restarted with a 1 s schedule recomputes over the live window on
    # its own, counts it and logs it.
    program(st, "sm-s", min_calls=1)
    agent(st, 7801)
    st.kill_service("billing")
    st.env["RINGBID_SCORE_INTERVAL_S"] = "1"
    st.env["RINGBID_SCORE_MIN_CALLS"] = "1"
    try:
        st.up_again()

        def counted():
            code, body = st.http_get(HTTP_PORT["billing"], "/metrics")
            m = re.search(r"^ringbid_score_recomputes_total (\d+)", body, re.M)
            return code == 200 and m and int(m.group(1)) >= 2 and body
        body = wait_until(counted, 20, "two scheduled recomputes in billing's metrics")
        m = re.search(r"^ringbid_score_last_recompute_timestamp_seconds (\S+)", body, re.M)
        expect(m and float(m.group(1)) > 1.7e9, "last recompute time: %r", m and m.group(1))
        expect("scores recomputed over the last 30 days" in st.log_tail("billing", 200),
               "billing logs its recompute")
        rows = st.psql("SELECT provisional, computed_at > now() - interval '1 minute' "
                       "FROM billing.agent_scores WHERE agent_id = 7801 AND program = ''")
        expect_eq(rows, [["t", "t"]], "a fresh provisional row for an agent with no calls")
    finally:
        st.env["RINGBID_SCORE_INTERVAL_S"] = "0"
        del st.env["RINGBID_SCORE_MIN_CALLS"]


if __name__ == "__main__":
    run_tests(globals(), "score-math")
