// Unit tests for CDR and outcome validation, hashing and the batch parameters.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "ingest.h"
#include "rb_names.h"
#include "rb_err.h"

#define T0 1795000000000000ULL // 2026-11-18, UTC microseconds

static Ringbid__Cdr completed(void)
{
	Ringbid__Cdr c = RINGBID__CDR__INIT;

	c.cdr_id = "c1";
	c.call_id = "c1";
	c.program = "sales";
	c.agent_id = 1001;
	c.arrived_us = T0;
	c.offered_us = T0 + 500000;
	c.answered_us = T0 + 2000000;
	c.ended_us = T0 + 2000000 + 61999999; // 61.999999 s of talk: 61 whole seconds
	c.talk_s = 61;
	c.disposition = RINGBID__DISPOSITION__DISP_COMPLETED;
	c.offers = 1;
	return c;
}

static void test_valid_completed(void **state)
{
	Ringbid__Cdr c = completed();

	assert_null(billing_cdr_invalid(&c));
}

static void test_valid_abandoned(void **state)
{
	Ringbid__Cdr c = completed();

	c.disposition = RINGBID__DISPOSITION__DISP_ABANDONED;
	c.agent_id = 0;
	c.answered_us = 0;
	c.talk_s = 0;
	c.ended_us = T0 + 9000000;
	assert_null(billing_cdr_invalid(&c));
}

static void test_refusals(void **state)
{
	Ringbid__Cdr c;

	c = completed();
	c.ended_us = c.answered_us - 1;
	assert_string_equal(billing_cdr_invalid(&c), "ends before it was answered");

	c = completed();
	c.ended_us = c.arrived_us - 1;
	assert_string_equal(billing_cdr_invalid(&c), "ends before it arrived");

	c = completed();
	c.talk_s = 62;
	assert_string_equal(billing_cdr_invalid(&c),
	                    "talk seconds do not match answer and end times");

	c = completed();
	c.ended_us = c.answered_us + 2 * BILLING_MAX_TALK_S * 1000000ULL;
	c.talk_s = 2 * BILLING_MAX_TALK_S;
	assert_string_equal(billing_cdr_invalid(&c), "talk time absurd");

	c = completed();
	c.arrived_us = 5;
	assert_string_equal(billing_cdr_invalid(&c), "arrival or end time out of range");

	c = completed();
	c.agent_id = 0;
	assert_string_equal(billing_cdr_invalid(&c), "completed call without an agent");

	c = completed();
	c.disposition = RINGBID__DISPOSITION__DISP_ABANDONED;
	c.agent_id = 0;
	assert_string_equal(billing_cdr_invalid(&c), "unanswered call with talk time");

	c = completed();
	c.cdr_id = "c2";
	assert_string_equal(billing_cdr_invalid(&c), "cdr id differs from call id");

	c = completed();
	c.program = "sa les";
	assert_string_equal(billing_cdr_invalid(&c), "bad program id");

	c = completed();
	c.disposition = 99;
	assert_string_equal(billing_cdr_invalid(&c), "unknown disposition");

	c = completed();
	c.offered_us = c.ended_us + 1;
	assert_string_equal(billing_cdr_invalid(&c), "offer time outside the call");
}

static void test_hash_is_content(void **state)
{
	Ringbid__Cdr a = completed(), b = completed();
	char ha[65], hb[65];

	assert_int_equal(billing_cdr_hash(&a, ha), 0);
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_equal(ha, hb);
	assert_int_equal(strlen(ha), 64);
	b.sale = true;
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_not_equal(ha, hb);
	// Resolution is content too: a resend that flips it is a conflict, not a resend.
	b = completed();
	b.resolved = true;
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_not_equal(ha, hb);
}

static void test_batch_json(void **state)
{
	Ringbid__Cdr a = completed(), bad = completed();
	Ringbid__Cdr *list[2] = {&a, &bad};
	json_error_t jerr;
	char *text = NULL;
	json_t *arr, *o;

	a.sale = true;
	a.resolved = true;
	bad.cdr_id = "c9";
	bad.call_id = "c9";
	bad.ended_us = bad.arrived_us - 10;
	assert_int_equal(billing_batch_json(list, 2, &text), 0);
	arr = json_loads(text, 0, &jerr);
	assert_non_null(arr);
	assert_int_equal(json_array_size(arr), 2);
	o = json_array_get(arr, 0);
	assert_string_equal(json_string_value(json_object_get(o, "cdr_id")), "c1");
	// Microsecond times survive exactly (a double of seconds would not).
	assert_true((uint64_t)json_integer_value(json_object_get(o, "ended_us")) == a.ended_us);
	assert_int_equal(json_integer_value(json_object_get(o, "talk_s")), 61);
	assert_string_equal(json_string_value(json_object_get(o, "disposition")), "completed");
	assert_true(json_is_null(json_object_get(o, "reason")));
	assert_true(json_is_true(json_object_get(o, "sale")));
	assert_true(json_is_true(json_object_get(o, "resolved")));
	assert_true(json_is_false(json_object_get(o, "review")));
	o = json_array_get(arr, 1);
	assert_true(json_is_false(json_object_get(o, "resolved")));
	assert_string_equal(json_string_value(json_object_get(o, "reason")),
	                    "ends before it arrived");
	json_decref(arr);
	free(text);
}

