#!/usr/bin/env python3
"""Hostile agents on the agent link: other agents' offers and calls, forged, foreign, replayed and
expired session tokens, suspension, floods of wrong secrets and oversized messages.

Every refusal is checked twice: the ErrorReply the hostile client gets, and the state afterwards
(`ringbid status --json`, `ringbid call-info`, the agent's own status through the probe, the CDR
in billing). The hostile client is rb_probe --agent-script, fed one step at a time.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HTTP_PORT, PORT_PRESENCE_AGENTS, PROBE, RB_EAUTH, RB_EFORBIDDEN,  # noqa: E402
                     RB_ENOTFOUND, RB_ESLOWDOWN, RB_ESTATE, ROOT, SERVICES, TestFailure, expect,
                     expect_eq, run_tests, wait_until)

RIGHT = "s3cret-pass"     # the secret every agent of this file is added with
AGENT_LIMIT = 64 * 1024   # the agent link's message limit (docs/delivery.md)
SESSION_TTL_MS = 4000     # presence restarted with this for the expiry test


class Probe:
    """One rb_probe --agent-script process: steps go in on stdin, results and events come out."""

    def __init__(self, st, heartbeat_ms=1000, timeout_ms=3000):
        self.st = st
        self.lines = []
        self._cond = threading.Condition()
        self._eof = False
        cmd = [PROBE, "--url", st.url(PORT_PRESENCE_AGENTS), "--agent-script", "-",
               "--heartbeat-ms", str(heartbeat_ms), "--timeout-ms", str(timeout_ms)]
        self._err = open(os.path.join(st.home, "log", "probe-%d.log" % time.monotonic_ns()),
                         "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=st.env, cwd=ROOT, bufsize=0)
        self._steps = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            try:
                obj = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                obj = {"_raw": raw.decode("utf-8", "replace")}
            with self._cond:
                self.lines.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def step(self, op, timeout=30.0, **fields):
        """Runs one step; returns its result line."""
        fields["op"] = op
        self._steps += 1
        n = self._steps
        try:
            self.proc.stdin.write((json.dumps(fields) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise TestFailure("rb_probe is gone (%s); its output: %s" % (e, self.lines[-10:]))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for obj in self.lines:
                    if obj.get("step") == n:
                        expect("failure" not in obj or op in ("oversize", "garbage"),
                               "probe step %s failed: %s", fields, obj)
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise TestFailure("no result for probe step %s; output: %s"
                                      % (fields, self.lines[-10:]))
                self._cond.wait(min(left, 0.2))

    def events(self, conn=None, kind=None):
        with self._cond:
            return [o for o in self.lines if "event" in o and "step" not in o
                    and (conn is None or o.get("conn") == conn)
                    and (kind is None or o.get("event") == kind)]

    def login(self, agent, conn="main", secret=RIGHT, **kw):
        return self.step("login", conn=conn, agent=agent, secret=secret, **kw)

    def stop(self, timeout=5.0):
        """Ends the probe (its connections close): the harness calls this after each test."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()


def probe(st, **kw):
    """A probe the harness stops after the test, as it stops agents' clients."""
    p = Probe(st, **kw)
    st.agents.append(p)
    return p


def status_ok(res, what, state=None):
    expect_eq(res.get("reply"), "status", "%s: reply (%s)" % (what, res))
    if state is not None:
        expect_eq(res.get("state"), state, "%s: state" % what)
    return res


def refused(res, code, what):
    expect_eq(res.get("reply"), "error", "%s: reply (%s)" % (what, res))
    expect_eq(res.get("error_code"), code, "%s: error code (%s)" % (what, res))
    expect(res.get("error_message"), "%s: the ErrorReply has no text: %s", what, res)
    return res


def agents_by_state(st):
    return dict(st.status().get("agents") or {})


def settled_counts(st, want=None, timeout=6.0):
    """Agents by state once presence's per-second statistics have caught up (two equal reads
    in a row, or the wanted picture)."""
    last = [None]

    def same():
        now = agents_by_state(st)
        if want is not None:
            return now if all(now.get(k, 0) == v for k, v in want.items()) else None
        ok = now == last[0]
        last[0] = now
        return now if ok else None
    time.sleep(1.1)
    return wait_until(same, timeout, "agents by state %s" % (want or "to settle"), 0.6)


def services_alive(st):
    for name in SERVICES:
        expect(st.service_alive(name), "%s is not running:\n%s", name, st.log_tail(name))
        expect_eq(st.healthz(name), 200, "/healthz of %s" % name)


