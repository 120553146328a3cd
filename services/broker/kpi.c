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

// --- the wallboard's rolling window --------------------------------------------------------

uint64_t broker_kpi_outcome(const broker_call *c, broker_kpi_tally *t)
{
	if (c->answered_us != 0) {
		uint64_t delay =
		        c->answered_us > c->arrived_us ? c->answered_us - c->arrived_us : 0;
		t->answered++;
		t->answer_delay_sum_us += delay;
		if (delay <= BROKER_KPI_SERVICE_LEVEL_US)
			t->answered_in_sl++;
		return c->answered_us;
	}
	if (c->state != BROKER_CALL_ENDED)
		return 0;
	uint64_t waited = c->ended_us > c->arrived_us ? c->ended_us - c->arrived_us : 0;
	switch (c->disposition) {
	case BROKER_DISP_ABANDONED:
		t->abandoned++;
		if (waited <= BROKER_KPI_SERVICE_LEVEL_US)
			t->abandoned_in_sl++;
		break;
	case BROKER_DISP_OVERFLOW:
		t->overflow++;
		break;
	default:
		// Completed without an answer time cannot happen; count nothing rather than guess.
		return 0;
	}
	return c->ended_us ? c->ended_us : c->arrived_us;
}

void broker_kpi_tally_add(broker_kpi_tally *to, const broker_kpi_tally *from)
{
	to->answered += from->answered;
	to->answered_in_sl += from->answered_in_sl;
	to->answer_delay_sum_us += from->answer_delay_sum_us;
	to->abandoned += from->abandoned;
	to->abandoned_in_sl += from->abandoned_in_sl;
	to->overflow += from->overflow;
}

bool broker_kpi_window_add(broker_kpi_window *w, const broker_call *c, uint64_t now_us)
{
	broker_kpi_tally t;
	memset(&t, 0, sizeof(t));
	uint64_t at = broker_kpi_outcome(c, &t);
	if (at == 0)
		return false;
	if (at > now_us)
		at = now_us; // a clock that stepped back: the outcome is news now
	uint64_t minute = at / BROKER_KPI_MINUTE_US;
	uint64_t now_minute = now_us / BROKER_KPI_MINUTE_US;
	if (minute + BROKER_KPI_WINDOW_MIN <= now_minute)
		return false; // left the line before the window
	broker_kpi_slot *s = &w->slot[minute % BROKER_KPI_WINDOW_MIN];
	if (s->minute != minute + 1) {
		if (s->minute > minute + 1)
			return false; // the slot already holds a later minute: this one is past
		memset(s, 0, sizeof(*s));
		s->minute = minute + 1;
	}
	broker_kpi_tally_add(&s->t, &t);
	return true;
}

void broker_kpi_window_sum(const broker_kpi_window *w, uint64_t now_us, broker_kpi_tally *out)
{
	memset(out, 0, sizeof(*out));
	uint64_t now_minute = now_us / BROKER_KPI_MINUTE_US;
	for (int i = 0; i < BROKER_KPI_WINDOW_MIN; i++) {
		const broker_kpi_slot *s = &w->slot[i];
		if (s->minute == 0)
			continue;
		uint64_t minute = s->minute - 1;
		if (minute <= now_minute && minute + BROKER_KPI_WINDOW_MIN > now_minute)
			broker_kpi_tally_add(out, &s->t);
	}
}

bool broker_kpi_service_level(const broker_kpi_tally *t, double *out)
{
	uint64_t late_abandons =
	        t->abandoned > t->abandoned_in_sl ? t->abandoned - t->abandoned_in_sl : 0;
	uint64_t den = t->answered + late_abandons + t->overflow;
	if (den == 0)
		return false;
	*out = (double)t->answered_in_sl / (double)den;
	return true;
}

bool broker_kpi_abandon_rate(const broker_kpi_tally *t, double *out)
{
	uint64_t den = t->answered + t->abandoned + t->overflow;
	if (den == 0)
		return false;
	*out = (double)t->abandoned / (double)den;
	return true;
}

bool broker_kpi_tally_asa_ms(const broker_kpi_tally *t, uint64_t *out)
{
	if (t->answered == 0)
		return false;
	*out = t->answer_delay_sum_us / t->answered / 1000u;
	return true;
}
