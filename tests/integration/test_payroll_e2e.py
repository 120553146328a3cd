#!/usr/bin/env python3
"""Payroll end to end: calls placed through the real broker and answered by real agent clients
are paid exactly as the pay rules say, to the cent.

The broker is the source of truth: each call's answer and end times come from `ringbid
call-info`, talk seconds are floor((ended - answered) / 1 s), and the expected pay lines are
computed here with Decimal (half away from zero) for one per-second program and one
per-started-minute program, then compared with `ringbid payroll export current --format csv`
(quantities and amounts) and `ringbid payroll explain` (exactly the calls behind each agent).
"""

import decimal
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AGENT, ROOT, TestFailure, call_talk_s, expect, expect_eq,  # noqa: E402
                     pay_oracle, pay_rows, run_tests, wait_until)

D = decimal.Decimal
PROGRAMS = {
    "pe-sec": {"rate": D("0.2500"), "rounding": "per_second", "commission": D("0")},
    "pe-min": {"rate": D("0.3100"), "rounding": "per_started_minute",
               "commission": D("1.7500")},
}
AGENTS = {  # id: programs it takes
    7201: ("pe-sec",),
    7202: ("pe-sec", "pe-min"),
    7203: ("pe-min",),
    7204: ("pe-sec", "pe-min"),
}
SALE_EVERY = 2  # agents that support it mark every second call they end themselves a sale
# Each agent ends a call itself after this many seconds unless the caller hangs up first (a
# sale can only be marked by the agent ending the call).
AGENT_TALK = {7201: "60", 7202: "2.7", 7203: "1.3", 7204: "3.6"}
# Talk times: under a second (0 paid seconds), whole-second edges, and up to 5 s.
TALKS = (0.5, 0.9, 1.0, 1.2, 2.0, 2.5, 3.0, 3.7, 4.0, 4.6, 5.0)


def _agent_supports_sales():
    r = subprocess.run([AGENT, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=10)
    return "--sale-every" in (r.stdout + r.stderr)


def _call_ids_in(obj):
    """Every call id named anywhere in an explain answer (call_id or cdr_id keys)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("call_id", "cdr_id") and isinstance(v, str):
                found.append(v)
            else:
                found += _call_ids_in(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _call_ids_in(v)
    return found


def test_payroll_export_matches_broker(st):
    sales = _agent_supports_sales()
    print("# sale flags: %s" % ("--sale-every %d" % SALE_EVERY if sales else "not supported"),
          flush=True)
    for pid, p in PROGRAMS.items():
        st.add_program(pid, skills=(pid,), ring_timeout=5, wrap_up=0, max_wait=120,
                       rate=str(p["rate"]), rounding=p["rounding"],
                       commission=str(p["commission"]))
    for aid, skills in AGENTS.items():
        st.add_agent(aid, skills=skills, score=60 + aid % 5)
    agents = {}
    for aid in AGENTS:
        flags = ["--auto-answer", AGENT_TALK[aid]]
        flags += ["--sale-every", str(SALE_EVERY)] if sales else []
        agents[aid] = st.start_agent(aid, *flags)
    st.wait_agent_count("AVAILABLE", len(AGENTS), timeout=20)

    seed = int(os.environ.get("RINGBID_TEST_SEED", str(int(time.time()))))
    print("# seed %d (RINGBID_TEST_SEED)" % seed, flush=True)
    rng = random.Random(seed)
    placed = {}
    # Rounds of four calls at once (as many as agents), each with its own talk time.
    for rnd in range(7):
        procs = {}
        for k in range(len(AGENTS)):
            program = "pe-sec" if (rnd + k) % 2 == 0 else "pe-min"
            cid = st.unique("pe%d-%d" % (rnd, k))
            talk = rng.choice(TALKS)
            procs[cid] = (program, st.place_call(program, background=True, id=cid, talk=talk,
                                                 timeout=60))
        for cid, (program, p) in procs.items():
            r = p.result(90)
            expect(r["_rc"] == 0, "call %s was not connected: %r", cid, r)
            placed[cid] = program

    st.wait_calls_settled(30)
    infos = {}
    for cid in placed:
        infos[cid] = wait_until(
            lambda cid=cid: (lambda i: i if i.get("state") == "ended" else None)(
                st.call_info(cid)), 20, "call %s to end" % cid, 0.3)
        expect_eq(infos[cid].get("disposition"), "completed", "disposition of call %s" % cid)
    wait_until(lambda: st.status().get("cdr_outbox") == 0, 30, "cdr_outbox 0", 0.3)
    stored = {r[0]: r[1] == "t" for r in st.psql(
        "SELECT call_id, sale FROM billing.cdrs WHERE call_id IN (%s)"
        % ",".join("'%s'" % c for c in placed))}
    expect_eq(sorted(stored), sorted(placed), "calls with a CDR stored")
    calls = []
    for cid, i in infos.items():
        # Sale flags: from the broker when call-info shows them, else from the CDRs, checked
        # below against what the agent clients did.
        sale = bool(i["sale"]) if "sale" in i else stored[cid]
        expect_eq(stored[cid], sale, "sale flag of call %s in its CDR" % cid)
        calls.append({"call_id": cid, "agent_id": int(i["agent_id"]), "program": placed[cid],
                      "talk_s": call_talk_s(i), "sale": sale})
    if sales:
        for aid, a in agents.items():
            ended = [e for e in a.find("call_ended")
                     if e.get("by") == "agent" and e.get("call_id") in placed]
            n = sum(1 for c in calls if c["agent_id"] == aid and c["sale"])
            expect(n in (len(ended) // SALE_EVERY, -(-len(ended) // SALE_EVERY)),
                   "agent %d ended %d calls itself with --sale-every %d but %d are sales",
                   aid, len(ended), SALE_EVERY, n)
        expect(any(c["sale"] for c in calls), "no call was marked a sale by --sale-every %d",
               SALE_EVERY)

    want = pay_oracle(calls, PROGRAMS)
    got = pay_rows(st.payroll_export("current"), AGENTS)
    print("# %d calls (%d under a second of talk), %d pay lines" % (
        len(calls), sum(1 for c in calls if c["talk_s"] == 0), len(want)), flush=True)
    expect_eq(got, want, "payroll export lines (agent, code, rate, quantity, amount) vs the "
              "broker's calls")

    # explain names exactly the calls each agent was paid for.
    for aid in AGENTS:
        r = st.ringbid_ok("payroll", "explain", aid, "current", "--json")
        try:
            ex = json.loads(r.stdout)
        except ValueError:
            raise TestFailure("`ringbid payroll explain %d current --json` printed no JSON: %r"
                              % (aid, r.stdout[-300:]))
        named = _call_ids_in(ex)
        mine = sorted(c["call_id"] for c in calls if c["agent_id"] == aid)
        expect_eq(sorted(set(named)), mine, "calls in `ringbid payroll explain %d current`" % aid)


if __name__ == "__main__":
    run_tests(globals(), "payroll-e2e")
