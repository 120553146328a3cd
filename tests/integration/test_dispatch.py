#!/usr/bin/env python3
"""Dispatch end to end: real agents' clients, real calls, the auction's rule and the call life cycle.

Every test makes its own program that requires a skill only its own agents have, so agents of
one test can never take calls of another, and stops its clients before the next test starts.
"""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import expect, expect_eq, run_tests, wait_until  # noqa: E402

LONG = "60"  # --auto-answer talk time for agents whose calls the caller ends (--talk)


def setup(st, tag, agents, **program):
    """Program `tag` requiring skill `tag`; agents given as (id, score) or (id, score, skills)."""
    st.add_program(tag, skills=[tag], **program)
    for spec in agents:
        aid, score = spec[0], spec[1]
        skills = spec[2] if len(spec) > 2 else [tag]
        st.add_agent(aid, skills=skills, score=score)


def decided(d, agent_id):
    return int(d.get("agent_id", 0)) == agent_id


def close(a, b, eps=0.01):
    return a is not None and abs(float(a) - float(b)) < eps


def check_call(res, agent_id, what, disposition="completed"):
    expect_eq(res.get("_rc"), 0, "%s: exit code of `ringbid call` (%s)" % (what, res))
    expect_eq(int(res.get("agent_id") or 0), agent_id, "%s: agent_id" % what)
    if disposition is not None:
        expect_eq(res.get("disposition"), disposition, "%s: disposition" % what)


def offered_calls(a, after=0):
    return [e.get("call_id") for e in a.find("offer", after=after)]


def wait_available_again(a, call_id, timeout=10.0):
    """After a call of this agent ended, waits until it is AVAILABLE again."""
    ended = a.wait_event("call_ended", lambda e: e.get("call_id") == call_id, timeout)
    a.wait_state("AVAILABLE", timeout, after=ended["_i"])


def test_highest_score_wins(st):
    tag = "score"
    setup(st, tag, [(101, 90), (102, 70), (103, 50), (104, 99, ["other-skill"]), (105, 95)],
          ring_timeout=5, wrap_up=0)
    a = {i: st.start_agent(i, "--auto-answer", LONG) for i in (101, 102, 103, 104, 105)}
    m = a[105].mark()
    a[105].send("pause")
    a[105].wait_state("NOT_READY", after=m)
    st.wait_agent_count("AVAILABLE", 4)

    c1 = st.unique("score1")
    res = st.place_call(tag, id=c1, talk=0.5)
    check_call(res, 101, "first call")
    expect_eq(int(res.get("offers") or 0), 1, "first call: offers")
    a[101].wait_event("offer", lambda e: e.get("call_id") == c1)
    ex = st.explain(c1)
    ds = ex.get("decisions") or []
    expect_eq(len(ds), 1, "first call: number of decisions")
    d = ds[0]
    expect(decided(d, 101), "decision winner should be 101: %s", d)
    expect(close(d.get("score"), 90), "winner score should be 90: %s", d)
    expect_eq(int(d.get("runner_up_id") or 0), 102, "runner-up of the first call")
    expect(close(d.get("runner_up_score"), 70), "runner-up score should be 70: %s", d)
    # 104 lacks the skill and 105 is paused: three eligible agents.
    expect_eq(int(d.get("eligible") or 0), 3, "eligible agents for the first call")
    wait_available_again(a[101], c1)

    # The top agent busy on a long call: the next call goes to the second best.
    c2, c3 = st.unique("score2"), st.unique("score3")
    busy = st.place_call(tag, background=True, id=c2, talk=6)
    a[101].wait_event("call_connected", lambda e: e.get("call_id") == c2, 15)
    res3 = st.place_call(tag, id=c3, talk=0.5)
    check_call(res3, 102, "call while 101 is busy")
    a[102].wait_event("offer", lambda e: e.get("call_id") == c3)
    d3 = st.explain(c3)["decisions"][0]
    expect(decided(d3, 102) and close(d3.get("score"), 70), "decision for c3: %s", d3)
    expect_eq(int(d3.get("runner_up_id") or 0), 103, "runner-up of c3")
    expect_eq(int(d3.get("eligible") or 0), 2, "eligible agents while 101 is busy")
    check_call(busy.result(), 101, "long call")

    for i in (103, 104, 105):
        expect(not a[i].find("offer"), "agent %d must not have been offered a call: %s",
               i, a[i].summary())
    expect(not a[101].find("offer", lambda e: e.get("call_id") == c3),
           "busy agent 101 was offered c3")


