// Live call KPIs for the wallboard and `ringbid status`: counters and their arithmetic.
#ifndef BROKER_KPI_H
#define BROKER_KPI_H
#include <stdbool.h>
#include <stdint.h>
#include "call.h"
#include "ringbid.pb-c.h"

#define BROKER_KPI_SERVICE_LEVEL_US 20000000u // "answered within 20 s"

// Counters since the broker started, including the history it replayed.
typedef struct broker_kpi {
	uint64_t arrived;
	uint64_t answered;
	uint64_t answered_in_sl; // answered within BROKER_KPI_SERVICE_LEVEL_US of arrival
	uint64_t abandoned;
	uint64_t overflow;
	uint64_t completed;
	uint64_t answer_delay_sum_us;
} broker_kpi;

// The picture right now, which the counters do not hold.
typedef struct broker_kpi_now {
	uint64_t now_us;
	uint64_t oldest_waiting_arrived_us; // 0: nobody waiting
	uint32_t waiting;                   // QUEUED + OFFERED
	uint32_t offering;                  // OFFERED
	uint32_t connected;
	uint32_t outbox;
	bool have_agents;                     // presence has reported
	uint32_t agents[BROKER_CALL_NSTATES]; // by Ringbid__AgentState (0..5)
} broker_kpi_now;

// Storage for broker_kpi_fill's repeated field.
typedef struct broker_kpi_msg {
	Ringbid__Kpis kpis;
	Ringbid__AgentCount counts[BROKER_CALL_NSTATES];
	Ringbid__AgentCount *ptrs[BROKER_CALL_NSTATES];
} broker_kpi_msg;

void broker_kpi_arrived(broker_kpi *k);
void broker_kpi_answered(broker_kpi *k, uint64_t arrived_us, uint64_t answered_us);
void broker_kpi_ended(broker_kpi *k, int disposition);
// Counts what a change of c from state from meant (arrival, answer, end).
void broker_kpi_transition(broker_kpi *k, int from, const broker_call *c);
// Counts the whole history of a replayed call once.
void broker_kpi_replayed(broker_kpi *k, const broker_call *c);

// Average speed of answer in whole milliseconds (0 with no answered call).
uint64_t broker_kpi_asa_ms(const broker_kpi *k);
// How long the longest waiting caller has waited, in milliseconds.
uint64_t broker_kpi_longest_wait_ms(const broker_kpi_now *now);

// Fills m->kpis (which points into m). m is the caller's; nothing to free.
void broker_kpi_fill(const broker_kpi *k, const broker_kpi_now *now, broker_kpi_msg *m);
// The KPIs as a JSON object text (wallboard). On success *out is the caller's (free()).
// Returns 0 or RB_ENOMEM.
int broker_kpi_json(const Ringbid__Kpis *k, char **out);

// --- the wallboard's rolling window --------------------------------------------------------
// The wallboard adds up the outcomes of the last hour per program, in one-minute slots, so a
// figure moves with the day instead of averaging since the broker started. An hour is also what
// the book keeps of ended calls, so a restarted broker rebuilds the same window from its journal.

#define BROKER_KPI_WINDOW_MIN 60 // minutes in the window (the current one included)
#define BROKER_KPI_MINUTE_US  60000000ull

// Outcomes of calls that left the line: answered (and how fast), abandoned, overflowed.
typedef struct broker_kpi_tally {
	uint64_t answered;
	uint64_t answered_in_sl; // within BROKER_KPI_SERVICE_LEVEL_US of arrival
	uint64_t answer_delay_sum_us;
	uint64_t abandoned;
	uint64_t abandoned_in_sl; // hung up within BROKER_KPI_SERVICE_LEVEL_US ("short abandons")
	uint64_t overflow;
} broker_kpi_tally;

typedef struct broker_kpi_slot {
	uint64_t minute; // UTC minutes since the epoch, plus one (0: never used)
	broker_kpi_tally t;
} broker_kpi_slot;

typedef struct broker_kpi_window {
	broker_kpi_slot slot[BROKER_KPI_WINDOW_MIN];
} broker_kpi_window;

// Adds c's outcome to t: an answered call (whatever came after) counts as answered; an ended
// call that was never answered as abandoned or overflow; a call still waiting adds nothing.
// Returns when the call left the line (answered_us or ended_us), 0 when it has not.
uint64_t broker_kpi_outcome(const broker_call *c, broker_kpi_tally *t);
void broker_kpi_tally_add(broker_kpi_tally *to, const broker_kpi_tally *from);

// Counts c's outcome in the minute it left the line if that minute is in the window that
// ends at now_us (a time after now_us counts as now). Returns true if counted.
bool broker_kpi_window_add(broker_kpi_window *w, const broker_call *c, uint64_t now_us);
// The outcomes in the window that ends at now_us, into *out (overwritten).
void broker_kpi_window_sum(const broker_kpi_window *w, uint64_t now_us, broker_kpi_tally *out);

// Service level: answered within 20 s / (answered + abandoned after 20 s + overflowed). Short
// abandons are left out (the caller gave up before the target could be missed); an overflow
// always counts against it. False when the denominator is 0 (nothing to measure yet).
bool broker_kpi_service_level(const broker_kpi_tally *t, double *out);
// Abandon rate: abandoned / (answered + abandoned + overflowed). False when nothing left the
// line.
bool broker_kpi_abandon_rate(const broker_kpi_tally *t, double *out);
// ASA over the tally in whole milliseconds. False with no answered call.
bool broker_kpi_tally_asa_ms(const broker_kpi_tally *t, uint64_t *out);

#endif
