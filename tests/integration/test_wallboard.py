#!/usr/bin/env python3
"""The live wallboard: /wallboard.json against calls whose outcome the test chose, the page's
headers, and the page in a real browser (Debian's chromium driven by playwright-core) under load.

Every test makes programs of its own (skills only its own agents have). Figures per program are
checked exactly; the overall figures add up every program of the shared stack.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HTTP_PORT, ROOT, TestFailure, expect, expect_eq, run_tests,  # noqa: E402
                     wait_until)

BROWSER_SRC = os.path.join(ROOT, "tests", "browser")
BROWSER_DIR = os.path.join(ROOT, "build", "browser")
SCREENSHOT = os.path.join(ROOT, "build", "wallboard.png")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def board(st):
    status, body = st.http_get(HTTP_PORT["broker"], "/wallboard.json")
    expect_eq(status, 200, "GET /wallboard.json status (%s)" % body[:200])
    return json.loads(body)


def program_row(doc, pid):
    for p in doc["programs"]:
        if p["id"] == pid:
            return p
    return None


def wait_row(st, pid, pred, what, timeout=15.0):
    def ok():
        row = program_row(board(st), pid)
        return row if row is not None and pred(row) else None
    return wait_until(ok, timeout, "program %s: %s" % (pid, what), 0.25)


def test_page_is_self_contained(st):
    status, body = st.http_get(HTTP_PORT["broker"], "/wallboard")
    expect_eq(status, 200, "GET /wallboard status")
    expect("<title>ringbid wallboard</title>" in body, "the page has no title: %r", body[:200])
    # Nothing from outside: no external script, style, font or image.
    for bad in ("http://", "https://", "src=", "@import", "url("):
        expect(bad not in body, "the page refers to something outside itself (%s)", bad)
    expect("wallboard.json" in body, "the page does not poll wallboard.json")
    url = "http://127.0.0.1:%d/wallboard" % st.port(HTTP_PORT["broker"])
    with urllib.request.urlopen(url, timeout=5) as r:
        expect(r.headers.get("Content-Type", "").startswith("text/html"), "page content type %s",
               r.headers.get("Content-Type"))
        csp = r.headers.get("Content-Security-Policy", "")
        expect("default-src 'none'" in csp and "connect-src 'self'" in csp,
               "the page's Content-Security-Policy is %r", csp)
    with urllib.request.urlopen(url + ".json", timeout=5) as r:
        expect_eq(r.headers.get("Cache-Control"), "no-store", "JSON Cache-Control")
        expect(r.headers.get("Content-Type", "").startswith("application/json"),
               "JSON content type %s", r.headers.get("Content-Type"))


def test_figures_per_program(st):
    """Outcomes chosen by the test, then every figure of the program's row checked exactly."""
    sales, empty = "wbf-sales", "wbf-empty"
    st.add_program(sales, name="Figures: sales", skills=[sales], wrap_up=0)
    st.add_program(empty, name="Figures: nobody", skills=[empty], max_wait=3)
    st.add_agent(7101, name="Wanda Board", skills=[sales], score=97.5)
    st.add_agent(7102, name="Wes Board", skills=[sales], score=41)
    st.add_agent(7103, name="Off Roster", skills=[sales], score=99)
    st.ringbid_ok("agent", "set", "7103", "--status", "suspended")

    row = wait_row(st, sales, lambda r: r["name"] == "Figures: sales" and
                   len(r["top_agents"]) == 2, "named, with its two active agents")
    expect_eq([a["id"] for a in row["top_agents"]], [7101, 7102], "top agents, best first")
    expect_eq(row["top_agents"][0]["name"], "Wanda Board", "top agent's name")
    expect_eq(row["top_agents"][0]["score"], 97.5, "top agent's score")
    expect_eq(row["answered"], 0, "answered before any call")
    expect(row["service_level"] is None and row["asa_ms"] is None
           and row["abandon_rate"] is None, "ratios before any call should be null: %s", row)

    a = st.start_agent(7101, "--auto-answer", "60")
    for i in range(2):
        cid = st.unique("wbf%d" % i)
        res = st.place_call(sales, id=cid, talk=0.3)
        expect_eq(res.get("disposition"), "completed", "call %d disposition (%s)" % (i, res))
        ended = a.wait_event("call_ended", lambda e, c=cid: e.get("call_id") == c)
        a.wait_state("AVAILABLE", after=ended["_i"])
    # A caller who waits on a program nobody serves, seen waiting, then gone after 1.5 s.
    gone = st.place_call(empty, background=True, abandon_after=1.5)
    waiting = wait_row(st, empty, lambda r: r["calls_waiting"] == 1, "one call waiting")
    expect(waiting["longest_wait_ms"] < 5000, "longest wait %s", waiting["longest_wait_ms"])
    res = gone.result()
    expect_eq(res.get("disposition"), "abandoned", "abandoned call (%s)" % res)
    # Another that waits past the program's maximum wait (3 s): overflow.
    over = st.place_call(empty, background=True, timeout=20)
    res = over.result()
    expect_eq(res.get("disposition"), "overflow", "overflowed call (%s)" % res)

    row = wait_row(st, empty, lambda r: r["abandoned"] == 1 and r["overflow"] == 1,
                   "one abandoned, one overflowed")
    expect_eq(row["calls_waiting"], 0, "calls waiting on %s" % empty)
    expect_eq(row["longest_wait_ms"], 0, "longest wait with nobody waiting")
    expect_eq(row["abandoned_within_20s"], 1, "short abandons")
    expect_eq(row["answered"], 0, "answered on %s" % empty)
    # SL: 0 answered in time / (0 answered + 0 late abandons + 1 overflow).
    expect_eq(row["service_level"], 0.0, "service level with one overflow")
    expect_eq(row["abandon_rate"], 0.5, "abandon rate: 1 of 2 calls that left the line")
    expect(row["asa_ms"] is None, "ASA with no answer: %s", row["asa_ms"])

    row = program_row(board(st), sales)
    expect_eq(row["answered"], 2, "answered on %s" % sales)
    expect_eq(row["answered_within_20s"], 2, "answered within 20 s")
    expect_eq(row["service_level"], 1.0, "service level")
    expect_eq(row["abandon_rate"], 0.0, "abandon rate")
    expect(row["asa_ms"] is not None and 0 <= row["asa_ms"] < 5000, "ASA %s", row["asa_ms"])
    expect_eq(row["calls_connected"], 0, "calls connected")

    doc = board(st)
    expect_eq(doc["service_level_target"], {"seconds": 20, "goal": 0.8}, "target")
    expect_eq(doc["window_minutes"], 60, "window")
    overall = doc["overall"]
    for k in ("answered", "abandoned", "overflow", "calls_waiting", "calls_connected"):
        expect_eq(overall[k], sum(p[k] for p in doc["programs"]), "overall %s = sum" % k)
    top = [t["id"] for t in overall["top_agents"]]
    expect(7103 not in top, "a suspended agent is in the top list: %s", top)
    # Agents by state come from presence, as `ringbid status` shows them.
    st.wait_agent_count("AVAILABLE", 1)
    wait_until(lambda: board(st)["overall"]["agents"] == st.status()["agents"] or None, 10,
               "wallboard agents by state = ringbid status")