def test_tie_goes_to_longest_available(st):
    tag = "tie"
    setup(st, tag, [(201, 80), (202, 80), (203, 80)], ring_timeout=5, wrap_up=0)
    # Ready in the order 203, 201, 202: the highest id has waited longest, so neither
    # "lowest id first" nor "newest first" gives the expected order.
    a = {}
    for i in (203, 201, 202):
        a[i] = st.start_agent(i, "--auto-answer", LONG)
        time.sleep(0.3)
    st.wait_agent_count("AVAILABLE", 3)
    order = []
    for n, want in enumerate((203, 201, 202, 203)):
        cid = st.unique("tie%d" % n)
        res = st.place_call(tag, id=cid, talk=0.3)
        check_call(res, want, "tie call %d" % n)
        d = st.explain(cid)["decisions"][0]
        expect(close(d.get("score"), 80) and close(d.get("runner_up_score"), 80),
               "tie decision scores: %s", d)
        if n == 0:
            expect_eq(int(d.get("eligible") or 0), 3, "eligible agents in a three-way tie")
            expect("longest" in str(d.get("reason", "")).lower(),
                   "reason should name the longest-available tie break: %s", d)
            expect_eq(int(d.get("runner_up_id") or 0), 201, "runner-up in the tie")
        wait_available_again(a[want], cid)
        order.append(want)


def test_decline_goes_to_next_best(st):
    tag = "decline"
    setup(st, tag, [(301, 90), (302, 70)], ring_timeout=5, wrap_up=0)
    a301 = st.start_agent(301, "--auto-answer", LONG, "--decline")
    a302 = st.start_agent(302, "--auto-answer", LONG)
    st.wait_agent_count("AVAILABLE", 2)
    cid = st.unique("dec")
    res = st.place_call(tag, id=cid, talk=0.5)
    check_call(res, 302, "declined call")
    expect_eq(int(res.get("offers") or 0), 2, "offers of the declined call")
    # A decline re-queues at once, not after the 5 s ring timeout.
    expect(int(res.get("wait_ms") or 0) < 4000, "a decline took the ring timeout: %s", res)
    a301.wait_event("offer", lambda e: e.get("call_id") == cid)
    a301.wait_event("declined", lambda e: e.get("call_id") == cid)
    a302.wait_event("call_connected", lambda e: e.get("call_id") == cid)
    ex = st.explain(cid)
    ds = ex.get("decisions") or []
    expect_eq([int(d.get("agent_id", 0)) for d in ds], [301, 302], "decision winners")
    expect_eq(int(ds[0].get("eligible") or 0), 2, "eligible for the first offer")
    expect_eq(int(ds[0].get("runner_up_id") or 0), 302, "runner-up for the first offer")
    expect_eq(int(ds[1].get("eligible") or 0), 1, "eligible once 301 declined")
    expect_eq(int(ds[1].get("runner_up_id") or 0), 0, "no runner-up once 301 declined")
    expect_eq([int(x) for x in ex.get("excluded") or []], [301], "excluded agents")


