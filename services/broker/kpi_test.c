// Unit tests of the KPI arithmetic on hand-computed cases.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "kpi.h"

#define T0  1700000000000000ull
#define SEC 1000000ull

static void test_asa_and_service_level(void **state)
{
	(void)state;
	broker_kpi k;
	memset(&k, 0, sizeof(k));
	assert_int_equal(broker_kpi_asa_ms(&k), 0);
	// Delays 4.0005 s, exactly 20 s (inside the 20 s service level), 31.25 s.
	broker_kpi_answered(&k, T0, T0 + 4000500);
	broker_kpi_answered(&k, T0 + 7 * SEC, T0 + 27 * SEC);
	broker_kpi_answered(&k, T0, T0 + 31250000);
	assert_int_equal(k.answered, 3);
	assert_int_equal(k.answered_in_sl, 2);
	// (4000500 + 20000000 + 31250000) / 3 = 18416833.3 µs -> 18416 ms.
	assert_int_equal(broker_kpi_asa_ms(&k), 18416);
	// One microsecond past 20 s is outside.
	broker_kpi_answered(&k, T0, T0 + 20 * SEC + 1);
	assert_int_equal(k.answered_in_sl, 2);
	// (55250500 + 20000001) / 4 = 18812625.25 µs -> 18812 ms.
	assert_int_equal(broker_kpi_asa_ms(&k), 18812);
	// A clock that stepped back counts as an instant answer, never a huge one.
	broker_kpi_answered(&k, T0 + 5 * SEC, T0);
	assert_int_equal(k.answered_in_sl, 3);
	assert_int_equal(k.answer_delay_sum_us, 75250501);
}

static void test_longest_wait(void **state)
{
	(void)state;
	broker_kpi_now now;
	memset(&now, 0, sizeof(now));
	now.now_us = T0 + 125500000;
	assert_int_equal(broker_kpi_longest_wait_ms(&now), 0); // nobody waiting
	now.waiting = 3;
	now.oldest_waiting_arrived_us = T0;
	assert_int_equal(broker_kpi_longest_wait_ms(&now), 125500);
	now.oldest_waiting_arrived_us = T0 + 125499999;
	assert_int_equal(broker_kpi_longest_wait_ms(&now), 0);
	now.oldest_waiting_arrived_us = T0 + 200 * SEC; // arrival "in the future"
	assert_int_equal(broker_kpi_longest_wait_ms(&now), 0);
}

static void test_transitions(void **state)
{
	(void)state;
	broker_kpi k;
	memset(&k, 0, sizeof(k));
	broker_call c;
	memset(&c, 0, sizeof(c));
	c.arrived_us = T0;
	c.state = BROKER_CALL_QUEUED;
	broker_kpi_transition(&k, BROKER_CALL_ARRIVED, &c);
	assert_int_equal(k.arrived, 1);
	// A re-queue is not a second arrival.
	broker_kpi_transition(&k, BROKER_CALL_OFFERED, &c);
	assert_int_equal(k.arrived, 1);
	c.state = BROKER_CALL_CONNECTED;
	c.answered_us = T0 + 12 * SEC;
	broker_kpi_transition(&k, BROKER_CALL_OFFERED, &c);
	assert_int_equal(k.answered, 1);
	assert_int_equal(k.answered_in_sl, 1);
	c.state = BROKER_CALL_ENDED;
	c.disposition = BROKER_DISP_COMPLETED;
	broker_kpi_transition(&k, BROKER_CALL_CONNECTED, &c);
	assert_int_equal(k.completed, 1);
	broker_kpi_ended(&k, BROKER_DISP_ABANDONED);
	broker_kpi_ended(&k, BROKER_DISP_ABANDONED);
	broker_kpi_ended(&k, BROKER_DISP_OVERFLOW);
	assert_int_equal(k.abandoned, 2);
	assert_int_equal(k.overflow, 1);
	assert_int_equal(k.answered, 1);
	assert_int_equal(broker_kpi_asa_ms(&k), 12000);

	// A replayed call counts its whole history once.
	broker_kpi r;
	memset(&r, 0, sizeof(r));
	broker_kpi_replayed(&r, &c);
	assert_int_equal(r.arrived, 1);
	assert_int_equal(r.answered, 1);
	assert_int_equal(r.completed, 1);
	c.state = BROKER_CALL_QUEUED;
	c.answered_us = 0;
	c.disposition = BROKER_DISP_NONE;
	broker_kpi_replayed(&r, &c);
	assert_int_equal(r.arrived, 2);
	assert_int_equal(r.answered, 1);
	assert_int_equal(r.completed, 1);
}

