// Tests for the simulator's figures and its command line.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "options.h"
#include "rb_err.h"
#include "sim.h"
#include "stats.h"

#define S 1000000ull // a second in microseconds

static void test_calls_add_up_like_the_broker(void **state)
{
	const sim_call_result r[] = {
	        // answered after 5 s and 25 s, one still connected
	        {true, RINGBID__CALL_STATE__CALL_ENDED, RINGBID__DISPOSITION__DISP_COMPLETED,
	         100 * S, 105 * S, 200 * S},
	        {true, RINGBID__CALL_STATE__CALL_CONNECTED, 0, 100 * S, 125 * S, 0},
	        // exactly 20 s is within the service level
	        {true, RINGBID__CALL_STATE__CALL_ENDED, RINGBID__DISPOSITION__DISP_COMPLETED, 0,
	         20 * S, 30 * S},
	        {true, RINGBID__CALL_STATE__CALL_ENDED, RINGBID__DISPOSITION__DISP_ABANDONED,
	         10 * S, 0, 12 * S},
	        {true, RINGBID__CALL_STATE__CALL_ENDED, RINGBID__DISPOSITION__DISP_OVERFLOW, 10 * S,
	         0, 70 * S},
	        {true, RINGBID__CALL_STATE__CALL_QUEUED, 0, 10 * S, 0, 0},
	        {false, 0, 0, 0, 0, 0},
	};
	sim_summary s = {0};
	(void)state;

	sim_summary_calls(&s, r, sizeof(r) / sizeof(r[0]));
	assert_int_equal(s.offered, 6);
	assert_int_equal(s.refused, 1);
	assert_int_equal(s.answered, 3);
	assert_int_equal(s.completed, 2);
	assert_int_equal(s.connected_at_end, 1);
	assert_int_equal(s.abandoned, 1);
	assert_int_equal(s.overflow, 1);
	assert_int_equal(s.open, 1);
	assert_int_equal(s.answered + s.abandoned + s.overflow + s.open, s.offered);
	assert_int_equal(s.answered_in_sl, 2);
	assert_int_equal(s.asa_ms, (5000 + 25000 + 20000) / 3);
	assert_true(s.service_level > 0.66 && s.service_level < 0.67);
}

static void test_percentiles_and_occupancy(void **state)
{
	uint64_t lat[100];
	uint64_t ms[SIM_NSTATES] = {0};
	sim_summary s = {0};
	(void)state;

	for (int i = 0; i < 100; i++)
		lat[i] = (uint64_t)(100 - i) * 1000; // 100 ms down to 1 ms
	sim_summary_dispatch(&s, lat, 100);
	assert_true(s.dispatch_p50_ms == 50.0);
	assert_true(s.dispatch_p99_ms == 99.0);
	assert_true(s.dispatch_max_ms == 100.0);
	assert_int_equal(sim_percentile(lat, 0, 0.5), 0);
	assert_int_equal(sim_percentile(lat, 1, 0.99), 1000);

	ms[RINGBID__AGENT_STATE__AGENT_AVAILABLE] = 250;
	ms[RINGBID__AGENT_STATE__AGENT_ON_CALL] = 600;
	ms[RINGBID__AGENT_STATE__AGENT_WRAP_UP] = 100;
	ms[RINGBID__AGENT_STATE__AGENT_RESERVED] = 50;
	ms[RINGBID__AGENT_STATE__AGENT_NOT_READY] = 5000; // breaks are not staffed time
	sim_summary_occupancy(&s, ms);
	assert_true(s.occupancy > 0.7499 && s.occupancy < 0.7501);
}

static void test_json_summary(void **state)
{
	sim_summary s = {.seed = 18446744073709551615ull,
	                 .time_factor = 60,
	                 .offered = 3,
	                 .answered = 2,
	                 .abandoned = 1,
	                 .outcomes_supported = -1};
	char *text = NULL;
	json_error_t err;
	(void)state;

	snprintf(s.digest, sizeof(s.digest), "0123456789abcdef");
	assert_int_equal(sim_summary_json(&s, &text), 0);
	assert_null(strchr(text, '\n'));
	json_t *j = json_loads(text, 0, &err);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "seed")), "18446744073709551615");
	assert_string_equal(json_string_value(json_object_get(j, "schedule_digest")),
	                    "0123456789abcdef");
	assert_int_equal(json_integer_value(json_object_get(j, "calls_offered")), 3);
	assert_string_equal(json_string_value(json_object_get(j, "outcomes")), "not tried");
	assert_non_null(json_object_get(json_object_get(j, "agent_state_ms"), "ON_CALL"));
	json_decref(j);
	free(text);
}

