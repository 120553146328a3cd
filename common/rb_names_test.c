// Unit tests of the wire enums' names and the outcome table the broker, billing and the CLI share.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rb_names.h"
#include "ringbid.pb-c.h"

static void outcome_kinds_round_trip(void **state)
{
	(void)state;
	static const char *const names[] = {"survey", "resolved", "sale", "qa"};
	for (int k = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY; k <= RINGBID__OUTCOME_KIND__OUTCOME_QA;
	     k++) {
		assert_string_equal(rb_outcome_kind_name(k), names[k - 1]);
		assert_int_equal(rb_outcome_kind_of(names[k - 1]), k);
	}
	assert_null(rb_outcome_kind_name(RINGBID__OUTCOME_KIND__OUTCOME_NONE));
	assert_null(rb_outcome_kind_name(5));
	assert_null(rb_outcome_kind_name(-1));
	assert_int_equal(rb_outcome_kind_of("nps"), RINGBID__OUTCOME_KIND__OUTCOME_NONE);
	assert_int_equal(rb_outcome_kind_of("Survey"), RINGBID__OUTCOME_KIND__OUTCOME_NONE);
	assert_int_equal(rb_outcome_kind_of(""), RINGBID__OUTCOME_KIND__OUTCOME_NONE);
	assert_int_equal(rb_outcome_kind_of(NULL), RINGBID__OUTCOME_KIND__OUTCOME_NONE);
}

static void outcome_ranges(void **state)
{
	(void)state;
	int lo, hi;
	const char *what = NULL;
	assert_true(rb_outcome_range(RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, &lo, &hi, &what));
	assert_int_equal(lo, 1);
	assert_int_equal(hi, 5);
	assert_non_null(strstr(what, "1-5"));
	assert_true(rb_outcome_range(RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, &lo, &hi, &what));
	assert_int_equal(lo, 0);
	assert_int_equal(hi, 1);
	assert_true(rb_outcome_range(RINGBID__OUTCOME_KIND__OUTCOME_SALE, &lo, &hi, &what));
	assert_int_equal(lo, 0);
	assert_int_equal(hi, 1);
	assert_true(rb_outcome_range(RINGBID__OUTCOME_KIND__OUTCOME_QA, &lo, &hi, &what));
	assert_int_equal(lo, 0);
	assert_int_equal(hi, 100);
	assert_false(rb_outcome_range(RINGBID__OUTCOME_KIND__OUTCOME_NONE, &lo, &hi, &what));
	assert_false(rb_outcome_range(9, &lo, &hi, &what));
}

static void state_names(void **state)
{
	(void)state;
	assert_string_equal(rb_agent_state_name(RINGBID__AGENT_STATE__AGENT_WRAP_UP), "WRAP_UP");
	assert_null(rb_agent_state_name(6));
	assert_string_equal(rb_call_state_name(RINGBID__CALL_STATE__CALL_OFFERED), "OFFERED");
	assert_string_equal(rb_disposition_name(RINGBID__DISPOSITION__DISP_OVERFLOW), "overflow");
	assert_string_equal(rb_disposition_name(0), "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(outcome_kinds_round_trip),
	        cmocka_unit_test(outcome_ranges),
	        cmocka_unit_test(state_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
