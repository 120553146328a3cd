// Tests for what `ringbid call/status/explain --json` print from the broker's replies.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_names.h"

#define S(us) ((uint64_t)(us))

static Ringbid__CallInfo completed_call(void)
{
	Ringbid__CallInfo ci = RINGBID__CALL_INFO__INIT;

	ci.call_id = "c123";
	ci.program = "sales";
	ci.state = RINGBID__CALL_STATE__CALL_ENDED;
	ci.disposition = RINGBID__DISPOSITION__DISP_COMPLETED;
	ci.agent_id = 1001;
	ci.arrived_us = S(1700000000000000);
	ci.offered_us = S(1700000000300000);
	ci.answered_us = S(1700000000800000);
	ci.ended_us = S(1700000005800000);
	ci.version = 6;
	ci.offers = 1;
	return ci;
}

static void test_call_summary(void **state)
{
	Ringbid__CallInfo ci = completed_call();
	json_t *j = cli_call_json(&ci, false, 0);
	const char *keys[] = {"call_id", "program", "state",  "disposition", "agent_id",
	                      "wait_ms", "talk_ms", "offers", "review"};

	(void)state;
	assert_non_null(j);
	assert_int_equal(json_object_size(j), 9);
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		assert_non_null(json_object_get(j, keys[i]));
	assert_string_equal(json_string_value(json_object_get(j, "call_id")), "c123");
	assert_string_equal(json_string_value(json_object_get(j, "state")), "ended");
	assert_string_equal(json_string_value(json_object_get(j, "disposition")), "completed");
	assert_int_equal(json_integer_value(json_object_get(j, "agent_id")), 1001);
	assert_int_equal(json_integer_value(json_object_get(j, "wait_ms")), 800);
	assert_int_equal(json_integer_value(json_object_get(j, "talk_ms")), 5000);
	assert_int_equal(json_integer_value(json_object_get(j, "offers")), 1);
	assert_true(json_is_false(json_object_get(j, "review")));
	json_decref(j);
}

static void test_call_waiting_and_abandoned(void **state)
{
	Ringbid__CallInfo ci = RINGBID__CALL_INFO__INIT;
	json_t *j;

	(void)state;
	ci.call_id = "c9";
	ci.program = "support";
	ci.state = RINGBID__CALL_STATE__CALL_QUEUED;
	ci.arrived_us = S(1700000000000000);
	j = cli_call_json(&ci, false, S(1700000002500000));
	assert_string_equal(json_string_value(json_object_get(j, "state")), "queued");
	assert_string_equal(json_string_value(json_object_get(j, "disposition")), "");
	assert_int_equal(json_integer_value(json_object_get(j, "wait_ms")), 2500);
	assert_int_equal(json_integer_value(json_object_get(j, "talk_ms")), 0);
	assert_int_equal(json_integer_value(json_object_get(j, "agent_id")), 0);
	json_decref(j);

	ci.state = RINGBID__CALL_STATE__CALL_ENDED;
	ci.disposition = RINGBID__DISPOSITION__DISP_ABANDONED;
	ci.ended_us = S(1700000005000000);
	j = cli_call_json(&ci, false, S(1700000009000000));
	assert_string_equal(json_string_value(json_object_get(j, "disposition")), "abandoned");
	assert_int_equal(json_integer_value(json_object_get(j, "wait_ms")), 5000);
	json_decref(j);

	// Clocks that disagree never make a negative duration.
	ci.ended_us = S(1600000000000000);
	assert_int_equal(cli_call_wait_ms(&ci, 0), 0);
}

static void test_call_full(void **state)
{
	Ringbid__CallInfo ci = completed_call();
	char *skills[] = {"sales", "fr"};
	json_t *j;

	(void)state;
	ci.skills = skills;
	ci.n_skills = 2;
	ci.review = 1;
	ci.priority = -3;
	j = cli_call_json(&ci, true, 0);
	assert_true(json_is_true(json_object_get(j, "review")));
	assert_int_equal(json_integer_value(json_object_get(j, "priority")), -3);
	assert_int_equal(json_array_size(json_object_get(j, "skills")), 2);
	assert_string_equal(json_string_value(json_array_get(json_object_get(j, "skills"), 1)),
	                    "fr");
	assert_int_equal(json_integer_value(json_object_get(j, "version")), 6);
	assert_string_equal(json_string_value(json_object_get(j, "arrived_at")),
	                    "2023-11-14T22:13:20.000000Z");
	json_decref(j);

	// Text that is not printable is never passed on.
	ci.program = "sa\x01les";
	j = cli_call_json(&ci, false, 0);
	assert_string_equal(json_string_value(json_object_get(j, "program")), "?");
	json_decref(j);
}

