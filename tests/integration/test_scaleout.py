#!/usr/bin/env python3
"""Presence scaled out: a stack with two presence instances, agents on both. Calls go to the best
agent whichever instance holds it; an offer reaches only its agent's instance, and a burst of
offers to one instance arrives whole (the broker has a socket per instance); when one instance
is killed its agents leave the auction and calls go to the other's, and when it comes back its
agents take calls again. No call is ever connected to two agents. The broker, killed while
calls ring and talk at both instances, comes back knowing each call's instance (journaled with
the call): every call ends normally, none at two agents.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, ITEST, expect, expect_eq, no_stack, pick_port_base,  # noqa: E402
                     run_tests, wait_until)

LONG = "60"  # --auto-answer talk time for agents whose calls the caller ends (--talk)
PORT_PRESENCE_1 = 11  # instance 1 of a stack listens for agents on base+10+1 (docs/cli.md)
HTTP_PRESENCE_1 = 86  # and answers HTTP on base+85+1


def setup(st, tag, agents, **program):
    st.add_program(tag, skills=[tag], **program)
    for aid, score in agents:
        st.add_agent(aid, skills=[tag], score=score)


def on_instance(st, n):
    """The flags that connect a client to presence instance n."""
    return ["--url", st.url(5 if n == 0 else 10 + n)]


def check_call(res, agent_id, what):
    expect_eq(res.get("_rc"), 0, "%s: exit code of `ringbid call` (%s)" % (what, res))
    expect_eq(int(res.get("agent_id") or 0), agent_id, "%s: agent_id" % what)
    expect_eq(res.get("disposition"), "completed", "%s: disposition" % what)


def offered(a, call_id):
    return a.find("offer", lambda e: e.get("call_id") == call_id)


def connected_to(agents, call_id):
    """The agents whose clients were connected to call_id."""
    return [a.agent_id for a in agents
            if a.find("call_connected", lambda e: e.get("call_id") == call_id)]


def test_two_instances_up(st):
    env = st.env_file()
    expect_eq(env.get("RINGBID_PRESENCE_INSTANCES"), "2", "instances in $RINGBID_HOME/env")
    urls = (env.get("RINGBID_PRESENCE_URLS") or "").split(",")
    expect_eq(urls, [st.url(5), st.url(10 + 1)], "RINGBID_PRESENCE_URLS")
    brokers = (env.get("RINGBID_BROKER_PRESENCE_URLS") or "").split(",")
    expect_eq(brokers, [st.url(3), st.url(60 + 1)],
              "RINGBID_BROKER_PRESENCE_URLS: the broker's socket for each instance")
    expect(st.service_alive("presence-1"), "presence instance 1 is not running")
    expect_eq(st.http_get(HTTP_PRESENCE_1, "/readyz")[0], 200, "/readyz of presence-1")
    _, metrics = st.http_get(82, "/metrics")
    expect("ringbid_auction_presence_connections 2" in metrics,
           "the auction should have two presence connections:\n%s",
           "\n".join(l for l in metrics.splitlines() if "presence" in l))


def test_best_agent_whichever_instance(st):
    tag = "spread"
    setup(st, tag, [(9301, 90), (9302, 70)], ring_timeout=5, wrap_up=0)
    # The best agent on instance 1, the second best on instance 0.
    a1 = st.start_agent(9301, "--auto-answer", LONG, *on_instance(st, 1))
    a0 = st.start_agent(9302, "--auto-answer", LONG, *on_instance(st, 0))
    # Agents by state are the sum of both instances' figures.
    st.wait_agent_count("AVAILABLE", 2)

    c1 = st.unique("spread1")
    first = st.place_call(tag, id=c1, talk=8, background=True)
    a1.wait_event("call_connected", lambda e: e.get("call_id") == c1, timeout=15)
    c2 = st.unique("spread2")
    res2 = st.place_call(tag, id=c2, talk=0.5, timeout=20)
    check_call(res2, 9302, "second call, while the best agent talks")
    res1 = first.result(30)
    check_call(res1, 9301, "first call")
    # Each offer reached only its agent's instance, and so only its agent's client.
    expect_eq(len(offered(a1, c1)), 1, "offers of the first call at 9301")
    expect_eq(offered(a0, c1), [], "offers of the first call at 9302 (instance 0)")
    expect_eq(offered(a1, c2), [], "offers of the second call at 9301 (instance 1)")
    ex = st.explain(c1)
    d = (ex.get("decisions") or [{}])[0]
    expect_eq(int(d.get("agent_id") or 0), 9301, "decision of the first call")
    expect_eq(int(d.get("runner_up_id") or 0), 9302, "runner-up across instances")
    for cid in (c1, c2):
        expect(len(connected_to([a0, a1], cid)) == 1, "call %s connected to %s", cid,
               connected_to([a0, a1], cid))


def test_instance_killed_and_back(st):
    tag = "failover"
    setup(st, tag, [(9311, 95), (9312, 60)], ring_timeout=5, wrap_up=0)
    a1 = st.start_agent(9311, "--auto-answer", LONG, *on_instance(st, 1))
    a0 = st.start_agent(9312, "--auto-answer", LONG, *on_instance(st, 0))
    st.wait_agent_count("AVAILABLE", 2)

    # A call in progress at instance 1's agent when the instance dies.
    c1 = st.unique("fo-talk")
    talking = st.place_call(tag, id=c1, talk=12, background=True)
    a1.wait_event("call_connected", lambda e: e.get("call_id") == c1, timeout=15)
    st.kill_service("presence-1", signal.SIGKILL)
    # The auction lets instance 1's agents go; only instance 0's figures count now.
    st.wait_agent_count("AVAILABLE", 1, timeout=10)
    _, metrics = st.http_get(82, "/metrics")
    expect("ringbid_auction_presence_connections 1" in metrics,
           "the auction should have one presence connection left")

    # New calls go to the agent on the surviving instance.
    for i in range(2):
        cid = st.unique("fo-other%d" % i)
        res = st.place_call(tag, id=cid, talk=0.5, timeout=20)
        check_call(res, 9312, "call %d while instance 1 is down" % i)
        expect_eq(offered(a1, cid), [], "offer of %s at the lost instance's agent" % cid)
        a0.wait_event("call_ended", lambda e, c=cid: e.get("call_id") == c)

    # The voice leg is not the data link: the connected call runs to its end.
    res = talking.result(40)
    check_call(res, 9311, "the call in progress at the lost instance")

    # Instance 1 comes back; its CallSync has only its own agents' calls; the client resumes
    # there and its agent is matched again.
    mark = a1.mark()
    st.up_again()
    wait_until(lambda: st.http_get(HTTP_PRESENCE_1, "/readyz")[0] == 200, 20,
               "/readyz of presence-1 after the restart")
    a1.wait_state("AVAILABLE", timeout=30, after=mark)
    st.wait_agent_count("AVAILABLE", 2, timeout=15)
    c3 = st.unique("fo-back")
    res = st.place_call(tag, id=c3, talk=0.5, timeout=20)
    check_call(res, 9311, "call once instance 1 is back")
    expect_eq(offered(a0, c3), [], "offer of the call after the return at instance 0")
    for cid in [c1, c3]:
        expect(len(connected_to([a0, a1], cid)) <= 1, "call %s connected to %s", cid,
               connected_to([a0, a1], cid))


def test_no_call_at_two_agents_under_churn(st):
    tag = "churn"
    agents = [(9321, 80), (9322, 75), (9323, 70), (9324, 65)]
    setup(st, tag, agents, ring_timeout=3, wrap_up=0)
    clients = []
    for k, (aid, _) in enumerate(agents):
        clients.append(st.start_agent(aid, "--auto-answer", "0.2", *on_instance(st, k % 2)))
    st.wait_agent_count("AVAILABLE", 4)
    calls = [st.place_call(tag, id=st.unique("churn%d" % i), talk=1, background=True)
             for i in range(12)]
    results = [c.result(90) for c in calls]
    for i, res in enumerate(results):
        expect_eq(res.get("_rc"), 0, "churn call %d (%s)" % (i, res))
        cid = res.get("call_id")
        who = connected_to(clients, cid)
        expect_eq(len(who), 1, "agents connected to %s" % cid)
        expect_eq(who[0], int(res.get("agent_id") or 0), "the connected agent of %s" % cid)
    # No agent ever held two calls at once: its connections and ends alternate.
    for c in clients:
        open_call = None
        for e in c.find_all():
            if e.get("event") == "call_connected":
                expect(open_call is None, "agent %d connected to %s while on %s", c.agent_id,
                       e.get("call_id"), open_call)
                open_call = e.get("call_id")
            elif e.get("event") == "call_ended" and e.get("call_id") == open_call:
                open_call = None


def test_offer_burst_reaches_one_instance(st):
    """A burst of offers to one instance all arrive: each call is offered once, to one agent,
    and connected. (A socket that dropped offers would leave calls to the broker's backstop,
    ring timeout + 5 s later, and offer them a second time.)"""
    tag = "burst"
    agents = [(9351 + k, 80 - k) for k in range(10)]
    setup(st, tag, agents, ring_timeout=20, wrap_up=0)
    clients = [st.start_agent(aid, "--auto-answer", "0.5", *on_instance(st, 1))
               for aid, _ in agents]
    st.wait_agent_count("AVAILABLE", 10)
    calls = [st.place_call(tag, id=st.unique("burst%d" % i), talk=1, background=True)
             for i in range(10)]
    results = [c.result(90) for c in calls]
    for i, res in enumerate(results):
        expect_eq(res.get("_rc"), 0, "burst call %d (%s)" % (i, res))
        expect_eq(res.get("disposition"), "completed", "burst call %d disposition" % i)
        cid = res.get("call_id")
        offers = sum(len(offered(c, cid)) for c in clients)
        expect_eq(offers, 1, "offers made for %s" % cid)
        expect_eq(len(connected_to(clients, cid)), 1, "agents connected to %s" % cid)


@no_stack
def test_broker_refuses_wrong_presence_addresses():
    """With several presence instances the broker needs one address per instance: a list that
    is missing, short, long or has an empty entry stops it at start with a clear error."""
    base = pick_port_base("scaleout-urls")
    cases = {
        None: "must list the broker's address for each of the 2 presence instances",
        "tcp://127.0.0.1:%d" % (base + 3): "exactly 2 non-empty URLs",
        "tcp://127.0.0.1:%d," % (base + 3): "exactly 2 non-empty URLs",
        "tcp://127.0.0.1:%d,,tcp://127.0.0.1:%d" % (base + 3, base + 61):
            "exactly 2 non-empty URLs",
        ",".join("tcp://127.0.0.1:%d" % (base + p) for p in (3, 61, 62)):
            "exactly 2 non-empty URLs",
    }
    for urls, why in cases.items():
        with tempfile.TemporaryDirectory(dir=ITEST) as home:
            env = dict(os.environ, RINGBID_HOME=home, RINGBID_PORT_BASE=str(base),
                       RINGBID_PRESENCE_INSTANCES="2", RINGBID_DATABASE_URL="",
                       PGHOST=os.path.join(home, "no-db"))
            env.pop("RINGBID_BROKER_PRESENCE_URLS", None)
            if urls is not None:
                env["RINGBID_BROKER_PRESENCE_URLS"] = urls
            res = subprocess.run([os.path.join(BIN, "ringbid-broker")], env=env,
                                 capture_output=True, text=True, timeout=30)
            expect(res.returncode != 0, "the broker started with RINGBID_BROKER_PRESENCE_URLS=%r",
                   urls)
            expect(why in res.stderr, "no clear error for %r:\n%s", urls, res.stderr[-600:])


def test_broker_killed_with_calls_at_both_instances(st):
    tag = "brkill"
    talkers = [(9331, 90), (9332, 88)]  # answer at once; the caller ends each call
    ringers = [(9333, 60), (9334, 58)]  # let offers ring; the test accepts them
    setup(st, tag, talkers + ringers, ring_timeout=40, wrap_up=0)
    t = [st.start_agent(aid, "--auto-answer", LONG, *on_instance(st, k))
         for k, (aid, _) in enumerate(talkers)]
    st.wait_agent_count("AVAILABLE", 2)
    talk_calls = {}
    for i in range(2):
        cid = st.unique("brk-talk%d" % i)
        talk_calls[cid] = st.place_call(tag, id=cid, talk=25, background=True)
    for cid in talk_calls:
        wait_until(lambda c=cid: connected_to(t, c), 15, "%s connected to a talker" % cid)
    # Both talkers busy: the next calls ring at the ringers, one on each instance.
    r = [st.start_agent(aid, "--ignore-offers", *on_instance(st, k))
         for k, (aid, _) in enumerate(ringers)]
    st.wait_agent_count("AVAILABLE", 2)
    ring_calls = {}
    for i in range(2):
        cid = st.unique("brk-ring%d" % i)
        ring_calls[cid] = st.place_call(tag, id=cid, talk=2, background=True)
    offers = {}
    for cid in ring_calls:
        def offered_at(c=cid):
            return [a for a in r if offered(a, c)]
        who = wait_until(offered_at, 15, "an offer of %s at a ringer" % cid)
        offers[cid] = who[0]
    expect_eq(sorted(a.agent_id for a in offers.values()), [9333, 9334],
              "the ringing agents (one per instance)")
    talking = {c: connected_to(t, c)[0] for c in talk_calls}
    expect_eq(sorted(talking.values()), [9331, 9332], "the talking agents (one per instance)")
    marks = {a.agent_id: a.mark() for a in t + r}

    st.kill_service("broker", signal.SIGKILL)
    st.up_again()
    wait_until(lambda: st.http_get(81, "/readyz")[0] == 200, 30, "/readyz of the broker")
    # Each instance got its own calls back: the offers still ring, the calls still talk.
    for cid, a in offers.items():
        info = wait_until(lambda c=cid: st.call_info(c), 10, "call-info of %s" % cid)
        expect_eq((info.get("state"), int(info.get("agent_id") or 0)), ("offered", a.agent_id),
                  "%s after the broker's restart" % cid)
    for cid, aid in talking.items():
        info = st.call_info(cid)
        expect_eq((info.get("state"), int(info.get("agent_id") or 0)), ("connected", aid),
                  "%s after the broker's restart" % cid)
    time.sleep(1.5)  # the CallSyncs have been answered by now
    for a in t + r:
        expect(not a.find("offer_withdrawn", after=marks[a.agent_id]),
               "agent %d: an offer was withdrawn by the restart: %s", a.agent_id,
               a.summary(marks[a.agent_id]))
        expect(not a.find("call_ended", after=marks[a.agent_id]),
               "agent %d: a call was ended by the restart: %s", a.agent_id,
               a.summary(marks[a.agent_id]))

    # The ringing offers are accepted at the restarted broker and run their course.
    for cid, a in offers.items():
        a.send("accept")
        a.wait_event("call_connected", lambda e, c=cid: e.get("call_id") == c, 10)
    for cid, a in offers.items():
        check_call(ring_calls[cid].result(40), a.agent_id, "ringing call %s" % cid)
    for cid, aid in talking.items():
        check_call(talk_calls[cid].result(60), aid, "talking call %s" % cid)
    everyone = t + r
    for cid in list(talk_calls) + list(ring_calls):
        expect_eq(len(connected_to(everyone, cid)), 1, "agents connected to %s" % cid)
        info = st.call_info(cid)
        expect_eq(int(info.get("offers") or 0), 1, "offers of %s" % cid)
    st.wait_calls_settled(20)


if __name__ == "__main__":
    run_tests(globals(), "scaleout", stack_env={"RINGBID_PRESENCE_INSTANCES": "2"})
