// Live call KPIs: arrivals, answers, service level, ASA and abandonment, counted per change.
#include "kpi.h"

#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "rb_err.h"

static const char *const agent_state_names[BROKER_CALL_NSTATES] = {
        "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP",
};

void broker_kpi_arrived(broker_kpi *k)
{
	k->arrived++;
}

void broker_kpi_answered(broker_kpi *k, uint64_t arrived_us, uint64_t answered_us)
{
	uint64_t delay = answered_us > arrived_us ? answered_us - arrived_us : 0;
	k->answered++;
	k->answer_delay_sum_us += delay;
	if (delay <= BROKER_KPI_SERVICE_LEVEL_US)
		k->answered_in_sl++;
}

void broker_kpi_ended(broker_kpi *k, int disposition)
{
	switch (disposition) {
	case BROKER_DISP_COMPLETED:
		k->completed++;
		break;
	case BROKER_DISP_ABANDONED:
		k->abandoned++;
		break;
	case BROKER_DISP_OVERFLOW:
		k->overflow++;
		break;
	default:
		break;
	}
}

void broker_kpi_transition(broker_kpi *k, int from, const broker_call *c)
{
	if (from == (int)c->state)
		return;
	if (from == BROKER_CALL_ARRIVED)
		broker_kpi_arrived(k);
	if (c->state == BROKER_CALL_CONNECTED)
		broker_kpi_answered(k, c->arrived_us, c->answered_us);
	if (c->state == BROKER_CALL_ENDED)
		broker_kpi_ended(k, c->disposition);
}

void broker_kpi_replayed(broker_kpi *k, const broker_call *c)
{
	broker_kpi_arrived(k);
	if (c->answered_us != 0)
		broker_kpi_answered(k, c->arrived_us, c->answered_us);
	if (c->state == BROKER_CALL_ENDED)
		broker_kpi_ended(k, c->disposition);
}

uint64_t broker_kpi_asa_ms(const broker_kpi *k)
{
	if (k->answered == 0)
		return 0;
	return k->answer_delay_sum_us / k->answered / 1000u;
}

uint64_t broker_kpi_longest_wait_ms(const broker_kpi_now *now)
{
	if (now->waiting == 0 || now->oldest_waiting_arrived_us == 0 ||
	    now->oldest_waiting_arrived_us >= now->now_us)
		return 0;
	return (now->now_us - now->oldest_waiting_arrived_us) / 1000u;
}

void broker_kpi_fill(const broker_kpi *k, const broker_kpi_now *now, broker_kpi_msg *m)
{
	Ringbid__Kpis *o = &m->kpis;
	ringbid__kpis__init(o);
	o->calls_waiting = now->waiting;
	o->longest_wait_ms = broker_kpi_longest_wait_ms(now);
	o->calls_offered = k->arrived;
	o->calls_answered = k->answered;
	o->answered_within_20s = k->answered_in_sl;
	o->calls_abandoned = k->abandoned;
	o->calls_overflow = k->overflow;
	o->calls_completed = k->completed;
	o->asa_ms = broker_kpi_asa_ms(k);
	o->calls_offering = now->offering;
	o->calls_connected = now->connected;
	o->cdr_outbox = now->outbox;
	if (now->have_agents) {
		for (int s = 0; s < BROKER_CALL_NSTATES; s++) {
			ringbid__agent_count__init(&m->counts[s]);
			m->counts[s].state = (Ringbid__AgentState)s;
			m->counts[s].count = now->agents[s];
			m->ptrs[s] = &m->counts[s];
		}
		o->n_agents = BROKER_CALL_NSTATES;
		o->agents = m->ptrs;
	}
}

int broker_kpi_json(const Ringbid__Kpis *k, char **out)
{
	*out = NULL;
	json_t *agents = json_object();
	if (agents == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < k->n_agents; i++) {
		int s = k->agents[i]->state;
		if (s >= 0 && s < BROKER_CALL_NSTATES)
			json_object_set_new(agents, agent_state_names[s],
			                    json_integer(k->agents[i]->count));
	}
	double sl = k->calls_answered ? (double)k->answered_within_20s / k->calls_answered : 0;
	json_t *o = json_pack(
	        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:o}",
	        "calls_waiting", (json_int_t)k->calls_waiting, "longest_wait_ms",
	        (json_int_t)k->longest_wait_ms, "calls_offered", (json_int_t)k->calls_offered,
	        "calls_answered", (json_int_t)k->calls_answered, "answered_within_20s",
	        (json_int_t)k->answered_within_20s, "calls_abandoned",
	        (json_int_t)k->calls_abandoned, "calls_overflow", (json_int_t)k->calls_overflow,
	        "calls_completed", (json_int_t)k->calls_completed, "asa_ms", (json_int_t)k->asa_ms,
	        "calls_offering", (json_int_t)k->calls_offering, "calls_connected",
	        (json_int_t)k->calls_connected, "cdr_outbox", (json_int_t)k->cdr_outbox,
	        "service_level", sl, "agents", agents);
	if (o == NULL)
		return RB_ENOMEM;
	*out = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return *out ? 0 : RB_ENOMEM;
}
