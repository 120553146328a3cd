#!/usr/bin/env bash
# Billing figures: CDR ingest rate end to end (bench/cdr_ingest against ringbid-billing), and
# `ringbid payroll close` / `ringbid payroll export` time for periods of 1 and 10 million CDRs
# (100,000 and 1 million with --quick) generated in SQL; each beside the naive baseline
# (bench/billing_naive: one INSERT per CDR, pay computed row by row in C). Prints a table and
# appends the run to bench/results/billing.json. Figures are printed, never asserted.
#   bench/billing.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
[ "${1:-}" = "--quick" ] && quick=1

# A stack of its own: nothing from a caller's stack (bench/run.sh's dispatch run) carries over.
unset RINGBID_DATABASE_URL RINGBID_SERVICE_TOKEN RINGBID_SERVICE_TOKEN_FILE RINGBID_PG_PORT \
	RINGBID_BROKER_JOURNAL RINGBID_PRESENCE_URL RINGBID_BROKER_URL RINGBID_BILLING_URL \
	RINGBID_HEARTBEAT_TIMEOUT_MS
export RINGBID_HOME=$root/build/bench/billing-home
export RINGBID_LOG_LEVEL=warn
export RINGBID_PORT_BASE=${RINGBID_BENCH_BILLING_PORT_BASE:-7700}
export RINGBID_PAY_TZ=UTC
ringbid=$root/bin/ringbid

