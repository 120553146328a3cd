// Tests for `ringbid outcome` option checks and the JSON and text of scores and the lift report.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_err.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

// 2023-11-14T22:13:20Z
#define NOW_US 1700000000000000ull

static int parse(cli_outcome_req *req, char *err, size_t errlen, int argc, ...)
{
	char *argv[16];
	va_list ap;

	va_start(ap, argc);
	for (int i = 0; i < argc; i++)
		argv[i] = va_arg(ap, char *);
	va_end(ap);
	return cli_outcome_parse(argc, argv, NOW_US, req, err, errlen);
}

static void test_outcome_all_kinds(void **state)
{
	cli_outcome_req req;
	char err[256];

	(void)state;
	assert_int_equal(parse(&req, err, sizeof err, 11, "c1", "--survey", "4", "--resolved",
	                       "yes", "--sale", "no", "--qa", "87", "--reviewer", "sup-7"),
	                 0);
	assert_string_equal(req.call_id, "c1");
	assert_false(req.json);
	assert_int_equal(req.n, 4);
	assert_int_equal(req.items[0].kind, RINGBID__OUTCOME_KIND__OUTCOME_SURVEY);
	assert_int_equal(req.items[0].value, 4);
	assert_string_equal(req.items[0].reviewer, "");
	assert_int_equal(req.items[1].kind, RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED);
	assert_int_equal(req.items[1].value, 1);
	assert_int_equal(req.items[2].kind, RINGBID__OUTCOME_KIND__OUTCOME_SALE);
	assert_int_equal(req.items[2].value, 0);
	assert_int_equal(req.items[3].kind, RINGBID__OUTCOME_KIND__OUTCOME_QA);
	assert_int_equal(req.items[3].value, 87);
	assert_string_equal(req.items[3].reviewer, "sup-7");
	for (size_t i = 0; i < req.n; i++) {
		assert_string_equal(req.items[i].call_id, "c1");
		assert_int_equal(req.items[i].recorded_us, 0); // the broker sets now
		assert_false(req.items[i].call_known);         // only the broker says so
	}
}

static void test_outcome_edges_and_time(void **state)
{
	cli_outcome_req req;
	char err[256];

	(void)state;
	assert_int_equal(parse(&req, err, sizeof err, 3, "c2", "--survey", "1"), 0);
	assert_int_equal(req.items[0].value, 1);
	assert_int_equal(
	        parse(&req, err, sizeof err, 4, "c2", "--survey=5", "--at", "2023-11-14T10:00:00Z"),
	        0);
	assert_int_equal(req.n, 1);
	assert_int_equal(req.items[0].value, 5);
	assert_int_equal(req.items[0].recorded_us,
	                 NOW_US - (12 * 3600 + 13 * 60 + 20) * 1000000ull);
	assert_int_equal(
	        parse(&req, err, sizeof err, 6, "--json", "--qa", "0", "--reviewer", "r", "c3"), 0);
	assert_true(req.json);
	assert_int_equal(req.items[0].value, 0);
	assert_int_equal(parse(&req, err, sizeof err, 5, "c3", "--qa", "100", "--reviewer", "r"),
	                 0);
	assert_int_equal(req.items[0].value, 100);
	// Four minutes ahead is clock skew; 399 days back is a late review.
	assert_int_equal(parse(&req, err, sizeof err, 5, "c4", "--sale", "yes", "--at",
	                       "2023-11-14T22:17:20Z"),
	                 0);
	assert_int_equal(parse(&req, err, sizeof err, 5, "c4", "--sale", "yes", "--at",
	                       "2022-10-12T00:00:00Z"),
	                 0);
}

