#!/usr/bin/env bash
# A one-minute tour of ringbid: a local stack, two client programs, twenty home agents who
# answer by themselves, and about sixty inbound calls auctioned to the best free agent.
#
#   make demo            (or: scripts/demo.sh after `make`)
#
# Everything lives in var/demo; the stack is stopped at the end, also when something fails.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
export RINGBID_HOME=$ROOT/var/demo
# The demo's stack decides its own settings: a database or token from the caller's shell
# would point it elsewhere.
unset RINGBID_DATABASE_URL RINGBID_SERVICE_TOKEN RINGBID_SERVICE_TOKEN_FILE PGHOST
AGENT_LOGS=$RINGBID_HOME/log/agents
CALLS_DIR=$RINGBID_HOME/calls
SECRET=$RINGBID_HOME/agent-secret

CALL_BATCHES=${DEMO_BATCHES:-12}   # batches of calls, one every BATCH_GAP seconds
BATCH_GAP=${DEMO_BATCH_GAP:-5}
# Calls come in bursts, as they do: batch sizes cycle through these (60 calls in 12 batches).
read -r -a BATCH_SIZES <<<"${DEMO_BATCH_SIZES:-3 8 4 7 2 6}"

bold=$'\e[1m'
dim=$'\e[2m'
reset=$'\e[0m'
if [ ! -t 1 ]; then bold='' dim='' reset=''; fi

step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s    %s%s\n' "$dim" "$*" "$reset"; }

for prog in ringbid ringbid-agent ringbid-broker ringbid-auction ringbid-presence ringbid-billing; do
  if [ ! -x "$BIN/$prog" ]; then
    echo "demo: $BIN/$prog is missing; build first with 'make'" >&2
    exit 1
  fi
done
ringbid() { "$BIN/ringbid" "$@"; }