def test_unanswered_offer_moves_on_and_silent_agent_pauses(st):
    tag = "silent"
    setup(st, tag, [(401, 90), (402, 70)], ring_timeout=1, wrap_up=0)
    a401 = st.start_agent(401, "--auto-answer", LONG, "--ignore-offers")
    a402 = st.start_agent(402, "--auto-answer", LONG)
    st.wait_agent_count("AVAILABLE", 2)

    c1 = st.unique("miss1")
    res = st.place_call(tag, id=c1, talk=0.3)
    check_call(res, 402, "first unanswered call")
    expect_eq(int(res.get("offers") or 0), 2, "offers of the first unanswered call")
    expect(int(res.get("wait_ms") or 0) >= 900,
           "the call moved on before the 1 s ring timeout: %s", res)
    a401.wait_event("offer", lambda e: e.get("call_id") == c1)
    a401.wait_event("offer_withdrawn", lambda e: e.get("call_id") == c1)
    expect(401 in [int(x) for x in st.explain(c1).get("excluded") or []],
           "401 should be excluded from %s" % c1)
    # One miss is not enough to pause the agent.
    expect(not a401.find("state", lambda e: e.get("state") == "NOT_READY"),
           "agent paused after one miss: %s", a401.summary())
    wait_available_again(a402, c1)
    wait_until(lambda: a401.state() == "AVAILABLE", 5, "401 AVAILABLE after one miss")

    m = a401.mark()
    c2 = st.unique("miss2")
    res = st.place_call(tag, id=c2, talk=0.3)
    check_call(res, 402, "second unanswered call")
    a401.wait_event("offer", lambda e: e.get("call_id") == c2)
    a401.wait_state("NOT_READY", 5, after=m)
    wait_available_again(a402, c2)

    m = a401.mark()
    c3 = st.unique("miss3")
    res = st.place_call(tag, id=c3, talk=0.3)
    check_call(res, 402, "call after the silent agent paused")
    expect_eq(int(res.get("offers") or 0), 1, "offers once the silent agent is paused")
    expect(not a401.find("offer", after=m), "paused agent 401 got an offer: %s",
           a401.summary(m))


def test_call_waits_until_an_agent_is_ready(st):
    tag = "wait"
    setup(st, tag, [(501, 60)], ring_timeout=5, wrap_up=0)
    a = st.start_agent(501, "--auto-answer", LONG, "--no-ready")
    cid = st.unique("wait")
    call = st.place_call(tag, background=True, id=cid, talk=0.3, timeout=30)
    wait_until(lambda: st.status().get("calls_waiting") == 1, 10, "calls_waiting == 1")
    time.sleep(2.0)  # the call has now waited at least 2 s
    expect(not a.find("offer"), "a NOT_READY agent got an offer: %s", a.summary())
    a.send("ready")
    res = call.result()
    check_call(res, 501, "waiting call")
    expect(int(res.get("wait_ms") or 0) >= 2000,
           "wait_ms %s is shorter than the 2 s the call provably waited", res.get("wait_ms"))


def test_higher_priority_served_first(st):
    tag = "prio"
    setup(st, tag, [(601, 60)], ring_timeout=5, wrap_up=0)
    a = st.start_agent(601, "--auto-answer", LONG, "--no-ready")
    low, high = st.unique("prio-low"), st.unique("prio-high")
    c_low = st.place_call(tag, background=True, id=low, talk=0.3, priority=0, timeout=40)
    wait_until(lambda: st.status().get("calls_waiting") == 1, 10, "the low-priority call waiting")
    time.sleep(0.3)
    c_high = st.place_call(tag, background=True, id=high, talk=0.3, priority=5, timeout=40)
    wait_until(lambda: st.status().get("calls_waiting") == 2, 10, "both calls waiting")
    a.send("ready")
    r_high, r_low = c_high.result(), c_low.result()
    check_call(r_high, 601, "high-priority call")
    check_call(r_low, 601, "low-priority call")
    expect_eq(offered_calls(a)[:2], [high, low], "order of offers")