static void test_outcome_refusals(void **state)
{
	static const struct {
		int argc;
		const char *argv[8];
		const char *reason;
	} cases[] = {
	        {3, {"c1", "--survey", "0"}, "survey score must be 1-5"},
	        {3, {"c1", "--survey", "6"}, "survey score must be 1-5"},
	        {3, {"c1", "--survey", "4.5"}, "survey score must be 1-5"},
	        {3, {"c1", "--survey", ""}, "survey score must be 1-5"},
	        {5, {"c1", "--qa", "101", "--reviewer", "r"}, "QA score must be 0-100"},
	        {5, {"c1", "--qa", "-1", "--reviewer", "r"}, "QA score must be 0-100"},
	        {3, {"c1", "--qa", "50"}, "--qa needs --reviewer"},
	        {5, {"c1", "--qa", "50", "--reviewer", "bad id"}, "bad reviewer"},
	        {5, {"c1", "--survey", "3", "--reviewer", "r"}, "--reviewer goes with --qa"},
	        {3, {"c1", "--resolved", "maybe"}, "--resolved must be yes or no"},
	        {3, {"c1", "--sale", "1"}, "--sale must be yes or no"},
	        {1, {"c1"}, "nothing to record"},
	        {2, {"--survey", "3"}, "expected a CALL_ID"},
	        {4, {"c1", "c2", "--survey", "3"}, "unexpected argument"},
	        {3, {"bad/id", "--survey", "3"}, "bad call id"},
	        {5, {"c1", "--survey", "3", "--at", "yesterday"}, "bad time"},
	        {5, {"c1", "--survey", "3", "--at", "2023-11-14T22:19:00Z"}, "in the future"},
	        {5, {"c1", "--survey", "3", "--at", "2022-10-09T00:00:00Z"}, "400 days"},
	        {5, {"c1", "--survey", "3", "--survey", "4"}, "given twice"},
	        {3, {"c1", "--nps", "9"}, "unknown option"},
	};
	cli_outcome_req req;
	char err[256];

	(void)state;
	for (size_t i = 0; i < N(cases); i++) {
		char *argv[8];

		for (int k = 0; k < cases[i].argc; k++)
			argv[k] = (char *)cases[i].argv[k];
		err[0] = '\0';
		assert_int_equal(
		        cli_outcome_parse(cases[i].argc, argv, NOW_US, &req, err, sizeof err),
		        RB_EINVAL);
		if (!strstr(err, cases[i].reason))
			fail_msg("case %zu: '%s' does not say '%s'", i, err, cases[i].reason);
	}
	{
		char *argv[] = {"c1", "--help"};

		assert_int_equal(cli_outcome_parse(2, argv, NOW_US, &req, err, sizeof err),
		                 CLI_ARGS_HELP);
	}
}

static void test_outcome_json(void **state)
{
	cli_outcome_req req;
	Ringbid__CallReply reply = RINGBID__CALL_REPLY__INIT;
	Ringbid__OutcomeAck a1 = RINGBID__OUTCOME_ACK__INIT, a2 = RINGBID__OUTCOME_ACK__INIT;
	Ringbid__OutcomeAck *acks[] = {&a1, &a2};
	char err[256], *text;
	json_t *j;

	(void)state;
	assert_int_equal(parse(&req, err, sizeof err, 7, "c9", "--survey", "3", "--qa", "70",
	                       "--reviewer", "sup1"),
	                 0);
	// The acks come back in request order; the second one is a repeat.
	a1.call_id = "c9";
	a1.kind = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY;
	a2.call_id = "c9";
	a2.kind = RINGBID__OUTCOME_KIND__OUTCOME_QA;
	a2.reviewer = "sup1";
	a2.duplicate = true;
	reply.outcomes = acks;
	reply.n_outcomes = 2;
	j = cli_outcome_json(&req, &reply);
	text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	assert_string_equal(text, "{\"call_id\":\"c9\",\"outcomes\":["
	                          "{\"kind\":\"survey\",\"value\":3,\"reviewer\":\"\","
	                          "\"duplicate\":false},"
	                          "{\"kind\":\"qa\",\"value\":70,\"reviewer\":\"sup1\","
	                          "\"duplicate\":true}]}");
	free(text);
	json_decref(j);

	// Acks in another order still land on the outcome they are about.
	acks[0] = &a2;
	acks[1] = &a1;
	j = cli_outcome_json(&req, &reply);
	assert_true(json_is_false(
	        json_object_get(json_array_get(json_object_get(j, "outcomes"), 0), "duplicate")));
	assert_true(json_is_true(
	        json_object_get(json_array_get(json_object_get(j, "outcomes"), 1), "duplicate")));
	json_decref(j);
	assert_string_equal(cli_outcome_kind_name(RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED),
	                    "resolved");
	assert_string_equal(cli_outcome_kind_name(RINGBID__OUTCOME_KIND__OUTCOME_SALE), "sale");
	assert_string_equal(cli_outcome_kind_name(RINGBID__OUTCOME_KIND__OUTCOME_NONE), "");
	assert_string_equal(cli_outcome_kind_name(99), "");
}

// What f printed, as a string the caller frees.
static char *capture(void (*fn)(FILE *, const void *), const void *arg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	fn(f, arg);
	fclose(f);
	return buf;
}

