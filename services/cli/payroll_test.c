// Unit tests for the pure checks of the pay commands.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli.h"
#include "rb_err.h"

static void test_formats(void **state)
{
	assert_true(cli_payroll_format_valid("csv"));
	assert_true(cli_payroll_format_valid("adp"));
	assert_true(cli_payroll_format_valid("paychex"));
	assert_true(cli_payroll_format_valid("gusto"));
	assert_false(cli_payroll_format_valid("CSV"));
	assert_false(cli_payroll_format_valid(""));
	assert_false(cli_payroll_format_valid(NULL));
}

static void test_periods(void **state)
{
	assert_true(cli_payroll_period_valid("current"));
	assert_true(cli_payroll_period_valid("previous"));
	assert_true(cli_payroll_period_valid("2026-11-16"));
	assert_false(cli_payroll_period_valid("2026-11-1"));
	assert_false(cli_payroll_period_valid("2026/11/16"));
	assert_false(cli_payroll_period_valid("2026-11-16x"));
	assert_false(cli_payroll_period_valid("'; DROP"));
	assert_false(cli_payroll_period_valid(NULL));
}

static void test_times(void **state)
{
	assert_true(cli_valid_time("2026-11-16T00:00:00Z"));
	assert_true(cli_valid_time("2026-11-16 08:30-05:00"));
	assert_false(cli_valid_time("now"));
	assert_false(cli_valid_time("2026-11-16'; --"));
	assert_false(cli_valid_time("-2026-11-16"));
}

static void test_file_names(void **state)
{
	char buf[64];

	assert_int_equal(cli_payroll_file_name("2026-11-16", "csv", false, buf, sizeof buf), 0);
	assert_string_equal(buf, "ringbid-payroll-2026-11-16-csv.csv");
	assert_int_equal(cli_payroll_file_name("2026-11-16", "adp", true, buf, sizeof buf), 0);
	assert_string_equal(buf, "ringbid-payroll-2026-11-16-adp.provisional.csv");
	assert_int_equal(cli_payroll_file_name("2026-11-16", "xls", true, buf, sizeof buf),
	                 RB_EINVAL);
	assert_int_equal(cli_payroll_file_name("2026-11-16", "csv", true, buf, 10), RB_ETOOBIG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_formats),
	        cmocka_unit_test(test_periods),
	        cmocka_unit_test(test_times),
	        cmocka_unit_test(test_file_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