def test_abandoned_call_is_never_offered(st):
    tag = "abandon"
    setup(st, tag, [(701, 60)], ring_timeout=5, wrap_up=0)
    a = st.start_agent(701, "--auto-answer", LONG, "--no-ready")
    before = st.status()
    cid = st.unique("ab")
    res = st.place_call(tag, id=cid, abandon_after=1, timeout=20)
    expect_eq(res.get("_rc"), 4, "exit code of an abandoned call (%s)" % res)
    expect_eq(res.get("disposition"), "abandoned", "disposition")
    expect_eq(int(res.get("agent_id") or 0), 0, "agent of an abandoned call")
    after = st.status()
    expect_eq(after.get("calls_abandoned"), before.get("calls_abandoned", 0) + 1,
              "calls_abandoned after one abandon")
    expect_eq(after.get("calls_offered"), before.get("calls_offered", 0) + 1, "calls_offered")
    info = st.call_info(cid)
    expect_eq((info.get("state"), info.get("disposition")), ("ended", "abandoned"), "call-info")
    m = a.mark()
    a.send("ready")
    a.wait_state("AVAILABLE", after=m)
    a.expect_no_event("offer", 2.0, after=m, why="its only call was abandoned")
    expect_eq(st.status().get("calls_waiting"), 0, "calls_waiting after the abandon")


def test_overflow_after_max_wait(st):
    tag = "overflow"
    setup(st, tag, [], ring_timeout=5, wrap_up=0, max_wait=2)
    before = st.status()
    cid = st.unique("of")
    t0 = time.monotonic()
    res = st.place_call(tag, id=cid, timeout=20)
    took = time.monotonic() - t0
    expect_eq(res.get("_rc"), 4, "exit code of an overflowed call (%s)" % res)
    expect_eq(res.get("disposition"), "overflow", "disposition")
    expect(int(res.get("wait_ms") or 0) >= 1900, "overflowed before max wait: %s", res)
    expect(took < 10, "overflow took %.1f s for a 2 s maximum wait" % took)
    after = st.status()
    expect_eq(after.get("calls_overflow"), before.get("calls_overflow", 0) + 1,
              "calls_overflow after one overflow")
    expect_eq(after.get("calls_abandoned"), before.get("calls_abandoned"),
              "calls_abandoned unchanged by an overflow")


def test_agent_killed_while_ringing(st):
    tag = "lost"
    setup(st, tag, [(801, 90), (802, 70)], ring_timeout=10, wrap_up=0)
    a801 = st.start_agent(801, "--auto-answer", LONG, "--ignore-offers")
    a802 = st.start_agent(802, "--auto-answer", LONG)
    st.wait_agent_count("AVAILABLE", 2)
    cid = st.unique("lost")
    call = st.place_call(tag, background=True, id=cid, talk=0.3, timeout=40)
    a801.wait_event("offer", lambda e: e.get("call_id") == cid, 10)
    killed = time.monotonic()
    a801.kill(signal.SIGKILL)
    res = call.result()
    check_call(res, 802, "call whose agent died while it rang")
    a802.wait_event("call_connected", lambda e: e.get("call_id") == cid)
    connected = a802.find("call_connected", lambda e: e.get("call_id") == cid)[0]["_t"]
    # Loss of the client is noticed well before the 10 s ring timeout would have run out.
    expect(connected - killed < 8.0, "re-offer took %.1f s after the agent died"
           % (connected - killed))
    ex = st.explain(cid)
    expect_eq([int(d.get("agent_id", 0)) for d in ex.get("decisions") or []], [801, 802],
              "offers of the call")
    expect(801 in [int(x) for x in ex.get("excluded") or []], "801 should be excluded: %s", ex)