def setup_program(st, tag, agents, **program):
    if not getattr(st, "programs", None):
        st.programs = set()
    if tag not in st.programs:
        st.add_program(tag, skills=[tag], **program)
        st.programs.add(tag)
    for aid in agents:
        st.add_agent(aid, skills=[tag], score=50, secret=RIGHT)


# -- offers and calls of another agent ------------------------------------------------------------

def test_foreign_offer_and_call(st):
    setup_program(st, "foreign", (8101, 8102), ring_timeout=20, wrap_up=0)
    # B is a real client that rings but never answers by itself (the test answers for it);
    # A is the probe, logged in and NOT_READY, so no offer can ever be its own.
    b = st.start_agent(8102, "--ignore-offers", secret=RIGHT)
    p = probe(st)
    status_ok(p.login(8101), "A's login", "NOT_READY")
    st.wait_agent_count("AVAILABLE", 1)

    cid = st.unique("foreign")
    call = st.place_call("foreign", background=True, id=cid, talk=30)
    offer = b.wait_event("offer", lambda e: e.get("call_id") == cid, 15)
    oid = int(offer["offer_id"])
    expect_eq(st.call_info(cid).get("state"), "offered", "the call while B's offer rings")

    # A accepts B's offer, then declines it: both refused, nothing moves.
    refused(p.step("answer", offer_id=oid, accept=True), RB_ENOTFOUND, "A accepting B's offer")
    refused(p.step("answer", offer_id=oid, accept=False), RB_ENOTFOUND,
            "A declining B's offer")
    me = status_ok(p.step("heartbeat"), "A's status after", "NOT_READY")
    expect_eq((me.get("agent_id"), me.get("offer_id"), me.get("call_id")), (8101, 0, ""),
              "A's status after answering B's offer")
    info = st.call_info(cid)
    expect_eq((info.get("state"), int(info.get("agent_id") or 0), int(info.get("offers") or 0)),
              ("offered", 8102, 1), "the call after A's answers (state, agent, offers)")
    expect(not b.find("offer_withdrawn"), "B's offer was withdrawn: %s", b.summary())

    # B's offer still stands: B accepts it, and the broker connects it.
    b.accept(cid)
    wait_until(lambda: st.call_info(cid).get("state") == "connected", 10, "call connected")
    expect_eq(int(st.call_info(cid).get("agent_id") or 0), 8102, "agent of the connected call")

    # A ends B's call by its id: refused; the call stays connected to B.
    before = st.call_info(cid)
    refused(p.step("end_call", call_id=cid), RB_ENOTFOUND, "A ending B's call")
    refused(p.step("end_call", call_id=cid, sale=True, resolved=True), RB_ENOTFOUND,
            "A ending B's call with marks")
    time.sleep(0.5)
    after = st.call_info(cid)
    expect_eq((after.get("state"), int(after.get("agent_id") or 0), after.get("version")),
              ("connected", 8102, before.get("version")), "the call after A's hang-ups")
    status_ok(p.step("heartbeat"), "A's status after the hang-ups", "NOT_READY")
    expect(not b.find("call_ended"), "B's call ended: %s", b.summary())
    st.wait_agent_count("ON_CALL", 1, 5)

    # B ends it; the CDR names B.
    b.send("end")
    b.wait_event("call_ended", lambda e: e.get("call_id") == cid, 10)
    res = call.result(30)
    expect_eq((res.get("disposition"), int(res.get("agent_id") or 0)), ("completed", 8102),
              "the call's outcome")
    row = wait_until(lambda: st.psql("SELECT agent_id, sale FROM billing.cdrs WHERE cdr_id = '%s'"
                                     % cid), 20, "the CDR of %s" % cid)
    expect_eq(row, [["8102", "f"]], "the CDR's agent and sale mark")


# -- tokens ---------------------------------------------------------------------------------------

