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

// A call with the times and outcome given (only the fields the window reads).
static broker_call outcome_call(broker_call_state st, broker_disposition disp, uint64_t arrived,
                                uint64_t answered, uint64_t ended)
{
	broker_call c;
	memset(&c, 0, sizeof(c));
	c.state = st;
	c.disposition = disp;
	c.arrived_us = arrived;
	c.answered_us = answered;
	c.ended_us = ended;
	return c;
}

static void test_outcomes(void **state)
{
	(void)state;
	broker_kpi_tally t;
	memset(&t, 0, sizeof(t));
	broker_call c = outcome_call(BROKER_CALL_QUEUED, BROKER_DISP_NONE, T0, 0, 0);
	assert_int_equal(broker_kpi_outcome(&c, &t), 0); // still waiting: no outcome
	c = outcome_call(BROKER_CALL_CONNECTED, BROKER_DISP_NONE, T0, T0 + 20 * SEC, 0);
	assert_int_equal(broker_kpi_outcome(&c, &t), T0 + 20 * SEC); // 20 s exactly: in time
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_COMPLETED, T0, T0 + 20 * SEC + 1,
	                 T0 + 90 * SEC);
	assert_int_equal(broker_kpi_outcome(&c, &t), T0 + 20 * SEC + 1); // counted at the answer
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_ABANDONED, T0, 0, T0 + 20 * SEC);
	assert_int_equal(broker_kpi_outcome(&c, &t), T0 + 20 * SEC);
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_ABANDONED, T0, 0, T0 + 21 * SEC);
	broker_kpi_outcome(&c, &t);
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_OVERFLOW, T0, 0, T0 + 5 * SEC);
	broker_kpi_outcome(&c, &t);
	assert_int_equal(t.answered, 2);
	assert_int_equal(t.answered_in_sl, 1);
	assert_int_equal(t.answer_delay_sum_us, 40 * SEC + 1);
	assert_int_equal(t.abandoned, 2);
	assert_int_equal(t.abandoned_in_sl, 1);
	assert_int_equal(t.overflow, 1);

	// SL = 1 in time / (2 answered + 1 late abandon + 1 overflow); the short abandon is out.
	double v = -1;
	assert_true(broker_kpi_service_level(&t, &v));
	assert_true(v == 0.25);
	// Abandon rate = 2 / (2 + 2 + 1).
	assert_true(broker_kpi_abandon_rate(&t, &v));
	assert_true(v == 0.4);
	uint64_t asa = 0;
	assert_true(broker_kpi_tally_asa_ms(&t, &asa));
	assert_int_equal(asa, 20000);

	broker_kpi_tally none;
	memset(&none, 0, sizeof(none));
	assert_false(broker_kpi_service_level(&none, &v));
	assert_false(broker_kpi_abandon_rate(&none, &v));
	assert_false(broker_kpi_tally_asa_ms(&none, &asa));
	// Only short abandons: nothing to measure service level on, but an abandon rate of 1.
	none.abandoned = none.abandoned_in_sl = 3;
	assert_false(broker_kpi_service_level(&none, &v));
	assert_true(broker_kpi_abandon_rate(&none, &v));
	assert_true(v == 1.0);
}

#define MIN (60 * SEC)

static void test_window_rolls(void **state)
{
	(void)state;
	broker_kpi_window w;
	memset(&w, 0, sizeof(w));
	broker_kpi_tally t;
	uint64_t now = (T0 / MIN) * MIN + 30 * SEC; // half past a minute
	broker_call c = outcome_call(BROKER_CALL_CONNECTED, BROKER_DISP_NONE, now - 70 * MIN,
	                             now - 61 * MIN, 0);
	assert_false(broker_kpi_window_add(&w, &c, now)); // left the line before the window
	c.answered_us = now - 59 * MIN - 30 * SEC;        // the oldest minute still in
	c.arrived_us = c.answered_us - 10 * SEC;
	assert_true(broker_kpi_window_add(&w, &c, now));
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_ABANDONED, now - 2 * MIN, 0, now - MIN);
	assert_true(broker_kpi_window_add(&w, &c, now));
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_OVERFLOW, now - 10 * MIN, 0, now + MIN);
	assert_true(broker_kpi_window_add(&w, &c, now)); // a time ahead of now counts as now
	c = outcome_call(BROKER_CALL_QUEUED, BROKER_DISP_NONE, now, 0, 0);
	assert_false(broker_kpi_window_add(&w, &c, now));

	broker_kpi_window_sum(&w, now, &t);
	assert_int_equal(t.answered, 1);
	assert_int_equal(t.answered_in_sl, 1);
	assert_int_equal(t.abandoned, 1);
	assert_int_equal(t.abandoned_in_sl, 0); // waited a minute
	assert_int_equal(t.overflow, 1);

	// A minute later the oldest minute has left the window.
	broker_kpi_window_sum(&w, now + MIN, &t);
	assert_int_equal(t.answered, 0);
	assert_int_equal(t.abandoned, 1);
	assert_int_equal(t.overflow, 1);
	// An hour later nothing is left, and a slot is reused for its new minute.
	broker_kpi_window_sum(&w, now + 60 * MIN, &t);
	assert_int_equal(t.abandoned + t.overflow + t.answered, 0);
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_ABANDONED, now + 59 * MIN, 0,
	                 now + 59 * MIN);
	assert_true(broker_kpi_window_add(&w, &c, now + 60 * MIN));
	broker_kpi_window_sum(&w, now + 60 * MIN, &t);
	assert_int_equal(t.abandoned, 1);
	assert_int_equal(t.abandoned_in_sl, 1);
	// An outcome of the minute that slot held before is past, not added to the new minute.
	c = outcome_call(BROKER_CALL_ENDED, BROKER_DISP_OVERFLOW, now - MIN, 0, now - MIN);
	assert_false(broker_kpi_window_add(&w, &c, now + 60 * MIN));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_asa_and_service_level),
	        cmocka_unit_test(test_longest_wait),
	        cmocka_unit_test(test_transitions),
	        cmocka_unit_test(test_fill_and_json),
	        cmocka_unit_test(test_outcomes),
	        cmocka_unit_test(test_window_rolls),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