def check_one_call_at_a_time(a):
    """From one agent's events: never offered or connected while it holds another call, while
    another offer is still ringing at it or while an accepted call is connecting; and an offered
    call is shown connected only after the agent accepted it."""
    busy = None        # connected call
    ringing = None     # offered call not yet answered, declined or withdrawn
    connecting = None  # accepted call the broker has not confirmed yet
    offered = set()
    state = None
    for e in a.find_all():
        kind, cid = e.get("event"), e.get("call_id")
        if kind in ("login", "resumed", "state"):
            state = e.get("state", state)
        elif kind == "offer":
            expect(busy is None, "agent %d offered %s while holding %s", a.agent_id, cid, busy)
            expect(ringing is None or ringing == cid, "agent %d offered %s while %s rang",
                   a.agent_id, cid, ringing)
            expect(connecting is None, "agent %d offered %s while %s was connecting",
                   a.agent_id, cid, connecting)
            expect(state != "ON_CALL", "agent %d offered %s while ON_CALL", a.agent_id, cid)
            ringing = cid
            offered.add(cid)
        elif kind == "accepted":
            ringing, connecting = None, cid
        elif kind in ("declined", "offer_withdrawn"):
            ringing = None
            if connecting == cid:
                connecting = None  # ended before it connected: never shown connected
        elif kind == "call_connected":
            expect(busy is None or busy == cid, "agent %d connected to %s while holding %s",
                   a.agent_id, cid, busy)
            expect(cid not in offered or connecting == cid,
                   "agent %d shown %s connected without an accept waiting for it",
                   a.agent_id, cid)
            busy, ringing, connecting = cid, None, None
        elif kind == "call_ended":
            busy = None


def test_no_agent_ever_holds_two_calls(st):
    tag = "crowd"
    ids = (901, 902, 903)
    setup(st, tag, [(901, 60), (902, 70), (903, 80)], ring_timeout=5, wrap_up=0)
    agents = {i: st.start_agent(i, "--auto-answer", "0.4") for i in ids}
    st.wait_agent_count("AVAILABLE", 3)
    cids = [st.unique("crowd%d" % n) for n in range(12)]
    procs = [st.place_call(tag, background=True, id=c, timeout=60) for c in cids]
    results = {c: p.result(120) for c, p in zip(cids, procs)}
    for c, r in results.items():
        expect_eq(r.get("_rc"), 0, "exit code of %s (%s)" % (c, r))
        expect(int(r.get("agent_id") or 0) in ids, "%s got agent %r", c, r.get("agent_id"))
    # Every call ends (the agents hang up after 0.4 s of talk).
    for c, r in results.items():
        agents[int(r["agent_id"])].wait_event("call_ended", lambda e, c=c: e.get("call_id") == c,
                                              20)
    holders = {c: [] for c in cids}
    for i, a in agents.items():
        for e in a.find("call_connected"):
            if e.get("call_id") in holders:
                holders[e["call_id"]].append(i)
        check_one_call_at_a_time(a)
    for c in cids:
        expect_eq(holders[c], [int(results[c]["agent_id"])], "agents connected to %s" % c)
        info = st.call_info(c)
        expect_eq((info.get("state"), info.get("disposition")), ("ended", "completed"),
                  "call-info of %s" % c)
    st.wait_calls_settled()