def test_accepted_offer_waits_for_the_broker(st):
    """An accept is answered RESERVED: the agent is connecting, and its client hears the call
    connected only from the CALL_EVENT_CONNECTED the broker's confirmation brings, after that
    answer. Once accepted, an offer cannot be declined, before or after it connects."""
    setup_program(st, "confirm", (8121,), ring_timeout=20, wrap_up=0)
    p = probe(st)
    status_ok(p.login(8121), "login", "NOT_READY")
    status_ok(p.step("set_state", state="AVAILABLE"), "ready", "AVAILABLE")
    st.wait_agent_count("AVAILABLE", 1)

    cid = st.unique("confirm")
    call = st.place_call("confirm", background=True, id=cid, talk=30)
    got = p.step("wait", event="offer", call_id=cid, timeout_ms=15000)
    expect(got.get("found"), "no offer of %s reached the agent: %s", cid, p.events())
    oid = int(got["event"]["offer_id"])

    acc = status_ok(p.step("answer", offer_id=oid, accept=True), "the accept", "RESERVED")
    expect_eq((acc.get("offer_id"), acc.get("call_id")), (oid, cid),
              "the accept's answer (offer, call)")
    refused(p.step("answer", offer_id=oid, accept=False), RB_ESTATE,
            "declining the accepted offer")
    got = p.step("wait", event="call_event", kind="connected", call_id=cid, timeout_ms=10000)
    expect(got.get("found"), "the call never showed connected: %s", p.events())
    expect_eq(got["event"].get("offer_id"), oid, "offer of the connected event")
    with p._cond:
        lines = list(p.lines)
    at_accept = next(i for i, o in enumerate(lines) if o.get("step") == acc.get("step"))
    shown = [i for i, o in enumerate(lines) if o.get("event") == "call_event"
             and o.get("kind") == "connected" and o.get("call_id") == cid]
    expect_eq(len(shown), 1, "connected events of %s" % cid)
    expect(shown[0] > at_accept, "the call showed connected before the accept was answered: %s",
           lines[-10:])
    info = st.call_info(cid)
    expect_eq((info.get("state"), int(info.get("agent_id") or 0)), ("connected", 8121),
              "the call once shown connected")

    status_ok(p.step("heartbeat"), "the agent once connected", "ON_CALL")
    refused(p.step("answer", offer_id=oid, accept=False), RB_ESTATE,
            "declining the offer of the connected call")
    status_ok(p.step("answer", offer_id=oid, accept=True), "accepting it again", "ON_CALL")
    status_ok(p.step("end_call", call_id=cid), "ending the call", "AVAILABLE")
    res = call.result(30)
    expect_eq((res.get("disposition"), int(res.get("agent_id") or 0)), ("completed", 8121),
              "the call's outcome")


def test_forged_foreign_and_replayed_tokens(st):
    setup_program(st, "tokens", (8201, 8202))
    p = probe(st)
    status_ok(p.login(8201, conn="a", **{"as": "A"}), "A's login", "NOT_READY")
    status_ok(p.step("set_state", conn="a", state="AVAILABLE"), "A ready", "AVAILABLE")
    status_ok(p.login(8202, conn="b", **{"as": "B"}), "B's login", "NOT_READY")
    before = settled_counts(st)

    # A forged token (64 random hex digits, never issued) on every request type.
    for op, extra in (("heartbeat", {}), ("set_state", {"state": "NOT_READY"}),
                      ("answer", {"offer_id": 1}), ("end_call", {"call_id": "c-any"}),
                      ("logout", {}), ("earnings", {}), ("resume", {"agent": 8201})):
        refused(p.step(op, conn="a", token="forged", **extra), RB_EAUTH, "forged token: " + op)
    refused(p.step("heartbeat", conn="a", token="none"), RB_EAUTH, "no token")
    refused(p.step("heartbeat", conn="a", token_hex="zz" * 32), RB_EAUTH, "a token not hex")
    # B's token sent as A (Resume names the agent): refused.
    refused(p.step("resume", conn="a", agent=8201, token="B"), RB_EAUTH,
            "resuming A with B's token")
    refused(p.step("resume", conn="b", agent=8202, token="A"), RB_EAUTH,
            "resuming B with A's token")
    status_ok(p.step("heartbeat", conn="a"), "A after the forged tokens", "AVAILABLE")
    status_ok(p.step("heartbeat", conn="b"), "B after the forged tokens", "NOT_READY")
    expect_eq(settled_counts(st), before, "agents by state after the forged tokens")

    # Logout ends the token: replaying it is refused, whatever the request, and changes nothing.
    status_ok(p.step("logout", conn="b"), "B's logout", "OFFLINE")
    for op, extra in (("heartbeat", {}), ("set_state", {"state": "AVAILABLE"}),
                      ("resume", {"agent": 8202}), ("logout", {})):
        refused(p.step(op, conn="b", token="B", **extra), RB_EAUTH, "B's token replayed: " + op)
    # ... also from a fresh connection, as a thief holding an old token would.
    refused(p.step("resume", conn="thief", agent=8202, token="B"), RB_EAUTH,
            "B's old token from another connection")
    refused(p.step("set_state", conn="thief", token="B", state="AVAILABLE"), RB_EAUTH,
            "B's old token from another connection: ready")
    settled_counts(st, {"AVAILABLE": before.get("AVAILABLE", 0),
                        "NOT_READY": before.get("NOT_READY", 0) - 1})
    status_ok(p.step("heartbeat", conn="a"), "A after B's replays", "AVAILABLE")

    # A new login gives a new token and revokes the one before it.
    status_ok(p.login(8201, conn="a2", **{"as": "A2"}), "A's second login")
    refused(p.step("heartbeat", conn="a2", token="A"), RB_EAUTH,
            "A's first token after a new login")
    expect(p.events(conn="a", kind="error"), "A's first connection was not told: %s",
           p.events(conn="a"))
    status_ok(p.step("heartbeat", conn="a2", token="A2"), "A's second token")


