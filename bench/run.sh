#!/usr/bin/env bash
# make bench: dispatch latency and throughput against a real stack on loopback.
# Prints a table and writes bench/results/latest.json. Figures are printed, never asserted.
#   bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
[ "${1:-}" = "--quick" ] && quick=1

export RINGBID_HOME=$root/build/bench/home
export RINGBID_LOG_LEVEL=warn
export RINGBID_PORT_BASE=${RINGBID_BENCH_PORT_BASE:-7600}
# Sessions are not heartbeated during the run: the benchmark measures dispatch, not keep-alives.
export RINGBID_HEARTBEAT_TIMEOUT_MS=3600000
# A session per agent is a TCP connection; 100,000 of them need file descriptors and more than
# one loopback address (one address gives at most ~28,000 ephemeral ports).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cleanup() { "$root/bin/ringbid" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$RINGBID_HOME"
mkdir -p "$RINGBID_HOME" bench/results
# The port base is chosen by `ringbid up`; presence listens on several loopback addresses.
"$root/bin/ringbid" up >/dev/null
# shellcheck disable=SC1091
. "$RINGBID_HOME/env"
port=$((RINGBID_PORT_BASE + 5))
urls=""
for i in 1 2 3 4 5 6; do urls="${urls:+$urls,}tcp://127.0.0.$i:$port"; done
"$root/bin/ringbid" down --keep-db >/dev/null
export RINGBID_PRESENCE_URL=$urls
export RINGBID_PORT_BASE

if [ $quick = 1 ]; then sizes="1000 10000"; calls=5000; else sizes="1000 100000"; calls=20000; fi

results=()
for n in $sizes; do
  "$root/build/bench/dispatch" --agents "$n" --setup-only
  "$root/bin/ringbid" down --keep-db >/dev/null   # presence reloads the roster at start
  "$root/bin/ringbid" up >/dev/null
  echo "dispatch: $n agents online, $calls calls as fast as the broker acknowledges them" >&2
  r=$("$root/build/bench/dispatch" --agents "$n" --calls "$calls" --skip-setup --urls "$urls")
  echo "  $r" >&2
  results+=("$r")
  rate=1000
  echo "dispatch: $n agents online, $calls calls at $rate calls/s" >&2
  r=$("$root/build/bench/dispatch" --agents "$n" --calls "$calls" --rate $rate --skip-setup --urls "$urls")
  echo "  $r" >&2
  results+=("${r%\}},\"target_rate\":$rate}")
done

{
  printf '{"date":"%s","machine":"%s, %s cores","results":[' "$(date -u +%FT%TZ)" \
    "$(uname -m)" "$(nproc)"
  (IFS=,; printf '%s' "${results[*]}")
  printf ']}\n'
} > bench/results/latest.json

printf '\n%-10s %-10s %-8s %-12s %-10s %-10s %-10s\n' agents target calls "calls/s" "p50 ms" "p99 ms" "p99.9 ms"
python3 - "$root/bench/results/latest.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f'{r["agents"]:<10} {str(r.get("target_rate","max")):<10} {r["offered"]:<8} '
          f'{r["calls_per_s"]:<12.0f} {r["p50_ms"]:<10.3f} {r["p99_ms"]:<10.3f} {r["p999_ms"]:<10.3f}')
PY
echo "written: bench/results/latest.json"
cleanup; "$root/bench/billing.sh" $([ $quick = 1 ] && echo --quick)   # billing: CDR ingest, payroll close/export
