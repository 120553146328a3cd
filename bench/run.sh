#!/usr/bin/env bash
# make bench: dispatch figures side by side with a PostgreSQL dispatcher, then billing's
# (bench/billing.sh, against a naive billing).
#   1. end to end on a private stack on loopback: real agent sessions (build/bench/dispatch)
#      and calls placed through the broker's API, timed from call arrival to the offer at the
#      agent; at low load, at 1,000 calls/s and as fast as the broker acknowledges;
#   2. memory: each service's resident memory with the largest session count online, every
#      agent on a call and 10,000 more calls waiting;
#   3. the baseline (build/bench/baseline): agents as rows in PostgreSQL, one SKIP LOCKED
#      statement per call, 1,000 to 100,000 agents and 1 to 100 queues, on the same server;
#   4. the auction engine alone in process (build/bench/auction) with 1,000 to 100,000
#      available agents and 1 to 100 queues.
# Prints tables and writes bench/results/latest.json. Figures are printed, never asserted.
#   bench/run.sh [--quick]
# RINGBID_BENCH_AGENTS="1000 10000" sets the session counts of the end-to-end runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
[ "${1:-}" = "--quick" ] && quick=1
started=$(date +%s)
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

export RINGBID_HOME=$root/build/bench/home
export RINGBID_LOG_LEVEL=warn
export RINGBID_PORT_BASE=${RINGBID_BENCH_PORT_BASE:-7600}
# Sessions are not heartbeated during the run: the benchmark measures dispatch, not keep-alives.
export RINGBID_HEARTBEAT_TIMEOUT_MS=3600000
# A session per agent is a TCP connection: one file descriptor in presence and one in the
# load generator. Raise the soft limit as far as the hard one allows.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)

if [ $quick = 1 ]; then
	calls=5000 low_calls=500 auction_min_calls=50000 base_calls=2000 waiting=2000
else
	calls=20000 low_calls=2000 auction_min_calls=200000 base_calls=10000 waiting=10000
fi
low_rate=100 rate=1000 low_agents=1000
sizes=${RINGBID_BENCH_AGENTS:-1000 10000}
max_n=0
for n in $sizes; do [ "$n" -gt "$max_n" ] && max_n=$n; done
[ "$low_agents" -gt "$max_n" ] && max_n=$low_agents

# The 100,000 online agents of DESIGN §3 need 100,000 sessions in one presence process; with a
# per-process open-file limit below that, the end-to-end runs stop at what fits, and the
# in-process auction run covers 100,000 agents.
fd_note=""
if [ "$nofile" -lt 101000 ]; then
	fd_note="open files are limited to $nofile per process here, and presence holds one per agent session: 100,000 sessions cannot run end to end on this machine, so the end-to-end runs use ${sizes// /, } sessions and the auction engine is measured with 100,000 agents in process"
	echo "dispatch: note: $fd_note" >&2
fi