def test_token_of_another_agent_on_a_bound_connection(st):
    """A connection logged in as A that presents B's token must not start speaking for B."""
    setup_program(st, "bound", (8211, 8212))
    p = probe(st)
    status_ok(p.login(8211, conn="a", **{"as": "A"}), "A's login", "NOT_READY")
    status_ok(p.step("set_state", conn="a", state="AVAILABLE"), "A ready", "AVAILABLE")
    status_ok(p.login(8212, conn="b", **{"as": "B"}), "B's login", "NOT_READY")
    before = settled_counts(st)
    res = p.step("set_state", conn="a", token="B", state="AVAILABLE")
    after_a = p.step("heartbeat", conn="a")
    after_b = p.step("heartbeat", conn="b")
    taken = p.events(conn="b", kind="error")
    refused(res, RB_EAUTH, "A's connection using B's token (presence answered as agent %s, "
            "B's own connection got %s)" % (res.get("agent_id"), taken))
    status_ok(after_a, "A after using B's token", "AVAILABLE")
    status_ok(after_b, "B after A used its token", "NOT_READY")
    expect_eq(settled_counts(st), before, "agents by state")


def test_leaked_token_ends_with_a_new_login(st):
    """A stolen token works only until the real agent logs in again (docs/security.md)."""
    setup_program(st, "leak", (8221,))
    p = probe(st)
    status_ok(p.login(8221, conn="real", **{"as": "R"}), "the agent's login", "NOT_READY")
    status_ok(p.step("resume", conn="thief", agent=8221, token="R"), "the thief resumes")
    expect(p.step("wait", conn="real", event="error", timeout_ms=3000).get("found"),
           "the real connection was not told its session moved: %s", p.events(conn="real"))
    status_ok(p.login(8221, conn="real2", **{"as": "R2"}), "the agent logs in again")
    refused(p.step("heartbeat", conn="thief", token="R"), RB_EAUTH, "the leaked token")
    refused(p.step("resume", conn="thief", agent=8221, token="R"), RB_EAUTH,
            "the leaked token: resume")
    status_ok(p.step("heartbeat", conn="real2"), "the agent's new session", "NOT_READY")


# -- suspension -----------------------------------------------------------------------------------

def test_suspension_revokes_the_session(st):
    setup_program(st, "susp", (8301, 8302), ring_timeout=5, wrap_up=0)
    real = st.start_agent(8302, "--auto-answer", "30", secret=RIGHT)
    p = probe(st)
    status_ok(p.login(8301, **{"as": "S"}), "login", "NOT_READY")
    status_ok(p.step("set_state", state="AVAILABLE"), "ready", "AVAILABLE")
    st.wait_agent_count("AVAILABLE", 2)

    st.ringbid_ok("agent", "set", "8301", "--status", "suspended")
    st.ringbid_ok("agent", "set", "8302", "--status", "suspended")
    ev = p.step("wait", event="error", code=RB_EFORBIDDEN, timeout_ms=10000)
    expect(ev.get("found"), "the probe's client was not told of the suspension: %s",
           p.events())
    err = real.wait_event("error", lambda e: e.get("code") == RB_EFORBIDDEN, 10)
    expect("suspend" in err.get("message", ""), "the real client's error: %s", err)
    expect_eq(real.wait_exit(10), 3, "exit code of a suspended agent's client")

    refused(p.step("heartbeat", token="S"), RB_EAUTH, "the suspended agent's token")
    refused(p.step("set_state", token="S", state="AVAILABLE"), RB_EAUTH,
            "the suspended agent's token: ready")
    refused(p.step("resume", agent=8301, token="S"), RB_EAUTH, "the suspended agent's resume")
    refused(p.login(8301, conn="again"), RB_EFORBIDDEN, "a suspended agent logging in")
    settled_counts(st, {"AVAILABLE": 0, "RESERVED": 0})

    # No offers: a call for their skill waits, unoffered, until the caller gives up.
    res = st.place_call("susp", abandon_after=3, id=st.unique("susp"))
    expect_eq((res.get("disposition"), int(res.get("offers") or 0)), ("abandoned", 0),
              "a call for suspended agents")
    expect(not p.events(kind="offer"), "a suspended agent was offered a call: %s",
           p.events(kind="offer"))

    st.ringbid_ok("agent", "set", "8301", "--status", "active")
    st.ringbid_ok("agent", "set", "8302", "--status", "active")
    status_ok(wait_until(lambda: (lambda r: r if r.get("reply") == "status" else None)(
        p.login(8301, conn="back")), 10, "login after reactivation"), "login after reactivation")
    refused(p.step("heartbeat", conn="back", token="S"), RB_EAUTH,
            "the token from before the suspension, after reactivation")


