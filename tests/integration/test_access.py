#!/usr/bin/env python3
"""Who may see money: billing's payroll download by token role, agents' own earnings, and the
agent's sale/resolved marks reaching the CDR."""

import hashlib
from decimal import ROUND_HALF_UP, Decimal
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import PORT_PRESENCE_AGENTS, HTTP_PORT, call_talk_s, expect, expect_eq, run_tests, wait_until  # noqa: E402


def _get(st, path, token=None, raw_auth=None):
    url = "http://127.0.0.1:%d%s" % (st.port(HTTP_PORT["billing"]), path)
    req = urllib.request.Request(url)
    if raw_auth is not None:
        req.add_header("Authorization", raw_auth)
    elif token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _token(st, role, name="t"):
    tok = st.ringbid_ok("token", "create", "--role", role, "--name", name).stdout.strip()
    expect(len(tok) == 64, "token create printed %r", tok)
    return tok


def _period(st):
    return st.psql("SELECT billing.period_start_of(now(), 'UTC')")[0][0]


def test_roles(st):
    period = _period(st)
    path = "/payroll/export?period=%s&format=csv" % period
    s, h, _ = _get(st, path)
    expect_eq(s, 401, "status without Authorization")
    expect("Bearer" in h.get("WWW-Authenticate", ""), "WWW-Authenticate: %r", h)
    expect_eq(_get(st, path, raw_auth="Basic abc")[0], 401, "status with Basic")
    expect_eq(_get(st, path, token="garbage")[0], 401, "status with a garbage token")
    expect_eq(_get(st, path, token=secrets.token_hex(32))[0], 401, "status, unknown token")

    sup = _token(st, "supervisor", "sup")
    expect_eq(_get(st, path, token=sup)[0], 403, "status with a supervisor token")

    # A real agent session: log in through presence as the agent's client does.
    st.add_agent(7301)
    st.env["RINGBID_AGENT_SECRET_FILE"] = st.secret_file("s3cret-pass")
    try:
        login = st.probe(st.url(PORT_PRESENCE_AGENTS), "pair", "--login", 7301)
    finally:
        del st.env["RINGBID_AGENT_SECRET_FILE"]
    agent_tok = login.get("session_token", "")
    expect(len(agent_tok) == 64, "a session token from presence: %r", login)
    # Presence records the session for billing right after it answers the login (one
    # asynchronous INSERT): until that commits, billing does not know the token yet.
    wait_until(lambda: _get(st, path, token=agent_tok)[0] != 401, 5,
               "billing to know the agent's session token")
    expect_eq(_get(st, path, token=agent_tok)[0], 403, "status with an agent token")

    fin = _token(st, "finance", "fin")
    s, h, body = _get(st, path, token=fin)
    expect_eq(s, 200, "status with a finance token")
    expect("ringbid-payroll-%s-csv" % period in h.get("Content-Disposition", ""),
           "Content-Disposition: %r", h)
    expect(h.get("X-Ringbid-Provisional") in ("true", "false"), "provisional header %r", h)
    path_out = os.path.join(st.home, "access-export.csv")
    st.ringbid_ok("payroll", "export", period, "--format", "csv", "--output", path_out)
    with open(path_out) as f:
        cli = f.read()
    expect_eq(body, cli, "the download against `ringbid payroll export`")

    expect_eq(_get(st, "/payroll/export?period=2026-13-01&format=csv", token=fin)[0], 400,
              "status with a bad period")
    expect_eq(_get(st, "/payroll/export?period=%s&format=pdf" % period, token=fin)[0], 400,
              "status with a bad format")

    text = st.ringbid_ok("token", "list").stdout
    fin_id = [ln.split()[0] for ln in text.splitlines() if ln.strip().endswith("fin")][0]
    st.ringbid_ok("token", "revoke", fin_id)
    expect_eq(_get(st, path, token=fin)[0], 401, "status with a revoked token")


def test_sale_flag_and_earnings(st):
    # A generous rate so a few seconds of talk make whole cents.
    st.add_program("acc", skills=("acc",), ring_timeout=5, wrap_up=0, rate="6.0000")
    st.add_agent(7311, skills=("acc",), score=90)
    st.add_agent(7312, skills=("acc",), score=50)
    a = st.start_agent(7311, "--json", "--auto-answer", "3", "--sale-every", "1")
    b = st.start_agent(7312, "--json", "--auto-answer", "2")
    res = st.place_call("acc", skills=["acc"], talk=8, id="acc-sale-1")
    expect(res.get("agent_id") == 7311, "first call answered by 7311: %r", res)
    wait_until(lambda: st.psql("SELECT sale FROM billing.cdrs WHERE cdr_id = 'acc-sale-1'")
               == [["t"]], 20, "the CDR stored with sale = true")
    a.send("pause")
    a.wait_state("NOT_READY", 10)
    res = st.place_call("acc", skills=["acc"], talk=8, id="acc-b-1")
    expect(res.get("agent_id") == 7312, "second call answered by 7312: %r", res)
    wait_until(lambda: st.psql("SELECT count(*) FROM billing.cdrs WHERE cdr_id = 'acc-b-1'")
               == [["1"]], 20, "the second CDR stored")

    # Each agent sees exactly its own call: its talk seconds and its pay at 6.00 a minute.
    for agent, call_id in ((a, "acc-sale-1"), (b, "acc-b-1")):
        talk = call_talk_s(st.call_info(call_id))
        expect(talk >= 1, "talk seconds of %s: %r", call_id, talk)
        mark = agent.mark()
        agent.send("earnings")
        ev = agent.wait_event("earnings", after=mark, timeout=10)
        expect_eq(ev["today_calls"], 1, "calls today for %d" % agent.agent_id)
        expect_eq(ev["today_talk_s"], talk, "talk seconds today for %d" % agent.agent_id)
        expect_eq(ev["period_calls"], 1, "calls this period for %d" % agent.agent_id)
        expected = (Decimal(talk) * Decimal("6.0000") / 60).quantize(Decimal("0.01"),
                                                                      rounding=ROUND_HALF_UP)
        expect_eq(Decimal(ev["today_amount"]), expected, "earned today by %d" % agent.agent_id)
    a.stop()
    b.stop()


if __name__ == "__main__":
    run_tests(globals(), "access")
