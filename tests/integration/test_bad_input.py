#!/usr/bin/env python3
"""Bad input on every socket: garbage, truncated protobufs, oversized messages, wrong tokens, and
wrong agent secrets. Each must get a clear refusal and change nothing; no service may fall over.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HTTP_PORT, PORT_AUCTION_PRESENCE, PORT_BILLING_CDRS, PORT_BROKER_AUCTION,  # noqa: E402
                     PORT_BROKER_CALLS, PORT_BROKER_PRESENCE, PORT_PRESENCE_AGENTS, RB_EAUTH,
                     RB_EDECODE, RB_ESLOWDOWN, SERVICES, expect, expect_eq,
                     run_tests, wait_until)

AGENT_LIMIT = 64 * 1024           # call API and agent link (docs/delivery.md)
SERVICE_LIMIT = 4 * 1024 * 1024   # service links and the CDR link
COUNTERS = ("calls_offered", "calls_answered", "calls_abandoned", "calls_overflow",
            "calls_completed", "calls_waiting", "calls_offering", "calls_connected")


def counters(st):
    s = st.status()
    return {k: s.get(k) for k in COUNTERS}


def refused(res, kind, code, what):
    """The probe sent its message and got an ErrorReply of kind with code."""
    expect_eq(res.get("_rc"), 0, "%s: probe exit code (%s)" % (what, res))
    expect(res.get("sent", 0) > 0, "%s: nothing sent: %s", what, res)
    expect_eq(res.get("reply"), "bytes", "%s: reply (%s)" % (what, res))
    expect_eq(res.get("decoded"), kind, "%s: reply type (%s)" % (what, res))
    expect_eq(res.get("error_code"), code, "%s: error code (%s)" % (what, res))
    expect(res.get("error_message"), "%s: the ErrorReply has no message: %s", what, res)


def dropped(res, what):
    """An oversized message: no reply, the connection was closed by the service."""
    expect_eq(res.get("_rc"), 0, "%s: probe exit code (%s)" % (what, res))
    expect_eq(res.get("reply"), "none", "%s: an oversized message got a reply (%s)" % (what, res))
    expect(res.get("closed"), "%s: the connection stayed open after an oversized message: %s",
           what, res)


def probe_socket(st, offset, proto, kind, limit):
    """Garbage, a truncated message, a wrong token and an oversized message at one socket."""
    url = st.url(offset)
    what = "%s %s" % (kind, url)
    refused(st.probe(url, proto, "--garbage", 300, "--kind", kind), kind, RB_EDECODE,
            "garbage to " + what)
    refused(st.probe(url, proto, "--truncated", kind), kind, RB_EDECODE, "truncated " + what)
    refused(st.probe(url, proto, "--wrong-token", kind), kind, RB_EAUTH, "wrong token to " + what)
    dropped(st.probe(url, proto, "--oversize", limit + 64 * 1024, "--kind", kind, timeout_ms=3000),
            "oversized " + what)


def normal_call_works(st):
    """A real agent takes a real call: the stack still does its job."""
    if not getattr(st, "normal_ready", False):
        st.add_program("normal", skills=["normal"], ring_timeout=5, wrap_up=0)
        st.add_agent(9100, skills=["normal"], score=50)
        st.normal_ready = True
    a = st.start_agent(9100, "--auto-answer", "0.2")
    try:
        res = st.place_call("normal", timeout=20)
        expect_eq(res.get("_rc"), 0, "exit code of a normal call (%s)" % res)
        expect_eq(int(res.get("agent_id") or 0), 9100, "agent of a normal call")
        a.wait_event("call_ended", lambda e: e.get("call_id") == res.get("call_id"))
    finally:
        st.stop_agents([a])


def all_well(st, before):
    for name in SERVICES:
        expect(st.service_alive(name), "%s is not running any more:\n%s", name,
               st.log_tail(name))
        expect_eq(st.healthz(name), 200, "/healthz of %s" % name)
    expect_eq(counters(st), before, "call counters after bad input")
    normal_call_works(st)


def test_call_api(st):
    before = counters(st)
    url = st.url(PORT_BROKER_CALLS)
    # The probe's own control: the right token gets an answer with no error.
    ok = st.probe(url, "req", "--valid", "call")
    expect_eq((ok.get("decoded"), ok.get("error_code")), ("call", 0),
              "a valid StatusQuery (%s)" % ok)
    probe_socket(st, PORT_BROKER_CALLS, "req", "call", AGENT_LIMIT)
    refused(st.probe(url, "req", "--valid", "call", "--token", ""), "call", RB_EAUTH,
            "empty token to the call API")
    all_well(st, before)


def test_billing_cdr_link(st):
    before = counters(st)
    probe_socket(st, PORT_BILLING_CDRS, "req", "cdr", SERVICE_LIMIT)
    ok = st.probe(st.url(PORT_BILLING_CDRS), "req", "--valid", "cdr")
    expect_eq(ok.get("decoded"), "cdr", "reply to an empty CDR batch (%s)" % ok)
    all_well(st, before)


def test_agent_link(st):
    before = counters(st)
    probe_socket(st, PORT_PRESENCE_AGENTS, "pair", "agent", AGENT_LIMIT)
    all_well(st, before)


def test_service_links_while_peer_stopped(st):
    before = counters(st)
    # broker <- auction: only one auction may be connected, so the real one steps aside.
    st.kill_service("auction", signal.SIGTERM)
    probe_socket(st, PORT_BROKER_AUCTION, "pair", "envelope", SERVICE_LIMIT)
    expect(st.service_alive("broker"), "the broker died on bad input from its auction link")
    st.up_again()
    # broker <- presence and auction <- presence, with presence stopped.
    st.kill_service("presence", signal.SIGTERM)
    probe_socket(st, PORT_BROKER_PRESENCE, "pair", "envelope", SERVICE_LIMIT)
    probe_socket(st, PORT_AUCTION_PRESENCE, "pair", "envelope", SERVICE_LIMIT)
    st.up_again()
    for name in SERVICES:
        wait_until(lambda n=name: st.http_get(HTTP_PORT[n], "/readyz")[0] == 200,
                   20, "/readyz of %s after the restart" % name)
    all_well(st, before)


def first_login_error(a, timeout=15.0):
    return a.wait_event("error", timeout=timeout)


def test_wrong_secret_refused(st):
    st.add_agent(9001, skills=["normal"], score=50, secret="the-right-secret")
    before = st.status()
    t0 = time.monotonic()
    a = st.start_agent(9001, "--auto-answer", "1", secret="not-the-secret", wait=None)
    rc = a.wait_exit(20)
    expect_eq(rc, 3, "exit code of a client with a wrong secret")
    err = a.find("error")
    expect(err, "no error event before exit: %s", a.summary())
    expect_eq((err[0].get("code"), err[0].get("name")), (RB_EAUTH, "RB_EAUTH"), "login error")
    expect(not a.find("login"), "a wrong secret logged in: %s", a.summary())
    expect(time.monotonic() - t0 < 15, "refusal took too long")
    time.sleep(1.5)  # presence reports agents by state every second
    after = st.status()
    for state in ("NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP"):
        expect_eq(st.agent_count(state, after), st.agent_count(state, before),
                  "agents %s after a refused login" % state)


def test_repeated_wrong_secrets_slow_down(st):
    st.add_agent(9002, skills=["normal"], score=50, secret="the-right-secret")
    names = []
    slow_at = None
    for attempt in range(1, 7):
        t0 = time.monotonic()
        a = st.start_agent(9002, "--auto-answer", "1", secret="guess-%d" % attempt, wait=None)
        err = first_login_error(a)
        took = time.monotonic() - t0
        names.append(err.get("name"))
        if err.get("name") == "RB_ESLOWDOWN":
            expect_eq(err.get("code"), RB_ESLOWDOWN, "slow-down error code")
            slow_at = attempt
            expect(took < 5, "the slow-down answer took %.1f s" % took)
            st.stop_agents([a])
            break
        expect_eq(err.get("name"), "RB_EAUTH", "error of wrong guess %d" % attempt)
        expect_eq(a.wait_exit(15), 3, "exit code after wrong guess %d" % attempt)
        st.stop_agents([a])
    expect(slow_at is not None and slow_at <= 4,
           "no RB_ESLOWDOWN after 3 failed logins in a row: errors %s", names)
    # The slow-down is a window, not a lock-out: the right secret gets in once it passes.
    good = st.start_agent(9002, "--auto-answer", "1", secret="the-right-secret", wait=None)
    good.wait_event("login", timeout=70)


if __name__ == "__main__":
    run_tests(globals(), "badinput")