static void test_fill_and_json(void **state)
{
	(void)state;
	broker_kpi k = {.arrived = 10,
	                .answered = 4,
	                .answered_in_sl = 3,
	                .abandoned = 2,
	                .overflow = 1,
	                .completed = 3,
	                .answer_delay_sum_us = 4 * 15 * SEC};
	broker_kpi_now now;
	memset(&now, 0, sizeof(now));
	now.now_us = T0 + 61 * SEC;
	now.oldest_waiting_arrived_us = T0;
	now.waiting = 3;
	now.offering = 1;
	now.connected = 1;
	now.outbox = 6;
	broker_kpi_msg m;
	broker_kpi_fill(&k, &now, &m);
	assert_int_equal(m.kpis.calls_waiting, 3);
	assert_int_equal(m.kpis.longest_wait_ms, 61000);
	assert_int_equal(m.kpis.calls_offered, 10);
	assert_int_equal(m.kpis.calls_answered, 4);
	assert_int_equal(m.kpis.answered_within_20s, 3);
	assert_int_equal(m.kpis.calls_abandoned, 2);
	assert_int_equal(m.kpis.calls_overflow, 1);
	assert_int_equal(m.kpis.calls_completed, 3);
	assert_int_equal(m.kpis.asa_ms, 15000);
	assert_int_equal(m.kpis.calls_offering, 1);
	assert_int_equal(m.kpis.calls_connected, 1);
	assert_int_equal(m.kpis.cdr_outbox, 6);
	assert_int_equal(m.kpis.n_agents, 0); // presence has not reported

	now.have_agents = true;
	now.agents[RINGBID__AGENT_STATE__AGENT_AVAILABLE] = 7;
	now.agents[RINGBID__AGENT_STATE__AGENT_ON_CALL] = 2;
	broker_kpi_fill(&k, &now, &m);
	assert_int_equal(m.kpis.n_agents, 6);
	assert_int_equal(m.kpis.agents[2]->state, RINGBID__AGENT_STATE__AGENT_AVAILABLE);
	assert_int_equal(m.kpis.agents[2]->count, 7);
	assert_int_equal(m.kpis.agents[4]->count, 2);

	char *text = NULL;
	assert_int_equal(broker_kpi_json(&m.kpis, &text), 0);
	json_error_t err;
	json_t *o = json_loads(text, 0, &err);
	assert_non_null(o);
	assert_int_equal(json_integer_value(json_object_get(o, "calls_waiting")), 3);
	assert_int_equal(json_integer_value(json_object_get(o, "asa_ms")), 15000);
	assert_int_equal(json_integer_value(json_object_get(o, "longest_wait_ms")), 61000);
	assert_true(json_real_value(json_object_get(o, "service_level")) == 0.75);
	json_t *agents = json_object_get(o, "agents");
	assert_int_equal(json_integer_value(json_object_get(agents, "AVAILABLE")), 7);
	assert_int_equal(json_integer_value(json_object_get(agents, "ON_CALL")), 2);
	assert_int_equal(json_integer_value(json_object_get(agents, "OFFLINE")), 0);
	json_decref(o);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_asa_and_service_level),
	        cmocka_unit_test(test_longest_wait),
	        cmocka_unit_test(test_transitions),
	        cmocka_unit_test(test_fill_and_json),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
