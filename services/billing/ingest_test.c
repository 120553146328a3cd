// Unit tests for CDR validation, hashing and the batch parameter.
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_valid_completed), cmocka_unit_test(test_valid_abandoned),
	        cmocka_unit_test(test_refusals),        cmocka_unit_test(test_hash_is_content),
	        cmocka_unit_test(test_batch_json),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
