#!/usr/bin/env python3
"""The four services run under valgrind through a few calls and stop cleanly: no memory errors,
nothing definitely lost at shutdown."""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, ITEST, Stack, expect, expect_eq, no_stack, run_tests, wait_until  # noqa: E402


def sanitizer_build():
    """Whether the services were built with ASan (make SANITIZE=1), which valgrind cannot run:
    there the sanitizer itself checks memory, in every other test."""
    with open(os.path.join(BIN, "ringbid-broker"), "rb") as f:
        return b"__asan_init" in f.read()


@no_stack
def test_services_valgrind_clean():
    if sanitizer_build():
        print("# skipped: a sanitizer build (valgrind cannot run ASan binaries; ASan and "
              "LeakSanitizer check every other test instead)")
        return
    logs = os.path.join(ITEST, "valgrind-logs.%d" % os.getpid())
    os.makedirs(logs, exist_ok=True)
    for old in glob.glob(os.path.join(logs, "*.log")):
        os.unlink(old)
    wrapper = ("valgrind --leak-check=full --show-leak-kinds=definite "
               "--errors-for-leak-kinds=definite --num-callers=30 "
               "--log-file=%s/%%p.log" % logs)
    st = Stack("valgrind", extra_env={
        "RINGBID_SERVICE_WRAPPER": wrapper,
        "RINGBID_READY_TIMEOUT_MS": "180000",
        "RINGBID_STOP_TIMEOUT_MS": "80000",
        # Under valgrind everything is many times slower: no heartbeat loss by accident.
        "RINGBID_HEARTBEAT_TIMEOUT_MS": "60000",
    })
    try:
        st.start()
        st.add_program("vg", skills=("vg",), ring_timeout=10, wrap_up=0)
        st.add_agent(9101, skills=("vg",), score=80)
        st.add_agent(9102, skills=("vg",), score=60)
        a = st.start_agent(9101, "--json", "--auto-answer", "0.5", "--sale-every", "2",
                           timeout=60)
        b = st.start_agent(9102, "--json", "--decline", timeout=60)
        for i in range(3):
            res = st.place_call("vg", skills=["vg"], talk=1, id="vg-%d" % i, timeout=60)
            expect_eq(res.get("agent_id"), 9101, "call vg-%d answered by 9101" % i)
        # One call the top agent cannot take: declined by 9102, then abandoned.
        a.send("pause")
        a.wait_state("NOT_READY", 30)
        res = st.place_call("vg", skills=["vg"], id="vg-ab", abandon_after=3, timeout=60)
        expect_eq(res.get("disposition"), "abandoned", "the caller gave up")
        wait_until(lambda: st.status().get("cdr_outbox") == 0, 60, "CDRs delivered to billing")
        a.stop()
        b.stop()
    finally:
        st.stop()

    found = sorted(glob.glob(os.path.join(logs, "*.log")))
    expect(len(found) >= 4, "a valgrind log per service: %r", found)
    for path in found:
        with open(path, errors="replace") as f:
            text = f.read()
        prog = re.search(r"Command: (\S+)", text)
        name = os.path.basename(prog.group(1)) if prog else path
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        expect(summary is not None, "%s did not finish under valgrind (killed?): %s",
               name, text[-1500:])
        expect_eq(int(summary.group(1)), 0, "valgrind errors in %s:\n%s" % (name, text[-4000:]))
        lost = re.search(r"definitely lost: ([\d,]+) bytes", text)
        expect(lost is None or lost.group(1) == "0", "%s leaks: %s" % (name, text[-4000:]))


if __name__ == "__main__":
    run_tests(globals(), "valgrind")
