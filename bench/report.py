#!/usr/bin/env python3
# bench/run.sh's report: gathers the dispatch, memory, baseline and auction figures of one run
# into bench/results/latest.json and prints them as tables, ringbid beside the baseline.
import json
import os
import platform
import sys
import time

(dispatch_file, auction_file, baseline_file, memory_file, out, quick, nofile, note, started,
 load0) = sys.argv[1:]


def lines(path, prefix=""):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip() and l.startswith(prefix or l[:1])]


dispatch = lines(dispatch_file)
auction = lines(auction_file, "{")
baseline = lines(baseline_file)
memory = json.load(open(memory_file)) if os.path.exists(memory_file) else None
mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), platform.machine())

# Side by side: for each size and queue count, the baseline as fast as it goes, ringbid end to
# end and the auction engine in process. ringbid's percentiles come from bench/dispatch, which
# computes them once over the raw samples of every load process of a run (a shared mapping),
# never by averaging per-process figures; null means the percentile falls among calls that
# were not offered within the run's wait.
AGENTS = (1000, 10000, 100000)
QUEUES = (1, 10, 100)


def find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def ratio(a, b):
    return round(a / b, 2) if a and b else None


LAT = ("calls_per_s", "p50_ms", "p99_ms", "p999_ms")


def pick(r):
    return r and {k: r.get(k) for k in LAT + ("not_offered",)}


side = []
for n in AGENTS:
    for q in QUEUES:
        b = find(baseline, agents=n, queues=q, load="max")
        e = find(dispatch, agents=n, queues=q, load="max")
        a = find(auction, agents=n, queues=q)
        row = {"agents": n, "queues": q,
               "baseline": b and {k: b[k] for k in LAT},
               "ringbid_end_to_end": pick(e),
               "auction_matches_per_s": a and a["matches_per_s"],
               "ratio_end_to_end": ratio(e and e["calls_per_s"], b and b["calls_per_s"]),
               "ratio_engine": ratio(a and a["matches_per_s"], b and b["calls_per_s"])}
        if e is None:
            row["end_to_end_not_measured"] = "not run (bench/run.sh --quick, or "\
                "RINGBID_BENCH_AGENTS / RINGBID_BENCH_QUEUES)"
        side.append(row)
paced = []
for n in AGENTS:
    b = find(baseline, agents=n, queues=1, load="rate")
    e = find(dispatch, agents=n, queues=1, load="rate")
    paced.append({"agents": n, "queues": 1, "target_rate": b and b["target_rate"],
                  "baseline": b and {k: b[k] for k in LAT},
                  "ringbid_end_to_end": pick(e)})