cleanup() { "$ringbid" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [ $quick = 1 ]; then ingest=50000 naive_ingest=5000; sizes="100000 1000000"; else
	ingest=200000 naive_ingest=20000; sizes="1000000 10000000"; fi

rm -rf "$RINGBID_HOME"
mkdir -p "$RINGBID_HOME" bench/results
"$ringbid" up >/dev/null
# shellcheck disable=SC1091
. "$RINGBID_HOME/env"
export RINGBID_DATABASE_URL RINGBID_PORT_BASE
sql() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$RINGBID_DATABASE_URL" "$@"; }
now_ms() { date +%s%3N; }

# --- ingest -------------------------------------------------------------------------------
echo "billing: ingest of $ingest CDRs, batches of 1000, 4 in flight" >&2
ingest_json=$("$root/build/bench/cdr_ingest" --cdrs "$ingest" --batch 1000 --inflight 4 \
	--agents 200 --agent-base 900001)
echo "  $ingest_json" >&2
echo "billing: naive ingest of $naive_ingest CDRs, one INSERT each, 4 connections" >&2
naive_ingest_json=$("$root/build/bench/billing_naive" ingest --cdrs "$naive_ingest" --conns 4 \
	--agent-base 900001)
echo "  $naive_ingest_json" >&2

# --- payroll close and export ---------------------------------------------------------------
# 1,000 agents over 10 programs, half of them paid per second, half per started minute. The
# agents' secret hashes hash no secret anyone knows: they never log in.
sql <<'SQL'
INSERT INTO roster.programs (id, name, default_rate, rounding, sale_commission)
SELECT 'pay' || p, 'payroll bench ' || p, 0.2000 + p * 0.0125,
       CASE WHEN p % 2 = 0 THEN 'per_second' ELSE 'per_started_minute' END, 1.5000
FROM generate_series(0, 9) p ON CONFLICT (id) DO NOTHING;
INSERT INTO roster.agents (id, name, secret_hash)
SELECT g, 'payroll agent ' || g,
       '$argon2id$v=19$m=8,t=1,p=1$' || md5(random()::text) || '$' || md5(random()::text)
FROM generate_series(800001, 801000) g ON CONFLICT (id) DO NOTHING;
SQL

payroll=()
weeks_back=1
for n in $sizes; do
	weeks_back=$((weeks_back + 1))
	# A past Monday (UTC) with a whole week of its own for this size.
	period=$(date -u -d "$(date -u +%F) -$(( ($(date -u +%u) - 1) )) days -$weeks_back weeks" +%F)
	echo "billing: $n CDRs in the week of $period" >&2
	t=$(now_ms)
	sql -v n="$n" -v start="$period" <<'SQL'
INSERT INTO billing.cdrs (cdr_id, call_id, program, agent_id, arrived_at, offered_at,
                          answered_at, ended_at, talk_s, disposition, sale, offers, payload_hash)
SELECT id, id, 'pay' || (g % 10), 800001 + (g * 7) % 1000, a, a + interval '2 s',
       a + interval '5 s', a + interval '5 s' + make_interval(secs => t + 0.25), t,
       'completed', g % 17 = 0, 1, decode(md5(id), 'hex')
FROM (SELECT g, 'gen-' || :'start' || '-' || g AS id,
             (:'start'::date)::timestamptz + make_interval(secs => (g::double precision * 6 * 86400) / :n)
               AS a,
             (g * 7919) % 900 AS t
      FROM generate_series(1, :n::bigint) g) s;
ANALYZE billing.cdrs;
SQL
	insert_ms=$(($(now_ms) - t))
	t=$(now_ms)
	"$ringbid" payroll close "$period" >/dev/null
	close_ms=$(($(now_ms) - t))
	out=$RINGBID_HOME/export-$period.csv
	t=$(now_ms)
	"$ringbid" payroll export "$period" --format csv --output "$out" >/dev/null
	export_ms=$(($(now_ms) - t))
	lines=$(wc -l <"$out")
	echo "  insert ${insert_ms} ms, close ${close_ms} ms, export ${export_ms} ms ($lines lines)" >&2
	# The naive close of the same week, after ringbid's (so its reads find a warm cache).
	naive=$("$root/build/bench/billing_naive" payroll --period "$period" --output "$out.naive")
	echo "  naive: $naive" >&2
	rm -f "$out.naive"
	payroll+=("{\"cdrs\":$n,\"period\":\"$period\",\"insert_ms\":$insert_ms,\"close_ms\":$close_ms,\"export_ms\":$export_ms,\"export_lines\":$lines,\"naive\":$naive}")
	rm -f "$out"
done

run=$(printf '{"date":"%s","machine":"%s, %s cores","quick":%s,"ingest":%s,"naive_ingest":%s,"payroll":[%s]}' \
	"$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" \
	"$([ $quick = 1 ] && echo true || echo false)" "$ingest_json" "$naive_ingest_json" \
	"$(IFS=,; printf '%s' "${payroll[*]}")")
python3 - "$root/bench/results/billing.json" "$run" <<'PY'
import json, os, sys
path, run = sys.argv[1], json.loads(sys.argv[2])
runs = []
if os.path.exists(path):
    try:
        runs = json.load(open(path)).get("runs", [])
    except (ValueError, AttributeError):
        runs = []
runs.append(run)
with open(path + ".tmp", "w") as f:
    json.dump({"runs": runs}, f, indent=1)
    f.write("\n")
os.replace(path + ".tmp", path)
i = run["ingest"]
print(f'\n{"ingest CDRs":<14} {"batch":<6} {"in flight":<10} {"CDRs/s":<10} {"batch p50 ms":<13} {"batch p99 ms":<13}')
print(f'{i["cdrs"]:<14} {i["batch"]:<6} {i["inflight"]:<10} {i["cdrs_per_s"]:<10.0f} '
      f'{i["batch_p50_ms"]:<13.1f} {i["batch_p99_ms"]:<13.1f}')
n = run["naive_ingest"]
print(f'naive: {n["cdrs"]} CDRs, one INSERT each over {n["conns"]} connections: '
      f'{n["cdrs_per_s"]:.0f} CDRs/s (insert p50 {n["insert_p50_ms"]:.1f} ms, p99 '
      f'{n["insert_p99_ms"]:.1f} ms); ringbid / naive = {i["cdrs_per_s"] / n["cdrs_per_s"]:.1f}')
print(f'\n{"period CDRs":<14} {"insert s":<10} {"close s":<10} {"export s":<10} {"export lines":<13}'
      f'{"naive close s":<14} {"naive export s":<15} {"totals match":<12}')
for p in run["payroll"]:
    nv = p.get("naive") or {}
    print(f'{p["cdrs"]:<14} {p["insert_ms"]/1000:<10.1f} {p["close_ms"]/1000:<10.1f} '
          f'{p["export_ms"]/1000:<10.1f} {p["export_lines"]:<13}'
          f'{nv.get("close_ms", 0)/1000:<14.1f} {nv.get("export_ms", 0)/1000:<15.2f} '
          f'{str(nv.get("totals_match")):<12}')
PY
echo "written: bench/results/billing.json"