# -- expiry ---------------------------------------------------------------------------------------

def restart_presence(st, extra):
    st.kill_service("presence", signal.SIGTERM)
    st.env.update(extra)
    try:
        st.up_again()
    finally:
        for k in extra:
            st.env.pop(k, None)
    wait_until(lambda: st.http_get(HTTP_PORT["presence"], "/readyz")[0] == 200, 20,
               "/readyz of presence")


def test_token_expires(st):
    setup_program(st, "expiry", (8401,))
    restart_presence(st, {"RINGBID_SESSION_TTL_MS": str(SESSION_TTL_MS)})
    try:
        p = probe(st)
        t0 = time.monotonic()
        res = wait_until(lambda: (lambda r: r if r.get("reply") == "status" else None)(
            p.login(8401, **{"as": "E"})), 10, "a login on the restarted presence")
        left_ms = (int(res["token_expires_us"]) - time.time() * 1e6) / 1000
        expect(0 < left_ms <= SESSION_TTL_MS + 1000, "token expiry %.0f ms ahead", left_ms)
        status_ok(p.step("set_state", state="AVAILABLE"), "ready", "AVAILABLE")
        status_ok(p.step("heartbeat", token="E"), "heartbeat while valid", "AVAILABLE")
        ev = p.step("wait", event="error", code=RB_EAUTH, timeout_ms=SESSION_TTL_MS + 5000)
        expect(ev.get("found"), "no 'session expired' push: %s", p.events())
        expect(time.monotonic() - t0 >= SESSION_TTL_MS / 1000.0 - 0.5,
               "the session ended before its time")
        refused(p.step("heartbeat", token="E"), RB_EAUTH, "an expired token")
        refused(p.step("resume", agent=8401, token="E"), RB_EAUTH, "resume with an expired token")
        refused(p.step("heartbeat", conn="other", token="E"), RB_EAUTH,
                "an expired token from another connection")
        settled_counts(st, {"AVAILABLE": 0})
    finally:
        st.stop_agents()
        restart_presence(st, {})


# -- login floods ---------------------------------------------------------------------------------

