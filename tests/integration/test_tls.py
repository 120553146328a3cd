#!/usr/bin/env python3
"""The agent link over TLS: `ringbid certs dev`, presence on tls+tcp:// with agents verifying
its certificate, clients with the wrong CA or server name kept out, and plain TCP refused
beyond loopback."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (BIN, ITEST, PORT_PRESENCE_AGENTS, RINGBID, expect, expect_eq,  # noqa: E402
                     no_stack, run_tests, wait_until)

CERTS = os.path.join(ITEST, "tls-certs")
OTHER = os.path.join(ITEST, "tls-certs-other")


def _certs(d, *extra):
    shutil.rmtree(d, ignore_errors=True)
    r = subprocess.run([RINGBID, "certs", "dev", "--dir", d] + list(extra),
                       capture_output=True, text=True, timeout=60)
    expect(r.returncode == 0, "certs dev exited %d: %s", r.returncode, r.stderr)
    return r


def _openssl(*args):
    return subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=30)


@no_stack
def test_certs_dev():
    r = _certs(CERTS, "--names", "presence.floor.example,agents.example", "--days", "30")
    for name, mode in (("ca.crt", 0o644), ("ca.key", 0o600), ("presence.crt", 0o644),
                       ("presence.key", 0o600)):
        path = os.path.join(CERTS, name)
        expect(os.path.exists(path), "%s missing", name)
        expect_eq(os.stat(path).st_mode & 0o777, mode, "mode of " + name)
    expect("RINGBID_AGENT_TLS_CA_FILE=%s/ca.crt" % CERTS in r.stdout, "output: %s", r.stdout)

    # Checked by another implementation: OpenSSL accepts the chain and sees the names.
    v = _openssl("verify", "-CAfile", os.path.join(CERTS, "ca.crt"),
                 os.path.join(CERTS, "presence.crt"))
    expect(v.returncode == 0 and ": OK" in v.stdout, "openssl verify: %s %s", v.stdout, v.stderr)
    t = _openssl("x509", "-in", os.path.join(CERTS, "presence.crt"), "-noout", "-text")
    for want in ("DNS:localhost", "DNS:presence,", "DNS:ringbid-presence",
                 "DNS:presence.floor.example", "DNS:agents.example", "CA:FALSE",
                 "ecPublicKey", "prime256v1"):
        expect(want in t.stdout, "presence.crt lacks %s:\n%s", want, t.stdout)
    c = _openssl("x509", "-in", os.path.join(CERTS, "ca.crt"), "-noout", "-text")
    expect("CA:TRUE" in c.stdout, "ca.crt is no CA:\n%s", c.stdout)
    # Valid for the 30 days asked (openssl -checkend: still valid in 29 days, not in 31).
    crt = os.path.join(CERTS, "presence.crt")
    expect(_openssl("x509", "-in", crt, "-noout", "-checkend", str(29 * 86400)).returncode == 0,
           "certificate expires before 29 days")
    expect(_openssl("x509", "-in", crt, "-noout", "-checkend", str(31 * 86400)).returncode != 0,
           "certificate valid beyond 31 days")

    # An existing CA is never replaced by accident: agents hold its ca.crt.
    before = open(os.path.join(CERTS, "ca.crt")).read()
    r = subprocess.run([RINGBID, "certs", "dev", "--dir", CERTS], capture_output=True,
                       text=True, timeout=60)
    expect(r.returncode != 0 and "--force" in r.stderr, "second certs dev: %d %s",
           r.returncode, r.stderr)
    expect_eq(open(os.path.join(CERTS, "ca.crt")).read(), before, "ca.crt after refusal")
    for bad in (["--days", "0"], ["--days", "99999"], ["--names", "bad name"],
                ["--names", "-x.example"]):
        r = subprocess.run([RINGBID, "certs", "dev", "--dir", OTHER] + bad,
                           capture_output=True, text=True, timeout=60)
        expect_eq(r.returncode, 2, "exit status of certs dev %s" % bad)
    _certs(OTHER)  # a second, unrelated CA for the tests below


@no_stack
def test_plain_tcp_refused_beyond_loopback():
    home = tempfile.mkdtemp(prefix="tls-plain-", dir=ITEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGBID_", "PG"))}
    env.update({"RINGBID_HOME": home, "RINGBID_SERVICE_TOKEN": "x" * 32,
                "RINGBID_PORT_BASE": "63100",
                "RINGBID_PRESENCE_URL": "tcp://0.0.0.0:63105"})
    try:
        p = subprocess.run([os.path.join(BIN, "ringbid-presence")], env=env,
                           capture_output=True, text=True, timeout=30)
        expect(p.returncode != 0, "presence started on plain tcp://0.0.0.0 (exit 0)")
        expect("plain TCP is allowed on loopback only" in p.stderr,
               "presence's refusal does not say why:\n%s", p.stderr[-2000:])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _agent(st, aid, extra_env, url):
    """A client with its own environment (TLS settings), events on a list like start_agent."""
    saved = dict(st.env)
    st.env.update(extra_env)
    try:
        return st.start_agent(aid, "--auto-answer", "1", "--url", url, wait=None)
    finally:
        st.env.clear()
        st.env.update(saved)


def test_agents_over_tls(st):
    tls_url = "tls+tcp://127.0.0.1:%d" % st.port(PORT_PRESENCE_AGENTS)
    st.add_program("tls", ring_timeout=5, wrap_up=0)
    for aid in (9101, 9102, 9103, 9104):
        st.add_agent(aid, score=90 - (aid - 9101))
    ca = os.path.join(CERTS, "ca.crt")

    good = _agent(st, 9101, {"RINGBID_AGENT_TLS_CA_FILE": ca,
                             "RINGBID_AGENT_TLS_SERVER_NAME": "localhost"}, tls_url)
    good.wait_state("AVAILABLE", 20)
    res = st.place_call("tls", talk=0.5)
    expect_eq(int(res.get("agent_id") or 0), 9101, "agent of the call over TLS")
    expect_eq(res.get("disposition"), "completed", "disposition of the call over TLS")

    # Kept out: a CA that did not sign presence's certificate, a name the certificate does not
    # carry, and a client speaking plain TCP to the TLS port.
    wrong_ca = _agent(st, 9102, {"RINGBID_AGENT_TLS_CA_FILE": os.path.join(OTHER, "ca.crt"),
                                 "RINGBID_AGENT_TLS_SERVER_NAME": "localhost"}, tls_url)
    wrong_name = _agent(st, 9103, {"RINGBID_AGENT_TLS_CA_FILE": ca,
                                   "RINGBID_AGENT_TLS_SERVER_NAME": "presence.evil.example"},
                        tls_url)
    plain = _agent(st, 9104, {}, "tcp://127.0.0.1:%d" % st.port(PORT_PRESENCE_AGENTS))
    time.sleep(5)
    for a, why in ((wrong_ca, "wrong CA"), (wrong_name, "wrong server name"),
                   (plain, "plain TCP")):
        expect(not a.find("login"), "agent %d logged in with %s: %s", a.agent_id, why,
               a.summary())
        expect(a.proc.poll() is None, "agent %d (%s) gave up instead of retrying",
               a.agent_id, why)
    # Presence still holds exactly the one good session, and it still works.
    wait_until(lambda: st.agent_count("AVAILABLE") == 1, 10, "one AVAILABLE agent")
    res = st.place_call("tls", talk=0.5)
    expect_eq(int(res.get("agent_id") or 0), 9101, "agent of the second call")


TLS_ENV = {
    "RINGBID_PRESENCE_URL": "tls+tcp://127.0.0.1:{p[5]}",
    "RINGBID_PRESENCE_TLS_CERT": os.path.join(CERTS, "presence.crt"),
    "RINGBID_PRESENCE_TLS_KEY": os.path.join(CERTS, "presence.key"),
}


if __name__ == "__main__":
    os.makedirs(ITEST, exist_ok=True)
    # The shared stack starts after test_certs_dev has made the certificates; when only the
    # stack's tests are selected, make them here.
    if not os.path.exists(os.path.join(CERTS, "presence.crt")):
        _certs(CERTS)
    if not os.path.exists(os.path.join(OTHER, "ca.crt")):
        _certs(OTHER)
    run_tests(globals(), "tls", stack_env=TLS_ENV)