static void test_live_line(void **state)
{
	sim_live l = {.t_s = 12,
	              .offered = 30,
	              .answered = 20,
	              .answered_in_sl = 10,
	              .answer_ms_sum = 40000};
	char line[400];
	(void)state;

	l.agents[RINGBID__AGENT_STATE__AGENT_AVAILABLE] = 3;
	sim_live_line(&l, line, sizeof(line));
	assert_non_null(strstr(line, "30 in"));
	assert_non_null(strstr(line, "SL  50%"));
	assert_non_null(strstr(line, "ASA  2.0s"));
	assert_null(strchr(line, '\n'));
}

static void test_outcome_model(void **state)
{
	(void)state;
	assert_true(sim_p_sale(1.0) > sim_p_sale(0.0));
	assert_true(sim_p_resolved(1.0) > sim_p_resolved(0.5));
	assert_true(sim_p_resolved(1.0) <= 1.0 && sim_p_sale(0.0) >= 0.0);
	assert_int_equal(sim_survey_score(1.0, 0), 5);
	assert_int_equal(sim_survey_score(0.0, 0), 1);
	assert_int_equal(sim_survey_score(0.5, 0), 3);
	assert_int_equal(sim_survey_score(0.0, -9), 1);
	assert_int_equal(sim_survey_score(1.0, 9), 5);
}

static int parse(sim_options *o, const char *const *args, int n)
{
	char *argv[32];
	char err[256];

	argv[0] = "ringbid-sim";
	for (int i = 0; i < n; i++)
		argv[i + 1] = (char *)args[i];
	return sim_options_parse(n + 1, argv, o, err, sizeof(err));
}

static void test_options(void **state)
{
	sim_options o;
	double r;
	(void)state;

	assert_int_equal(parse(&o, NULL, 0), 0);
	assert_int_equal(o.agents, 20);
	assert_int_equal(o.first_agent, 1001);
	assert_string_equal(o.programs[0], "sales");
	assert_true(o.talk_mean_s == 240 && o.time_factor == 1 && o.every_s == 1);
	assert_false(o.seed_set);

	const char *a1[] = {"--agents",    "5",         "--programs",    "sales,support",
	                    "--rate",      "90/min",    "--seed",        "18446744073709551615",
	                    "--talk-dist", "lognormal", "--time-factor", "60",
	                    "--json"};
	assert_int_equal(parse(&o, a1, 13), 0);
	assert_int_equal(o.agents, 5);
	assert_int_equal(o.nprograms, 2);
	assert_string_equal(o.programs[1], "support");
	assert_true(o.rate_per_s == 1.5);
	assert_true(o.seed == UINT64_MAX && o.seed_set);
	assert_int_equal(o.talk_dist, SIM_DIST_LOGNORMAL);
	assert_true(o.json && o.time_factor == 60);

	const char *bad[][2] = {
	        {"--agents", "0"},       {"--agents", "10001"},     {"--rate", "0"},
	        {"--rate", "5/week"},    {"--programs", "a,,b"},    {"--programs", "bad id"},
	        {"--decline-rate", "2"}, {"--talk-dist", "normal"}, {"--secret", "x"},
	        {"--seed", "-1"},        {"--bogus", "1"},          {"--duration", "nan"}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(parse(&o, bad[i], 2), RB_EINVAL);
	const char *missing[] = {"--agents"};
	assert_int_equal(parse(&o, missing, 1), RB_EINVAL);

	assert_int_equal(sim_parse_rate("3600/h", &r), 0);
	assert_true(r == 1.0);
	assert_int_equal(sim_parse_rate("2/s", &r), 0);
	assert_true(r == 2.0);
	assert_int_equal(sim_parse_rate("/s", &r), RB_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_calls_add_up_like_the_broker),
	        cmocka_unit_test(test_percentiles_and_occupancy),
	        cmocka_unit_test(test_json_summary),
	        cmocka_unit_test(test_live_line),
	        cmocka_unit_test(test_outcome_model),
	        cmocka_unit_test(test_options),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
