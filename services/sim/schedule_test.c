// Tests for the seeded random numbers and the call schedule: repeatable, and drawn as asked.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "rb_err.h"
#include "rng.h"
#include "schedule.h"

static sim_schedule_params params(uint64_t seed)
{
	return (sim_schedule_params){
	        .seed = seed,
	        .rate_per_s = 5,
	        .duration_ms = 200000,
	        .nprograms = 2,
	        .talk_dist = SIM_DIST_EXP,
	        .talk_mean_s = 240,
	        .patience_mean_s = 120,
	        .survey_rate = 0.5,
	};
}

static void test_rng_repeats_and_streams_differ(void **state)
{
	sim_rng a, b, c;
	(void)state;

	sim_rng_seed(&a, 42, 1);
	sim_rng_seed(&b, 42, 1);
	sim_rng_seed(&c, 42, 2);
	int same_c = 0;
	for (int i = 0; i < 1000; i++) {
		uint64_t x = sim_rng_next(&a), y = sim_rng_next(&b), z = sim_rng_next(&c);
		assert_int_equal(x, y);
		same_c += x == z;
	}
	assert_true(same_c < 2);
	for (int i = 0; i < 10000; i++) {
		double u = sim_rng_uniform(&a);
		assert_true(u >= 0.0 && u < 1.0);
	}
}

static void test_distribution_means(void **state)
{
	sim_rng r;
	double sum_exp = 0, sum_ln = 0;
	const int n = 200000;
	(void)state;

	sim_rng_seed(&r, 7, 3);
	for (int i = 0; i < n; i++) {
		sum_exp += sim_rng_exp(&r, 240);
		sum_ln += sim_rng_lognormal(&r, 240, 0.8);
	}
	assert_true(sum_exp / n > 236 && sum_exp / n < 244);
	assert_true(sum_ln / n > 234 && sum_ln / n < 246);
	assert_true(sim_rng_exp(&r, 0) == 0);
}

static void test_schedule_same_seed_same_digest(void **state)
{
	sim_schedule_params p = params(1234);
	sim_arrival *a = NULL, *b = NULL, *c = NULL;
	size_t na, nb, nc;
	char da[17], db[17], dc[17];
	(void)state;

	assert_int_equal(sim_schedule_build(&p, &a, &na), 0);
	assert_int_equal(sim_schedule_build(&p, &b, &nb), 0);
	p.seed = 1235;
	assert_int_equal(sim_schedule_build(&p, &c, &nc), 0);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na * sizeof(*a));
	sim_schedule_digest(a, na, da);
	sim_schedule_digest(b, nb, db);
	sim_schedule_digest(c, nc, dc);
	assert_string_equal(da, db);
	assert_string_not_equal(da, dc);
	assert_int_equal(strlen(da), 16);
	free(a);
	free(b);
	free(c);
}

static void test_schedule_shape(void **state)
{
	sim_schedule_params p = params(99);
	sim_arrival *a = NULL;
	size_t n;
	double talk = 0;
	unsigned per_prog[2] = {0, 0}, surveys = 0;
	(void)state;

	assert_int_equal(sim_schedule_build(&p, &a, &n), 0);
	// 5 calls/s for 200 s: 1000 expected, Poisson spread about 32.
	assert_true(n > 880 && n < 1120);
	for (size_t i = 0; i < n; i++) {
		assert_true(a[i].at_ms < p.duration_ms);
		if (i > 0)
			assert_true(a[i].at_ms >= a[i - 1].at_ms);
		assert_true(a[i].program < 2);
		assert_true(a[i].talk_sim_ms >= 1000 && a[i].patience_sim_ms >= 1000);
		per_prog[a[i].program]++;
		surveys += a[i].survey;
		talk += (double)a[i].talk_sim_ms / 1000.0;
	}
	assert_true(talk / (double)n > 200 && talk / (double)n < 280);
	assert_true(per_prog[0] > n / 3 && per_prog[1] > n / 3);
	assert_true(surveys > n / 3 && surveys < 2 * n / 3);
	free(a);

	// A cap on the number of calls, and fixed talk times.
	p.max_calls = 10;
	p.talk_dist = SIM_DIST_FIXED;
	assert_int_equal(sim_schedule_build(&p, &a, &n), 0);
	assert_int_equal(n, 10);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(a[i].talk_sim_ms, 240000);
	free(a);
}

static void test_schedule_refuses_bad_params(void **state)
{
	sim_schedule_params p = params(1);
	sim_arrival *a = (sim_arrival *)1;
	size_t n = 5;
	(void)state;

	p.rate_per_s = 0;
	assert_int_equal(sim_schedule_build(&p, &a, &n), RB_EINVAL);
	assert_null(a);
	assert_int_equal(n, 0);
	p = params(1);
	p.nprograms = 0;
	assert_int_equal(sim_schedule_build(&p, &a, &n), RB_EINVAL);
	p = params(1);
	p.survey_rate = 1.5;
	assert_int_equal(sim_schedule_build(&p, &a, &n), RB_EINVAL);
	// A window too short for any arrival is no error: there is simply nobody.
	p = params(1);
	p.rate_per_s = 0.001;
	p.duration_ms = 1;
	assert_int_equal(sim_schedule_build(&p, &a, &n), 0);
	assert_int_equal(n, 0);
	assert_null(a);
}

static void test_scale(void **state)
{
	(void)state;
	assert_int_equal(sim_scale_ms(240000, 60), 4000);
	assert_int_equal(sim_scale_ms(240000, 1), 240000);
	assert_int_equal(sim_scale_ms(10, 1000), 1);
	assert_int_equal(sim_scale_ms(5000, 0), 5000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_rng_repeats_and_streams_differ),
	        cmocka_unit_test(test_distribution_means),
	        cmocka_unit_test(test_schedule_same_seed_same_digest),
	        cmocka_unit_test(test_schedule_shape),
	        cmocka_unit_test(test_schedule_refuses_bad_params),
	        cmocka_unit_test(test_scale),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