static const char parts_json[] =
        "[{\"part\":\"satisfaction\",\"raw\":4.5,\"normalised\":0.875,\"weight\":0.15,\"n\":12},"
        "{\"part\":\"qa\",\"raw\":80,\"normalised\":0.8,\"weight\":0.15,\"n\":3},"
        "{\"part\":\"resolution\",\"raw\":0.75,\"normalised\":0.75,\"weight\":0.25,\"n\":24},"
        "{\"part\":\"answer_rate\",\"raw\":null,\"normalised\":null,\"weight\":0.15,\"n\":0},"
        "{\"part\":\"handle_time\",\"raw\":212.5,\"normalised\":1,\"weight\":0.15,\"n\":24}]";

static void print_scores(FILE *f, const void *arg)
{
	cli_agent_scores_print(f, arg);
}

static void test_agent_scores(void **state)
{
	const cli_score_row rows[] = {
	        {"", "82.35", false, 24, "[]", "2026-10-24T00:00:00Z", "2026-11-23T00:00:00Z",
	         "2026-11-23T00:00:05Z"},
	        {"sales", "85.10", false, 24, parts_json, "2026-10-24T00:00:00Z",
	         "2026-11-23T00:00:00Z", "2026-11-23T00:00:05Z"},
	        {"support", "50.00", true, 2, "[]", "2026-10-24T00:00:00Z", "2026-11-23T00:00:00Z",
	         "2026-11-23T00:00:05Z"},
	};
	cli_agent_scores s = {1001, "Amara Okafor", "82.35", false, rows, N(rows)};
	json_t *j, *p;
	char *text;

	(void)state;
	j = cli_agent_scores_json(&s);
	assert_int_equal(json_integer_value(json_object_get(j, "agent_id")), 1001);
	assert_string_equal(json_string_value(json_object_get(j, "name")), "Amara Okafor");
	assert_true(json_real_value(json_object_get(j, "score")) == 82.35);
	assert_true(json_is_false(json_object_get(j, "pinned")));
	assert_true(json_real_value(json_object_get(json_object_get(j, "overall"), "score")) ==
	            82.35);
	assert_int_equal(json_array_size(json_object_get(j, "programs")), 2);
	p = json_array_get(json_object_get(j, "programs"), 0);
	assert_string_equal(json_string_value(json_object_get(p, "program")), "sales");
	assert_true(json_is_false(json_object_get(p, "provisional")));
	assert_int_equal(json_integer_value(json_object_get(p, "calls")), 24);
	assert_int_equal(json_array_size(json_object_get(p, "parts")), 5);
	assert_true(json_real_value(json_object_get(json_array_get(json_object_get(p, "parts"), 0),
	                                            "normalised")) == 0.875);
	assert_true(json_is_null(
	        json_object_get(json_array_get(json_object_get(p, "parts"), 3), "raw")));
	assert_string_equal(json_string_value(json_object_get(p, "window_end")),
	                    "2026-11-23T00:00:00Z");
	p = json_array_get(json_object_get(j, "programs"), 1);
	assert_true(json_is_true(json_object_get(p, "provisional")));
	json_decref(j);

	// jsonb's own key order is put back in reading order; 0.3 stays 0.3.
	{
		const cli_score_row jsonb_row[] = {
		        {"", "61.25", false, 2,
		         "[{\"n\": 2, \"raw\": 3.5, \"part\": \"satisfaction\", \"extra\": 1, "
		         "\"weight\": 0.3, \"program\": \"sales\", \"normalised\": 0.625}]",
		         NULL, NULL, NULL},
		};
		cli_agent_scores one = {7, "A", "61.25", false, jsonb_row, 1};

		j = cli_agent_scores_json(&one);
		text = json_dumps(json_object_get(json_object_get(j, "overall"), "parts"),
		                  JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
		assert_string_equal(text, "[{\"part\":\"satisfaction\",\"program\":\"sales\","
		                          "\"raw\":3.5,\"normalised\":0.625,\"weight\":0.3,"
		                          "\"n\":2,\"extra\":1}]");
		assert_true(json_is_null(
		        json_object_get(json_object_get(j, "overall"), "window_start")));
		free(text);
		json_decref(j);
	}

	text = capture(print_scores, &s);
	assert_non_null(strstr(text, "agent 1001 (Amara Okafor)"));
	assert_non_null(strstr(text, "score    82.35, computed from outcomes"));
	assert_non_null(strstr(text, "window   2026-10-24T00:00:00Z to 2026-11-23T00:00:00Z"));
	assert_non_null(strstr(text, "program sales  85.10 from 24 calls\n"));
	assert_non_null(strstr(text, "  satisfaction         4.50       0.875   0.150     12\n"));
	assert_non_null(strstr(text, "  handle_time       212.5 s       1.000   0.150     24\n"));
	assert_non_null(strstr(text, "answer_rate             -           -   0.150      0  no "
	                             "data: left out\n"));
	assert_non_null(strstr(text, "program support  50.00 from 2 calls: provisional"));
	free(text);

	// Pinned: said plainly, with the way back.
	s.pinned = true;
	s.score = "96.00";
	text = capture(print_scores, &s);
	assert_non_null(strstr(text, "score    96.00, pinned by a supervisor"));
	assert_non_null(strstr(text, "--score auto"));
	assert_non_null(strstr(text, "not used while the score is pinned"));
	free(text);
	j = cli_agent_scores_json(&s);
	assert_true(json_is_true(json_object_get(j, "pinned")));
	json_decref(j);

	// Nothing computed yet.
	s.pinned = false;
	s.nrows = 0;
	text = capture(print_scores, &s);
	assert_non_null(strstr(text, "no score computed yet"));
	free(text);
	j = cli_agent_scores_json(&s);
	assert_true(json_is_null(json_object_get(j, "overall")));
	assert_int_equal(json_array_size(json_object_get(j, "programs")), 0);
	json_decref(j);
}

typedef struct lift_args {
	const cli_lift_group *a, *e;
} lift_args;

static void print_lift(FILE *f, const void *arg)
{
	const lift_args *l = arg;

	cli_lift_print(f, "sales", 30, l->a, l->e);
}

static void test_lift(void **state)
{
	const cli_lift_group auction = {80, 40, "4.20", "0.7500", "0.1000", "123.4"};
	const cli_lift_group explore = {20, 10, "3.90", "0.6000", "0.0500", "140.0"};
	const cli_lift_group none = {0, 0, NULL, NULL, NULL, NULL};
	lift_args args = {&auction, &explore};
	json_t *j, *lift;
	char *text;

	(void)state;
	j = cli_lift_json("sales", 30, &auction, &explore);
	assert_string_equal(json_string_value(json_object_get(j, "program")), "sales");
	assert_int_equal(json_integer_value(json_object_get(j, "days")), 30);
	assert_int_equal(
	        json_integer_value(json_object_get(json_object_get(j, "auction"), "calls")), 80);
	assert_int_equal(
	        json_integer_value(json_object_get(json_object_get(j, "exploration"), "surveyed")),
	        10);
	assert_true(json_real_value(json_object_get(json_object_get(j, "auction"),
	                                            "resolved_share")) == 0.75);
	lift = json_object_get(j, "lift");
	assert_true(fabs(json_real_value(json_object_get(lift, "satisfaction")) - 0.30) < 1e-9);
	assert_true(fabs(json_real_value(json_object_get(lift, "resolved_share")) - 0.15) < 1e-9);
	assert_true(fabs(json_real_value(json_object_get(lift, "avg_handle_s")) + 16.6) < 1e-9);
	json_decref(j);

	text = capture(print_lift, &args);
	assert_non_null(
	        strstr(text, "program sales: completed calls answered in the last 30 days"));
	assert_non_null(strstr(text, "auction           80        40          4.20    75.0 %"));
	assert_non_null(strstr(text, "exploration       20        10          3.90    60.0 %"));
	assert_non_null(strstr(text, "+0.30  +15.0 pt   +5.0 pt     -16.6 s"));
	assert_null(strstr(text, "no exploratory calls"));
	free(text);

	// No exploratory call: its averages are null, so is the lift, and the report says why.
	j = cli_lift_json("sales", 7, &auction, &none);
	assert_int_equal(
	        json_integer_value(json_object_get(json_object_get(j, "exploration"), "calls")), 0);
	assert_true(
	        json_is_null(json_object_get(json_object_get(j, "exploration"), "satisfaction")));
	assert_true(json_is_null(json_object_get(json_object_get(j, "lift"), "satisfaction")));
	json_decref(j);
	args.e = &none;
	text = capture(print_lift, &args);
	assert_non_null(strstr(text, "no exploratory calls in the window"));
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_outcome_all_kinds),
	        cmocka_unit_test(test_outcome_edges_and_time),
	        cmocka_unit_test(test_outcome_refusals),
	        cmocka_unit_test(test_outcome_json),
	        cmocka_unit_test(test_agent_scores),
	        cmocka_unit_test(test_lift),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
