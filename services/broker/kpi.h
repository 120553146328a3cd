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

#endif
