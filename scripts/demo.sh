#!/usr/bin/env bash
# A short tour of ringbid: a local stack, two client programs, twenty home agents and a minute
# of simulated inbound calls auctioned to the best free agent; then the wallboard figures and
# this week's payroll file.
#
#   make demo            (or: scripts/demo.sh after `make`)
#
# DEMO_SECONDS (45), DEMO_RATE (calls per second, 2), DEMO_TIME_FACTOR (40) and DEMO_SEED
# change the simulated load. Everything lives in var/demo; the stack is stopped at the end,
# also when something fails.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
export RINGBID_HOME=$ROOT/var/demo
# The demo's stack decides its own settings: a database or token from the caller's shell
# would point it elsewhere.
unset RINGBID_DATABASE_URL RINGBID_SERVICE_TOKEN RINGBID_SERVICE_TOKEN_FILE PGHOST
SECRET=$RINGBID_HOME/agent-secret

SECONDS_OF_CALLS=${DEMO_SECONDS:-45}
RATE=${DEMO_RATE:-2}
TIME_FACTOR=${DEMO_TIME_FACTOR:-40}
SEED=${DEMO_SEED:-20261123}

bold=$'\e[1m'
dim=$'\e[2m'
reset=$'\e[0m'
if [ ! -t 1 ]; then bold='' dim='' reset=''; fi

step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s    %s%s\n' "$dim" "$*" "$reset"; }

for prog in ringbid ringbid-sim ringbid-broker ringbid-auction ringbid-presence ringbid-billing; do
  if [ ! -x "$BIN/$prog" ]; then
    echo "demo: $BIN/$prog is missing; build first with 'make'" >&2
    exit 1
  fi
done
ringbid() { "$BIN/ringbid" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
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
mkdir -p "$RINGBID_HOME"
# As root, PostgreSQL runs as the postgres user, which must be able to enter the demo's home.
chmod 755 "$ROOT/var" "$RINGBID_HOME"
ringbid up
ringbid db migrate

step "Two client programs"
note "sales needs the 'sales' skill; support needs 'support'. Rates are per talk minute;"
note "sales also pays a commission for every call the agent marks as a sale."
ringbid program add sales --name "Acme Sales" --skills sales --rate 0.3000 --commission 2.00 \
  --ring-timeout 8 --wrap-up 5 --max-wait 60
ringbid program add support --name "Acme Support" --skills support --rate 0.2500 \
  --ring-timeout 8 --wrap-up 5 --max-wait 60
ringbid program list

step "Twenty agents, imported from CSV with one shared secret"
note "Scores decide who wins a call when several agents are free."
umask 077
printf 'demo-agent-secret\n' >"$SECRET"
umask 022
cat >"$RINGBID_HOME/agents.csv" <<'CSV'
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
CSV
ringbid agent import "$RINGBID_HOME/agents.csv" --secret-file "$SECRET"
ringbid agent list

step "$SECONDS_OF_CALLS seconds of calls: ringbid-sim"
note "ringbid-sim logs the twenty agents in (a real presence session each) and places calls"
note "through the broker's call API: about $RATE a second, half for each program. Time runs"
note "${TIME_FACTOR}x faster for talk (4 min on average), callers' patience (2 min), after-call"
note "work and breaks; ring timeouts and waits are real. Agents sometimes decline or take a"
note "break; the better ones sell and resolve more. Columns: calls so far, agents by state,"
note "service level (answered within 20 s) and average speed of answer."
echo
"$BIN/ringbid-sim" --agents 20 --first-agent 1001 --secret-file "$SECRET" \
  --programs sales,support --rate "$RATE" --duration "$SECONDS_OF_CALLS" \
  --time-factor "$TIME_FACTOR" --seed "$SEED" --every 3 --drain 30 \
  2>"$RINGBID_HOME/log/sim.log"
note "The same --seed places the same callers again: try DEMO_SEED=$SEED make demo."

step "The wallboard: ringbid status"
sleep 1.5   # presence reports agent states every second; let the last wrap-ups show
ringbid status

step "Pay: ringbid payroll"
note "Agents are paid per talk minute; pay periods are weeks in RINGBID_PAY_TZ (${RINGBID_PAY_TZ:-UTC})."
note "Finance closes a week once it has ended; the demo closes this week early (--early), as an"
note "off-cycle run would: calls answered later this week are paid next week on LATE lines."
note "Pay follows the real talk seconds the broker recorded: at ${TIME_FACTOR}x a four-minute talk"
note "lasted about $((240 / TIME_FACTOR)) real seconds, so the amounts are small."
ringbid payroll close current --early
ringbid payroll periods
step "This week's payroll file: ringbid payroll export current --format csv"
payroll_csv=$(ringbid payroll export current --format csv --output -) || payroll_csv=''
printf '%s\n' "$payroll_csv" | head -n 12
lines=$(printf '%s\n' "$payroll_csv" | grep -c . || true)
if [ "$lines" -gt 12 ]; then note "... $((lines - 12)) more lines"; fi
if [ -n "$payroll_csv" ]; then
  step "Pay per agent this week (ringbid payroll explain AGENT current shows the calls behind it)"
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
print("%-6s %-18s %9s %10s %11s %10s" % ("agent", "name", "minutes", "talk pay", "commission",
                                         "total"))
total = Decimal(0)
for aid in sorted(pay, key=lambda k: int(k)):
    name, minutes, talk, sales = pay[aid]
    total += talk + sales
    print("%-6s %-18s %9.2f %10s %11s %10s" % (aid, name[:18], minutes, talk, sales,
                                               talk + sales))
print("%-6s %-18s %9s %10s %11s %10s" % ("", "all agents", "", "", "", total))
'
fi

step "Done"
note "Logs: $RINGBID_HOME/log (services; the simulator's in sim.log)."
note "Run the simulator yourself against any stack: bin/ringbid-sim --help, docs/simulator.md."
