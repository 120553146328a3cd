#!/usr/bin/env python3
"""Performance scores end to end: outcomes recorded with `ringbid outcome`, scores recomputed with
`ringbid scores recompute`, routing by the new scores without a restart, exploration and the lift
report, and bad input refused with its reason and nothing stored.

Real services, real agents' clients (ringbid-agent --auto-answer), real PostgreSQL. Every test
makes its own programs with a skill only its own agents have. Billing's scheduled recompute is
off (RINGBID_SCORE_INTERVAL_S=0) so that scores change only when a test recomputes them, and an
agent needs one call for a computed overall score (RINGBID_SCORE_MIN_CALLS=1) so that a handful
of calls make a record.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (RB_EINVAL, SERVICES, TestFailure, expect, expect_eq,  # noqa: E402
                     run_tests, wait_until)

# The stack's services and every `ringbid` the tests run inherit these.
os.environ["RINGBID_SCORE_INTERVAL_S"] = "0"
os.environ["RINGBID_SCORE_MIN_CALLS"] = "1"
os.environ.pop("RINGBID_SCORE_WINDOW_DAYS", None)

LONG = "60"  # --auto-answer talk time: the caller ends every call (--talk)
TALK = 0.2   # seconds of talk per call: whole talk seconds stay 0 for every call
PUSH_S = 1.0  # recompute -> NOTIFY -> presence -> auction is asynchronous; this is ample

# Default weights (satisfaction, resolution, conversion, answer rate, handle time); a program
# that does not sell leaves conversion out, so the weights with data add up to 0.85.
W_DEFAULT = (0.30, 0.25, 0.15, 0.15, 0.15)


# -- helpers --------------------------------------------------------------------------------

def close(a, b, eps=0.006):
    return a is not None and b is not None and abs(float(a) - float(b)) < eps


def pause(a):
    # `ringbid call` returns when the broker has the hang-up; presence hears of it a moment
    # later, and refuses a pause while the agent is still on the call.
    wait_until(lambda: a.state() in ("AVAILABLE", "NOT_READY"), 10,
               "agent %d off its last call" % a.agent_id)
    m = a.mark()
    a.send("pause")
    a.wait_state("NOT_READY", after=m)


def ready(a):
    m = a.mark()
    a.send("ready")
    a.wait_state("AVAILABLE", after=m)


def take(st, program, want, cid):
    """One short call that must go to agent want; returns its id."""
    res = st.place_call(program, id=cid, talk=TALK)
    expect_eq(res.get("_rc"), 0, "exit code of `ringbid call` for %s (%s)" % (cid, res))
    expect_eq(int(res.get("agent_id") or 0), want, "agent of call %s" % cid)
    expect_eq(res.get("disposition"), "completed", "disposition of %s" % cid)
    return cid


def outcome(st, cid, *args):
    got = st.ringbid_json("outcome", cid, *args, "--json")
    expect_eq(got.get("call_id"), cid, "call_id of `ringbid outcome`")
    return got


def recompute(st):
    got = st.ringbid_json("scores", "recompute", "--json")
    expect(isinstance(got.get("changed"), int), "`scores recompute --json`: %r", got)
    return got


def scores(st, aid):
    return st.ringbid_json("agent", "score", str(aid), "--json")


def program_row(sc, program):
    for r in sc.get("programs") or []:
        if r.get("program") == program:
            return r
    raise TestFailure("agent %s has no score row for program %s: %r"
                      % (sc.get("agent_id"), program, sc))


def part(row, name):
    for p in row.get("parts") or []:
        if p.get("part") == name:
            return p
    raise TestFailure("score row of %s has no part %r: %r" % (row.get("program"), name, row))


def sql_list(ids):
    return ",".join("'%s'" % i for i in ids)


def wait_billed(st, call_ids, offers):
    """Waits until billing holds the CDRs of call_ids and at least `offers` offer rows for
    them: the scores are computed from what billing has, and the broker sends CDRs on its own
    schedule."""
    def landed():
        rows = st.psql("SELECT (SELECT count(*) FROM billing.cdrs WHERE cdr_id IN (%s)), "
                       "(SELECT count(*) FROM billing.cdr_offers WHERE call_id IN (%s))"
                       % (sql_list(call_ids), sql_list(call_ids)))
        n, o = int(rows[0][0]), int(rows[0][1])
        return (n, o) if n == len(call_ids) and o >= offers else None
    wait_until(landed, 15, "%d CDRs and %d offers in billing" % (len(call_ids), offers), 0.2)


def talk_all_zero(st, call_ids):
    rows = st.psql("SELECT count(*) FILTER (WHERE talk_s <> 0) FROM billing.cdrs "
                   "WHERE cdr_id IN (%s)" % sql_list(call_ids))
    return int(rows[0][0]) == 0


def hand_score(parts, weights=W_DEFAULT):
    """100 * sum(w * normalised) / sum(w) over the parts with data, as docs/scores.md says;
    parts: {"satisfaction": n, "resolution": n, "answer_rate": n, "handle_time": n}."""
    w = dict(zip(("satisfaction", "resolution", "conversion", "answer_rate", "handle_time"),
                 weights))
    num = sum(w[k] * v for k, v in parts.items())
    den = sum(w[k] for k in parts)
    return round(100 * num / den, 2)


def check_decision(d, winner, runner_up, win_score, run_score, what):
    expect_eq(int(d.get("agent_id") or 0), winner, "%s: winner" % what)
    expect_eq(int(d.get("runner_up_id") or 0), runner_up, "%s: runner-up" % what)
    expect(close(d.get("score"), win_score), "%s: winner's score should be %.2f: %s",
           what, win_score, d)
    expect(close(d.get("runner_up_score"), run_score),
           "%s: runner-up's score should be %.2f: %s", what, run_score, d)
    expect_eq(d.get("score_basis"), "program", "%s: basis of the winner's score" % what)
    expect_eq(d.get("runner_up_basis"), "program", "%s: basis of the runner-up's score" % what)
    expect(not d.get("exploratory"), "%s: marked exploratory in a program without "
           "exploration: %s", what, d)


# splitmix64(fnv1a64(call_id)), the contract's exploration rule (DESIGN §3, the spec's
# "Exploration"): whether a call is exploratory depends on its id and the share only.
M64 = (1 << 64) - 1


def explore_hash(call_id):
    h = 0xcbf29ce484222325
    for b in call_id.encode():
        h ^= b
        h = (h * 0x100000001b3) & M64
    z = (h + 0x9e3779b97f4a7c15) & M64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def predicted_exploratory(call_id, share):
    return explore_hash(call_id) % 1000000 < int(share * 1000000 + 0.5)


# A CallRequest with RecordOutcomes, encoded by hand so that values the CLI refuses reach the
# broker, which must refuse them too (it is the authority, not the CLI).
def _varint(n):
    n &= M64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, wire, payload):
    key = _varint((num << 3) | wire)
    if wire == 0:
        return key + _varint(payload)
    return key + _varint(len(payload)) + payload


def record_outcomes_hex(token, call_id, kind, value, reviewer=""):
    o = _field(1, 2, call_id.encode()) + _field(2, 0, kind) + _field(3, 0, value)
    if reviewer:
        o += _field(4, 2, reviewer.encode())
    rec = _field(1, 2, o)
    return (_field(1, 2, token.encode()) + _field(16, 2, rec)).hex()


OUTCOME_SURVEY, OUTCOME_RESOLVED, OUTCOME_SALE, OUTCOME_QA = 1, 2, 3, 4


# -- end to end -------------------------------------------------------------------------------

def test_best_outcomes_win_after_recompute(st):
    tag = "sc-e2e"
    st.add_program(tag, skills=[tag], ring_timeout=5, wrap_up=0, min_calls=1)
    for aid in (7101, 7102):
        st.add_agent(aid, skills=[tag])  # no --score: computed, not pinned
    pids = {s: st.service_pid(s) for s in SERVICES}
    good = st.start_agent(7101, "--auto-answer", LONG)
    weak = st.start_agent(7102, "--auto-answer", LONG)

    # Two calls each, the other agent paused. The good agent answers last and is made ready
    # last, so the weak one has been available longer: a tie on score would go to it.
    pause(weak)
    good_calls = [take(st, tag, 7101, st.unique("e2e-g")) for _ in range(2)]
    ready(weak)
    pause(good)
    weak_calls = [take(st, tag, 7102, st.unique("e2e-w")) for _ in range(2)]
    ready(good)

    for cid in good_calls:
        got = outcome(st, cid, "--survey", "5", "--resolved", "yes")
        expect_eq([(o["kind"], o["value"], o["duplicate"]) for o in got["outcomes"]],
                  [("survey", 5, False), ("resolved", 1, False)], "acks for %s" % cid)
    for cid in weak_calls:
        outcome(st, cid, "--survey", "1", "--resolved", "no")
    # The same outcome again is stored once.
    again = outcome(st, good_calls[0], "--survey", "5")
    expect(again["outcomes"][0]["duplicate"], "a repeated survey is not a duplicate: %r", again)
    rows = st.psql("SELECT call_id, kind, value FROM billing.outcomes WHERE call_id IN (%s) "
                   "ORDER BY call_id, kind" % sql_list(good_calls + weak_calls))
    expect_eq(len(rows), 8, "outcome rows in billing (%r)" % rows)

    wait_billed(st, good_calls + weak_calls, 4)
    got = recompute(st)
    expect(got["changed"] >= 2, "recompute changed %r agents, expected both" % got)

    sg, sw = scores(st, 7101), scores(st, 7102)
    expect(not sg.get("pinned") and not sw.get("pinned"), "computed scores are not pinned")
    pg, pw = program_row(sg, tag), program_row(sw, tag)
    for row, who in ((pg, "good"), (pw, "weak")):
        expect(not row.get("provisional"), "%s agent's program score is provisional: %r",
               who, row)
        expect_eq(int(row.get("calls")), 2, "%s agent's calls in the program" % who)
        expect(row.get("window_start") and row.get("window_end") and row.get("computed_at"),
               "window and computed_at shown: %r", row)
    expect(close(part(pg, "satisfaction")["raw"], 5), "good survey raw: %r", pg)
    expect(close(part(pg, "satisfaction")["normalised"], 1), "good survey normalised: %r", pg)
    expect(close(part(pw, "satisfaction")["raw"], 1), "weak survey raw: %r", pw)
    expect(close(part(pw, "satisfaction")["normalised"], 0), "weak survey normalised: %r", pw)
    expect(close(part(pg, "resolution")["raw"], 1) and close(part(pw, "resolution")["raw"], 0),
           "resolution raw values: %r / %r", pg, pw)
    for row in (pg, pw):
        ar = part(row, "answer_rate")
        expect(close(ar["raw"], 1) and int(ar["n"]) == 2, "answer rate 2 of 2: %r", ar)
        expect(close(part(row, "satisfaction")["weight"], 0.3), "satisfaction weight: %r", row)
    score_g, score_w = float(pg["score"]), float(pw["score"])
    expect(score_g > score_w, "the good agent must score higher: %.2f vs %.2f", score_g,
           score_w)
    if talk_all_zero(st, good_calls + weak_calls):
        # Every part by hand: survey (5-1)/4 = 1 and (1-1)/4 = 0; resolved 1 and 0; both
        # answered 2 of 2 offers; talk 0 s at a median of 0 s: handle time 1.
        # good 100 * (.3 + .25 + .15 + .15) / .85 = 100.00
        # weak 100 * (.15 + .15) / .85 = 35.29
        want_g = hand_score({"satisfaction": 1, "resolution": 1, "answer_rate": 1,
                             "handle_time": 1})
        want_w = hand_score({"satisfaction": 0, "resolution": 0, "answer_rate": 1,
                             "handle_time": 1})
        expect(close(score_g, want_g) and close(score_w, want_w),
               "scores %.2f / %.2f, by hand %.2f / %.2f", score_g, score_w, want_g, want_w)
    # One program: the overall score is the program's, and routing's fallback is it too.
    expect(close(sg["overall"]["score"], score_g), "overall score of the good agent: %r", sg)
    expect(close(st.ringbid_json("agent", "show", "7101", "--json")["score"], score_g),
           "roster score of the good agent after the recompute")
    text = st.ringbid_ok("agent", "score", "7102").stdout
    for word in ("satisfaction", "answer_rate", "NORMALISED", "WEIGHT", "window"):
        expect(word in text, "`ringbid agent score` does not show %r: %s", word, text)

    # The next call goes by the new scores, with no restart.
    time.sleep(PUSH_S)
    cid = st.unique("e2e-next")
    take(st, tag, 7101, cid)
    d = st.explain(cid)["decisions"][0]
    check_decision(d, 7101, 7102, score_g, score_w, "call after the recompute")
    expect("highest score" in str(d.get("reason")), "reason: %s", d)
    text = st.ringbid_ok("explain", cid).stdout
    expect("(program score)" in text, "`ringbid explain` does not name the basis: %s", text)
    expect_eq({s: st.service_pid(s) for s in SERVICES}, pids, "service pids (no restart)")


def test_agent_who_stops_answering_loses_rank(st):
    tag = "sc-fade"
    # Answer rate weighs 0.35 here, so that missed offers show in one recompute.
    weights = (0.30, 0.25, 0.0, 0.35, 0.10)
    st.add_program(tag, skills=[tag], ring_timeout=1, wrap_up=0, min_calls=1,
                   weights=",".join("%.2f" % w for w in weights))
    for aid in (7201, 7202):
        st.add_agent(aid, skills=[tag])
    first = st.start_agent(7201, "--auto-answer", LONG)
    second = st.start_agent(7202, "--auto-answer", LONG)

    pause(second)
    calls_1 = [take(st, tag, 7201, st.unique("fade-1")) for _ in range(2)]
    ready(second)
    pause(first)
    calls_2 = [take(st, tag, 7202, st.unique("fade-2")) for _ in range(2)]
    ready(first)
    for cid in calls_1:
        outcome(st, cid, "--survey", "5", "--resolved", "yes")
    for cid in calls_2:
        outcome(st, cid, "--survey", "4", "--resolved", "yes")
    wait_billed(st, calls_1 + calls_2, 4)
    recompute(st)
    s1, s2 = float(program_row(scores(st, 7201), tag)["score"]), \
        float(program_row(scores(st, 7202), tag)["score"])
    expect(s1 > s2, "7201 should lead before it stops answering: %.2f vs %.2f", s1, s2)
    zero = talk_all_zero(st, calls_1 + calls_2)
    if zero:
        # 7201: survey 1, resolved 1, answered 2/2, handle 1 -> 100.00
        # 7202: survey (4-1)/4 = .75 -> 100 * (.3*.75 + .25 + .35 + .1) = 92.50
        expect(close(s1, hand_score({"satisfaction": 1, "resolution": 1, "answer_rate": 1,
                                     "handle_time": 1}, weights)), "7201 score %.2f", s1)
        expect(close(s2, hand_score({"satisfaction": 0.75, "resolution": 1, "answer_rate": 1,
                                     "handle_time": 1}, weights)), "7202 score %.2f", s2)

    # 7201 stops answering: its next offers ring out and go to 7202.
    st.stop_agents([first])
    silent = st.start_agent(7201, "--ignore-offers")
    time.sleep(PUSH_S)
    missed = []
    for n in range(2):
        cid = st.unique("fade-miss")
        res = st.place_call(tag, id=cid, talk=TALK)
        expect_eq(int(res.get("agent_id") or 0), 7202, "agent of missed call %d" % n)
        expect_eq(int(res.get("offers") or 0), 2, "offers of missed call %d" % n)
        ds = st.explain(cid)["decisions"]
        expect_eq([int(d.get("agent_id", 0)) for d in ds], [7201, 7202],
                  "offers of missed call %d" % n)
        expect(close(ds[0].get("score"), s1) and ds[0].get("score_basis") == "program",
               "the first offer went to the leader by its program score: %s", ds[0])
        missed.append(cid)
        outcome(st, cid, "--survey", "4", "--resolved", "yes")
    silent.wait_state("NOT_READY", 5)
    st.stop_agents([silent])
    wait_billed(st, calls_1 + calls_2 + missed, 8)
    rows = st.psql("SELECT result, count(*) FROM billing.cdr_offers WHERE agent_id = 7201 "
                   "GROUP BY result ORDER BY result")
    expect_eq(rows, [["accepted", "2"], ["timeout", "2"]], "7201's offer log in billing")
    recompute(st)
    r1, r2 = program_row(scores(st, 7201), tag), program_row(scores(st, 7202), tag)
    t1, t2 = float(r1["score"]), float(r2["score"])
    expect(close(part(r1, "answer_rate")["raw"], 0.5) and int(part(r1, "answer_rate")["n"]) == 4,
           "7201 answered 2 of 4 offers: %r", part(r1, "answer_rate"))
    expect(close(part(r2, "answer_rate")["raw"], 1), "7202 answered every offer: %r", r2)
    expect(t1 < t2, "7201 should have lost its rank: %.2f vs %.2f", t1, t2)
    if zero and talk_all_zero(st, missed):
        # 7201: answer rate .5 -> 100 * (.3 + .25 + .35*.5 + .1) = 82.50; 7202 unchanged.
        expect(close(t1, hand_score({"satisfaction": 1, "resolution": 1, "answer_rate": 0.5,
                                     "handle_time": 1}, weights)), "7201 score %.2f", t1)
        expect(close(t2, s2), "7202 keeps %.2f: %.2f", s2, t2)

    # Back at work, and available longer than 7202: the call still goes to 7202 by score.
    st.start_agent(7201, "--auto-answer", LONG)
    pause(second)
    ready(second)
    time.sleep(PUSH_S)
    cid = st.unique("fade-after")
    take(st, tag, 7202, cid)
    d = st.explain(cid)["decisions"][0]
    check_decision(d, 7202, 7201, t2, t1, "call after 7201 lost its rank")


# -- exploration ------------------------------------------------------------------------------

def _explore_run(st, program, n, prefix):
    """n sequential calls, each ended by its caller at once; returns [(call_id, agent)]."""
    out = []
    for _ in range(n):
        cid = st.unique(prefix)
        res = st.place_call(program, id=cid, talk=0)
        expect_eq(res.get("_rc"), 0, "exit code of call %s (%s)" % (cid, res))
        out.append((cid, int(res.get("agent_id") or 0)))
    return out


def test_exploration_share(st):
    skill = "sc-x"
    st.add_program("sc-x0", skills=[skill], ring_timeout=5, wrap_up=0)
    st.add_program("sc-x20", skills=[skill], ring_timeout=5, wrap_up=0, explore_share="0.2")
    got = st.ringbid_json("program", "show", "sc-x20", "--json")
    expect(close(got.get("explore_share"), 0.2), "explore_share of sc-x20: %r", got)
    # Distinct pinned scores: score routing always prefers 7301, exploration the one waiting
    # longest. They log in lowest score first, so 7304 starts as the longest available.
    agents = {7301: 90, 7302: 80, 7303: 70, 7304: 60}
    for aid, score in agents.items():
        st.add_agent(aid, skills=[skill], score=score)
    for aid in (7304, 7303, 7302, 7301):
        st.start_agent(aid, "--auto-answer", LONG)
        time.sleep(0.05)
    order = [7304, 7303, 7302, 7301]

    n0, n20 = 40, 100
    calls0 = _explore_run(st, "sc-x0", n0, "x0")
    calls20 = _explore_run(st, "sc-x20", n20, "x20")
    ids0 = [c for c, _ in calls0]
    ids20 = [c for c, _ in calls20]
    wait_billed(st, ids0 + ids20, n0 + n20)

    # What each decision said, from the broker (explain) and from billing (the CDR).
    marked = {}
    for cid in ids0 + ids20:
        ds = st.explain(cid)["decisions"]
        expect_eq(len(ds), 1, "offers of %s" % cid)
        marked[cid] = bool(ds[0].get("exploratory"))
        if marked[cid]:
            expect("exploration" in str(ds[0].get("reason")),
                   "an exploratory decision names its reason: %s", ds[0])
    stored = dict(st.psql("SELECT cdr_id, exploratory::text FROM billing.cdrs "
                          "WHERE cdr_id IN (%s)" % sql_list(ids0 + ids20)))
    for cid in ids0 + ids20:
        expect_eq(stored.get(cid) == "true", marked[cid], "CDR exploratory flag of %s" % cid)

    # Share 0: never.
    expect_eq(sum(marked[c] for c in ids0), 0, "exploratory calls at share 0")

    # Share 0.2: about a fifth; mean +- 4 standard deviations of a binomial(n, 0.2).
    e = sum(marked[c] for c in ids20)
    mean, sd = n20 * 0.2, (n20 * 0.2 * 0.8) ** 0.5
    expect(mean - 4 * sd <= e <= mean + 4 * sd,
           "%d exploratory calls of %d at share 0.2 (expected %.0f +- %.0f)", e, n20, mean,
           4 * sd)
    expect(e > 0, "no exploratory call among %d at share 0.2" % n20)
    # The choice is the call id's hash, not a coin: the same calls every time.
    want = [c for c in ids20 if predicted_exploratory(c, 0.2)]
    expect_eq([c for c in ids20 if marked[c]], want, "exploratory calls by the id rule")

    # Each exploratory call went to the agent available longest: replay who took what.
    # Score-routed calls are not checked against the queue: the agent that just ended a call
    # may not be available again yet, which changes who is top, not who waited longest.
    for cid, agent in calls0 + calls20:
        if marked[cid]:
            expect_eq(agent, order[0], "agent of exploratory call %s (queue %s)" % (cid, order))
        elif agent != 7301:
            # 7301 was still finishing its previous call: the best available took it.
            expect(agent in agents, "unknown agent %d for %s" % (agent, cid))
        order.remove(agent)
        order.append(agent)

    # Outcomes for some calls of each group, then the lift report counts them.
    explo = [c for c in ids20 if marked[c]]
    auction = [c for c in ids20 if not marked[c]]
    surveys_e = [2, 3, 4][:len(explo)]
    surveys_a = [5, 5, 4, 4]
    for cid, v in zip(explo, surveys_e):
        outcome(st, cid, "--survey", str(v))
    for cid, v in zip(auction, surveys_a):
        outcome(st, cid, "--survey", str(v), "--resolved", "yes")
    lift = st.ringbid_json("report", "lift", "sc-x20", "--days", "1", "--json")
    la, le = lift["auction"], lift["exploration"]
    expect_eq((la["calls"], le["calls"]), (len(auction), len(explo)),
              "calls per route in the lift report (auction, exploration)")
    expect_eq((la["surveyed"], le["surveyed"]), (len(surveys_a), len(surveys_e)),
              "surveyed calls per route")
    expect(close(la["satisfaction"], sum(surveys_a) / len(surveys_a)),
           "auction satisfaction: %r", la)
    if surveys_e:
        expect(close(le["satisfaction"], sum(surveys_e) / len(surveys_e)),
               "exploration satisfaction: %r", le)
    expect(close(la["resolved_share"], len(surveys_a) / len(auction), 0.0002),
           "auction resolved share: %r", la)
    expect(close(le["resolved_share"], 0, 0.0002), "exploration resolved share: %r", le)
    expect(close(la["avg_handle_s"], 0, 0.05), "auction handle time: %r", la)
    lift0 = st.ringbid_json("report", "lift", "sc-x0", "--days", "1", "--json")
    expect_eq((lift0["auction"]["calls"], lift0["exploration"]["calls"]), (n0, 0),
              "lift report of the program without exploration")
    text = st.ringbid_ok("report", "lift", "sc-x20", "--days", "1").stdout
    expect("exploration" in text and "lift" in text, "`report lift` text: %s", text)


# -- bad input --------------------------------------------------------------------------------

def test_bad_input_refused_and_nothing_changes(st):
    tag = "sc-bad"
    st.add_program(tag, skills=[tag], ring_timeout=5, wrap_up=0)
    st.add_agent(7401, skills=[tag])
    st.start_agent(7401, "--auto-answer", LONG)
    cid = take(st, tag, 7401, st.unique("bad"))

    def stored(call_id):
        return st.psql("SELECT kind, reviewer, value FROM billing.outcomes WHERE call_id = '%s' "
                       "ORDER BY kind, reviewer" % call_id)

    # Refused by the CLI before anything is sent, each with its reason.
    for args, reason in ((("--survey", "0"), "survey score must be 1-5"),
                         (("--survey", "6"), "survey score must be 1-5"),
                         (("--qa", "101", "--reviewer", "sup-1"), "QA score must be 0-100")):
        r = st.ringbid("outcome", cid, *args)
        expect_eq(r.returncode, 2, "exit code of `outcome %s`" % " ".join(args))
        expect(reason in r.stderr, "`outcome %s` should say %r: %r", " ".join(args), reason,
               r.stderr)
    # The broker is the authority: the same values sent past the CLI are refused as well.
    for kind, value, reviewer, word in ((OUTCOME_SURVEY, 0, "", "survey"),
                                        (OUTCOME_SURVEY, 6, "", "survey"),
                                        (OUTCOME_QA, 101, "sup-1", "qa")):
        res = st.probe(st.url(1), "req", "--send-hex",
                       record_outcomes_hex(st.token, cid, kind, value, reviewer),
                       "--kind", "call", timeout_ms=8000)
        expect_eq(res.get("error_code"), RB_EINVAL,
                  "broker's answer to %s %d (%s)" % (word, value, res))
        expect(word in str(res.get("error_message", "")).lower(),
               "the broker's reason should name the %s: %s", word, res)
    expect_eq(stored(cid), [], "outcomes stored after refusals")

    # Unknown call: billing says so, through the broker.
    r = st.ringbid("outcome", "no-such-call", "--survey", "4")
    expect_eq(r.returncode, 1, "exit code of an outcome for an unknown call")
    expect("unknown call no-such-call" in r.stderr, "reason for an unknown call: %r", r.stderr)
    expect_eq(stored("no-such-call"), [], "outcomes stored for an unknown call")

    # Once stored, a different value for the same outcome is refused; the stored one stays.
    wait_billed(st, [cid], 1)
    outcome(st, cid, "--survey", "4")
    r = st.ringbid("outcome", cid, "--survey", "2")
    expect_eq(r.returncode, 1, "exit code of a conflicting survey")
    expect("already recorded" in r.stderr, "reason for a conflicting survey: %r", r.stderr)
    expect_eq(stored(cid), [["survey", "", "4"]], "outcomes after a conflicting survey")

    # Program settings.
    def program_row_pg():
        return st.psql("SELECT w_satisfaction, w_resolution, w_conversion, w_answer_rate, "
                       "w_handle_time, explore_share, min_calls, provisional_score, sells "
                       "FROM roster.programs WHERE id = '%s'" % tag)
    before = program_row_pg()
    for args, reason in (
            (("--weights", "0.3,0.25,0.15,0.15,0.05"),
             "weights must add up to 1 (they add up to 0.900)"),
            (("--weights", "0.3,0.25,0.15,0.15"), "five weights"),
            (("--explore-share", "1.5"), "--explore-share must be from 0 to 1"),
            (("--min-calls", "0"), "--min-calls must be a whole number from 1 to 100000"),
            (("--provisional-score", "101"), "--provisional-score must be from 0 to 100"),
            (("--sells", "maybe"), "--sells must be yes or no")):
        r = st.ringbid("program", "set", tag, *args)
        expect_eq(r.returncode, 2, "exit code of `program set %s`" % " ".join(args))
        expect(reason in r.stderr, "`program set %s` should say %r: %r", " ".join(args),
               reason, r.stderr)
    expect_eq(program_row_pg(), before, "program after refused settings")
    r = st.ringbid("program", "add", "sc-bad2", "--name", "Bad", "--weights",
                   "0.3,0.25,0.15,0.15,0.05")
    expect_eq(r.returncode, 2, "exit code of `program add` with weights adding to 0.9")
    expect_eq(st.psql("SELECT count(*) FROM roster.programs WHERE id = 'sc-bad2'"), [["0"]],
              "program added with bad weights")
    # The database holds the rule too, whatever writes to it.
    try:
        st.psql("UPDATE roster.programs SET w_handle_time = 0.05 WHERE id = '%s'" % tag)
        raise AssertionError("unreachable")
    except TestFailure as e:
        expect("programs_weights_sum" in str(e), "the CHECK should refuse: %s", e)
    except AssertionError:
        raise TestFailure("PostgreSQL accepted weights adding up to 0.9")
    expect_eq(program_row_pg(), before, "program after a refused UPDATE")

    # The good values go through, and the agent's score can be pinned and unpinned.
    st.ringbid_ok("program", "set", tag, "--weights", "0.4,0.2,0.1,0.2,0.1", "--sells", "yes",
                  "--min-calls", "5", "--provisional-score", "median", "--explore-share",
                  "0.125")
    p = st.ringbid_json("program", "show", tag, "--json")
    expect(close(p["w_satisfaction"], 0.4) and close(p["w_handle_time"], 0.1)
           and p["sells"] is True and p["min_calls"] == 5 and p["provisional_score"] is None
           and close(p["explore_share"], 0.125), "program after good settings: %r", p)
    st.ringbid_ok("agent", "set", "7401", "--score", "88.5")
    a = st.ringbid_json("agent", "show", "7401", "--json")
    expect(a["score_pinned"] is True and close(a["score"], 88.5), "pinned agent: %r", a)
    recompute(st)
    expect(close(st.ringbid_json("agent", "show", "7401", "--json")["score"], 88.5),
           "a recompute changed a pinned score")
    expect(scores(st, 7401)["pinned"] is True, "`agent score` does not say pinned")
    st.ringbid_ok("agent", "set", "7401", "--score", "auto")
    expect(st.ringbid_json("agent", "show", "7401", "--json")["score_pinned"] is False,
           "--score auto did not unpin")
    r = st.ringbid("agent", "set", "7401", "--score", "high")
    expect_eq(r.returncode, 2, "exit code of --score high")


if __name__ == "__main__":
    run_tests(globals(), "scores")