def test_connected_call_counts_at_answer(st):
    """A call counts as answered when it is answered, not when it ends."""
    prog = "wbc-live"
    st.add_program(prog, skills=[prog], wrap_up=0)
    st.add_agent(7201, skills=[prog], score=60)
    a = st.start_agent(7201, "--auto-answer", "60")
    cid = st.unique("wbc")
    res = st.place_call(prog, id=cid)  # returns once connected; the agent ends it after 60 s
    expect_eq(res.get("state"), "connected", "call state (%s)" % res)
    row = wait_row(st, prog, lambda r: r["calls_connected"] == 1, "one call connected")
    expect_eq(row["answered"], 1, "answered while connected")
    expect_eq(row["agents"], {"RESERVED": 0, "ON_CALL": 1}, "agents the program's calls hold")
    st.ringbid_ok("hangup", cid)
    a.wait_event("call_ended", lambda e: e.get("call_id") == cid)
    row = wait_row(st, prog, lambda r: r["calls_connected"] == 0, "the call ended")
    expect_eq(row["answered"], 1, "answered after the end (counted once)")


def npm_install():
    """Installs tests/browser's pinned packages into build/browser, once."""
    pkg = json.load(open(os.path.join(BROWSER_SRC, "package.json")))
    want = pkg["dependencies"]["playwright-core"]
    installed = os.path.join(BROWSER_DIR, "node_modules", "playwright-core", "package.json")
    lock_src = os.path.join(BROWSER_SRC, "package-lock.json")
    lock_dst = os.path.join(BROWSER_DIR, "package-lock.json")
    try:
        have = json.load(open(installed))["version"]
        same_lock = open(lock_src).read() == open(lock_dst).read()
    except (OSError, ValueError, KeyError):
        have, same_lock = None, False
    if have == want and same_lock:
        return
    npm = shutil.which("npm")
    expect(npm is not None, "npm is missing: scripts/install-deps.sh installs it")
    os.makedirs(BROWSER_DIR, exist_ok=True)
    for f in ("package.json", "package-lock.json"):
        shutil.copyfile(os.path.join(BROWSER_SRC, f), os.path.join(BROWSER_DIR, f))
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--fetch-retries=2", "--fetch-timeout=60000"]
    try:
        r = subprocess.run(cmd, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise TestFailure("`npm ci` in build/browser did not finish in 600 s: is the npm "
                          "registry reachable?")
    if r.returncode != 0:
        raise TestFailure("`npm ci` in build/browser failed (exit %d): could not install "
                          "playwright-core %s; is the npm registry reachable?\n%s"
                          % (r.returncode, want, (r.stdout + r.stderr)[-1500:]))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    expect(head[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG", path)
    return struct.unpack(">II", head[16:24])


def test_page_in_browser(st):
    """The page in headless chromium under load: figures match the JSON and move."""
    expect(os.access(CHROMIUM, os.X_OK),
           "%s is missing: scripts/install-deps.sh installs chromium" % CHROMIUM)
    node = shutil.which("node")
    expect(node is not None, "node is missing: scripts/install-deps.sh installs npm and node")
    npm_install()

    busy, quiet = "wbb-busy", "wbb-quiet"
    st.add_program(busy, name="Browser: busy line", skills=[busy], wrap_up=0)
    st.add_program(quiet, name="Browser: unstaffed", skills=[quiet])
    agents = (7301, 7302, 7303)
    for i, aid in enumerate(agents):
        st.add_agent(aid, name="Browser agent %d" % aid, skills=[busy], score=80 - i * 5)
    for aid in agents:
        st.start_agent(aid, "--auto-answer", "1.5")

    if os.path.exists(SCREENSHOT):
        os.unlink(SCREENSHOT)
    url = "http://127.0.0.1:%d/wallboard" % st.port(HTTP_PORT["broker"])
    env = dict(os.environ, NODE_PATH=os.path.join(BROWSER_DIR, "node_modules"))
    cmd = [node, os.path.join(BROWSER_SRC, "wallboard.js"), "--url", url, "--screenshot",
           SCREENSHOT, "--broker-pid", str(st.service_pid("broker")), "--chromium", CHROMIUM]
    log_path = os.path.join(st.home, "log", "browser.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=ROOT, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "ready\n" in lines or proc.poll() is not None, 60,
                   "the page to load in chromium")
        expect("ready\n" in lines, "the browser script ended before the page was live: %s %s",
               "".join(lines)[-1500:], open(log_path).read()[-1500:])
        # Load: more calls than agents, so some wait; a few callers give up.
        calls = []
        for i in range(14):
            if i % 5 == 4:
                calls.append(st.place_call(quiet, background=True, abandon_after=1.2))
            else:
                calls.append(st.place_call(busy, background=True, timeout=60))
            time.sleep(0.45)
        for c in calls:
            c.result(timeout=120)
        wait_until(lambda: (board(st)["overall"]["calls_connected"] == 0
                            and board(st)["overall"]["calls_waiting"] == 0) or None, 60,
                   "the load to settle")
        proc.stdin.write("load-done\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pid = st.service_pid("broker")
        if pid:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        log.close()
    reader.join(5)
    out = "".join(lines)
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TestFailure("the browser script printed no summary (exit %s): %s %s"
                          % (proc.returncode, out[-1500:], open(log_path).read()[-1500:]))
    print("# browser: %s" % json.dumps({k: v for k, v in summary.items() if k != "final"}),
          flush=True)
    expect(proc.returncode == 0 and not summary.get("failures"),
           "browser checks failed (exit %s): %s; stderr: %s", proc.returncode,
           summary.get("failures"), open(log_path).read()[-1500:])
    w, h = png_size(SCREENSHOT)
    expect(w >= 1000 and h >= 600, "screenshot is %dx%d", w, h)


if __name__ == "__main__":
    run_tests(globals(), "wallboard")
