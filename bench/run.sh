#!/usr/bin/env bash
# make bench: dispatch figures side by side with a PostgreSQL dispatcher, then billing's
# (bench/billing.sh, against a naive billing).
#   1. end to end on a private stack on loopback: real agent sessions (build/bench/dispatch)
#      and calls placed through the broker's API, timed from call arrival to the offer at the
#      agent; 1,000, 10,000 and 100,000 agents online with 1, 10 and 100 queues; with one
#      queue at low load, at 1,000 calls/s and as fast as the broker acknowledges. Presence runs
#      as one instance per 16,000 agents, and a run's agents are split over as many load
#      processes, each on its own instance (the open-file limit here is 20,000 per process);
#   2. memory: each service's resident memory (every presence instance) with 100,000 agents
#      online, every agent on a call and 10,000 more calls waiting (--quick: 10,000 and 2,000);
#   3. the baseline (build/bench/baseline): agents as rows in PostgreSQL, one SKIP LOCKED
#      statement per call, 1,000 to 100,000 agents and 1 to 100 queues, on the same server;
#   4. the auction engine alone in process (build/bench/auction) with 1,000 to 100,000
#      available agents and 1 to 100 queues.
# Prints tables and writes bench/results/latest.json. Figures are printed, never asserted.
#   bench/run.sh [--quick]
# RINGBID_BENCH_AGENTS="1000 10000" sets the agent counts of the end-to-end runs,
# RINGBID_BENCH_QUEUES="1 10" their queue counts.
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

# Call counts keep `make bench` under 15 minutes on 2 cores (billing takes about 7 of them):
# a 100,000-agent group spends about 35 s logging in, and the memory reading places one call
# per agent plus the waiting ones.
if [ $quick = 1 ]; then
	calls=2000 low_calls=500 auction_min_calls=50000 base_calls=2000 waiting=2000
	mem_agents=10000 queue_sizes="1000 10000"
else
	calls=4000 low_calls=1000 auction_min_calls=100000 base_calls=5000 waiting=10000
	mem_agents=100000 queue_sizes="1000 10000 100000"
fi
low_rate=100 rate=1000 low_agents=1000
sizes=${RINGBID_BENCH_AGENTS:-1000 10000 100000}
queue_counts=${RINGBID_BENCH_QUEUES:-1 10 100}
# One presence instance, and one load process, per 16,000 agents: each holds one descriptor
# per session and the limit here may be as low as 20,000 per process.
per_proc=16000
max_n=$low_agents
for n in $sizes $mem_agents; do [ "$n" -gt "$max_n" ] && max_n=$n; done
instances=$(((max_n + per_proc - 1) / per_proc))
[ "$instances" -gt 15 ] && { echo "dispatch: at most 15 presence instances (240,000 agents)" >&2; exit 2; }
if [ "$nofile" -lt $((per_proc + 1000)) ]; then
	echo "dispatch: open files are limited to $nofile per process: $((per_proc + 1000)) needed" >&2
	exit 2
fi
export RINGBID_PRESENCE_INSTANCES=$instances
fd_note="open files are limited to $nofile per process here; each agent session is one descriptor in presence and one in the load generator, so $instances presence instances and up to $instances load processes (16,000 agents each) share the floor"