def test_agent_free_only_once_the_broker_has_the_hang_up(st):
    """An agent's hang-up goes to the broker and its availability to the auction on separate
    links: the auction must not see the agent free before the broker has ended the call, or it
    matches the agent a call the broker has to refuse. The broker is stopped (SIGSTOP) while the
    agent hangs up, so the hang-up cannot be read; the auction's count of available agents shows
    what it was told."""
    tag = "hangwait"
    setup(st, tag, [(1101, 80)], ring_timeout=5, wrap_up=0)
    agent = st.start_agent(1101, "--auto-answer", "1.0")
    st.wait_agent_count("AVAILABLE", 1)
    broker = st.service_pid("broker")
    expect(broker is not None, "no broker pid")
    unconfirmed0 = st.metric("presence", "ringbid_hangups_unconfirmed_total") or 0

    def one_call(n, stopped_s):
        cid = st.unique("hangwait%d" % n)
        call = st.place_call(tag, background=True, id=cid, talk=60, timeout=90)
        agent.wait_event("call_connected", lambda e: e.get("call_id") == cid, 15)
        on_call = st.metric("auction", "ringbid_auction_agents_available")
        os.kill(broker, signal.SIGSTOP)
        try:
            ended = agent.wait_event("call_ended", lambda e: e.get("call_id") == cid, 10)
            expect_eq(ended.get("by"), "agent", "who ended %s" % cid)
            agent.wait_state("AVAILABLE", 5, after=ended["_i"])
            t_free = time.monotonic()
            if stopped_s is None:
                # Free at presence, but the broker has not read the hang-up: not yet free
                # for the auction.
                time.sleep(0.8)
                expect_eq(st.metric("auction", "ringbid_auction_agents_available"), on_call,
                          "agents available at the auction while the broker has not read "
                          "the hang-up of %s" % cid)
            else:
                # The broker does not answer: after 2 s the auction hears it anyway.
                wait_until(lambda: st.metric("auction", "ringbid_auction_agents_available")
                           == on_call + 1, stopped_s, "the agent available at the auction "
                           "with the broker stopped")
                waited = time.monotonic() - t_free
                expect(waited >= 1.5, "the auction heard the agent free %.2f s after the "
                       "hang-up, before presence stopped waiting for the broker", waited)
        finally:
            os.kill(broker, signal.SIGCONT)
        wait_until(lambda: st.metric("auction", "ringbid_auction_agents_available")
                   == on_call + 1, 10, "the agent available at the auction again")
        res = call.result(60)
        check_call(res, 1101, "call %s" % cid)

    one_call(1, None)
    expect_eq((st.metric("presence", "ringbid_hangups_unconfirmed_total") or 0) - unconfirmed0,
              0, "hang-ups presence stopped waiting for while the broker answers")
    one_call(2, 6)
    expect_eq((st.metric("presence", "ringbid_hangups_unconfirmed_total") or 0) - unconfirmed0,
              1, "hang-ups presence stopped waiting for")
    st.wait_calls_settled()


def test_auction_killed_under_load(st):
    tag = "restart"
    ids = (1001, 1002, 1003, 1004)
    setup(st, tag, [(i, 50 + i % 10) for i in ids], ring_timeout=5, wrap_up=0)
    agents = {i: st.start_agent(i, "--auto-answer", "0.3") for i in ids}
    st.wait_agent_count("AVAILABLE", 4)
    before = st.status()
    procs = {}
    problems = []

    def restart():
        try:
            time.sleep(2.5)
            st.kill_service("auction", signal.SIGKILL)
            time.sleep(1.5)
            st.up_again()
        except Exception as e:  # reported below, from the main thread
            problems.append(e)

    t = threading.Thread(target=restart)
    t.start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 8.0:
        cid = st.unique("load%d" % n)
        procs[cid] = st.place_call(tag, background=True, id=cid, timeout=60)
        n += 1
        time.sleep(0.3)
    t.join(150)
    expect(not problems, "restarting the auction failed: %s",
           "; ".join(str(p) for p in problems))
    expect(st.service_alive("auction"), "the auction is not running after `ringbid up`")
    results = {c: p.result(120) for c, p in procs.items()}
    lost = [c for c, r in results.items()
            if r.get("_rc") != 0 or int(r.get("agent_id") or 0) not in ids]
    expect(not lost, "%d of %d calls got no agent: %s", len(lost), len(results),
           [(c, results[c].get("state"), results[c].get("_rc")) for c in lost][:5])
    for c, r in results.items():
        agents[int(r["agent_id"])].wait_event("call_ended", lambda e, c=c: e.get("call_id") == c,
                                              20)
    holders = {c: [] for c in results}
    for i, a in agents.items():
        for e in a.find("call_connected"):
            if e.get("call_id") in holders:
                holders[e["call_id"]].append(i)
        check_one_call_at_a_time(a)
    doubled = {c: h for c, h in holders.items() if len(h) != 1}
    expect(not doubled, "calls not connected exactly once: %s", doubled)
    after = st.wait_calls_settled(30)
    expect_eq(after.get("calls_completed", 0) - before.get("calls_completed", 0), len(results),
              "calls completed during the auction restart")


if __name__ == "__main__":
    run_tests(globals(), "dispatch")