static void test_offer_log(void **state)
{
	Ringbid__Cdr c = completed();
	Ringbid__CdrOffer o1 = RINGBID__CDR_OFFER__INIT, o2 = RINGBID__CDR_OFFER__INIT;
	Ringbid__CdrOffer *log[2] = {&o1, &o2};
	Ringbid__CdrOffer *many[BILLING_MAX_OFFER_LOG + 1];

	o1.agent_id = 1002;
	o1.offered_us = T0 + 100000;
	o1.result = RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED;
	o2.agent_id = 1001;
	o2.offered_us = T0 + 500000;
	o2.result = RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED;
	c.offers = 2;
	c.n_offer_log = 2;
	c.offer_log = log;
	assert_null(billing_cdr_invalid(&c));

	o1.agent_id = 0;
	assert_string_equal(billing_cdr_invalid(&c), "offer log: bad agent id");
	o1.agent_id = 1002;
	o1.offered_us = T0 - 1;
	assert_string_equal(billing_cdr_invalid(&c), "offer log: offer time outside the call");
	o1.offered_us = c.ended_us + 1;
	assert_string_equal(billing_cdr_invalid(&c), "offer log: offer time outside the call");
	o1.offered_us = T0 + 100000;
	o1.result = 9;
	assert_string_equal(billing_cdr_invalid(&c), "offer log: unknown offer result");
	o1.result = RINGBID__OFFER_RESULT_CODE__OFFER_REFUSED;
	assert_null(billing_cdr_invalid(&c));

	for (size_t i = 0; i < BILLING_MAX_OFFER_LOG + 1; i++)
		many[i] = &o2;
	c.offer_log = many;
	c.n_offer_log = BILLING_MAX_OFFER_LOG;
	assert_null(billing_cdr_invalid(&c));
	c.n_offer_log = BILLING_MAX_OFFER_LOG + 1;
	assert_string_equal(billing_cdr_invalid(&c), "offer log longer than 64 offers");
}

static void test_hash_covers_exploration_and_offers(void **state)
{
	Ringbid__Cdr a = completed(), b = completed();
	Ringbid__CdrOffer o = RINGBID__CDR_OFFER__INIT;
	Ringbid__CdrOffer *log[1] = {&o};
	char ha[65], hb[65];

	assert_int_equal(billing_cdr_hash(&a, ha), 0);
	b.exploratory = true;
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_not_equal(ha, hb);
	b = completed();
	o.agent_id = 1001;
	o.offered_us = T0 + 500000;
	b.n_offer_log = 1;
	b.offer_log = log;
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_not_equal(ha, hb);
	// an older broker's CDR (neither field) hashes as it always did: its resends stay resends
	b = completed();
	assert_int_equal(billing_cdr_hash(&b, hb), 0);
	assert_string_equal(ha, hb);
}

static void test_batch_json_offers(void **state)
{
	Ringbid__Cdr a = completed(), old = completed();
	Ringbid__CdrOffer o1 = RINGBID__CDR_OFFER__INIT, o2 = RINGBID__CDR_OFFER__INIT;
	Ringbid__CdrOffer *log[2] = {&o1, &o2};
	Ringbid__Cdr *list[2] = {&a, &old};
	json_error_t jerr;
	char *text = NULL;
	json_t *arr, *o, *offers, *e;

	o1.agent_id = 1002;
	o1.offered_us = T0 + 100000;
	o1.result = RINGBID__OFFER_RESULT_CODE__OFFER_TIMEOUT;
	o2.agent_id = 1001;
	o2.offered_us = T0 + 500000;
	o2.result = RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED;
	a.exploratory = true;
	a.n_offer_log = 2;
	a.offer_log = log;
	old.cdr_id = "c2";
	old.call_id = "c2";
	assert_int_equal(billing_batch_json(list, 2, &text), 0);
	arr = json_loads(text, 0, &jerr);
	assert_non_null(arr);
	o = json_array_get(arr, 0);
	assert_true(json_is_true(json_object_get(o, "exploratory")));
	offers = json_object_get(o, "offer_log");
	assert_int_equal(json_array_size(offers), 2);
	e = json_array_get(offers, 0);
	assert_int_equal(json_integer_value(json_object_get(e, "agent_id")), 1002);
	assert_true((uint64_t)json_integer_value(json_object_get(e, "offered_us")) == T0 + 100000);
	assert_string_equal(json_string_value(json_object_get(e, "result")), "timeout");
	e = json_array_get(offers, 1);
	assert_string_equal(json_string_value(json_object_get(e, "result")), "accepted");
	// the count of offers stays a number of its own
	assert_int_equal(json_integer_value(json_object_get(o, "offers")), 1);
	o = json_array_get(arr, 1);
	assert_true(json_is_false(json_object_get(o, "exploratory")));
	assert_int_equal(json_array_size(json_object_get(o, "offer_log")), 0);
	json_decref(arr);
	free(text);
}