def test_wrong_secret_floods(st):
    setup_program(st, "flood", (8501, 8502, 8503, 8504))
    p = probe(st, timeout_ms=10000)
    before = settled_counts(st)

    # Same answer for an unknown agent and a wrong secret, and about the same time.
    unknown = refused(p.login(8599990, conn="u", secret="whatever"), RB_EAUTH, "unknown agent")
    wrong = refused(p.login(8504, conn="w", secret="not-it"), RB_EAUTH, "wrong secret")
    expect_eq(unknown.get("error_message"), wrong.get("error_message"),
              "refusal text for an unknown agent and for a wrong secret")
    fast, slow = sorted((unknown["elapsed_ms"], wrong["elapsed_ms"]))
    expect(slow < 4 * max(fast, 5) + 50, "an unknown agent took %d ms, a wrong secret %d ms",
           unknown["elapsed_ms"], wrong["elapsed_ms"])

    # Per agent: wrong secrets for 8501, each from a fresh connection, are slowed down.
    codes = []
    for i in range(6):
        r = p.login(8501, conn="pa%d" % i, secret="guess-%d" % i)
        codes.append(r.get("error_code"))
        expect_eq(r.get("reply"), "error", "wrong guess %d for 8501" % i)
    expect(codes[:3] == [RB_EAUTH] * 3 and set(codes[3:]) == {RB_ESLOWDOWN},
           "per-agent slowdown: errors %s", codes)
    # ... even the right secret waits out the window, and logs in afterwards.
    refused(p.login(8501, conn="pa-right"), RB_ESLOWDOWN, "the right secret inside the window")

    # Per source: one connection guessing across many agent ids (known and unknown).
    codes = []
    for i, aid in enumerate((8502, 8599991, 8599992, 8599993, 8599994, 8503)):
        r = p.login(aid, conn="spray", secret="spray-%d" % i)
        codes.append(r.get("error_code"))
    expect(codes[:3] == [RB_EAUTH] * 3 and set(codes[3:]) == {RB_ESLOWDOWN},
           "per-connection slowdown: errors %s", codes)
    # 8503 was only ever slowed down, never checked: from another connection it logs in.
    t0 = time.monotonic()
    status_ok(p.login(8503, conn="fresh"), "an untouched agent from another connection")
    expect(time.monotonic() - t0 < 3, "the untouched agent's login took %.1f s",
           time.monotonic() - t0)
    status_ok(p.login(8502, conn="fresh2"), "an agent guessed at once, from another connection")
    # The spraying connection is still slowed down, even with a right secret.
    refused(p.login(8504, conn="spray"), RB_ESLOWDOWN, "a right secret on the spraying connection")

    # The flood changed nothing but the two real logins.
    after = settled_counts(st, {"NOT_READY": before.get("NOT_READY", 0) + 2})
    expect_eq(after.get("AVAILABLE", 0), before.get("AVAILABLE", 0), "agents AVAILABLE")
    # The per-agent window passes: 8501's right secret gets in.
    status_ok(wait_until(lambda: (lambda r: r if r.get("reply") == "status" else None)(
        p.login(8501, conn="pa-later")), 20, "8501 after its window", 1.0),
        "8501 after its window")
    services_alive(st)


# -- oversized messages ---------------------------------------------------------------------------

def test_oversized_message(st):
    setup_program(st, "big", (8601,))
    p = probe(st)
    status_ok(p.login(8601, conn="agent", **{"as": "G"}), "login", "NOT_READY")
    status_ok(p.step("set_state", conn="agent", state="AVAILABLE"), "ready", "AVAILABLE")
    before = settled_counts(st)
    counters = {k: v for k, v in st.status().items() if k.startswith("calls_")}

    # From a connection of its own: dropped, nothing else touched.
    r = p.step("oversize", conn="junk", bytes=AGENT_LIMIT + 64 * 1024)
    expect(p.step("wait", conn="junk", event="closed", timeout_ms=5000).get("found"),
           "the connection stayed open after %d bytes: %s", AGENT_LIMIT + 64 * 1024, r)
    expect(not [e for e in p.events(conn="junk") if e.get("event") not in ("closed",)],
           "presence answered an oversized message: %s", p.events(conn="junk"))
    status_ok(p.step("heartbeat", conn="agent"), "the agent after the oversized message",
              "AVAILABLE")
    services_alive(st)
    expect_eq(settled_counts(st), before, "agents by state after the oversized message")
    expect_eq({k: v for k, v in st.status().items() if k.startswith("calls_")}, counters,
              "call counters after the oversized message")

    # From the agent's own connection, with its token inside: dropped too. The lost connection
    # is a lost link (AVAILABLE -> OFFLINE, as for any closed connection); the session itself
    # survives and resumes from a new connection, NOT_READY as after any lost link.
    p.step("oversize", conn="agent", bytes=AGENT_LIMIT + 1024)
    expect(p.step("wait", conn="agent", event="closed", timeout_ms=5000).get("found"),
           "the agent's connection stayed open after an oversized message")
    status_ok(p.step("resume", conn="agent2", agent=8601, token="G"), "resume after the drop",
              "NOT_READY")
    services_alive(st)
    want = dict(before)
    want["AVAILABLE"] = before.get("AVAILABLE", 0) - 1
    want["NOT_READY"] = before.get("NOT_READY", 0) + 1
    expect_eq(settled_counts(st, want), want, "agents by state after the resume")
    expect_eq({k: v for k, v in st.status().items() if k.startswith("calls_")}, counters,
              "call counters")


if __name__ == "__main__":
    run_tests(globals(), "hostile")