AGENT_PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#AGENT_PIDS[@]} -gt 0 ]; then
    step "Agents log out"
    kill -TERM "${AGENT_PIDS[@]}" 2>/dev/null || true
    for pid in "${AGENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  fi
  step "Stopping the stack"
  ringbid down || true
  if [ $rc -ne 0 ]; then
    echo "demo: failed (exit $rc); logs are in $RINGBID_HOME/log" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Starting a fresh local stack in ${RINGBID_HOME#"$ROOT"/}"
note "A private PostgreSQL, then billing, auction, presence and the broker."
ringbid down >/dev/null 2>&1 || true
rm -rf "$RINGBID_HOME"
mkdir -p "$AGENT_LOGS" "$CALLS_DIR"
# As root, PostgreSQL runs as the postgres user, which must be able to enter the demo's home.
chmod 755 "$ROOT/var" "$RINGBID_HOME"
ringbid up
ringbid db migrate

step "Two client programs"
note "sales needs the 'sales' skill; support needs 'support'. Rates are per talk minute."
ringbid program add sales --name "Acme Sales" --skills sales --rate 0.3000 --commission 2.00 \
  --ring-timeout 8 --wrap-up 5 --max-wait 60
ringbid program add support --name "Acme Support" --skills support --rate 0.2500 \
  --ring-timeout 8 --wrap-up 5 --max-wait 60
ringbid program list

step "Twenty agents, imported from CSV with one shared secret"
note "Scores decide who wins a call; 'fr' marks the French speakers."
umask 077
printf 'demo-agent-secret\n' >"$SECRET"
umask 022
cat >"$RINGBID_HOME/agents.csv" <<'EOF'
id,name,skills,score
1001,Amara Okafor,sales;support,96
1002,Bruno Costa,sales,91
1003,Chloé Martin,sales;fr,88
1004,Dmitri Ivanov,support,85
1005,Elena García,sales;support,83
1006,Farah Haddad,support;fr,80
1007,Gus Lindqvist,sales,78
1008,Hana Sato,support,75
1009,Ivan Petrov,sales;support,72
1010,Jade Moreau,sales;fr,70
1011,Kwame Mensah,support,67
1012,Lucía Fernández,sales,64
1013,Mateo Rossi,support,61
1014,Nadia Rahman,sales;support,58
1015,Oscar Nilsson,sales,55
1016,Priya Nair,support,52
1017,Quentin Dubois,support;fr,49
1018,Rosa Alves,sales,46
1019,Sven Berg,sales;support,43
1020,Tariq Aziz,support,40
EOF
ringbid agent import "$RINGBID_HOME/agents.csv" --secret-file "$SECRET"
ringbid agent list

step "The agents log in from home"
note "Each runs ringbid-agent --auto-answer: it goes ready, accepts offers and talks a while;"
note "when an agent ends a call itself, every second such call is marked a sale (commission)."
for id in $(seq 1001 1020); do
  talk=$(( 5 + (id % 4) ))   # 5-8 s of talk before the agent ends the call itself
  RINGBID_AGENT_SECRET_FILE=$SECRET "$BIN/ringbid-agent" --agent "$id" --auto-answer "$talk" \
    --sale-every 2 --json </dev/null >"$AGENT_LOGS/$id.log" 2>"$AGENT_LOGS/$id.err" &
  AGENT_PIDS+=($!)
done
ready=0
for _ in $(seq 1 100); do
  ready=$( (grep -l '"state":"AVAILABLE"' "$AGENT_LOGS"/*.log 2>/dev/null || true) | wc -l)
  [ "$ready" -ge 20 ] && break
  sleep 0.2
done
echo "$ready of 20 agents are AVAILABLE"
if [ "$ready" -eq 0 ]; then
  echo "demo: no agent could log in; see $AGENT_LOGS" >&2
  exit 1
fi

total=0
for batch in $(seq 1 "$CALL_BATCHES"); do
  total=$((total + BATCH_SIZES[(batch - 1) % ${#BATCH_SIZES[@]}]))
done
step "$total calls arrive in bursts over about $((CALL_BATCHES * BATCH_GAP)) seconds"
note "Each is auctioned to the highest-scoring free agent with the skills it needs."
note "Callers hang up after 6 s of talk (agents end some calls sooner); callers who need"
note "a French speaker give up if nobody answers within 3 s."
n=0
CALL_PIDS=()
for batch in $(seq 1 "$CALL_BATCHES"); do
  size=${BATCH_SIZES[(batch - 1) % ${#BATCH_SIZES[@]}]}
  for _ in $(seq 1 "$size"); do
    n=$((n + 1))
    id=$(printf 'demo-%03d' "$n")
    args=(--id "$id" --talk 6 --json --timeout 60)
    case $((n % 6)) in
      0 | 1 | 2) program=sales ;;
      3) program=sales; args+=(--skills fr --abandon-after 3) ;;
      4) program=support; args+=(--priority 5) ;;
      5) program=support ;;
    esac
    ( ringbid call "$program" "${args[@]}" >"$CALLS_DIR/$id.json" 2>"$CALLS_DIR/$id.err" || true ) &
    CALL_PIDS+=($!)
  done
  printf '  batch %2d/%d: %d calls, %3d so far\n' "$batch" "$CALL_BATCHES" "$size" "$n"
  if [ "$batch" -lt "$CALL_BATCHES" ]; then sleep "$BATCH_GAP"; fi
done
echo "  waiting for the last calls to finish..."
for pid in "${CALL_PIDS[@]}"; do wait "$pid" || true; done

step "What happened"
python3 - "$CALLS_DIR" "$RINGBID_HOME/agents.csv" <<'EOF'
import csv, json, os, sys
calls_dir, agents_csv = sys.argv[1], sys.argv[2]
names = {}
with open(agents_csv, encoding="utf-8") as f:
    for row in csv.DictReader(f):
        names[int(row["id"])] = (row["name"], row["score"], row["skills"].replace(";", ","))
calls, errors = [], 0
for fn in sorted(os.listdir(calls_dir)):
    if not fn.endswith(".json"):
        continue
    try:
        with open(os.path.join(calls_dir, fn), encoding="utf-8") as f:
            calls.append(json.loads(f.read()))
    except ValueError:
        errors += 1
by_disp = {}
for c in calls:
    d = c.get("disposition") or c.get("state")
    by_disp[d] = by_disp.get(d, 0) + 1
print("calls: %d placed, %s" % (len(calls) + errors,
      ", ".join("%d %s" % (n, d) for d, n in sorted(by_disp.items()))))
if errors:
    print("       %d calls printed no result (see %s/*.err)" % (errors, calls_dir))
answered = [c for c in calls if c.get("agent_id") and c.get("disposition") == "completed"]
if answered:
    waits = sorted(c["wait_ms"] for c in answered)
    print("wait:  median %.1f s, longest %.1f s; offers per call: %.2f on average" % (
        waits[len(waits) // 2] / 1000, waits[-1] / 1000,
        sum(c["offers"] for c in answered) / len(answered)))
per_agent = {}
for c in answered:
    a = per_agent.setdefault(c["agent_id"], {"calls": 0, "talk_ms": 0, "programs": set()})
    a["calls"] += 1
    a["talk_ms"] += c["talk_ms"]
    a["programs"].add(c["program"])
print()
print("%-6s %-18s %5s  %-17s %5s  %8s  %s" % ("agent", "name", "score", "skills", "calls",
                                              "talk", "programs"))
for aid in sorted(names, key=lambda a: -float(names[a][1])):
    name, score, skills = names[aid]
    a = per_agent.get(aid, {"calls": 0, "talk_ms": 0, "programs": set()})
    bar = "#" * a["calls"]
    print("%-6d %-18s %5s  %-17s %5d  %7.1fs  %-14s %s" % (
        aid, name, score, skills, a["calls"], a["talk_ms"] / 1000,
        ",".join(sorted(a["programs"])) or "-", bar))
print()
print("Higher scores win when several agents are free, so the top of the list takes more")
print("calls; lower-scored agents get work when the better ones are busy.")
EOF

step "The wallboard: ringbid status"
sleep 2   # presence reports agent states every second; let the last calls' wrap-up show
ringbid status

example=''
for f in "$CALLS_DIR"/*.json; do
  if [ -s "$f" ]; then example=$(basename "$f" .json); break; fi
done
if [ -n "$example" ]; then
  step "Why did $example go where it went? ringbid explain $example"
  ringbid explain "$example" || true
fi

step "Pay: ringbid payroll"
note "Agents are paid per talk minute; pay periods are weeks in RINGBID_PAY_TZ (${RINGBID_PAY_TZ:-UTC})."
note "This week is still running, so it cannot be closed yet; last week can (calls arriving"
note "later for it are paid next week on LATE lines)."
ringbid payroll close previous || true
ringbid payroll periods
step "This week's payroll file (provisional until closed): ringbid payroll export current --format csv"
payroll_csv=$(ringbid payroll export current --format csv --output -) || payroll_csv=''
printf '%s\n' "$payroll_csv"
if [ -n "$payroll_csv" ]; then
  step "Pay per agent so far (ringbid payroll explain AGENT current shows the calls behind it)"
  printf '%s\n' "$payroll_csv" | python3 -c '
import csv, sys
from decimal import Decimal
pay = {}
for row in csv.DictReader(sys.stdin):
    a = pay.setdefault(row["employee_id"], [row["name"], Decimal(0), Decimal(0), Decimal(0)])
    amount = Decimal(row["amount"])
    if row["earnings_code"] == "SALE":
        a[3] += amount
    else:
        a[1] += Decimal(row["quantity"])
        a[2] += amount
print("%-6s %-18s %10s %10s %10s" % ("agent", "name", "minutes", "talk pay", "total"))
for aid in sorted(pay, key=lambda k: int(k)):
    name, minutes, talk, sales = pay[aid]
    print("%-6s %-18s %10.2f %10s %10s" % (aid, name[:18], minutes, talk, talk + sales))
'
fi

step "Done"
note "Logs: $RINGBID_HOME/log (services), $AGENT_LOGS (agents), $CALLS_DIR (calls)."