cleanup() { "$root/bin/ringbid" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$RINGBID_HOME"
mkdir -p "$RINGBID_HOME" bench/results
# `ringbid up` chooses and records the database and token; presence is then restarted to
# listen on several loopback addresses (one address gives at most ~28,000 ephemeral ports, and
# the sessions of earlier runs linger in TIME_WAIT).
"$root/bin/ringbid" up >/dev/null
# shellcheck disable=SC1091
. "$RINGBID_HOME/env"
port=$((RINGBID_PORT_BASE + 5))
urls=""
for i in 1 2 3 4 5 6; do urls="${urls:+$urls,}tcp://127.0.0.$i:$port"; done
"$root/bin/ringbid" down --keep-db >/dev/null
export RINGBID_PRESENCE_URL=$urls
export RINGBID_PORT_BASE
# Agents 1..max_n and the bench program; presence loads the roster when it starts.
"$root/build/bench/dispatch" --agents "$max_n" --setup-only
"$root/bin/ringbid" up >/dev/null

# CPU time (clock ticks, user + system) of each service of the stack, one "name ticks" a line.
svc_cpu() {
	local f
	for f in "$RINGBID_HOME"/run/*.pid; do
		[ -r "$f" ] || continue
		awk -v n="$(basename "$f" .pid)" '{print n, $14 + $15}' "/proc/$(cat "$f")/stat" \
			2>/dev/null || true
	done
}
hz=$(getconf CLK_TCK)

results=()
# dispatch_run LABEL AGENTS CALLS [RATE]: one run; its JSON line, labelled and with each
# service's CPU time per offered call, joins results.
dispatch_run() {
	local label=$1 n=$2 c=$3 r=${4:-} out rc=0 before after offered cpu
	before=$(svc_cpu)
	if [ -n "$r" ]; then
		echo "dispatch: $n agents online, $c calls at $r calls/s ($label)" >&2
		out=$("$root/build/bench/dispatch" --agents "$n" --calls "$c" --rate "$r" \
			--skip-setup --urls "$urls") || rc=$?
	else
		echo "dispatch: $n agents online, $c calls as fast as the broker acknowledges them" >&2
		out=$("$root/build/bench/dispatch" --agents "$n" --calls "$c" --skip-setup \
			--urls "$urls") || rc=$?
	fi
	if [ -z "$out" ]; then
		echo "  failed (exit $rc): no figures" >&2
		return 0
	fi
	after=$(svc_cpu)
	[ $rc = 0 ] || echo "  incomplete (exit $rc): not every call reached an agent" >&2
	echo "  $out" >&2
	offered=$(sed -n 's/.*"offered":\([0-9]*\).*/\1/p' <<<"$out")
	cpu=$(awk -v hz="$hz" -v calls="${offered:-0}" 'NR == FNR { b[$1] = $2; next }
		($1 in b) && calls > 0 {
			printf "%s\"%s\":%.3f", sep, $1, ($2 - b[$1]) * 1000 / hz / calls; sep = ","
		}' <(echo "$before") <(echo "$after"))
	results+=("${out%\}},\"load\":\"$label\",\"target_rate\":${r:-null},\"complete\":$([ $rc = 0 ] && echo true || echo false),\"cpu_ms_per_call\":{$cpu}}")
}

# Low load first: each call finds many free agents and nothing queues, so the figure is the
# dispatch path's own latency (broker, auction, broker, presence, agent).
dispatch_run low "$low_agents" "$low_calls" "$low_rate"
for n in $sizes; do
	if [ "$n" -gt $((nofile - 1000)) ]; then
		echo "dispatch: $n sessions skipped: over this machine's open-file limit ($nofile)" >&2
		continue
	fi
	dispatch_run rate "$n" "$calls" "$rate"
	dispatch_run max "$n" "$calls"
done

# Memory: the largest session count that fits, every agent holding a call and $waiting calls
# waiting behind them; each service's resident memory (VmRSS) and its peak so far (VmHWM).
mem_n=0
for n in $sizes; do [ "$n" -le $((nofile - 1000)) ] && [ "$n" -gt "$mem_n" ] && mem_n=$n; done
memory=""
if [ "$mem_n" -gt 0 ]; then
	echo "memory: $mem_n agents on calls and $waiting calls waiting" >&2
	hold=$RINGBID_HOME/hold
	rm -f "$hold"
	"$root/build/bench/dispatch" --agents "$mem_n" --calls $((mem_n + waiting)) --skip-setup \
		--urls "$urls" --hold "$hold" >"$RINGBID_HOME/hold.out" &
	hold_pid=$!
	for _ in $(seq 1 1800); do [ -e "$hold" ] && break; kill -0 $hold_pid 2>/dev/null || break; sleep 0.1; done
	sleep 1
	for f in "$RINGBID_HOME"/run/*.pid; do
		[ -r "$f" ] || continue
		st=/proc/$(cat "$f")/status
		[ -r "$st" ] || continue
		memory="${memory:+$memory,}\"$(basename "$f" .pid)\":{\"rss_kb\":$(awk '/^VmRSS:/ {print $2}' "$st"),\"hwm_kb\":$(awk '/^VmHWM:/ {print $2}' "$st")}"
	done
	rm -f "$hold"
	wait $hold_pid || echo "  not every agent got a call" >&2
	memory="{\"agents\":$mem_n,\"held\":$(cat "$RINGBID_HOME/hold.out" 2>/dev/null || echo null),\"services\":{$memory}}"
	echo "  $memory" >&2
fi

# The baseline on the same PostgreSQL server, with the services stopped.
"$root/bin/ringbid" down --keep-db >/dev/null
echo "baseline: PostgreSQL dispatcher, $base_calls calls per case" >&2
"$root/build/bench/baseline" --db "$RINGBID_DATABASE_URL" --agents 1000,10000,100000 \
	--queues 1,10,100 --calls "$base_calls" >"$RINGBID_HOME/baseline.jsonl"
"$root/build/bench/baseline" --db "$RINGBID_DATABASE_URL" --agents 1000,10000,100000 --queues 1 \
	--calls "$base_calls" --rate "$rate" >>"$RINGBID_HOME/baseline.jsonl"
"$root/bin/ringbid" down >/dev/null

echo "auction: the engine alone, in process (build/bench/auction --min-calls $auction_min_calls)" >&2
auction_out=$RINGBID_HOME/auction.out
"$root/build/bench/auction" --min-calls "$auction_min_calls" | tee "$auction_out" | grep -v '^{' >&2

printf '%s\n' "${results[@]}" > "$RINGBID_HOME/dispatch.jsonl"
echo "${memory:-null}" >"$RINGBID_HOME/memory.json"
python3 "$root/bench/report.py" "$RINGBID_HOME/dispatch.jsonl" "$auction_out" \
	"$RINGBID_HOME/baseline.jsonl" "$RINGBID_HOME/memory.json" \
	"$root/bench/results/latest.json" "$quick" "$nofile" "$fd_note" "$started" "$load_at_start"
echo "written: bench/results/latest.json (dispatch: $(($(date +%s) - started)) s)"
cleanup; "$root/bench/billing.sh" $([ $quick = 1 ] && echo --quick)   # billing: CDR ingest, payroll close/export