static Ringbid__Outcome outcome(int kind, int value, const char *reviewer)
{
	Ringbid__Outcome o = RINGBID__OUTCOME__INIT;

	o.call_id = "c1";
	o.kind = kind;
	o.value = value;
	o.reviewer = (char *)(reviewer ? reviewer : "");
	o.recorded_us = T0;
	return o;
}

static int check(Ringbid__Outcome *o, size_t n, char *why, size_t why_n)
{
	Ringbid__Outcome *list[BILLING_MAX_OUTCOMES + 1];

	for (size_t i = 0; i < n; i++)
		list[i] = &o[i];
	return billing_outcomes_check(list, n, T0 + 60 * 1000000ULL, why, why_n);
}

static void test_outcomes_check(void **state)
{
	Ringbid__Outcome o[BILLING_MAX_OUTCOMES + 1];
	char why[256];

	o[0] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 5, NULL);
	o[1] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, 1, NULL);
	o[2] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_SALE, 0, NULL);
	o[3] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_QA, 100, "sup-7");
	o[4] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_QA, 0, "sup-8");
	assert_int_equal(check(o, 5, why, sizeof(why)), 0);
	assert_string_equal(why, "");

	o[0].value = 0;
	assert_int_equal(check(o, 5, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "survey score must be 1-5 (got 0)");
	o[0].value = 6;
	assert_int_equal(check(o, 1, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "survey score must be 1-5 (got 6)");
	o[0].value = 3;

	o[1].value = 2;
	assert_int_equal(check(o, 2, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "resolved must be 0 or 1 (got 2)");
	o[1].value = 1;
	o[2].value = -1;
	assert_int_equal(check(o, 3, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "sale must be 0 or 1 (got -1)");
	o[2].value = 1;

	o[3].value = 101;
	assert_int_equal(check(o, 4, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "QA score must be 0-100 (got 101)");
	o[3].value = 90;
	o[3].reviewer = "";
	assert_int_equal(check(o, 4, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "a QA review needs a reviewer id (1-64 of A-Z a-z 0-9 . _ : -)");
	o[3].reviewer = "bad reviewer";
	assert_int_equal(check(o, 4, why, sizeof(why)), RB_EINVAL);
	o[3].reviewer = "sup-7";
	o[0].reviewer = "sup-7";
	assert_int_equal(check(o, 4, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "only a QA review has a reviewer (survey has one)");
	o[0].reviewer = "";

	o[1].kind = 9;
	assert_int_equal(check(o, 2, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "outcome 2: unknown kind 9 (survey, resolved, sale, qa)");
	o[1].kind = RINGBID__OUTCOME_KIND__OUTCOME_NONE;
	assert_int_equal(check(o, 2, why, sizeof(why)), RB_EINVAL);
	o[1].kind = RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED;

	o[2].call_id = "c2";
	assert_int_equal(check(o, 3, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(
	        why, "outcome 3: all outcomes of one request must be for one call (c1 and c2)");
	o[2].call_id = "c1";
	o[0].call_id = "c 1";
	assert_int_equal(check(o, 3, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why, "outcome 1: bad call id");
	o[0].call_id = NULL;
	assert_int_equal(check(o, 3, why, sizeof(why)), RB_EINVAL);
	o[0].call_id = "c1";

	// recorded time: 0 means now; else within 400 days back and 5 minutes ahead
	o[0].recorded_us = 0;
	assert_int_equal(check(o, 1, why, sizeof(why)), 0);
	o[0].recorded_us = T0 + 60 * 1000000ULL + BILLING_OUTCOME_FUTURE_US;
	assert_int_equal(check(o, 1, why, sizeof(why)), 0);
	o[0].recorded_us++;
	assert_int_equal(check(o, 1, why, sizeof(why)), RB_EINVAL);
	assert_string_equal(why,
	                    "outcome 1: recorded time is more than 400 days ago or in the future");
	o[0].recorded_us = T0 + 60 * 1000000ULL - BILLING_OUTCOME_PAST_US;
	assert_int_equal(check(o, 1, why, sizeof(why)), 0);
	o[0].recorded_us--;
	assert_int_equal(check(o, 1, why, sizeof(why)), RB_EINVAL);
	o[0].recorded_us = UINT64_MAX;
	assert_int_equal(check(o, 1, why, sizeof(why)), RB_EINVAL);
	o[0].recorded_us = T0;

	for (size_t i = 0; i < BILLING_MAX_OUTCOMES + 1; i++)
		o[i] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_QA, 50, "sup-1");
	assert_int_equal(check(o, BILLING_MAX_OUTCOMES, why, sizeof(why)), 0);
	assert_int_equal(check(o, BILLING_MAX_OUTCOMES + 1, why, sizeof(why)), RB_ETOOBIG);
	assert_string_equal(why, "at most 16 outcomes per request (got 17)");
	assert_int_equal(check(o, 0, why, sizeof(why)), RB_EINVAL);
	// a short buffer still gets a terminated reason
	o[0].value = 101;
	assert_int_equal(check(o, 1, why, 8), RB_EINVAL);
	assert_string_equal(why, "QA scor");
}

static void test_outcomes_json(void **state)
{
	Ringbid__Outcome o[2];
	Ringbid__Outcome *list[2] = {&o[0], &o[1]};
	json_error_t jerr;
	char *text = NULL;
	json_t *arr, *e;

	o[0] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, 4, NULL);
	o[0].recorded_us = 0;
	o[0].call_known = true;
	o[1] = outcome(RINGBID__OUTCOME_KIND__OUTCOME_QA, 85, "sup-7");
	assert_int_equal(billing_outcomes_json(list, 2, &text), 0);
	arr = json_loads(text, 0, &jerr);
	assert_non_null(arr);
	assert_int_equal(json_array_size(arr), 2);
	e = json_array_get(arr, 0);
	assert_string_equal(json_string_value(json_object_get(e, "call_id")), "c1");
	assert_string_equal(json_string_value(json_object_get(e, "kind")), "survey");
	assert_int_equal(json_integer_value(json_object_get(e, "value")), 4);
	assert_string_equal(json_string_value(json_object_get(e, "reviewer")), "");
	assert_int_equal(json_integer_value(json_object_get(e, "recorded_us")), 0);
	assert_true(json_is_true(json_object_get(e, "call_known")));
	e = json_array_get(arr, 1);
	assert_string_equal(json_string_value(json_object_get(e, "kind")), "qa");
	assert_string_equal(json_string_value(json_object_get(e, "reviewer")), "sup-7");
	assert_true((uint64_t)json_integer_value(json_object_get(e, "recorded_us")) == T0);
	assert_true(json_is_false(json_object_get(e, "call_known")));
	json_decref(arr);
	free(text);
}

static void test_outcome_names_and_refusals(void **state)
{
	for (int k = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY; k <= RINGBID__OUTCOME_KIND__OUTCOME_QA;
	     k++)
		assert_int_equal(rb_outcome_kind_of(rb_outcome_kind_name(k)), k);
	assert_null(rb_outcome_kind_name(0));
	assert_null(rb_outcome_kind_name(5));
	assert_int_equal(rb_outcome_kind_of("nps"), RINGBID__OUTCOME_KIND__OUTCOME_NONE);
	assert_int_equal(rb_outcome_kind_of(NULL), RINGBID__OUTCOME_KIND__OUTCOME_NONE);

	assert_int_equal(billing_outcome_refusal("P0002"), RB_ENOTFOUND);
	assert_int_equal(billing_outcome_refusal("23505"), RB_ECONFLICT);
	assert_int_equal(billing_outcome_refusal("22023"), RB_EINVAL);
	assert_int_equal(billing_outcome_refusal("23514"), RB_EINVAL);
	// the database itself failing is no refusal: the broker sends again
	assert_int_equal(billing_outcome_refusal("57P01"), 0);
	assert_int_equal(billing_outcome_refusal("40001"), 0);
	assert_int_equal(billing_outcome_refusal(""), 0);
	assert_int_equal(billing_outcome_refusal(NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_valid_completed),
	        cmocka_unit_test(test_valid_abandoned),
	        cmocka_unit_test(test_refusals),
	        cmocka_unit_test(test_hash_is_content),
	        cmocka_unit_test(test_batch_json),
	        cmocka_unit_test(test_offer_log),
	        cmocka_unit_test(test_hash_covers_exploration_and_offers),
	        cmocka_unit_test(test_batch_json_offers),
	        cmocka_unit_test(test_outcomes_check),
	        cmocka_unit_test(test_outcomes_json),
	        cmocka_unit_test(test_outcome_names_and_refusals),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
