// Unit tests of the score recompute's schedule: configuration, when a run is due, one at a time.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "rb_err.h"
#include "rb_metrics.h"
#include "scores.h"

#define S 1000000ULL // one second in microseconds

static void clear_env(void)
{
	unsetenv("RINGBID_SCORE_INTERVAL_S");
	unsetenv("RINGBID_SCORE_WINDOW_DAYS");
	unsetenv("RINGBID_SCORE_MIN_CALLS");
}

static void test_defaults(void **state)
{
	billing_scores s;
	rb_db *db = NULL;

	clear_env();
	assert_int_equal(billing_scores_init(&s, &db, 1000 * S), 0);
	assert_true(s.interval_us == 300 * S);
	assert_int_equal(s.window_days, 30);
	assert_int_equal(s.min_calls, 20);
	// the first run waits one interval: a service that restarts does not recompute at once
	assert_false(billing_scores_due(&s, 1000 * S));
	assert_false(billing_scores_due(&s, 1299 * S));
	assert_true(billing_scores_due(&s, 1300 * S));
}

static void test_configured(void **state)
{
	billing_scores s;
	rb_db *db = NULL;

	clear_env();
	setenv("RINGBID_SCORE_INTERVAL_S", "2", 1);
	setenv("RINGBID_SCORE_WINDOW_DAYS", "7", 1);
	setenv("RINGBID_SCORE_MIN_CALLS", "5", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), 0);
	assert_true(s.interval_us == 2 * S);
	assert_int_equal(s.window_days, 7);
	assert_int_equal(s.min_calls, 5);
	clear_env();
}

static void test_refused_config(void **state)
{
	billing_scores s;
	rb_db *db = NULL;

	clear_env();
	setenv("RINGBID_SCORE_WINDOW_DAYS", "0", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), RB_ECONFIG);
	setenv("RINGBID_SCORE_WINDOW_DAYS", "401", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), RB_ECONFIG);
	clear_env();
	setenv("RINGBID_SCORE_MIN_CALLS", "0", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), RB_ECONFIG);
	clear_env();
	setenv("RINGBID_SCORE_INTERVAL_S", "-1", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), RB_ECONFIG);
	setenv("RINGBID_SCORE_INTERVAL_S", "5m", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), RB_ECONFIG);
	clear_env();
}

static void test_disabled(void **state)
{
	billing_scores s;
	rb_db *db = NULL;

	clear_env();
	setenv("RINGBID_SCORE_INTERVAL_S", "0", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), 0);
	assert_false(billing_scores_due(&s, 0));
	assert_false(billing_scores_due(&s, UINT64_MAX / 2));
	// no connection: the tick does nothing and never crashes
	billing_scores_tick(&s, 10 * S);
	assert_false(s.running);
	clear_env();
}

static void test_one_at_a_time(void **state)
{
	billing_scores s;
	rb_db *db = NULL;

	clear_env();
	setenv("RINGBID_SCORE_INTERVAL_S", "60", 1);
	assert_int_equal(billing_scores_init(&s, &db, 0), 0);
	// no database yet: due, but the tick leaves it due for the next try
	billing_scores_tick(&s, 60 * S);
	assert_false(s.running);
	assert_true(billing_scores_due(&s, 61 * S));
	// a run in flight (as the tick marks it) blocks the next one however late it is
	s.running = true;
	s.started_us = 61 * S;
	s.next_us = 121 * S;
	assert_false(billing_scores_due(&s, 500 * S));
	billing_scores_done(&s, 0, "3", "", NULL, 70 * S);
	assert_false(s.running);
	assert_true(rb_metric_value(s.m_runs) == 1);
	assert_true(rb_metric_value(s.m_changed) == 3);
	assert_true(rb_metric_value(s.m_last) > 0);
	assert_false(billing_scores_due(&s, 120 * S));
	assert_true(billing_scores_due(&s, 121 * S));
	// a failure is counted and keeps the schedule
	s.running = true;
	billing_scores_done(&s, RB_EDB, NULL, "57014", "canceling statement", 130 * S);
	assert_false(s.running);
	assert_true(rb_metric_value(s.m_failed) == 1);
	assert_true(rb_metric_value(s.m_runs) == 1);
	// stopping: not a failure
	s.running = true;
	billing_scores_done(&s, RB_ECLOSED, NULL, "", NULL, 131 * S);
	assert_false(s.running);
	assert_true(rb_metric_value(s.m_failed) == 1);
	clear_env();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_configured),
	        cmocka_unit_test(test_refused_config), cmocka_unit_test(test_disabled),
	        cmocka_unit_test(test_one_at_a_time),
	};
	int rv = cmocka_run_group_tests(tests, NULL, NULL);

	rb_metrics_fini();
	return rv;
}
