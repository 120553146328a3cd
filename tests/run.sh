#!/usr/bin/env bash
# Runs ringbid's tests: the cmocka unit test binaries given as arguments, then every
# tests/integration/test_*.py, and ends with the line "N passed, M failed".
#
#   ./tests/run.sh build/test/common/rb_pb_test ...     (what `make check` does)
#   RINGBID_TEST_FILTER=dispatch ./tests/run.sh          only files whose path contains this
#   RINGBID_TEST_JOBS=1 / RINGBID_TEST_TIMEOUT=300       parallel integration files / seconds each
#   RINGBID_TEST_UNIT_ONLY=1 / RINGBID_TEST_INTEGRATION_ONLY=1
set -u
cd "$(dirname "$0")/.."

filter=${RINGBID_TEST_FILTER:-}
jobs=${RINGBID_TEST_JOBS:-2}
file_timeout=${RINGBID_TEST_TIMEOUT:-300}
unit_timeout=${RINGBID_TEST_UNIT_TIMEOUT:-120}
outdir=build/itest/logs
mkdir -p "$outdir"

total_pass=0
total_fail=0

matches() {
	[ -z "$filter" ] || [[ "$1" == *"$filter"* ]]
}

# --- unit tests ---------------------------------------------------------------------------
# cmocka prints "[  PASSED  ] N test(s)." and "[  FAILED  ] N test(s), listed below:". A binary
# that crashes, times out or exits non-zero without a FAILED line counts as one failure.
run_unit() {
	local bin=$1 out rc pass fail start ms
	out=$(mktemp)
	start=$(date +%s%N)
	if [ -x "$bin" ]; then
		CMOCKA_MESSAGE_OUTPUT=stdout timeout -k 5 "$unit_timeout" "$bin" >"$out" 2>&1
		rc=$?
	else
		echo "missing or not executable: $bin" >"$out"
		rc=127
	fi
	ms=$((($(date +%s%N) - start) / 1000000))
	# A binary may run several groups: add up their summaries.
	pass=$(sed -n 's/^\[  PASSED  \] \([0-9]\+\) test.*/\1/p' "$out" | awk '{s += $1} END {print s + 0}')
	fail=$(sed -n 's/^\[  FAILED  \] \([0-9]\+\) test.*/\1/p' "$out" | awk '{s += $1} END {if (NR) print s}')
	if [ -z "$fail" ]; then
		fail=0
		if [ "$rc" -ne 0 ] || [ "$pass" -eq 0 ]; then
			fail=1
		fi
	fi
	total_pass=$((total_pass + pass))
	total_fail=$((total_fail + fail))
	if [ "$fail" -gt 0 ]; then
		printf 'FAIL unit  %-51s %3d passed, %d failed (exit %d, %d ms)\n' "$bin" "$pass" \
			"$fail" "$rc" "$ms"
		tail -n 40 "$out" | sed 's/^/    /'
	else
		printf 'ok   unit  %-51s %3d passed (%d ms)\n' "$bin" "$pass" "$ms"
	fi
	rm -f "$out"
}

if [ -z "${RINGBID_TEST_INTEGRATION_ONLY:-}" ]; then
	for bin in "$@"; do
		matches "$bin" && run_unit "$bin"
	done
fi

# --- integration tests --------------------------------------------------------------------
# Each file starts its own stack (own RINGBID_HOME and port block), so files run side by side.
declare -A started_at=()
declare -A pid_of=()
declare -A limit_of=()
itests=()
if [ -z "${RINGBID_TEST_UNIT_ONLY:-}" ]; then
	for f in tests/integration/test_*.py; do
		[ -e "$f" ] && matches "$f" && itests+=("$f")
	done
fi

report_itest() {
	local f=$1 rc=$2 name out last pass fail elapsed
	name=$(basename "$f" .py)
	out=$outdir/$name.out
	elapsed=$(($(date +%s) - started_at[$f]))
	last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n1)
	if [ -n "$last" ]; then
		pass=${last%% passed*}
		fail=${last#*, }
		fail=${fail%% failed*}
		if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
			fail=1
		fi
	else
		# Crashed or timed out: count what it reported, plus one for the file itself.
		pass=$(grep -c '^ok ' "$out")
		fail=$(($(grep -c '^FAIL ' "$out") + 1))
	fi
	total_pass=$((total_pass + pass))
	total_fail=$((total_fail + fail))
	if [ "$fail" -gt 0 ]; then
		printf 'FAIL itest %-51s %3d passed, %d failed (exit %d, %d s)\n' "$name" "$pass" \
			"$fail" "$rc" "$elapsed"
		[ "$rc" -eq 124 ] && echo "    (timed out after ${limit_of[$f]:-$file_timeout} s)"
		sed 's/^/    /' "$out" | tail -n 60
		# The logs of every stack the file started.
		sed -n 's/^# stack [^ ]* home=\([^ ]*\) .*/\1/p' "$out" | sort -u | while read -r home; do
			for log in "$home"/log/*.log; do
				[ -f "$log" ] || continue
				echo "    --- tail of $log"
				tail -n 25 "$log" | cut -c1-400 | sed 's/^/    /'
			done
		done
	else
		printf 'ok   itest %-51s %3d passed (%d s)\n' "$name" "$pass" "$elapsed"
	fi
}

wait_one() {
	local done_pid rc f
	wait -n -p done_pid "${pid_of[@]}"
	rc=$?
	for f in "${!pid_of[@]}"; do
		if [ "${pid_of[$f]}" = "$done_pid" ]; then
			unset "pid_of[$f]"
			report_itest "$f" "$rc"
			return
		fi
	done
}

if [ ${#itests[@]} -gt 0 ]; then
	if ! command -v python3 >/dev/null; then
		echo "FAIL itest: python3 is missing (scripts/install-deps.sh installs it)"
		total_fail=$((total_fail + ${#itests[@]}))
		itests=()
	fi
	if [ ! -x build/tools/rb_probe ] && [ -f tests/tools/rb_probe.c ]; then
		make --no-print-directory build/tools/rb_probe >/dev/null 2>&1 ||
			echo "note: build/tools/rb_probe could not be built"
	fi
fi
for f in "${itests[@]}"; do
	while [ ${#pid_of[@]} -ge "$jobs" ]; do
		wait_one
	done
	name=$(basename "$f" .py)
	started_at[$f]=$(date +%s)
	# A file may ask for more time in a line "# ringbid-test-timeout: SECONDS" (the fault
	# tests, which restart every service several times).
	limit=$(sed -n 's/^# ringbid-test-timeout: *\([0-9][0-9]*\).*/\1/p' "$f" | head -n 1)
	limit=${limit:-$file_timeout}
	[ "$limit" -lt "$file_timeout" ] && limit=$file_timeout
	limit_of[$f]=$limit
	timeout -k 20 "$limit" python3 -u "$f" >"$outdir/$name.out" 2>&1 &
	pid_of[$f]=$!
done
while [ ${#pid_of[@]} -gt 0 ]; do
	wait_one
done

echo "$total_pass passed, $total_fail failed"
if [ "$total_fail" -gt 0 ] || [ $((total_pass + total_fail)) -eq 0 ]; then
	exit 1
fi
exit 0