doc = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "command": "bench/run.sh" + (" --quick" if quick == "1" else ""),
    "machine": {"arch": platform.machine(), "cpu": cpu, "nproc": os.cpu_count(),
                "memory_gib": round(mem_kb / 1048576, 1),
                "loadavg_at_start": [float(x) for x in load0.split()],
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "open_files_limit": int(nofile)},
    "note": note,
    "dispatch": dispatch,
    "memory": memory,
    "baseline": baseline,
    "side_by_side": side,
    "paced": paced,
    "auction": auction,
    "seconds": int(time.time()) - int(started),
}
with open(out + ".tmp", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
os.replace(out + ".tmp", out)


def ms(r, k):
    if not r:
        return "-"
    return f'{r[k]:.2f}' if r.get(k) is not None else f'>{r.get("wait_s", 5)}s'


print("\nend to end: call arrival at the broker -> offer at the agent's session"
      "\n(cpu: CPU time per offered call, ms: broker/auction/presence/billing/postgres)")
print("(percentiles over every call the broker accepted; >5s: among the calls not offered"
      " within the wait)")
print(f'{"agents":<8} {"queues":<7} {"procs":<6} {"load":<14} {"calls":<7} {"offered":<8} '
      f'{"calls/s":<9} {"p50 ms":<9} {"p99 ms":<9} {"p99.9 ms":<9} {"max ms":<9} '
      f'{"cpu ms/call":<24}')
for r in dispatch:
    load = f'{r["target_rate"]:g}/s' if r["target_rate"] else "max"
    if r["load"] == "low":
        load += " (low)"
    cpu = "/".join(f'{r["cpu_ms_per_call"].get(s, 0):.2f}'
                   for s in ("broker", "auction", "presence", "billing", "postgres"))
    print(f'{r["agents"]:<8} {r["queues"]:<7} {r["procs"]:<6} {load:<14} {r["calls"]:<7} '
          f'{r["offered"]:<8} {r["calls_per_s"]:<9.0f} {ms(r, "p50_ms"):<9} '
          f'{ms(r, "p99_ms"):<9} {ms(r, "p999_ms"):<9} {r["max_ms"]:<9.1f} {cpu:<24}')

print("\ndispatch side by side, as fast as each goes (the engine column is the auction alone"
      "\nin process; ratios are ringbid / baseline)")
print(f'{"agents":<8} {"queues":<7} {"baseline/s":<11} {"p50/p99/p99.9 ms":<22} '
      f'{"ringbid/s":<10} {"p50/p99/p99.9 ms":<24} {"ratio":<6} {"engine/s":<9} {"ratio":<6}')
for r in side:
    b, e = r["baseline"], r["ringbid_end_to_end"]
    bl = f'{ms(b, "p50_ms")}/{ms(b, "p99_ms")}/{ms(b, "p999_ms")}' if b else "-"
    el = f'{ms(e, "p50_ms")}/{ms(e, "p99_ms")}/{ms(e, "p999_ms")}' if e else "not measured"
    print(f'{r["agents"]:<8} {r["queues"]:<7} {(b or {}).get("calls_per_s", 0):<11.0f} '
          f'{bl:<22} {(e or {}).get("calls_per_s", 0):<10.0f} {el:<24} '
          f'{r["ratio_end_to_end"] or "-":<6} {r["auction_matches_per_s"] or 0:<9.0f} '
          f'{r["ratio_engine"] or "-":<6}')
print("\npaced: offered calls/s and latency at the same target rate, one queue")
for r in paced:
    b, e = r["baseline"], r["ringbid_end_to_end"]
    print(f'{r["agents"]:<8} target {r["target_rate"]}/s  baseline '
          f'{(b or {}).get("calls_per_s", 0):.0f}/s {ms(b, "p50_ms")}/{ms(b, "p99_ms")}/'
          f'{ms(b, "p999_ms")} ms   ringbid '
          + (f'{e["calls_per_s"]:.0f}/s {ms(e, "p50_ms")}/{ms(e, "p99_ms")}/'
             f'{ms(e, "p999_ms")} ms' if e else "not measured"))

if memory:
    held = memory.get("held") or {}
    print(f'\nmemory with {memory["agents"]} agents online, {held.get("on_call")} on calls and '
          f'{held.get("waiting")} calls waiting: resident / peak MiB')
    for s, m in sorted(memory["services"].items()):
        print(f'{s:<10} {m["rss_kb"] / 1024:>8.1f} {m["hwm_kb"] / 1024:>8.1f}')
big = [a for a in auction if a["agents"] == max(AGENTS)]
if big:
    print(f'auction engine in process with {max(AGENTS)} agents: resident '
          + ", ".join(f'{a["rss_kb"] / 1024:.0f} MiB ({a["queues"]} queues)'
                      for a in big if "rss_kb" in a))

print("\nauction engine in process: time inside the engine per decision")
print(f'{"agents":<8} {"queues":<7} {"matches/s":<10} {"arrival->match p50/p99/p99.9 us":<34} '
      f'{"freed->match p50/p99/p99.9 us":<34}')
for r in auction:
    a, f = r["arrival_match"], r["freed_match"]
    print(f'{r["agents"]:<8} {r["queues"]:<7} {r["matches_per_s"]:<10.0f} '
          f'{a["p50_us"]:>7.2f} {a["p99_us"]:>8.2f} {a["p999_us"]:>9.2f}{"":8} '
          f'{f["p50_us"]:>7.2f} {f["p99_us"]:>8.2f} {f["p999_us"]:>9.2f}')
if note:
    print("\nnote: " + note)
