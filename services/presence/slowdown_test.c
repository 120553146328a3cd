// Unit tests of the login slowdown: window arithmetic, refusal inside the window, reset, expiry.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "rb_err.h"
#include "slowdown.h"

#define S 1000000ULL

static void test_window_arithmetic(void **state)
{
	(void)state;
	// Below the limit there is no window at all.
	assert_int_equal(presence_slowdown_window_us(0, 3), 0);
	assert_int_equal(presence_slowdown_window_us(1, 3), 0);
	assert_int_equal(presence_slowdown_window_us(2, 3), 0);
	// 1 s at the limit, doubling per extra failure.
	assert_int_equal(presence_slowdown_window_us(3, 3), 1 * S);
	assert_int_equal(presence_slowdown_window_us(4, 3), 2 * S);
	assert_int_equal(presence_slowdown_window_us(5, 3), 4 * S);
	assert_int_equal(presence_slowdown_window_us(6, 3), 8 * S);
	assert_int_equal(presence_slowdown_window_us(8, 3), 32 * S);
	// 64 s would be next: capped at 60 s, and it stays there.
	assert_int_equal(presence_slowdown_window_us(9, 3), 60 * S);
	assert_int_equal(presence_slowdown_window_us(40, 3), 60 * S);
	assert_int_equal(presence_slowdown_window_us(UINT32_MAX, 3), 60 * S);
	// Another limit shifts the same curve.
	assert_int_equal(presence_slowdown_window_us(0, 1), 0);
	assert_int_equal(presence_slowdown_window_us(1, 1), 1 * S);
	assert_int_equal(presence_slowdown_window_us(2, 1), 2 * S);
}

static void test_refused_inside_window(void **state)
{
	(void)state;
	presence_slowdown *sd;
	uint64_t wait = 99;
	assert_int_equal(presence_slowdown_new(3, 100, &sd), 0);
	uint64_t t = 1000 * S;

	assert_int_equal(presence_slowdown_check(sd, 42, t, &wait), 0);
	assert_int_equal(wait, 0);
	assert_int_equal(presence_slowdown_fail(sd, 42, t), 0);
	assert_int_equal(presence_slowdown_fail(sd, 42, t), 0);
	// Two failures: still checked at once.
	assert_int_equal(presence_slowdown_check(sd, 42, t, NULL), 0);
	assert_int_equal(presence_slowdown_fail(sd, 42, t), 0);
	assert_int_equal(presence_slowdown_fails(sd, 42), 3);
	// Third failure: 1 s window from the last failure.
	assert_int_equal(presence_slowdown_check(sd, 42, t, &wait), RB_ESLOWDOWN);
	assert_int_equal(wait, 1 * S);
	assert_int_equal(presence_slowdown_check(sd, 42, t + S / 2, &wait), RB_ESLOWDOWN);
	assert_int_equal(wait, S / 2);
	assert_int_equal(presence_slowdown_check(sd, 42, t + S, &wait), 0);
	// Another key is not affected.
	assert_int_equal(presence_slowdown_check(sd, 43, t, NULL), 0);

	// Fourth failure at t+1 s: 2 s window from then.
	assert_int_equal(presence_slowdown_fail(sd, 42, t + S), 0);
	assert_int_equal(presence_slowdown_check(sd, 42, t + 2 * S, &wait), RB_ESLOWDOWN);
	assert_int_equal(wait, 1 * S);
	assert_int_equal(presence_slowdown_check(sd, 42, t + 3 * S - 1, NULL), RB_ESLOWDOWN);
	assert_int_equal(presence_slowdown_check(sd, 42, t + 3 * S, NULL), 0);

	// A success starts afresh.
	presence_slowdown_forget(sd, 42);
	assert_int_equal(presence_slowdown_fails(sd, 42), 0);
	assert_int_equal(presence_slowdown_check(sd, 42, t + 3 * S, NULL), 0);
	presence_slowdown_free(sd);
}

static void test_expiry_and_bound(void **state)
{
	(void)state;
	presence_slowdown *sd;
	assert_int_equal(presence_slowdown_new(3, 3, &sd), 0);
	uint64_t t = 5000 * S;
	presence_slowdown_fail(sd, 1, t);
	presence_slowdown_fail(sd, 2, t + S);
	presence_slowdown_fail(sd, 3, t + 2 * S);
	assert_int_equal(presence_slowdown_count(sd), 3);
	// A failure for key 1 again moves it to the back of the age order.
	presence_slowdown_fail(sd, 1, t + 3 * S);
	// A fourth key drops the stalest one (2), not 1.
	presence_slowdown_fail(sd, 4, t + 4 * S);
	assert_int_equal(presence_slowdown_count(sd), 3);
	assert_int_equal(presence_slowdown_fails(sd, 2), 0);
	assert_int_equal(presence_slowdown_fails(sd, 1), 2);

	// Expiry drops keys idle longer than the keep time, oldest first.
	presence_slowdown_expire(sd, t + 2 * S + PRESENCE_SLOWDOWN_KEEP_US);
	assert_int_equal(presence_slowdown_fails(sd, 3), 0);
	assert_int_equal(presence_slowdown_fails(sd, 1), 2);
	assert_int_equal(presence_slowdown_count(sd), 2);
	presence_slowdown_expire(sd, t + 10 * S + PRESENCE_SLOWDOWN_KEEP_US);
	assert_int_equal(presence_slowdown_count(sd), 0);
	presence_slowdown_free(sd);
	presence_slowdown_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_window_arithmetic),
	        cmocka_unit_test(test_refused_inside_window),
	        cmocka_unit_test(test_expiry_and_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