static void test_kpis(void **state)
{
	Ringbid__Kpis k = RINGBID__KPIS__INIT;
	Ringbid__AgentCount a1 = RINGBID__AGENT_COUNT__INIT, a2 = RINGBID__AGENT_COUNT__INIT;
	Ringbid__AgentCount a3 = RINGBID__AGENT_COUNT__INIT, bogus = RINGBID__AGENT_COUNT__INIT;
	Ringbid__AgentCount *agents[] = {&a1, &a2, &a3, &bogus};
	const char *keys[] = {"calls_waiting",  "longest_wait_ms",     "calls_offered",
	                      "calls_answered", "answered_within_20s", "calls_abandoned",
	                      "calls_overflow", "calls_completed",     "asa_ms",
	                      "calls_offering", "calls_connected",     "cdr_outbox"};
	json_t *j, *ag;

	(void)state;
	k.calls_waiting = 3;
	k.longest_wait_ms = 12400;
	k.calls_offered = 60;
	k.calls_answered = 55;
	k.answered_within_20s = 50;
	k.asa_ms = 3200;
	a1.state = RINGBID__AGENT_STATE__AGENT_AVAILABLE;
	a1.count = 12;
	a2.state = RINGBID__AGENT_STATE__AGENT_ON_CALL;
	a2.count = 5;
	a3.state = RINGBID__AGENT_STATE__AGENT_AVAILABLE;
	a3.count = 1;
	bogus.state = (Ringbid__AgentState)42;
	bogus.count = 9;
	k.agents = agents;
	k.n_agents = 4;
	j = cli_kpis_json(&k);
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		assert_non_null(json_object_get(j, keys[i]));
	assert_int_equal(json_integer_value(json_object_get(j, "calls_waiting")), 3);
	assert_int_equal(json_integer_value(json_object_get(j, "answered_within_20s")), 50);
	ag = json_object_get(j, "agents");
	assert_int_equal(json_object_size(ag), 6);
	assert_int_equal(json_integer_value(json_object_get(ag, "AVAILABLE")), 13);
	assert_int_equal(json_integer_value(json_object_get(ag, "ON_CALL")), 5);
	assert_int_equal(json_integer_value(json_object_get(ag, "OFFLINE")), 0);
	assert_int_equal(json_integer_value(json_object_get(ag, "WRAP_UP")), 0);
	json_decref(j);
}

static void test_explain(void **state)
{
	Ringbid__CallInfo ci = completed_call();
	Ringbid__Decision d1 = RINGBID__DECISION__INIT, d2 = RINGBID__DECISION__INIT;
	Ringbid__Decision *ds[] = {&d1, &d2};
	uint64_t excluded[] = {1005};
	Ringbid__ExplainReply e = RINGBID__EXPLAIN_REPLY__INIT;
	json_t *j, *d;

	(void)state;
	d1.at_us = S(1700000000300000);
	d1.agent_id = 1005;
	d1.score = 92.5;
	d1.runner_up_id = 1001;
	d1.runner_up_score = 88;
	d1.eligible = 7;
	d1.reason = "highest score";
	d1.score_basis = "program";
	d1.runner_up_basis = "overall";
	d1.available_since_us = S(1700000000000000);
	d2.agent_id = 1001;
	d2.score_basis = "not-a-basis";
	d2.runner_up_basis = "program";
	d2.score = 88;
	d2.eligible = 1;
	d2.reason = "highest score";
	d2.exploratory = 1;
	e.call = &ci;
	e.decisions = ds;
	e.n_decisions = 2;
	e.excluded = excluded;
	e.n_excluded = 1;
	j = cli_explain_json(&e, 0);
	assert_string_equal(
	        json_string_value(json_object_get(json_object_get(j, "call"), "call_id")), "c123");
	assert_int_equal(json_array_size(json_object_get(j, "decisions")), 2);
	d = json_array_get(json_object_get(j, "decisions"), 0);
	assert_int_equal(json_integer_value(json_object_get(d, "agent_id")), 1005);
	assert_true(json_real_value(json_object_get(d, "score")) == 92.5);
	assert_int_equal(json_integer_value(json_object_get(d, "runner_up_id")), 1001);
	assert_true(json_real_value(json_object_get(d, "runner_up_score")) == 88.0);
	assert_int_equal(json_integer_value(json_object_get(d, "eligible")), 7);
	assert_string_equal(json_string_value(json_object_get(d, "reason")), "highest score");
	assert_true(json_is_false(json_object_get(d, "exploratory")));
	assert_string_equal(json_string_value(json_object_get(d, "score_basis")), "program");
	assert_string_equal(json_string_value(json_object_get(d, "runner_up_basis")), "overall");
	assert_string_equal(json_string_value(json_object_get(d, "available_since")),
	                    "2023-11-14T22:13:20.000000Z");
	assert_string_equal(json_string_value(json_object_get(d, "at")),
	                    "2023-11-14T22:13:20.300000Z");
	d = json_array_get(json_object_get(j, "decisions"), 1);
	assert_true(json_is_true(json_object_get(d, "exploratory")));
	assert_int_equal(json_integer_value(json_object_get(d, "runner_up_id")), 0);
	// Unknown basis text is not repeated; no runner-up has no basis.
	assert_string_equal(json_string_value(json_object_get(d, "score_basis")), "");
	assert_string_equal(json_string_value(json_object_get(d, "runner_up_basis")), "");
	assert_true(json_is_null(json_object_get(d, "available_since")));
	assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "excluded"), 0)),
	                 1005);
	json_decref(j);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(rb_call_state_name(RINGBID__CALL_STATE__CALL_OFFERED), "OFFERED");
	assert_string_equal(rb_call_state_name(99), "NONE");
	assert_string_equal(rb_disposition_name(RINGBID__DISPOSITION__DISP_OVERFLOW), "overflow");
	assert_string_equal(rb_disposition_name(0), "");
	assert_string_equal(rb_agent_state_name(RINGBID__AGENT_STATE__AGENT_NOT_READY),
	                    "NOT_READY");
	assert_null(rb_agent_state_name(-1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_call_summary),
	        cmocka_unit_test(test_call_waiting_and_abandoned),
	        cmocka_unit_test(test_call_full),
	        cmocka_unit_test(test_kpis),
	        cmocka_unit_test(test_explain),
	        cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