cleanup() {
	local p
	for p in ${group_pids:-}; do kill "$p" 2>/dev/null || true; done
	"$root/bin/ringbid" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$RINGBID_HOME"
mkdir -p "$RINGBID_HOME" bench/results
# `ringbid up` chooses and records the database, the token and the instances' addresses.
"$root/bin/ringbid" up >/dev/null
# shellcheck disable=SC1091
. "$RINGBID_HOME/env"
export RINGBID_PORT_BASE
IFS=, read -r -a purls <<<"${RINGBID_PRESENCE_URLS:-tcp://127.0.0.1:$((RINGBID_PORT_BASE + 5))}"

# layout Q: every agent's skills for Q queues (bench/dispatch.c: q0..q{Q-1}, two per agent
# when Q > 1); presence loads the roster as it starts, so the services are restarted around it.
layout() {
	"$root/bin/ringbid" down --keep-db >/dev/null
	"$root/build/bench/dispatch" --agents "$max_n" --queues "$1" --setup-only
	"$root/bin/ringbid" up >/dev/null
}

results=()
memory=""
# group N Q LABEL:SPEC...: N agents online for the phases given (SPEC as dispatch's --phase;
# LABEL low, rate, max or hold), split over ceil(N / 16,000) load processes, process k with
# its own agent range on presence instance k. Process 0 places the calls and prints a JSON
# line per phase; each joins results, labelled.
group() {
	local n=$1 q=$2 procs k first count out rc=0 gfile hold="" i=0 line label spec
	shift 2
	local phases=() labels=() rates=()
	for spec in "$@"; do
		label=${spec%%:*} spec=${spec#*:}
		labels+=("$label")
		phases+=(--phase "$spec")
		case $spec in *@hold) rates+=(null) hold=$RINGBID_HOME/hold ;; *@*) rates+=("${spec#*@}") ;; *) rates+=(null) ;; esac
	done
	procs=$(((n + per_proc - 1) / per_proc))
	gfile=$RINGBID_HOME/group
	out=$RINGBID_HOME/group.out
	rm -f "$gfile" "$RINGBID_HOME/hold"
	echo "dispatch: $n agents online ($procs load process(es)), $q queue(s): ${labels[*]}" >&2
	group_pids=""
	for ((k = procs - 1; k >= 0; k--)); do
		first=$((1 + n * k / procs))
		count=$((n * (k + 1) / procs - n * k / procs))
		if [ "$k" -gt 0 ]; then
			"$root/build/bench/dispatch" --agents "$count" --first-agent "$first" --queues "$q" \
				--urls "${purls[$k]}" --skip-setup --group "$gfile" --procs "$procs" \
				--callers 0 "${phases[@]}" >/dev/null &
		else
			"$root/build/bench/dispatch" --agents "$count" --first-agent "$first" --queues "$q" \
				--urls "${purls[0]}" --skip-setup --group "$gfile" --procs "$procs" \
				${hold:+--hold "$hold"} "${phases[@]}" >"$out" &
		fi
		group_pids="$group_pids $!"
	done
	if [ -n "$hold" ]; then
		# Memory: every agent holding a call and the calls beyond them waiting; each
		# service's resident memory (VmRSS) and its peak so far (VmHWM), every presence
		# instance included.
		for _ in $(seq 1 6000); do
			[ -e "$hold" ] && break
			kill -0 "${group_pids##* }" 2>/dev/null || break
			sleep 0.1
		done
		if [ -e "$hold" ]; then
			sleep 1
			local f st mem=""
			for f in "$RINGBID_HOME"/run/*.pid; do
				[ -r "$f" ] || continue
				st=/proc/$(cat "$f")/status
				[ -r "$st" ] || continue
				mem="${mem:+$mem,}\"$(basename "$f" .pid)\":{\"rss_kb\":$(awk '/^VmRSS:/ {print $2}' "$st"),\"hwm_kb\":$(awk '/^VmHWM:/ {print $2}' "$st")}"
			done
			rm -f "$hold"
			memory="{\"agents\":$n,\"queues\":$q,\"held\":$(grep '"phase":"hold"' "$out" || echo null),\"services\":{$mem}}"
			echo "  memory: $memory" >&2
		fi
	fi
	# The caller (the last started) first; the others stop once it has finished.
	wait "${group_pids##* }" || rc=$?
	for p in $group_pids; do wait "$p" 2>/dev/null || true; done
	group_pids=""
	[ $rc = 0 ] || echo "  incomplete (exit $rc): not every call reached an agent in time" >&2
	while IFS= read -r line; do
		case $line in *'"phase":"hold"'*) i=$((i + 1)); continue ;; '{'*) ;; *) continue ;; esac
		echo "  ${labels[$i]}: $line" >&2
		results+=("${line%\}},\"load\":\"${labels[$i]}\",\"target_rate\":${rates[$i]},\"procs\":$procs}")
		i=$((i + 1))
	done <"$out"
}

# One queue last: the memory reading leaves every agent holding a call and calls waiting, which
# the broker would take into the next layout's runs.
order=""
for q in $queue_counts; do [ "$q" = 1 ] || order="$order $q"; done
[[ " $queue_counts " == *" 1 "* ]] && order="$order 1"
memory_done=0
for q in $order; do
	layout "$q"
	for n in $sizes; do
		if [ "$q" = 1 ]; then
			# Low load first: each call finds many free agents and nothing queues, so the
			# figure is the dispatch path's own latency.
			ph=()
			[ "$n" = "$low_agents" ] && ph+=("low:$low_calls@$low_rate")
			ph+=("rate:$calls@$rate" "max:$calls")
			if [ "$n" = "$mem_agents" ] && [ "$n" = "$(echo $sizes | tr ' ' '\n' | sort -n | tail -1)" ]; then
				ph+=("hold:$((n + waiting))@hold")
				memory_done=1
			fi
			group "$n" 1 "${ph[@]}"
		elif [[ " $queue_sizes " == *" $n "* ]]; then
			group "$n" "$q" "max:$calls"
		fi
	done
	last_q=$q
done
if [ $memory_done = 0 ]; then
	[ "${last_q:-}" = 1 ] || layout 1
	group "$mem_agents" 1 "hold:$((mem_agents + waiting))@hold"
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
cleanup; trap - EXIT; "$root/bench/billing.sh" $([ $quick = 1 ] && echo --quick)   # billing: CDR ingest, payroll close/export
