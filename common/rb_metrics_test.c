// Tests for the metrics registry: exact text output, label sets sharing a family, histograms.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rb_err.h"
#include "rb_metrics.h"

static int teardown(void **state)
{
	(void)state;
	rb_metrics_fini();
	return 0;
}

static char *render(void)
{
	char *text = NULL;
	size_t len = 0;

	assert_int_equal(rb_metrics_render(&text, &len), 0);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	return text;
}

static void test_small_registry_exact(void **state)
{
	static const double bounds[] = {0.5, 1, 20};
	rb_metric *calls;
	rb_metric *avail;
	rb_metric *oncall;
	rb_metric *wait;
	rb_metric *temp;
	char *text;

	(void)state;
	calls = rb_metrics_counter("ringbid_calls_total", NULL, "Calls that arrived.");
	avail = rb_metrics_gauge("ringbid_agents", "state=\"available\"", "Agents by state.");
	wait = rb_metrics_histogram("ringbid_answer_delay_seconds", NULL,
	                            "Time from arrival to answer.", bounds, 3);
	oncall = rb_metrics_gauge("ringbid_agents", "state=\"on_call\"", "Agents by state.");
	temp = rb_metrics_gauge("ringbid_ratio", NULL, "A fraction.\nSecond line \\ here.");
	assert_non_null(calls);
	assert_non_null(avail);
	assert_non_null(oncall);
	assert_non_null(wait);

	rb_metric_inc(calls);
	rb_metric_inc(calls);
	rb_metric_add(calls, 3);
	rb_metric_add(calls, -1); // a counter never goes down
	rb_metric_set(avail, 12);
	rb_metric_set(oncall, 3);
	rb_metric_observe(wait, 0.25);
	rb_metric_observe(wait, 0.5);
	rb_metric_observe(wait, 7);
	rb_metric_observe(wait, 45);
	rb_metric_set(temp, 0.1);

	assert_true(rb_metric_value(calls) == 5);
	assert_true(rb_metric_value(wait) == 4);

	text = render();
	assert_string_equal(text,
	                    "# HELP ringbid_calls_total Calls that arrived.\n"
	                    "# TYPE ringbid_calls_total counter\n"
	                    "ringbid_calls_total 5\n"
	                    "# HELP ringbid_agents Agents by state.\n"
	                    "# TYPE ringbid_agents gauge\n"
	                    "ringbid_agents{state=\"available\"} 12\n"
	                    "ringbid_agents{state=\"on_call\"} 3\n"
	                    "# HELP ringbid_answer_delay_seconds Time from arrival to answer.\n"
	                    "# TYPE ringbid_answer_delay_seconds histogram\n"
	                    "ringbid_answer_delay_seconds_bucket{le=\"0.5\"} 2\n"
	                    "ringbid_answer_delay_seconds_bucket{le=\"1\"} 2\n"
	                    "ringbid_answer_delay_seconds_bucket{le=\"20\"} 3\n"
	                    "ringbid_answer_delay_seconds_bucket{le=\"+Inf\"} 4\n"
	                    "ringbid_answer_delay_seconds_sum 52.75\n"
	                    "ringbid_answer_delay_seconds_count 4\n"
	                    "# HELP ringbid_ratio A fraction.\\nSecond line \\\\ here.\n"
	                    "# TYPE ringbid_ratio gauge\n"
	                    "ringbid_ratio 0.1\n");
	free(text);
}

static void test_histogram_with_labels(void **state)
{
	static const double bounds[] = {20, 1, 5, 5, INFINITY};
	rb_metric *a;
	rb_metric *b;
	char *text;

	(void)state;
	// Bounds out of order, repeated, or +Inf are cleaned up: +Inf is always added once.
	a = rb_metrics_histogram("ringbid_db_seconds", "op=\"read\"", "Query time.", bounds, 5);
	b = rb_metrics_histogram("ringbid_db_seconds", "op=\"write\"", "Query time.", bounds, 5);
	rb_metric_observe(a, 2);
	rb_metric_observe(b, 100);
	rb_metric_observe(b, NAN);
	text = render();
	assert_string_equal(text, "# HELP ringbid_db_seconds Query time.\n"
	                          "# TYPE ringbid_db_seconds histogram\n"
	                          "ringbid_db_seconds_bucket{op=\"read\",le=\"1\"} 0\n"
	                          "ringbid_db_seconds_bucket{op=\"read\",le=\"5\"} 1\n"
	                          "ringbid_db_seconds_bucket{op=\"read\",le=\"20\"} 1\n"
	                          "ringbid_db_seconds_bucket{op=\"read\",le=\"+Inf\"} 1\n"
	                          "ringbid_db_seconds_sum{op=\"read\"} 2\n"
	                          "ringbid_db_seconds_count{op=\"read\"} 1\n"
	                          "ringbid_db_seconds_bucket{op=\"write\",le=\"1\"} 0\n"
	                          "ringbid_db_seconds_bucket{op=\"write\",le=\"5\"} 0\n"
	                          "ringbid_db_seconds_bucket{op=\"write\",le=\"20\"} 0\n"
	                          "ringbid_db_seconds_bucket{op=\"write\",le=\"+Inf\"} 1\n"
	                          "ringbid_db_seconds_sum{op=\"write\"} 100\n"
	                          "ringbid_db_seconds_count{op=\"write\"} 1\n");
	free(text);
}

static void test_values_and_reuse(void **state)
{
	rb_metric *g;
	rb_metric *again;
	rb_metric *clash;
	char *text;

	(void)state;
	g = rb_metrics_gauge("ringbid_x", "k=\"v\"", "X.");
	again = rb_metrics_gauge("ringbid_x", "k=\"v\"", "X.");
	assert_ptr_equal(g, again);
	// The same name as another type is kept out of the page rather than breaking it.
	clash = rb_metrics_counter("ringbid_x", NULL, "X.");
	assert_non_null(clash);
	rb_metric_inc(clash);
	assert_true(rb_metric_value(clash) == 1);

	rb_metric_set(g, 1.0 / 3.0);
	text = render();
	assert_string_equal(text, "# HELP ringbid_x X.\n"
	                          "# TYPE ringbid_x gauge\n"
	                          "ringbid_x{k=\"v\"} 0.3333333333333333\n");
	free(text);
	rb_metric_set(g, -2.5e-7);
	text = render();
	assert_non_null(strstr(text, "ringbid_x{k=\"v\"} -2.5e-07\n"));
	free(text);
	rb_metric_set(g, INFINITY);
	text = render();
	assert_non_null(strstr(text, "ringbid_x{k=\"v\"} +Inf\n"));
	free(text);
	rb_metric_set(g, 1e20);
	text = render();
	assert_non_null(strstr(text, "ringbid_x{k=\"v\"} 1e+20\n"));
	free(text);

	// NULL metrics (registration out of memory) are harmless to update.
	rb_metric_inc(NULL);
	rb_metric_set(NULL, 1);
	rb_metric_observe(NULL, 1);
	assert_true(rb_metric_value(NULL) == 0);
}

static void test_empty_registry(void **state)
{
	char *text;

	(void)state;
	text = render();
	assert_string_equal(text, "");
	free(text);
	assert_int_equal(rb_metrics_render(NULL, NULL), RB_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_teardown(test_small_registry_exact, teardown),
	        cmocka_unit_test_teardown(test_histogram_with_labels, teardown),
	        cmocka_unit_test_teardown(test_values_and_reuse, teardown),
	        cmocka_unit_test_teardown(test_empty_registry, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
